//! Build-time only: see this crate's `Cargo.toml` and `docs/backends.md` ("Sharing the two
//! builds"). It has no code; its dependency list makes the flex and wgpu test builds compile the
//! shared crates with the same features.

//! The `depthclip` task.

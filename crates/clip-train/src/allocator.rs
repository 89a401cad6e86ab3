//! The allocator of the `clipforge` binary: mimalloc, told to keep freed memory.
//!
//! A training step frees and reallocates the same activation and gradient buffers every
//! iteration. glibc's malloc (and mimalloc with its default purge delay) hands large freed
//! buffers back to the kernel, so each step faults in and zeroes fresh pages: on ViT-B-32 at
//! batch 8 that was a third of the CPU time. With purging off the process keeps its peak
//! memory, as PyTorch's caching allocators do.

/// mimalloc's allocator, for `#[global_allocator]`.
pub use mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc.h's `mi_option_e` (the Rust bindings name no constant
/// for it): milliseconds before freed memory is returned to the OS, `-1` for never.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Stops mimalloc from returning freed memory to the OS. Call first thing in `main`; it only
/// matters where mimalloc is the global allocator.
pub fn keep_freed_memory() {
    // SAFETY: `mi_option_set` only stores an option value; it is safe to call at any time.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) }
}

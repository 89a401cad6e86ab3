//! The video tasks the trainer runs: [`Clip4ClipTask`] and [`ActionClipTask`], with their
//! `[video]` section, batches and evaluation.

pub mod actionclip;
pub mod batcher;
pub mod clip4clip;
pub mod official;
pub mod section;

pub use actionclip::ActionClipTask;
pub use clip4clip::Clip4ClipTask;
pub use section::VideoSection;

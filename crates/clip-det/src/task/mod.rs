//! The detection tasks the trainer runs: [`VildTask`] and [`GlipTask`], with their
//! `[detection]` section, batches, evaluation and the `detect` and `pseudo-label` commands.

pub mod batcher;
pub mod detect;
pub mod glip;
pub mod open_detector;
pub mod section;
pub mod vild;

pub use glip::GlipTask;
pub use open_detector::OpenDetector;
pub use section::DetectionSection;
pub use vild::VildTask;

//! The segmentation tasks the trainer runs: [`LsegTask`] and [`GroupVitTask`], with their
//! `[segmentation]` section, batches, evaluation and the `segment` command.

pub mod batcher;
pub mod groupvit;
pub mod lseg;
pub mod section;
pub mod segment;
pub mod segmenter;

pub use groupvit::GroupVitTask;
pub use lseg::LsegTask;
pub use section::SegmentationSection;
pub use segmenter::Segmenter;

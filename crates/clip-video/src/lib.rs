//! # clip-video
//!
//! Video understanding on CLIP: per-frame CLIP image embeddings aggregated over time.
//!
//! - [`clip4clip`]: CLIP4Clip (Luo et al., 2022) video-text retrieval with its four similarity
//!   calculators (meanP, seqLSTM, seqTransf, tightTransf).
//! - [`actionclip`]: ActionCLIP (Wang et al., 2021) action recognition as video-text matching.
//! - [`data`]: videos as frame folders or files, uniform frame sampling, MSR-VTT and
//!   Kinetics/UCF-style datasets.
//! - [`metrics`]: retrieval recall and ranks, top-k accuracy.
//! - [`task`]: the `clip4clip` and `actionclip` tasks of the trainer.

pub mod actionclip;
pub mod clip4clip;
pub mod data;
pub mod metrics;
pub mod task;

pub use task::{ActionClipTask, Clip4ClipTask};

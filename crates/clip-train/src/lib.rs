//! # clip-train
//!
//! The ClipForge trainer behind the `clipforge` command: runs described by TOML files
//! ([`config::RunConfig`]) layered with environment variables and `--set` overrides; the
//! training loop for any [`clip_task::Task`] ([`trainer::train_task`]) with AdamW, warm-up and
//! cosine schedule ([`lr`]), frozen and re-rated parameter groups ([`params`]), checkpoints
//! with exact resume ([`checkpoint`]), metrics and TensorBoard logs; and the [`registry`] of
//! tasks that `train.objective` names.

pub mod allocator;
pub mod checkpoint;
pub mod config;
pub mod lr;
pub mod parallel;
pub mod params;
pub mod precision;
pub mod registered;
pub mod registry;
pub mod runs;
pub mod trainer;

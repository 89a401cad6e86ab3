//! # clip-task
//!
//! The interface between ClipForge's methods and its trainer. A method implements [`Task`]:
//! its config section, its model, its batches, its objective, its evaluation and its inference
//! commands; `clip-train` drives any task. Here too is what every task shares: the `[model]`,
//! `[data]` and `[eval]` sections ([`config`]), the data machinery (worker threads, prefetch,
//! seeded order, counted skips, [`data`]), image-caption tables ([`pairs`]), the validation
//! split ([`validation`]), and CLIP's own tasks: [`contrastive`], [`supervised`] and
//! [`distillation`].

pub mod clip_model;
pub mod config;
pub mod contrastive;
pub mod data;
pub mod distillation;
pub mod embeddings_file;
pub mod eval;
pub mod pairs;
pub mod shards;
pub mod supervised;
pub mod task;
pub mod validation;

pub use config::{DataSection, EvalSection, ModelSection, RunContext};
pub use data::{BatchSource, DataError, LoadedBatch};
pub use task::{Task, TaskBatch, TaskModel};
pub use validation::Splittable;

//! # clip-train
//!
//! The ClipForge trainer behind the `clipforge` command: runs described by TOML files
//! ([`config::RunConfig`]), image-caption data ([`data`]), contrastive training with AdamW,
//! warm-up and cosine schedule, checkpoints with exact resume ([`trainer::train`]), and
//! zero-shot and retrieval evaluation ([`eval`]), embedding export ([`embeddings_file`]); the
//! method objectives: segmentation ([`segmentation`], [`segment`]), video ([`video`]) and
//! detection ([`detection`], [`detect`]).

pub mod checkpoint;
pub mod config;
pub mod data;
pub mod detect;
pub mod detection;
pub mod embeddings_file;
pub mod eval;
pub mod lr;
pub mod objectives;
pub mod params;
pub mod segment;
pub mod segmentation;
pub mod trainer;
pub mod validation;
pub mod video;

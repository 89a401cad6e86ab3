//! # clip-core
//!
//! CLIP on [burn](https://burn.dev): the ViT and ModifiedResNet image towers and the causal
//! text tower, the CLIP BPE tokenizer, image preprocessing, the contrastive losses (InfoNCE and
//! SigLIP), zero-shot classification, and weight import/export for open_clip/OpenAI and Hugging Face checkpoints.
//! Outputs match open_clip and transformers to 1e-4 on the reference fixtures.

pub mod attention_maps;
pub mod batch_norm;
pub mod config;
pub mod error;
pub mod image_tower;
pub mod loss;
pub mod model;
pub mod objective;
pub mod preprocess;
pub mod resnet;
pub mod split;
pub mod table;
pub mod text;
pub mod tokenizer;
pub mod transformer;
pub mod vision;
pub mod weights;
pub mod zero_shot;

pub use config::ClipConfig;
pub use error::{ClipError, Result};
pub use image_tower::{ImageTower, ImageTowerConfig};
pub use loss::{ClipLoss, SigLipLoss};
pub use model::{Clip, ClipLogits, l2_normalize};
pub use objective::{FeatureLoss, Objective, StepOutput};
pub use split::split_rows;
pub use tokenizer::ClipTokenizer;
pub use zero_shot::{ZeroShotClassifier, class_text_embeddings, imagenet_templates};

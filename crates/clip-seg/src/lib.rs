//! # clip-seg
//!
//! Open-vocabulary semantic segmentation on CLIP: any label list in, a per-pixel label map out.
//!
//! - [`groupvit`]: GroupViT (Xu et al., 2022), grouping patch tokens into segments with learnable
//!   group tokens; matches Hugging Face transformers' `GroupViTModel`.
//! - [`lseg`]: LSeg (Li et al., 2022), a DPT decoder over a ViT (CLIP's, or the official timm
//!   ViT with lang-seg's checkpoint layout) producing per-pixel embeddings compared with label
//!   text embeddings.
//! - [`data`]: images with PNG label masks and a label-name list, with joint augmentation.
//! - [`metrics`]: mIoU and pixel accuracy.
//! - [`nouns`]: nouns of captions turned into prompts (GroupViT's multi-label loss).
//! - [`render`]: label maps as color-coded PNGs and overlays.
//! - [`task`]: the `lseg` and `groupvit` tasks of the trainer and `clipforge segment`.

pub mod data;
pub mod groupvit;
pub mod lseg;
pub mod metrics;
pub mod nouns;
pub mod render;
pub mod task;

pub use task::{GroupVitTask, LsegTask};

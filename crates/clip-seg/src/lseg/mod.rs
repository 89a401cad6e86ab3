//! LSeg (Li et al., "Language-driven Semantic Segmentation", ICLR 2022): a DPT decoder over
//! a ViT (CLIP's, or the official code's timm ViT) maps every pixel to CLIP's text embedding
//! space; the logits of a pixel are its scaled cosine similarities with the embeddings of any
//! list of label names.
//!
//! - [`config`]: [`LsegConfig`], [`LsegBackbone`] and [`Readout`].
//! - [`backbone`]: [`TimmVit`], the official image encoder.
//! - [`decoder`]: DPT's reassemble stages, fusion blocks and embedding head.
//! - [`model`]: [`Lseg`] and the optional spatial regularization block.
//! - [`official`]: [`OfficialLsegConfig`], the official `LSegNet` arguments.
//! - [`weights`]: the official (lang-seg) checkpoint layout, load and save.
//! - [`loss`]: [`pixel_cross_entropy`] with an ignored label.
//! - [`objective`]: [`LsegObjective`] for the trainer.
//!
//! Freeze the parameter prefix `text` (CLIP's text tower and its projection) to train as the
//! paper does.

pub mod backbone;
pub mod config;
pub mod decoder;
pub mod loss;
pub mod model;
pub mod objective;
pub mod official;
pub mod weights;

pub use backbone::{TimmVit, TimmVitConfig};
pub use config::{LsegBackbone, LsegConfig, Readout};
pub use decoder::Resample;
pub use loss::pixel_cross_entropy;
pub use model::{Lseg, RegularizationActivation, RegularizationKind};
pub use objective::{LsegBatch, LsegObjective};
pub use official::{OfficialClipArgs, OfficialLsegConfig, OfficialVitArgs};
pub use weights::{export_official, import_official, load_official, official_layout, save_official};

//! LSeg (Li et al., "Language-driven Semantic Segmentation", ICLR 2022): a DPT decoder over
//! CLIP's ViT maps every pixel to CLIP's text embedding space; the logits of a pixel are its
//! scaled cosine similarities with the embeddings of any list of label names.
//!
//! - [`config`]: [`LsegConfig`] and [`Readout`].
//! - [`decoder`]: DPT's reassemble stages, fusion blocks and embedding head.
//! - [`model`]: [`Lseg`] and the optional spatial regularization block.
//! - [`loss`]: [`pixel_cross_entropy`] with an ignored label.
//! - [`objective`]: [`LsegObjective`] for the trainer.
//!
//! Freeze the parameter prefix `text` (CLIP's text tower and its projection) to train as the
//! paper does.

pub mod config;
pub mod decoder;
pub mod loss;
pub mod model;
pub mod objective;

pub use config::{LsegConfig, Readout};
pub use loss::pixel_cross_entropy;
pub use model::Lseg;
pub use objective::{LsegBatch, LsegObjective};

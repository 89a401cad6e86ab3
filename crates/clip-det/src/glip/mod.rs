//! GLIP (Li et al., "Grounded Language-Image Pre-training", CVPR 2022): detection as phrase
//! grounding. Image patch tokens and the prompt's word features are fused by bidirectional
//! cross-attention; each anchor scores every word, and a phrase's score is the mean over its
//! words, so any list of category names (or a caption) is a class list.
//!
//! - [`prompt`]: prompts with the token span of each phrase.
//! - [`od_grounding`]: detection images as grounding data: per-image category prompts with
//!   sampled negatives in random order, as the official code builds them.
//! - [`fusion`]: the bidirectional image-text cross-attention layers.
//! - [`model`]: [`Glip`] on CLIP's towers, its configuration and `detect`.
//! - [`objective`]: anchor matching, the token focal loss and the GIoU box loss.

pub mod fusion;
pub mod model;
pub mod objective;
pub mod od_grounding;
pub mod prompt;

pub use model::{Glip, GlipConfig, GlipOutput};
pub use objective::{GlipBatch, GlipObjective};
pub use od_grounding::{CategoryGrounding, CategoryPrompts, NegativeSampling};
pub use prompt::{GroundingPrompt, PromptError};

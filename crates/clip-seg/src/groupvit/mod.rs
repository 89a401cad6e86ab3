//! GroupViT (Xu et al., 2022): semantic segmentation emerging from text supervision. Learnable
//! group tokens gather image patches through hard (Gumbel straight-through) assignments, stage
//! by stage; the final groups are pooled into an image embedding trained contrastively against
//! captions. Outputs match Hugging Face transformers' `GroupViTModel`.
//!
//! ```no_run
//! # fn main() -> clip_core::Result<()> {
//! use clip_seg::groupvit;
//! let device = burn::tensor::Device::flex();
//! let (model, config) = groupvit::load_hugging_face("groupvit-gcc-yfcc/".as_ref(), &device)?;
//! # let _ = (model, config);
//! # Ok(()) }
//! ```

mod assign;
mod config;
mod init;
mod model;
mod objective;
mod projection;
mod text;
mod vision;
mod weights;
mod zero_shot;

pub use assign::{
    AssignAttention, AssignMode, CrossAttentionLayer, TokenAssign, straight_through_one_hot,
};
pub use config::{GroupVitConfig, GroupVitTextConfig, GroupVitVisionConfig};
pub use model::{GroupVit, grouping_from_assignments};
pub use objective::{GroupVitBatch, GroupVitObjective, multi_label_contrastive_loss, multi_label_loss_with_positives};
pub use projection::{Phase, ProjectionHead};
pub use text::GroupVitText;
pub use vision::{GroupProjector, GroupVitVision, GroupVitVisionOutput, GroupingStage};
pub use weights::{hugging_face_layout, load_groupvit, load_hugging_face, save_hugging_face};
pub use zero_shot::{GroupAssignment, ZeroShotSegmentation};

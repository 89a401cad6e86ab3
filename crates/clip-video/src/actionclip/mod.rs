//! ActionCLIP (Wang et al., 2021): action recognition as video-text matching. Frames go through
//! CLIP's image tower and a temporal fusion (the paper's post-network prompt), class names
//! wrapped in prompt templates through its text tower; training minimizes a KL divergence
//! between the in-batch video-text softmax and the same-class ground truth.

pub mod aggregate;
pub mod config;
pub mod loss;
pub mod model;
pub mod objective;
pub mod official;

pub use config::{ActionClipConfig, Fusion};
pub use aggregate::{TemporalAggregate, TemporalAggregateConfig};
pub use loss::{kl_divergence, kl_video_text_loss, same_label_targets, soft_targets};
pub use model::{ActionClip, template_scores};
pub use objective::{ActionClipObjective, VideoLabelBatch};

//! ActionCLIP (Wang et al., 2021): action recognition as video-text matching. Frames go through
//! CLIP's image tower and a temporal fusion (the paper's post-network prompt), class names
//! wrapped in prompt templates through its text tower; training minimizes a KL divergence
//! between the in-batch video-text softmax and the same-class ground truth.

pub mod config;
pub mod loss;
pub mod model;
pub mod objective;

pub use config::{ActionClipConfig, Fusion};
pub use loss::{kl_video_text_loss, same_label_targets};
pub use model::ActionClip;
pub use objective::{ActionClipObjective, VideoLabelBatch};

//! PointCLIP (Zhang et al., CVPR 2022): point clouds as multi-view depth maps for CLIP.
//!
//! A cloud is projected onto `V` sparse depth maps ([`projection`]); CLIP's image tower embeds
//! every map, its text tower one prompt per class ([`model`]). Zero-shot, the per-view cosine
//! similarities are summed (optionally weighted per view, the official post-hoc view-weight
//! search); few-shot, an inter-view adapter ([`adapter`]) fuses the views first and is the only
//! trained part. Both match the official code (`ZrrSkywalker/PointCLIP`) on its fixtures and load
//! its weights ([`official`]). [`io`] reads clouds (PLY, OFF, ModelNet40 `.txt`, `.npy`) and
//! normalizes them as the official data; [`png`] writes the views as images.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use burn::tensor::Device;
//! use clip_3d::pointclip::{self, PointClip, official, projection::ProjectionConfig};
//! use clip_core::ClipTokenizer;
//! use clip_core::weights::Checkpoint;
//!
//! let device = Device::flex();
//! let checkpoint = Checkpoint::read("RN101.pt".as_ref())?;
//! let config = official::official_config(&checkpoint, ProjectionConfig::zero_shot(), None, 0.6)?;
//! let model = official::import_official(&checkpoint, &config, &device)?;
//! let cloud = pointclip::io::read_point_cloud("chair_0001.txt".as_ref(), 0, 0)?.first(1024).unwrap().normalized();
//! let points = pointclip::model::clouds_tensor(&[cloud.points], &device)?;
//! let tokens = PointClip::tokenize(&ClipTokenizer::new(), pointclip::ZERO_SHOT_TEMPLATE, &pointclip::MODELNET40_CLASSES, &device)?;
//! let text = model.text_features(model.text_embeddings(tokens));
//! let logits = model.forward(points, text); // [1, 40]
//! # Ok(()) }
//! ```

pub mod adapter;
pub mod io;
pub mod model;
pub mod official;
pub mod png;
pub mod projection;

pub use adapter::{Adapter, AdapterConfig, AdapterOutput};
pub use model::{
    FEW_SHOT_TEMPLATE, MODELNET40_CLASSES, PointClip, PointClipConfig, PointClipOutput, ViewWeightSearch, ZERO_SHOT_TEMPLATE,
    SMOOTH_LOSS_EPS, prompts, search_view_weights, smooth_loss, view_weight_grid, weight_views,
};
pub use projection::{ProjectionConfig, View, points_to_depth};

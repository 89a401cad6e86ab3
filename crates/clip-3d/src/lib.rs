//! # clip-3d
//!
//! CLIP applied to 3D data it never saw in training:
//! - [`pointclip`]: PointCLIP (Zhang et al., 2022), point clouds projected to multi-view depth
//!   maps, classified zero-shot by CLIP or few-shot through an inter-view adapter.
//! - [`depthclip`]: DepthCLIP (Zhang et al., 2022), zero-shot monocular depth from dense CLIP
//!   ResNet features scored against distance prompts.

pub mod depthclip;
pub mod pointclip;
pub mod task;

pub use task::depthclip::DepthClipTask;

//! The 3D tasks the trainer runs: PointCLIP's point-cloud classification and DepthCLIP's
//! zero-shot depth.

pub mod depthclip;
pub mod pointclip;

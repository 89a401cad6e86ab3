//! # clip-sketch
//!
//! CLIPasso (Vinker et al., 2022): an object drawn as a few cubic Bezier strokes whose control
//! points are optimized so that CLIP sees the sketch as it sees the image.
//! - [`raster`]: a differentiable rasterizer of strokes on burn tensors (the official code
//!   uses diffvg).
//! - [`strokes`]: the optimized control points, as a module, and their SVG.
//! - [`augment`]: the perspective and crop augmentations on tensors.
//! - [`loss`]: the geometric (ResNet layers) and semantic (embedding) losses.
//! - [`saliency`]: the relevancy x XDoG start-point distribution (a ViT's attention relevancy,
//!   as the paper's, or gradient x input for a ResNet).
//! - [`sketcher`]: the optimization over seeds.
//! - [`output`]: SVG, PNG and animated GIF.
//! - [`task`]: the `clipasso` task and `clipforge sketch`.

pub mod raster;
pub mod strokes;
pub mod augment;
pub mod loss;
pub mod saliency;
pub mod sketcher;
pub mod output;
pub mod task;

pub use task::ClipassoTask;

//! # clip-det
//!
//! Open-vocabulary detection on CLIP: any list of category names at test time.
//!
//! - [`boxes`]: IoU, box encoding/decoding, class-wise NMS, anchors.
//! - [`roi_align`]: RoIAlign on feature maps.
//! - [`detector`]: a two-stage detector (ViT backbone from clip-core, RPN, RoIAlign, box head).
//! - [`vild`]: ViLD (Gu et al., 2022): text-embedding classifier and CLIP image distillation.
//! - [`glip`]: GLIP (Li et al., 2022): detection as phrase grounding with deep fusion.
//! - [`data`]: COCO JSON datasets, base/novel category splits, grounding prompts.
//! - [`eval`]: COCO-style AP (0.5:0.95), AP50 and AP on novel categories.
//! - [`draw`]: predicted boxes with labels drawn on images.
//! - [`task`]: the `vild` and `glip` tasks of the trainer, `clipforge detect` and `pseudo-label`.

pub mod boxes;
pub mod data;
pub mod detector;
pub mod draw;
pub mod eval;
pub mod glip;
pub mod roi_align;
pub mod task;
pub mod vild;

pub use task::{GlipTask, VildTask};

//! The objectives shipped with the trainer, each a [`clip_core::Objective`]:
//! contrastive image-text training, supervised classification, and embedding distillation.

mod contrastive;
mod distillation;
mod supervised;

pub use contrastive::{ContrastiveBatch, ContrastiveLoss, ContrastiveObjective};
pub use distillation::{DistillationBatch, DistillationLoss, DistillationObjective};
pub use supervised::{ImageClassifier, LabelledBatch, SupervisedObjective};

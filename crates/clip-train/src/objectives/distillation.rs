//! Embedding distillation: a student image tower learns to reproduce a frozen teacher's
//! normalized image embeddings (as ViLD-image distils CLIP into region embeddings), with an
//! L1 or L2 loss. Teacher embeddings are computed once and cached on disk.

use burn::tensor::Tensor;
use clip_core::{ImageTower, Objective, StepOutput, l2_normalize};

/// Images and the teacher's embeddings of them.
#[derive(Debug, Clone)]
pub struct DistillationBatch {
    /// `[batch, 3, H, W]`.
    pub images: Tensor<4>,
    /// `[batch, embed_dim]`, L2-normalized.
    pub teacher: Tensor<2>,
}

/// Distance between student and teacher embeddings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DistillationLoss {
    /// Mean absolute difference (ViLD's choice).
    L1,
    /// Mean squared difference.
    L2,
}

/// Distils teacher embeddings into a student image tower; logs their mean cosine similarity.
#[derive(Debug, Clone)]
pub struct DistillationObjective {
    /// The distance.
    pub loss: DistillationLoss,
}

impl Objective for DistillationObjective {
    type Model = ImageTower;
    type Batch = DistillationBatch;

    fn forward(&self, model: &ImageTower, batch: DistillationBatch) -> StepOutput {
        let student = l2_normalize(model.forward(batch.images));
        let difference = student.clone() - batch.teacher.clone();
        let loss = match self.loss {
            DistillationLoss::L1 => difference.abs().mean(),
            DistillationLoss::L2 => difference.square().mean(),
        };
        let cosine = (student * batch.teacher).sum_dim(1).mean().into_scalar::<f32>();
        StepOutput {
            loss,
            metrics: vec![("teacher_cosine", f64::from(cosine))],
        }
    }
}

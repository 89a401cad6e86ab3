//! CLIP's image-text contrastive objective (open_clip's `ClipLoss`).

use burn::tensor::{Int, Tensor};
use clip_core::{Clip, ClipLoss, Objective, StepOutput};

/// Images and the token ids of their captions.
#[derive(Debug, Clone)]
pub struct ContrastiveBatch {
    /// `[batch, 3, H, W]`.
    pub images: Tensor<4>,
    /// `[batch, context_length]`.
    pub tokens: Tensor<2, Int>,
}

/// Symmetric InfoNCE over normalized image and text embeddings, scaled by the model's
/// learnable logit scale (clamped to `[0, ln 100]` after every update).
#[derive(Debug, Clone, Default)]
pub struct ContrastiveObjective;

impl Objective for ContrastiveObjective {
    type Model = Clip;
    type Batch = ContrastiveBatch;

    fn forward(&self, model: &Clip, batch: ContrastiveBatch) -> StepOutput {
        let image = model.encode_image(batch.images, true);
        let text = model.encode_text(batch.tokens, true);
        let scale = model.logit_scale();
        let logit_scale = f64::from(scale.clone().into_scalar::<f32>());
        StepOutput {
            loss: ClipLoss::default().forward(image, text, scale),
            metrics: vec![("logit_scale", logit_scale)],
        }
    }

    fn after_update(&self, model: Clip) -> Clip {
        model.clamp_logit_scale()
    }
}

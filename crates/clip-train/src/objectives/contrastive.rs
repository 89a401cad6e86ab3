//! The image-text contrastive objective: CLIP's InfoNCE (open_clip's `ClipLoss`) or SigLIP's
//! pairwise sigmoid loss.

use burn::tensor::{Int, Tensor};
use clip_core::{Clip, ClipLoss, Objective, SigLipLoss, StepOutput};

/// Images and the token ids of their captions.
#[derive(Debug, Clone)]
pub struct ContrastiveBatch {
    /// `[batch, 3, H, W]`.
    pub images: Tensor<4>,
    /// `[batch, context_length]`.
    pub tokens: Tensor<2, Int>,
}

/// Which contrastive loss.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ContrastiveLoss {
    /// Symmetric InfoNCE (CLIP).
    #[default]
    InfoNce,
    /// Pairwise sigmoid loss with the model's learnable logit bias (SigLIP).
    SigLip,
}

/// A contrastive loss over normalized image and text embeddings, scaled by the model's
/// learnable logit scale (clamped to `[0, ln 100]` after every update).
///
/// # Panics
/// `forward` panics when the SigLIP loss is used with a model without a logit bias; the
/// trainer checks this before training.
#[derive(Debug, Clone, Default)]
pub struct ContrastiveObjective {
    /// The loss.
    pub loss: ContrastiveLoss,
}

impl Objective for ContrastiveObjective {
    type Model = Clip;
    type Batch = ContrastiveBatch;

    fn forward(&self, model: &Clip, batch: ContrastiveBatch) -> StepOutput {
        let image = model.encode_image(batch.images, true);
        let text = model.encode_text(batch.tokens, true);
        let scale = model.logit_scale();
        let logit_scale = f64::from(scale.clone().into_scalar::<f32>());
        let loss = match (self.loss, &model.logit_bias) {
            (ContrastiveLoss::SigLip, Some(bias)) => SigLipLoss::default().forward(image, text, scale, bias.val()),
            (ContrastiveLoss::SigLip, None) => panic!("the SigLIP loss needs a model with a logit bias"),
            (ContrastiveLoss::InfoNce, _) => ClipLoss::default().forward(image, text, scale),
        };
        StepOutput {
            loss,
            metrics: vec![("logit_scale", logit_scale)],
        }
    }

    fn after_update(&self, model: Clip) -> Clip {
        model.clamp_logit_scale()
    }
}

//! CLIP4Clip's training objective: symmetric InfoNCE over the in-batch text-video logits.

use burn::tensor::activation::log_softmax;
use burn::tensor::{Int, Tensor};
use clip_core::{Objective, StepOutput};

use crate::clip4clip::model::Clip4Clip;

/// Videos and one caption each.
#[derive(Debug, Clone)]
pub struct VideoTextBatch {
    /// `[B, T, 3, H, W]` CLIP-normalized frames.
    pub(crate) videos: Tensor<5>,
    /// `[B, context]` token ids; row `i` is video `i`'s caption.
    pub(crate) tokens: Tensor<2, Int>,
}

impl VideoTextBatch {
    /// Videos `[B, T, 3, H, W]` and one caption's token ids each `[B, context]`; an error when
    /// the counts differ.
    pub fn new(videos: Tensor<5>, tokens: Tensor<2, Int>) -> clip_core::Result<Self> {
        let (count, texts) = (videos.dims()[0], tokens.dims()[0]);
        if count != texts {
            return Err(clip_core::ClipError::Shape(format!("VideoTextBatch: {count} videos but {texts} texts")));
        }
        Ok(Self { videos, tokens })
    }
}

/// `(CE(S) + CE(Sᵀ)) / 2` over the `[B, B]` logits `S = Clip4Clip::similarity(tokens, videos)`,
/// where `CE` is the mean cross-entropy with the diagonal as target (the official `CrossEn`
/// applied in both directions; for `tightTransf` the pair scores are the logits). Logs the
/// logit scale and clamps its log to `[0, ln 100]` after each update.
#[derive(Debug, Clone, Copy, Default)]
pub struct Clip4ClipObjective;

impl Objective for Clip4ClipObjective {
    type Model = Clip4Clip;
    type Batch = VideoTextBatch;

    fn forward(&self, model: &Clip4Clip, batch: VideoTextBatch) -> clip_core::Result<StepOutput> {
        let logits = model.similarity(batch.tokens, batch.videos, None);
        let loss = symmetric_cross_entropy(logits);
        let scale = model.logit_scale().into_scalar::<f32>() as f64;
        Ok(StepOutput {
            loss,
            metrics: vec![("logit_scale", scale)],
        })
    }

    fn after_update(&self, model: Clip4Clip) -> Clip4Clip {
        model.clamp_logit_scale()
    }
}

/// Mean of the row-wise and column-wise cross-entropy of square logits `[B, B]` with the
/// diagonal as target.
pub fn symmetric_cross_entropy(logits: Tensor<2>) -> Tensor<1> {
    (diagonal_cross_entropy(logits.clone()) + diagonal_cross_entropy(logits.transpose())) / 2.0
}

/// `-mean_i log_softmax(logits)[i, i]`.
fn diagonal_cross_entropy(logits: Tensor<2>) -> Tensor<1> {
    let [batch, _] = logits.dims();
    let targets = Tensor::<1, Int>::arange(0..batch as i64, &logits.device()).reshape([batch, 1]);
    -log_softmax(logits, 1).gather(1, targets).mean()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clip4clip::config::SimilarityHeader;
    use crate::clip4clip::config::tests::tiny_config;
    use crate::clip4clip::model::tests::{tokens, videos};
    use burn::optim::{AdamWConfig, GradientsParams};

    const STEPS: usize = 16;
    use burn::tensor::Device;
    use clip_core::ClipLoss;

    #[test]
    fn loose_loss_equals_clip_loss_on_the_same_embeddings() {
        let device = Device::flex();
        device.seed(5);
        for header in [SimilarityHeader::MeanP, SimilarityHeader::SeqTransf] {
            let model = tiny_config(header).init(&device).unwrap();
            let batch = VideoTextBatch {
                videos: videos(3, &device),
                tokens: tokens(3, &device),
            };
            let ours = Clip4ClipObjective
                .forward(&model, batch.clone()).unwrap()
                .loss
                .into_scalar::<f32>();
            let reference = ClipLoss::default()
                .forward(
                    model.video_embeddings(batch.videos),
                    model.text_embeddings(batch.tokens),
                    model.logit_scale(),
                )
                .into_scalar::<f32>();
            assert!((ours - reference).abs() < 1e-5, "{header:?}: {ours} vs {reference}");
        }
    }

    #[test]
    fn adamw_lowers_every_header_loss() {
        for header in [
            SimilarityHeader::MeanP,
            SimilarityHeader::SeqLstm,
            SimilarityHeader::SeqTransf,
            SimilarityHeader::TightTransf,
        ] {
            let device = Device::flex().autodiff();
            device.seed(6);
            let mut model = tiny_config(header).init(&device).unwrap();
            let batch = VideoTextBatch {
                videos: videos(3, &device),
                tokens: tokens(3, &device),
            };
            // The cross encoder's score head starts near zero (weights N(0, 0.02)), every pair
            // scoring about the same: it needs a larger step to move in a few updates.
            let lr = if header == SimilarityHeader::TightTransf {
                3e-3
            } else {
                3e-4
            };
            let mut optimizer = AdamWConfig::new().init();
            let mut losses = Vec::new();
            for _ in 0..STEPS {
                let output = Clip4ClipObjective.forward(&model, batch.clone()).unwrap();
                assert_eq!(output.metrics[0].0, "logit_scale");
                losses.push(output.loss.clone().into_scalar::<f32>());
                let grads = GradientsParams::from_grads(output.loss.backward(), &model);
                model = Clip4ClipObjective.after_update(optimizer.step(lr, model, grads));
            }
            eprintln!("{header:?}: {losses:?}");
            assert!(losses.iter().all(|l| l.is_finite()), "{header:?}: {losses:?}");
            assert!(
                losses[STEPS - 1] < 0.9 * losses[0],
                "{header:?}: loss did not fall: {losses:?}"
            );
        }
    }
}

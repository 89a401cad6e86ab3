//! ActionCLIP's training objective.

use burn::tensor::{Int, Tensor};
use clip_core::{Objective, StepOutput};

use crate::actionclip::loss::kl_video_text_loss;
use crate::actionclip::model::ActionClip;

/// Videos, each with its class prompt and class label.
#[derive(Debug, Clone)]
pub struct VideoLabelBatch {
    /// `[B, T, 3, H, W]` CLIP-normalized frames.
    pub(crate) videos: Tensor<5>,
    /// `[B, context]` token ids: row `i` is a prompt for video `i`'s class (the official code
    /// draws one of its 16 templates per video).
    pub(crate) tokens: Tensor<2, Int>,
    /// `[B]` class indices.
    pub(crate) labels: Tensor<1, Int>,
}

impl VideoLabelBatch {
    /// Videos `[B, T, 3, H, W]`, a class prompt's token ids each `[B, context]` and the class
    /// indices `[B]`; an error when the counts differ.
    pub fn new(videos: Tensor<5>, tokens: Tensor<2, Int>, labels: Tensor<1, Int>) -> clip_core::Result<Self> {
        let (count, texts, labelled) = (videos.dims()[0], tokens.dims()[0], labels.dims()[0]);
        if count != texts || count != labelled {
            return Err(clip_core::ClipError::Shape(format!("VideoLabelBatch: {count} videos, {texts} texts, {labelled} labels")));
        }
        Ok(Self { videos, tokens, labels })
    }
}

/// [`kl_video_text_loss`] over `logit_scale * v · tᵀ` `[B, B]` of the batch's videos and
/// prompts. Logs the logit scale and the batch top-1 accuracy (the share of videos whose
/// highest-scoring prompt in the batch belongs to their class); clamps the log logit scale to
/// `[0, ln 100]` after each update.
#[derive(Debug, Clone, Copy, Default)]
pub struct ActionClipObjective;

impl Objective for ActionClipObjective {
    type Model = ActionClip;
    type Batch = VideoLabelBatch;

    fn forward(&self, model: &ActionClip, batch: VideoLabelBatch) -> clip_core::Result<StepOutput> {
        let videos = model.video_embeddings(batch.videos);
        let texts = model.text_embeddings(batch.tokens);
        let logits = model.logits_from_embeddings(videos, texts);
        let top1 = batch_top1(logits.clone().detach(), batch.labels.clone());
        let loss = kl_video_text_loss(logits, batch.labels);
        let scale = model.logit_scale().into_scalar::<f32>() as f64;
        Ok(StepOutput {
            loss,
            metrics: vec![("logit_scale", scale), ("top1", top1)],
        })
    }

    fn after_update(&self, model: ActionClip) -> ActionClip {
        model.clamp_logit_scale()
    }
}

/// Share of rows of `logits` `[B, B]` whose argmax column has the row's label.
fn batch_top1(logits: Tensor<2>, labels: Tensor<1, Int>) -> f64 {
    let [batch, _] = logits.dims();
    let best: Vec<i64> = logits.argmax(1).into_data().iter::<i64>().collect();
    let labels: Vec<i64> = labels.into_data().iter::<i64>().collect();
    let correct = best
        .iter()
        .zip(&labels)
        .filter(|&(&j, &label)| labels[j as usize] == label)
        .count();
    correct as f64 / batch as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actionclip::config::Fusion;
    use crate::actionclip::config::tests::tiny_config;
    use crate::clip4clip::model::tests::videos;
    use burn::optim::{AdamWConfig, GradientsParams};

    const STEPS: usize = 16;
    const LR: f64 = 3e-4;
    use burn::tensor::{Device, TensorData};

    #[test]
    fn batch_top1_counts_same_class_prompts_as_correct() {
        let device = Device::flex();
        // Argmax per row: 1, 0, 0; labels [4, 4, 9]: rows 0 and 1 pick a class-4 prompt (right),
        // row 2 picks video 0's prompt of class 4 (wrong) -> 2/3.
        let logits = Tensor::<2>::from_data(
            TensorData::new(vec![0.0f32, 1.0, 0.0, 2.0, 0.0, 0.0, 3.0, 0.0, 1.0], [3, 3]),
            &device,
        );
        let labels = Tensor::<1, Int>::from_data(TensorData::new(vec![4i64, 4, 9], [3]), &device);
        assert!((batch_top1(logits, labels) - 2.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn adamw_lowers_the_loss_for_both_fusions() {
        for fusion in [Fusion::MeanP, Fusion::Transf] {
            let device = Device::flex().autodiff();
            device.seed(10);
            let mut model = tiny_config(fusion).init(&device).unwrap();
            // Four videos of classes [0, 1, 0, 2]; each row is its class's prompt.
            let prompt = |class: i64| [1, 5 + class, 20 + class, 63, 0, 0];
            let classes = [0i64, 1, 0, 2];
            let ids: Vec<i64> = classes.iter().flat_map(|&c| prompt(c)).collect();
            let batch = VideoLabelBatch {
                videos: videos(4, &device),
                tokens: Tensor::from_data(TensorData::new(ids, [4, 6]), &device),
                labels: Tensor::from_data(TensorData::new(classes.to_vec(), [4]), &device),
            };
            let mut optimizer = AdamWConfig::new().init();
            let mut losses = Vec::new();
            for _ in 0..STEPS {
                let output = ActionClipObjective.forward(&model, batch.clone()).unwrap();
                let top1 = output.metrics.iter().find(|(name, _)| *name == "top1").unwrap().1;
                assert!((0.0..=1.0).contains(&top1));
                losses.push(output.loss.clone().into_scalar::<f32>());
                let grads = GradientsParams::from_grads(output.loss.backward(), &model);
                model = ActionClipObjective.after_update(optimizer.step(LR, model, grads));
            }
            eprintln!("{fusion:?}: {losses:?}");
            assert!(losses.iter().all(|l| l.is_finite()), "{fusion:?}: {losses:?}");
            assert!(
                losses[STEPS - 1] < 0.9 * losses[0],
                "{fusion:?}: loss did not fall: {losses:?}"
            );
        }
    }
}

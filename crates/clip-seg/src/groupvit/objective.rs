//! GroupViT's training objective: image-caption InfoNCE plus the multi-label contrastive loss
//! between each image and prompts made from the nouns of its caption.

use burn::tensor::activation::log_softmax;
use burn::tensor::{Int, Tensor, TensorData};
use clip_core::{ClipError, ClipLoss, Objective, Result, StepOutput};

use super::model::GroupVit;
use super::projection::Phase;

/// Images, their captions and `K` noun prompts per image.
#[derive(Debug, Clone)]
pub struct GroupVitBatch {
    /// `[batch, 3, H, W]`.
    pub images: Tensor<4>,
    /// Caption token ids `[batch, context]`.
    pub tokens: Tensor<2, Int>,
    /// Prompt token ids `[batch * K, context]`, image-major (image `i`'s prompts are rows
    /// `i*K .. (i+1)*K`); `K = 0` leaves out the multi-label term.
    pub prompt_tokens: Tensor<2, Int>,
    /// `[batch, batch * K]`, 1 where a prompt is a positive of an image: `None` is the official
    /// code's rule (an image's own `K` prompts only); see [`GroupVitBatch::with_shared_nouns`].
    prompt_positives: Option<Tensor<2>>,
}

impl GroupVitBatch {
    /// Checks that the three tensors agree: as many captions as images, a multiple of the batch
    /// size of prompts, and captions and prompts of one context length.
    pub fn new(
        images: Tensor<4>,
        tokens: Tensor<2, Int>,
        prompt_tokens: Tensor<2, Int>,
    ) -> Result<Self> {
        let batch = images.dims()[0];
        let [captions, context] = tokens.dims();
        let [prompts, prompt_context] = prompt_tokens.dims();
        if batch == 0
            || captions != batch
            || prompts % batch != 0
            || (prompts > 0 && prompt_context != context)
        {
            return Err(ClipError::Shape(format!(
                "GroupViT batch: {batch} images, captions {:?} and prompts {:?} (prompts must be \
                 [batch * K, context] with the captions' context length)",
                [captions, context],
                [prompts, prompt_context]
            )));
        }
        Ok(Self {
            images,
            tokens,
            prompt_tokens,
            prompt_positives: None,
        })
    }

    /// Makes every prompt of the batch whose noun is among an image's caption nouns a positive
    /// of that image (and the image a positive of the prompt), not only the image's own
    /// prompts. The official code treats "a photo of a dog." made from another image's caption
    /// as a negative even when this image shows a dog too; with a small vocabulary (a label
    /// set) such collisions fill the batch and the loss cannot fall. `image_nouns[i]` are the
    /// nouns of image `i`'s caption, `prompt_nouns[j]` the noun of prompt `j`.
    pub fn with_shared_nouns(self, image_nouns: &[Vec<String>], prompt_nouns: &[String]) -> Result<Self> {
        let (batch, prompts) = (self.images.dims()[0], self.prompt_tokens.dims()[0]);
        if image_nouns.len() != batch || prompt_nouns.len() != prompts {
            return Err(ClipError::Shape(format!(
                "GroupViT batch: nouns of {} images and {} prompts for {batch} images and {prompts} prompts",
                image_nouns.len(),
                prompt_nouns.len()
            )));
        }
        let per_image = self.prompts_per_image();
        let mask: Vec<f32> = (0..batch * prompts)
            .map(|index| {
                let (image, prompt) = (index / prompts, index % prompts);
                let positive = prompt / per_image == image || image_nouns[image].contains(&prompt_nouns[prompt]);
                if positive { 1.0 } else { 0.0 }
            })
            .collect();
        let device = self.images.device();
        let prompt_positives = Some(Tensor::from_data(TensorData::new(mask, [batch, prompts]), &device));
        Ok(Self { prompt_positives, ..self })
    }

    /// Prompts per image (`K`).
    pub fn prompts_per_image(&self) -> usize {
        self.prompt_tokens.dims()[0] / self.images.dims()[0].max(1)
    }
}

/// `InfoNCE(images, captions) + multi_label_weight * multi-label loss(images, prompts)`, all
/// scaled by the model's logit scale (shared by both terms, clamped to `[0, ln 100]` after every
/// update). The model runs in [`Phase::Train`]: Gumbel straight-through grouping and batch
/// statistics in the projection heads; captions and prompts share one text batch, as in the
/// official implementation.
#[derive(Debug, Clone)]
pub struct GroupVitObjective {
    /// Weight of the multi-label term (the paper uses 1).
    pub multi_label_weight: f32,
}

impl Default for GroupVitObjective {
    fn default() -> Self {
        Self {
            multi_label_weight: 1.0,
        }
    }
}

impl Objective for GroupVitObjective {
    type Model = GroupVit;
    type Batch = GroupVitBatch;

    /// # Panics
    /// When the batch's shapes disagree (build it with [`GroupVitBatch::new`] to get an error).
    fn forward(&self, model: &GroupVit, batch: GroupVitBatch) -> clip_core::Result<StepOutput> {
        let size = batch.images.dims()[0];
        let prompts = batch.prompt_tokens.dims()[0];
        let image = model.encode_image_with(batch.images, true, Phase::Train);
        let all_tokens = if prompts > 0 {
            Tensor::cat(vec![batch.tokens, batch.prompt_tokens], 0)
        } else {
            batch.tokens
        };
        let text = model.encode_text_with(all_tokens, true, Phase::Train);
        let scale = model.logit_scale();
        let logit_scale = f64::from(scale.clone().into_scalar::<f32>());
        let captions = text.clone().narrow(0, 0, size);
        let contrastive = ClipLoss::default().forward(image.clone(), captions, scale.clone());
        let contrastive_value = f64::from(contrastive.clone().into_scalar::<f32>());
        if prompts == 0 {
            return Ok(StepOutput {
                loss: contrastive,
                metrics: vec![
                    ("logit_scale", logit_scale),
                    ("contrastive_loss", contrastive_value),
                ],
            });
        }
        let prompt_text = text.narrow(0, size, prompts);
        let multi_label = match batch.prompt_positives {
            Some(positives) => multi_label_loss_with_positives(image, prompt_text, scale, positives),
            None => multi_label_contrastive_loss(image, prompt_text, scale),
        };
        let multi_label_value = f64::from(multi_label.clone().into_scalar::<f32>());
        Ok(StepOutput {
            loss: contrastive + multi_label * self.multi_label_weight,
            metrics: vec![
                ("logit_scale", logit_scale),
                ("contrastive_loss", contrastive_value),
                ("multi_label_loss", multi_label_value),
            ],
        })
    }

    fn after_update(&self, model: GroupVit) -> GroupVit {
        model.clamp_logit_scale()
    }
}

/// The multi-label contrastive loss of GroupViT's official code (one image embedding per image):
/// normalized images `[B, D]` against normalized prompts `[B*K, D]` (image-major), with
/// `logits = logit_scale * image @ prompt^T`.
///
/// - image to text: soft cross-entropy over all `B*K` prompts, target `1/K` on the image's own
///   `K` prompts;
/// - text to image: cross-entropy over the `B` images, target the prompt's own image;
///
/// and the loss is the mean of the two.
///
/// # Panics
/// When `B*K` is not a positive multiple of `B`.
pub fn multi_label_contrastive_loss(
    image: Tensor<2>,
    prompts: Tensor<2>,
    logit_scale: Tensor<1>,
) -> Tensor<1> {
    let [batch, _] = image.dims();
    let [texts, _] = prompts.dims();
    assert!(
        batch > 0 && texts > 0 && texts % batch == 0,
        "{texts} prompts for {batch} images"
    );
    let per_image_count = texts / batch;
    let own: Vec<f32> = (0..batch * texts)
        .map(|index| if (index % texts) / per_image_count == index / texts { 1.0 } else { 0.0 })
        .collect();
    let positives = Tensor::<2>::from_data(TensorData::new(own, [batch, texts]), &image.device());
    multi_label_loss_with_positives(image, prompts, logit_scale, positives)
}

/// The multi-label loss with any positive set: `positives` `[B, T]` is 1 where prompt `j` is a
/// positive of image `i` (every row and column needs one). Image to text is a soft
/// cross-entropy over the `T` prompts with the row's positives as a uniform target, text to
/// image one over the `B` images with the column's positives as target; the loss is their
/// mean. With each image's own prompts as positives this is [`multi_label_contrastive_loss`].
pub fn multi_label_loss_with_positives(
    image: Tensor<2>,
    prompts: Tensor<2>,
    logit_scale: Tensor<1>,
    positives: Tensor<2>,
) -> Tensor<1> {
    let scale = logit_scale.unsqueeze::<2>();
    let per_image = image.clone().matmul(prompts.clone().transpose()) * scale.clone();
    let per_text = prompts.matmul(image.transpose()) * scale;
    let image_targets = positives.clone() / positives.clone().sum_dim(1);
    let positives = positives.transpose();
    let text_targets = positives.clone() / positives.sum_dim(1);
    let image_loss = -(log_softmax(per_image, 1) * image_targets).sum_dim(1).mean();
    let text_loss = -(log_softmax(per_text, 1) * text_targets).sum_dim(1).mean();
    (image_loss + text_loss) / 2.0
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::groupvit::{GroupVitConfig, GroupVitTextConfig, GroupVitVisionConfig};
    use burn::optim::{AdamWConfig, GradientsParams};
    use burn::tensor::{Device, Distribution};
    use clip_core::transformer::Activation;

    /// A GroupViT small enough to train a few steps in a unit test.
    pub(crate) fn tiny_config() -> GroupVitConfig {
        GroupVitConfig::new(
            GroupVitTextConfig::new(32, 64, 1, 2)
                .with_vocab_size(64)
                .with_max_position_embeddings(8),
            GroupVitVisionConfig::new(16, 4, 32, 64, vec![1, 1], vec![4, 0], vec![2, 2], 2)
                .with_hidden_act(Activation::Gelu),
            16,
            32,
        )
    }

    #[test]
    fn adamw_steps_lower_the_loss_on_a_fixed_batch() {
        let device = Device::flex().autodiff();
        device.seed(7);
        let config = tiny_config();
        config.validate("tiny").unwrap();
        let mut model = config.init(&device).unwrap();
        let images = Tensor::<4>::random([4, 3, 16, 16], Distribution::Normal(0.0, 1.0), &device);
        // Ids below 63, end-of-text 63 (the largest id) at the end of each row.
        let tokens = |rows: usize| {
            let ids: Vec<i64> = (0..rows * 8)
                .map(|i| {
                    if i % 8 == 7 {
                        63
                    } else {
                        ((i * 37 + i / 8 * 11) % 63) as i64
                    }
                })
                .collect();
            Tensor::<2, Int>::from_data(TensorData::new(ids, [rows, 8]), &device)
        };
        let batch = GroupVitBatch::new(images, tokens(4), tokens(8).flip([0])).unwrap();
        assert_eq!(batch.prompts_per_image(), 2);
        let objective = GroupVitObjective::default();
        let mut optimizer = AdamWConfig::new().init();
        let mut losses = Vec::new();
        for _ in 0..6 {
            let output = objective.forward(&model, batch.clone()).unwrap();
            let names: Vec<&str> = output.metrics.iter().map(|(name, _)| *name).collect();
            assert_eq!(
                names,
                ["logit_scale", "contrastive_loss", "multi_label_loss"]
            );
            losses.push(output.loss.clone().into_scalar::<f32>());
            let grads = GradientsParams::from_grads(output.loss.backward(), &model);
            model = objective.after_update(optimizer.step(3e-3, model, grads));
        }
        assert!(losses.iter().all(|l| l.is_finite()), "{losses:?}");
        assert!(losses[5] < losses[0] * 0.9, "loss did not fall: {losses:?}");
    }

    #[test]
    fn multi_label_loss_matches_a_hand_computed_value() {
        let device = Device::flex();
        // Two images (unit vectors e0, e1), K = 2 prompts each: image 0 -> (e0, e1),
        // image 1 -> (e1, e1). Scale 1, so logits are the dot products (0 or 1).
        let image = Tensor::<2>::from_floats([[1.0, 0.0], [0.0, 1.0]], &device);
        let prompts =
            Tensor::<2>::from_floats([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [0.0, 1.0]], &device);
        let got = multi_label_contrastive_loss(image, prompts, Tensor::from_floats([1.0], &device))
            .into_scalar::<f32>();
        let e = std::f64::consts::E;
        // Image 0 logits (1, 0, 0, 0), targets (1/2, 1/2, 0, 0):
        //   -(1/2)(1 - ln(e + 3)) - (1/2)(0 - ln(e + 3)) = ln(e + 3) - 1/2.
        // Image 1 logits (0, 1, 1, 1), targets (0, 0, 1/2, 1/2): ln(3e + 1) - 1.
        let image_loss = ((e + 3.0).ln() - 0.5 + (3.0 * e + 1.0).ln() - 1.0) / 2.0;
        // Prompt logits over the images: (1, 0) -> 0, (0, 1) -> 0, (0, 1) -> 1, (0, 1) -> 1.
        //   -ln softmax: ln(1 + 1/e) for a hit, ln(1 + e) for a miss.
        let hit = (1.0 + 1.0 / e).ln();
        let miss = (1.0 + e).ln();
        let text_loss = (hit + miss + hit + hit) / 4.0;
        let want = (image_loss + text_loss) / 2.0;
        assert!(
            (f64::from(got) - want).abs() < 1e-5,
            "got {got}, want {want}"
        );
    }

    #[test]
    fn shared_nouns_make_other_images_prompts_positives() {
        let device = Device::flex();
        // Image 0 (e0) has nouns {cat, dog}, image 1 (e1) {dog}; K = 1: prompt 0 "cat" (e0),
        // prompt 1 "dog" (e1). Prompt 1 is a positive of both images.
        let image = Tensor::<2>::from_floats([[1.0, 0.0], [0.0, 1.0]], &device);
        let prompt_vectors = Tensor::<2>::from_floats([[1.0, 0.0], [0.0, 1.0]], &device);
        let ids = Tensor::<2, Int>::from_ints([[1, 2], [3, 4]], &device);
        let batch = GroupVitBatch::new(Tensor::zeros([2, 3, 4, 4], &device), ids.clone(), ids)
            .unwrap()
            .with_shared_nouns(&[vec!["cat".into(), "dog".into()], vec!["dog".into()]], &["cat".into(), "dog".into()])
            .unwrap();
        let positives = batch.prompt_positives.clone().unwrap();
        assert_eq!(positives.to_data().try_to_vec::<f32>().unwrap(), [1.0, 1.0, 0.0, 1.0]);
        let got = multi_label_loss_with_positives(image, prompt_vectors, Tensor::from_floats([1.0], &device), positives)
            .into_scalar::<f32>();
        let e = std::f64::consts::E;
        let nll_hit = (1.0 + 1.0 / e).ln(); // -ln softmax of the 1 in (1, 0)
        let nll_miss = (1.0 + e).ln(); // -ln softmax of the 0 in (1, 0)
        // Image 0: logits (1, 0), targets (1/2, 1/2); image 1: logits (0, 1), target (0, 1).
        let image_loss = ((nll_hit + nll_miss) / 2.0 + nll_hit) / 2.0;
        // Prompt 0: logits (1, 0) over images, target (1, 0); prompt 1: (0, 1), targets (1/2, 1/2).
        let text_loss = (nll_hit + (nll_miss + nll_hit) / 2.0) / 2.0;
        let want = (image_loss + text_loss) / 2.0;
        assert!((f64::from(got) - want).abs() < 1e-5, "got {got}, want {want}");
        // Nouns for the wrong number of prompts are an error.
        let ids = Tensor::<2, Int>::from_ints([[1, 2], [3, 4]], &device);
        let wrong = GroupVitBatch::new(Tensor::zeros([2, 3, 4, 4], &device), ids.clone(), ids)
            .unwrap()
            .with_shared_nouns(&[vec![], vec![]], &["cat".into()]);
        assert!(wrong.is_err());
    }
}

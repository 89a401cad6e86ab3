//! GroupViT's zero-shot segmentation as NVlabs evaluates it (`GroupViTSegInference`): each
//! pixel joins its most likely final group (a hard, one-hot assignment), groups are scored
//! against the labels the whole image ranks among its top k, and a background label is
//! predicted where no label scores above a threshold, instead of being matched as text.

use burn::tensor::activation::softmax;
use burn::tensor::{IndexingUpdateOp, Int, Tensor, TensorData};
use clip_core::l2_normalize;
use serde::{Deserialize, Serialize};

use super::model::{GroupVit, grouping_from_assignments};
use super::projection::Phase;

/// How label scores reach the pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupAssignment {
    /// NVlabs' evaluation: the one-hot argmax group of each pixel, the top-k label filter and
    /// the background threshold.
    Hard,
    /// Hugging Face's `segmentation_logits`: every group's scores spread over the pixels by the
    /// soft assignment ([`GroupVit::segment`]); the background is a text label like the others.
    Soft,
}

/// Settings of [`GroupVit::segment_zero_shot`]; the defaults are NVlabs' (`test_cfg`).
#[derive(Debug, Clone, PartialEq)]
pub struct ZeroShotSegmentation {
    /// Hard (NVlabs) or soft (Hugging Face) assignment of pixels to groups.
    pub assignment: GroupAssignment,
    /// Labels kept per image: the `k` the pooled image embedding ranks highest (NVlabs: 5;
    /// 0 keeps every label).
    pub top_k: usize,
    /// Index of the label predicted by threshold rather than by text (NVlabs' `with_bg`); its
    /// text embedding is not used.
    pub background: Option<usize>,
    /// A pixel is background where its best label scores below
    /// `min(threshold, the image's best group-label score)` (NVlabs: 0.95).
    pub background_threshold: f64,
}

impl Default for ZeroShotSegmentation {
    fn default() -> Self {
        Self { assignment: GroupAssignment::Hard, top_k: 5, background: None, background_threshold: 0.95 }
    }
}

impl GroupVit {
    /// Label scores `[images, labels, H, W]` of images `[images, 3, H, W]` against label text
    /// embeddings `[labels, projection_dim]`, under `settings`; the argmax over labels is the
    /// label map. With the hard assignment (NVlabs):
    ///
    /// - `A = softmax_labels(s · ĝ · t̂ᵀ)` per group, `s = min(exp(logit_scale), 100)`;
    /// - only the `top_k` labels of `softmax(s · x̂ · t̂ᵀ)` (the pooled image embedding `x`) stay
    ///   in the softmax, `A' = softmax_kept(s · ĝ · t̂ᵀ) · A`;
    /// - pixel `p` scores `A'[group(p)]`, `group(p)` the argmax of the chained soft assignment
    ///   resized to the image;
    /// - the background channel is 1 where the pixel's best score is below
    ///   `min(background_threshold, max A')`, 0 elsewhere.
    pub fn segment_zero_shot(&self, images: Tensor<4>, label_embeds: Tensor<2>, settings: &ZeroShotSegmentation) -> Tensor<4> {
        if settings.assignment == GroupAssignment::Soft {
            return self.segment(images, label_embeds);
        }
        let [batch, _, height, width] = images.dims();
        let device = images.device();
        let output = self.vision_output(images);
        let grouping = grouping_from_assignments(&output.assignments, [height, width]);
        let [_, groups, channels] = output.groups.dims();
        let group_embeds = self
            .visual_projection
            .forward(output.groups.reshape([batch * groups, channels]), Phase::Eval);
        let dim = group_embeds.dims()[1];
        let group_embeds = l2_normalize(group_embeds).reshape([batch, groups, dim]);
        let image_embeds = l2_normalize(self.visual_projection.forward(output.pooled, Phase::Eval));

        let labels = label_embeds.dims()[0];
        let text_rows: Vec<usize> = (0..labels).filter(|&l| Some(l) != settings.background).collect();
        let texts = l2_normalize(label_embeds.select(0, index(&text_rows, &device)));
        let kept = text_rows.len();
        let scale = self.logit_scale().exp().clamp_max(100.0).reshape([1, 1, 1]);
        let per_group = group_embeds.matmul(texts.clone().transpose().unsqueeze()) * scale.clone();
        let before_filter = softmax(per_group.clone(), 2);
        let per_image = softmax(image_embeds.matmul(texts.transpose()) * scale.reshape([1, 1]), 1);
        let top_k = if settings.top_k == 0 { kept } else { settings.top_k.min(kept) };
        let top = per_image.topk_with_indices(top_k, 1).1;
        let kept_mask = Tensor::<2>::zeros([batch, kept], &device)
            .scatter(1, top, Tensor::ones([batch, top_k], &device), IndexingUpdateOp::Add)
            .greater_elem(0.0)
            .reshape([batch, 1, kept])
            .expand([batch, groups, kept]);
        let filtered = per_group.mask_fill(kept_mask.bool_not(), f32::NEG_INFINITY);
        let affinity = softmax(filtered, 2) * before_filter;

        // [batch, pixels, groups] one-hot of each pixel's most likely group.
        let pixel_group = grouping.reshape([batch, groups, height * width]).argmax(1).reshape([batch, height * width, 1]);
        let one_hot = Tensor::<3>::zeros([batch, height * width, groups], &device).scatter(
            2,
            pixel_group,
            Tensor::ones([batch, height * width, 1], &device),
            IndexingUpdateOp::Add,
        );
        let scores = one_hot.matmul(affinity.clone()); // [batch, pixels, kept]
        let mut channels_out: Vec<Tensor<3>> = scores.clone().swap_dims(1, 2).split(1, 1);
        if let Some(background) = settings.background {
            let best_group = affinity.reshape([batch, groups * kept]).max_dim(1); // [batch, 1]
            let threshold = best_group.clamp_max(settings.background_threshold).reshape([batch, 1, 1]);
            let best_pixel = scores.max_dim(2); // [batch, pixels, 1]
            let is_background = best_pixel.lower(threshold.expand([batch, height * width, 1])).float();
            channels_out.insert(background, is_background.swap_dims(1, 2));
        }
        Tensor::cat(channels_out, 1).reshape([batch, labels, height, width])
    }
}

fn index(rows: &[usize], device: &burn::tensor::Device) -> Tensor<1, Int> {
    let rows: Vec<i64> = rows.iter().map(|&r| r as i64).collect();
    Tensor::from_data(TensorData::new(rows.clone(), [rows.len()]), device)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::groupvit::objective::tests::tiny_config;
    use burn::tensor::{Device, Distribution};

    fn values<const D: usize>(x: Tensor<D>) -> Vec<f32> {
        x.into_data().iter::<f32>().collect()
    }

    fn tiny() -> (GroupVit, Tensor<4>, Tensor<2>) {
        let device = Device::flex();
        device.seed(5);
        let config = tiny_config();
        let model = config.init(&device).unwrap();
        let size = config.image_size();
        let images = Tensor::random([2, 3, size, size], Distribution::Normal(0.0, 1.0), &device);
        let labels = Tensor::random([4, config.projection_dim], Distribution::Normal(0.0, 1.0), &device);
        (model, images, labels)
    }

    /// NVlabs' scores recomputed from the public parts, pixel by pixel, with every label kept:
    /// `softmax(s ĝ t̂ᵀ)²` of each pixel's argmax group.
    #[test]
    fn hard_scores_are_the_squared_group_softmax_of_each_pixels_group() {
        let (model, images, labels) = tiny();
        let [batch, _, height, width] = images.dims();
        let settings = ZeroShotSegmentation { top_k: 0, ..ZeroShotSegmentation::default() };
        let ours = values(model.segment_zero_shot(images.clone(), labels.clone(), &settings));
        let output = model.vision_output(images);
        let grouping = grouping_from_assignments(&output.assignments, [height, width]);
        let groups = grouping.dims()[1];
        let pixel_group: Vec<i64> = grouping.reshape([batch, groups, height * width]).argmax(1).into_data().iter::<i64>().collect();
        let channels = output.groups.dims()[2];
        let embeds = l2_normalize(model.visual_projection.forward(output.groups.reshape([batch * groups, channels]), Phase::Eval));
        let scale = model.logit_scale().exp().clamp_max(100.0).into_scalar::<f32>();
        let per_group = values(softmax(embeds.matmul(l2_normalize(labels).transpose()) * scale, 1));
        let texts = 4;
        for b in 0..batch {
            for p in 0..height * width {
                let g = pixel_group[b * height * width + p] as usize;
                for t in 0..texts {
                    let expected = per_group[(b * groups + g) * texts + t].powi(2);
                    let got = ours[((b * texts + t) * height * width) + p];
                    assert!((got - expected).abs() < 1e-5, "image {b} pixel {p} label {t}: {got} vs {expected}");
                }
            }
        }
    }

    #[test]
    fn background_is_where_no_label_reaches_the_threshold_and_top_k_filters() {
        let (model, images, labels) = tiny();
        let [batch, _, height, width] = images.dims();
        let pixels = height * width;
        for threshold in [0.0, 0.3, 0.6] {
            let settings = ZeroShotSegmentation { top_k: 2, background: Some(1), background_threshold: threshold, ..Default::default() };
            let scores = values(model.segment_zero_shot(images.clone(), labels.clone(), &settings));
            for b in 0..batch {
                let at = |label: usize, p: usize| scores[(b * 4 + label) * pixels + p];
                let mut nonzero_labels = std::collections::BTreeSet::new();
                let best_anywhere = (0..pixels).flat_map(|p| [0, 2, 3].map(|l| at(l, p))).fold(0.0f32, f32::max);
                // Below the best pixel score, the threshold is the one given (above it, NVlabs
                // lowers it to the best group score, which not every group's pixels show).
                let threshold_applies = (threshold as f32) <= best_anywhere;
                for p in 0..pixels {
                    let best = [0, 2, 3].map(|l| at(l, p)).into_iter().fold(0.0f32, f32::max);
                    let background = at(1, p);
                    let expected = if best < threshold as f32 { 1.0 } else { 0.0 };
                    assert!(background == 0.0 || background == 1.0, "{background}");
                    if threshold_applies {
                        assert_eq!(background, expected, "threshold {threshold}, pixel {p}: best {best}");
                    } else if best < best_anywhere {
                        // NVlabs lowers the threshold to the best group score, which is at least
                        // the best pixel score: every pixel below that is background.
                        assert_eq!(background, 1.0, "threshold {threshold}, pixel {p}: best {best} < {best_anywhere}");
                    }
                    nonzero_labels.extend([0, 2, 3].into_iter().filter(|&l| at(l, p) > 0.0));
                }
                assert!(nonzero_labels.len() <= 2, "top-2 kept {nonzero_labels:?}");
            }
        }
    }
}

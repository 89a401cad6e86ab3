//! What the segmentation tasks share: a model that scores every pixel against label text
//! embeddings ([`Segmenter`]), and its evaluation (mIoU and pixel accuracy).

use burn::tensor::{Device, Int, Tensor};
use clip_core::preprocess::stack_images;
use clip_core::{ClipTokenizer, class_text_embeddings};
use clip_task::BatchSource;

use crate::data::LabelSet;
use crate::groupvit::{GroupVit, ZeroShotSegmentation};
use crate::lseg::Lseg;
use crate::metrics::ConfusionMatrix;
use crate::task::batcher::SegmentationBatcher;

/// A segmentation model: label names in, per-pixel label scores out.
pub trait Segmenter {
    /// Label text embeddings `[labels, embed_dim]` of prompt tokens `[labels, context]`.
    fn encode_labels(&self, tokens: Tensor<2, Int>) -> Tensor<2>;

    /// Scores of each label at each pixel, `[batch, labels, height, width]`, for images
    /// `[batch, 3, height, width]` and normalized label embeddings `[labels, embed_dim]`.
    fn pixel_logits(&self, images: Tensor<4>, label_embeds: Tensor<2>) -> Tensor<4>;

    /// Normalized text embeddings of `names`, `[labels, embed_dim]`, averaged over `templates`.
    fn embed_labels(&self, tokenizer: &ClipTokenizer, names: &[String], templates: &[String], device: &Device) -> anyhow::Result<Tensor<2>> {
        Ok(class_text_embeddings(|tokens| self.encode_labels(tokens), tokenizer, names, templates, device)?)
    }

    /// Scores of the labels `names` (the rows of `label_embeds`) at each pixel; models that treat
    /// a label by name (GroupViT's background) override it. [`pixel_logits`](Self::pixel_logits)
    /// by default.
    fn label_logits(&self, images: Tensor<4>, label_embeds: Tensor<2>, names: &[String]) -> Tensor<4> {
        let _ = names;
        self.pixel_logits(images, label_embeds)
    }

    /// The most likely of the labels `names` at each pixel, `[batch, height, width]`.
    fn label_map(&self, images: Tensor<4>, label_embeds: Tensor<2>, names: &[String]) -> Tensor<3, Int> {
        self.label_logits(images, label_embeds, names).argmax(1).squeeze_dim(1)
    }
}

/// GroupViT under a zero-shot segmentation protocol ([`ZeroShotSegmentation`]; the background
/// label found by name).
pub struct ZeroShotGroupVit<'a> {
    /// The model.
    pub model: &'a GroupVit,
    /// The protocol; its `background` index is set per label list from `background_label`.
    pub settings: ZeroShotSegmentation,
    /// The label predicted by threshold, when the label list has it.
    pub background_label: String,
}

impl Segmenter for ZeroShotGroupVit<'_> {
    fn encode_labels(&self, tokens: Tensor<2, Int>) -> Tensor<2> {
        self.model.encode_labels(tokens)
    }

    fn pixel_logits(&self, images: Tensor<4>, label_embeds: Tensor<2>) -> Tensor<4> {
        self.model.segment_zero_shot(images, label_embeds, &self.settings)
    }

    fn label_logits(&self, images: Tensor<4>, label_embeds: Tensor<2>, names: &[String]) -> Tensor<4> {
        let background = names.iter().position(|name| !self.background_label.is_empty() && *name == self.background_label);
        let settings = ZeroShotSegmentation { background, ..self.settings.clone() };
        self.model.segment_zero_shot(images, label_embeds, &settings)
    }
}

/// Sliding-window inference over any [`Segmenter`], as mmseg's `slide_inference`: square
/// windows of `window` pixels every `stride` pixels (the last ones flush with the far edges),
/// each scored alone, the scores of overlapping windows averaged. Images no larger than the
/// window are scored whole.
pub struct SlidingWindow<S> {
    /// The model scoring each window.
    pub inner: S,
    /// Window side in pixels.
    pub window: usize,
    /// Step between windows in pixels.
    pub stride: usize,
}

impl<S: Segmenter> Segmenter for SlidingWindow<S> {
    fn encode_labels(&self, tokens: Tensor<2, Int>) -> Tensor<2> {
        self.inner.encode_labels(tokens)
    }

    fn pixel_logits(&self, images: Tensor<4>, label_embeds: Tensor<2>) -> Tensor<4> {
        self.label_logits(images, label_embeds, &[])
    }

    fn label_logits(&self, images: Tensor<4>, label_embeds: Tensor<2>, names: &[String]) -> Tensor<4> {
        let [batch, _, height, width] = images.dims();
        if height <= self.window && width <= self.window {
            return self.inner.label_logits(images, label_embeds, names);
        }
        let starts = |size: usize| -> Vec<usize> {
            let (window, stride) = (self.window.min(size), self.stride.max(1));
            let count = size.saturating_sub(window).div_ceil(stride) + 1;
            (0..count).map(|i| (i * stride).min(size - window)).collect()
        };
        let device = images.device();
        let mut sum: Option<Tensor<4>> = None;
        let mut count = Tensor::<4>::zeros([1, 1, height, width], &device);
        for &top in &starts(height) {
            for &left in &starts(width) {
                let (h, w) = (self.window.min(height), self.window.min(width));
                let crop = images.clone().narrow(2, top, h).narrow(3, left, w);
                let scores = self.inner.label_logits(crop, label_embeds.clone(), names);
                let labels = scores.dims()[1];
                let total = sum.unwrap_or_else(|| Tensor::zeros([batch, labels, height, width], &device));
                let ranges = [0..batch, 0..labels, top..top + h, left..left + w];
                let current = total.clone().slice(ranges.clone());
                sum = Some(total.slice_assign(ranges, current + scores));
                let ones = [0..1, 0..1, top..top + h, left..left + w];
                let counted = count.clone().slice(ones.clone()) + 1.0;
                count = count.slice_assign(ones, counted);
            }
        }
        sum.expect("at least one window") / count
    }
}

impl Segmenter for GroupVit {
    fn encode_labels(&self, tokens: Tensor<2, Int>) -> Tensor<2> {
        self.encode_text(tokens, true)
    }

    fn pixel_logits(&self, images: Tensor<4>, label_embeds: Tensor<2>) -> Tensor<4> {
        self.segment(images, label_embeds)
    }
}

impl Segmenter for Lseg {
    fn encode_labels(&self, tokens: Tensor<2, Int>) -> Tensor<2> {
        self.label_embeddings(tokens)
    }

    fn pixel_logits(&self, images: Tensor<4>, label_embeds: Tensor<2>) -> Tensor<4> {
        self.logits(images, label_embeds)
    }
}

/// mIoU, per-label IoU and pixel accuracy of `segmenter` on the table of `batcher`.
pub fn evaluate_segmentation(
    segmenter: &impl Segmenter,
    batcher: &SegmentationBatcher,
    label_embeds: &Tensor<2>,
    labels: &LabelSet,
    batch_size: usize,
    device: &Device,
) -> anyhow::Result<serde_json::Value> {
    let rows: Vec<usize> = (0..batcher.rows()).collect();
    let mut confusion = ConfusionMatrix::new(labels.names.len());
    let mut samples = 0;
    for chunk in rows.chunks(batch_size.max(1)) {
        let batch = batcher.batch(chunk, 0)?;
        if batch.rows.is_empty() {
            continue;
        }
        let predicted = segmenter.label_map(stack_images(&batch.images, device)?, label_embeds.clone(), &labels.names);
        let predicted: Vec<i64> = predicted.into_data().iter::<i64>().collect();
        let targets: Vec<i64> = batch.masks.iter().flat_map(|m| m.values.iter().copied()).collect();
        anyhow::ensure!(predicted.len() == targets.len(), "internal: prediction and mask sizes differ");
        confusion.update(&predicted, &targets, labels.ignore_index);
        samples += batch.rows.len();
    }
    anyhow::ensure!(samples > 0, "{}: no readable sample to evaluate", batcher.table().path.display());
    let iou: serde_json::Map<String, serde_json::Value> =
        labels.names.iter().zip(confusion.iou()).map(|(name, iou)| (name.clone(), serde_json::json!(iou))).collect();
    let (chance_mean_iou, chance_pixel_accuracy) = confusion.majority_baseline().unzip();
    Ok(serde_json::json!({
        "samples": samples,
        "mean_iou": confusion.mean_iou(),
        "pixel_accuracy": confusion.pixel_accuracy(),
        "chance_mean_iou": chance_mean_iou,
        "chance_pixel_accuracy": chance_pixel_accuracy,
        "iou": iou,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Distribution, TensorData};

    /// Scores each "label" by one input channel: a per-pixel model, whose windows must agree
    /// with the whole image wherever they are placed.
    struct Channels;

    impl Segmenter for Channels {
        fn encode_labels(&self, tokens: Tensor<2, Int>) -> Tensor<2> {
            tokens.float()
        }

        fn pixel_logits(&self, images: Tensor<4>, _label_embeds: Tensor<2>) -> Tensor<4> {
            images
        }
    }

    #[test]
    fn sliding_windows_cover_every_pixel_once_on_average() {
        let device = Device::flex();
        let images = Tensor::<4>::random([2, 3, 13, 9], Distribution::Normal(0.0, 1.0), &device);
        let labels = Tensor::<2>::from_data(TensorData::new(vec![0.0f32; 3], [3, 1]), &device);
        for (window, stride) in [(4, 2), (5, 5), (8, 3), (13, 7)] {
            let slid = SlidingWindow { inner: Channels, window, stride }.label_logits(images.clone(), labels.clone(), &[]);
            let diff: f32 = (slid - images.clone()).abs().max().into_scalar();
            assert!(diff < 1e-6, "window {window} stride {stride}: {diff}");
        }
    }

    /// A model whose scores depend on the window (its mean): the overlap is averaged.
    struct Centered;

    impl Segmenter for Centered {
        fn encode_labels(&self, tokens: Tensor<2, Int>) -> Tensor<2> {
            tokens.float()
        }

        fn pixel_logits(&self, images: Tensor<4>, _label_embeds: Tensor<2>) -> Tensor<4> {
            let [b, c, h, w] = images.dims();
            images.clone() - images.mean().reshape([1, 1, 1, 1]).expand([b, c, h, w])
        }
    }

    #[test]
    fn overlapping_windows_are_averaged() {
        let device = Device::flex();
        // One row of 4 pixels, windows of 3 every 1: [0..3] and [1..4].
        let images = Tensor::<4>::from_data(TensorData::new(vec![0.0f32, 3.0, 6.0, 9.0], [1, 1, 1, 4]), &device);
        let labels = Tensor::<2>::zeros([1, 1], &device);
        let slid = SlidingWindow { inner: Centered, window: 3, stride: 1 }.label_logits(images, labels, &[]);
        let values: Vec<f32> = slid.into_data().iter::<f32>().collect();
        // Window means 3 and 6: pixel 0 -> -3; 1 -> (0 + -3) / 2; 2 -> (3 + 0) / 2; 3 -> 3.
        assert_eq!(values, vec![-3.0, -1.5, 1.5, 3.0]);
    }
}

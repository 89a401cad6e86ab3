//! What the segmentation tasks share: a model that scores every pixel against label text
//! embeddings ([`Segmenter`]), and its evaluation (mIoU and pixel accuracy).

use burn::tensor::{Device, Int, Tensor};
use clip_core::preprocess::stack_images;
use clip_core::{ClipTokenizer, class_text_embeddings};
use clip_task::BatchSource;

use crate::data::LabelSet;
use crate::groupvit::GroupVit;
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

    /// The most likely label of each pixel, `[batch, height, width]`.
    fn label_map(&self, images: Tensor<4>, label_embeds: Tensor<2>) -> Tensor<3, Int> {
        self.pixel_logits(images, label_embeds).argmax(1).squeeze_dim(1)
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
        let predicted = segmenter.label_map(stack_images(&batch.images, device)?, label_embeds.clone());
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

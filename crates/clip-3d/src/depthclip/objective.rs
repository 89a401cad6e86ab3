//! Fine-tuning DepthCLIP on measured depth (an extension: the paper is zero-shot). The bin head
//! stays DepthCLIP's (distance prompts through the text tower, softmax over bins, expected bin
//! depth); the loss is the scale-invariant log error of Eigen et al. as BTS uses it.

use burn::tensor::activation::softmax;
use burn::tensor::{Int, Tensor, TensorData};
use clip_core::{ClipError, Objective, StepOutput};

use super::model::{DenseClip, dense_tokens, depth_logits, expected_depth, halve_channels, upsample_depth, zeroshot_text_features};

/// Weight of the squared mean in the scale-invariant loss (BTS: 0.85).
pub const SILOG_VARIANCE_FOCUS: f64 = 0.85;

/// Images and their measured depth.
#[derive(Debug, Clone)]
pub struct DepthBatch {
    /// `[B, 3, H, W]` normalized images.
    pub(crate) images: Tensor<4>,
    /// `[B, 1, H, W]` depth in metres; 0 where nothing was measured.
    pub(crate) depth: Tensor<4>,
}

impl DepthBatch {
    /// Images `[B, 3, H, W]` and depth maps `[B, 1, H, W]` of the same size; an error otherwise.
    pub fn new(images: Tensor<4>, depth: Tensor<4>) -> clip_core::Result<Self> {
        let ([b, _, h, w], [db, dc, dh, dw]) = (images.dims(), depth.dims());
        if (b, h, w) != (db, dh, dw) || dc != 1 {
            return Err(ClipError::Shape(format!("DepthBatch: images {:?} but depth {:?}", images.dims(), depth.dims())));
        }
        Ok(Self { images, depth })
    }
}

/// `10 · sqrt(mean(g²) − 0.85 · mean(g)²)`, `g = ln d − ln d*` over the pixels with measured
/// depth in `(min_depth, max_depth)`, where `d` is DepthCLIP's depth upsampled to the image.
/// Logs the share of valid pixels.
#[derive(Debug, Clone)]
pub struct DepthClipObjective {
    /// Token ids of the prompts, row-major `[prompts, context]`.
    pub prompt_ids: Vec<i64>,
    /// `[prompts, context]`.
    pub prompt_shape: [usize; 2],
    /// Bin depths in metres.
    pub bins: Vec<f32>,
    /// Softmax temperature.
    pub temperature: f64,
    /// Factor on the cosine similarities.
    pub logit_factor: f64,
    /// Ground truth must exceed this.
    pub min_depth: f64,
    /// Ground truth must be below this.
    pub max_depth: f64,
}

impl Objective for DepthClipObjective {
    type Model = DenseClip;
    type Batch = DepthBatch;

    fn forward(&self, model: &DenseClip, batch: DepthBatch) -> clip_core::Result<StepOutput> {
        let device = batch.images.device();
        let [_, _, height, width] = batch.images.dims();
        let tokens = Tensor::<2, Int>::from_data(TensorData::new(self.prompt_ids.clone(), self.prompt_shape), &device);
        let text = zeroshot_text_features(model.encode_text(tokens), self.bins.len())?;
        let layer4 = model.layer4(batch.images);
        let [_, _, h, w] = layer4.dims();
        let logits = depth_logits(halve_channels(dense_tokens(layer4)), text, [h, w], self.logit_factor, self.temperature);
        let bins = Tensor::<1>::from_data(TensorData::new(self.bins.clone(), [self.bins.len()]), &device);
        let depth = upsample_depth(expected_depth(softmax(logits, 1), bins), [height, width]);
        let truth = batch.depth;
        let valid = truth.clone().greater_elem(self.min_depth).bool_and(truth.clone().lower_elem(self.max_depth));
        let mask = valid.float();
        let count = mask.clone().sum().clamp_min(1.0);
        let g = (depth.clamp_min(1e-6).log() - truth.clamp_min(1e-6).log()) * mask.clone();
        let mean = g.clone().sum() / count.clone();
        let mean_square = g.square().sum() / count.clone();
        let loss = (mean_square - mean.square() * SILOG_VARIANCE_FOCUS).clamp_min(1e-12).sqrt() * 10.0;
        let total = mask.dims().iter().product::<usize>() as f64;
        let share = count.into_scalar::<f32>() as f64 / total;
        Ok(StepOutput { loss, metrics: vec![("valid_pixels", share)] })
    }
}

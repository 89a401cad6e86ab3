//! The GroupViT model (Hugging Face's `GroupViTModel`): embeddings, logits and segmentation.

use burn::module::{Module, Param};
use burn::tensor::module::interpolate;
use burn::tensor::ops::{InterpolateMode, InterpolateOptions};
use burn::tensor::{Device, Int, Tensor};
use clip_core::l2_normalize;
use clip_core::model::clamp_log_logit_scale;

use super::assign::AssignMode;
use super::config::GroupVitConfig;
use super::projection::{Phase, ProjectionHead};
use super::text::GroupVitText;
use super::vision::{GroupVitVision, GroupVitVisionOutput};

/// GroupViT: a grouping image tower, a CLIP text tower, BatchNorm MLP projection heads and a
/// learnable log logit scale.
#[derive(Module, Debug)]
pub struct GroupVit {
    /// The image tower.
    pub vision: GroupVitVision,
    /// The text tower.
    pub text: GroupVitText,
    /// Image projection head.
    pub visual_projection: ProjectionHead,
    /// Text projection head.
    pub text_projection: ProjectionHead,
    /// Log of the logit scale, `[1]`.
    pub logit_scale: Param<Tensor<1>>,
}

impl GroupVit {
    /// A model with freshly initialized weights.
    pub fn new(config: &GroupVitConfig, device: &Device) -> Self {
        let (hidden, out) = (config.projection_intermediate_dim, config.projection_dim);
        Self {
            vision: GroupVitVision::new(&config.vision, device),
            text: GroupVitText::new(&config.text, device),
            visual_projection: ProjectionHead::new(
                [config.vision.hidden_size, hidden, out],
                device,
            ),
            text_projection: ProjectionHead::new([config.text.hidden_size, hidden, out], device),
            logit_scale: Param::from_tensor(Tensor::from_floats(
                [config.logit_scale_init_value as f32],
                device,
            )),
        }
    }

    /// Image embeddings `[batch, projection_dim]` from images `[batch, 3, H, W]` in evaluation
    /// mode (hard argmax grouping, BatchNorm running statistics); L2-normalized when
    /// `normalize` is set.
    pub fn encode_image(&self, images: Tensor<4>, normalize: bool) -> Tensor<2> {
        self.encode_image_with(images, normalize, Phase::Eval)
    }

    /// Text embeddings `[batch, projection_dim]` from token ids `[batch, context]` in
    /// evaluation mode; L2-normalized when `normalize` is set.
    pub fn encode_text(&self, tokens: Tensor<2, Int>, normalize: bool) -> Tensor<2> {
        self.encode_text_with(tokens, normalize, Phase::Eval)
    }

    /// As [`encode_image`](Self::encode_image) in the given phase. [`Phase::Train`] samples
    /// Gumbel straight-through assignments and normalizes the projection with batch statistics
    /// (updating the running ones).
    pub fn encode_image_with(&self, images: Tensor<4>, normalize: bool, phase: Phase) -> Tensor<2> {
        let mode = match phase {
            Phase::Eval => AssignMode::Hard,
            Phase::Train => AssignMode::GumbelStraightThrough,
        };
        let features = self
            .visual_projection
            .forward(self.vision.forward(images, mode).pooled, phase);
        if normalize {
            l2_normalize(features)
        } else {
            features
        }
    }

    /// As [`encode_text`](Self::encode_text) in the given phase ([`Phase::Train`] normalizes the
    /// projection with batch statistics).
    pub fn encode_text_with(
        &self,
        tokens: Tensor<2, Int>,
        normalize: bool,
        phase: Phase,
    ) -> Tensor<2> {
        let features = self
            .text_projection
            .forward(self.text.forward(tokens), phase);
        if normalize {
            l2_normalize(features)
        } else {
            features
        }
    }

    /// `exp(logit_scale)` as a `[1]` tensor.
    pub fn logit_scale(&self) -> Tensor<1> {
        self.logit_scale.val().exp()
    }

    /// Clamps the log logit scale to `[0, ln 100]` (called after every optimizer step).
    pub fn clamp_logit_scale(mut self) -> Self {
        self.logit_scale = clamp_log_logit_scale(self.logit_scale);
        self
    }

    /// Evaluation-mode image-text logits `[images, texts]` (`logits_per_image`).
    pub fn forward(&self, images: Tensor<4>, tokens: Tensor<2, Int>) -> Tensor<2> {
        let image = self.encode_image(images, true);
        let text = self.encode_text(tokens, true);
        image.matmul(text.transpose()) * self.logit_scale().unsqueeze()
    }

    /// Runs the image tower in evaluation mode (groups, pooled features, assignments).
    pub fn vision_output(&self, images: Tensor<4>) -> GroupVitVisionOutput {
        self.vision.forward(images, AssignMode::Hard)
    }

    /// Segmentation logits `[images, texts, H, W]` of images `[images, 3, H, W]` against text
    /// embeddings `[texts, projection_dim]` (normalized here), as transformers' `GroupViTModel`
    /// returns with `output_segmentation=True`: each final group's scaled cosine similarity to
    /// each text, spread over the pixels by the chained soft assignments, bilinearly resized to
    /// the image, and scaled again by the logit scale.
    pub fn segment(&self, images: Tensor<4>, text_embeds: Tensor<2>) -> Tensor<4> {
        let [_, _, height, width] = images.dims();
        let output = self.vision_output(images);
        let grouping = grouping_from_assignments(&output.assignments, [height, width]);
        let [batch, groups, _] = output.groups.dims();
        let channels = output.groups.dims()[2];
        let group_embeds = self.visual_projection.forward(
            output.groups.reshape([batch * groups, channels]),
            Phase::Eval,
        );
        let group_embeds = l2_normalize(group_embeds);
        let text_embeds = l2_normalize(text_embeds);
        let texts = text_embeds.dims()[0];
        let scale = self.logit_scale();
        let per_group = group_embeds.matmul(text_embeds.transpose()) * scale.clone().unsqueeze();
        let per_group = per_group.reshape([batch, groups, texts]).swap_dims(1, 2);
        let flat = grouping.reshape([batch, groups, height * width]);
        (per_group.matmul(flat) * scale.unsqueeze()).reshape([batch, texts, height, width])
    }
}

/// Chains the soft assignments of every grouping block into a map from the first stage's image
/// tokens to the final groups and resizes it bilinearly to `[batch, groups, height, width]`
/// (transformers' `get_grouping_from_attentions`).
pub fn grouping_from_assignments(assignments: &[Tensor<3>], size: [usize; 2]) -> Tensor<4> {
    let mut chained: Option<Tensor<3>> = None;
    for assignment in assignments {
        // [batch, groups, tokens] -> [batch, tokens, groups]
        let step = assignment.clone().swap_dims(1, 2);
        chained = Some(match chained {
            None => step,
            Some(previous) => previous.matmul(step),
        });
    }
    let chained = chained.expect("a GroupViT configuration has at least one grouping block");
    resize_assignment(chained.swap_dims(1, 2), size)
}

/// `[batch, groups, tokens]` to `[batch, groups, height, width]`, inferring the token grid from
/// the aspect ratio as transformers' `resize_attention_map` does.
fn resize_assignment(map: Tensor<3>, [height, width]: [usize; 2]) -> Tensor<4> {
    let [batch, groups, tokens] = map.dims();
    let scale = (((height * width) / tokens) as f64).sqrt();
    let (grid_h, grid_w) = if height > width {
        let grid_w = (width as f64 / scale).round_ties_even() as usize;
        (tokens / grid_w, grid_w)
    } else {
        let grid_h = (height as f64 / scale).round_ties_even() as usize;
        (grid_h, tokens / grid_h)
    };
    let options = InterpolateOptions::new(InterpolateMode::Bilinear)
        .with_align_corners(false)
        .with_output_size([height, width]);
    interpolate(map.reshape([batch, groups, grid_h, grid_w]), options)
}

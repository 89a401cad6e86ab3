//! The ActionCLIP model: CLIP per frame, a temporal fusion, class prompts as text.

use burn::module::{Module, Param};
use burn::nn::Lstm;
use burn::nn::conv::Conv1d;
use burn::tensor::activation::softmax;
use burn::tensor::{Int, Tensor};
use clip_core::{Clip, l2_normalize};

use crate::actionclip::aggregate::TemporalAggregate;
use crate::clip4clip::temporal::TemporalTransformer;

/// The fixed logit scale of the official evaluation (`test.py`: `100.0 * v @ t.T`).
pub const EVAL_LOGIT_SCALE: f64 = 100.0;

/// ActionCLIP: the fusion turns CLIP's frame embeddings into a video embedding; a class is
/// scored by the scaled cosine between the video and its prompts' text embeddings. Exactly one
/// fusion module is present (none for `meanP`).
#[derive(Module, Debug)]
pub struct ActionClip {
    /// The CLIP model; its logit scale scales the training logits.
    pub clip: Clip,
    /// The `Transf` fusion.
    pub fusion: Option<TemporalTransformer>,
    /// The `LSTM` fusion.
    pub lstm: Option<Lstm>,
    /// The `Conv_1D` fusion: a depthwise convolution, kernel 3, no bias.
    pub shift: Option<Conv1d>,
    /// The `Transf_cls` fusion.
    pub aggregate: Option<TemporalAggregate>,
    /// `[positions, width]`: the frame position embeddings the official code creates and saves
    /// for `LSTM`, `Conv_1D` and `Transf_cls` but does not use; kept so that official checkpoints
    /// load and save back unchanged.
    pub unused_positions: Option<Param<Tensor<2>>>,
}

impl ActionClip {
    /// Unnormalized per-frame CLIP image embeddings `[B, T, D]` of videos `[B, T, 3, H, W]`.
    pub fn frame_features(&self, videos: Tensor<5>) -> Tensor<3> {
        let [batch, frames, channels, height, width] = videos.dims();
        let features = self
            .clip
            .encode_image(videos.reshape([batch * frames, channels, height, width]), false);
        let dim = features.dims()[1];
        features.reshape([batch, frames, dim])
    }

    /// The unnormalized video embedding `[B, D]` of frame features `x` `[B, T, D]` (the
    /// official `fusion_model(x)`): `mean_t(x)` for `meanP`, `mean_t(x + LSTM(x))`,
    /// `mean_t(x + conv(x.view(B, D, T)).permute)` for `Conv_1D` (a reinterpretation of
    /// memory, not a transpose, as the official code), `mean_t(x + blocks(x + P))` for `Transf`,
    /// the class token's output for `Transf_cls`.
    pub fn fuse(&self, frames: Tensor<3>) -> Tensor<2> {
        let [batch, count, dim] = frames.dims();
        if let Some(aggregate) = &self.aggregate {
            return aggregate.forward(frames);
        }
        let fused = if let Some(fusion) = &self.fusion {
            fusion.forward(frames, None)
        } else if let Some(lstm) = &self.lstm {
            frames.clone() + lstm.forward(frames, None).0
        } else if let Some(shift) = &self.shift {
            let viewed = frames.clone().reshape([batch, dim, count]);
            frames + shift.forward(viewed).swap_dims(1, 2)
        } else {
            frames
        };
        fused.mean_dim(1).reshape([batch, dim])
    }

    /// L2-normalized video embeddings `[B, D]` of videos `[B, T, 3, H, W]`:
    /// `normalize(fuse(frame_features))`.
    pub fn video_embeddings(&self, videos: Tensor<5>) -> Tensor<2> {
        l2_normalize(self.fuse(self.frame_features(videos)))
    }

    /// L2-normalized prompt embeddings `[N, D]` from token ids `[N, context]`.
    pub fn text_embeddings(&self, tokens: Tensor<2, Int>) -> Tensor<2> {
        self.clip.encode_text(tokens, true)
    }

    /// `exp(logit_scale)` of the CLIP model, `[1]`.
    pub fn logit_scale(&self) -> Tensor<1> {
        self.clip.logit_scale()
    }

    /// Clamps CLIP's log logit scale to `[0, ln 100]`.
    pub fn clamp_logit_scale(mut self) -> Self {
        self.clip = self.clip.clamp_logit_scale();
        self
    }

    /// `logit_scale * v · cᵀ`, `[B, C]`, between normalized video embeddings `[B, D]` and
    /// normalized class embeddings `[C, D]` (the official `create_logits` of training).
    pub fn logits_from_embeddings(&self, video_embeds: Tensor<2>, class_embeds: Tensor<2>) -> Tensor<2> {
        video_embeds.matmul(class_embeds.transpose()) * self.logit_scale().unsqueeze()
    }

    /// Class logits `[B, C]` of videos `[B, T, 3, H, W]` against normalized class embeddings
    /// `[C, D]` (e.g. [`text_embeddings`](Self::text_embeddings) of one prompt per class, or
    /// the normalized mean over prompt templates).
    pub fn logits(&self, videos: Tensor<5>, class_embeds: Tensor<2>) -> Tensor<2> {
        self.logits_from_embeddings(self.video_embeddings(videos), class_embeds)
    }
}

/// The official test-time class scores `[B, C]` (`test.py`): `100 · v · tᵀ` against every
/// prompt, a softmax over the classes under each template, the mean over templates.
/// `video_embeds` `[B, D]` and `prompt_embeds` `[templates · C, D]` are L2-normalized, prompts
/// template-major (row `template · C + class`).
pub fn template_scores(video_embeds: Tensor<2>, prompt_embeds: Tensor<2>, classes: usize) -> Tensor<2> {
    let [batch, _] = video_embeds.dims();
    let templates = prompt_embeds.dims()[0] / classes.max(1);
    let logits = video_embeds.matmul(prompt_embeds.transpose()) * EVAL_LOGIT_SCALE;
    softmax(logits.reshape([batch, templates, classes]), 2)
        .mean_dim(1)
        .reshape([batch, classes])
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::actionclip::config::Fusion;
    use crate::actionclip::config::tests::tiny_config;
    use crate::clip4clip::model::tests::{tokens, videos};
    use burn::module::Param;
    use burn::tensor::{Device, Distribution};
    use clip_fixtures::abs_diff;

    fn values<const D: usize>(x: Tensor<D>) -> Vec<f32> {
        x.into_data().iter::<f32>().collect()
    }

    #[test]
    fn logits_are_scaled_cosines_per_class() {
        let device = Device::flex();
        device.seed(8);
        for fusion in [Fusion::MeanP, Fusion::Transf] {
            let model = tiny_config(fusion).init(&device).unwrap();
            let clips = videos(2, &device);
            let classes = model.text_embeddings(tokens(5, &device));
            let logits = model.logits(clips.clone(), classes.clone());
            assert_eq!(logits.dims(), [2, 5], "{fusion:?}");
            let cosines = model.video_embeddings(clips).matmul(classes.transpose());
            let scale = model.logit_scale().into_scalar::<f32>();
            let (max, _) = abs_diff(&values(logits), &values(cosines * scale));
            assert!(max < 1e-4, "{fusion:?}: {max}");
        }
    }

    #[test]
    fn mean_p_averages_unnormalized_frames_and_ignores_order() {
        let device = Device::flex();
        device.seed(9);
        let model = tiny_config(Fusion::MeanP).init(&device).unwrap();
        let clips = videos(2, &device);
        let frames = model.clip.encode_image(clips.clone().reshape([8, 3, 16, 16]), false);
        let expected = l2_normalize(frames.reshape([2, 4, 32]).mean_dim(1).reshape([2, 32]));
        let ours = model.video_embeddings(clips.clone());
        assert!(abs_diff(&values(ours.clone()), &values(expected)).0 < 1e-6);
        assert!(abs_diff(&values(ours), &values(model.video_embeddings(clips.clone().flip([1])))).0 < 1e-6);
        let mut transf = tiny_config(Fusion::Transf).init(&device).unwrap();
        // Unit-scale positions, so that order changes the output well above rounding.
        transf.fusion.as_mut().unwrap().frame_position_embeddings =
            Param::from_tensor(Tensor::random([4, 32], Distribution::Normal(0.0, 1.0), &device));
        let (max, _) = abs_diff(
            &values(transf.video_embeddings(clips.clone())),
            &values(transf.video_embeddings(clips.flip([1]))),
        );
        assert!(max > 1e-4, "transf ignores frame order: {max}");
    }
}

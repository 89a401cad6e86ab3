//! The two-tower CLIP model.

use burn::module::{Module, Param};
use burn::tensor::{Device, Int, Tensor};

use crate::config::ClipConfig;

/// The largest logit scale CLIP allows: `exp(ln 100) = 100`.
pub const MAX_LOG_LOGIT_SCALE: f64 = 4.605_170_185_988_092; // ln(100)

/// A log logit scale clamped to `[0, ln 100]`, as open_clip clamps it after every optimizer
/// step (CLIP, GroupViT and LSeg call this from their `clamp_logit_scale`).
pub fn clamp_log_logit_scale(logit_scale: Param<Tensor<1>>) -> Param<Tensor<1>> {
    // The clamp is not part of any loss: detach it so the parameter stays a graph leaf.
    logit_scale.map(|scale| {
        let trainable = scale.is_require_grad();
        let clamped = scale.clamp(0.0, MAX_LOG_LOGIT_SCALE).detach();
        if trainable { clamped.require_grad() } else { clamped }
    })
}

impl ClipConfig {
    /// Builds a CLIP model with freshly initialized weights.
    pub fn init(&self, device: &Device) -> Clip {
        Clip {
            visual: self.vision.init(device),
            text: self.text.init(device),
            logit_scale: Param::from_tensor(Tensor::from_floats([self.init_logit_scale as f32], device)),
            logit_bias: self
                .init_logit_bias
                .map(|bias| Param::from_tensor(Tensor::from_floats([bias as f32], device))),
        }
    }
}

/// CLIP: an image tower, a text tower and a learnable log logit scale.
#[derive(Module, Debug)]
pub struct Clip {
    /// The image tower (ViT or ModifiedResNet).
    pub visual: crate::image_tower::ImageTower,
    /// The text tower.
    pub text: crate::text::TextTransformer,
    /// Log of the logit scale, `[1]`.
    pub logit_scale: Param<Tensor<1>>,
    /// Learnable logit bias `[1]` of SigLIP models; `None` for CLIP.
    pub logit_bias: Option<Param<Tensor<1>>>,
}

/// Image-text similarity logits.
#[derive(Debug, Clone)]
pub struct ClipLogits {
    /// `[images, texts]`.
    pub per_image: Tensor<2>,
    /// `[texts, images]`.
    pub per_text: Tensor<2>,
}

impl Clip {
    /// Image embeddings `[batch, embed_dim]` from preprocessed images `[batch, 3, H, W]`,
    /// L2-normalized when `normalize` is set.
    pub fn encode_image(&self, images: Tensor<4>, normalize: bool) -> Tensor<2> {
        let features = self.visual.forward(images);
        if normalize { l2_normalize(features) } else { features }
    }

    /// Text embeddings `[batch, embed_dim]` from token ids `[batch, context]`,
    /// L2-normalized when `normalize` is set.
    pub fn encode_text(&self, tokens: Tensor<2, Int>, normalize: bool) -> Tensor<2> {
        let features = self.text.forward(tokens);
        if normalize { l2_normalize(features) } else { features }
    }

    /// `exp(logit_scale)` as a `[1]` tensor.
    pub fn logit_scale(&self) -> Tensor<1> {
        self.logit_scale.val().exp()
    }

    /// Clamps the log logit scale to `[0, ln 100]`; the trainer calls this after every
    /// optimizer step, as open_clip does.
    pub fn clamp_logit_scale(mut self) -> Self {
        self.logit_scale = clamp_log_logit_scale(self.logit_scale);
        self
    }

    /// Scaled cosine-similarity logits between already computed embeddings.
    pub fn logits_from_embeddings(&self, image_embeds: Tensor<2>, text_embeds: Tensor<2>) -> ClipLogits {
        let per_image = l2_normalize(image_embeds)
            .matmul(l2_normalize(text_embeds).transpose())
            * self.logit_scale().unsqueeze();
        ClipLogits {
            per_text: per_image.clone().transpose(),
            per_image,
        }
    }

    /// Encodes both inputs and returns their similarity logits.
    pub fn forward(&self, images: Tensor<4>, tokens: Tensor<2, Int>) -> ClipLogits {
        self.logits_from_embeddings(self.encode_image(images, false), self.encode_text(tokens, false))
    }
}

/// Divides each row of `[batch, dim]` by its L2 norm.
pub fn l2_normalize(x: Tensor<2>) -> Tensor<2> {
    let norm = x.clone().square().sum_dim(1).sqrt().clamp_min(1e-12);
    x / norm
}

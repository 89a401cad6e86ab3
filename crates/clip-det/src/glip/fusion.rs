//! GLIP's deep fusion: bidirectional cross-modality attention between image locations and
//! words (the X-MHA of Li et al., 2022), each direction with a residual, followed by a
//! feed-forward block per modality.

use burn::config::Config;
use burn::module::Module;
use burn::nn::{LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Bool, Device, Tensor};
use clip_core::transformer::{Activation, Mlp, MultiHeadAttention};

/// Configuration of a [`FusionLayer`].
#[derive(Config, Debug)]
pub struct FusionLayerConfig {
    /// Width of both modalities' features.
    pub hidden: usize,
    /// Attention heads (must divide `hidden`).
    pub heads: usize,
    /// Feed-forward expansion factor.
    #[config(default = 4)]
    pub mlp_ratio: usize,
}

impl FusionLayerConfig {
    /// Builds the layer with freshly initialized weights.
    pub fn init(&self, device: &Device) -> FusionLayer {
        let norm = || LayerNormConfig::new(self.hidden).init(device);
        let linear = || LinearConfig::new(self.hidden, self.hidden).init(device);
        let attention = || MultiHeadAttention {
            query: linear(),
            key: linear(),
            value: linear(),
            out_proj: linear(),
            heads: self.heads,
        };
        let mlp = || Mlp {
            c_fc: LinearConfig::new(self.hidden, self.hidden * self.mlp_ratio).init(device),
            c_proj: LinearConfig::new(self.hidden * self.mlp_ratio, self.hidden).init(device),
            activation: Activation::Gelu,
        };
        FusionLayer {
            image_norm: norm(),
            text_norm: norm(),
            image_from_text: attention(),
            text_from_image: attention(),
            image_mlp_norm: norm(),
            image_mlp: mlp(),
            text_mlp_norm: norm(),
            text_mlp: mlp(),
        }
    }
}

/// One fusion layer. With `i = image_norm(image)` and `t = text_norm(text)`, both directions
/// read the same inputs: `image + attn(i -> t)` (padded words masked out as keys) and
/// `text + attn(t -> i)`; then `x + mlp(norm(x))` per modality.
#[derive(Module, Debug)]
pub struct FusionLayer {
    /// Norm of the image features before attention.
    pub image_norm: LayerNorm,
    /// Norm of the word features before attention.
    pub text_norm: LayerNorm,
    /// Image locations (queries) attending to words (keys, values).
    pub image_from_text: MultiHeadAttention,
    /// Words (queries) attending to image locations (keys, values).
    pub text_from_image: MultiHeadAttention,
    /// Norm before the image feed-forward block.
    pub image_mlp_norm: LayerNorm,
    /// Image feed-forward block.
    pub image_mlp: Mlp,
    /// Norm before the text feed-forward block.
    pub text_mlp_norm: LayerNorm,
    /// Text feed-forward block.
    pub text_mlp: Mlp,
}

impl FusionLayer {
    /// Fuses `image: [batch, locations, hidden]` and `text: [batch, words, hidden]`;
    /// `text_padding: [batch, words]` is true for the words no image location may attend to.
    /// Returns both updated, same shapes.
    pub fn forward(
        &self,
        image: Tensor<3>,
        text: Tensor<3>,
        text_padding: Tensor<2, Bool>,
    ) -> (Tensor<3>, Tensor<3>) {
        let i = self.image_norm.forward(image.clone());
        let t = self.text_norm.forward(text.clone());
        let image = image
            + masked_cross_attention(&self.image_from_text, i.clone(), t.clone(), text_padding);
        let text = text + self.text_from_image.forward_cross(t, i);
        let image = image.clone() + self.image_mlp.forward(self.image_mlp_norm.forward(image));
        let text = text.clone() + self.text_mlp.forward(self.text_mlp_norm.forward(text));
        (image, text)
    }
}

/// `attention`'s projections applied to `query: [batch, queries, width]` attending to
/// `context: [batch, keys, width]`, with the keys where `key_padding: [batch, keys]` is true
/// left out.
fn masked_cross_attention(
    attention_module: &MultiHeadAttention,
    query: Tensor<3>,
    context: Tensor<3>,
    key_padding: Tensor<2, Bool>,
) -> Tensor<3> {
    let [batch, queries, width] = query.dims();
    let keys = context.dims()[1];
    let heads = attention_module.heads;
    let head_dim = width / heads;
    let split_heads = |linear: &Linear, t: Tensor<3>, seq: usize| {
        linear
            .forward(t)
            .reshape([batch, seq, heads, head_dim])
            .swap_dims(1, 2)
    };
    let q = split_heads(&attention_module.query, query, queries);
    let k = split_heads(&attention_module.key, context.clone(), keys);
    let v = split_heads(&attention_module.value, context, keys);
    let mask = key_padding
        .reshape([batch, 1, 1, keys])
        .expand([batch, heads, queries, keys]);
    let options = AttentionModuleOptions {
        scale: None,
        softcap: None,
        is_causal: false,
    };
    let out = attention(q, k, v, Some(mask), None, options)
        .swap_dims(1, 2)
        .reshape([batch, queries, width]);
    attention_module.out_proj.forward(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Distribution, TensorData};

    #[test]
    fn image_features_depend_on_the_words_but_not_on_padding() {
        let device = Device::flex();
        device.seed(3);
        let layer = FusionLayerConfig::new(8, 2).init(&device);
        let image = Tensor::<3>::random([1, 5, 8], Distribution::Normal(0.0, 1.0), &device);
        let text = Tensor::<3>::random([1, 4, 8], Distribution::Normal(0.0, 1.0), &device);
        let other_text = Tensor::<3>::random([1, 4, 8], Distribution::Normal(0.0, 1.0), &device);
        // The last word is padding: changing it must not change the image features.
        let padding = || {
            Tensor::<2, Bool>::from_data(
                TensorData::new(vec![false, false, false, true], [1, 4]),
                &device,
            )
        };
        let changed_padding = Tensor::cat(
            vec![
                text.clone().narrow(1, 0, 3),
                other_text.clone().narrow(1, 3, 1),
            ],
            1,
        );
        let fused = |text: Tensor<3>| layer.forward(image.clone(), text, padding()).0;
        let base = fused(text.clone());
        assert_eq!(base.dims(), [1, 5, 8]);
        let max_diff = |a: Tensor<3>, b: Tensor<3>| (a - b).abs().max().into_scalar::<f32>();
        assert!(max_diff(base.clone(), fused(other_text)) > 1e-3);
        assert!(max_diff(base, fused(changed_padding)) < 1e-6);
    }
}

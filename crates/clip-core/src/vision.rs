//! The ViT image tower.

use burn::config::Config;
use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Initializer, LayerNorm, LayerNormConfig};
use burn::tensor::module::interpolate;
use burn::tensor::ops::{InterpolateMode, InterpolateOptions};
use burn::tensor::{Device, Int, Tensor};

use crate::transformer::{Activation, Transformer, TransformerConfig};

/// Configuration of a [`VisionTransformer`].
#[derive(Config, Debug, PartialEq)]
pub struct VisionTransformerConfig {
    /// Input image side in pixels (square images).
    pub image_size: usize,
    /// Patch side in pixels.
    pub patch_size: usize,
    /// Residual stream width.
    pub width: usize,
    /// Number of transformer blocks.
    pub layers: usize,
    /// Attention heads.
    pub heads: usize,
    /// MLP hidden size.
    pub mlp_width: usize,
    /// Output embedding size (after projection).
    pub embed_dim: usize,
    /// MLP non-linearity.
    #[config(default = "Activation::Gelu")]
    pub activation: Activation,
    /// Layer-norm epsilon.
    #[config(default = 1e-5)]
    pub layer_norm_eps: f64,
}

impl VisionTransformerConfig {
    /// Patches per image side.
    pub fn grid_size(&self) -> usize {
        self.image_size / self.patch_size
    }

    /// Builds the tower with open_clip's initialization.
    pub fn init(&self, device: &Device) -> VisionTransformer {
        let scale = (self.width as f64).powf(-0.5);
        let tokens = self.grid_size() * self.grid_size() + 1;
        let layer_norm = || {
            LayerNormConfig::new(self.width)
                .with_epsilon(self.layer_norm_eps)
                .init(device)
        };
        VisionTransformer {
            conv1: Conv2dConfig::new([3, self.width], [self.patch_size, self.patch_size])
                .with_stride([self.patch_size, self.patch_size])
                .with_bias(false)
                .init(device),
            class_embedding: Initializer::Normal { mean: 0.0, std: scale }.init([self.width], device),
            positional_embedding: Initializer::Normal { mean: 0.0, std: scale }
                .init([tokens, self.width], device),
            ln_pre: layer_norm(),
            transformer: TransformerConfig::new(
                self.width,
                self.layers,
                self.heads,
                self.mlp_width,
                self.activation,
            )
            .with_layer_norm_eps(self.layer_norm_eps)
            .init(device),
            ln_post: layer_norm(),
            proj: Initializer::Normal { mean: 0.0, std: scale }
                .init([self.width, self.embed_dim], device),
            patch_size: self.patch_size,
        }
    }
}

/// Intermediate outputs of the image tower, for dense methods (LSeg, GroupViT, ViLD, ...).
#[derive(Debug, Clone)]
pub struct VisionFeatures {
    /// Class token after `ln_post`, before projection: `[batch, width]`.
    pub pooled: Tensor<2>,
    /// Patch tokens after `ln_post`, before projection: `[batch, grid_h * grid_w, width]`.
    pub patch_tokens: Tensor<3>,
    /// Patch grid `[grid_h, grid_w]`.
    pub grid: [usize; 2],
    /// Output of every transformer block, class token first: `[batch, 1 + patches, width]`
    /// (empty unless requested).
    pub hidden_states: Vec<Tensor<3>>,
}

/// CLIP's ViT: patch embedding, class token, positional embedding, `ln_pre`, transformer,
/// `ln_post` and a linear projection (`x @ proj`).
#[derive(Module, Debug)]
pub struct VisionTransformer {
    /// Patch embedding, `[width, 3, patch, patch]`, no bias.
    pub conv1: Conv2d,
    /// Class token, `[width]`.
    pub class_embedding: Param<Tensor<1>>,
    /// Positional embedding, `[1 + grid * grid, width]`.
    pub positional_embedding: Param<Tensor<2>>,
    /// Norm before the transformer.
    pub ln_pre: LayerNorm,
    /// The residual attention blocks.
    pub transformer: Transformer,
    /// Norm after the transformer.
    pub ln_post: LayerNorm,
    /// Projection to the joint embedding, `[width, embed_dim]`.
    pub proj: Param<Tensor<2>>,
    /// Patch side in pixels.
    pub patch_size: usize,
}

impl VisionTransformer {
    /// Projected image embeddings `[batch, embed_dim]` from images `[batch, 3, H, W]`.
    pub fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        self.project(self.forward_features(images, false).pooled)
    }

    /// Applies the output projection to pooled (or per-token) features.
    pub fn project<const D: usize>(&self, features: Tensor<D>) -> Tensor<D> {
        features.matmul(self.proj.val().unsqueeze())
    }

    /// Runs the tower and returns its intermediate features. Images whose side differs from
    /// the configured size (any multiple of the patch size) get a bicubically resized
    /// positional embedding.
    pub fn forward_features(&self, images: Tensor<4>, keep_hidden_states: bool) -> VisionFeatures {
        let (x, grid) = self.embed(images);
        self.encode_tokens(x, grid, keep_hidden_states)
    }

    /// Projected image embeddings `[batch, embed_dim]` with patch dropout (FLIP, open_clip's
    /// `PatchDropout`): only the patch tokens at `kept` (`[batch, k]` indices into the
    /// `grid * grid` patches, after the positional embedding) and the class token enter the
    /// transformer. For training; inference keeps every patch.
    pub fn forward_kept_patches(&self, images: Tensor<4>, kept: Tensor<2, Int>) -> Tensor<2> {
        let (x, grid) = self.embed(images);
        let [batch, tokens, width] = x.dims();
        let k = kept.dims()[1];
        let class = x.clone().narrow(1, 0, 1);
        let patches = x.narrow(1, 1, tokens - 1).gather(1, kept.reshape([batch, k, 1]).expand([batch, k, width]));
        let x = Tensor::cat(vec![class, patches], 1);
        self.project(self.encode_tokens(x, grid, false).pooled)
    }

    /// Patch embedding, class token and positional embedding: `[batch, 1 + patches, width]`
    /// and the patch grid.
    pub(crate) fn embed(&self, images: Tensor<4>) -> (Tensor<3>, [usize; 2]) {
        let (x, [grid_h, grid_w]) = embed_patches(&self.conv1, images);
        let [batch, _, width] = x.dims();
        let class = self
            .class_embedding
            .val()
            .reshape([1, 1, width])
            .expand([batch, 1, width]);
        let x = Tensor::cat(vec![class, x], 1);
        (x + self.positional_embedding_for([grid_h, grid_w]).unsqueeze(), [grid_h, grid_w])
    }

    /// `ln_pre`, the transformer and `ln_post` over embedded tokens.
    fn encode_tokens(&self, x: Tensor<3>, [grid_h, grid_w]: [usize; 2], keep_hidden_states: bool) -> VisionFeatures {
        let x = self.ln_pre.forward(x);
        let (x, hidden_states) = if keep_hidden_states {
            self.transformer.forward_with_hidden_states(x, false)
        } else {
            (self.transformer.forward(x, false), Vec::new())
        };
        let x = self.ln_post.forward(x);
        let tokens = x.dims()[1];
        VisionFeatures {
            pooled: x.clone().narrow(1, 0, 1).squeeze_dim(1),
            patch_tokens: x.narrow(1, 1, tokens - 1),
            grid: [grid_h, grid_w],
            hidden_states,
        }
    }

    /// The positional embedding for a `grid` of patches, resized from the stored one if needed.
    pub fn positional_embedding_for(&self, grid: [usize; 2]) -> Tensor<2> {
        resize_positional_embedding(self.positional_embedding.val(), grid, InterpolateMode::Bicubic)
    }
}

/// A ViT's patch embedding, the convolution `conv` (kernel = stride = patch, no padding), as one
/// matrix product over flattened patches: the same linear map, `[batch, patches, width]` in
/// row-major patch order, and the patch grid. Pixels beyond the last whole patch are dropped, as
/// the convolution drops them.
///
/// Not `conv.forward`: burn 0.22.1's cubecl backends may pick (by timing) a weight-gradient
/// kernel, `wgrad_im2col`, that misreads an output gradient whose batch stride is not
/// `patches * width`, which is what a class token's concatenation hands back (docs/backends.md).
pub fn embed_patches(conv: &Conv2d, images: Tensor<4>) -> (Tensor<3>, [usize; 2]) {
    let [patch_h, patch_w] = conv.kernel_size;
    debug_assert_eq!(conv.stride, conv.kernel_size, "a patch embedding's stride is its kernel");
    let [batch, channels, height, width] = images.dims();
    let [grid_h, grid_w] = [height / patch_h, width / patch_w];
    let patch_len = channels * patch_h * patch_w;
    let patches = images
        .narrow(2, 0, grid_h * patch_h)
        .narrow(3, 0, grid_w * patch_w)
        .reshape([batch, channels, grid_h, patch_h, grid_w, patch_w])
        .permute([0, 2, 4, 1, 3, 5])
        .reshape([batch, grid_h * grid_w, patch_len]);
    let [out_channels, ..] = conv.weight.dims();
    let weight = conv.weight.val().reshape([out_channels, patch_len]).transpose();
    let x = patches.matmul(weight.unsqueeze());
    let x = match &conv.bias {
        Some(bias) => x + bias.val().unsqueeze(),
        None => x,
    };
    (x, [grid_h, grid_w])
}

/// Resizes a ViT positional embedding `[1 + g*g, width]` (class token first, square grid) to
/// `[1 + grid_h*grid_w, width]`, as open_clip's `resize_pos_embed` does (`align_corners=False`).
/// Returns the input unchanged when the grid already matches.
pub fn resize_positional_embedding(
    positional_embedding: Tensor<2>,
    grid: [usize; 2],
    mode: InterpolateMode,
) -> Tensor<2> {
    let [tokens, width] = positional_embedding.dims();
    let old = ((tokens - 1) as f64).sqrt().round() as usize;
    if [old, old] == grid {
        return positional_embedding;
    }
    let class = positional_embedding.clone().narrow(0, 0, 1);
    let patches = positional_embedding
        .narrow(0, 1, tokens - 1)
        .reshape([1, old, old, width])
        .permute([0, 3, 1, 2]);
    let options = InterpolateOptions::new(mode)
        .with_align_corners(false)
        .with_output_size(grid);
    let patches = interpolate(patches, options)
        .permute([0, 2, 3, 1])
        .reshape([grid[0] * grid[1], width]);
    Tensor::cat(vec![class, patches], 0)
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Distribution, Tolerance};

    use super::*;

    /// The matrix product is the convolution, bias and ragged edges included.
    #[test]
    fn patch_embedding_is_the_convolution() {
        let device = Device::flex();
        let conv = Conv2dConfig::new([3, 8], [4, 4])
            .with_stride([4, 4])
            .with_initializer(Initializer::Normal { mean: 0.0, std: 1.0 })
            .init(&device);
        let images = Tensor::<4>::random([2, 3, 14, 9], Distribution::Normal(0.0, 1.0), &device);
        let (tokens, grid) = embed_patches(&conv, images.clone());
        assert_eq!(grid, [3, 2]);
        let expected = conv.forward(images).reshape([2, 8, 6]).swap_dims(1, 2);
        tokens.into_data().assert_approx_eq::<f32>(&expected.into_data(), Tolerance::absolute(1e-5));
    }
}

//! The official LSeg image encoder: a timm `VisionTransformer` (`vit_large_patch16_384`,
//! `vit_base_patch32_384`) run through DPT's `forward_flex`, as `LSegNet.pretrained.model`.
//!
//! It differs from CLIP's image tower in four places: the patch embedding has a bias, there is
//! no norm before the blocks, the layer norms use `eps = 1e-6` with exact (erf) GELU, and the
//! positional embedding is resized bilinearly (CLIP's bicubically).

use burn::config::Config;
use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Initializer, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::ops::InterpolateMode;
use burn::tensor::{Device, Tensor};
use clip_core::transformer::{Activation, Transformer, TransformerConfig};
use clip_core::vision::{embed_patches, resize_positional_embedding};

/// Configuration of a [`TimmVit`] (timm's `VisionTransformer` arguments).
#[derive(Config, Debug, PartialEq)]
pub struct TimmVitConfig {
    /// Image side the positional embedding was made for (`img_size`); its grid is
    /// `image_size / patch_size` per side. Other sizes resize it.
    pub image_size: usize,
    /// Patch side in pixels (`patch_size`).
    pub patch_size: usize,
    /// Token width (`embed_dim`).
    pub width: usize,
    /// Number of blocks (`depth`).
    pub layers: usize,
    /// Attention heads (`num_heads`).
    pub heads: usize,
    /// MLP hidden size (`embed_dim * mlp_ratio`).
    pub mlp_width: usize,
    /// Layer-norm epsilon (timm's ViTs: 1e-6).
    #[config(default = 1e-6)]
    pub layer_norm_eps: f64,
    /// Classes of the classification head (`num_classes`; 0: no head). LSeg never runs the
    /// head; it is held so that checkpoints load and save unchanged.
    #[config(default = 0)]
    pub num_classes: usize,
}

impl TimmVitConfig {
    /// Patches per side of the stored positional embedding.
    pub fn grid_size(&self) -> usize {
        self.image_size / self.patch_size
    }

    /// Builds the encoder with timm-like initialization (normal, std 0.02).
    pub fn init(&self, device: &Device) -> TimmVit {
        let grid = self.grid_size();
        let normal = Initializer::Normal { mean: 0.0, std: 0.02 };
        TimmVit {
            patch_embed: Conv2dConfig::new([3, self.width], [self.patch_size, self.patch_size])
                .with_stride([self.patch_size, self.patch_size])
                .init(device),
            cls_token: normal.init([1, 1, self.width], device),
            pos_embed: normal.init([1, 1 + grid * grid, self.width], device),
            blocks: TransformerConfig::new(
                self.width,
                self.layers,
                self.heads,
                self.mlp_width,
                Activation::Gelu,
            )
            .with_layer_norm_eps(self.layer_norm_eps)
            .init(device),
            norm: LayerNormConfig::new(self.width)
                .with_epsilon(self.layer_norm_eps)
                .init(device),
            head: (self.num_classes > 0)
                .then(|| LinearConfig::new(self.width, self.num_classes).init(device)),
            patch_size: self.patch_size,
        }
    }
}

/// timm's `VisionTransformer` as DPT runs it (`forward_flex`): patch convolution (with bias),
/// class token first, plus the positional embedding resized to the input's grid, then the
/// blocks (pre-norm, fused-qkv attention and a GELU MLP, here clip-core's blocks with
/// `eps = 1e-6`). DPT's forward hooks read block outputs, so the final `norm` and the
/// classification `head` never run; they are kept for the checkpoint.
#[derive(Module, Debug)]
pub struct TimmVit {
    /// Patch embedding `[width, 3, patch, patch]` with bias (`patch_embed.proj`).
    pub patch_embed: Conv2d,
    /// Class token `[1, 1, width]`.
    pub cls_token: Param<Tensor<3>>,
    /// Positional embedding `[1, 1 + g*g, width]`, class token first.
    pub pos_embed: Param<Tensor<3>>,
    /// The blocks (`blocks.N`).
    pub blocks: Transformer,
    /// Final norm (unused by LSeg).
    pub norm: LayerNorm,
    /// Classification head (unused by LSeg).
    pub head: Option<Linear>,
    /// Patch side in pixels.
    pub patch_size: usize,
}

impl TimmVit {
    /// The positional embedding for a `grid` of `[gh, gw]` patches, `[1, 1 + gh*gw, width]`:
    /// DPT's `_resize_pos_embed`, the class row kept and the square grid resized bilinearly
    /// (`align_corners=False`).
    pub fn positional_embedding_for(&self, grid: [usize; 2]) -> Tensor<3> {
        let pos = self.pos_embed.val();
        let [_, tokens, width] = pos.dims();
        resize_positional_embedding(
            pos.reshape([tokens, width]),
            grid,
            InterpolateMode::Bilinear,
        )
        .unsqueeze()
    }

    /// The outputs of blocks `0..=last` (`[batch, 1 + gh*gw, width]` each, class token first)
    /// for images `[batch, 3, H, W]`, and the patch grid `[gh, gw]` (`H / patch`, `W / patch`).
    pub fn forward_blocks(&self, images: Tensor<4>, last: usize) -> (Vec<Tensor<3>>, [usize; 2]) {
        let (x, [gh, gw]) = embed_patches(&self.patch_embed, images);
        let [batch, _, width] = x.dims();
        let class = self.cls_token.val().expand([batch, 1, width]);
        let mut x = Tensor::cat(vec![class, x], 1) + self.positional_embedding_for([gh, gw]);
        let mut states = Vec::with_capacity(last + 1);
        for block in self.blocks.resblocks.iter().take(last + 1) {
            x = block.forward(x, false);
            states.push(x.clone());
        }
        (states, [gh, gw])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_outputs_and_grid_for_any_multiple_of_the_patch() {
        let device = Device::flex();
        let vit = TimmVitConfig::new(16, 4, 8, 3, 2, 16).with_num_classes(5).init(&device);
        assert_eq!(vit.pos_embed.val().dims(), [1, 17, 8]);
        let images = Tensor::<4>::ones([2, 3, 8, 12], &device);
        let (states, grid) = vit.forward_blocks(images, 1);
        assert_eq!(grid, [2, 3]);
        assert_eq!(states.len(), 2);
        assert_eq!(states[1].dims(), [2, 7, 8]);
        // The stored grid is returned as is.
        let same: Vec<f32> = vit.positional_embedding_for([4, 4]).into_data().iter::<f32>().collect();
        let stored: Vec<f32> = vit.pos_embed.val().into_data().iter::<f32>().collect();
        assert_eq!(same, stored);
    }
}

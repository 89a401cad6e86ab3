//! GroupViT's image tower: patch embedding, then stages of transformer layers over
//! `[image tokens ; group tokens]`, each but the last ending in a grouping block.

use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Initializer, LayerNorm, LayerNormConfig};
use burn::tensor::module::interpolate;
use burn::tensor::ops::{InterpolateMode, InterpolateOptions};
use burn::tensor::{Device, Tensor};
use clip_core::transformer::{Mlp, Transformer, TransformerConfig};

use super::assign::{AssignMode, TokenAssign, mix_tokens, mlp};
use super::config::GroupVitVisionConfig;

/// Output of the image tower.
#[derive(Debug, Clone)]
pub struct GroupVitVisionOutput {
    /// The final groups after the last layer norm: `[batch, groups, width]`.
    pub groups: Tensor<3>,
    /// Mean of the groups: `[batch, width]`.
    pub pooled: Tensor<2>,
    /// Soft assignment of each grouping block, `[batch, groups_i, tokens_i]`, in stage order.
    pub assignments: Vec<Tensor<3>>,
    /// Patch grid `[grid_h, grid_w]`.
    pub grid: [usize; 2],
}

/// Maps the previous stage's group tokens onto this stage's: LayerNorm, then a token-mixing MLP.
#[derive(Module, Debug)]
pub struct GroupProjector {
    /// Norm of the previous group tokens.
    pub norm: LayerNorm,
    /// Token-mixing MLP, previous groups to this stage's group tokens.
    pub mlp: Mlp,
}

/// One stage (Hugging Face's `GroupViTStage`).
#[derive(Module, Debug)]
pub struct GroupingStage {
    /// Learnable group tokens `[1, group_tokens, width]` (none in a stage without grouping).
    pub group_token: Option<Param<Tensor<3>>>,
    /// Transformer layers over `[image tokens ; group tokens]`.
    pub layers: Transformer,
    /// The grouping block.
    pub downsample: Option<TokenAssign>,
    /// Adds the previous stage's group tokens to this stage's.
    pub group_projector: Option<GroupProjector>,
}

impl GroupingStage {
    /// Tokens `[batch, tokens, width]` (and the previous stage's group tokens) in; the new
    /// tokens, this stage's group tokens after the transformer, and the soft assignment out.
    pub fn forward(
        &self,
        x: Tensor<3>,
        previous_groups: Option<Tensor<3>>,
        mode: AssignMode,
    ) -> (Tensor<3>, Option<Tensor<3>>, Option<Tensor<3>>) {
        let [batch, tokens, width] = x.dims();
        let Some(group_token) = &self.group_token else {
            return (self.layers.forward(x, false), None, None);
        };
        let group_count = group_token.dims()[1];
        let mut groups = group_token.val().expand([batch, group_count, width]);
        if let (Some(projector), Some(previous)) = (&self.group_projector, previous_groups) {
            groups = groups + mix_tokens(&projector.mlp, projector.norm.forward(previous));
        }
        let all = self.layers.forward(Tensor::cat(vec![x, groups], 1), false);
        let x = all.clone().narrow(1, 0, tokens);
        let groups = all.narrow(1, tokens, group_count);
        match &self.downsample {
            Some(block) => {
                let (x, assignment) = block.forward(x, groups.clone(), mode);
                (x, Some(groups), Some(assignment))
            }
            None => (x, Some(groups), None),
        }
    }
}

/// GroupViT's image tower (Hugging Face's `GroupViTVisionTransformer`).
#[derive(Module, Debug)]
pub struct GroupVitVision {
    /// Patch embedding `[width, channels, patch, patch]`, with bias.
    pub patch_embedding: Conv2d,
    /// Norm of the patch embeddings (before the positional embedding is added).
    pub embedding_norm: LayerNorm,
    /// Positional embedding `[1, grid * grid, width]` (no class token).
    pub position_embeddings: Param<Tensor<3>>,
    /// The stages.
    pub stages: Vec<GroupingStage>,
    /// Final norm.
    pub layernorm: LayerNorm,
}

impl GroupVitVision {
    /// A tower with freshly initialized weights.
    pub fn new(config: &GroupVitVisionConfig, device: &Device) -> Self {
        let width = config.hidden_size;
        let grid = config.image_size / config.patch_size;
        let layer_norm = || {
            LayerNormConfig::new(width)
                .with_epsilon(config.layer_norm_eps)
                .init(device)
        };
        let normal = Initializer::Normal {
            mean: 0.0,
            std: 0.02,
        };
        let stages = (0..config.depths.len())
            .map(|i| {
                let group_tokens = config.num_group_tokens[i];
                let previous = if i > 0 {
                    config.num_output_groups[i - 1]
                } else {
                    0
                };
                GroupingStage {
                    group_token: (group_tokens > 0)
                        .then(|| normal.init([1, group_tokens, width], device)),
                    layers: TransformerConfig::new(
                        width,
                        config.depths[i],
                        config.num_attention_heads,
                        config.intermediate_size,
                        config.hidden_act,
                    )
                    .with_layer_norm_eps(config.layer_norm_eps)
                    .init(device),
                    downsample: (group_tokens > 0).then(|| {
                        TokenAssign::new(config, group_tokens, config.num_output_groups[i], device)
                    }),
                    group_projector: (group_tokens > 0 && previous > 0).then(|| GroupProjector {
                        norm: layer_norm(),
                        mlp: mlp(
                            [previous, width / 2, group_tokens],
                            config.hidden_act,
                            device,
                        ),
                    }),
                }
            })
            .collect();
        Self {
            patch_embedding: Conv2dConfig::new(
                [config.num_channels, width],
                [config.patch_size, config.patch_size],
            )
            .with_stride([config.patch_size, config.patch_size])
            .init(device),
            embedding_norm: layer_norm(),
            position_embeddings: normal.init([1, grid * grid, width], device),
            stages,
            layernorm: layer_norm(),
        }
    }

    /// Runs the tower on images `[batch, channels, H, W]` (sides multiples of the patch size).
    pub fn forward(&self, images: Tensor<4>, mode: AssignMode) -> GroupVitVisionOutput {
        let x = self.patch_embedding.forward(images);
        let [batch, width, grid_h, grid_w] = x.dims();
        let x = x.reshape([batch, width, grid_h * grid_w]).swap_dims(1, 2);
        let x = self.embedding_norm.forward(x)
            + self.position_embedding_for([grid_h, grid_w]).unsqueeze();
        let mut x = x;
        let mut groups = None;
        let mut assignments = Vec::new();
        for stage in &self.stages {
            let (next, stage_groups, assignment) = stage.forward(x, groups, mode);
            x = next;
            groups = stage_groups;
            assignments.extend(assignment);
        }
        let groups = self.layernorm.forward(x);
        GroupVitVisionOutput {
            pooled: groups.clone().mean_dim(1).squeeze_dim(1),
            groups,
            assignments,
            grid: [grid_h, grid_w],
        }
    }

    /// The positional embedding `[grid_h * grid_w, width]` for a patch grid, resized bicubically
    /// (`align_corners=False`) from the stored square grid when it differs.
    pub fn position_embedding_for(&self, grid: [usize; 2]) -> Tensor<2> {
        let [_, tokens, width] = self.position_embeddings.dims();
        let stored = self.position_embeddings.val().reshape([tokens, width]);
        let side = (tokens as f64).sqrt().round() as usize;
        if [side, side] == grid {
            return stored;
        }
        let patches = stored.reshape([1, side, side, width]).permute([0, 3, 1, 2]);
        let options = InterpolateOptions::new(InterpolateMode::Bicubic)
            .with_align_corners(false)
            .with_output_size(grid);
        interpolate(patches, options)
            .permute([0, 2, 3, 1])
            .reshape([grid[0] * grid[1], width])
    }
}

//! Temporal modelling over per-frame embeddings: learnable frame position embeddings, a stack of
//! residual attention blocks and a residual connection to the input. This is CLIP4Clip's
//! `seqTransf` similarity calculator and ActionCLIP's `Transf` post-network prompt.

use burn::config::Config;
use burn::module::{Module, ModuleMapper, Param};
use burn::nn::{Initializer, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::{Device, Tensor};
use clip_core::text::TextTransformer;
use clip_core::transformer::{Activation, ResidualAttentionBlock, Transformer, TransformerConfig};

/// Layer-norm epsilon of the official temporal and cross transformers (a TF-style `LayerNorm`
/// with `eps = 1e-12`).
pub const TEMPORAL_LAYER_NORM_EPS: f64 = 1e-12;

/// Standard deviation of the official initialization of new linear and embedding weights
/// (`initializer_range` in CLIP4Clip, hard-coded in ActionCLIP).
pub const INIT_STD: f64 = 0.02;

/// Configuration of a [`TemporalTransformer`].
#[derive(Config, Debug)]
pub struct TemporalTransformerConfig {
    /// Width of the frame embeddings (CLIP's joint embedding size).
    pub width: usize,
    /// Number of residual attention blocks.
    pub layers: usize,
    /// Attention heads per block.
    pub heads: usize,
    /// Number of frame position embeddings: the longest clip the module accepts.
    pub max_frames: usize,
}

impl TemporalTransformerConfig {
    /// The blocks' configuration: MLP 4x wide, QuickGELU, epsilon 1e-12, as the official code.
    fn blocks(&self) -> TransformerConfig {
        TransformerConfig::new(
            self.width,
            self.layers,
            self.heads,
            4 * self.width,
            Activation::QuickGelu,
        )
        .with_layer_norm_eps(TEMPORAL_LAYER_NORM_EPS)
    }

    /// Builds the module with freshly initialized weights (position embeddings `N(0, 0.02)`).
    pub fn init(&self, device: &Device) -> TemporalTransformer {
        TemporalTransformer {
            frame_position_embeddings: Initializer::Normal {
                mean: 0.0,
                std: INIT_STD,
            }
            .init([self.max_frames, self.width], device),
            transformer: self.blocks().init(device),
        }
    }

    /// Builds the module from CLIP's text tower, CLIP4Clip's initialization trick: the frame
    /// position embeddings are the first `max_frames` rows of the text positional embedding and
    /// the blocks are copies of the first `layers` text blocks (as new parameters). Falls back to
    /// [`init`](Self::init) when the text tower does not fit (see [`text_tower_fits`]).
    pub fn init_from_text(&self, text: &TextTransformer, device: &Device) -> TemporalTransformer {
        if !text_tower_fits(text, self.width, self.heads, self.layers, self.max_frames) {
            return self.init(device);
        }
        TemporalTransformer {
            frame_position_embeddings: copy_rows(&text.positional_embedding, self.max_frames),
            transformer: copy_blocks(&text.transformer, self.layers, device),
        }
    }
}

/// Whether CLIP's text tower can seed a temporal or cross transformer: its width equals the
/// frame embedding width, it has `heads` heads and at least `layers` blocks, a 4x MLP, and at
/// least `positions` positional embeddings.
pub fn text_tower_fits(text: &TextTransformer, width: usize, heads: usize, layers: usize, positions: usize) -> bool {
    let [context, text_width] = text.positional_embedding.dims();
    let blocks = &text.transformer.resblocks;
    text_width == width
        && context >= positions
        && blocks.len() >= layers
        && blocks
            .first()
            .is_none_or(|b| b.attn.heads == heads && b.mlp.c_fc.weight.dims()[1] == 4 * width)
}

/// The first `rows` rows of `source` as a new trainable parameter.
pub(crate) fn copy_rows(source: &Param<Tensor<2>>, rows: usize) -> Param<Tensor<2>> {
    Param::from_tensor(source.val().narrow(0, 0, rows).detach())
}

/// Copies of the first `layers` blocks of `source` with new parameter ids and the official
/// layer-norm epsilon.
pub(crate) fn copy_blocks(source: &Transformer, layers: usize, device: &Device) -> Transformer {
    let resblocks = source.resblocks[..layers]
        .iter()
        .map(|block| {
            let mut copy: ResidualAttentionBlock = block.clone().map(&mut NewParams);
            copy.ln_1 = with_epsilon(copy.ln_1, device);
            copy.ln_2 = with_epsilon(copy.ln_2, device);
            copy
        })
        .collect();
    Transformer { resblocks }
}

/// Gives every float parameter a new id (a cloned module otherwise shares ids with its source,
/// and the optimizer would treat both as one parameter).
struct NewParams;

impl ModuleMapper for NewParams {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        Param::from_tensor(param.val().detach())
    }
}

/// `norm`'s scale and shift under a layer norm with [`TEMPORAL_LAYER_NORM_EPS`].
fn with_epsilon(norm: LayerNorm, device: &Device) -> LayerNorm {
    let width = norm.gamma.dims()[0];
    let mut out = LayerNormConfig::new(width)
        .with_epsilon(TEMPORAL_LAYER_NORM_EPS)
        .init(device);
    out.gamma = norm.gamma;
    out.beta = norm.beta;
    out
}

/// A linear layer with the official initialization: weight `N(0, 0.02)`, bias zero.
pub(crate) fn linear(d_input: usize, d_output: usize, device: &Device) -> Linear {
    let mut layer = LinearConfig::new(d_input, d_output)
        .with_initializer(Initializer::Normal {
            mean: 0.0,
            std: INIT_STD,
        })
        .init(device);
    layer.bias = Some(Param::from_tensor(Tensor::zeros([d_output], device)));
    layer
}

/// Frame position embeddings, transformer blocks and a residual connection:
/// `x + blocks(x + P[:T])` over frame embeddings `x` `[batch, T, width]`. The official layouts
/// call these `frame_position_embeddings.weight` and `transformerClip.resblocks.N` (CLIP4Clip)
/// or `transformer.resblocks.N` (ActionCLIP).
#[derive(Module, Debug)]
pub struct TemporalTransformer {
    /// `[max_frames, width]`.
    pub frame_position_embeddings: Param<Tensor<2>>,
    /// Bidirectional (non-causal) residual attention blocks.
    pub transformer: Transformer,
}

impl TemporalTransformer {
    /// The longest clip this module accepts.
    pub fn max_frames(&self) -> usize {
        self.frame_position_embeddings.dims()[0]
    }

    /// `[batch, T, width]` in and out. `mask` `[batch, T]` (1 for a real frame, 0 for padding)
    /// hides padded frames from attention as the official code does, with `(1 - mask) * -1e6`
    /// added to the scores; `None` attends to every frame (ActionCLIP's `Transf`).
    ///
    /// # Panics
    /// When `T` exceeds [`max_frames`](Self::max_frames).
    pub fn forward(&self, frames: Tensor<3>, mask: Option<Tensor<2>>) -> Tensor<3> {
        let frames_in = frames.dims()[1];
        assert!(
            frames_in <= self.max_frames(),
            "temporal transformer: {frames_in} frames but only {} frame position embeddings (max_frames)",
            self.max_frames()
        );
        let positions = self.frame_position_embeddings.val().narrow(0, 0, frames_in).unsqueeze();
        let x = frames.clone() + positions;
        let hidden = match mask {
            Some(mask) => self.transformer.forward_with_bias(x, key_mask_bias(mask, frames_in)),
            None => self.transformer.forward(x, false),
        };
        frames + hidden
    }
}

/// Additive attention bias `[batch, queries, keys]` hiding the keys whose `mask` `[batch, keys]`
/// entry is 0: the official `(1 - mask) * -1e6`, the same for every query.
pub fn key_mask_bias(mask: Tensor<2>, queries: usize) -> Tensor<3> {
    let [batch, keys] = mask.dims();
    ((mask.neg() + 1.0) * -1e6).reshape([batch, 1, keys]).expand([batch, queries, keys])
}

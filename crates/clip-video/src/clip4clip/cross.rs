//! CLIP4Clip's tight-type similarity calculator (`tightTransf`): a cross transformer over the
//! text embedding followed by the frame embeddings, scoring each text-video pair.

use burn::config::Config;
use burn::module::{Module, Param};
use burn::nn::{Initializer, LayerNorm, LayerNormConfig, Linear};
use burn::tensor::{Device, Tensor};
use clip_core::text::TextTransformer;
use clip_core::transformer::{Activation, Transformer, TransformerConfig};

use crate::clip4clip::temporal::{INIT_STD, TEMPORAL_LAYER_NORM_EPS, copy_blocks, copy_rows, key_mask_bias, linear, text_tower_fits};

/// Configuration of a [`CrossEncoder`].
#[derive(Config, Debug)]
pub struct CrossEncoderConfig {
    /// Width of the text and frame embeddings (CLIP's joint embedding size).
    pub width: usize,
    /// Number of residual attention blocks.
    pub layers: usize,
    /// Attention heads per block.
    pub heads: usize,
    /// The most frames per video (the sequence is `1 + frames` long).
    pub max_frames: usize,
    /// Rows of the position embeddings (at least `1 + max_frames`; official checkpoints have
    /// the text context length, 77); `None` for exactly `1 + max_frames`.
    #[config(default = "None")]
    pub positions: Option<usize>,
}

impl CrossEncoderConfig {
    /// Builds the encoder with freshly initialized weights: position embeddings and linear
    /// weights `N(0, 0.02)`, zero biases.
    pub fn init(&self, device: &Device) -> CrossEncoder {
        let blocks = TransformerConfig::new(
            self.width,
            self.layers,
            self.heads,
            4 * self.width,
            Activation::QuickGelu,
        )
        .with_layer_norm_eps(TEMPORAL_LAYER_NORM_EPS)
        .init(device);
        self.assemble(
            Initializer::Normal {
                mean: 0.0,
                std: INIT_STD,
            }
            .init([self.position_rows(), self.width], device),
            blocks,
            device,
        )
    }

    /// As [`init`](Self::init), but position embeddings and blocks are copied from CLIP's text
    /// tower (the official initialization trick) when it fits.
    pub fn init_from_text(&self, text: &TextTransformer, device: &Device) -> CrossEncoder {
        if !text_tower_fits(text, self.width, self.heads, self.layers, self.position_rows()) {
            return self.init(device);
        }
        self.assemble(
            copy_rows(&text.positional_embedding, self.position_rows()),
            copy_blocks(&text.transformer, self.layers, device),
            device,
        )
    }

    /// Rows of the position embeddings.
    fn position_rows(&self) -> usize {
        self.positions.unwrap_or(1 + self.max_frames)
    }

    fn assemble(
        &self,
        position_embeddings: Param<Tensor<2>>,
        transformer: Transformer,
        device: &Device,
    ) -> CrossEncoder {
        CrossEncoder {
            position_embeddings,
            transformer,
            ln_pool: LayerNormConfig::new(self.width)
                .with_epsilon(TEMPORAL_LAYER_NORM_EPS)
                .init(device),
            pool_dense: linear(self.width, self.width, device),
            score: linear(self.width, 1, device),
        }
    }
}

/// `score(QuickGELU(pool_dense(ln_pool(blocks(E))[0])))` over the sequence
/// `E = [t; f_1 .. f_T] + P`, where `t` is the text embedding, `f_i` the frame embeddings and
/// `P` position embeddings (the official `CrossEmbeddings` has no token-type embedding). Official
/// keys: `cross.embeddings.position_embeddings.weight`, `cross.transformer.resblocks.N`,
/// `cross.pooler.ln_pool`, `cross.pooler.dense`, `similarity_dense`.
#[derive(Module, Debug)]
pub struct CrossEncoder {
    /// `[positions, width]`, positions at least `1 + max_frames`.
    pub position_embeddings: Param<Tensor<2>>,
    /// Bidirectional residual attention blocks.
    pub transformer: Transformer,
    /// Norm before pooling.
    pub ln_pool: LayerNorm,
    /// Pooler projection of the first token.
    pub pool_dense: Linear,
    /// The pair score head (`similarity_dense`).
    pub score: Linear,
}

impl CrossEncoder {
    /// The most frames per video this encoder accepts.
    pub fn max_frames(&self) -> usize {
        self.position_embeddings.dims()[0] - 1
    }

    /// Scores `[pairs]` of text embeddings `[pairs, width]` with frame embeddings
    /// `[pairs, T, width]`; `mask` `[pairs, T]` (1 for real frames) hides padded frames from
    /// attention (the text token is always visible).
    ///
    /// # Panics
    /// When `T` exceeds [`max_frames`](Self::max_frames).
    pub fn forward(&self, text: Tensor<2>, frames: Tensor<3>, mask: Option<Tensor<2>>) -> Tensor<1> {
        let [pairs, frames_in, width] = frames.dims();
        assert!(
            frames_in <= self.max_frames(),
            "cross encoder: {frames_in} frames but position embeddings for only {} (max_frames)",
            self.max_frames()
        );
        let sequence = Tensor::cat(vec![text.unsqueeze_dim(1), frames], 1)
            + self.position_embeddings.val().narrow(0, 0, 1 + frames_in).unsqueeze();
        let hidden = match mask {
            Some(mask) => {
                let with_text = Tensor::cat(vec![Tensor::ones([pairs, 1], &mask.device()), mask], 1);
                self.transformer.forward_with_bias(sequence, key_mask_bias(with_text, 1 + frames_in))
            }
            None => self.transformer.forward(sequence, false),
        };
        let hidden = self.ln_pool.forward(hidden);
        let first = hidden.narrow(1, 0, 1).reshape([pairs, width]);
        let pooled = Activation::QuickGelu.forward(self.pool_dense.forward(first));
        self.score.forward(pooled).reshape([pairs])
    }
}

//! The causal text transformer tower.

use burn::config::Config;
use burn::module::{Module, Param};
use burn::nn::{Embedding, EmbeddingConfig, Initializer, LayerNorm, LayerNormConfig};
use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::transformer::{Activation, Transformer, TransformerConfig};

/// Configuration of a [`TextTransformer`].
#[derive(Config, Debug, PartialEq)]
pub struct TextTransformerConfig {
    /// Maximum number of tokens (positional embeddings).
    pub context_length: usize,
    /// Vocabulary size.
    pub vocab_size: usize,
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

impl TextTransformerConfig {
    /// Builds the tower with open_clip's initialization.
    pub fn init(&self, device: &Device) -> TextTransformer {
        TextTransformer {
            token_embedding: EmbeddingConfig::new(self.vocab_size, self.width)
                .with_initializer(Initializer::Normal { mean: 0.0, std: 0.02 })
                .init(device),
            positional_embedding: Initializer::Normal { mean: 0.0, std: 0.01 }
                .init([self.context_length, self.width], device),
            transformer: TransformerConfig::new(
                self.width,
                self.layers,
                self.heads,
                self.mlp_width,
                self.activation,
            )
            .with_layer_norm_eps(self.layer_norm_eps)
            .init(device),
            ln_final: LayerNormConfig::new(self.width)
                .with_epsilon(self.layer_norm_eps)
                .init(device),
            text_projection: Initializer::Normal {
                mean: 0.0,
                std: (self.width as f64).powf(-0.5),
            }
            .init([self.width, self.embed_dim], device),
        }
    }
}

/// Intermediate outputs of the text tower.
#[derive(Debug, Clone)]
pub struct TextFeatures {
    /// The end-of-text token after `ln_final`, before projection: `[batch, width]`.
    pub pooled: Tensor<2>,
    /// Every token after `ln_final`: `[batch, seq, width]`.
    pub tokens: Tensor<3>,
    /// Output of every transformer block (empty unless requested).
    pub hidden_states: Vec<Tensor<3>>,
}

/// CLIP's text transformer: token and positional embeddings, a causal transformer,
/// `ln_final`, pooling at the end-of-text token and a linear projection (`x @ text_projection`).
#[derive(Module, Debug)]
pub struct TextTransformer {
    /// Token embedding, `[vocab, width]`.
    pub token_embedding: Embedding,
    /// Positional embedding, `[context_length, width]`.
    pub positional_embedding: Param<Tensor<2>>,
    /// The causal residual attention blocks.
    pub transformer: Transformer,
    /// Final norm.
    pub ln_final: LayerNorm,
    /// Projection to the joint embedding, `[width, embed_dim]`.
    pub text_projection: Param<Tensor<2>>,
}

impl TextTransformer {
    /// Projected text embeddings `[batch, embed_dim]` from token ids `[batch, seq]`.
    pub fn forward(&self, tokens: Tensor<2, Int>) -> Tensor<2> {
        self.project(self.forward_features(tokens, false).pooled)
    }

    /// Applies the output projection to pooled (or per-token) features.
    pub fn project<const D: usize>(&self, features: Tensor<D>) -> Tensor<D> {
        features.matmul(self.text_projection.val().unsqueeze())
    }

    /// Runs the tower and returns its intermediate features (see [`causal_text_features`]).
    pub fn forward_features(&self, tokens: Tensor<2, Int>, keep_hidden_states: bool) -> TextFeatures {
        causal_text_features(
            &self.token_embedding,
            &self.positional_embedding,
            &self.transformer,
            &self.ln_final,
            tokens,
            keep_hidden_states,
        )
    }
}

/// The body of CLIP-style text towers (CLIP's and GroupViT's): token plus positional embeddings,
/// the causal transformer, the final norm, and pooling at each row's end-of-text token.
/// Sequences may be shorter than the context length. Pooling takes the first occurrence of the
/// largest id in each row, which is the end-of-text token for CLIP's tokenizer (open_clip's
/// `argmax` pooling).
pub fn causal_text_features(
    token_embedding: &Embedding,
    positional_embedding: &Param<Tensor<2>>,
    transformer: &Transformer,
    ln_final: &LayerNorm,
    tokens: Tensor<2, Int>,
    keep_hidden_states: bool,
) -> TextFeatures {
    let [batch, seq] = tokens.dims();
    let device = tokens.device();
    let eot = end_of_text_positions(&tokens.to_data());
    let x = token_embedding.forward(tokens);
    let width = x.dims()[2];
    let x = x + positional_embedding.val().narrow(0, 0, seq).unsqueeze();
    let (x, hidden_states) = if keep_hidden_states {
        transformer.forward_with_hidden_states(x, true)
    } else {
        (transformer.forward(x, true), Vec::new())
    };
    let x = ln_final.forward(x);
    let index = Tensor::<1, Int>::from_data(TensorData::new(eot, [batch]), &device)
        .reshape([batch, 1, 1])
        .expand([batch, 1, width]);
    TextFeatures {
        pooled: x.clone().gather(1, index).squeeze_dim(1),
        tokens: x,
        hidden_states,
    }
}

/// Position of the first largest id in each row of `[batch, seq]` token ids (the end-of-text
/// token for CLIP's tokenizer).
pub fn end_of_text_positions(tokens: &TensorData) -> Vec<i64> {
    let seq = tokens.shape()[1];
    let ids: Vec<i64> = tokens.iter::<i64>().collect();
    ids.chunks(seq)
        .map(|row| {
            let max = row.iter().copied().max().unwrap_or(0);
            row.iter().position(|&id| id == max).unwrap_or(0) as i64
        })
        .collect()
}

//! GroupViT's text tower: CLIP's causal transformer, pooled at the end-of-text token (the
//! projection is the separate [`ProjectionHead`](super::projection::ProjectionHead)).

use burn::module::{Module, Param};
use burn::nn::{Embedding, EmbeddingConfig, Initializer, LayerNorm, LayerNormConfig};
use burn::tensor::{Device, Int, Tensor};
use clip_core::text::causal_text_features;
use clip_core::transformer::{Transformer, TransformerConfig};

use super::config::GroupVitTextConfig;

/// Hugging Face's `GroupViTTextTransformer`.
#[derive(Module, Debug)]
pub struct GroupVitText {
    /// Token embedding `[vocab, width]`.
    pub token_embedding: Embedding,
    /// Positional embedding `[context_length, width]`.
    pub positional_embedding: Param<Tensor<2>>,
    /// The causal pre-norm transformer.
    pub transformer: Transformer,
    /// Final norm.
    pub ln_final: LayerNorm,
}

impl GroupVitText {
    /// A tower with freshly initialized weights (transformers' initialization of embeddings).
    pub fn new(config: &GroupVitTextConfig, device: &Device) -> Self {
        Self {
            token_embedding: EmbeddingConfig::new(config.vocab_size, config.hidden_size)
                .with_initializer(Initializer::Normal {
                    mean: 0.0,
                    std: 0.02,
                })
                .init(device),
            positional_embedding: Initializer::Normal {
                mean: 0.0,
                std: 0.02,
            }
            .init([config.max_position_embeddings, config.hidden_size], device),
            transformer: TransformerConfig::new(
                config.hidden_size,
                config.num_hidden_layers,
                config.num_attention_heads,
                config.intermediate_size,
                config.hidden_act,
            )
            .with_layer_norm_eps(config.layer_norm_eps)
            .init(device),
            ln_final: LayerNormConfig::new(config.hidden_size)
                .with_epsilon(config.layer_norm_eps)
                .init(device),
        }
    }

    /// Token ids `[batch, seq]` (seq at most the context length) to the final-norm features at
    /// each row's end-of-text token (its first largest id): `[batch, width]`.
    pub fn forward(&self, tokens: Tensor<2, Int>) -> Tensor<2> {
        causal_text_features(
            &self.token_embedding,
            &self.positional_embedding,
            &self.transformer,
            &self.ln_final,
            tokens,
            false,
        )
        .pooled
    }
}

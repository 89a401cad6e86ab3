//! The pre-norm residual attention transformer shared by both CLIP towers.

use burn::config::Config;
use burn::module::Module;
use burn::nn::{LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::activation::{gelu, sigmoid};
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Device, Tensor};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::ClipError;

/// The MLP non-linearity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// Exact (erf) GELU, as `torch.nn.GELU()`.
    Gelu,
    /// OpenAI's `x * sigmoid(1.702 x)`.
    QuickGelu,
}

impl Activation {
    /// Applies the activation element-wise.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        match self {
            Self::Gelu => gelu_on_all_cores(x),
            Self::QuickGelu => x.clone() * sigmoid(x * 1.702),
        }
    }

    /// Parses Hugging Face's `hidden_act` value; `field` names the key in errors.
    pub fn from_hf_name(name: &str, origin: &str, field: &str) -> crate::Result<Self> {
        match name {
            "gelu" => Ok(Self::Gelu),
            "quick_gelu" => Ok(Self::QuickGelu),
            other => Err(ClipError::config(
                origin,
                format!("{field} = \"{other}\" is not supported (use \"gelu\" or \"quick_gelu\")"),
            )),
        }
    }

    /// The name Hugging Face uses for this activation.
    pub fn hf_name(&self) -> &'static str {
        match self {
            Self::Gelu => "gelu",
            Self::QuickGelu => "quick_gelu",
        }
    }
}

/// Exact GELU, split over the CPU cores where that pays.
///
/// burn's CPU backend computes GELU one element at a time with a scalar `erf` on one thread,
/// about 7.5 ns per element: 37 ms for one ViT-B-32 MLP at batch 32, over a third of the
/// tower's inference time (docs/performance.md). On `flex`, a large tensor outside the autodiff
/// graph is cut into row blocks computed in parallel, with the very same op, so the
/// result is bit-identical. Tracked tensors (training) and other backends take burn's op as is:
/// splitting would only add slice and concatenation nodes to the backward pass.
fn gelu_on_all_cores<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    /// Elements per block below which splitting costs more than it saves.
    const MIN_BLOCK: usize = 1 << 15;
    let dims = x.dims();
    let width = dims[D - 1];
    let rows = dims.iter().product::<usize>() / width.max(1);
    let blocks = rayon::current_num_threads().min(rows).min(rows * width / MIN_BLOCK);
    if blocks < 2 || x.is_tracked() || x.device().without_autodiff() != Device::flex() {
        return gelu(x);
    }
    // burn's own thread pool (the one its matrix products run on) takes the blocks.
    let parts: Vec<Tensor<2>> = x.reshape([rows, width]).chunk(blocks, 0).into_par_iter().map(gelu).collect();
    Tensor::cat(parts, 0).reshape(dims)
}

/// Configuration of a [`Transformer`].
#[derive(Config, Debug)]
pub struct TransformerConfig {
    /// Residual stream width.
    pub width: usize,
    /// Number of residual attention blocks.
    pub layers: usize,
    /// Attention heads per block.
    pub heads: usize,
    /// Hidden size of each MLP.
    pub mlp_width: usize,
    /// MLP non-linearity.
    pub activation: Activation,
    /// Layer-norm epsilon.
    #[config(default = 1e-5)]
    pub layer_norm_eps: f64,
}

impl TransformerConfig {
    /// Builds the transformer with freshly initialized weights.
    pub fn init(&self, device: &Device) -> Transformer {
        let resblocks = (0..self.layers)
            .map(|_| ResidualAttentionBlock {
                ln_1: LayerNormConfig::new(self.width)
                    .with_epsilon(self.layer_norm_eps)
                    .init(device),
                attn: MultiHeadAttention {
                    query: LinearConfig::new(self.width, self.width).init(device),
                    key: LinearConfig::new(self.width, self.width).init(device),
                    value: LinearConfig::new(self.width, self.width).init(device),
                    out_proj: LinearConfig::new(self.width, self.width).init(device),
                    heads: self.heads,
                },
                ln_2: LayerNormConfig::new(self.width)
                    .with_epsilon(self.layer_norm_eps)
                    .init(device),
                mlp: Mlp {
                    c_fc: LinearConfig::new(self.width, self.mlp_width).init(device),
                    c_proj: LinearConfig::new(self.mlp_width, self.width).init(device),
                    activation: self.activation,
                },
            })
            .collect();
        Transformer { resblocks }
    }
}

/// A stack of pre-norm residual attention blocks.
#[derive(Module, Debug)]
pub struct Transformer {
    /// The blocks, applied in order.
    pub resblocks: Vec<ResidualAttentionBlock>,
}

impl Transformer {
    /// `[batch, seq, width]` in and out; `causal` masks attention to later positions.
    pub fn forward(&self, x: Tensor<3>, causal: bool) -> Tensor<3> {
        self.resblocks
            .iter()
            .fold(x, |x, block| block.forward(x, causal))
    }

    /// Bidirectional attention with an additive bias `[batch, seq, seq]` on the attention scores
    /// (the same for every head): `-1e6` (or `-inf`) on a key masks it out, as the official
    /// CLIP4Clip code masks padded frames with `(1 - mask) * -1e6`.
    pub fn forward_with_bias(&self, x: Tensor<3>, bias: Tensor<3>) -> Tensor<3> {
        self.resblocks
            .iter()
            .fold(x, |x, block| block.forward_with_bias(x, bias.clone()))
    }

    /// As [`forward`](Self::forward), also returning the output of every block.
    pub fn forward_with_hidden_states(&self, x: Tensor<3>, causal: bool) -> (Tensor<3>, Vec<Tensor<3>>) {
        let mut hidden_states = Vec::with_capacity(self.resblocks.len());
        let mut x = x;
        for block in &self.resblocks {
            x = block.forward(x, causal);
            hidden_states.push(x.clone());
        }
        (x, hidden_states)
    }
}

/// `x + attn(ln_1(x))`, then `x + mlp(ln_2(x))`.
#[derive(Module, Debug)]
pub struct ResidualAttentionBlock {
    /// Norm before attention.
    pub ln_1: LayerNorm,
    /// Multi-head self-attention.
    pub attn: MultiHeadAttention,
    /// Norm before the MLP.
    pub ln_2: LayerNorm,
    /// Two-layer MLP.
    pub mlp: Mlp,
}

impl ResidualAttentionBlock {
    /// `[batch, seq, width]` in and out.
    pub fn forward(&self, x: Tensor<3>, causal: bool) -> Tensor<3> {
        let x = x.clone() + self.attn.forward(self.ln_1.forward(x), causal);
        x.clone() + self.mlp.forward(self.ln_2.forward(x))
    }

    /// As [`forward`](Self::forward) without a causal mask, with an additive attention bias
    /// `[batch, seq, seq]` shared by the heads.
    pub fn forward_with_bias(&self, x: Tensor<3>, bias: Tensor<3>) -> Tensor<3> {
        let normed = self.ln_1.forward(x.clone());
        let x = x + self.attn.attend(normed.clone(), normed, false, Some(bias));
        x.clone() + self.mlp.forward(self.ln_2.forward(x))
    }
}

/// Multi-head self-attention with separate query, key and value projections
/// (open_clip's fused `in_proj` is split on import).
#[derive(Module, Debug)]
pub struct MultiHeadAttention {
    /// Query projection.
    pub query: Linear,
    /// Key projection.
    pub key: Linear,
    /// Value projection.
    pub value: Linear,
    /// Output projection.
    pub out_proj: Linear,
    /// Number of heads.
    pub heads: usize,
}

impl MultiHeadAttention {
    /// `[batch, seq, width]` in and out.
    pub fn forward(&self, x: Tensor<3>, causal: bool) -> Tensor<3> {
        self.attend(x.clone(), x, causal, None)
    }

    /// Cross-attention: `query` `[batch, queries, width]` attends to `context`
    /// `[batch, keys, width]` (keys and values both projected from `context`).
    pub fn forward_cross(&self, query: Tensor<3>, context: Tensor<3>) -> Tensor<3> {
        self.attend(query, context, false, None)
    }

    /// `query` attends to `context`; `bias` `[batch, queries, keys]`, when given, is added to
    /// every head's attention scores.
    pub fn attend(&self, query: Tensor<3>, context: Tensor<3>, causal: bool, bias: Option<Tensor<3>>) -> Tensor<3> {
        let [batch, queries, width] = query.dims();
        let keys = context.dims()[1];
        let head_dim = width / self.heads;
        let split_heads = |t: Tensor<3>, seq: usize| {
            t.reshape([batch, seq, self.heads, head_dim])
                .swap_dims(1, 2)
        };
        let q = split_heads(self.query.forward(query), queries);
        let k = split_heads(self.key.forward(context.clone()), keys);
        let v = split_heads(self.value.forward(context), keys);
        let options = AttentionModuleOptions {
            scale: None,
            softcap: None,
            is_causal: causal,
        };
        let bias = bias.map(|b| b.unsqueeze_dim::<4>(1).expand([batch, self.heads, queries, keys]));
        let out = attention(q, k, v, None, bias, options)
            .swap_dims(1, 2)
            .reshape([batch, queries, width]);
        self.out_proj.forward(out)
    }
}

/// `c_proj(act(c_fc(x)))`.
#[derive(Module, Debug)]
pub struct Mlp {
    /// Expansion layer.
    pub c_fc: Linear,
    /// Projection back to the residual width.
    pub c_proj: Linear,
    /// Non-linearity between them.
    #[module(skip)]
    pub activation: Activation,
}

impl Mlp {
    /// `[..., width]` in and out.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        self.c_proj.forward(self.activation.forward(self.c_fc.forward(x)))
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::Distribution;

    use super::*;

    #[test]
    fn gelu_split_over_the_cores_is_bit_identical_to_burns_gelu() {
        let device = Device::flex();
        // 339 rows of 256 are split into blocks (an odd row count checks the reassembly) where
        // there are several cores; [7, 3, 5] is too small to split.
        for shape in [[3, 113, 256], [7, 3, 5]] {
            let x = Tensor::<3>::random(shape, Distribution::Normal(0.0, 3.0), &device);
            let ours: Vec<f32> = Activation::Gelu.forward(x.clone()).into_data().iter::<f32>().collect();
            let burns: Vec<f32> = gelu(x).into_data().iter::<f32>().collect();
            assert_eq!(ours, burns, "shape {shape:?}");
        }
    }

    #[test]
    fn gelu_gradient_is_burns_when_tracked() {
        let device = Device::flex().autodiff();
        let x = Tensor::<2>::random([300, 256], Distribution::Normal(0.0, 1.0), &device);
        let gradient = |f: &dyn Fn(Tensor<2>) -> Tensor<2>| -> Vec<f32> {
            let input = x.clone().require_grad();
            let grads = f(input.clone()).sum().backward();
            input.grad(&grads).expect("a gradient").into_data().iter::<f32>().collect()
        };
        assert_eq!(gradient(&|t| Activation::Gelu.forward(t)), gradient(&|t| gelu(t)));
    }
}

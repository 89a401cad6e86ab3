//! ActionCLIP's `Transf_cls` fusion (the official `TAggregate`): a class token and learned
//! positions before PyTorch's post-norm `nn.TransformerEncoder`; the class token's output is the
//! video embedding.

use burn::config::Config;
use burn::module::{Module, Param};
use burn::nn::{Initializer, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor};
use clip_core::transformer::MultiHeadAttention;

use crate::clip4clip::temporal::INIT_STD;

/// Layer-norm epsilon of PyTorch's `nn.TransformerEncoderLayer` and `nn.LayerNorm`.
const TORCH_LAYER_NORM_EPS: f64 = 1e-5;

/// Configuration of a [`TemporalAggregate`].
#[derive(Config, Debug)]
pub struct TemporalAggregateConfig {
    /// Width of the frame embeddings.
    pub width: usize,
    /// Encoder layers (6 in the official code).
    #[config(default = 6)]
    pub layers: usize,
    /// Attention heads (`nhead=8` in the official code).
    #[config(default = 8)]
    pub heads: usize,
    /// Hidden width of each layer's feed-forward network (PyTorch's default 2048).
    #[config(default = 2048)]
    pub mlp_width: usize,
    /// Frames per clip (`clip_length`): the positions are `1 + frames` rows.
    pub frames: usize,
}

impl TemporalAggregateConfig {
    /// Builds the module with the official initialization: class token, positions and linear
    /// weights from `N(0, 0.02)`, zero biases, unit norms.
    pub fn init(&self, device: &Device) -> TemporalAggregate {
        let normal = Initializer::Normal { mean: 0.0, std: INIT_STD };
        let linear = |d_in: usize, d_out: usize| {
            let mut layer = LinearConfig::new(d_in, d_out).with_initializer(normal.clone()).init(device);
            layer.bias = Some(Param::from_tensor(Tensor::zeros([d_out], device)));
            layer
        };
        let norm = || LayerNormConfig::new(self.width).with_epsilon(TORCH_LAYER_NORM_EPS).init(device);
        let layers = (0..self.layers)
            .map(|_| PostNormEncoderLayer {
                self_attn: MultiHeadAttention {
                    query: linear(self.width, self.width),
                    key: linear(self.width, self.width),
                    value: linear(self.width, self.width),
                    out_proj: linear(self.width, self.width),
                    heads: self.heads,
                },
                linear1: linear(self.width, self.mlp_width),
                linear2: linear(self.mlp_width, self.width),
                norm1: norm(),
                norm2: norm(),
            })
            .collect();
        TemporalAggregate {
            cls_token: normal.init([1, 1, self.width], device),
            pos_embed: normal.init([1, 1 + self.frames, self.width], device),
            layers,
            norm: norm(),
        }
    }
}

/// PyTorch's `nn.TransformerEncoderLayer` (post-norm, ReLU, dropout off):
/// `x = norm1(x + attn(x))`, then `x = norm2(x + linear2(relu(linear1(x))))`.
#[derive(Module, Debug)]
pub struct PostNormEncoderLayer {
    /// Self-attention (`self_attn`, fused `in_proj` in checkpoints).
    pub self_attn: MultiHeadAttention,
    /// Feed-forward expansion.
    pub linear1: Linear,
    /// Feed-forward projection.
    pub linear2: Linear,
    /// Norm after attention.
    pub norm1: LayerNorm,
    /// Norm after the feed-forward network.
    pub norm2: LayerNorm,
}

impl PostNormEncoderLayer {
    /// `[batch, seq, width]` in and out.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let x = self.norm1.forward(x.clone() + self.self_attn.forward(x, false));
        self.norm2.forward(x.clone() + self.linear2.forward(relu(self.linear1.forward(x))))
    }
}

/// `norm(encoder([c; x_1 .. x_T] + P))[0]` over frame embeddings `x` `[batch, T, width]`:
/// the video embedding `[batch, width]` is the class token's output.
#[derive(Module, Debug)]
pub struct TemporalAggregate {
    /// The class token `[1, 1, width]`.
    pub cls_token: Param<Tensor<3>>,
    /// Positions `[1, 1 + frames, width]`.
    pub pos_embed: Param<Tensor<3>>,
    /// The encoder layers.
    pub layers: Vec<PostNormEncoderLayer>,
    /// The encoder's final norm.
    pub norm: LayerNorm,
}

impl TemporalAggregate {
    /// The most frames this module accepts.
    pub fn max_frames(&self) -> usize {
        self.pos_embed.dims()[1] - 1
    }

    /// `[batch, T, width]` in, `[batch, width]` out.
    ///
    /// # Panics
    /// When `T` exceeds [`max_frames`](Self::max_frames).
    pub fn forward(&self, frames: Tensor<3>) -> Tensor<2> {
        let [batch, count, width] = frames.dims();
        assert!(count <= self.max_frames(), "Transf_cls: {count} frames but positions for {}", self.max_frames());
        let cls = self.cls_token.val().expand([batch, 1, width]);
        let x = Tensor::cat(vec![cls, frames], 1) + self.pos_embed.val().narrow(1, 0, 1 + count);
        let x = self.layers.iter().fold(x, |x, layer| layer.forward(x));
        self.norm.forward(x).narrow(1, 0, 1).reshape([batch, width])
    }
}

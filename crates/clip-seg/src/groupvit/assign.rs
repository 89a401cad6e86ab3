//! The grouping block (Hugging Face's `GroupViTTokenAssign`): group tokens gather the image
//! tokens assigned to them, each image token going to exactly one group.

use burn::module::Module;
use burn::nn::{LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::activation::softmax;
use burn::tensor::{Device, Distribution, Tensor};
use clip_core::transformer::{Activation, Mlp, MultiHeadAttention};

use super::config::GroupVitVisionConfig;

/// How the grouping blocks assign image tokens to groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AssignMode {
    /// Evaluation: one-hot argmax of the softmax over groups.
    Hard,
    /// Training: one-hot argmax of a Gumbel-softmax sample, with the straight-through gradient
    /// of the soft sample.
    GumbelStraightThrough,
}

/// A two-layer MLP over `[in, hidden, out]` sizes.
pub(crate) fn mlp(sizes: [usize; 3], activation: Activation, device: &Device) -> Mlp {
    Mlp {
        c_fc: LinearConfig::new(sizes[0], sizes[1]).init(device),
        c_proj: LinearConfig::new(sizes[1], sizes[2]).init(device),
        activation,
    }
}

/// An MLP applied along the token axis: `[batch, tokens_in, width]` to `[batch, tokens_out, width]`
/// (Hugging Face's `GroupViTMixerMLP`).
pub(crate) fn mix_tokens(mlp: &Mlp, x: Tensor<3>) -> Tensor<3> {
    mlp.forward(x.swap_dims(1, 2)).swap_dims(1, 2)
}

fn layer_norm(config: &GroupVitVisionConfig, device: &Device) -> LayerNorm {
    LayerNormConfig::new(config.hidden_size)
        .with_epsilon(config.layer_norm_eps)
        .init(device)
}

/// Group tokens attend to the image tokens: `x = q + attn(q, kv)`, `x = x + mlp(norm2(x))`,
/// then `norm_post` (Hugging Face's `GroupViTCrossAttentionLayer`).
#[derive(Module, Debug)]
pub struct CrossAttentionLayer {
    /// Multi-head cross-attention.
    pub attn: MultiHeadAttention,
    /// Norm before the MLP.
    pub norm2: LayerNorm,
    /// The MLP.
    pub mlp: Mlp,
    /// Norm of the output.
    pub norm_post: LayerNorm,
}

impl CrossAttentionLayer {
    /// `query` `[batch, groups, width]` attends to `context` `[batch, tokens, width]`.
    pub fn forward(&self, query: Tensor<3>, context: Tensor<3>) -> Tensor<3> {
        let x = query.clone() + self.attn.forward_cross(query, context);
        let x = x.clone() + self.mlp.forward(self.norm2.forward(x));
        self.norm_post.forward(x)
    }
}

/// Single-head hard assignment of image tokens to groups (Hugging Face's
/// `GroupViTAssignAttention`).
#[derive(Module, Debug)]
pub struct AssignAttention {
    /// Query projection (groups).
    pub q_proj: Linear,
    /// Key projection (image tokens).
    pub k_proj: Linear,
    /// Value projection (image tokens).
    pub v_proj: Linear,
    /// Output projection.
    pub proj: Linear,
    /// Added to each group's assignment count before normalizing.
    pub assign_eps: f64,
}

impl AssignAttention {
    /// Groups `[batch, groups, width]` gather image tokens `[batch, tokens, width]`. Returns the
    /// new group features `[batch, groups, width]` and the soft assignment (softmax over groups)
    /// `[batch, groups, tokens]`, from which segmentation maps are read.
    pub fn forward(
        &self,
        groups: Tensor<3>,
        tokens: Tensor<3>,
        mode: AssignMode,
    ) -> (Tensor<3>, Tensor<3>) {
        let width = groups.dims()[2];
        let q = self.q_proj.forward(groups);
        let k = self.k_proj.forward(tokens.clone());
        let v = self.v_proj.forward(tokens);
        let raw = q.matmul(k.swap_dims(1, 2)) * (width as f64).powf(-0.5);
        let soft = softmax(raw.clone(), 1);
        let sampled = match mode {
            AssignMode::Hard => soft.clone(),
            AssignMode::GumbelStraightThrough => {
                softmax(raw + gumbel_noise(soft.dims(), &soft.device()), 1)
            }
        };
        let hard = straight_through_one_hot(sampled);
        let attn = hard.clone() / (hard.sum_dim(2) + self.assign_eps);
        (self.proj.forward(attn.matmul(v)), soft)
    }
}

/// Standard Gumbel noise `-ln(-ln u)`, `u ~ U(0, 1)`.
fn gumbel_noise(shape: [usize; 3], device: &Device) -> Tensor<3> {
    let u = Tensor::<3>::random(shape, Distribution::Uniform(0.0, 1.0), device)
        .clamp(1e-10, 1.0 - 1e-7);
    -(-u.log()).log()
}

/// The one-hot argmax over axis 1 of `y`, with `y`'s gradient: `one_hot - detach(y) + y`.
pub fn straight_through_one_hot(y: Tensor<3>) -> Tensor<3> {
    let [batch, groups, tokens] = y.dims();
    let index = y.clone().argmax(1);
    let groups_axis = Tensor::<1, burn::tensor::Int>::arange(0..groups as i64, &y.device())
        .reshape([1, groups, 1])
        .expand([batch, groups, tokens]);
    let one_hot = groups_axis
        .equal(index.expand([batch, groups, tokens]))
        .float();
    one_hot - y.clone().detach() + y
}

/// The grouping block: mixes the group tokens into the output groups, lets them attend to the
/// image tokens, hard-assigns every image token to one group and returns the groups as the new
/// token sequence.
#[derive(Module, Debug)]
pub struct TokenAssign {
    /// Norm of the incoming group tokens.
    pub norm_tokens: LayerNorm,
    /// Token-mixing MLP: group tokens to output groups.
    pub mlp_inter: Mlp,
    /// Norm after the token mixing.
    pub norm_post_tokens: LayerNorm,
    /// Norm of the incoming image tokens.
    pub norm_x: LayerNorm,
    /// Cross-attention of the output groups to the image tokens.
    pub pre_assign_attn: CrossAttentionLayer,
    /// The hard assignment.
    pub assign: AssignAttention,
    /// Norm before the channel MLP.
    pub norm_new_x: LayerNorm,
    /// Channel MLP on the new groups.
    pub mlp_channels: Mlp,
}

impl TokenAssign {
    /// A block turning `group_tokens` tokens into `output_groups` groups.
    pub fn new(
        config: &GroupVitVisionConfig,
        group_tokens: usize,
        output_groups: usize,
        device: &Device,
    ) -> Self {
        let width = config.hidden_size;
        let [tokens_ratio, channels_ratio] = config.assign_mlp_ratio;
        let tokens_dim = (tokens_ratio * width as f64) as usize;
        let channels_dim = (channels_ratio * width as f64) as usize;
        let act = config.hidden_act;
        let linear = || LinearConfig::new(width, width).init(device);
        Self {
            norm_tokens: layer_norm(config, device),
            mlp_inter: mlp([group_tokens, tokens_dim, output_groups], act, device),
            norm_post_tokens: layer_norm(config, device),
            norm_x: layer_norm(config, device),
            pre_assign_attn: CrossAttentionLayer {
                attn: MultiHeadAttention {
                    query: linear(),
                    key: linear(),
                    value: linear(),
                    out_proj: linear(),
                    heads: config.num_attention_heads,
                },
                norm2: layer_norm(config, device),
                mlp: mlp([width, config.intermediate_size, width], act, device),
                norm_post: layer_norm(config, device),
            },
            assign: AssignAttention {
                q_proj: linear(),
                k_proj: linear(),
                v_proj: linear(),
                proj: linear(),
                assign_eps: config.assign_eps,
            },
            norm_new_x: layer_norm(config, device),
            mlp_channels: mlp([width, channels_dim, width], act, device),
        }
    }

    /// Image tokens `[batch, tokens, width]` and group tokens `[batch, group_tokens, width]` in;
    /// the groups `[batch, output_groups, width]` and the soft assignment
    /// `[batch, output_groups, tokens]` out.
    pub fn forward(
        &self,
        image_tokens: Tensor<3>,
        group_tokens: Tensor<3>,
        mode: AssignMode,
    ) -> (Tensor<3>, Tensor<3>) {
        let groups = self.norm_tokens.forward(group_tokens);
        let tokens = self.norm_x.forward(image_tokens);
        let groups = self
            .norm_post_tokens
            .forward(mix_tokens(&self.mlp_inter, groups));
        let groups = self.pre_assign_attn.forward(groups, tokens.clone());
        let (assigned, soft) = self.assign.forward(groups.clone(), tokens, mode);
        let x = assigned + groups;
        let x = x.clone() + self.mlp_channels.forward(self.norm_new_x.forward(x));
        (x, soft)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn straight_through_one_hot_picks_the_largest_group_per_token() {
        let device = Device::flex();
        // [1, 3 groups, 2 tokens]: token 0 goes to group 2, token 1 to group 0.
        let y = Tensor::<3>::from_floats([[[0.1, 0.7], [0.3, 0.2], [0.6, 0.1]]], &device);
        let hard = straight_through_one_hot(y)
            .into_data()
            .iter::<f32>()
            .collect::<Vec<_>>();
        let expected = [0.0, 1.0, 0.0, 0.0, 1.0, 0.0];
        for (got, want) in hard.iter().zip(expected) {
            assert!((got - want).abs() < 1e-6, "{hard:?}");
        }
    }

    #[test]
    fn gumbel_straight_through_passes_the_soft_gradient() {
        let device = Device::flex().autodiff();
        let raw = Tensor::<3>::from_floats([[[1.0, -1.0], [0.5, 2.0]]], &device).require_grad();
        let y = softmax(raw.clone(), 1);
        // d/d raw of sum(w * one_hot_st(y)) equals d/d raw of sum(w * y).
        let weights = Tensor::<3>::from_floats([[[1.0, 2.0], [3.0, 4.0]]], &device);
        let grads = (straight_through_one_hot(y) * weights.clone())
            .sum()
            .backward();
        let got = raw
            .grad(&grads)
            .unwrap()
            .into_data()
            .iter::<f32>()
            .collect::<Vec<_>>();
        let raw2 = Tensor::<3>::from_floats([[[1.0, -1.0], [0.5, 2.0]]], &device).require_grad();
        let grads2 = (softmax(raw2.clone(), 1) * weights).sum().backward();
        let want = raw2
            .grad(&grads2)
            .unwrap()
            .into_data()
            .iter::<f32>()
            .collect::<Vec<_>>();
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() < 1e-6, "{got:?} vs {want:?}");
        }
        assert!(want.iter().any(|w| w.abs() > 1e-3));
    }
}

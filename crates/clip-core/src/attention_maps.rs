//! The ViT image tower run with its attention probabilities formed explicitly, so that they can
//! be read and differentiated (for attention relevancy, Chefer et al. 2021, which CLIPasso's
//! initialization uses).
//!
//! The normal forward pass ([`VisionTransformer::forward`]) calls burn's fused attention op,
//! which never materializes the probabilities; [`VisionTransformer::forward_with_attention`]
//! computes `softmax(q k^T / sqrt(head_dim)) v` step by step instead and gives the same
//! embeddings (to float rounding) at the cost of the `[batch, heads, tokens, tokens]` tensors.
//!
//! burn keeps gradients only of graph leaves. On an autodiff device each block's probabilities
//! `P` are therefore used as `P + Z`, with `Z` a zero leaf that requires its gradient: the
//! values are unchanged, the graph still runs through `P` into the earlier blocks, and the
//! gradient of any scalar with respect to `Z` is its gradient with respect to the probabilities
//! as they enter `P v` (what PyTorch's `retain_grad` on the probabilities gives), read with
//! [`AttentionMaps::gradients`].

use burn::tensor::activation::softmax;
use burn::tensor::{Gradients, Tensor};

use crate::transformer::ResidualAttentionBlock;
use crate::vision::VisionTransformer;

/// Every block's attention probabilities from [`VisionTransformer::forward_with_attention`].
#[derive(Debug, Clone)]
pub struct AttentionMaps {
    /// Per block, `[batch, heads, tokens, tokens]` after the softmax: row `i` holds how query
    /// token `i` (the class token first, then the patches row by row) attends to every token.
    /// Part of the autodiff graph when the forward pass ran on an autodiff device.
    pub probabilities: Vec<Tensor<4>>,
    /// Per block, the zero leaf added to the probabilities (autodiff devices only).
    probes: Vec<Tensor<4>>,
}

impl AttentionMaps {
    /// The gradient, with respect to each block's probabilities, of the scalar whose
    /// `backward()` gave `grads`: per block `[batch, heads, tokens, tokens]`, without autodiff
    /// (zeros for a block the scalar does not depend on). Empty when the forward pass ran
    /// without autodiff.
    pub fn gradients(&self, grads: &Gradients) -> Vec<Tensor<4>> {
        self.probes
            .iter()
            .map(|probe| probe.grad(grads).unwrap_or_else(|| Tensor::zeros(probe.dims(), &probe.device().without_autodiff())))
            .collect()
    }
}

impl VisionTransformer {
    /// Projected image embeddings `[batch, embed_dim]` of images `[batch, 3, H, W]`, as
    /// [`forward`](Self::forward) gives them, with every block's attention probabilities
    /// formed explicitly and returned (see the module documentation). On an autodiff device
    /// the probabilities stay in the graph and [`AttentionMaps::gradients`] gives the gradient
    /// of a scalar of the output with respect to them.
    pub fn forward_with_attention(&self, images: Tensor<4>) -> (Tensor<2>, AttentionMaps) {
        let (x, _) = self.embed(images);
        let mut x = self.ln_pre.forward(x);
        let blocks = self.transformer.resblocks.len();
        let mut maps = AttentionMaps { probabilities: Vec::with_capacity(blocks), probes: Vec::new() };
        for block in &self.transformer.resblocks {
            let (out, probabilities, probe) = block_with_probabilities(block, x);
            x = out;
            maps.probabilities.push(probabilities);
            maps.probes.extend(probe);
        }
        let pooled = self.ln_post.forward(x).narrow(1, 0, 1).squeeze_dim(1);
        (self.project(pooled), maps)
    }
}

/// One block without a causal mask (as the ViT runs it), its attention formed explicitly:
/// the output `[batch, tokens, width]`, the probabilities `[batch, heads, tokens, tokens]` as
/// used, and the zero leaf added to them on an autodiff device.
fn block_with_probabilities(block: &ResidualAttentionBlock, x: Tensor<3>) -> (Tensor<3>, Tensor<4>, Option<Tensor<4>>) {
    let attn = &block.attn;
    let normed = block.ln_1.forward(x.clone());
    let [batch, tokens, width] = normed.dims();
    let head_dim = width / attn.heads;
    let split_heads = |t: Tensor<3>| t.reshape([batch, tokens, attn.heads, head_dim]).swap_dims(1, 2);
    let q = split_heads(attn.query.forward(normed.clone()));
    let k = split_heads(attn.key.forward(normed.clone()));
    let v = split_heads(attn.value.forward(normed));
    let scores = q.matmul(k.swap_dims(2, 3)).mul_scalar((head_dim as f64).powf(-0.5));
    let mut probabilities = softmax(scores, 3);
    let probe = x.is_autodiff().then(|| Tensor::<4>::zeros(probabilities.dims(), &x.device()).require_grad());
    if let Some(probe) = &probe {
        probabilities = probabilities + probe.clone();
    }
    let out = probabilities.clone().matmul(v).swap_dims(1, 2).reshape([batch, tokens, width]);
    let x = x + attn.out_proj.forward(out);
    let x = x.clone() + block.mlp.forward(block.ln_2.forward(x));
    (x, probabilities, probe)
}

//! `VisionTransformer::forward_with_attention`: the explicit attention path gives the fused
//! path's outputs, its probabilities are softmax rows, and their gradients match central finite
//! differences of a forward pass written out here with separate tensor ops.

use burn::module::Module;
use burn::tensor::activation::softmax;
use burn::tensor::{Device, Distribution, Tensor};
use clip_core::transformer::ResidualAttentionBlock;
use clip_core::vision::{VisionTransformer, VisionTransformerConfig};

/// A tiny random ViT: 16 x 16 pixels in 4 x 4 patches (17 tokens), width 16, 2 heads.
fn tiny_vit(layers: usize, device: &Device) -> VisionTransformer {
    device.seed(7);
    VisionTransformerConfig::new(16, 4, 16, layers, 2, 32, 8).init(device)
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().iter::<f32>().collect()
}

fn max_abs_difference<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> f32 {
    values(a).iter().zip(values(b)).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn explicit_attention_gives_the_fused_outputs() {
    let device = Device::flex();
    let vit = tiny_vit(2, &device);
    let images = Tensor::<4>::random([3, 3, 16, 16], Distribution::Normal(0.0, 1.0), &device);
    let fused = vit.forward(images.clone());
    let (explicit, maps) = vit.forward_with_attention(images);
    let difference = max_abs_difference(fused.clone(), explicit);
    let scale = values(fused).iter().fold(0.0f32, |m, v| m.max(v.abs()));
    eprintln!("fused vs explicit: max |difference| {difference:.3e} (largest output {scale:.3})");
    assert!(difference < 1e-5, "the explicit path differs from the fused one by {difference}");
    assert_eq!(maps.probabilities.len(), 2);
    for probabilities in &maps.probabilities {
        assert_eq!(probabilities.dims(), [3, 2, 17, 17]);
        let rows = values(probabilities.clone().sum_dim(3));
        assert!(rows.iter().all(|s| (s - 1.0).abs() < 1e-5), "softmax rows sum to 1: {rows:?}");
        assert!(values(probabilities.clone()).iter().all(|p| *p >= 0.0));
    }
    // Without autodiff there is nothing to differentiate.
    assert!(maps.gradients(&Tensor::<1>::ones([1], &device.clone().autodiff()).require_grad().sum().backward()).is_empty());
}

/// Tokens after `ln_pre`, written out from the tower's parameters: patches, class token,
/// positional embedding.
fn tokens(vit: &VisionTransformer, images: Tensor<4>) -> Tensor<3> {
    let x = vit.conv1.forward(images);
    let [batch, width, gh, gw] = x.dims();
    let patches = x.reshape([batch, width, gh * gw]).swap_dims(1, 2);
    let class = vit.class_embedding.val().reshape([1, 1, width]).repeat_dim(0, batch);
    let x = Tensor::cat(vec![class, patches], 1) + vit.positional_embedding.val().unsqueeze_dim(0);
    vit.ln_pre.forward(x)
}

/// One block with the attention probabilities `probabilities` given rather than computed.
fn block_with(block: &ResidualAttentionBlock, x: Tensor<3>, probabilities: Tensor<4>) -> Tensor<3> {
    let [batch, tokens, width] = x.dims();
    let heads = block.attn.heads;
    let v = block.attn.value.forward(block.ln_1.forward(x.clone())).reshape([batch, tokens, heads, width / heads]).swap_dims(1, 2);
    let mixed = probabilities.matmul(v).swap_dims(1, 2).reshape([batch, tokens, width]);
    let x = x + block.attn.out_proj.forward(mixed);
    x.clone() + block.mlp.forward(block.ln_2.forward(x))
}

/// The attention probabilities of `block` on `x`, written out.
fn probabilities_of(block: &ResidualAttentionBlock, x: Tensor<3>) -> Tensor<4> {
    let [batch, tokens, width] = x.dims();
    let heads = block.attn.heads;
    let normed = block.ln_1.forward(x);
    let split = |t: Tensor<3>| t.reshape([batch, tokens, heads, width / heads]).swap_dims(1, 2);
    let q = split(block.attn.query.forward(normed.clone()));
    let k = split(block.attn.key.forward(normed));
    softmax(q.matmul(k.swap_dims(2, 3)).div_scalar(((width / heads) as f64).sqrt()), 3)
}

/// The score `<embedding, target>` with block `perturbed`'s probabilities replaced by the
/// computed ones plus `delta`.
fn score_with(vit: &VisionTransformer, images: Tensor<4>, target: Tensor<2>, perturbed: usize, delta: Tensor<4>) -> f32 {
    let mut x = tokens(vit, images);
    for (i, block) in vit.transformer.resblocks.iter().enumerate() {
        x = if i == perturbed { block_with(block, x.clone(), probabilities_of(block, x) + delta.clone()) } else { block.forward(x, false) };
    }
    let pooled = vit.ln_post.forward(x).narrow(1, 0, 1).squeeze_dim::<2>(1);
    pooled.matmul(vit.proj.val()).mul(target).sum().into_scalar::<f32>()
}

#[test]
fn probability_gradients_match_finite_differences() {
    let device = Device::flex();
    let vit = tiny_vit(2, &device);
    let images = Tensor::<4>::random([1, 3, 16, 16], Distribution::Normal(0.0, 1.0), &device);
    let target = Tensor::<2>::random([1, 8], Distribution::Normal(0.0, 1.0), &device);
    let autodiff = device.clone().autodiff();
    let (embedding, maps) = vit.clone().to_device(&autodiff).freeze().forward_with_attention(images.clone().autodiff());
    let gradients = maps.gradients(&embedding.mul(target.clone().autodiff()).sum().backward());
    assert_eq!(gradients.len(), 2);
    // The last block feeds only its class token to the embedding: its other rows get no gradient.
    let last = values(gradients[1].clone());
    let (cls, rest) = (0..last.len()).partition::<Vec<usize>, _>(|i| (i / 17) % 17 == 0);
    assert!(rest.iter().all(|&i| last[i] == 0.0), "rows of the last block's patch queries have gradient");
    assert!(cls.iter().any(|&i| last[i].abs() > 1e-4));
    let eps = 1e-2;
    let mut worst = 0.0f32;
    for (block, gradient) in gradients.iter().enumerate() {
        let gradient = values(gradient.clone());
        let largest = gradient.iter().fold(0.0f32, |m, g| m.max(g.abs()));
        // Entries of both heads, in the class token's row and in patch rows.
        for (head, query, key) in [(0, 0, 0), (0, 0, 5), (1, 0, 16), (1, 3, 2), (0, 9, 9), (1, 16, 0)] {
            let index = (head * 17 + query) * 17 + key;
            let mut delta = vec![0.0f32; 2 * 17 * 17];
            delta[index] = eps;
            let plus = Tensor::<1>::from_floats(delta.as_slice(), &device).reshape([1, 2, 17, 17]);
            let up = score_with(&vit, images.clone(), target.clone(), block, plus.clone());
            let down = score_with(&vit, images.clone(), target.clone(), block, plus.neg());
            let numeric = (up - down) / (2.0 * eps);
            let error = (numeric - gradient[index]).abs() / largest;
            worst = worst.max(error);
            assert!(error < 1e-2, "block {block} ({head}, {query}, {key}): autodiff {} vs finite difference {numeric}", gradient[index]);
        }
    }
    eprintln!("probability gradients vs finite differences: largest error {worst:.2e} of the largest gradient");
}

//! Contrastive losses: CLIP's symmetric InfoNCE and SigLIP's pairwise sigmoid loss, and the
//! all-gather that lets a data-parallel step compute them over the global batch.
//!
//! Both losses take the features of the local batch and, optionally, the features gathered from
//! every device of a data-parallel run (open_clip's `gather_with_grad` layout: rank 0's batch
//! first), with the row where the local batch starts among them. On one device the gathered
//! features are the local ones and the offset is 0.

use burn::tensor::activation::{log_sigmoid, log_softmax};
use burn::tensor::{Device, Int, Tensor};

/// open_clip's `ClipLoss`: the mean of image-to-text and text-to-image cross-entropy over
/// `logit_scale * image @ text^T`, with the matching pair as the target.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClipLoss {
    /// Row of the gathered features where this device's batch starts (open_clip's
    /// `rank * local_batch`; 0 on one device).
    pub offset: usize,
}

impl ClipLoss {
    /// Loss on one device. Features are L2-normalized `[batch, dim]`; `logit_scale` is the
    /// already exponentiated scale `[1]`.
    pub fn forward(&self, image: Tensor<2>, text: Tensor<2>, logit_scale: Tensor<1>) -> Tensor<1> {
        self.forward_gathered(image.clone(), text.clone(), image, text, logit_scale)
    }

    /// Loss of the local batch against the features gathered from all ranks (open_clip's
    /// `local_loss`): the mean over the local rows of both cross-entropies, local image `i`'s
    /// target being gathered text `offset + i` and the other way round. The weighted mean of
    /// the ranks' losses (weights: their share of the global batch) is the loss of the global
    /// batch, and, with the gathered features carrying gradient, so is its gradient.
    pub fn forward_gathered(
        &self,
        local_image: Tensor<2>,
        local_text: Tensor<2>,
        all_image: Tensor<2>,
        all_text: Tensor<2>,
        logit_scale: Tensor<1>,
    ) -> Tensor<1> {
        let scale = logit_scale.unsqueeze::<2>();
        let per_image = local_image.matmul(all_text.transpose()) * scale.clone();
        let per_text = local_text.matmul(all_image.transpose()) * scale;
        let offset = self.offset as i64;
        (cross_entropy_with_offset_targets(per_image, offset)
            + cross_entropy_with_offset_targets(per_text, offset))
            / 2.0
    }
}

/// Mean cross-entropy of `[batch, classes]` logits where row `i`'s target is `offset + i`.
fn cross_entropy_with_offset_targets(logits: Tensor<2>, offset: i64) -> Tensor<1> {
    let [batch, _] = logits.dims();
    let device = logits.device();
    let targets = Tensor::<1, Int>::arange(offset..offset + batch as i64, &device).reshape([batch, 1]);
    -log_softmax(logits, 1).gather(1, targets).mean()
}

/// SigLIP's loss: `-mean over images of sum over texts of log sigmoid(label * logit)` with
/// `logit = logit_scale * image @ text^T + logit_bias`, label +1 for matching pairs, -1 otherwise.
#[derive(Debug, Clone, Copy, Default)]
pub struct SigLipLoss {
    /// Row of the gathered texts where this device's batch starts (0 on one device).
    pub offset: usize,
}

impl SigLipLoss {
    /// Loss on one device: normalized features `[batch, dim]`, exponentiated scale `[1]`, bias `[1]`.
    pub fn forward(
        &self,
        image: Tensor<2>,
        text: Tensor<2>,
        logit_scale: Tensor<1>,
        logit_bias: Tensor<1>,
    ) -> Tensor<1> {
        self.forward_gathered(image, text, logit_scale, logit_bias)
    }

    /// Loss of the local images against the texts gathered from all ranks (open_clip's
    /// `SigLipLoss` with its text exchange): local image `i` matches gathered text
    /// `offset + i`. As for [`ClipLoss::forward_gathered`], the ranks' losses weighted by their
    /// share of the global batch sum to the global loss.
    pub fn forward_gathered(
        &self,
        local_image: Tensor<2>,
        all_text: Tensor<2>,
        logit_scale: Tensor<1>,
        logit_bias: Tensor<1>,
    ) -> Tensor<1> {
        let [batch, _] = local_image.dims();
        let [texts, _] = all_text.dims();
        let device = local_image.device();
        let logits = local_image.matmul(all_text.transpose()) * logit_scale.unsqueeze::<2>()
            + logit_bias.unsqueeze::<2>();
        let rows = Tensor::<1, Int>::arange(0..batch as i64, &device).reshape([batch, 1]);
        let cols = Tensor::<1, Int>::arange(0..texts as i64, &device).reshape([1, texts]);
        let positive = (rows + self.offset as i64).equal(cols.expand([batch, texts]));
        // In the logits' own float type (not the device's default).
        let labels = logits.ones_like().mul_scalar(-1.0).mask_fill(positive, 1.0);
        -log_sigmoid(labels * logits).sum() / batch as f64
    }
}

/// open_clip's `gather_with_grad` for one process driving several devices: every rank's
/// `[rows, dim]` features moved to `device` and concatenated in rank order. burn 0.22 has no
/// all-gather collective (only CUDA's `all_reduce`), but its autodiff records `to_device` as an
/// operation whose backward moves the gradient back to the source device, so the gathered
/// tensor carries gradient to every rank's features, as `torch.distributed.nn.all_gather` does.
pub fn all_gather(parts: Vec<Tensor<2>>, device: &Device) -> Tensor<2> {
    Tensor::cat(parts.into_iter().map(|part| part.to_device(device)).collect(), 0)
}

/// `tensor` in the default float type of its device: f32, unless the device was configured
/// otherwise (`run.precision = "pure-bf16"`). Objectives compute their losses in it, so that
/// features computed in bf16 under mixed precision give an f32 loss (as PyTorch's autocast
/// computes softmax and cross-entropy in f32).
pub fn in_default_float<const D: usize>(tensor: Tensor<D>) -> Tensor<D> {
    let dtype = tensor.device().settings().float_dtype;
    tensor.cast(dtype)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, Tolerance};

    #[test]
    fn clip_loss_matches_hand_computed_two_by_two() {
        let device = Device::flex();
        // Orthogonal unit features: logits are scale * identity.
        let eye = Tensor::<2>::eye(2, &device);
        let scale = Tensor::<1>::from_floats([2.0], &device);
        let loss = ClipLoss::default().forward(eye.clone(), eye, scale);
        // -log(e^2 / (e^2 + e^0)) in both directions.
        let expected = -(2f64.exp() / (2f64.exp() + 1.0)).ln();
        loss.into_data().assert_approx_eq::<f32>(
            &burn::tensor::TensorData::from([expected as f32]),
            Tolerance::absolute(1e-6),
        );
    }

    #[test]
    fn siglip_loss_matches_hand_computed_two_by_two() {
        let device = Device::flex();
        let eye = Tensor::<2>::eye(2, &device);
        let scale = Tensor::<1>::from_floats([3.0], &device);
        let bias = Tensor::<1>::from_floats([-1.0], &device);
        let loss = SigLipLoss::default().forward(eye.clone(), eye, scale, bias);
        // Per image: positive logit 3 - 1 = 2, negative logit -1 with label -1.
        let log_sigmoid = |x: f64| -(1.0 + (-x).exp()).ln();
        let expected = -(log_sigmoid(2.0) + log_sigmoid(1.0));
        loss.into_data().assert_approx_eq::<f32>(
            &burn::tensor::TensorData::from([expected as f32]),
            Tolerance::absolute(1e-6),
        );
    }

    #[test]
    fn gathered_clip_loss_targets_follow_the_offset() {
        let device = Device::flex();
        let all = Tensor::<2>::eye(4, &device);
        let local = all.clone().narrow(0, 2, 2);
        let scale = Tensor::<1>::from_floats([5.0], &device);
        let at_row_2 = ClipLoss { offset: 2 }.forward_gathered(
            local.clone(),
            local.clone(),
            all.clone(),
            all.clone(),
            scale.clone(),
        );
        let wrong_offset = ClipLoss { offset: 0 }.forward_gathered(local.clone(), local, all.clone(), all, scale);
        let (right, wrong) = (at_row_2.into_scalar::<f32>(), wrong_offset.into_scalar::<f32>());
        assert!(right < wrong, "offset targets must give the lower loss: {right} vs {wrong}");
    }

    /// Normalized random features `[rows, dim]` as gradient leaves.
    fn leaf(rows: usize, device: &Device) -> Tensor<2> {
        let x = Tensor::<2>::random([rows, 8], burn::tensor::Distribution::Normal(0.0, 1.0), device);
        (x.clone() / x.square().sum_dim(1).sqrt()).require_grad()
    }

    #[test]
    fn ranks_with_gathered_features_give_the_global_loss_and_gradients() {
        // Five simulated ranks of unequal batches (2, 2, 2, 1, 1): each holds its own feature
        // leaves, the global batch is their concatenation.
        let device = Device::flex().autodiff();
        device.seed(11);
        let sizes = [2usize, 2, 2, 1, 1];
        let total: usize = sizes.iter().sum();
        let images: Vec<Tensor<2>> = sizes.iter().map(|&n| leaf(n, &device)).collect();
        let texts: Vec<Tensor<2>> = sizes.iter().map(|&n| leaf(n, &device)).collect();
        let scale = Tensor::<1>::from_floats([7.0], &device).require_grad();
        let bias = Tensor::<1>::from_floats([-2.0], &device).require_grad();
        let offsets: Vec<usize> = sizes.iter().scan(0, |start, &n| { *start += n; Some(*start - n) }).collect();
        let share = |rank: usize| sizes[rank] as f64 / total as f64;
        for siglip in [false, true] {
            let global = |i: Tensor<2>, t: Tensor<2>| {
                if siglip {
                    SigLipLoss::default().forward(i, t, scale.clone(), bias.clone())
                } else {
                    ClipLoss::default().forward(i, t, scale.clone())
                }
            };
            // The loss of one variant, its graph built afresh: the global batch on one device,
            // the features gathered (global loss over them), or every rank's local loss against
            // the gathered features, weighted by its share of the global batch.
            let build = |variant: &str| match variant {
                "one device" => global(Tensor::cat(images.clone(), 0), Tensor::cat(texts.clone(), 0)),
                "gathered" => global(all_gather(images.clone(), &device), all_gather(texts.clone(), &device)),
                _ => {
                    let (all_image, all_text) = (all_gather(images.clone(), &device), all_gather(texts.clone(), &device));
                    (0..sizes.len())
                        .map(|r| {
                            let loss = if siglip {
                                SigLipLoss { offset: offsets[r] }.forward_gathered(images[r].clone(), all_text.clone(), scale.clone(), bias.clone())
                            } else {
                                ClipLoss { offset: offsets[r] }.forward_gathered(
                                    images[r].clone(),
                                    texts[r].clone(),
                                    all_image.clone(),
                                    all_text.clone(),
                                    scale.clone(),
                                )
                            };
                            loss * share(r)
                        })
                        .reduce(|a, b| a + b)
                        .unwrap()
                }
            };
            // The loss, then every feature's gradient, the scale's and (SigLIP) the bias's.
            let run = |variant: &str| {
                let loss = build(variant);
                let value = loss.clone().into_scalar::<f32>();
                let grads = loss.backward();
                let values = |g: Option<Tensor<2>>| g.map(|g| g.into_data().iter::<f32>().collect::<Vec<_>>()).unwrap_or_default();
                let mut all: Vec<f32> = images.iter().chain(&texts).flat_map(|t| values(t.grad(&grads))).collect();
                for scalar in [&scale, &bias] {
                    all.extend(scalar.grad(&grads).map(|g| g.into_data().iter::<f32>().collect::<Vec<_>>()).unwrap_or_default());
                }
                (value, all)
            };
            let (reference, expected) = run("one device");
            assert_eq!(expected.len(), 2 * total * 8 + 1 + usize::from(siglip), "every feature and scalar has a gradient");
            let largest = expected.iter().fold(0f32, |m, g| m.max(g.abs()));
            for variant in ["gathered", "local"] {
                let (value, got) = run(variant);
                assert!((value - reference).abs() <= 1e-5 * reference.abs(), "siglip {siglip}, {variant}: loss {value} vs {reference}");
                assert_eq!(got.len(), expected.len(), "siglip {siglip}, {variant}: gradients of other parameters");
                let worst = expected.iter().zip(&got).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
                assert!(worst <= 1e-5 * largest, "siglip {siglip}, {variant}: gradients differ by {worst} (largest {largest})");
            }
            // Weighting the ranks equally (as open_clip's DDP average does for equal batches)
            // is wrong for these unequal ones: the test tells.
            let equal = (0..sizes.len())
                .map(|r| {
                    let (all_image, all_text) = (all_gather(images.clone(), &device), all_gather(texts.clone(), &device));
                    let loss = if siglip {
                        SigLipLoss { offset: offsets[r] }.forward_gathered(images[r].clone(), all_text, scale.clone(), bias.clone())
                    } else {
                        ClipLoss { offset: offsets[r] }.forward_gathered(images[r].clone(), texts[r].clone(), all_image, all_text, scale.clone())
                    };
                    f64::from(loss.into_scalar::<f32>()) / sizes.len() as f64
                })
                .sum::<f64>();
            assert!((equal - f64::from(reference)).abs() > 1e-4, "siglip {siglip}: {equal} vs {reference}");
        }
    }
}

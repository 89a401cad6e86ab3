//! Contrastive losses: CLIP's symmetric InfoNCE and SigLIP's pairwise sigmoid loss.
//!
//! Both take the features of the local batch and, optionally, the features gathered from every
//! device of a data-parallel run (open_clip's `gather_with_grad` layout: rank 0's batch first).
//! On one device the gathered features are the local ones and `rank` is 0.

use burn::tensor::activation::{log_sigmoid, log_softmax};
use burn::tensor::{Int, Tensor};

/// open_clip's `ClipLoss`: the mean of image-to-text and text-to-image cross-entropy over
/// `logit_scale * image @ text^T`, with the matching pair as the target.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClipLoss {
    /// Index of this device among the data-parallel ranks.
    pub rank: usize,
}

impl ClipLoss {
    /// Loss on one device. Features are L2-normalized `[batch, dim]`; `logit_scale` is the
    /// already exponentiated scale `[1]`.
    pub fn forward(&self, image: Tensor<2>, text: Tensor<2>, logit_scale: Tensor<1>) -> Tensor<1> {
        self.forward_gathered(image.clone(), text.clone(), image, text, logit_scale)
    }

    /// Loss of the local batch against the features gathered from all ranks.
    pub fn forward_gathered(
        &self,
        local_image: Tensor<2>,
        local_text: Tensor<2>,
        all_image: Tensor<2>,
        all_text: Tensor<2>,
        logit_scale: Tensor<1>,
    ) -> Tensor<1> {
        let [batch, _] = local_image.dims();
        let scale = logit_scale.unsqueeze::<2>();
        let per_image = local_image.matmul(all_text.transpose()) * scale.clone();
        let per_text = local_text.matmul(all_image.transpose()) * scale;
        let offset = (self.rank * batch) as i64;
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
    /// Index of this device among the data-parallel ranks.
    pub rank: usize,
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

    /// Loss of the local images against the texts gathered from all ranks.
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
        let positive = (rows + (self.rank * batch) as i64).equal(cols.expand([batch, texts]));
        let labels = Tensor::<2>::ones([batch, texts], &device).mul_scalar(-1.0).mask_fill(positive, 1.0);
        -log_sigmoid(labels * logits).sum() / batch as f64
    }
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
    fn gathered_clip_loss_targets_follow_rank() {
        let device = Device::flex();
        let all = Tensor::<2>::eye(4, &device);
        let local = all.clone().narrow(0, 2, 2);
        let scale = Tensor::<1>::from_floats([5.0], &device);
        let on_rank_1 = ClipLoss { rank: 1 }.forward_gathered(
            local.clone(),
            local.clone(),
            all.clone(),
            all.clone(),
            scale.clone(),
        );
        let wrong_rank = ClipLoss { rank: 0 }.forward_gathered(local.clone(), local, all.clone(), all, scale);
        let (right, wrong) = (on_rank_1.into_scalar::<f32>(), wrong_rank.into_scalar::<f32>());
        assert!(right < wrong, "rank-aware targets must give the lower loss: {right} vs {wrong}");
    }
}

//! ActionCLIP's video-text loss: a KL divergence between the in-batch softmax and the
//! same-class ground truth, in both directions (the official `KLLoss`).

use burn::tensor::activation::{log_softmax, softmax};
use burn::tensor::{Int, Tensor};

/// Sharpness the official `KLLoss` applies to the 0/1 ground truth before its row softmax.
pub const TARGET_SHARPNESS: f64 = 10.0;

/// The official soft targets `[B, B]` of batch labels `[B]`: `softmax_j(10 * G[i, j])` with
/// `G[i, j] = 1` when `labels[i] == labels[j]`, else 0. A row with `k` same-class entries
/// gives each `e¹⁰ / (k e¹⁰ + B - k)` and each other entry `1 / (k e¹⁰ + B - k)`: the
/// row-normalized `G` up to about `4.5e-5` per entry.
pub fn same_label_targets(labels: Tensor<1, Int>) -> Tensor<2> {
    let [batch] = labels.dims();
    let rows = labels.clone().reshape([batch, 1]).expand([batch, batch]);
    let cols = labels.reshape([1, batch]).expand([batch, batch]);
    soft_targets(rows.equal(cols).float())
}

/// The official `KLLoss`'s targets from a 0/1 ground truth `[N, C]` (`gen_label`):
/// `softmax_j(10 * G[i, j])`.
pub fn soft_targets(ground_truth: Tensor<2>) -> Tensor<2> {
    softmax(ground_truth * TARGET_SHARPNESS, 1)
}

/// The official `KLLoss`: `KL(targets || softmax(logits))` over rows, as
/// `nn.KLDivLoss(size_average=True)` (a mean over all `N · C` entries) times the batch size
/// `N`, i.e. the sum divided by `C`. `logits` and `targets` are `[N, C]`; targets are positive,
/// as [`soft_targets`] gives.
pub fn kl_divergence(logits: Tensor<2>, targets: Tensor<2>) -> Tensor<1> {
    let [_, columns] = logits.dims();
    let terms = targets.clone() * (targets.log() - log_softmax(logits, 1));
    terms.sum() / columns as f64
}

/// ActionCLIP's loss `(KL(G̃ || softmax(L)) + KL(G̃ᵀ || softmax(Lᵀ))) / 2` for video-to-text
/// logits `L` `[B, B]` (video `i` against the class prompt of video `j`) and the batch labels
/// `[B]`, with `G̃` from [`same_label_targets`] (symmetric, so `G̃ᵀ = G̃`).
pub fn kl_video_text_loss(logits_per_video: Tensor<2>, labels: Tensor<1, Int>) -> Tensor<1> {
    let targets = same_label_targets(labels);
    (kl_divergence(logits_per_video.clone(), targets.clone()) + kl_divergence(logits_per_video.transpose(), targets))
        / 2.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, TensorData};

    /// `sum_j t_j ln(t_j / q_j)` with `q = softmax(row)`, in f64.
    fn row_kl(row: &[f64], target: &[f64]) -> f64 {
        let norm: f64 = row.iter().map(|v| v.exp()).sum();
        row.iter()
            .zip(target)
            .map(|(&l, &t)| t * (t.ln() - (l.exp() / norm).ln()))
            .sum()
    }

    #[test]
    fn matches_hand_computed_value_with_repeated_labels() {
        let device = Device::flex();
        // Labels [3, 3, 7]: videos 0 and 1 share a class.
        let labels = Tensor::<1, Int>::from_data(TensorData::new(vec![3i64, 3, 7], [3]), &device);
        let logits = [[2.0, 1.0, 0.0], [0.5, 1.5, -1.0], [0.0, 1.0, 3.0]];
        let flat: Vec<f32> = logits.iter().flatten().map(|&v| v as f32).collect();
        let tensor = Tensor::<2>::from_data(TensorData::new(flat, [3, 3]), &device);
        // Rows 0 and 1 of the targets: softmax([10, 10, 0]) = [a, a, b] with
        // a = e¹⁰ / (2e¹⁰ + 1), b = 1 / (2e¹⁰ + 1); row 2: softmax([0, 0, 10]) = [c, c, d] with
        // c = 1 / (e¹⁰ + 2), d = e¹⁰ / (e¹⁰ + 2).
        let e10 = 10f64.exp();
        let (a, b) = (e10 / (2.0 * e10 + 1.0), 1.0 / (2.0 * e10 + 1.0));
        let (c, d) = (1.0 / (e10 + 2.0), e10 / (e10 + 2.0));
        let targets = [[a, a, b], [a, a, b], [c, c, d]];
        let column = |j: usize| [logits[0][j], logits[1][j], logits[2][j]];
        let per_video: f64 = (0..3).map(|i| row_kl(&logits[i], &targets[i])).sum::<f64>() / 3.0;
        let per_text: f64 = (0..3).map(|j| row_kl(&column(j), &targets[j])).sum::<f64>() / 3.0;
        let expected = (per_video + per_text) / 2.0;
        let ours = kl_video_text_loss(tensor, labels.clone()).into_scalar::<f32>() as f64;
        assert!((ours - expected).abs() < 1e-5, "{ours} vs {expected}");
        let soft: Vec<f32> = same_label_targets(labels).into_data().iter::<f32>().collect();
        assert!(
            (soft[0] as f64 - a).abs() < 1e-7 && (soft[8] as f64 - d).abs() < 1e-6,
            "{soft:?}"
        );
    }
}

//! Inference-time dual softmax (CAMoE's DSL, adopted by CLIP4Clip's follow-ups).

use burn::tensor::Tensor;
use burn::tensor::activation::softmax;

/// Re-scores a similarity matrix `[queries, items]` with a prior from the other direction:
/// `S'[q, i] = S[q, i] * softmax_q(S[:, i] / temperature)[q]`, the softmax taken over the
/// queries (axis 0) for each item. An item that every other query also matches well is
/// down-weighted for this query. Rank items along axis 1 of the result as usual. For
/// text-to-video retrieval pass the `[texts, videos]` matrix; for video-to-text, its transpose.
/// CAMoE's implementation also multiplies by the number of queries, a constant that does not
/// change any ranking and is left out here.
pub fn dual_softmax(similarity: Tensor<2>, temperature: f64) -> Tensor<2> {
    let prior = softmax(similarity.clone() / temperature, 0);
    similarity * prior
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, TensorData, Tolerance};

    #[test]
    fn matches_hand_computed_two_by_two() {
        let device = Device::flex();
        // Columns: item 0 scores [2, 1] over the queries, item 1 scores [2, 0].
        let sim = Tensor::<2>::from_data(TensorData::new(vec![2.0f32, 2.0, 1.0, 0.0], [2, 2]), &device);
        let e = std::f64::consts::E;
        // Column 0: softmax([2, 1]) = [e/(e+1), 1/(e+1)]; column 1: softmax([2, 0]) = [e²/(e²+1), 1/(e²+1)].
        let expected = [2.0 * e / (e + 1.0), 2.0 * e * e / (e * e + 1.0), 1.0 / (e + 1.0), 0.0];
        dual_softmax(sim, 1.0).into_data().assert_approx_eq::<f32>(
            &TensorData::new(expected.iter().map(|&v| v as f32).collect::<Vec<_>>(), [2, 2]),
            Tolerance::absolute(1e-6),
        );
    }

    #[test]
    fn the_prior_breaks_a_hub_item() {
        let device = Device::flex();
        // Item 0 is a hub: both queries score it highest. Query 1's own item 1 wins after
        // re-scoring because item 0's prior belongs mostly to query 0.
        let sim = Tensor::<2>::from_data(TensorData::new(vec![0.9f32, 0.1, 0.8, 0.7], [2, 2]), &device);
        let rescored: Vec<f32> = dual_softmax(sim, 0.05).into_data().iter::<f32>().collect();
        assert!(rescored[0] > rescored[1], "{rescored:?}");
        assert!(rescored[3] > rescored[2], "{rescored:?}");
    }
}

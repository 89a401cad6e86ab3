//! Evaluation metrics: retrieval recall and ranks (CLIP4Clip's `compute_metrics`) and top-k
//! classification accuracy (ActionCLIP).

use clip_core::{ClipError, Result};

/// Text-to-video (or video-to-text) retrieval metrics over a similarity matrix whose query `i`
/// has item `i` as its correct match.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetrievalMetrics {
    /// Percentage of queries whose correct item ranks first (R@1, 0-100).
    pub r1: f64,
    /// Percentage ranking it in the top 5 (R@5).
    pub r5: f64,
    /// Percentage ranking it in the top 10 (R@10).
    pub r10: f64,
    /// Median 1-based rank (the mean of the two middle ranks for an even count, as `np.median`).
    pub median_rank: f64,
    /// Mean 1-based rank.
    pub mean_rank: f64,
}

/// 1-based rank of each query's correct item in a row-major similarity matrix `[rows, cols]`
/// (query `i`'s correct item is column `i`, so `rows <= cols`): one plus the number of other
/// items scoring higher or equal. Ties count against the query, so a constant matrix ranks every
/// query last; without ties this is CLIP4Clip's rank (position of the correct score in the row
/// sorted descending). A NaN correct score ranks last.
pub fn retrieval_ranks(similarity: &[f32], rows: usize, cols: usize) -> Result<Vec<usize>> {
    check_matrix(similarity, rows, cols, "similarity")?;
    if rows > cols {
        return Err(ClipError::Shape(format!(
            "retrieval: {rows} queries but only {cols} items (query i's match is item i)"
        )));
    }
    Ok(similarity
        .chunks(cols)
        .enumerate()
        .map(|(i, row)| pessimistic_rank(row, i))
        .collect())
}

/// [`RetrievalMetrics`] of a row-major similarity matrix `[rows, cols]` whose query `i`
/// matches item `i`. For text-to-video pass `[texts, videos]`; for video-to-text, its
/// [`transpose`].
pub fn retrieval_metrics(similarity: &[f32], rows: usize, cols: usize) -> Result<RetrievalMetrics> {
    let mut ranks = retrieval_ranks(similarity, rows, cols)?;
    let count = ranks.len() as f64;
    let recall = |k: usize| 100.0 * ranks.iter().filter(|&&r| r <= k).count() as f64 / count;
    let (r1, r5, r10) = (recall(1), recall(5), recall(10));
    let mean_rank = ranks.iter().sum::<usize>() as f64 / count;
    ranks.sort_unstable();
    let middle = ranks.len() / 2;
    let median_rank = if ranks.len() % 2 == 1 {
        ranks[middle] as f64
    } else {
        (ranks[middle - 1] + ranks[middle]) as f64 / 2.0
    };
    Ok(RetrievalMetrics {
        r1,
        r5,
        r10,
        median_rank,
        mean_rank,
    })
}

/// The transpose `[cols, rows]` of a row-major matrix `[rows, cols]`.
pub fn transpose(matrix: &[f32], rows: usize, cols: usize) -> Result<Vec<f32>> {
    check_matrix(matrix, rows, cols, "matrix")?;
    Ok((0..cols)
        .flat_map(|j| (0..rows).map(move |i| matrix[i * cols + j]))
        .collect())
}

/// Fraction (0-1) of rows of `logits` `[labels.len(), classes]` whose label is among the `k`
/// highest-scoring classes; ties count against the row (as in [`retrieval_ranks`]).
pub fn top_k_accuracy(logits: &[f32], classes: usize, labels: &[usize], k: usize) -> Result<f64> {
    check_matrix(logits, labels.len(), classes, "logits")?;
    if let Some((row, label)) = labels.iter().enumerate().find(|&(_, &label)| label >= classes) {
        return Err(ClipError::Shape(format!(
            "top-k accuracy: label {label} of row {row} is not below the class count {classes}"
        )));
    }
    let hits = logits
        .chunks(classes)
        .zip(labels)
        .filter(|&(row, &label)| pessimistic_rank(row, label) <= k)
        .count();
    Ok(hits as f64 / labels.len() as f64)
}

/// One plus the number of entries of `row` other than `target` scoring at least `row[target]`;
/// `row.len()` when `row[target]` is NaN.
fn pessimistic_rank(row: &[f32], target: usize) -> usize {
    let score = row[target];
    if score.is_nan() {
        return row.len();
    }
    1 + row
        .iter()
        .enumerate()
        .filter(|&(j, &s)| j != target && s >= score)
        .count()
}

/// Checks that `matrix` holds `rows * cols` values and is not empty.
fn check_matrix(matrix: &[f32], rows: usize, cols: usize, name: &str) -> Result<()> {
    if rows == 0 || cols == 0 {
        return Err(ClipError::Shape(format!("{name}: empty matrix [{rows}, {cols}]")));
    }
    if matrix.len() != rows * cols {
        return Err(ClipError::Shape(format!(
            "{name}: {} values for a [{rows}, {cols}] matrix ({} expected)",
            matrix.len(),
            rows * cols
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_and_metrics_match_a_hand_ranking() {
        // 4 queries x 4 items; the correct item of query i is column i.
        #[rustfmt::skip]
        let sim = [
            0.9, 0.1, 0.2, 0.3, // row 0: 0.9 is the largest -> rank 1
            0.8, 0.5, 0.7, 0.1, // row 1: 0.5 < 0.8, 0.7 -> rank 3
            0.1, 0.2, 0.3, 0.0, // row 2: 0.3 is the largest -> rank 1
            0.4, 0.6, 0.5, 0.2, // row 3: 0.2 < 0.4, 0.6, 0.5 -> rank 4
        ];
        assert_eq!(retrieval_ranks(&sim, 4, 4).unwrap(), [1, 3, 1, 4]);
        let m = retrieval_metrics(&sim, 4, 4).unwrap();
        // R@1 = 2/4 = 50%; R@5 = R@10 = 100%; sorted ranks 1, 1, 3, 4: median (1 + 3) / 2 = 2;
        // mean (1 + 3 + 1 + 4) / 4 = 2.25.
        assert_eq!((m.r1, m.r5, m.r10), (50.0, 100.0, 100.0));
        assert_eq!((m.median_rank, m.mean_rank), (2.0, 2.25));
        // Video-to-text: column j of sim, correct entry j.
        // col 0: 0.9 top -> 1; col 1: 0.5 vs 0.1, 0.2, 0.6 -> 2; col 2: 0.3 vs 0.2, 0.7, 0.5 -> 3;
        // col 3: 0.2 vs 0.3, 0.1, 0.0 -> 2.
        let t = transpose(&sim, 4, 4).unwrap();
        assert_eq!(retrieval_ranks(&t, 4, 4).unwrap(), [1, 2, 3, 2]);
        // Odd count: ranks 1, 2, 3 (first three queries of the transpose) -> median 2.
        let m = retrieval_metrics(&t[..12], 3, 4).unwrap();
        assert_eq!((m.median_rank, m.mean_rank), (2.0, 2.0));
    }

    #[test]
    fn recall_at_five_and_ten_cut_where_expected() {
        // One query over 12 items: 5 items beat the correct one -> rank 6 (in R@10, not R@5).
        let mut row = vec![0.0f32; 12];
        row[..6].copy_from_slice(&[0.5, 0.9, 0.8, 0.7, 0.6, 0.55]);
        let m = retrieval_metrics(&row, 1, 12).unwrap();
        assert_eq!((m.r1, m.r5, m.r10, m.median_rank), (0.0, 0.0, 100.0, 6.0));
    }

    #[test]
    fn ties_and_nan_count_against_the_query() {
        // Constant rows: every other item ties -> rank = cols = 3.
        assert_eq!(retrieval_ranks(&[1.0; 6], 2, 3).unwrap(), [3, 3]);
        assert_eq!(retrieval_ranks(&[f32::NAN, 0.0, 1.0, 2.0], 2, 2).unwrap(), [2, 1]);
    }

    #[test]
    fn top_k_accuracy_matches_hand_count() {
        #[rustfmt::skip]
        let logits = [
            0.1, 0.7, 0.2, // label 1: top-1 hit
            0.5, 0.3, 0.2, // label 1: second -> top-2 hit only
            0.2, 0.3, 0.5, // label 0: third -> miss for k <= 2
        ];
        let labels = [1, 1, 0];
        assert!((top_k_accuracy(&logits, 3, &labels, 1).unwrap() - 1.0 / 3.0).abs() < 1e-12);
        assert!((top_k_accuracy(&logits, 3, &labels, 2).unwrap() - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(top_k_accuracy(&logits, 3, &labels, 3).unwrap(), 1.0);
    }

    #[test]
    fn bad_shapes_are_errors() {
        let err = retrieval_metrics(&[0.0; 5], 2, 3).unwrap_err().to_string();
        assert!(err.contains("5 values") && err.contains("[2, 3]"), "{err}");
        let err = retrieval_metrics(&[0.0; 6], 3, 2).unwrap_err().to_string();
        assert!(err.contains("3 queries"), "{err}");
        let err = top_k_accuracy(&[0.0; 4], 2, &[0, 2], 1).unwrap_err().to_string();
        assert!(err.contains("label 2 of row 1"), "{err}");
        assert!(top_k_accuracy(&[], 2, &[], 1).is_err());
    }
}

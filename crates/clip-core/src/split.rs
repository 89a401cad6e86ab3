//! Seeded train/validation splits of any table, shared by every dataset type.

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

/// Splits rows `0..count` into (kept, held out): a seeded random `fraction` is held out (at
/// least one row, and leaving at least one when there are two or more); both lists are in
/// ascending order.
pub fn split_rows(count: usize, fraction: f64, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let mut order: Vec<usize> = (0..count).collect();
    order.shuffle(&mut StdRng::seed_from_u64(seed));
    let held_out = ((count as f64 * fraction).round() as usize).clamp(1, count.saturating_sub(1).max(1)).min(count);
    let mut kept = order[held_out..].to_vec();
    let mut held = order[..held_out].to_vec();
    kept.sort_unstable();
    held.sort_unstable();
    (kept, held)
}

#[cfg(test)]
mod tests {
    use super::split_rows;

    #[test]
    fn splits_partition_the_rows_reproducibly() {
        let (kept, held) = split_rows(10, 0.3, 7);
        assert_eq!((kept.len(), held.len()), (7, 3));
        let mut all: Vec<usize> = kept.iter().chain(&held).copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..10).collect::<Vec<_>>());
        assert!(kept.windows(2).all(|w| w[0] < w[1]) && held.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(split_rows(10, 0.3, 7), (kept, held));
        // At least one row on each side when there are two or more.
        assert_eq!(split_rows(2, 1.0, 0).0.len(), 1);
        assert_eq!(split_rows(5, 0.01, 0).1.len(), 1);
        assert_eq!(split_rows(1, 0.5, 0), (vec![], vec![0]));
    }
}

//! Where a run's validation set comes from: the `data.val` file, or else the seeded
//! `data.val_fraction` split of the training set. One rule for every kind of dataset.

use std::path::Path;

use crate::config::RunContext;
use crate::pairs::PairTable;

/// A dataset `data.val_fraction` can split.
pub trait Splittable: Sized {
    /// Number of rows the split draws from (pairs, images or clips).
    fn rows(&self) -> usize;
    /// The kept part and the held-out part, chosen by `seed`.
    fn split_off(self, fraction: f64, seed: u64) -> (Self, Self);
}

impl RunContext {
    /// `train` and its validation set: `read(data.val)`, or the `data.val_fraction` split of
    /// `train`, or none.
    pub fn with_validation<T: Splittable, E>(
        &self,
        train: T,
        read: impl FnOnce(&Path) -> Result<T, E>,
    ) -> Result<(T, Option<T>), E> {
        if let Some(val) = &self.data.val {
            return Ok((train, Some(read(val)?)));
        }
        if self.data.val_fraction > 0.0 && train.rows() > 1 {
            let (train, val) = train.split_off(self.data.val_fraction, self.seed);
            return Ok((train, Some(val)));
        }
        Ok((train, None))
    }
}

impl Splittable for PairTable {
    fn rows(&self) -> usize {
        self.pairs.len()
    }
    fn split_off(self, fraction: f64, seed: u64) -> (Self, Self) {
        self.split(fraction, seed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pairs::Pair;

    fn table(rows: usize) -> PairTable {
        PairTable {
            path: "train.tsv".into(),
            pairs: (0..rows)
                .map(|i| Pair {
                    image: format!("{i}.png").into(),
                    caption: format!("caption {i}"),
                    label: None,
                    line: i + 2,
                })
                .collect(),
        }
    }

    fn config(val: Option<&str>, fraction: f64) -> RunContext {
        let mut data = crate::config::DataSection::new("train.tsv");
        data.val = val.map(Into::into);
        data.val_fraction = fraction;
        RunContext::new(crate::config::ModelSection::named("ViT-B-32"), data, "out")
    }

    #[test]
    fn val_file_wins_then_fraction_then_none() {
        let read = |path: &Path| -> Result<PairTable, String> {
            assert_eq!(path, Path::new("val.tsv"));
            Ok(table(3))
        };
        let (train, val) = config(Some("val.tsv"), 0.0).with_validation(table(10), read).unwrap();
        assert_eq!((train.pairs.len(), val.unwrap().pairs.len()), (10, 3));

        let never = |_: &Path| -> Result<PairTable, String> { unreachable!("no data.val") };
        let (train, val) = config(None, 0.2).with_validation(table(10), never).unwrap();
        assert_eq!((train.pairs.len(), val.unwrap().pairs.len()), (8, 2));

        let (train, val) = config(None, 0.0).with_validation(table(10), never).unwrap();
        assert_eq!(train.pairs.len(), 10);
        assert!(val.is_none());

        // A single row is never split away.
        let (train, val) = config(None, 0.5).with_validation(table(1), never).unwrap();
        assert!(train.pairs.len() == 1 && val.is_none());
    }

    #[test]
    fn a_failing_val_read_is_returned() {
        let failing = |_: &Path| -> Result<PairTable, String> { Err("val.tsv: missing".into()) };
        let error = config(Some("val.tsv"), 0.0).with_validation(table(4), failing).unwrap_err();
        assert_eq!(error, "val.tsv: missing");
    }
}

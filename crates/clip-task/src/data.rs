//! The data machinery every task shares: batches loaded by index on worker threads, a seeded
//! order per epoch that a resumed run replays exactly, one batch prefetched, and unreadable
//! samples skipped and counted (or a stop naming the file and line).

use std::path::PathBuf;
use std::sync::mpsc::{Receiver, sync_channel};

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

/// A problem with a data file, naming it (and the line where there is one).
#[derive(Debug, thiserror::Error)]
#[error("{path}{}: {message}", line.filter(|l| *l > 0).map(|l| format!(":{l}")).unwrap_or_default())]
pub struct DataError {
    /// The table or image file.
    pub path: PathBuf,
    /// Line of the table, when the problem is in one row.
    pub line: Option<usize>,
    /// What is wrong.
    pub message: String,
}

/// The random generator of the sample in `slot` of the batch of `step`: augmentation depends
/// only on these, so a resumed run sees exactly the batches an uninterrupted one would.
pub fn sample_rng(seed: u64, step: usize, slot: usize) -> StdRng {
    StdRng::seed_from_u64(seed ^ ((step as u64) << 20) ^ slot as u64)
}

/// Readable samples with their table rows, and the failures that were skipped.
pub type Readable<T> = (Vec<(usize, T)>, Vec<DataError>);

/// The rows of `indices` whose `loaded` result (in the same order) is a sample, paired with it,
/// and the failures: collected when `skip_bad_samples` is set, else the first one is returned.
pub fn keep_readable<T>(indices: &[usize], loaded: Vec<Result<T, DataError>>, skip_bad_samples: bool) -> Result<Readable<T>, DataError> {
    let (mut kept, mut skipped) = (Vec::with_capacity(indices.len()), Vec::new());
    for (&row, sample) in indices.iter().zip(loaded) {
        match sample {
            Ok(sample) => kept.push((row, sample)),
            Err(error) if skip_bad_samples => skipped.push(error),
            Err(error) => return Err(error),
        }
    }
    Ok((kept, skipped))
}

/// What the training loop draws batches from: a number of rows, loaded by index for a step.
/// Image-caption tables ([`Batcher`]) and segmentation tables implement it.
pub trait BatchSource: Clone + Send + 'static {
    /// A loaded batch.
    type Batch: LoadedBatch + Send + 'static;

    /// Rows in the table.
    fn rows(&self) -> usize;

    /// Loads the rows at `indices` for training step `step` (which seeds the augmentation).
    fn batch(&self, indices: &[usize], step: usize) -> Result<Self::Batch, DataError>;

    /// Whether the trainer visits the rows in a seeded permutation per epoch (`true`), or in
    /// order (`false`: `data.shuffle = false`, or a stream that shuffles itself).
    fn shuffled(&self) -> bool {
        true
    }
}

/// A loaded batch: which rows it holds and which were skipped as unreadable.
pub trait LoadedBatch {
    /// Table rows of the samples kept, in batch order.
    fn rows(&self) -> &[usize];

    /// Rows skipped because they could not be read.
    fn skipped(&self) -> &[DataError];
}

/// Runs `load(row, slot)` for each of `indices` on up to `workers` threads; results come back
/// in the order of `indices`, `slot` being the position in it.
pub fn load_on_workers<T: Send>(
    indices: &[usize],
    workers: usize,
    load: impl Fn(usize, usize) -> Result<T, DataError> + Sync,
) -> Vec<Result<T, DataError>> {
    let chunk = indices.len().div_ceil(workers.max(1)).max(1);
    let load = &load;
    std::thread::scope(|scope| {
        let handles: Vec<_> = indices
            .chunks(chunk)
            .enumerate()
            .map(|(part, rows)| {
                scope.spawn(move || {
                    rows.iter()
                        .enumerate()
                        .map(|(i, &row)| load(row, part * chunk + i))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().expect("data worker panicked")).collect()
    })
}

/// The order in which training visits the table: a seeded permutation per epoch, cut into
/// full batches (the last partial batch of an epoch is dropped, as open_clip does).
#[derive(Debug, Clone)]
pub struct Schedule {
    rows: usize,
    batch_size: usize,
    seed: u64,
    /// Whether each epoch is a seeded permutation (else the rows in order).
    shuffle: bool,
    /// The permutation of the epoch last asked for, shuffled once per epoch.
    order: Option<(usize, Vec<usize>)>,
}

impl Schedule {
    /// A schedule over `rows` rows.
    pub fn new(rows: usize, batch_size: usize, seed: u64) -> Self {
        Self { rows, batch_size, seed, shuffle: true, order: None }
    }

    /// The schedule visiting the rows in order in every epoch when `shuffle` is false.
    pub fn with_shuffle(mut self, shuffle: bool) -> Self {
        self.shuffle = shuffle;
        self
    }

    /// Optimizer steps in one epoch.
    pub fn steps_per_epoch(&self) -> usize {
        self.rows / self.batch_size
    }

    /// Row indices of the batch at global `step`.
    pub fn indices(&mut self, step: usize) -> Vec<usize> {
        let per_epoch = self.steps_per_epoch().max(1);
        let epoch = step / per_epoch;
        if self.order.as_ref().is_none_or(|(cached, _)| *cached != epoch) {
            let mut order: Vec<usize> = (0..self.rows).collect();
            if self.shuffle {
                order.shuffle(&mut StdRng::seed_from_u64(self.seed.wrapping_add(epoch as u64)));
            }
            self.order = Some((epoch, order));
        }
        let (_, order) = self.order.as_ref().expect("the epoch's order was just set");
        let start = (step % per_epoch) * self.batch_size;
        order[start..start + self.batch_size].to_vec()
    }
}

/// Loads the batches of `steps` on a background thread, `prefetch` ahead of the consumer.
pub fn prefetch<S: BatchSource>(
    source: S,
    mut schedule: Schedule,
    steps: std::ops::Range<usize>,
    prefetch: usize,
) -> Receiver<(usize, Result<S::Batch, DataError>)> {
    let (sender, receiver) = sync_channel(prefetch.max(1));
    std::thread::spawn(move || {
        for step in steps {
            let batch = source.batch(&schedule.indices(step), step);
            let failed = batch.is_err();
            if sender.send((step, batch)).is_err() || failed {
                break;
            }
        }
    });
    receiver
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_is_a_seeded_permutation_per_epoch() {
        let mut schedule = Schedule::new(10, 3, 7);
        assert_eq!(schedule.steps_per_epoch(), 3);
        let mut epoch: Vec<usize> = (0..3).flat_map(|s| schedule.indices(s)).collect();
        epoch.sort();
        epoch.dedup();
        assert_eq!(epoch.len(), 9, "an epoch visits distinct rows");
        assert_eq!(schedule.indices(4), Schedule::new(10, 3, 7).indices(4), "the cache does not change the order");
        assert_ne!(schedule.indices(0), schedule.indices(3), "epochs are shuffled differently");
    }

    #[test]
    fn unreadable_rows_are_skipped_and_counted_or_stop_the_batch() {
        let bad = |line| DataError { path: "t.tsv".into(), line: Some(line), message: "unreadable".into() };
        let loaded = || vec![Ok('a'), Err(bad(3)), Ok('c'), Err(bad(5))];
        let (kept, skipped) = keep_readable(&[10, 11, 12, 13], loaded(), true).unwrap();
        assert_eq!(kept, [(10, 'a'), (12, 'c')]);
        assert_eq!(skipped.iter().map(|e| e.line).collect::<Vec<_>>(), [Some(3), Some(5)]);
        assert_eq!(keep_readable(&[10, 11, 12, 13], loaded(), false).unwrap_err().line, Some(3));
    }
}

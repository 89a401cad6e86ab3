//! Image-caption tables (open_clip's CSV/TSV layout) and the batches built from them: images
//! decoded and transformed on worker threads, captions tokenized, one batch prefetched.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, sync_channel};

use clip_core::ClipTokenizer;
use clip_core::preprocess::{EvalTransform, ImageTensorData, TrainTransform, load_image};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use crate::config::DataSection;

/// One row of an image-caption table.
#[derive(Debug, Clone)]
pub struct Pair {
    /// The image file (resolved against the table's folder).
    pub image: PathBuf,
    /// The caption.
    pub caption: String,
    /// The class name, when the table has a label column.
    pub label: Option<String>,
    /// 1-based line number in the table (the header is line 1).
    pub line: usize,
}

/// An image-caption table read into memory (the images themselves are read lazily).
#[derive(Debug, Clone)]
pub struct PairTable {
    /// The table file.
    pub path: PathBuf,
    /// Its rows.
    pub pairs: Vec<Pair>,
}

/// A problem with a data file, naming it (and the line where there is one).
#[derive(Debug, thiserror::Error)]
#[error("{path}{}: {message}", line.map(|l| format!(":{l}")).unwrap_or_default())]
pub struct DataError {
    /// The table or image file.
    pub path: PathBuf,
    /// Line of the table, when the problem is in one row.
    pub line: Option<usize>,
    /// What is wrong.
    pub message: String,
}

impl PairTable {
    /// Reads a `.tsv` (tab-separated) or `.csv` (comma-separated) table with a header row
    /// naming the configured columns.
    pub fn read(path: &Path, data: &DataSection) -> Result<Self, DataError> {
        let error = |line: Option<usize>, message: String| DataError {
            path: path.to_path_buf(),
            line,
            message,
        };
        let delimiter = if path.extension().is_some_and(|e| e == "tsv") { b'\t' } else { b',' };
        let mut reader = csv::ReaderBuilder::new()
            .delimiter(delimiter)
            .from_path(path)
            .map_err(|e| error(None, e.to_string()))?;
        let headers = reader.headers().map_err(|e| error(Some(1), e.to_string()))?.clone();
        let column = |name: &str| {
            headers.iter().position(|h| h == name).ok_or_else(|| {
                let found: Vec<&str> = headers.iter().collect();
                error(Some(1), format!("no column {name:?} (columns: {})", found.join(", ")))
            })
        };
        let image_column = column(&data.image_column)?;
        let caption_column = column(&data.caption_column)?;
        let label_column = data.label_column.as_deref().map(column).transpose()?;
        let folder = path.parent().unwrap_or(Path::new("."));
        let mut pairs = Vec::new();
        for (index, record) in reader.records().enumerate() {
            let line = index + 2;
            let record = record.map_err(|e| error(Some(line), e.to_string()))?;
            let field = |column: usize, name: &str| {
                record
                    .get(column)
                    .map(str::to_string)
                    .ok_or_else(|| error(Some(line), format!("missing {name:?} field")))
            };
            pairs.push(Pair {
                image: folder.join(field(image_column, &data.image_column)?),
                caption: field(caption_column, &data.caption_column)?,
                label: label_column.map(|c| field(c, "label")).transpose()?,
                line,
            });
        }
        if pairs.is_empty() {
            return Err(error(None, "the table has no rows".into()));
        }
        Ok(Self {
            path: path.to_path_buf(),
            pairs,
        })
    }
}

/// Images and token ids of one batch, ready to become tensors.
#[derive(Debug)]
pub struct PairBatch {
    /// Table rows of the samples kept, in batch order.
    pub rows: Vec<usize>,
    /// Transformed images.
    pub images: Vec<ImageTensorData>,
    /// Token ids, `context_length` per caption.
    pub tokens: Vec<i64>,
    /// Rows skipped because their image could not be read.
    pub skipped: Vec<DataError>,
}

/// How images are transformed.
#[derive(Clone)]
pub enum Transform {
    /// Random resized crop (seeded per sample).
    Train(TrainTransform),
    /// Resize and center crop.
    Eval(EvalTransform),
}

/// Builds batches of a table on `workers` threads.
#[derive(Clone)]
pub struct Batcher {
    table: std::sync::Arc<PairTable>,
    tokenizer: ClipTokenizer,
    transform: Transform,
    workers: usize,
    skip_bad_samples: bool,
    seed: u64,
}

impl Batcher {
    /// A batcher over `table`.
    pub fn new(
        table: PairTable,
        tokenizer: ClipTokenizer,
        transform: Transform,
        workers: usize,
        skip_bad_samples: bool,
        seed: u64,
    ) -> Self {
        Self {
            table: std::sync::Arc::new(table),
            tokenizer,
            transform,
            workers: workers.max(1),
            skip_bad_samples,
            seed,
        }
    }

    /// The table.
    pub fn table(&self) -> &PairTable {
        &self.table
    }

    /// Loads the rows at `indices`. A sample's augmentation depends only on the seed and its
    /// `(step, slot)`, so a resumed run sees exactly the batches an uninterrupted one would.
    pub fn batch(&self, indices: &[usize], step: usize) -> Result<PairBatch, DataError> {
        let chunk = indices.len().div_ceil(self.workers).max(1);
        let loaded: Vec<Result<ImageTensorData, DataError>> = std::thread::scope(|scope| {
            let handles: Vec<_> = indices
                .chunks(chunk)
                .enumerate()
                .map(|(part, rows)| {
                    scope.spawn(move || {
                        rows.iter()
                            .enumerate()
                            .map(|(i, &row)| self.load(row, step, part * chunk + i))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles.into_iter().flat_map(|h| h.join().expect("image worker panicked")).collect()
        });
        let mut batch = PairBatch {
            rows: Vec::with_capacity(indices.len()),
            images: Vec::with_capacity(indices.len()),
            tokens: Vec::with_capacity(indices.len() * self.tokenizer.context_length()),
            skipped: Vec::new(),
        };
        for (&row, image) in indices.iter().zip(loaded) {
            match image {
                Ok(image) => {
                    let pair = &self.table.pairs[row];
                    let tokens = self.tokenizer.tokenize(&pair.caption).map_err(|e| DataError {
                        path: self.table.path.clone(),
                        line: Some(pair.line),
                        message: e.to_string(),
                    })?;
                    batch.rows.push(row);
                    batch.images.push(image);
                    batch.tokens.extend(tokens);
                }
                Err(error) if self.skip_bad_samples => batch.skipped.push(error),
                Err(error) => return Err(error),
            }
        }
        Ok(batch)
    }

    fn load(&self, row: usize, step: usize, slot: usize) -> Result<ImageTensorData, DataError> {
        let pair = &self.table.pairs[row];
        let error = |message: String| DataError {
            path: self.table.path.clone(),
            line: Some(pair.line),
            message,
        };
        let image = load_image(&pair.image).map_err(|e| error(e.to_string()))?;
        match &self.transform {
            Transform::Eval(t) => t.apply(&image),
            Transform::Train(t) => {
                let mut rng = StdRng::seed_from_u64(self.seed ^ ((step as u64) << 20) ^ slot as u64);
                t.apply(&image, &mut rng)
            }
        }
        .map_err(|e| error(e.to_string()))
    }
}

/// The order in which training visits the table: a seeded permutation per epoch, cut into
/// full batches (the last partial batch of an epoch is dropped, as open_clip does).
#[derive(Debug, Clone)]
pub struct Schedule {
    rows: usize,
    batch_size: usize,
    seed: u64,
}

impl Schedule {
    /// A schedule over `rows` rows.
    pub fn new(rows: usize, batch_size: usize, seed: u64) -> Self {
        Self { rows, batch_size, seed }
    }

    /// Optimizer steps in one epoch.
    pub fn steps_per_epoch(&self) -> usize {
        self.rows / self.batch_size
    }

    /// Row indices of the batch at global `step`.
    pub fn indices(&self, step: usize) -> Vec<usize> {
        let per_epoch = self.steps_per_epoch().max(1);
        let epoch = step / per_epoch;
        let mut order: Vec<usize> = (0..self.rows).collect();
        order.shuffle(&mut StdRng::seed_from_u64(self.seed.wrapping_add(epoch as u64)));
        let start = (step % per_epoch) * self.batch_size;
        order[start..start + self.batch_size].to_vec()
    }
}

/// Loads the batches of `steps` on a background thread, `prefetch` ahead of the consumer.
pub fn prefetch(
    batcher: Batcher,
    schedule: Schedule,
    steps: std::ops::Range<usize>,
    prefetch: usize,
) -> Receiver<(usize, Result<PairBatch, DataError>)> {
    let (sender, receiver) = sync_channel(prefetch.max(1));
    std::thread::spawn(move || {
        for step in steps {
            let batch = batcher.batch(&schedule.indices(step), step);
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
        let schedule = Schedule::new(10, 3, 7);
        assert_eq!(schedule.steps_per_epoch(), 3);
        let mut epoch: Vec<usize> = (0..3).flat_map(|s| schedule.indices(s)).collect();
        epoch.sort();
        epoch.dedup();
        assert_eq!(epoch.len(), 9, "an epoch visits distinct rows");
        assert_eq!(schedule.indices(4), Schedule::new(10, 3, 7).indices(4));
        assert_ne!(schedule.indices(0), schedule.indices(3), "epochs are shuffled differently");
    }
}

//! Image-caption tables (open_clip's CSV/TSV layout) and the batches built from them: images
//! decoded and transformed on worker threads, captions tokenized, one batch prefetched.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, sync_channel};

use clip_core::ClipTokenizer;
use clip_core::preprocess::{EvalTransform, ImageTensorData, TrainTransform, load_image};
use clip_core::table::read_columns;
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
    /// 1-based line number in the table (a CSV header is line 1); 0 for image folders.
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
#[error("{path}{}: {message}", line.filter(|l| *l > 0).map(|l| format!(":{l}")).unwrap_or_default())]
pub struct DataError {
    /// The table or image file.
    pub path: PathBuf,
    /// Line of the table, when the problem is in one row.
    pub line: Option<usize>,
    /// What is wrong.
    pub message: String,
}

/// Image file extensions recognized in image folders.
const IMAGE_EXTENSIONS: &[&str] = &["png", "jpg", "jpeg", "gif", "bmp", "webp", "tif", "tiff", "pnm", "ppm", "pgm"];

impl PairTable {
    /// Reads a table: a `.tsv` (tab-separated) or `.csv` (comma-separated) file with a header
    /// row naming the configured columns, a `.jsonl` file of objects with those keys, or a
    /// folder with one subfolder of images per class (captions `caption_template` filled with
    /// the class name, labels the class names).
    pub fn read(path: &Path, data: &DataSection) -> Result<Self, DataError> {
        let pairs = if path.is_dir() {
            read_image_folder(path, &data.caption_template)?
        } else if path.extension().is_some_and(|e| e == "jsonl") {
            read_jsonl(path, data)?
        } else {
            read_delimited(path, data)?
        };
        if pairs.is_empty() {
            return Err(DataError {
                path: path.to_path_buf(),
                line: None,
                message: "no samples".into(),
            });
        }
        Ok(Self {
            path: path.to_path_buf(),
            pairs,
        })
    }

    /// Splits off a seeded random `fraction` of the rows as a validation table.
    pub fn split(self, fraction: f64, seed: u64) -> (Self, Self) {
        let (kept, held_out) = clip_core::split_rows(self.pairs.len(), fraction, seed);
        let pick = |rows: Vec<usize>| Self {
            path: self.path.clone(),
            pairs: rows.into_iter().map(|r| self.pairs[r].clone()).collect(),
        };
        (pick(kept), pick(held_out))
    }
}

fn read_delimited(path: &Path, data: &DataSection) -> Result<Vec<Pair>, DataError> {
    let mut columns = vec![data.image_column.as_str(), data.caption_column.as_str()];
    columns.extend(data.label_column.as_deref());
    let rows = read_columns(path, &columns).map_err(|e| DataError {
        path: e.path,
        line: e.line,
        message: e.message,
    })?;
    let folder = path.parent().unwrap_or(Path::new("."));
    Ok(rows
        .into_iter()
        .map(|(line, mut values)| Pair {
            label: (values.len() == 3).then(|| values.remove(2)),
            caption: values.remove(1),
            image: folder.join(&values[0]),
            line,
        })
        .collect())
}

fn read_jsonl(path: &Path, data: &DataSection) -> Result<Vec<Pair>, DataError> {
    let error = |line: Option<usize>, message: String| DataError {
        path: path.to_path_buf(),
        line,
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| error(None, e.to_string()))?;
    let folder = path.parent().unwrap_or(Path::new("."));
    let mut pairs = Vec::new();
    for (index, json) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let line = index + 1;
        let value: serde_json::Value = serde_json::from_str(json).map_err(|e| error(Some(line), e.to_string()))?;
        let field = |key: &str| match value.get(key).and_then(|v| v.as_str()).map(str::trim) {
            Some(text) if !text.is_empty() => Ok(text.to_string()),
            Some(_) => Err(error(Some(line), format!("empty {key}"))),
            None => Err(error(Some(line), format!("no string {key:?}"))),
        };
        pairs.push(Pair {
            image: folder.join(field(&data.image_column)?),
            caption: field(&data.caption_column)?,
            label: data.label_column.as_deref().map(field).transpose()?,
            line,
        });
    }
    Ok(pairs)
}

fn read_image_folder(root: &Path, caption_template: &str) -> Result<Vec<Pair>, DataError> {
    let error = |path: &Path, message: String| DataError {
        path: path.to_path_buf(),
        line: None,
        message,
    };
    let sorted_entries = |dir: &Path| -> Result<Vec<PathBuf>, DataError> {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| error(dir, e.to_string()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        entries.sort();
        Ok(entries)
    };
    let mut pairs = Vec::new();
    for class_dir in sorted_entries(root)?.into_iter().filter(|p| p.is_dir()) {
        let class = class_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        for image in sorted_entries(&class_dir)? {
            let is_image = image
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()));
            if is_image {
                pairs.push(Pair {
                    image,
                    caption: caption_template.replace("{}", &class),
                    label: Some(class.clone()),
                    line: 0,
                });
            }
        }
    }
    Ok(pairs)
}

/// Images and token ids of one batch, ready to become tensors.
#[derive(Debug)]
pub struct PairBatch {
    /// The training step the batch was loaded for (0 outside training).
    pub step: usize,
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
        let loaded = load_on_workers(indices, self.workers, |row, slot| self.load(row, step, slot));
        let mut batch = PairBatch {
            step,
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
            Transform::Train(t) => t.apply(&image, &mut sample_rng(self.seed, step, slot)),
        }
        .map_err(|e| error(e.to_string()))
    }
}

impl BatchSource for Batcher {
    type Batch = PairBatch;

    fn rows(&self) -> usize {
        self.table.pairs.len()
    }

    fn batch(&self, indices: &[usize], step: usize) -> Result<PairBatch, DataError> {
        Batcher::batch(self, indices, step)
    }
}

impl LoadedBatch for PairBatch {
    fn rows(&self) -> &[usize] {
        &self.rows
    }

    fn skipped(&self) -> &[DataError] {
        &self.skipped
    }
}

/// The random generator of the sample in `slot` of the batch of `step`: augmentation depends
/// only on these, so a resumed run sees exactly the batches an uninterrupted one would.
pub fn sample_rng(seed: u64, step: usize, slot: usize) -> StdRng {
    StdRng::seed_from_u64(seed ^ ((step as u64) << 20) ^ slot as u64)
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
    /// The permutation of the epoch last asked for, shuffled once per epoch.
    order: Option<(usize, Vec<usize>)>,
}

impl Schedule {
    /// A schedule over `rows` rows.
    pub fn new(rows: usize, batch_size: usize, seed: u64) -> Self {
        Self { rows, batch_size, seed, order: None }
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
            order.shuffle(&mut StdRng::seed_from_u64(self.seed.wrapping_add(epoch as u64)));
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

    fn section() -> DataSection {
        serde_json::from_str(r#"{"train": "x.tsv"}"#).unwrap()
    }

    #[test]
    fn jsonl_and_image_folders_become_tables() {
        let dir = std::env::temp_dir().join(format!("clip-train-tables-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("folder/cat")).unwrap();
        std::fs::create_dir_all(dir.join("folder/dog")).unwrap();
        for name in ["folder/cat/a.png", "folder/cat/b.JPG", "folder/dog/c.png", "folder/dog/notes.txt"] {
            std::fs::write(dir.join(name), b"").unwrap();
        }
        let folder = PairTable::read(&dir.join("folder"), &section()).unwrap();
        let captions: Vec<&str> = folder.pairs.iter().map(|p| p.caption.as_str()).collect();
        assert_eq!(captions, ["a photo of a cat.", "a photo of a cat.", "a photo of a dog."]);
        assert_eq!(folder.pairs[2].label.as_deref(), Some("dog"));

        std::fs::write(dir.join("t.jsonl"), "{\"filepath\": \"a.png\", \"title\": \"a cat\"}\n\n{\"filepath\": \"b.png\"}\n").unwrap();
        let err = PairTable::read(&dir.join("t.jsonl"), &section()).unwrap_err().to_string();
        assert!(err.contains("t.jsonl:3") && err.contains("title"), "{err}");
        std::fs::write(dir.join("t.jsonl"), "{\"filepath\": \"a.png\", \"title\": \"a cat\"}\n").unwrap();
        let table = PairTable::read(&dir.join("t.jsonl"), &section()).unwrap();
        assert_eq!((table.pairs[0].caption.as_str(), table.pairs[0].image.clone()), ("a cat", dir.join("a.png")));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn split_is_seeded_disjoint_and_complete() {
        let pairs = (0..10)
            .map(|i| Pair { image: PathBuf::from(format!("{i}.png")), caption: String::new(), label: None, line: i + 2 })
            .collect();
        let table = PairTable { path: PathBuf::from("t.tsv"), pairs };
        let (train, val) = table.clone().split(0.3, 5);
        assert_eq!((train.pairs.len(), val.pairs.len()), (7, 3));
        let mut lines: Vec<usize> = train.pairs.iter().chain(&val.pairs).map(|p| p.line).collect();
        lines.sort();
        assert_eq!(lines, (2..12).collect::<Vec<_>>());
        assert_eq!(table.split(0.3, 5).1.pairs[0].line, val.pairs[0].line);
    }
}

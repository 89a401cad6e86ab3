//! Image-caption tables (open_clip's CSV/TSV layout, JSONL, class folders) and the batches
//! built from them: images decoded and transformed on worker threads, captions tokenized.

use std::path::{Path, PathBuf};

use clip_core::ClipTokenizer;
use clip_core::preprocess::{EvalTransform, EvalTransformConfig, ImageTensorData, TrainTransform, TrainTransformConfig, load_image};
use clip_core::table::read_columns;

use crate::config::{DataSection, RunContext};
use crate::data::{BatchSource, DataError, LoadedBatch, load_on_workers, sample_rng};

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

/// Image file extensions recognized in image folders.
const IMAGE_EXTENSIONS: &[&str] = &["png", "jpg", "jpeg", "gif", "bmp", "webp", "tif", "tiff", "pnm", "ppm", "pgm"];

impl PairTable {
    /// Reads a table: a `.tsv` (tab-separated) or `.csv` (comma-separated) file with a header
    /// row naming the configured columns, a `.jsonl` file of objects with those keys, or a
    /// folder with one subfolder of images per class (captions `caption_template` filled with
    /// the class name, labels the class names).
    pub fn read(path: &Path, data: &DataSection) -> Result<Self, DataError> {
        if crate::shards::is_shard_spec(path) {
            return Err(DataError {
                path: path.to_path_buf(),
                line: None,
                message: "tar shards are streamed for training by train.objective = \"contrastive\"; this needs a table \
                          or a class folder (`clipforge shards` makes shards from those)"
                    .into(),
            });
        }
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

impl RunContext {
    /// The training table and the validation table (`data.val`, or the `data.val_fraction`
    /// split off the training table), read from disk.
    pub fn tables(&self) -> Result<(PairTable, Option<PairTable>), DataError> {
        let train = PairTable::read(&self.data.train, &self.data)?;
        self.with_validation(train, |val| PairTable::read(val, &self.data))
    }

    /// The validation table: `read` (kept by a task that trained here), or read anew.
    pub fn val_table(&self, read: Option<&PairTable>) -> Result<Option<PairTable>, DataError> {
        match read {
            Some(val) => Ok(Some(val.clone())),
            None => Ok(self.tables()?.1),
        }
    }
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
    shuffle: bool,
    /// Training pairs streamed from tar shards instead of the (then empty) table.
    shards: Option<crate::shards::ShardBatcher>,
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
            shuffle: true,
            shards: None,
        }
    }

    /// A batcher streaming training pairs from tar shards (its table is empty).
    pub fn from_shards(shards: crate::shards::ShardBatcher) -> Self {
        let table = PairTable { path: shards.train().to_path_buf(), pairs: Vec::new() };
        Self {
            shards: Some(shards.clone()),
            ..Self::new(table, shards.tokenizer().clone(), shards.transform().clone(), 1, false, 0).with_shuffle(false)
        }
    }

    /// The batcher with the trainer visiting its rows in order (`shuffle` false) or in a
    /// seeded permutation per epoch.
    pub fn with_shuffle(mut self, shuffle: bool) -> Self {
        self.shuffle = shuffle;
        self
    }

    /// A batcher over `table` with the training transform (random resized crop of
    /// `data.crop_scale`), as the run's `[data]` says.
    pub fn for_training(run: &RunContext, table: PairTable, tokenizer: &ClipTokenizer, image_size: usize) -> anyhow::Result<Self> {
        let transform = TrainTransformConfig::new().with_image_size(image_size).with_scale(run.data.crop_scale).init()?;
        Ok(Self::new(table, tokenizer.clone(), Transform::Train(transform), run.data.workers, run.data.skip_bad_samples, run.seed)
            .with_shuffle(run.data.shuffle))
    }

    /// A batcher over `table` with the evaluation transform (resize and center crop).
    pub fn for_eval(run: &RunContext, table: PairTable, tokenizer: &ClipTokenizer, image_size: usize) -> Self {
        let transform = Transform::Eval(EvalTransformConfig::new().with_image_size(image_size).init());
        Self::new(table, tokenizer.clone(), transform, run.data.workers, run.data.skip_bad_samples, run.seed)
    }

    /// The table.
    pub fn table(&self) -> &PairTable {
        &self.table
    }

    /// Loads the rows at `indices`. A sample's augmentation depends only on the seed and its
    /// `(step, slot)`, so a resumed run sees exactly the batches an uninterrupted one would.
    pub fn batch(&self, indices: &[usize], step: usize) -> Result<PairBatch, DataError> {
        if let Some(shards) = &self.shards {
            return shards.batch(indices, step);
        }
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
        match &self.shards {
            Some(shards) => shards.rows(),
            None => self.table.pairs.len(),
        }
    }

    fn batch(&self, indices: &[usize], step: usize) -> Result<PairBatch, DataError> {
        Batcher::batch(self, indices, step)
    }

    fn shuffled(&self) -> bool {
        self.shuffle
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

#[cfg(test)]
mod tests {
    use super::*;

    fn section() -> DataSection {
        serde_json::from_str(r#"{"train": "x.tsv"}"#).unwrap()
    }

    #[test]
    fn jsonl_and_image_folders_become_tables() {
        let tmp = tempfile::Builder::new().prefix("clip-train-tables-").tempdir().unwrap();
        let dir = tmp.path();
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

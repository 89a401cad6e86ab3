//! The config sections every task reads (`[model]`, `[data]`, `[eval]`) and [`RunContext`],
//! what a task sees of the run it belongs to.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// What a task sees of its run: the config file (for error messages), the shared sections,
/// the seed and the output folder. The trainer builds it from the run config; research code
/// can build it directly.
#[derive(Debug, Clone)]
pub struct RunContext {
    /// The run config file, named by every configuration error.
    pub file: PathBuf,
    /// The `train.objective` that chose the task.
    pub objective: String,
    /// `[model]`.
    pub model: ModelSection,
    /// `[data]`.
    pub data: DataSection,
    /// `[eval]`.
    pub eval: EvalSection,
    /// Seed of initialization, data order and augmentation.
    pub seed: u64,
    /// Where the run writes (checkpoints, caches, summary).
    pub output: PathBuf,
}

impl RunContext {
    /// A context with default `[eval]`, seed 0, for the given model and data.
    pub fn new(model: ModelSection, data: DataSection, output: impl Into<PathBuf>) -> Self {
        Self {
            file: PathBuf::from("<code>"),
            objective: String::new(),
            model,
            data,
            eval: EvalSection::default(),
            seed: 0,
            output: output.into(),
        }
    }
}

impl ModelSection {
    /// A model by name or config path, randomly initialized.
    pub fn named(name: impl Into<String>) -> Self {
        Self { name: name.into(), weights: None }
    }
}

impl DataSection {
    /// Defaults for every key but the training data.
    pub fn new(train: impl AsRef<Path>) -> Self {
        Self {
            train: train.as_ref().to_path_buf(),
            val: None,
            val_fraction: 0.0,
            caption_template: default_caption_template(),
            image_column: default_image_column(),
            caption_column: default_caption_column(),
            label_column: None,
            skip_bad_samples: false,
            workers: default_workers(),
            crop_scale: default_crop_scale(),
            shuffle: true,
            shuffle_buffer: default_shuffle_buffer(),
            resampled: false,
            train_num_samples: 0,
            train_weights: Vec::new(),
        }
    }
}

/// `[model]`: architecture and optional starting weights.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// A named architecture (`ViT-B-32`) or the path of an open_clip / Hugging Face JSON config.
    pub name: String,
    /// Checkpoint to fine-tune from (open_clip or Hugging Face layout); random init if absent.
    #[serde(default)]
    pub weights: Option<PathBuf>,
}

/// `[data]`: image-caption tables in open_clip's CSV/TSV layout.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    /// Training data: a `.csv`/`.tsv`/`.jsonl` table (image paths relative to its folder), a
    /// folder of class subfolders, or webdataset tar shards (`shards/{000000..000099}.tar`,
    /// sources separated by `::`; see `crate::shards`).
    pub train: PathBuf,
    /// Validation data, in the same forms, for the end-of-training evaluation.
    #[serde(default)]
    pub val: Option<PathBuf>,
    /// Without `val`: hold out this seeded random fraction of `train` for validation (0: none).
    #[serde(default)]
    pub val_fraction: f64,
    /// Caption of the images of a class folder, `{}` standing for the class name.
    #[serde(default = "default_caption_template")]
    pub caption_template: String,
    /// Column holding image paths.
    #[serde(default = "default_image_column")]
    pub image_column: String,
    /// Column holding captions.
    #[serde(default = "default_caption_column")]
    pub caption_column: String,
    /// Column holding class names, for zero-shot evaluation.
    #[serde(default)]
    pub label_column: Option<String>,
    /// Skip (and count) unreadable images instead of stopping the run.
    #[serde(default)]
    pub skip_bad_samples: bool,
    /// Threads decoding and transforming images.
    #[serde(default = "default_workers")]
    pub workers: usize,
    /// Range of the random-resized-crop area during training.
    #[serde(default = "default_crop_scale")]
    pub crop_scale: (f64, f64),
    /// Shuffle the training data: a seeded permutation of a table's rows per epoch; for
    /// shards, a seeded shard order per epoch and the shuffle buffer. `false` visits tables and
    /// shards in file order (shards split across `workers`, taken in turn).
    #[serde(default = "default_true")]
    pub shuffle: bool,
    /// Shards: samples in each data worker's shuffle buffer (0 or 1: none).
    #[serde(default = "default_shuffle_buffer")]
    pub shuffle_buffer: usize,
    /// Shards: draw shards with replacement, `train_num_samples` samples per epoch
    /// (open_clip's `--dataset-resampled`).
    #[serde(default)]
    pub resampled: bool,
    /// Shards: samples per epoch (0: counted from `sizes.json` or the tar headers; required
    /// with `resampled`).
    #[serde(default)]
    pub train_num_samples: usize,
    /// Shards, resampled: weight of each `::`-separated source of `train` (empty: every shard
    /// equally likely).
    #[serde(default)]
    pub train_weights: Vec<f64>,
}

fn default_true() -> bool {
    true
}
fn default_shuffle_buffer() -> usize {
    1000
}

fn default_image_column() -> String {
    "filepath".into()
}
fn default_caption_column() -> String {
    "title".into()
}
fn default_caption_template() -> String {
    "a photo of a {}.".into()
}
fn default_workers() -> usize {
    2
}
fn default_crop_scale() -> (f64, f64) {
    (0.9, 1.0)
}

/// `[eval]`: zero-shot classification and retrieval on the validation table.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvalSection {
    /// Class names for zero-shot classification (defaults to the labels found in the table).
    pub classes: Vec<String>,
    /// Prompt templates, `{}` standing for the class name (defaults to OpenAI's 80).
    pub templates: Vec<String>,
    /// Images per forward pass during evaluation.
    pub batch_size: usize,
    /// During training, zero-shot classification of `zero_shot_data` every this many steps
    /// (0: never), logged to `metrics.jsonl` (`zero_shot_top1`, `zero_shot_top5`) and TensorBoard
    /// (`zero_shot/top1`, `zero_shot/top5`).
    pub zero_shot_every: usize,
    /// The labelled set of the periodic zero-shot evaluation: a class folder (or a table with
    /// `data.label_column`); classes and templates as for the final evaluation.
    pub zero_shot_data: Option<PathBuf>,
}

impl Default for EvalSection {
    fn default() -> Self {
        Self {
            classes: Vec::new(),
            templates: Vec::new(),
            batch_size: 256,
            zero_shot_every: 0,
            zero_shot_data: None,
        }
    }
}


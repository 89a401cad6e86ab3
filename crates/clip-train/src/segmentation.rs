//! The segmentation objectives, `groupvit` and `lseg`: their batches, their training runs,
//! evaluation (mIoU and pixel accuracy over the label set) and the models `clipforge segment`
//! runs.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use burn::module::Module;
use burn::tensor::{Device, Int, Tensor, TensorData};
use clip_core::preprocess::{ImageTensorData, stack_images};
use clip_core::{ClipTokenizer, class_text_embeddings};
use clip_seg::data::{LabelSet, MaskData, SegmentationColumns, SegmentationTable, SegmentationTransform, SegmentationTransformConfig, load_sample, stack_masks};
use clip_seg::groupvit::{self, GroupVit, GroupVitBatch, GroupVitConfig, GroupVitObjective};
use clip_seg::lseg::{Lseg, LsegBatch, LsegConfig, LsegObjective, Readout};
use clip_seg::metrics::ConfusionMatrix;
use clip_seg::nouns::NounPrompts;

use crate::checkpoint::Checkpoints;
use crate::embeddings_file::read_lines;
use crate::config::{RunConfig, SegmentationSection};
use crate::data::{BatchSource, DataError, LoadedBatch, Pair, PairBatch, PairTable, load_on_workers, sample_rng};
use crate::params::freeze;
use crate::trainer::{Run, Summary, load_model};

/// Images and masks of one batch, ready to become tensors.
#[derive(Debug)]
pub struct SegmentationBatch {
    /// Table rows of the samples kept, in batch order.
    pub rows: Vec<usize>,
    /// Transformed images.
    pub images: Vec<ImageTensorData>,
    /// Their masks, transformed with them.
    pub masks: Vec<MaskData>,
    /// Rows skipped because their image or mask could not be read.
    pub skipped: Vec<DataError>,
}

impl LoadedBatch for SegmentationBatch {
    fn rows(&self) -> &[usize] {
        &self.rows
    }

    fn skipped(&self) -> &[DataError] {
        &self.skipped
    }
}

/// Builds batches of a segmentation table on worker threads, image and mask augmented together.
#[derive(Clone)]
pub struct SegmentationBatcher {
    table: Arc<SegmentationTable>,
    labels: Arc<LabelSet>,
    transform: SegmentationTransform,
    workers: usize,
    skip_bad_samples: bool,
    seed: u64,
}

impl SegmentationBatcher {
    /// A batcher over `table` with `transform`, as `config.data` says.
    pub fn new(config: &RunConfig, table: SegmentationTable, labels: LabelSet, transform: SegmentationTransform) -> Self {
        Self {
            table: Arc::new(table),
            labels: Arc::new(labels),
            transform,
            workers: config.data.workers.max(1),
            skip_bad_samples: config.data.skip_bad_samples,
            seed: config.run.seed,
        }
    }

    /// The table.
    pub fn table(&self) -> &SegmentationTable {
        &self.table
    }
}

impl BatchSource for SegmentationBatcher {
    type Batch = SegmentationBatch;

    fn rows(&self) -> usize {
        self.table.samples.len()
    }

    fn batch(&self, indices: &[usize], step: usize) -> Result<SegmentationBatch, DataError> {
        let loaded = load_on_workers(indices, self.workers, |row, slot| {
            let sample = &self.table.samples[row];
            load_sample(sample, &self.labels, &self.transform, &mut sample_rng(self.seed, step, slot)).map_err(|e| DataError {
                path: self.table.path.clone(),
                line: Some(sample.line),
                message: e.to_string(),
            })
        });
        let mut batch = SegmentationBatch { rows: Vec::new(), images: Vec::new(), masks: Vec::new(), skipped: Vec::new() };
        for (&row, sample) in indices.iter().zip(loaded) {
            match sample {
                Ok((image, mask)) => {
                    batch.rows.push(row);
                    batch.images.push(image);
                    batch.masks.push(mask);
                }
                Err(error) if self.skip_bad_samples => batch.skipped.push(error),
                Err(error) => return Err(error),
            }
        }
        Ok(batch)
    }
}

/// A segmentation model of either method: label names in, per-pixel label scores out.
#[derive(Debug, Clone)]
pub enum Segmenter {
    /// GroupViT.
    GroupVit(Box<GroupVit>),
    /// LSeg.
    Lseg(Box<Lseg>),
}

impl Segmenter {
    /// Normalized text embeddings of `names`, `[labels, embed_dim]`, averaged over `templates`.
    pub fn label_embeddings(&self, tokenizer: &ClipTokenizer, names: &[String], templates: &[String], device: &Device) -> anyhow::Result<Tensor<2>> {
        let encode = |tokens: Tensor<2, Int>| match self {
            Segmenter::GroupVit(model) => model.encode_text(tokens, true),
            Segmenter::Lseg(model) => model.label_embeddings(tokens),
        };
        Ok(class_text_embeddings(encode, tokenizer, names, templates, device)?)
    }

    /// Scores of each label at each pixel, `[batch, labels, height, width]`, for images
    /// `[batch, 3, height, width]` and normalized label embeddings `[labels, embed_dim]`.
    pub fn logits(&self, images: Tensor<4>, label_embeds: Tensor<2>) -> Tensor<4> {
        match self {
            Segmenter::GroupVit(model) => model.segment(images, label_embeds),
            Segmenter::Lseg(model) => model.logits(images, label_embeds),
        }
    }

    /// The most likely label of each pixel, `[batch, height, width]`.
    pub fn label_map(&self, images: Tensor<4>, label_embeds: Tensor<2>) -> Tensor<3, Int> {
        self.logits(images, label_embeds).argmax(1).squeeze_dim(1)
    }
}

/// The tokenizer of a model whose text tower reads `context_length` tokens.
fn tokenizer(context_length: usize) -> anyhow::Result<ClipTokenizer> {
    Ok(ClipTokenizer::new().with_context_length(context_length)?)
}

/// The `[segmentation]` section, which validation guarantees for the segmentation objectives.
fn section(config: &RunConfig) -> anyhow::Result<&SegmentationSection> {
    config.segmentation.as_ref().context("[segmentation] section missing")
}

/// The label set of `[segmentation]`.
pub fn label_set(seg: &SegmentationSection) -> anyhow::Result<LabelSet> {
    let mut labels = LabelSet::read(&seg.labels)?;
    labels.ignore_index = seg.ignore_index;
    labels.reduce_zero_label = seg.reduce_zero_label;
    Ok(labels)
}

/// The training table and the validation table (`data.val`, or the `data.val_fraction` split):
/// tables with image and mask columns, or folders of images with `segmentation.*_masks` folders.
pub fn segmentation_tables(config: &RunConfig) -> anyhow::Result<(SegmentationTable, Option<SegmentationTable>)> {
    let seg = section(config)?;
    // GroupViT trains on captions; validation only scores the masks.
    let captions = (config.train.objective == "groupvit").then_some(config.data.caption_column.as_str());
    let read = |data: &Path, masks: Option<&PathBuf>, list: Option<&PathBuf>, caption: Option<&str>| -> anyhow::Result<SegmentationTable> {
        Ok(match (masks.filter(|_| data.is_dir()), list) {
            (Some(masks), Some(list)) => SegmentationTable::from_list(data, masks, list)?,
            (Some(masks), None) => SegmentationTable::from_folders(data, masks)?,
            (None, _) => SegmentationTable::read(data, &SegmentationColumns { image: &config.data.image_column, mask: &seg.mask_column, caption })?,
        })
    };
    let train = read(&config.data.train, seg.train_masks.as_ref(), seg.train_list.as_ref(), captions)?;
    config.with_validation(train, |val| read(val, seg.val_masks.as_ref(), seg.val_list.as_ref(), None))
}

/// mIoU, per-label IoU and pixel accuracy of `segmenter` on the table of `batcher`.
pub fn evaluate_segmentation(
    segmenter: &Segmenter,
    batcher: &SegmentationBatcher,
    label_embeds: &Tensor<2>,
    labels: &LabelSet,
    batch_size: usize,
    device: &Device,
) -> anyhow::Result<serde_json::Value> {
    let rows: Vec<usize> = (0..batcher.rows()).collect();
    let mut confusion = ConfusionMatrix::new(labels.names.len());
    let mut samples = 0;
    for chunk in rows.chunks(batch_size.max(1)) {
        let batch = batcher.batch(chunk, 0)?;
        if batch.rows.is_empty() {
            continue;
        }
        let predicted = segmenter.label_map(stack_images(&batch.images, device)?, label_embeds.clone());
        let predicted: Vec<i64> = predicted.into_data().iter::<i64>().collect();
        let targets: Vec<i64> = batch.masks.iter().flat_map(|m| m.values.iter().copied()).collect();
        anyhow::ensure!(predicted.len() == targets.len(), "internal: prediction and mask sizes differ");
        confusion.update(&predicted, &targets, labels.ignore_index);
        samples += batch.rows.len();
    }
    anyhow::ensure!(samples > 0, "{}: no readable sample to evaluate", batcher.table().path.display());
    let iou: serde_json::Map<String, serde_json::Value> =
        labels.names.iter().zip(confusion.iou()).map(|(name, iou)| (name.clone(), serde_json::json!(iou))).collect();
    Ok(serde_json::json!({
        "samples": samples,
        "mean_iou": confusion.mean_iou(),
        "pixel_accuracy": confusion.pixel_accuracy(),
        "iou": iou,
    }))
}

/// The segmentation model a run config describes: `model.weights` (CLIP weights for LSeg, a
/// Hugging Face GroupViT folder for GroupViT) or a random initialization, then the run
/// checkpoint `checkpoint` (a `step-N` folder) when given.
pub fn build_segmenter(config: &RunConfig, checkpoint: Option<&Path>, device: &Device) -> anyhow::Result<(Segmenter, ClipTokenizer, usize)> {
    let seg = section(config)?;
    let weights = config.model.weights.as_deref();
    let (segmenter, context_length, image_size) = match config.train.objective.as_str() {
        "lseg" => {
            let (clip, clip_config) = load_model(&config.model.name, weights, device)?;
            let (context_length, image_size) = (clip_config.text.context_length, clip_config.vision.image_size());
            let model = lseg_config(seg, clip_config)?.init_with_clip(clip, device)?;
            (Segmenter::Lseg(Box::new(model)), context_length, image_size)
        }
        "groupvit" => {
            let (model, groupvit_config) = match weights {
                Some(dir) if dir.is_dir() && !dir.join("model.bpk").is_file() => groupvit::load_hugging_face(dir, device)?,
                _ => {
                    let groupvit_config = GroupVitConfig::from_file(Path::new(&config.model.name))?;
                    (groupvit_config.init(device), groupvit_config)
                }
            };
            (Segmenter::GroupVit(Box::new(model)), groupvit_config.context_length(), groupvit_config.image_size())
        }
        other => bail!("train.objective = {other:?} is not a segmentation method: use \"groupvit\" or \"lseg\""),
    };
    let segmenter = match checkpoint {
        None => segmenter,
        Some(dir) => {
            let file = dir.join("model.bpk");
            let load = |error: burn::store::RecordError| anyhow::anyhow!("{}: {error}", file.display());
            match segmenter {
                Segmenter::GroupVit(model) => Segmenter::GroupVit(Box::new(model.try_load_file(&file).map_err(load)?)),
                Segmenter::Lseg(model) => Segmenter::Lseg(Box::new(model.try_load_file(&file).map_err(load)?)),
            }
        }
    };
    Ok((segmenter, tokenizer(context_length)?, image_size))
}

/// The LSeg architecture of `[segmentation]` over a CLIP of `clip`'s architecture.
fn lseg_config(seg: &SegmentationSection, clip: clip_core::ClipConfig) -> anyhow::Result<LsegConfig> {
    let readout = match seg.readout.as_str() {
        "ignore" => Readout::Ignore,
        "add" => Readout::Add,
        _ => Readout::Project,
    };
    let mut config = LsegConfig::new(clip).with_features(seg.decoder_features).with_readout(readout).with_spatial_regularization(seg.spatial_regularization);
    if !seg.hooks.is_empty() {
        config = config.with_hooks(Some(seg.hooks.clone()));
    }
    config.validate()?;
    Ok(config)
}

/// The segmentation batcher of `table` with the training (`train`) or evaluation transform.
fn segmentation_batcher(config: &RunConfig, table: SegmentationTable, labels: &LabelSet, image_size: usize, train: bool) -> anyhow::Result<SegmentationBatcher> {
    let seg = section(config)?;
    let transform_config = SegmentationTransformConfig::new().with_image_size(image_size).with_scale(seg.scale).with_flip(seg.flip);
    let transform = if train { transform_config.init_train()? } else { transform_config.init_eval()? };
    Ok(SegmentationBatcher::new(config, table, labels.clone(), transform))
}

/// Trains LSeg or GroupViT as `config` says; evaluates on the validation table at the end.
pub(crate) fn train_segmentation(run: &Run, device: &Device, train_device: &Device) -> anyhow::Result<Summary> {
    let config = run.config;
    let seg = section(config)?;
    let labels = label_set(seg)?;
    let (train_table, val_table) = segmentation_tables(config)?;
    let (segmenter, tokenizer, image_size) = build_segmenter(config, None, train_device)?;
    let (trained, outcome) = match segmenter {
        Segmenter::Lseg(model) => {
            let model = freeze(*model, &config.train.freeze)?;
            let batcher = segmentation_batcher(config, train_table, &labels, image_size, true)?;
            // Training scores each pixel against one prompt per label: the first template.
            let prompts: Vec<String> = labels.names.iter().map(|name| seg.templates[0].replace("{}", name)).collect();
            let label_tokens = tokenizer.tokenize_batch(&prompts, train_device)?;
            let to_batch = |batch: SegmentationBatch| -> anyhow::Result<LsegBatch> {
                Ok(LsegBatch {
                    images: stack_images(&batch.images, train_device)?,
                    masks: stack_masks(&batch.masks, train_device)?,
                    label_tokens: label_tokens.clone(),
                })
            };
            let objective = LsegObjective { ignore_index: seg.ignore_index };
            let fitted = run.fit(&objective, model, &batcher, to_batch)?;
            (Segmenter::Lseg(Box::new(fitted.model.valid())), fitted.outcome)
        }
        Segmenter::GroupVit(model) => {
            let model = freeze(*model, &config.train.freeze)?;
            let pairs = caption_table(&train_table)?;
            let batcher = crate::trainer::train_batcher(config, pairs, &tokenizer, image_size)?;
            let vocabulary = match &seg.nouns {
                Some(path) => read_lines(path)?,
                None => labels.names.clone(),
            };
            let nouns = NounPrompts {
                templates: seg.templates.clone(),
                per_caption: seg.prompts_per_image,
                vocabulary: Some(vocabulary),
            };
            let context = tokenizer.context_length();
            let seed = config.run.seed;
            let to_batch = |batch: PairBatch| -> anyhow::Result<GroupVitBatch> {
                let rows = batch.rows.len();
                let mut prompts = Vec::with_capacity(rows * seg.prompts_per_image);
                for (slot, &row) in batch.rows.iter().enumerate() {
                    let mut rng = sample_rng(seed.wrapping_add(1), batch.step, slot);
                    prompts.extend(nouns.prompts(&batcher.table().pairs[row].caption, &mut rng));
                }
                let prompt_tokens = if prompts.is_empty() {
                    Tensor::<2, Int>::empty([0, context], train_device)
                } else {
                    tokenizer.tokenize_batch(&prompts, train_device)?
                };
                Ok(GroupVitBatch::new(
                    stack_images(&batch.images, train_device)?,
                    Tensor::from_data(TensorData::new(batch.tokens, [rows, context]), train_device),
                    prompt_tokens,
                )?)
            };
            let objective = GroupVitObjective { multi_label_weight: seg.multi_label_weight as f32 };
            let fitted = run.fit(&objective, model, &batcher, to_batch)?;
            (Segmenter::GroupVit(Box::new(fitted.model.valid())), fitted.outcome)
        }
    };
    let eval = match val_table {
        Some(val) => {
            let batcher = segmentation_batcher(config, val, &labels, image_size, false)?;
            let label_embeds = trained.label_embeddings(&tokenizer, &labels.names, &seg.templates, device)?;
            Some(evaluate_segmentation(&trained, &batcher, &label_embeds, &labels, config.eval.batch_size, device)?)
        }
        None => None,
    };
    run.finish(outcome, eval)
}

/// The image-caption pairs of a segmentation table (GroupViT trains on captions).
fn caption_table(table: &SegmentationTable) -> anyhow::Result<PairTable> {
    let pairs = table
        .samples
        .iter()
        .map(|sample| {
            let caption = sample
                .caption
                .clone()
                .with_context(|| format!("{}:{}: no caption (GroupViT trains on image-caption pairs)", table.path.display(), sample.line))?;
            Ok(Pair { image: sample.image.clone(), caption, label: None, line: sample.line })
        })
        .collect::<anyhow::Result<_>>()?;
    Ok(PairTable { path: table.path.clone(), pairs })
}

/// The newest checkpoint of the run in `output`, if any.
pub fn latest_checkpoint(output: &Path, keep: usize) -> anyhow::Result<Option<PathBuf>> {
    Checkpoints::new(output, keep).latest()
}

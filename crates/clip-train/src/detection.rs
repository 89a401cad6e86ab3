//! The detection objectives, `vild` (open-vocabulary detection) and `glip` (detection as
//! grounding): their batches, the CLIP crop embeddings ViLD-image distills (computed once and
//! cached), training runs, COCO-style evaluation (AP, AP50, AP on base and novel categories)
//! and the detectors `clipforge detect` and `clipforge pseudo-label` run.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};
use clip_core::preprocess::stack_images;
use clip_core::weights::{Checkpoint, RawTensor};
use clip_core::{Clip, ClipTokenizer, class_text_embeddings};
use clip_det::boxes::{BoxXyxy, DetectOptions, Prediction};
use clip_det::data::{CategorySplit, CocoDataset, DetectionSample, ImageRecord, load_detection_sample, read_proposals};
use clip_det::detector::DetectorConfig;
use clip_det::eval::{Detection, GroundTruthBox, coco_ap};
use clip_det::glip::{Glip, GlipBatch, GlipConfig, GlipObjective, GroundingPrompt};
use clip_det::vild::{Vild, VildBatch, VildConfig, VildObjective, crop_embeddings};

use crate::config::{DetectionSection, RunConfig};
use crate::data::{BatchSource, DataError, LoadedBatch, load_on_workers, sample_rng};
use crate::params::freeze;
use crate::trainer::{Run, Summary, load_model};

/// Images and boxes of one batch, ready to become tensors.
#[derive(Debug)]
pub struct DetectionBatch {
    /// Indices of the images kept, in batch order.
    pub rows: Vec<usize>,
    /// Their samples: resized, normalized images with boxes in input pixels.
    pub samples: Vec<DetectionSample>,
    /// Whether each image was flipped horizontally.
    pub flipped: Vec<bool>,
    /// Images skipped because they could not be read.
    pub skipped: Vec<DataError>,
}

impl LoadedBatch for DetectionBatch {
    fn rows(&self) -> &[usize] {
        &self.rows
    }

    fn skipped(&self) -> &[DataError] {
        &self.skipped
    }
}

/// Builds batches of a COCO dataset on worker threads.
#[derive(Clone)]
pub struct DetectionBatcher {
    dataset: Arc<CocoDataset>,
    image_size: usize,
    flip: bool,
    workers: usize,
    skip_bad_samples: bool,
    seed: u64,
}

impl DetectionBatcher {
    /// A batcher over `dataset` at `image_size`; `flip` draws random horizontal flips.
    pub fn new(config: &RunConfig, dataset: CocoDataset, image_size: usize, flip: bool) -> Self {
        Self {
            dataset: Arc::new(dataset),
            image_size,
            flip,
            workers: config.data.workers.max(1),
            skip_bad_samples: config.data.skip_bad_samples,
            seed: config.run.seed,
        }
    }

    /// The dataset.
    pub fn dataset(&self) -> &CocoDataset {
        &self.dataset
    }
}

impl BatchSource for DetectionBatcher {
    type Batch = DetectionBatch;

    fn rows(&self) -> usize {
        self.dataset.images.len()
    }

    fn batch(&self, indices: &[usize], step: usize) -> Result<DetectionBatch, DataError> {
        let loaded = load_on_workers(indices, self.workers, |row, slot| {
            let flip = self.flip && rand::Rng::random_bool(&mut sample_rng(self.seed, step, slot), 0.5);
            let record = &self.dataset.images[row];
            load_detection_sample(record, self.image_size, flip)
                .map(|sample| (sample, flip))
                .map_err(|e| DataError { path: self.dataset.path.clone(), line: None, message: e.to_string() })
        });
        let mut batch = DetectionBatch { rows: Vec::new(), samples: Vec::new(), flipped: Vec::new(), skipped: Vec::new() };
        for (&row, sample) in indices.iter().zip(loaded) {
            match sample {
                Ok((sample, flipped)) => {
                    batch.rows.push(row);
                    batch.samples.push(sample);
                    batch.flipped.push(flipped);
                }
                Err(error) if self.skip_bad_samples => batch.skipped.push(error),
                Err(error) => return Err(error),
            }
        }
        Ok(batch)
    }
}

/// The `[detection]` section, which validation guarantees for the detection objectives.
fn section(config: &RunConfig) -> anyhow::Result<&DetectionSection> {
    config.detection.as_ref().context("[detection] section missing")
}

/// The folder a COCO JSON's `file_name`s are relative to: `images`, or the JSON's folder.
fn images_dir(json: &Path, images: Option<&PathBuf>) -> PathBuf {
    images.cloned().unwrap_or_else(|| json.parent().map(Path::to_path_buf).unwrap_or_default())
}

/// The training dataset and the validation dataset (`data.val`, or the `data.val_fraction` split).
pub fn detection_datasets(config: &RunConfig) -> anyhow::Result<(CocoDataset, Option<CocoDataset>)> {
    let det = section(config)?;
    let train = CocoDataset::read(&config.data.train, &images_dir(&config.data.train, det.train_images.as_ref()))?;
    let train_ids: Vec<u64> = train.categories.iter().map(|c| c.id).collect();
    config.with_validation(train, |path| {
        let val = CocoDataset::read(path, &images_dir(path, det.val_images.as_ref()))?;
        anyhow::ensure!(
            val.categories.iter().map(|c| c.id).eq(train_ids.iter().copied()),
            "{} and {} list different categories",
            config.data.train.display(),
            path.display()
        );
        Ok(val)
    })
}

/// The base/novel split of `[detection]`: the `novel` names, plus LVIS rare categories with
/// `novel_rare`.
pub fn category_split(dataset: &CocoDataset, det: &DetectionSection) -> anyhow::Result<CategorySplit> {
    let mut split = CategorySplit::from_names(&dataset.categories, &det.novel)
        .with_context(|| format!("detection.novel ({})", dataset.path.display()))?;
    if det.novel_rare {
        split.novel.extend(CategorySplit::lvis_rare(&dataset.categories).novel);
        split.novel.sort_unstable();
        split.novel.dedup();
        split.base.retain(|c| !split.novel.contains(c));
    }
    anyhow::ensure!(!split.base.is_empty(), "{}: every category is novel: nothing to train on", dataset.path.display());
    Ok(split)
}

/// `dataset` without the boxes of `novel` categories (their objects become background).
fn without_novel(mut dataset: CocoDataset, novel: &[usize]) -> CocoDataset {
    for image in &mut dataset.images {
        image.annotations.retain(|a| !novel.contains(&a.category));
    }
    dataset
}

/// The detection settings shared by both methods.
fn detect_options(det: &DetectionSection) -> DetectOptions {
    DetectOptions {
        score_threshold: det.score_threshold as f32,
        nms_iou: det.nms_iou as f32,
        max_per_image: det.max_detections,
    }
}

fn detector_config(det: &DetectionSection) -> DetectorConfig {
    DetectorConfig::new()
        .with_anchor_sizes(det.anchor_sizes.clone())
        .with_anchor_ratios(det.anchor_ratios.clone())
        .with_hidden(det.hidden)
        .with_post_nms(det.proposals_per_image)
}

fn vild_config(det: &DetectionSection) -> VildConfig {
    VildConfig::new(detector_config(det))
        .with_temperature(det.temperature as f32)
        .with_text_weight(det.text_weight as f32)
        .with_image_weight(det.image_weight as f32)
}

fn glip_config(det: &DetectionSection) -> GlipConfig {
    GlipConfig::new()
        .with_anchor_sizes(det.anchor_sizes.clone())
        .with_anchor_ratios(det.anchor_ratios.clone())
        .with_hidden(det.hidden)
        .with_fusion_layers(det.fusion_layers)
        .with_fusion_heads(det.heads)
}

/// A detector of either method: category names in, boxes out.
#[derive(Debug, Clone)]
pub enum OpenDetector {
    /// ViLD, with the CLIP whose text tower embeds the category names.
    Vild(Box<Vild>, Box<Clip>),
    /// GLIP, which reads the names in its grounding prompt.
    Glip(Box<Glip>),
}

impl OpenDetector {
    /// Detections of `names` in images `[batch, 3, S, S]`; `category` indexes `names`.
    pub fn detect(
        &self,
        images: Tensor<4>,
        names: &[String],
        tokenizer: &ClipTokenizer,
        templates: &[String],
        options: &DetectOptions,
    ) -> anyhow::Result<Vec<Vec<Prediction>>> {
        self.detect_in(images, None, names, tokenizer, templates, options)
    }

    /// As [`Self::detect`]; ViLD classifies the given `proposals` per image (input pixels)
    /// instead of its RPN's when there are some.
    pub fn detect_in(
        &self,
        images: Tensor<4>,
        proposals: Option<&[Vec<BoxXyxy>]>,
        names: &[String],
        tokenizer: &ClipTokenizer,
        templates: &[String],
        options: &DetectOptions,
    ) -> anyhow::Result<Vec<Vec<Prediction>>> {
        match self {
            OpenDetector::Vild(model, clip) => {
                let device = images.device();
                let embeddings = class_text_embeddings(|t| clip.encode_text(t, true), tokenizer, names, templates, &device)?;
                Ok(match proposals {
                    Some(proposals) => model.detect_in_proposals(images, proposals, embeddings, options),
                    None => model.detect(images, embeddings, options),
                })
            }
            OpenDetector::Glip(model) => {
                let batch = images.dims()[0];
                let mut merged = vec![Vec::new(); batch];
                // Long category lists are split over several prompts, as GLIP does.
                for chunk in prompt_chunks(tokenizer, names)? {
                    let prompt = GroundingPrompt::from_categories(tokenizer, &names[chunk.clone()])?;
                    for (image, predictions) in model.detect(images.clone(), &prompt, options).into_iter().enumerate() {
                        merged[image].extend(predictions.into_iter().map(|p| Prediction { category: p.category + chunk.start, ..p }));
                    }
                }
                for predictions in &mut merged {
                    predictions.sort_by(|a, b| b.score.total_cmp(&a.score));
                    predictions.truncate(options.max_per_image);
                }
                Ok(merged)
            }
        }
    }

    /// GLIP only: detections of the phrases of `caption` (char spans per phrase), category =
    /// phrase index; `None` for ViLD, which reads no captions.
    pub fn ground(&self, images: Tensor<4>, tokenizer: &ClipTokenizer, caption: &str, phrases: &[Vec<Range<usize>>], options: &DetectOptions) -> anyhow::Result<Option<Vec<Prediction>>> {
        match self {
            OpenDetector::Vild(..) => Ok(None),
            OpenDetector::Glip(model) => {
                let prompt = GroundingPrompt::from_caption(tokenizer, caption, phrases)?;
                Ok(model.detect(images, &prompt, options).into_iter().next())
            }
        }
    }
}

/// Consecutive ranges of `names` whose category prompt fits the tokenizer's context.
fn prompt_chunks(tokenizer: &ClipTokenizer, names: &[String]) -> anyhow::Result<Vec<Range<usize>>> {
    let mut chunks = Vec::new();
    let mut start = 0;
    while start < names.len() {
        let mut end = start + 1;
        while end < names.len() && GroundingPrompt::from_categories(tokenizer, &names[start..end + 1]).is_ok() {
            end += 1;
        }
        GroundingPrompt::from_categories(tokenizer, &names[start..end])
            .with_context(|| format!("category {:?} does not fit the text context", names[start]))?;
        chunks.push(start..end);
        start = end;
    }
    Ok(chunks)
}

/// The detector a run config describes, with the run checkpoint `checkpoint` (a `step-N`
/// folder) loaded when given, its tokenizer and input size.
pub fn build_detector(config: &RunConfig, checkpoint: Option<&Path>, device: &Device) -> anyhow::Result<(OpenDetector, ClipTokenizer, usize)> {
    let det = section(config)?;
    let (clip, clip_config) = load_model(&config.model.name, config.model.weights.as_deref(), device)?;
    let tokenizer = ClipTokenizer::new().with_context_length(clip_config.text.context_length)?;
    let detector = match config.train.objective.as_str() {
        "vild" => {
            let model = load_checkpoint(vild_config(det).init_with_clip(&clip, device)?, checkpoint)?;
            OpenDetector::Vild(Box::new(model), Box::new(clip))
        }
        "glip" => {
            let model = load_checkpoint(glip_config(det).init_with_clip(&clip, device)?, checkpoint)?;
            OpenDetector::Glip(Box::new(model))
        }
        other => bail!("train.objective = {other:?} is not a detection method: use \"vild\" or \"glip\""),
    };
    Ok((detector, tokenizer, det.image_size))
}

/// `model` with the weights of the run checkpoint folder `checkpoint`, when given.
fn load_checkpoint<M: Module>(model: M, checkpoint: Option<&Path>) -> anyhow::Result<M> {
    let Some(dir) = checkpoint else { return Ok(model) };
    let file = dir.join("model.bpk");
    model.try_load_file(&file).map_err(|error| anyhow::anyhow!("{}: {error}", file.display()))
}

/// COCO-style AP of `detector` on `batcher`'s dataset over all its categories, with AP over
/// the base and the novel categories of `split`; ViLD classifies `proposals` (per image of the
/// dataset) when given.
#[allow(clippy::too_many_arguments)]
pub fn evaluate_detection(
    detector: &OpenDetector,
    batcher: &DetectionBatcher,
    proposals: Option<&[Vec<BoxXyxy>]>,
    tokenizer: &ClipTokenizer,
    split: &CategorySplit,
    det: &DetectionSection,
    batch_size: usize,
    device: &Device,
) -> anyhow::Result<serde_json::Value> {
    let dataset = batcher.dataset();
    let names: Vec<String> = dataset.categories.iter().map(|c| c.name.clone()).collect();
    let options = detect_options(det);
    let (mut detections, mut ground_truth) = (Vec::new(), Vec::new());
    // COCOeval ranks detections of equal score by image id, so images are indexed by id order.
    let mut by_id: Vec<usize> = (0..dataset.images.len()).collect();
    by_id.sort_by_key(|&row| dataset.images[row].id);
    let mut id_rank = vec![0; by_id.len()];
    for (rank, row) in by_id.into_iter().enumerate() {
        id_rank[row] = rank;
    }
    let rows: Vec<usize> = (0..batcher.rows()).collect();
    for chunk in rows.chunks(batch_size.max(1)) {
        let batch = batcher.batch(chunk, 0)?;
        if batch.rows.is_empty() {
            continue;
        }
        let images = stack_images(&batch.samples.iter().map(|s| s.image.clone()).collect::<Vec<_>>(), device)?;
        let given: Option<Vec<Vec<BoxXyxy>>> = proposals.map(|all| batch.rows.iter().map(|&r| all[r].clone()).collect());
        let predicted = detector.detect_in(images, given.as_deref(), &names, tokenizer, &det.templates, &options)?;
        for (&row, predictions) in batch.rows.iter().zip(predicted) {
            let record = &dataset.images[row];
            for annotation in &record.annotations {
                let bbox = scale_box(&annotation.bbox, record, det.image_size);
                ground_truth.push(GroundTruthBox { image: id_rank[row], category: annotation.category, bbox, iscrowd: annotation.iscrowd });
            }
            let image = id_rank[row];
            detections.extend(predictions.into_iter().map(|p| Detection { image, category: p.category, bbox: p.bbox, score: p.score }));
        }
    }
    anyhow::ensure!(!ground_truth.is_empty(), "{}: no box to evaluate against", dataset.path.display());
    let all: Vec<usize> = (0..names.len()).collect();
    let report = coco_ap(&detections, &ground_truth, &all);
    let per_category: serde_json::Map<String, serde_json::Value> = report
        .per_category
        .iter()
        .map(|(category, ap)| (names[*category].clone(), serde_json::json!(ap)))
        .collect();
    Ok(serde_json::json!({
        "images": batcher.rows(),
        "detections": detections.len(),
        "ap": report.ap,
        "ap50": report.ap50,
        "ap75": report.ap75,
        "ap_base": report.mean_over(&split.base),
        "ap_novel": report.mean_over(&split.novel),
        "per_category": per_category,
    }))
}

/// A box of `record` (its own pixels) in the `size x size` network input.
fn scale_box(bbox: &BoxXyxy, record: &ImageRecord, size: usize) -> BoxXyxy {
    let (sx, sy) = (size as f32 / record.width as f32, size as f32 / record.height as f32);
    [bbox[0] * sx, bbox[1] * sy, bbox[2] * sx, bbox[3] * sy]
}

/// The top `per_image` proposals of `detection.proposals` for each image of `dataset`, in
/// network-input pixels.
fn file_proposals(dataset: &CocoDataset, det: &DetectionSection, per_image: usize) -> anyhow::Result<Vec<Vec<BoxXyxy>>> {
    let file = det.proposals.as_deref().context("detection.proposals is not set")?;
    let proposals = read_proposals(file, dataset)?;
    Ok(proposals
        .iter()
        .zip(&dataset.images)
        .map(|(boxes, record)| boxes.iter().take(per_image).map(|b| scale_box(b, record, det.image_size)).collect())
        .collect())
}

/// Boxes of the network input mirrored horizontally with `flip`.
fn mirrored(boxes: &[BoxXyxy], flip: bool, size: usize) -> Vec<BoxXyxy> {
    let size = size as f32;
    boxes.iter().map(|b| if flip { [size - b[2], b[1], size - b[0], b[3]] } else { *b }).collect()
}

/// The CLIP embeddings ViLD-image distills: for each training image its top proposals (input
/// pixels) and their crop embeddings, row-aligned.
struct DistillTargets {
    boxes: Vec<Vec<BoxXyxy>>,
    offsets: Vec<usize>,
    embeddings: Vec<f32>,
    dim: usize,
}

impl DistillTargets {
    /// Reads the proposals, then the crop embeddings from `cache` when it matches them,
    /// computing (with `clip`, in batches) and caching them otherwise.
    fn load(clip: &Clip, batcher: &DetectionBatcher, det: &DetectionSection, cache: &Path, batch_size: usize, device: &Device) -> anyhow::Result<Self> {
        let boxes = file_proposals(batcher.dataset(), det, det.distill_per_image)?;
        let mut offsets = vec![0];
        for image in &boxes {
            offsets.push(offsets.last().copied().unwrap_or(0) + image.len());
        }
        let total = *offsets.last().unwrap_or(&0);
        let dim = clip.visual.embed_dim();
        let counts: Vec<f32> = boxes.iter().map(|b| b.len() as f32).collect();
        if cache.is_file() {
            let tensors = Checkpoint::read(cache)?.tensors;
            let matches = tensors.get("counts").is_some_and(|c| c.values == counts)
                && tensors.get("boxes").is_some_and(|b| b.values == boxes.iter().flatten().flatten().copied().collect::<Vec<_>>());
            if let Some(cached) = tensors.get("embeddings").filter(|e| matches && e.shape == [total, dim]) {
                eprintln!("ViLD-image: crop embeddings of {total} proposals from {}", cache.display());
                return Ok(Self { boxes, offsets, embeddings: cached.values.clone(), dim });
            }
        }
        eprintln!("ViLD-image: embedding {total} proposal crops (1x and 1.5x) with CLIP into {}", cache.display());
        let eval = DetectionBatcher { flip: false, ..batcher.clone() };
        let rows: Vec<usize> = (0..eval.rows()).collect();
        let mut embeddings = Vec::with_capacity(total * dim);
        for chunk in rows.chunks(batch_size.max(1)) {
            let batch = eval.batch(chunk, 0)?;
            anyhow::ensure!(batch.rows.len() == chunk.len(), "{}", batch.skipped.first().map(|e| e.to_string()).unwrap_or_default());
            let images = stack_images(&batch.samples.iter().map(|s| s.image.clone()).collect::<Vec<_>>(), device)?;
            let chunk_boxes: Vec<Vec<BoxXyxy>> = chunk.iter().map(|&r| boxes[r].clone()).collect();
            if chunk_boxes.iter().all(Vec::is_empty) {
                continue;
            }
            embeddings.extend(crop_embeddings(clip, images, &chunk_boxes).into_data().iter::<f32>());
        }
        let tensors = BTreeMap::from([
            ("embeddings".to_string(), RawTensor { shape: vec![total, dim], values: embeddings.clone() }),
            ("counts".to_string(), RawTensor { shape: vec![counts.len()], values: counts }),
            ("boxes".to_string(), RawTensor { shape: vec![total, 4], values: boxes.iter().flatten().flatten().copied().collect() }),
        ]);
        if let Some(parent) = cache.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        Checkpoint::write_safetensors(&tensors, cache)?;
        Ok(Self { boxes, offsets, embeddings, dim })
    }

    /// The proposals of image `row` (mirrored with `flip`) and the rows of their embeddings.
    fn of(&self, row: usize, flip: bool, size: usize) -> (Vec<BoxXyxy>, &[f32]) {
        (mirrored(&self.boxes[row], flip, size), &self.embeddings[self.offsets[row] * self.dim..self.offsets[row + 1] * self.dim])
    }
}

/// Trains ViLD or GLIP as `config` says, starting from the CLIP of `[model]`; evaluates AP on
/// the validation set at the end.
pub(crate) fn train_detection(run: &Run, device: &Device, train_device: &Device) -> anyhow::Result<Summary> {
    let config = run.config;
    let det = section(config)?;
    let (clip, clip_config) = load_model(&config.model.name, config.model.weights.as_deref(), train_device)?;
    // The CLIP as loaded, outside autodiff: it embeds category names and proposal crops.
    let frozen = clip.valid();
    let tokenizer = ClipTokenizer::new().with_context_length(clip_config.text.context_length)?;
    let (train_set, val_set) = detection_datasets(config)?;
    let split = category_split(&train_set, det)?;
    let names: Vec<String> = train_set.categories.iter().map(|c| c.name.clone()).collect();
    let base_names: Vec<String> = split.base.iter().map(|&c| names[c].clone()).collect();
    let base_index = |category: usize| split.base.iter().position(|&c| c == category);
    eprintln!("categories: {} base, {} novel ({})", split.base.len(), split.novel.len(), split.novel.iter().map(|&c| names[c].as_str()).collect::<Vec<_>>().join(", "));
    let batcher = DetectionBatcher::new(config, without_novel(train_set, &split.novel), det.image_size, det.flip);
    let val = val_set.map(|val| DetectionBatcher::new(config, val, det.image_size, false));
    let images = |batch: &DetectionBatch| stack_images(&batch.samples.iter().map(|s| s.image.clone()).collect::<Vec<_>>(), train_device);
    let (fitted_detector, outcome) = match config.train.objective.as_str() {
        "vild" => {
            let model_config = vild_config(det);
            let model = freeze(model_config.init_with_clip(&clip, train_device)?, &config.train.freeze)?;
            let class_embeddings = class_text_embeddings(|t| frozen.encode_text(t, true), &tokenizer, &base_names, &det.templates, device)?;
            let class_embeddings = Tensor::<2>::from_data(class_embeddings.into_data(), train_device);
            let targets = if det.image_weight > 0.0 {
                let cache = det.distill_cache.clone().unwrap_or_else(|| run.output.join("vild_crop_embeddings.safetensors"));
                Some(DistillTargets::load(&frozen, &batcher, det, &cache, config.eval.batch_size, device)?)
            } else {
                None
            };
            let given = if det.file_proposals { Some(file_proposals(batcher.dataset(), det, det.proposals_per_image)?) } else { None };
            let to_batch = |batch: DetectionBatch| -> anyhow::Result<VildBatch> {
                let labels = batch
                    .samples
                    .iter()
                    .map(|s| s.labels.iter().map(|&c| base_index(c).context("a novel box reached training")).collect())
                    .collect::<anyhow::Result<Vec<Vec<usize>>>>()?;
                let (mut distill_boxes, mut values) = (Vec::new(), Vec::new());
                if let Some(targets) = &targets {
                    for (&row, &flip) in batch.rows.iter().zip(&batch.flipped) {
                        let (boxes, embeddings) = targets.of(row, flip, det.image_size);
                        distill_boxes.push(boxes);
                        values.extend_from_slice(embeddings);
                    }
                }
                let distill_targets = targets.as_ref().map(|t| {
                    Tensor::from_data(TensorData::new(values, [distill_boxes.iter().map(Vec::len).sum::<usize>(), t.dim]), train_device)
                });
                Ok(VildBatch {
                    images: images(&batch)?,
                    boxes: batch.samples.iter().map(|s| s.boxes.clone()).collect(),
                    labels,
                    class_embeddings: class_embeddings.clone(),
                    distill_boxes,
                    distill_targets,
                    proposals: given.as_ref().map(|given| {
                        batch.rows.iter().zip(&batch.flipped).map(|(&row, &flip)| mirrored(&given[row], flip, det.image_size)).collect()
                    }),
                })
            };
            let fitted = run.fit(&VildObjective::new(&model_config, config.run.seed), model, &batcher, to_batch)?;
            (OpenDetector::Vild(Box::new(fitted.model.valid()), Box::new(frozen)), fitted.outcome)
        }
        "glip" => {
            let model_config = glip_config(det);
            let model = freeze(model_config.init_with_clip(&clip, train_device)?, &config.train.freeze)?;
            let category_prompt = GroundingPrompt::from_categories(&tokenizer, &base_names).with_context(|| {
                format!("the prompt of the {} base categories does not fit the text context: train GLIP on captions", base_names.len())
            })?;
            let context = tokenizer.context_length();
            let to_batch = |batch: DetectionBatch| -> anyhow::Result<GlipBatch> {
                let (mut tokens, mut positive_tokens) = (Vec::new(), Vec::new());
                for (&row, sample) in batch.rows.iter().zip(&batch.samples) {
                    let record = &batcher.dataset().images[row];
                    let caption = record.caption.as_deref().filter(|_| det.captions && sample.spans.iter().all(|s| !s.is_empty()));
                    match caption {
                        Some(caption) if !sample.spans.is_empty() => {
                            let prompt = GroundingPrompt::from_caption(&tokenizer, caption, &sample.spans)
                                .with_context(|| format!("{}: image {}", batcher.dataset().path.display(), record.id))?;
                            positive_tokens.push(prompt.phrase_tokens);
                            tokens.extend(prompt.tokens);
                        }
                        _ => {
                            let spans = sample
                                .labels
                                .iter()
                                .map(|&c| base_index(c).map(|i| category_prompt.phrase_tokens[i].clone()).context("a novel box reached training"))
                                .collect::<anyhow::Result<Vec<_>>>()?;
                            positive_tokens.push(spans);
                            tokens.extend(category_prompt.tokens.iter().copied());
                        }
                    }
                }
                Ok(GlipBatch {
                    images: images(&batch)?,
                    tokens: Tensor::from_data(TensorData::new(tokens, [batch.rows.len(), context]), train_device),
                    boxes: batch.samples.iter().map(|s| s.boxes.clone()).collect(),
                    positive_tokens,
                })
            };
            let fitted = run.fit(&GlipObjective::new(&model_config), model, &batcher, to_batch)?;
            (OpenDetector::Glip(Box::new(fitted.model.valid())), fitted.outcome)
        }
        other => bail!("train.objective = {other:?} is not a detection method: use \"vild\" or \"glip\""),
    };
    let eval = match &val {
        Some(val) => {
            let proposals = match (&fitted_detector, det.file_proposals) {
                (OpenDetector::Vild(..), true) => Some(file_proposals(val.dataset(), det, det.proposals_per_image)?),
                _ => None,
            };
            Some(evaluate_detection(&fitted_detector, val, proposals.as_deref(), &tokenizer, &split, det, config.eval.batch_size, device)?)
        }
        None => None,
    };
    run.finish(outcome, eval)
}

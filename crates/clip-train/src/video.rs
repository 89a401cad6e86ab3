//! The video objectives, `clip4clip` (video-text retrieval) and `actionclip` (action
//! recognition): their batches, training runs and evaluation (retrieval recall and ranks,
//! zero-shot and fine-tuned top-1/top-5).

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};
use burn::module::Module;
use burn::tensor::{Device, Int, Tensor, TensorData};
use clip_core::preprocess::{EvalTransform, EvalTransformConfig, ImageTensorData};
use clip_core::{ClipTokenizer, class_text_embeddings};
use clip_video::actionclip::{ActionClip, ActionClipConfig, ActionClipObjective, Fusion, VideoLabelBatch};
use clip_video::clip4clip::{Clip4Clip, Clip4ClipConfig, Clip4ClipObjective, SimilarityHeader, VideoTextBatch, dual_softmax};
use clip_video::data::{FrameSampler, VideoSource, VideoTable, load_clip, stack_videos};
use clip_video::metrics::{RetrievalMetrics, retrieval_metrics, top_k_accuracy, transpose};
use rand::Rng;

use crate::config::{RunConfig, VideoSection};
use crate::data::{BatchSource, DataError, LoadedBatch, load_on_workers, sample_rng};
use crate::params::freeze;
use crate::trainer::{Run, Summary, load_model};

/// Temperature of the dual softmax at inference (CAMoE's and CLIP4Clip's follow-ups' value).
const DUAL_SOFTMAX_TEMPERATURE: f64 = 0.01;

/// Frames and texts of one batch, ready to become tensors.
#[derive(Debug)]
pub struct VideoBatch {
    /// Table rows of the clips kept, in batch order.
    pub rows: Vec<usize>,
    /// `frames` transformed frames per clip.
    pub clips: Vec<Vec<ImageTensorData>>,
    /// The text of each clip: a caption, or a prompt of its action label.
    pub texts: Vec<String>,
    /// Rows skipped because their clip could not be read.
    pub skipped: Vec<DataError>,
}

impl LoadedBatch for VideoBatch {
    fn rows(&self) -> &[usize] {
        &self.rows
    }

    fn skipped(&self) -> &[DataError] {
        &self.skipped
    }
}

/// What text goes with a clip.
#[derive(Debug, Clone)]
enum ClipText {
    /// One of its captions (random while training, the first otherwise).
    Caption,
    /// Its label in one of these templates (random while training, the first otherwise).
    Label(Arc<Vec<String>>),
}

/// Builds batches of a video table on worker threads: sampled, transformed frames per clip.
#[derive(Clone)]
pub struct VideoBatcher {
    table: Arc<VideoTable>,
    sampler: FrameSampler,
    transform: EvalTransform,
    text: ClipText,
    workers: usize,
    skip_bad_samples: bool,
    seed: u64,
}

impl VideoBatcher {
    fn new(config: &RunConfig, table: VideoTable, image_size: usize, train: bool, text: ClipText) -> anyhow::Result<Self> {
        let frames = section(config)?.frames;
        Ok(Self {
            table: Arc::new(table),
            sampler: if train { FrameSampler::train(frames) } else { FrameSampler::eval(frames) },
            transform: EvalTransformConfig::new().with_image_size(image_size).init(),
            text,
            workers: config.data.workers.max(1),
            skip_bad_samples: config.data.skip_bad_samples,
            seed: config.run.seed,
        })
    }

    /// The table.
    pub fn table(&self) -> &VideoTable {
        &self.table
    }

    fn error(&self, line: usize, message: String) -> DataError {
        DataError { path: self.table.path.clone(), line: Some(line), message }
    }
}

impl BatchSource for VideoBatcher {
    type Batch = VideoBatch;

    fn rows(&self) -> usize {
        self.table.videos.len()
    }

    fn batch(&self, indices: &[usize], step: usize) -> Result<VideoBatch, DataError> {
        let train = self.sampler.train;
        let loaded = load_on_workers(indices, self.workers, |row, slot| {
            let mut rng = sample_rng(self.seed, step, slot);
            let video = &self.table.videos[row];
            let frames = VideoSource::from_path(&video.source)
                .and_then(|source| load_clip(&source, &self.sampler, &self.transform, &mut rng))
                .map_err(|e| self.error(video.line, e.to_string()))?;
            let text = match &self.text {
                ClipText::Caption => {
                    let pick = if train { rng.random_range(0..video.captions.len().max(1)) } else { 0 };
                    video.captions.get(pick).cloned().ok_or_else(|| self.error(video.line, "no caption".into()))?
                }
                ClipText::Label(templates) => {
                    let label = video.label.as_ref().ok_or_else(|| self.error(video.line, "no label".into()))?;
                    let pick = if train { rng.random_range(0..templates.len()) } else { 0 };
                    templates[pick].replace("{}", label)
                }
            };
            Ok((frames, text))
        });
        let mut batch = VideoBatch { rows: Vec::new(), clips: Vec::new(), texts: Vec::new(), skipped: Vec::new() };
        for (&row, clip) in indices.iter().zip(loaded) {
            match clip {
                Ok((frames, text)) => {
                    batch.rows.push(row);
                    batch.clips.push(frames);
                    batch.texts.push(text);
                }
                Err(error) if self.skip_bad_samples => batch.skipped.push(error),
                Err(error) => return Err(error),
            }
        }
        Ok(batch)
    }
}

/// The `[video]` section, which validation guarantees for the video objectives.
fn section(config: &RunConfig) -> anyhow::Result<&VideoSection> {
    config.video.as_ref().context("[video] section missing")
}

/// A config string as the serde enum it names (the method crates spell the choices).
fn choice<T: serde::de::DeserializeOwned>(key: &str, value: &str) -> anyhow::Result<T> {
    serde_json::from_value(serde_json::json!(value)).with_context(|| format!("{key} = {value:?}"))
}

/// A video table: an MSR-VTT JSON (with `video.videos_dir`), or a `video,caption` /
/// `video,label` table or class folders, as the objective needs.
fn read_table(path: &Path, video: &VideoSection, labelled: bool) -> anyhow::Result<VideoTable> {
    if path.extension().is_some_and(|e| e == "json") {
        let dir = video.videos_dir.as_deref().context("video.videos_dir is needed with an MSR-VTT JSON")?;
        return Ok(VideoTable::read_msrvtt(path, dir)?);
    }
    Ok(if labelled { VideoTable::read_labelled(path)? } else { VideoTable::read_captions(path)? })
}

/// The training and validation video tables.
fn video_tables(config: &RunConfig, labelled: bool) -> anyhow::Result<(VideoTable, Option<VideoTable>)> {
    let video = section(config)?;
    let train = read_table(&config.data.train, video, labelled)?;
    config.with_validation(train, |val| read_table(val, video, labelled))
}

/// Frames `[B, T, 3, H, W]` of a chunk of clips, their texts and their table rows.
type EvalBatch = (Tensor<5>, Vec<String>, Vec<usize>);

/// Every clip of `batcher`'s table as frames `[B, T, 3, H, W]`, in chunks of `batch_size`,
/// with the text of each clip.
fn eval_batches(batcher: &VideoBatcher, batch_size: usize, device: &Device) -> anyhow::Result<Vec<EvalBatch>> {
    let rows: Vec<usize> = (0..batcher.rows()).collect();
    let mut batches = Vec::new();
    for chunk in rows.chunks(batch_size.max(1)) {
        let batch = batcher.batch(chunk, 0)?;
        if !batch.rows.is_empty() {
            batches.push((stack_videos(&batch.clips, device)?, batch.texts, batch.rows));
        }
    }
    anyhow::ensure!(!batches.is_empty(), "{}: no readable clip to evaluate", batcher.table().path.display());
    Ok(batches)
}

fn retrieval_json(metrics: &RetrievalMetrics) -> serde_json::Value {
    serde_json::json!({
        "r1": metrics.r1, "r5": metrics.r5, "r10": metrics.r10,
        "median_rank": metrics.median_rank, "mean_rank": metrics.mean_rank,
    })
}

/// Text-to-video and video-to-text retrieval of each clip's first caption against all clips.
pub fn evaluate_retrieval(model: &Clip4Clip, batcher: &VideoBatcher, tokenizer: &ClipTokenizer, batch_size: usize, dual: bool, device: &Device) -> anyhow::Result<serde_json::Value> {
    let mut frames = Vec::new();
    let mut texts = Vec::new();
    for (videos, captions, _) in eval_batches(batcher, batch_size, device)? {
        frames.push(model.frame_features(videos));
        texts.push(model.text_features(tokenizer.tokenize_batch(&captions, device)?));
    }
    let (frames, texts) = (Tensor::cat(frames, 0), Tensor::cat(texts, 0));
    let count = texts.dims()[0];
    let mut rows = Vec::new();
    for start in (0..count).step_by(batch_size.max(1)) {
        let block = texts.clone().narrow(0, start, batch_size.min(count - start));
        rows.push(model.similarity_from_features(block, frames.clone()));
    }
    let similarity = Tensor::cat(rows, 0);
    let report = |similarity: Tensor<2>| -> anyhow::Result<serde_json::Value> {
        let values: Vec<f32> = similarity.into_data().iter::<f32>().collect();
        let text_to_video = retrieval_metrics(&values, count, count)?;
        let video_to_text = retrieval_metrics(&transpose(&values, count, count)?, count, count)?;
        Ok(serde_json::json!({ "text_to_video": retrieval_json(&text_to_video), "video_to_text": retrieval_json(&video_to_text) }))
    };
    let mut result = report(similarity.clone())?;
    result["clips"] = serde_json::json!(count);
    result["t2v_r1"] = result["text_to_video"]["r1"].clone();
    if dual {
        result["dual_softmax"] = report(dual_softmax(similarity, DUAL_SOFTMAX_TEMPERATURE))?;
    }
    Ok(result)
}

/// Top-1 and top-5 accuracy of `model` over the label names, prompt-ensembled over `templates`.
pub fn evaluate_recognition(
    model: &ActionClip,
    batcher: &VideoBatcher,
    tokenizer: &ClipTokenizer,
    classes: &[String],
    templates: &[String],
    batch_size: usize,
    device: &Device,
) -> anyhow::Result<serde_json::Value> {
    let class_embeds = class_text_embeddings(|tokens| model.text_embeddings(tokens), tokenizer, classes, templates, device)?;
    let (mut logits, mut labels) = (Vec::new(), Vec::new());
    for (videos, _, rows) in eval_batches(batcher, batch_size, device)? {
        logits.extend(model.logits(videos, class_embeds.clone()).into_data().iter::<f32>());
        for row in rows {
            let video = &batcher.table().videos[row];
            let label = video.label.as_deref().unwrap_or_default();
            let index = classes.iter().position(|c| c == label).with_context(|| {
                format!("{}:{}: label {label:?} is not one of the labels", batcher.table().path.display(), video.line)
            })?;
            labels.push(index);
        }
    }
    Ok(serde_json::json!({
        "clips": labels.len(),
        "top1": top_k_accuracy(&logits, classes.len(), &labels, 1)?,
        "top5": top_k_accuracy(&logits, classes.len(), &labels, 5)?,
        "chance_top1": 1.0 / classes.len() as f64,
    }))
}

/// Trains CLIP4Clip or ActionCLIP as `config` says, starting from the CLIP of `[model]`;
/// evaluates on the validation table at the end (ActionCLIP also before training: zero-shot).
pub(crate) fn train_video(run: &Run, device: &Device, train_device: &Device) -> anyhow::Result<Summary> {
    let config = run.config;
    let video = section(config)?;
    let (clip, clip_config) = load_model(&config.model.name, config.model.weights.as_deref(), train_device)?;
    let tokenizer = ClipTokenizer::new().with_context_length(clip_config.text.context_length)?;
    let image_size = clip_config.vision.image_size();
    let context = tokenizer.context_length();
    let tokens = |texts: &[String], device: &Device| -> anyhow::Result<Tensor<2, Int>> {
        let ids: Vec<i64> = texts.iter().map(|t| tokenizer.tokenize(t)).collect::<Result<Vec<_>, _>>()?.concat();
        Ok(Tensor::from_data(TensorData::new(ids, [texts.len(), context]), device))
    };
    match config.train.objective.as_str() {
        "clip4clip" => {
            let (train_table, val_table) = video_tables(config, false)?;
            let similarity: SimilarityHeader = choice("video.similarity", &video.similarity)?;
            let model_config = Clip4ClipConfig::new(clip_config)
                .with_similarity(similarity)
                .with_max_frames(video.frames)
                .with_temporal_layers(video.temporal_layers)
                .with_cross_layers(video.cross_layers)
                .with_heads(video.heads);
            let model = freeze(model_config.init_with_clip(clip, train_device)?, &config.train.freeze)?;
            let batcher = VideoBatcher::new(config, train_table, image_size, true, ClipText::Caption)?;
            let to_batch = |batch: VideoBatch| -> anyhow::Result<VideoTextBatch> {
                Ok(VideoTextBatch { videos: stack_videos(&batch.clips, train_device)?, tokens: tokens(&batch.texts, train_device)? })
            };
            let fitted = run.fit(&Clip4ClipObjective, model, &batcher, to_batch)?;
            let eval = match val_table {
                Some(val) => {
                    let batcher = VideoBatcher::new(config, val, image_size, false, ClipText::Caption)?;
                    let model = fitted.model.valid();
                    Some(evaluate_retrieval(&model, &batcher, &tokenizer, config.eval.batch_size, video.dual_softmax, device)?)
                }
                None => None,
            };
            run.finish(fitted.outcome, eval)
        }
        "actionclip" => {
            let (train_table, val_table) = video_tables(config, true)?;
            // Labels are text, so the validation table may hold actions never trained on.
            let mut classes = train_table.labels();
            classes.extend(val_table.iter().flat_map(|val| val.labels()));
            classes.sort();
            classes.dedup();
            anyhow::ensure!(!classes.is_empty(), "{}: no labels", train_table.path.display());
            let fusion: Fusion = choice("video.fusion", &video.fusion)?;
            let model_config = ActionClipConfig::new(clip_config)
                .with_fusion(fusion)
                .with_fusion_layers(video.fusion_layers)
                .with_heads(video.heads)
                .with_max_frames(video.frames);
            let model = freeze(model_config.init_with_clip(clip, train_device)?, &config.train.freeze)?;
            let templates = Arc::new(video.templates.clone());
            let val = match val_table {
                Some(val) => Some(VideoBatcher::new(config, val, image_size, false, ClipText::Label(templates.clone()))?),
                None => None,
            };
            let evaluate = |model: &ActionClip, batcher: &VideoBatcher| {
                evaluate_recognition(model, batcher, &tokenizer, &classes, &video.templates, config.eval.batch_size, device)
            };
            let zero_shot = match &val {
                Some(batcher) if !run.resume => Some(evaluate(&model.valid(), batcher)?),
                _ => None,
            };
            let batcher = VideoBatcher::new(config, train_table, image_size, true, ClipText::Label(templates))?;
            let to_batch = |batch: VideoBatch| -> anyhow::Result<VideoLabelBatch> {
                let labels = batch
                    .rows
                    .iter()
                    .map(|&row| {
                        let label = batcher.table().videos[row].label.as_deref().unwrap_or_default();
                        classes.iter().position(|c| c == label).map(|i| i as i64).context("label outside the label set")
                    })
                    .collect::<anyhow::Result<Vec<_>>>()?;
                Ok(VideoLabelBatch {
                    videos: stack_videos(&batch.clips, train_device)?,
                    tokens: tokens(&batch.texts, train_device)?,
                    labels: Tensor::from_data(TensorData::new(labels, [batch.rows.len()]), train_device),
                })
            };
            let fitted = run.fit(&ActionClipObjective, model, &batcher, to_batch)?;
            let eval = match &val {
                Some(batcher) => {
                    let mut report = evaluate(&fitted.model.valid(), batcher)?;
                    if let Some(zero_shot) = zero_shot {
                        report["zero_shot_top1"] = zero_shot["top1"].clone();
                        report["zero_shot_top5"] = zero_shot["top5"].clone();
                    }
                    Some(report)
                }
                None => None,
            };
            run.finish(fitted.outcome, eval)
        }
        other => bail!("train.objective = {other:?} is not a video method: use \"clip4clip\" or \"actionclip\""),
    }
}

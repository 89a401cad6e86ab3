//! The `actionclip` task: ActionCLIP's video-text matching on labelled clips, evaluated by
//! top-1/top-5 recognition over the label names, before training (zero-shot) and after.

use std::sync::Arc;

use anyhow::Context;
use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};
use clip_core::{Clip, ClipConfig, ClipTokenizer, class_text_embeddings};
use clip_task::clip_model::{check_clip_model, clip_config, load_run_model, tokenizer_of};
use clip_task::{RunContext, Task};

use crate::actionclip::{ActionClip, ActionClipConfig, ActionClipObjective, Fusion, VideoLabelBatch};
use crate::data::{VideoTable, stack_videos};
use crate::metrics::top_k_accuracy;
use crate::task::batcher::{ClipText, VideoBatch, VideoBatcher, choice, eval_batches, video_tables};
use crate::task::clip4clip::text_tokens;
use crate::task::section::{self, VideoSection};

/// ActionCLIP over the CLIP of `[model]`, trained on `[video]` clips with action labels.
pub struct ActionClipTask {
    section: VideoSection,
    run: RunContext,
    clip: ClipConfig,
    tokenizer: ClipTokenizer,
    /// The label names: of the training and validation tables (labels are text, so the
    /// validation table may hold actions never trained on).
    classes: Vec<String>,
    train: Option<Arc<VideoTable>>,
    val: Option<VideoTable>,
    /// The recognition report of the model before training.
    zero_shot: Option<serde_json::Value>,
}

/// The label names of the training and validation tables, sorted.
fn label_names(train: &VideoTable, val: Option<&VideoTable>) -> anyhow::Result<Vec<String>> {
    let mut classes = train.labels();
    classes.extend(val.iter().flat_map(|val| val.labels()));
    classes.sort();
    classes.dedup();
    anyhow::ensure!(!classes.is_empty(), "{}: no labels", train.path.display());
    Ok(classes)
}

impl ActionClipTask {
    /// The settings of this task, with nothing prepared.
    fn clone_settings(&self) -> Self {
        Self {
            section: self.section.clone(),
            run: self.run.clone(),
            clip: self.clip.clone(),
            tokenizer: self.tokenizer.clone(),
            classes: Vec::new(),
            train: None,
            val: None,
            zero_shot: None,
        }
    }

    fn batcher(&self, table: VideoTable, train: bool) -> anyhow::Result<VideoBatcher> {
        let text = ClipText::Label(Arc::new(self.section.templates.clone()));
        VideoBatcher::new(&self.run, self.section.frames, table, self.clip.vision.image_size(), train, text)
    }

    fn recognition(&self, model: &ActionClip, val: &VideoTable, device: &Device) -> anyhow::Result<serde_json::Value> {
        let batcher = self.batcher(val.clone(), false)?;
        evaluate_recognition(model, &batcher, &self.tokenizer, &self.classes, &self.section.templates, self.run.eval.batch_size, device)
    }
}

impl Task for ActionClipTask {
    type Section = VideoSection;
    type Objective = ActionClipObjective;
    type Source = VideoBatcher;

    const SECTION: Option<&'static str> = Some("video");

    fn validate(video: &VideoSection, run: &RunContext) -> Result<(), String> {
        section::validate(video, run)?;
        check_clip_model(run)
    }

    fn new(section: VideoSection, run: RunContext) -> anyhow::Result<Self> {
        let clip = clip_config(&run.model.name, run.model.weights.as_deref())?;
        let tokenizer = tokenizer_of(&clip)?;
        Ok(Self { section, run, clip, tokenizer, classes: Vec::new(), train: None, val: None, zero_shot: None })
    }

    fn run(&self) -> &RunContext {
        &self.run
    }

    fn model(&self, device: &Device) -> anyhow::Result<ActionClip> {
        let (clip, clip_config) = load_run_model(&self.run, device)?;
        let video = &self.section;
        let fusion: Fusion = choice("video.fusion", &video.fusion)?;
        let config = ActionClipConfig::new(clip_config)
            .with_fusion(fusion)
            .with_fusion_layers(video.fusion_layers)
            .with_heads(video.heads)
            .with_max_frames(video.frames);
        Ok(config.init_with_clip(clip, device)?)
    }

    fn train_source(&mut self, model: &ActionClip, device: &Device) -> anyhow::Result<VideoBatcher> {
        let (train, val) = video_tables(&self.run, &self.section, true)?;
        self.classes = label_names(&train, val.as_ref())?;
        if let Some(val) = &val {
            self.zero_shot = Some(self.recognition(&model.valid(), val, &device.clone().inner())?);
        }
        self.val = val;
        let batcher = self.batcher(train, true)?;
        self.train = Some(batcher.table_arc());
        Ok(batcher)
    }

    fn to_batch(&self, batch: VideoBatch, device: &Device) -> anyhow::Result<VideoLabelBatch> {
        let table = self.train.as_ref().context("to_batch before train_source")?;
        let labels = batch
            .rows
            .iter()
            .map(|&row| {
                let video = &table.videos[row];
                let label = video.label.as_deref().unwrap_or_default();
                self.classes
                    .iter()
                    .position(|c| c == label)
                    .map(|i| i as i64)
                    .with_context(|| format!("{}:{}: label {label:?} outside the label set", table.path.display(), video.line))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let labels = Tensor::from_data(TensorData::new(labels, [batch.rows.len()]), device);
        Ok(VideoLabelBatch::new(stack_videos(&batch.clips, device)?, text_tokens(&self.tokenizer, &batch.texts, device)?, labels)?)
    }

    fn objective(&self) -> ActionClipObjective {
        ActionClipObjective
    }

    fn evaluate(&self, model: &ActionClip, device: &Device) -> anyhow::Result<Option<serde_json::Value>> {
        if self.val.is_none() {
            // Not trained here: read the label set and the validation table.
            let (train, val) = video_tables(&self.run, &self.section, true)?;
            let Some(val) = val else { return Ok(None) };
            let task = Self { classes: label_names(&train, Some(&val))?, val: Some(val), ..self.clone_settings() };
            return task.evaluate(model, device);
        }
        let Some(val) = &self.val else { return Ok(None) };
        let mut report = self.recognition(model, val, device)?;
        if let Some(zero_shot) = &self.zero_shot {
            report["zero_shot_top1"] = zero_shot["top1"].clone();
            report["zero_shot_top5"] = zero_shot["top5"].clone();
        }
        Ok(Some(report))
    }

    fn clip(&self, model: ActionClip, _device: &Device) -> anyhow::Result<Clip> {
        Ok(model.clip)
    }
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


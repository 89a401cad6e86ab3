//! The `actionclip` task: ActionCLIP's video-text matching on labelled clips, evaluated by
//! top-1/top-5 recognition over the label names as the official `test.py` scores them, before
//! training (zero-shot: CLIP alone, the mean of its frame embeddings) and after (with the
//! fusion).

use std::sync::Arc;

use anyhow::Context;
use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};
use clip_core::weights::export;
use clip_core::{Clip, ClipConfig, ClipTokenizer, l2_normalize};
use clip_task::clip_model::{check_clip_model, clip_config, load_run_model, tokenizer_of};
use clip_task::{RunContext, Task};

use crate::actionclip::official::{CLIP_PREFIX, FUSION_PREFIX, import_official, official_config, official_layout};
use crate::actionclip::{ActionClip, ActionClipConfig, ActionClipObjective, Fusion, VideoLabelBatch, template_scores};
use crate::data::{VideoTable, stack_videos};
use crate::metrics::top_k_accuracy;
use crate::task::batcher::{ClipText, VideoBatch, VideoBatcher, choice, eval_batches, video_tables};
use crate::task::clip4clip::text_tokens;
use crate::task::official::{EXPORT_OFFICIAL, OfficialCheckpoint, export_official_command, export_path, write_official};
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
    /// `video.official_checkpoint`, read.
    official: Option<OfficialCheckpoint>,
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
            official: self.official.clone(),
        }
    }

    fn batcher(&self, table: VideoTable, train: bool) -> anyhow::Result<VideoBatcher> {
        let text = ClipText::Label(Arc::new(self.section.templates.clone()));
        let image_size = self.clip.vision.image_size();
        let batcher = VideoBatcher::new(&self.run, self.section.frames, table, image_size, train, text)?;
        if train { batcher.with_augment(&self.section, image_size) } else { Ok(batcher) }
    }

    fn recognition(&self, model: &ActionClip, val: &VideoTable, videos: VideoEmbedding, device: &Device) -> anyhow::Result<serde_json::Value> {
        let batcher = self.batcher(val.clone(), false)?;
        let (classes, templates) = (&self.classes, &self.section.templates);
        evaluate_recognition(model, &batcher, &self.tokenizer, classes, templates, videos, self.run.eval.batch_size, device)
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
        let official = section.official_checkpoint.as_deref().map(|path| OfficialCheckpoint::read(path, CLIP_PREFIX)).transpose()?;
        let clip = match &official {
            Some(official) => official.clip.clone(),
            None => clip_config(&run.model.name, run.model.weights.as_deref())?,
        };
        let tokenizer = tokenizer_of(&clip)?;
        Ok(Self { section, run, clip, tokenizer, classes: Vec::new(), train: None, val: None, zero_shot: None, official })
    }

    fn run(&self) -> &RunContext {
        &self.run
    }

    fn model(&self, device: &Device) -> anyhow::Result<ActionClip> {
        let video = &self.section;
        let fusion: Fusion = choice("video.fusion", &video.fusion)?;
        if let Some(official) = &self.official {
            let checkpoint = &official.checkpoint;
            // Head counts are not in the weights: the official code's (text width / 64 for
            // Transf, 8 for Transf_cls), or those `export-official` recorded.
            let mut config = official_config(checkpoint, video.frames)?;
            if let Some(&heads) = official.heads.get("heads") {
                config = config.with_heads(heads);
            }
            if let Some(&heads) = official.heads.get("cls_heads") {
                config = config.with_cls_heads(heads);
            }
            anyhow::ensure!(
                config.fusion != Fusion::TransfCls || config.max_frames == video.frames,
                "video.frames = {}, but the Transf_cls fusion of video.official_checkpoint = {} has positions for exactly {} frames",
                video.frames,
                checkpoint.path.display(),
                config.max_frames
            );
            config.clip = official.clip.clone();
            official.check_frames(video.frames, 0)?;
            anyhow::ensure!(
                config.fusion == fusion,
                "video.fusion = {:?}, but video.official_checkpoint = {} holds a {:?} fusion",
                video.fusion,
                checkpoint.path.display(),
                config.fusion
            );
            return Ok(import_official(checkpoint, &config, device)?);
        }
        let (clip, clip_config) = load_run_model(&self.run, device)?;
        Ok(self.model_config(clip_config).with_fusion(fusion).init_with_clip(clip, device)?)
    }

    fn train_source(&mut self, model: &ActionClip, device: &Device) -> anyhow::Result<VideoBatcher> {
        let (train, val) = video_tables(&self.run, &self.section, true)?;
        self.classes = label_names(&train, val.as_ref())?;
        if let Some(val) = &val {
            self.zero_shot = Some(self.recognition(&model.valid(), val, VideoEmbedding::ClipAlone, &device.clone().inner())?);
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
        let mut report = self.recognition(model, val, VideoEmbedding::Fused, device)?;
        if let Some(zero_shot) = &self.zero_shot {
            report["zero_shot_top1"] = zero_shot["top1"].clone();
            report["zero_shot_top5"] = zero_shot["top5"].clone();
        }
        Ok(Some(report))
    }

    fn clip(&self, model: ActionClip, _device: &Device) -> anyhow::Result<Clip> {
        Ok(model.clip)
    }

    fn commands() -> Vec<clap::Command> {
        vec![export_official_command()]
    }

    fn run_command(&self, name: &str, args: &clap::ArgMatches, model: ActionClip, _device: &Device) -> anyhow::Result<()> {
        anyhow::ensure!(name == EXPORT_OFFICIAL, "ActionCLIP has no `{name}` command");
        let output = export_path(args)?;
        let (config, heads) = self.exported_config(&model);
        let tensors = export(&model, &official_layout(&config))?;
        write_official(tensors, &self.clip, &heads, &[&format!("{FUSION_PREFIX}frame_position_embeddings.weight")], &output)?;
        Ok(())
    }
}

impl ActionClipTask {
    /// The configuration `model` was built from, its fusion and sizes read off the model (a run
    /// may have started from an official checkpoint of other sizes than `[video]` gives), and
    /// the head counts to record with it.
    fn exported_config(&self, model: &ActionClip) -> (ActionClipConfig, Vec<(&'static str, usize)>) {
        let mut config = self.model_config(self.clip.clone());
        let mut heads = Vec::new();
        if let Some(fusion) = &model.fusion {
            let blocks = &fusion.transformer.resblocks;
            config = config.with_fusion(Fusion::Transf).with_fusion_layers(blocks.len());
            heads.extend(blocks.first().map(|b| ("clipforge.heads", b.attn.heads)));
        } else if let Some(aggregate) = &model.aggregate {
            config = config.with_fusion(Fusion::TransfCls).with_fusion_layers(aggregate.layers.len());
            heads.extend(aggregate.layers.first().map(|l| ("clipforge.cls_heads", l.self_attn.heads)));
        } else if model.lstm.is_some() {
            config = config.with_fusion(Fusion::Lstm);
        } else if model.shift.is_some() {
            config = config.with_fusion(Fusion::Conv1d);
        } else {
            config = config.with_fusion(Fusion::MeanP);
        }
        (config, heads)
    }

    /// The model configuration of `[video]` over CLIP `clip` (the fusion set by the caller).
    fn model_config(&self, clip: ClipConfig) -> ActionClipConfig {
        let video = &self.section;
        ActionClipConfig::new(clip)
            .with_fusion_layers(video.fusion_layers)
            .with_heads(video.heads)
            .with_max_frames(video.frames)
    }
}

/// Which video embedding recognition scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VideoEmbedding {
    /// The model's: the fusion's output (the fine-tuned figures).
    Fused,
    /// CLIP alone: the mean of the frame embeddings, no fusion (zero-shot, before training,
    /// when the fusion is untrained).
    ClipAlone,
}

/// Top-1 and top-5 accuracy of `model` over the label names, scored as the official `test.py`
/// does: every template with every label, `100 · cos`, a softmax over the labels under each
/// template, the mean over templates ([`template_scores`]).
#[allow(clippy::too_many_arguments)]
pub fn evaluate_recognition(
    model: &ActionClip,
    batcher: &VideoBatcher,
    tokenizer: &ClipTokenizer,
    classes: &[String],
    templates: &[String],
    videos_by: VideoEmbedding,
    batch_size: usize,
    device: &Device,
) -> anyhow::Result<serde_json::Value> {
    // Template-major prompts, as the official `text_prompt`: row = template · classes + class.
    let prompts: Vec<String> = templates.iter().flat_map(|t| classes.iter().map(move |c| t.replace("{}", c))).collect();
    let prompt_embeds = Tensor::cat(
        prompts
            .chunks(batch_size.max(1))
            .map(|chunk| Ok(model.text_embeddings(tokenizer.tokenize_batch(chunk, device)?)))
            .collect::<anyhow::Result<Vec<_>>>()?,
        0,
    );
    let (mut logits, mut labels) = (Vec::new(), Vec::new());
    for (videos, _, rows) in eval_batches(batcher, batch_size, device)? {
        let embeds = match videos_by {
            VideoEmbedding::Fused => model.video_embeddings(videos),
            VideoEmbedding::ClipAlone => {
                let frames = model.frame_features(videos);
                let [batch, _, dim] = frames.dims();
                l2_normalize(frames.mean_dim(1).reshape([batch, dim]))
            }
        };
        logits.extend(template_scores(embeds, prompt_embeds.clone(), classes.len()).into_data().iter::<f32>());
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


//! The `clip4clip` task: CLIP4Clip's video-text retrieval training on captioned clips,
//! evaluated by retrieval recall and ranks (with the dual softmax at inference, optionally).

use burn::tensor::{Device, Int, Tensor, TensorData};
use clip_core::weights::export;
use clip_core::{Clip, ClipConfig, ClipTokenizer};
use clip_task::clip_model::{check_clip_model, clip_config, load_run_model, tokenizer_of};
use clip_task::{RunContext, Task};

use crate::clip4clip::official::{OFFICIAL_CROSS_HEADS, import_official, official_config, official_layout};
use crate::clip4clip::{Clip4Clip, Clip4ClipConfig, Clip4ClipObjective, SimilarityHeader, VideoTextBatch, dual_softmax};
use crate::data::{VideoTable, stack_videos};
use crate::metrics::{RetrievalMetrics, retrieval_metrics, transpose};
use crate::task::batcher::{ClipText, VideoBatch, VideoBatcher, choice, eval_batches, video_tables};
use crate::task::official::{EXPORT_OFFICIAL, OfficialCheckpoint, export_official_command, export_path, write_official};
use crate::task::section::{self, VideoSection};

/// Temperature of the dual softmax at inference (CAMoE's and CLIP4Clip's follow-ups' value).
const DUAL_SOFTMAX_TEMPERATURE: f64 = 0.01;

/// CLIP4Clip over the CLIP of `[model]`, trained on `[video]` clips with captions.
pub struct Clip4ClipTask {
    section: VideoSection,
    run: RunContext,
    clip: ClipConfig,
    tokenizer: ClipTokenizer,
    val: Option<VideoTable>,
    /// `video.official_checkpoint`, read.
    official: Option<OfficialCheckpoint>,
}

/// Token ids `[texts, context]` of `texts`.
pub(crate) fn text_tokens(tokenizer: &ClipTokenizer, texts: &[String], device: &Device) -> anyhow::Result<Tensor<2, Int>> {
    let ids: Vec<i64> = texts.iter().map(|t| tokenizer.tokenize(t)).collect::<Result<Vec<_>, _>>()?.concat();
    Ok(Tensor::from_data(TensorData::new(ids, [texts.len(), tokenizer.context_length()]), device))
}

impl Task for Clip4ClipTask {
    type Section = VideoSection;
    type Objective = Clip4ClipObjective;
    type Source = VideoBatcher;

    const SECTION: Option<&'static str> = Some("video");

    fn validate(video: &VideoSection, run: &RunContext) -> Result<(), String> {
        section::validate(video, run)?;
        check_clip_model(run)
    }

    fn new(section: VideoSection, run: RunContext) -> anyhow::Result<Self> {
        let official = section.official_checkpoint.as_deref().map(|path| OfficialCheckpoint::read(path, "clip.")).transpose()?;
        let clip = match &official {
            Some(official) => official.clip.clone(),
            None => clip_config(&run.model.name, run.model.weights.as_deref())?,
        };
        let tokenizer = tokenizer_of(&clip)?;
        Ok(Self { section, run, clip, tokenizer, val: None, official })
    }

    fn run(&self) -> &RunContext {
        &self.run
    }

    fn model(&self, device: &Device) -> anyhow::Result<Clip4Clip> {
        let video = &self.section;
        let similarity: SimilarityHeader = choice("video.similarity", &video.similarity)?;
        if let Some(official) = &self.official {
            let checkpoint = &official.checkpoint;
            // Head counts are not in the weights: the official code's (text width / 64 for
            // seqTransf, the cross-base config's 8), or those `export-official` recorded.
            let cross_heads = official.heads.get("cross_heads").copied().unwrap_or(OFFICIAL_CROSS_HEADS);
            let mut config = official_config(checkpoint, video.frames, cross_heads)?;
            if let Some(&heads) = official.heads.get("heads") {
                config = config.with_heads(heads);
            }
            config.clip = official.clip.clone();
            official.check_frames(video.frames, usize::from(similarity == SimilarityHeader::TightTransf))?;
            anyhow::ensure!(
                config.similarity == similarity,
                "video.similarity = {:?}, but video.official_checkpoint = {} holds a {:?} model",
                video.similarity,
                checkpoint.path.display(),
                config.similarity
            );
            return Ok(import_official(checkpoint, &config, device)?);
        }
        let (clip, clip_config) = load_run_model(&self.run, device)?;
        let config = Clip4ClipConfig::new(clip_config)
            .with_similarity(similarity)
            .with_max_frames(video.frames)
            .with_temporal_layers(video.temporal_layers)
            .with_cross_layers(video.cross_layers)
            .with_heads(video.heads);
        Ok(config.init_with_clip(clip, device)?)
    }

    fn train_source(&mut self, _model: &Clip4Clip, _device: &Device) -> anyhow::Result<VideoBatcher> {
        let (train, val) = video_tables(&self.run, &self.section, false)?;
        self.val = val;
        let image_size = self.clip.vision.image_size();
        VideoBatcher::new(&self.run, self.section.frames, train, image_size, true, ClipText::Caption)?.with_augment(&self.section, image_size)
    }

    fn to_batch(&self, batch: VideoBatch, device: &Device) -> anyhow::Result<VideoTextBatch> {
        Ok(VideoTextBatch::new(stack_videos(&batch.clips, device)?, text_tokens(&self.tokenizer, &batch.texts, device)?)?)
    }

    fn objective(&self) -> Clip4ClipObjective {
        Clip4ClipObjective
    }

    fn evaluate(&self, model: &Clip4Clip, device: &Device) -> anyhow::Result<Option<serde_json::Value>> {
        let val = match &self.val {
            Some(val) => Some(val.clone()),
            None => video_tables(&self.run, &self.section, false)?.1,
        };
        let Some(val) = val else { return Ok(None) };
        let batcher = VideoBatcher::new(&self.run, self.section.frames, val, self.clip.vision.image_size(), false, ClipText::Caption)?;
        let report = evaluate_retrieval(model, &batcher, &self.tokenizer, self.run.eval.batch_size, self.section.dual_softmax, device)?;
        Ok(Some(report))
    }

    fn clip(&self, model: Clip4Clip, _device: &Device) -> anyhow::Result<Clip> {
        Ok(model.clip)
    }

    fn commands() -> Vec<clap::Command> {
        vec![export_official_command()]
    }

    fn run_command(&self, name: &str, args: &clap::ArgMatches, model: Clip4Clip, _device: &Device) -> anyhow::Result<()> {
        anyhow::ensure!(name == EXPORT_OFFICIAL, "CLIP4Clip has no `{name}` command");
        let output = export_path(args)?;
        let tensors = export(&model, &official_layout(&self.model_config(&model)?))?;
        let mut heads = Vec::new();
        if let Some(block) = model.temporal.as_ref().and_then(|t| t.transformer.resblocks.first()) {
            heads.push(("clipforge.heads", block.attn.heads));
        }
        if let Some(block) = model.cross.as_ref().and_then(|c| c.transformer.resblocks.first()) {
            heads.push(("clipforge.cross_heads", block.attn.heads));
        }
        let positions = ["frame_position_embeddings.weight", "cross.embeddings.position_embeddings.weight"];
        write_official(tensors, &self.clip, &heads, &positions, &output)?;
        Ok(())
    }
}

impl Clip4ClipTask {
    /// The configuration `model` was built from (its header's sizes read off the model).
    fn model_config(&self, model: &Clip4Clip) -> anyhow::Result<Clip4ClipConfig> {
        let temporal_layers = model.temporal.as_ref().map_or(1, |t| t.transformer.resblocks.len());
        let cross_layers = model.cross.as_ref().map_or(1, |c| c.transformer.resblocks.len());
        Ok(Clip4ClipConfig::new(self.clip.clone())
            .with_similarity(model.similarity)
            .with_max_frames(self.section.frames)
            .with_temporal_layers(temporal_layers)
            .with_cross_layers(cross_layers))
    }
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
        rows.push(model.similarity_from_features(block, frames.clone(), None));
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
    // Recall is in percent: a random ranking retrieves the right clip first 1 / count of the time.
    result["chance_r1"] = serde_json::json!(100.0 / count as f64);
    result["t2v_r1"] = result["text_to_video"]["r1"].clone();
    if dual {
        result["dual_softmax"] = report(dual_softmax(similarity, DUAL_SOFTMAX_TEMPERATURE))?;
    }
    Ok(result)
}

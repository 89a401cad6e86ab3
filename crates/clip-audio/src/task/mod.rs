//! The `audioclip` task: AudioCLIP trained tri-modally on audio tables (a generic table,
//! ESC-50 or UrbanSound8K), evaluated by zero-shot audio classification on held-out rows
//! (audio against label prompts): `zero_shot_top1`, `zero_shot_top5`, `chance_top1`.
//!
//! The model starts from an official AudioCLIP checkpoint (`audioclip.weights`), or from the
//! `[model]` CLIP (a ResNet; pretrained through `model.weights` or fresh) with a fresh audio
//! head. `audioclip.freeze_clip` trains the audio head alone against the frozen CLIP (the
//! paper's first stage); without it every tower trains (the full stage).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use burn::tensor::{Device, Int, Tensor, TensorData};
use clip_core::preprocess::{EvalTransform, EvalTransformConfig, ImageTensorData, stack_images};
use clip_core::{Clip, ClipConfig, ClipError, ClipTokenizer, Objective, StepOutput, l2_normalize};
use clip_task::clip_model::{check_clip_model, clip_config, load_run_model, tokenizer_of};
use clip_task::data::{BatchSource, DataError, LoadedBatch, keep_readable, load_on_workers, sample_rng};
use clip_task::{RunContext, Task};
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::audio::{AudioOptions, Crop, load_audio};
use crate::config::{AudioClipConfig, EsResNeXtConfig, FbspConfig, OFFICIAL_ATTENTION_KERNELS};
use crate::data::{AudioTable, DatasetFormat};
use crate::loss::{Embeddings, LossWeights, TriModalLoss};
use crate::model::AudioClip;
use crate::official::load_official;

/// `[audioclip]`: the data layout, the clip length, the audio head, the objective.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AudioClipSection {
    /// Layout of `data.train`: `table` (a table file), `esc50` or `urbansound8k` (root folders).
    pub format: DatasetFormat,
    /// Held-out fold of `esc50`/`urbansound8k` (or of a table with a `fold` column): its rows
    /// are the validation data, the other folds train. Overrides `data.val`/`data.val_fraction`.
    pub val_fold: Option<usize>,
    /// Seconds of every clip (cropped or padded; ESC-50: 5).
    pub seconds: f64,
    /// Training clips are cropped and padded at a random position (evaluation: centred).
    pub random_crop: bool,
    /// The class prompt of zero-shot evaluation, `{}` standing for the label (official: `{}`).
    pub prompt: String,
    /// An official AudioCLIP checkpoint (`AudioCLIP-Full-Training.pt` converted to safetensors,
    /// or the `.pt`) to start from; its architecture wins over the keys below.
    pub weights: Option<PathBuf>,
    /// Train the audio head only, against the frozen CLIP (the paper's audio-head stage).
    pub freeze_clip: bool,
    /// Loss term weights (`audio_text`, `audio_image`, `image_text`, `ttf`).
    pub loss_weights: LossWeights,
    /// Initial log audio-image and audio-text logit scales of a fresh audio head (official:
    /// ln 100, where the clamp sits; ln(1/0.07) suits training from scratch).
    pub init_logit_scale: f64,
    /// Model sample rate in Hz (files are resampled to it).
    pub sample_rate: usize,
    /// Front end: `n_fft`.
    pub n_fft: usize,
    /// Front end: hop between frames.
    pub hop_length: usize,
    /// Front end: frame (window) length.
    pub win_length: usize,
    /// Front end: kernels divided by `sqrt(n_fft)`.
    pub normalized: bool,
    /// Body: bottleneck blocks per stage.
    pub layers: [usize; 4],
    /// Body: stem width.
    pub stem_width: usize,
    /// Body: groups of the 3x3 convolutions.
    pub groups: usize,
    /// Body: torchvision's `width_per_group`.
    pub width_per_group: usize,
    /// Body: the attention blocks.
    pub attention: bool,
    /// Body: frequency bands (input channels).
    pub bands: usize,
}

impl Default for AudioClipSection {
    fn default() -> Self {
        let (fbsp, body) = (FbspConfig::new(), EsResNeXtConfig::new());
        Self {
            format: DatasetFormat::Table,
            val_fold: None,
            seconds: 5.0,
            random_crop: true,
            prompt: "{}".into(),
            weights: None,
            freeze_clip: false,
            loss_weights: LossWeights::default(),
            init_logit_scale: crate::config::LN_100,
            sample_rate: fbsp.sample_rate,
            n_fft: fbsp.n_fft,
            hop_length: fbsp.hop_length,
            win_length: fbsp.win_length,
            normalized: fbsp.normalized,
            layers: body.layers,
            stem_width: body.stem_width,
            groups: body.groups,
            width_per_group: body.width_per_group,
            attention: body.attention,
            bands: body.bands,
        }
    }
}

impl AudioClipSection {
    /// The front end the section describes.
    pub fn fbsp(&self) -> FbspConfig {
        FbspConfig::new()
            .with_sample_rate(self.sample_rate)
            .with_n_fft(self.n_fft)
            .with_hop_length(self.hop_length)
            .with_win_length(self.win_length)
            .with_normalized(self.normalized)
    }

    /// The audio body the section describes.
    pub fn body(&self) -> EsResNeXtConfig {
        EsResNeXtConfig::new()
            .with_layers(self.layers)
            .with_stem_width(self.stem_width)
            .with_groups(self.groups)
            .with_width_per_group(self.width_per_group)
            .with_attention(self.attention)
            .with_attention_kernels(OFFICIAL_ATTENTION_KERNELS)
            .with_bands(self.bands)
    }

    /// How files become model input.
    pub fn audio_options(&self) -> AudioOptions {
        AudioOptions::new(self.sample_rate as u32, self.seconds)
    }

    /// Checks what serde cannot; errors name the key.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.seconds.is_finite() && self.seconds > 0.0) {
            return Err(format!("audioclip.seconds = {} must be positive", self.seconds));
        }
        if !self.prompt.contains("{}") {
            return Err(format!("audioclip.prompt = {:?} has no {{}} for the label", self.prompt));
        }
        if self.sample_rate == 0 || self.sample_rate > 384_000 {
            return Err(format!("audioclip.sample_rate = {} must be in 1..=384000", self.sample_rate));
        }
        if let (Some(fold), Some(folds)) = (self.val_fold, self.format.folds())
            && !(1..=folds).contains(&fold)
        {
            return Err(format!("audioclip.val_fold = {fold}: {:?} has folds 1..={folds}", self.format));
        }
        if let Some(weights) = &self.weights
            && !weights.is_file()
        {
            return Err(format!("audioclip.weights = {}: no such file", weights.display()));
        }
        self.loss_weights.validate("audioclip.loss_weights")?;
        if !(self.init_logit_scale.is_finite() && (0.0..=crate::config::LN_100 + 1e-9).contains(&self.init_logit_scale)) {
            return Err(format!("audioclip.init_logit_scale = {} must be in [0, ln 100]", self.init_logit_scale));
        }
        let w = &self.loss_weights;
        if w.audio_text == 0.0 && w.audio_image == 0.0 {
            return Err("audioclip.loss_weights: audio_text or audio_image must be positive (the audio head learns from them)".into());
        }
        // The configs name their fields `fbsp.*` and `audio.*`; the section's keys are flat.
        let prefix = |e: ClipError| match e {
            ClipError::Config { message, .. } => {
                let key = message.trim_start_matches("fbsp.").trim_start_matches("audio: ").trim_start_matches("audio.");
                format!("audioclip.{key}")
            }
            other => other.to_string(),
        };
        self.fbsp().validate("[audioclip]").map_err(prefix)?;
        self.body().validate("[audioclip]").map_err(prefix)?;
        if self.samples() < 1 {
            return Err("audioclip.seconds * sample_rate must be at least one sample".into());
        }
        Ok(())
    }

    fn samples(&self) -> usize {
        self.audio_options().samples
    }
}

/// A loaded training batch: clips in int16 units, images, captions.
pub struct AudioBatch {
    rows: Vec<usize>,
    audio: Vec<Vec<f32>>,
    images: Vec<ImageTensorData>,
    skipped: Vec<DataError>,
}

impl LoadedBatch for AudioBatch {
    fn rows(&self) -> &[usize] {
        &self.rows
    }

    fn skipped(&self) -> &[DataError] {
        &self.skipped
    }
}

/// Loads rows of an [`AudioTable`] on worker threads.
#[derive(Clone)]
pub struct AudioBatcher {
    table: Arc<AudioTable>,
    options: AudioOptions,
    transform: Arc<EvalTransform>,
    random_crop: bool,
    seed: u64,
    workers: usize,
    skip_bad_samples: bool,
}

/// One row as model input: the clip and, when the table has images, the image.
fn load_row(
    table: &AudioTable,
    row: usize,
    options: &AudioOptions,
    crop: Crop,
    transform: Option<&EvalTransform>,
) -> Result<(Vec<f32>, Option<ImageTensorData>), DataError> {
    let entry = &table.rows[row];
    let error = |message: String| DataError { path: table.path.clone(), line: Some(entry.line), message };
    let audio = load_audio(&entry.audio, options, crop).map_err(|e| error(e.to_string()))?;
    let image = match (&entry.image, transform) {
        (Some(path), Some(transform)) => Some(transform.load(path).map_err(|e| error(format!("{}: {e}", path.display())))?),
        _ => None,
    };
    Ok((audio, image))
}

impl BatchSource for AudioBatcher {
    type Batch = AudioBatch;

    fn rows(&self) -> usize {
        self.table.rows.len()
    }

    fn batch(&self, indices: &[usize], step: usize) -> Result<AudioBatch, DataError> {
        let loaded = load_on_workers(indices, self.workers, |row, slot| {
            let crop = if self.random_crop { Crop::At(sample_rng(self.seed, step, slot).random::<f64>()) } else { Crop::Center };
            load_row(&self.table, row, &self.options, crop, Some(&self.transform))
        });
        let (kept, skipped) = keep_readable(indices, loaded, self.skip_bad_samples)?;
        let mut batch = AudioBatch { rows: Vec::new(), audio: Vec::new(), images: Vec::new(), skipped };
        for (row, (audio, image)) in kept {
            batch.rows.push(row);
            batch.audio.push(audio);
            batch.images.extend(image);
        }
        Ok(batch)
    }
}

/// Clips `[N]` of equal length to a `[N, 1, samples]` tensor.
pub fn audio_tensor(clips: &[Vec<f32>], device: &Device) -> clip_core::Result<Tensor<3>> {
    let samples = clips.first().map_or(0, Vec::len);
    if clips.iter().any(|c| c.len() != samples) {
        return Err(ClipError::Shape("audio clips of unequal length in one batch".into()));
    }
    let values: Vec<f32> = clips.iter().flatten().copied().collect();
    Ok(Tensor::from_data(TensorData::new(values, [clips.len(), 1, samples]), device))
}

/// A batch on the device.
pub struct AudioClipBatch {
    /// Waveforms `[N, 1, samples]` in int16 units.
    pub audio: Tensor<3>,
    /// Images `[N, 3, S, S]`, when the data has them.
    pub images: Option<Tensor<4>>,
    /// Caption tokens `[N, context]`.
    pub tokens: Tensor<2, Int>,
}

/// The tri-modal objective as a trainer objective; logs the unweighted terms and the scales.
#[derive(Debug, Clone, Copy, Default)]
pub struct AudioClipObjective {
    /// The loss.
    pub loss: TriModalLoss,
}

fn scalar(t: Tensor<1>) -> f64 {
    f64::from(t.detach().into_scalar::<f32>())
}

impl Objective for AudioClipObjective {
    type Model = AudioClip;
    type Batch = AudioClipBatch;

    fn forward(&self, model: &AudioClip, batch: AudioClipBatch) -> clip_core::Result<StepOutput> {
        let n = batch.audio.dims()[0];
        let texts = batch.tokens.dims()[0];
        if n != texts || batch.images.as_ref().is_some_and(|i| i.dims()[0] != n) {
            return Err(ClipError::Shape(format!("audioclip: {n} clips but {texts} captions (or images) in a batch")));
        }
        let (audio, kernels) = model.encode_audio(batch.audio);
        let image = batch.images.map(|images| model.encode_image(images));
        let text = model.encode_text(batch.tokens);
        let terms = self
            .loss
            .forward(model, Embeddings { audio: Some(audio), image, text: Some(text), kernels: Some(kernels) })
            .ok_or_else(|| ClipError::Shape("audioclip: no loss term has a positive weight for this batch".into()))?;
        let mut metrics = vec![("logit_scale_at", scalar(model.scale_at())), ("logit_scale_ai", scalar(model.scale_ai()))];
        for (name, term) in [("loss_audio_text", &terms.audio_text), ("loss_audio_image", &terms.audio_image), ("loss_image_text", &terms.image_text), ("loss_ttf", &terms.ttf)] {
            if let Some(term) = term {
                metrics.push((name, scalar(term.clone())));
            }
        }
        Ok(StepOutput { loss: terms.total, metrics })
    }
}

/// The task.
pub struct AudioClipTask {
    section: AudioClipSection,
    run: RunContext,
    clip: ClipConfig,
    tokenizer: ClipTokenizer,
    train: Option<Arc<AudioTable>>,
    val: Option<AudioTable>,
}

impl AudioClipTask {
    /// The section this task was built with.
    pub fn section(&self) -> &AudioClipSection {
        &self.section
    }

    /// The training and validation tables: `audioclip.val_fold`, else the `[data]` rules.
    pub fn tables(&self) -> anyhow::Result<(AudioTable, Option<AudioTable>)> {
        let format = self.section.format;
        let train = AudioTable::read_format(&self.run.data.train, format)?;
        if let Some(fold) = self.section.val_fold {
            let (train, val) = train.split_fold(fold)?;
            return Ok((train, Some(val)));
        }
        self.run.with_validation(train, |path: &Path| AudioTable::read_format(path, format).map_err(anyhow::Error::from))
    }

    fn image_transform(&self) -> EvalTransform {
        EvalTransformConfig::new().with_image_size(self.clip.vision.image_size()).init()
    }

    /// Audio embeddings `[rows, D]` (not normalized) of `rows` of `table`, centred clips.
    pub fn audio_embeddings(&self, model: &AudioClip, table: &AudioTable, rows: &[usize], device: &Device) -> anyhow::Result<Tensor<2>> {
        let options = self.section.audio_options();
        let mut parts = Vec::new();
        for chunk in rows.chunks(self.run.eval.batch_size.max(1)) {
            let clips = chunk
                .iter()
                .map(|&row| load_row(table, row, &options, Crop::Center, None).map(|(audio, _)| audio))
                .collect::<Result<Vec<_>, _>>()?;
            parts.push(model.encode_audio(audio_tensor(&clips, device)?).0);
        }
        Ok(Tensor::cat(parts, 0))
    }

    /// Zero-shot ranks of audio `files` against `labels` (each in `audioclip.prompt`): label
    /// indices with probabilities, best first.
    fn rank(&self, model: &AudioClip, labels: &[String], files: &[PathBuf], device: &Device) -> anyhow::Result<Vec<Vec<(usize, f32)>>> {
        let text = self.class_features(model, labels, device)?;
        let options = self.section.audio_options();
        let mut ranks = Vec::with_capacity(files.len());
        for path in files {
            let clip = load_audio(path, &options, Crop::Center)?;
            let audio = l2_normalize(model.encode_audio(audio_tensor(&[clip], device)?).0);
            let logits = audio.matmul(text.clone().transpose()) * model.scale_at().unsqueeze();
            let probabilities: Vec<f32> = burn::tensor::activation::softmax(logits, 1).into_data().iter::<f32>().collect();
            let mut ranked: Vec<(usize, f32)> = probabilities.into_iter().enumerate().collect();
            ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
            ranks.push(ranked);
        }
        Ok(ranks)
    }

    /// Normalized text features `[classes, D]` of the class prompts.
    pub fn class_features(&self, model: &AudioClip, classes: &[String], device: &Device) -> anyhow::Result<Tensor<2>> {
        let prompts: Vec<String> = classes.iter().map(|c| self.section.prompt.replace("{}", c)).collect();
        Ok(l2_normalize(model.encode_text(self.tokenizer.tokenize_batch(&prompts, device)?)))
    }
}

/// Top-1 and top-5 accuracy of `logits` `[rows, classes]` against `labels`.
pub fn top_k_accuracy(logits: Tensor<2>, labels: &[usize]) -> (f64, f64) {
    let [_, classes] = logits.dims();
    let values: Vec<f32> = logits.into_data().iter::<f32>().collect();
    let (mut top1, mut top5) = (0usize, 0usize);
    for (row, &label) in values.chunks(classes.max(1)).zip(labels) {
        let better = row.iter().filter(|&&v| v > row[label]).count();
        top1 += usize::from(better == 0);
        top5 += usize::from(better < 5);
    }
    let n = labels.len().max(1) as f64;
    (top1 as f64 / n, top5 as f64 / n)
}

impl Task for AudioClipTask {
    type Section = AudioClipSection;
    type Objective = AudioClipObjective;
    type Source = AudioBatcher;

    const SECTION: Option<&'static str> = Some("audioclip");

    fn validate(section: &AudioClipSection, run: &RunContext) -> Result<(), String> {
        section.validate()?;
        check_clip_model(run)?;
        let clip = clip_config(&run.model.name, run.model.weights.as_deref()).map_err(|e| format!("model.name: {e:#}"))?;
        if section.weights.is_none() && !matches!(clip.vision, clip_core::ImageTowerConfig::ResNet(_)) {
            return Err(format!("model.name = {:?}: AudioCLIP joins a ResNet CLIP (RN50 in the paper)", run.model.name));
        }
        Ok(())
    }

    fn new(section: AudioClipSection, run: RunContext) -> anyhow::Result<Self> {
        let clip = clip_config(&run.model.name, run.model.weights.as_deref())?;
        let tokenizer = tokenizer_of(&clip)?;
        Ok(Self { section, run, clip, tokenizer, train: None, val: None })
    }

    fn run(&self) -> &RunContext {
        &self.run
    }

    fn model(&self, device: &Device) -> anyhow::Result<AudioClip> {
        let model = match &self.section.weights {
            Some(weights) => load_official(weights, Some(self.clip.text.heads), self.section.fbsp(), device)?.0,
            None => {
                let config = AudioClipConfig::new(self.clip.clone())
                    .with_fbsp(self.section.fbsp())
                    .with_audio(self.section.body())
                    .with_init_logit_scale_ai(self.section.init_logit_scale)
                    .with_init_logit_scale_at(self.section.init_logit_scale);
                config.validate(&self.run.file.display().to_string())?;
                let mut model = config.init(device)?;
                model.clip = load_run_model(&self.run, device)?.0;
                model
            }
        };
        Ok(if self.section.freeze_clip { model.freeze_clip() } else { model })
    }

    fn train_source(&mut self, _model: &AudioClip, _device: &Device) -> anyhow::Result<AudioBatcher> {
        let (train, val) = self.tables()?;
        let table = Arc::new(train);
        self.train = Some(table.clone());
        self.val = val;
        Ok(AudioBatcher {
            table,
            options: self.section.audio_options(),
            transform: Arc::new(self.image_transform()),
            random_crop: self.section.random_crop,
            seed: self.run.seed,
            workers: self.run.data.workers,
            skip_bad_samples: self.run.data.skip_bad_samples,
        })
    }

    fn to_batch(&self, batch: AudioBatch, device: &Device) -> anyhow::Result<AudioClipBatch> {
        let table = self.train.as_ref().context("to_batch before train_source")?;
        let captions: Vec<&str> = batch.rows.iter().map(|&row| table.rows[row].caption.as_str()).collect();
        let images = if batch.images.is_empty() { None } else { Some(stack_images(&batch.images, device)?) };
        Ok(AudioClipBatch { audio: audio_tensor(&batch.audio, device)?, images, tokens: self.tokenizer.tokenize_batch(&captions, device)? })
    }

    fn objective(&self) -> AudioClipObjective {
        AudioClipObjective { loss: TriModalLoss { weights: self.section.loss_weights } }
    }

    fn evaluate(&self, model: &AudioClip, device: &Device) -> anyhow::Result<Option<serde_json::Value>> {
        let (train, val) = match (&self.train, &self.val) {
            (Some(train), Some(val)) => (train.as_ref().clone(), val.clone()),
            _ => match self.tables()? {
                (train, Some(val)) => (train, val),
                (_, None) => return Ok(None),
            },
        };
        let mut classes = if self.run.eval.classes.is_empty() { train.labels() } else { self.run.eval.classes.clone() };
        if self.run.eval.classes.is_empty() {
            classes.extend(val.labels());
            classes.sort();
            classes.dedup();
        }
        anyhow::ensure!(!classes.is_empty(), "{}: zero-shot evaluation needs a `label` on the rows", val.path.display());
        let rows: Vec<usize> = (0..val.rows.len()).collect();
        let labels = rows
            .iter()
            .map(|&row| {
                let entry = &val.rows[row];
                let label = entry.label.as_deref().unwrap_or_default();
                classes
                    .iter()
                    .position(|c| c == label)
                    .with_context(|| format!("{}:{}: label {label:?} is not one of {classes:?}", val.path.display(), entry.line))
            })
            .collect::<anyhow::Result<Vec<usize>>>()?;
        let audio = l2_normalize(self.audio_embeddings(model, &val, &rows, device)?);
        let text = self.class_features(model, &classes, device)?;
        let (top1, top5) = top_k_accuracy(audio.matmul(text.transpose()), &labels);
        let count = classes.len() as f64;
        Ok(Some(serde_json::json!({
            "clips": rows.len(),
            "classes": classes.len(),
            "zero_shot_top1": top1,
            "zero_shot_top5": top5,
            "chance_top1": 1.0 / count,
            "chance_top5": (5.0f64).min(count) / count,
        })))
    }

    fn clip(&self, model: AudioClip, _device: &Device) -> anyhow::Result<Clip> {
        Ok(model.clip)
    }

    fn commands() -> Vec<clap::Command> {
        vec![classify_audio_command()]
    }

    fn run_command(&self, name: &str, args: &clap::ArgMatches, model: AudioClip, device: &Device) -> anyhow::Result<()> {
        use clap::FromArgMatches;
        anyhow::ensure!(name == CLASSIFY_AUDIO, "AudioCLIP has no `{name}` command");
        let args = ClassifyAudioArgs::from_arg_matches(args)?;
        let labels: Vec<String> = args.labels.split(',').map(|l| l.trim().to_string()).filter(|l| !l.is_empty()).collect();
        anyhow::ensure!(!labels.is_empty(), "--labels: give at least one class name");
        let ranks = self.rank(&model, &labels, &args.audio, device)?;
        for (path, ranked) in args.audio.iter().zip(ranks) {
            println!("{}", path.display());
            for (class, probability) in ranked.into_iter().take(args.top.max(1)) {
                println!("  {:>6.2}%  {}", 100.0 * probability, labels[class]);
            }
        }
        Ok(())
    }

    fn rank_files(&self, model: AudioClip, labels: &[String], files: &[PathBuf], device: &Device) -> anyhow::Result<Option<Vec<Vec<(usize, f32)>>>> {
        self.rank(&model, labels, files, device).map(Some)
    }
}

/// The name of the zero-shot audio command.
pub const CLASSIFY_AUDIO: &str = "classify-audio";

/// Arguments of `clipforge classify-audio`.
#[derive(Debug, Clone, clap::Args)]
pub struct ClassifyAudioArgs {
    /// Comma-separated class names (each turned into `audioclip.prompt`).
    #[arg(long)]
    pub labels: String,
    /// Audio files to classify (WAV, FLAC, MP3, OGG).
    #[arg(required = true)]
    pub audio: Vec<PathBuf>,
    /// How many labels to print per file.
    #[arg(long, default_value_t = 5)]
    pub top: usize,
}

/// `clipforge classify-audio MODEL --labels a,b,c FILE...`: zero-shot audio classification.
pub fn classify_audio_command() -> clap::Command {
    use clap::Args;
    ClassifyAudioArgs::augment_args(
        clap::Command::new(CLASSIFY_AUDIO)
            .about("Rank labels for audio files with an AudioCLIP run (zero-shot, audio against label prompts)"),
    )
}

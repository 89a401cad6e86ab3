//! The training loop, for any [`Objective`] (contrastive, supervised, distillation): AdamW
//! (no weight decay on gains, biases, the class embedding and the logit scale, as open_clip),
//! warm-up and cosine learning rate,
//! global gradient-norm clipping, frozen parameter groups, checkpoints with exact resume,
//! `metrics.jsonl` and TensorBoard event files, a progress bar, and an evaluation and
//! `summary.json` at the end.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use burn::module::{Module, ModuleVisitor, Param, ParamGroup};
use burn::optim::{AdamWConfig, GradientsAccumulator, GradientsParams, ModuleOptimizer};
use burn::tensor::{Device, FloatDType, Tensor, TensorData};
use clip_core::preprocess::{EvalTransformConfig, TrainTransformConfig, stack_images};
use clip_core::{Clip, ClipConfig, ClipTokenizer, ImageTower, Objective, ZeroShotClassifier, weights};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use tensorboard_rs::summary_writer::SummaryWriter;

use crate::checkpoint::{Checkpoints, TrainState};
use crate::config::RunConfig;
use crate::data::{BatchSource, Batcher, LoadedBatch, PairBatch, PairTable, Schedule, Transform, prefetch};
use crate::embeddings_file::write_embeddings;
use crate::eval::{class_indices, class_names, evaluate, templates};
use crate::lr::{LrPolicy, learning_rate};
use crate::objectives::{
    ContrastiveBatch, ContrastiveLoss, ContrastiveObjective, DistillationBatch, DistillationLoss, DistillationObjective, ImageClassifier,
    LabelledBatch, SupervisedObjective,
};
use crate::params::freeze;

/// Parameters open_clip trains without weight decay: every one-dimensional parameter.
const NO_WEIGHT_DECAY: &str = r"(\.bias|\.gamma|\.beta|class_embedding|logit_scale)$";

/// What a finished run reports in `summary.json`.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Optimizer steps completed.
    pub steps: usize,
    /// Training samples consumed.
    pub samples: usize,
    /// Seconds spent in training steps (data loading included, evaluation excluded).
    pub train_seconds: f64,
    /// Training throughput.
    pub samples_per_second: f64,
    /// Loss of the last step.
    pub final_loss: f64,
    /// Training samples skipped because their image could not be read.
    pub skipped_samples: usize,
    /// Zero-shot top-1 accuracy on the validation table.
    pub zero_shot_top1: Option<f64>,
    /// Zero-shot top-5 accuracy on the validation table.
    pub zero_shot_top5: Option<f64>,
    /// Top-1 accuracy of chance.
    pub chance_top1: Option<f64>,
    /// Full evaluation report of the objective (zero-shot and retrieval for contrastive
    /// runs, top-1/top-5 for supervised ones, teacher cosine for distillation).
    pub eval: Option<serde_json::Value>,
    /// The final checkpoint.
    pub checkpoint: PathBuf,
}

/// The device a config names; GPU backends need the matching cargo feature.
pub fn select_device(name: &str) -> anyhow::Result<Device> {
    match name {
        "flex" => Ok(Device::flex()),
        #[cfg(feature = "wgpu")]
        "wgpu" => Ok(Device::wgpu(burn::tensor::DeviceKind::default())),
        #[cfg(feature = "cuda")]
        "cuda" => Ok(Device::cuda(0)),
        other => bail!(
            "run.device = {other:?}: this clipforge was built without the {other} backend; \
             rebuild with `cargo build --release -p clip-train --features {other}`"
        ),
    }
}

/// Makes `precision` (`f32`, `bf16`, `f16`) the float type of every tensor created on `device`.
pub fn set_precision(device: &mut Device, precision: &str) -> anyhow::Result<()> {
    let dtype = match precision {
        "f32" => return Ok(()),
        "bf16" => FloatDType::BF16,
        "f16" => FloatDType::F16,
        other => bail!("run.precision = {other:?}: use \"f32\", \"bf16\" or \"f16\""),
    };
    if !device.supports_dtype(dtype) {
        bail!("run.precision = {precision:?} is not supported by the {device:?} backend");
    }
    device
        .configure(dtype)
        .map_err(|e| anyhow::anyhow!("run.precision = {precision:?}: {e:?}"))
}

/// A CLIP from `weights`: a run's checkpoint folder (`model.bpk`, architecture `name`), a
/// Hugging Face `CLIPModel` directory (which brings its own `config.json`), or an open_clip /
/// OpenAI checkpoint file (architecture `name`); freshly initialized when `weights` is `None`.
pub fn load_model(name: &str, weights: Option<&Path>, device: &Device) -> anyhow::Result<(Clip, ClipConfig)> {
    let Some(weights) = weights else {
        let config = ClipConfig::from_name_or_path(name)?;
        return Ok((config.init(device), config));
    };
    let run_checkpoint = weights.join("model.bpk");
    if run_checkpoint.is_file() {
        let config = ClipConfig::from_name_or_path(name)?;
        let model = config
            .init(device)
            .try_load_file(&run_checkpoint)
            .map_err(|e| anyhow::anyhow!("{}: {e}", run_checkpoint.display()))?;
        Ok((model, config))
    } else if weights.is_dir() {
        Ok(weights::load_hugging_face(weights, device)?)
    } else {
        let config = ClipConfig::from_name_or_path(name)?;
        Ok((weights::load_clip(weights, &config, device)?, config))
    }
}

/// Trains as `config` says, writing everything under `output`; with `resume`, continues
/// from the newest checkpoint there.
pub fn train(config: &RunConfig, output: &Path, resume: bool) -> anyhow::Result<Summary> {
    let mut device = select_device(&config.run.device)?;
    set_precision(&mut device, &config.run.precision)?;
    device.seed(config.run.seed);
    let train_device = device.clone().autodiff();
    std::fs::create_dir_all(output).with_context(|| format!("creating {}", output.display()))?;
    std::fs::write(output.join("config.json"), serde_json::to_string_pretty(config)?)
        .with_context(|| format!("writing {}", output.join("config.json").display()))?;
    let run = Run { config, output, resume };
    if matches!(config.train.objective.as_str(), "groupvit" | "lseg") {
        return crate::segmentation::train_segmentation(&run, &device, &train_device);
    }
    if matches!(config.train.objective.as_str(), "clip4clip" | "actionclip") {
        return crate::video::train_video(&run, &device, &train_device);
    }
    if matches!(config.train.objective.as_str(), "vild" | "glip") {
        return crate::detection::train_detection(&run, &device, &train_device);
    }
    let (model, clip_config) = load_model(&config.model.name, config.model.weights.as_deref(), &train_device)?;
    let model = freeze(model, &config.train.freeze)?;
    let tokenizer = ClipTokenizer::new().with_context_length(clip_config.text.context_length)?;
    let image_size = clip_config.vision.image_size();
    let (train_table, val_table) = config.tables()?;
    let batcher = train_batcher(config, train_table.clone(), &tokenizer, image_size)?;

    match config.train.objective.as_str() {
        "contrastive" => {
            let context = tokenizer.context_length();
            let to_batch = |batch: PairBatch| -> anyhow::Result<ContrastiveBatch> {
                let rows = batch.rows.len();
                Ok(ContrastiveBatch {
                    images: stack_images(&batch.images, &train_device)?,
                    tokens: Tensor::from_data(TensorData::new(batch.tokens, [rows, context]), &train_device),
                })
            };
            let loss = if config.train.loss == "siglip" { ContrastiveLoss::SigLip } else { ContrastiveLoss::InfoNce };
            if loss == ContrastiveLoss::SigLip && model.logit_bias.is_none() {
                bail!(
                    "train.loss = \"siglip\" needs a model with a logit bias: set \"init_logit_bias\" in the \
                     model config {} (open_clip's SigLIP configs use -10, with init_logit_scale ln 10)",
                    config.model.name
                );
            }
            let fitted = run.fit(&ContrastiveObjective { loss }, model, &batcher, to_batch)?;
            let eval = match val_table {
                Some(val) => {
                    let batcher = eval_batcher(config, val, &tokenizer, image_size);
                    let report = evaluate(&fitted.model.valid(), &batcher, &tokenizer, &config.eval, &device)?;
                    Some(serde_json::to_value(report)?)
                }
                None => None,
            };
            run.finish(fitted.outcome, eval)
        }
        "supervised" => {
            let classes = class_names(&config.eval, batcher.table())?;
            let visual = if config.train.zero_shot_head {
                let templates = templates(&config.eval);
                let zero_shot = ZeroShotClassifier::build(&model.valid(), &tokenizer, &classes, &templates, &device)?;
                ImageClassifier::from_zero_shot(model.visual, &zero_shot, &train_device)
            } else {
                ImageClassifier::new(model.visual, clip_config.embed_dim, classes.len(), &train_device)
            };
            let to_batch = |batch: PairBatch| -> anyhow::Result<LabelledBatch> {
                let labels = class_indices(batcher.table(), &batch.rows, &classes)?;
                Ok(LabelledBatch {
                    images: stack_images(&batch.images, &train_device)?,
                    labels: Tensor::from_data(TensorData::new(labels, [batch.rows.len()]), &train_device),
                })
            };
            let smoothing = Some(config.train.label_smoothing as f32).filter(|s| *s > 0.0);
            let objective = SupervisedObjective { label_smoothing: smoothing };
            let fitted = run.fit(&objective, visual, &batcher, to_batch)?;
            let eval = match val_table {
                Some(val) => {
                    let batcher = eval_batcher(config, val, &tokenizer, image_size);
                    let report = evaluate_classifier(&fitted.model.valid(), &batcher, &classes, config, &device)?;
                    Some(report)
                }
                None => None,
            };
            run.finish(fitted.outcome, eval)
        }
        "distillation" => {
            let distill = config.distill.as_ref().context("[distill] section missing")?;
            let (teacher, teacher_config) = load_model(&distill.teacher_model, Some(&distill.teacher_weights), &device)?;
            anyhow::ensure!(
                teacher_config.embed_dim == clip_config.embed_dim,
                "distill.teacher_model embeds in {} dimensions but model.name in {}",
                teacher_config.embed_dim,
                clip_config.embed_dim
            );
            let cache = distill.cache.clone().unwrap_or_else(|| output.join("teacher_embeddings.safetensors"));
            let teacher_batcher = eval_batcher(config, train_table, &tokenizer, teacher_config.vision.image_size());
            let targets = teacher_embeddings(&teacher, &teacher_batcher, &cache, config.eval.batch_size, &device)?;
            let dim = clip_config.embed_dim;
            let to_batch = |batch: PairBatch| -> anyhow::Result<DistillationBatch> {
                let values: Vec<f32> = batch.rows.iter().flat_map(|&r| targets[r * dim..(r + 1) * dim].iter().copied()).collect();
                Ok(DistillationBatch {
                    images: stack_images(&batch.images, &train_device)?,
                    teacher: Tensor::from_data(TensorData::new(values, [batch.rows.len(), dim]), &train_device),
                })
            };
            let loss = if distill.loss == "l2" { DistillationLoss::L2 } else { DistillationLoss::L1 };
            let fitted = run.fit(&DistillationObjective { loss }, model.visual, &batcher, to_batch)?;
            let eval = match val_table {
                Some(val) => {
                    let student = fitted.model.valid();
                    let batcher = eval_batcher(config, val.clone(), &tokenizer, image_size);
                    let teacher_batcher = eval_batcher(config, val, &tokenizer, teacher_config.vision.image_size());
                    Some(evaluate_distillation(&student, &teacher, &batcher, &teacher_batcher, config, &device)?)
                }
                None => None,
            };
            run.finish(fitted.outcome, eval)
        }
        other => bail!("train.objective = {other:?} is not known"),
    }
}

/// A batcher over `table` with the training transform.
pub(crate) fn train_batcher(config: &RunConfig, table: PairTable, tokenizer: &ClipTokenizer, image_size: usize) -> anyhow::Result<Batcher> {
    let transform = TrainTransformConfig::new()
        .with_image_size(image_size)
        .with_scale(config.data.crop_scale)
        .init()?;
    Ok(Batcher::new(
        table,
        tokenizer.clone(),
        Transform::Train(transform),
        config.data.workers,
        config.data.skip_bad_samples,
        config.run.seed,
    ))
}

/// A batcher over `table` with the evaluation transform.
pub fn eval_batcher(config: &RunConfig, table: PairTable, tokenizer: &ClipTokenizer, image_size: usize) -> Batcher {
    Batcher::new(
        table,
        tokenizer.clone(),
        Transform::Eval(EvalTransformConfig::new().with_image_size(image_size).init()),
        config.data.workers,
        config.data.skip_bad_samples,
        config.run.seed,
    )
}

/// Normalized image embeddings of every row of `batcher`'s table, `[rows * dim]`.
fn image_embeddings(visual: &ImageTower, batcher: &Batcher, batch_size: usize, device: &Device) -> anyhow::Result<Vec<f32>> {
    let rows: Vec<usize> = (0..batcher.table().pairs.len()).collect();
    let mut values = Vec::new();
    for chunk in rows.chunks(batch_size.max(1)) {
        let batch = batcher.batch(chunk, 0)?;
        anyhow::ensure!(batch.rows.len() == chunk.len(), "{}", batch.skipped.first().map(|e| e.to_string()).unwrap_or_default());
        let embeds = clip_core::l2_normalize(visual.forward(stack_images(&batch.images, device)?));
        values.extend(embeds.into_data().iter::<f32>());
    }
    Ok(values)
}

/// The teacher's embeddings of the training images, from `cache` when it matches the table,
/// computed and cached otherwise.
fn teacher_embeddings(teacher: &Clip, batcher: &Batcher, cache: &Path, batch_size: usize, device: &Device) -> anyhow::Result<Vec<f32>> {
    let rows = batcher.table().pairs.len();
    if cache.is_file() {
        let tensors = clip_core::weights::Checkpoint::read(cache)?.tensors;
        if let Some(cached) = tensors.get("embeddings").filter(|t| t.shape.first() == Some(&rows)) {
            eprintln!("teacher embeddings from {}", cache.display());
            return Ok(cached.values.clone());
        }
    }
    eprintln!("computing teacher embeddings of {rows} images into {}", cache.display());
    let values = image_embeddings(&teacher.visual, batcher, batch_size, device)?;
    write_embeddings(cache, values.clone(), [rows, values.len() / rows.max(1)])?;
    Ok(values)
}

/// Top-1 and top-5 accuracy of a classifier on the labelled table of `batcher`.
fn evaluate_classifier(
    model: &ImageClassifier,
    batcher: &Batcher,
    classes: &[String],
    config: &RunConfig,
    device: &Device,
) -> anyhow::Result<serde_json::Value> {
    let rows: Vec<usize> = (0..batcher.table().pairs.len()).collect();
    let (mut top1, mut top5, mut samples) = (0usize, 0usize, 0usize);
    for chunk in rows.chunks(config.eval.batch_size) {
        let batch = batcher.batch(chunk, 0)?;
        if batch.rows.is_empty() {
            continue;
        }
        let targets = class_indices(batcher.table(), &batch.rows, classes)?;
        let logits = model.forward(stack_images(&batch.images, device)?);
        let [n, k] = logits.dims();
        let values: Vec<f32> = logits.into_data().iter::<f32>().collect();
        for (row, target) in values.chunks(k).zip(&targets) {
            let better = row.iter().filter(|&&v| v > row[*target as usize]).count();
            top1 += usize::from(better < 1);
            top5 += usize::from(better < 5);
        }
        samples += n;
    }
    anyhow::ensure!(samples > 0, "{}: no readable image to evaluate", batcher.table().path.display());
    Ok(serde_json::json!({
        "samples": samples,
        "top1": top1 as f64 / samples as f64,
        "top5": top5 as f64 / samples as f64,
        "chance_top1": 1.0 / classes.len() as f64,
    }))
}

/// Mean cosine similarity between student and teacher embeddings of the validation images.
fn evaluate_distillation(
    student: &ImageTower,
    teacher: &Clip,
    batcher: &Batcher,
    teacher_batcher: &Batcher,
    config: &RunConfig,
    device: &Device,
) -> anyhow::Result<serde_json::Value> {
    let ours = image_embeddings(student, batcher, config.eval.batch_size, device)?;
    let theirs = image_embeddings(&teacher.visual, teacher_batcher, config.eval.batch_size, device)?;
    let rows = batcher.table().pairs.len();
    let cosine = ours.iter().zip(&theirs).map(|(a, b)| f64::from(a * b)).sum::<f64>() / rows as f64;
    Ok(serde_json::json!({ "samples": rows, "teacher_cosine": cosine }))
}

/// The parts of a run every objective shares.
pub(crate) struct Run<'a> {
    pub(crate) config: &'a RunConfig,
    pub(crate) output: &'a Path,
    pub(crate) resume: bool,
}

/// A trained model and how the training went.
pub(crate) struct Fitted<M> {
    pub(crate) model: M,
    pub(crate) outcome: Outcome,
}

pub(crate) struct Outcome {
    state: TrainState,
    last_loss: f64,
    checkpoint: PathBuf,
    /// The run's one event writer: tensorboard-rs names files by second and process, so a
    /// second writer opened within the same second would truncate the first one's file.
    tensorboard: SummaryWriter,
}

impl Run<'_> {
    /// The training loop, for any objective: batches from `batcher` turned into the
    /// objective's batches by `to_batch`, AdamW steps, checkpoints, logs.
    pub(crate) fn fit<O: Objective, S: BatchSource>(
        &self,
        objective: &O,
        mut model: O::Model,
        source: &S,
        to_batch: impl Fn(S::Batch) -> anyhow::Result<O::Batch>,
    ) -> anyhow::Result<Fitted<O::Model>> {
        let (config, output) = (self.config, self.output);
        let t = &config.train;
        let adamw = AdamWConfig::new()
            .with_beta_1(t.beta1 as f32)
            .with_beta_2(t.beta2 as f32)
            .with_epsilon(t.eps as f32)
            .with_weight_decay(t.weight_decay as f32);
        let no_decay = ParamGroup::from_regex(NO_WEIGHT_DECAY).map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let mut optimizer: ModuleOptimizer = adamw.init().with_group(no_decay, adamw.with_weight_decay(0.0).build(), None);

        let lr_policy = LrPolicy::new(&model, t)?;

        let checkpoints = Checkpoints::new(output, t.keep_checkpoints);
        let mut state = TrainState::default();
        if self.resume {
            match checkpoints.latest()? {
                Some(dir) => {
                    (model, optimizer, state) = Checkpoints::load(&dir, model, optimizer)?;
                    eprintln!("resuming from {} (step {})", dir.display(), state.step);
                }
                None => eprintln!("--resume: no checkpoint under {}, starting fresh", output.display()),
            }
        } else if checkpoints.latest()?.is_some() {
            bail!(
                "{} already holds checkpoints: pass --resume to continue that run, or choose another --output",
                output.display()
            );
        }

        let schedule = Schedule::new(source.rows(), t.batch_size, config.run.seed);
        if schedule.steps_per_epoch() == 0 {
            bail!(
                "train.batch_size = {} is larger than the {} rows of {}",
                t.batch_size,
                source.rows(),
                config.data.train.display()
            );
        }
        // An optimizer step consumes `accumulate` consecutive batches of the schedule.
        let accumulate = t.accumulate_batches.max(1);
        let steps_per_epoch = schedule.steps_per_epoch() / accumulate;
        if steps_per_epoch == 0 {
            bail!(
                "train.accumulate_batches = {accumulate} batches of {} exceed the {} rows of {}",
                t.batch_size,
                source.rows(),
                config.data.train.display()
            );
        }
        let mut total_steps = steps_per_epoch * t.epochs;
        if t.max_steps > 0 {
            total_steps = total_steps.min(t.max_steps);
        }

        let mut metrics = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(output.join("metrics.jsonl"))
            .with_context(|| format!("opening {}", output.join("metrics.jsonl").display()))?;
        let mut tensorboard = SummaryWriter::new(output.join("tensorboard"));
        let progress = ProgressBar::new(total_steps as u64).with_position(state.step as u64);
        progress.set_style(
            ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} steps, ETA {eta} {msg}")
                .expect("valid template")
                .progress_chars("=> "),
        );

        let batches = prefetch(source.clone(), schedule.clone(), state.step * accumulate..total_steps * accumulate, 2);
        let mut last_loss = f64::NAN;
        let mut last_checkpoint = checkpoints.latest()?;
        let started = Instant::now();
        let time_before = state.train_seconds;
        for step in state.step..total_steps {
            let mut accumulator = GradientsAccumulator::<O::Model>::new();
            let (mut samples, mut batches_used, mut loss_sum, mut step_metrics) = (0, 0, 0.0, Vec::new());
            for _ in 0..accumulate {
                let Ok((_, batch)) = batches.recv() else { break };
                let batch = batch?;
                state.skipped += batch.skipped().len();
                for skipped in batch.skipped() {
                    progress.suspend(|| eprintln!("skipped: {skipped}"));
                }
                if batch.rows().is_empty() {
                    continue;
                }
                samples += batch.rows().len();
                batches_used += 1;
                let output_of_batch = objective.forward(&model, to_batch(batch)?);
                let loss_value = f64::from(output_of_batch.loss.clone().into_scalar::<f32>());
                if !loss_value.is_finite() {
                    let kept = last_checkpoint
                        .as_ref()
                        .map(|p| format!("the last good checkpoint is {}", p.display()))
                        .unwrap_or_else(|| "no checkpoint was written yet".into());
                    bail!("loss is {loss_value} at step {}: stopping ({kept}); try a lower train.lr", step + 1);
                }
                loss_sum += loss_value;
                step_metrics = output_of_batch.metrics;
                accumulator.accumulate(&model, GradientsParams::from_grads(output_of_batch.loss.backward(), &model));
            }
            if batches_used == 0 {
                // Every image of this step was unreadable and skipped.
                state.step = step + 1;
                continue;
            }
            let mut grads = accumulator.grads();
            if batches_used > 1 {
                scale_gradients(&model, &mut grads, 1.0 / batches_used as f32);
            }
            let loss_value = loss_sum / batches_used as f64;
            if t.grad_clip_norm > 0.0 {
                clip_global_norm(&model, &mut grads, t.grad_clip_norm);
            }
            let lr = learning_rate(t.lr, step, t.warmup_steps, total_steps, t.schedule == "cosine");
            model = objective.after_update(optimizer.step(lr_policy.at(lr), model, grads));

            state.step = step + 1;
            state.samples += samples;
            state.train_seconds = time_before + started.elapsed().as_secs_f64();
            last_loss = loss_value;
            let rate = (state.samples as f64 / state.train_seconds.max(1e-9)).round();
            progress.set_position(state.step as u64);
            progress.set_message(format!("loss {loss_value:.4}, {rate} samples/s"));
            if state.step % t.log_every.max(1) == 0 || state.step == total_steps {
                let mut line = serde_json::json!({
                    "step": state.step,
                    "epoch": step / steps_per_epoch,
                    "loss": loss_value,
                    "lr": lr,
                    "samples_per_second": rate,
                    "skipped_samples": state.skipped,
                });
                tensorboard.add_scalar("train/loss", loss_value as f32, state.step);
                tensorboard.add_scalar("train/lr", lr as f32, state.step);
                tensorboard.add_scalar("train/samples_per_second", rate as f32, state.step);
                for (name, value) in &step_metrics {
                    line[*name] = serde_json::json!(value);
                    tensorboard.add_scalar(&format!("train/{name}"), *value as f32, state.step);
                }
                writeln!(metrics, "{line}").context("writing metrics.jsonl")?;
            }
            if t.checkpoint_every > 0 && state.step % t.checkpoint_every == 0 && state.step < total_steps {
                last_checkpoint = Some(checkpoints.save(&model, &optimizer, &state)?);
            }
        }
        if state.step < total_steps {
            bail!("the data ran out at step {} of {total_steps}", state.step);
        }
        progress.finish();
        let checkpoint = match last_checkpoint.filter(|p| p.ends_with(format!("step-{:08}", state.step))) {
            Some(done) => done,
            None => checkpoints.save(&model, &optimizer, &state)?,
        };
        Ok(Fitted {
            model,
            outcome: Outcome { state, last_loss, checkpoint, tensorboard },
        })
    }

    /// Logs the evaluation and writes `summary.json`.
    pub(crate) fn finish(&self, outcome: Outcome, eval: Option<serde_json::Value>) -> anyhow::Result<Summary> {
        let Outcome { state, last_loss, checkpoint, mut tensorboard } = outcome;
        if let Some(serde_json::Value::Object(report)) = &eval {
            for (name, value) in report {
                let values: Vec<f64> = match value {
                    serde_json::Value::Array(items) => items.iter().filter_map(|v| v.as_f64()).collect(),
                    other => other.as_f64().into_iter().collect(),
                };
                for (i, v) in values.iter().enumerate() {
                    let tag = if values.len() == 1 { format!("eval/{name}") } else { format!("eval/{name}_{i}") };
                    tensorboard.add_scalar(&tag, *v as f32, state.step);
                }
            }
        }
        // Dropping the writer joins its thread, which writes everything out.
        drop(tensorboard);
        let field = |name: &str| eval.as_ref().and_then(|e| e.get(name)).and_then(|v| v.as_f64());
        let summary = Summary {
            steps: state.step,
            samples: state.samples,
            train_seconds: state.train_seconds,
            samples_per_second: state.samples as f64 / state.train_seconds.max(1e-9),
            final_loss: last_loss,
            skipped_samples: state.skipped,
            zero_shot_top1: field("zero_shot_top1"),
            zero_shot_top5: field("zero_shot_top5"),
            chance_top1: field("chance_top1"),
            eval,
            checkpoint,
        };
        clip_core::weights::write_atomically(
            &self.output.join("summary.json"),
            serde_json::to_string_pretty(&summary)?.as_bytes(),
        )?;
        Ok(summary)
    }
}

/// Scales all gradients so that their global L2 norm is at most `max_norm`
/// (`torch.nn.utils.clip_grad_norm_`).
fn clip_global_norm<M: Module>(model: &M, grads: &mut GradientsParams, max_norm: f64) {
    struct SquaredNorm<'a> {
        grads: &'a GradientsParams,
        total: f64,
    }
    impl ModuleVisitor for SquaredNorm<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(grad) = self.grads.get::<D>(param.id) {
                self.total += f64::from(grad.square().sum().into_scalar::<f32>());
            }
        }
    }
    let mut norm = SquaredNorm { grads, total: 0.0 };
    model.visit(&mut norm);
    let norm = norm.total.sqrt();
    if norm > max_norm {
        scale_gradients(model, grads, (max_norm / (norm + 1e-6)) as f32);
    }
}

/// Multiplies every gradient of `model`'s parameters by `factor`.
fn scale_gradients<M: Module>(model: &M, grads: &mut GradientsParams, factor: f32) {
    struct Scale<'a> {
        grads: &'a mut GradientsParams,
        factor: f32,
    }
    impl ModuleVisitor for Scale<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(grad) = self.grads.remove::<D>(param.id) {
                self.grads.register(param.id, grad.mul_scalar(self.factor));
            }
        }
    }
    model.visit(&mut Scale { grads, factor });
}

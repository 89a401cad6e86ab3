//! The training loop, for any [`Task`]: AdamW (no weight decay on parameters of fewer than two
//! dimensions, open_clip's rule), warm-up and cosine learning rate, global gradient-norm
//! clipping, frozen parameter groups, checkpoints with exact resume, `metrics.jsonl` and
//! TensorBoard event files, a progress bar, and the task's evaluation and `summary.json` at
//! the end. [`train_task`] is the entry point for research code; [`train`] runs a config.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::{AdamWConfig, GradientsAccumulator, GradientsParams, ModuleOptimizer};
use burn::tensor::{Device, Tensor};
use clip_core::Objective;
use clip_task::data::{BatchSource, LoadedBatch, Schedule, prefetch};
use clip_task::eval::PeriodicZeroShot;
use clip_task::{Task, TaskModel};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use tensorboard_rs::summary_writer::SummaryWriter;

use crate::checkpoint::{Checkpoints, TrainState};
use crate::config::{RunConfig, RunSection, TrainSection, parse_device};
use crate::lr::{LrPolicy, learning_rate};
use crate::parallel::parallel_gradients;
use crate::params::{freeze, lock_image, rank_group};
use crate::precision::{Precision, check_support};
use crate::registry;

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

/// The device of a backend's name (`flex`, `wgpu`, `cuda`); GPU backends need the matching
/// cargo feature.
pub fn select_device(name: &str) -> anyhow::Result<Device> {
    match name {
        "flex" => Ok(Device::flex()),
        #[cfg(feature = "wgpu")]
        "wgpu" => Ok(Device::wgpu(burn::tensor::DeviceKind::default())),
        #[cfg(feature = "cuda")]
        "cuda" => Ok(Device::cuda(0)),
        // A GPU backend this build lacks (the arms above take those it has).
        gpu if ["wgpu", "cuda"].contains(&gpu) => bail!(
            "{gpu:?}: this clipforge was built without the {gpu} backend; \
             rebuild with `cargo build --release -p clip-train --features {gpu}`"
        ),
        other => bail!("{other:?}: unknown backend (flex, wgpu or cuda)"),
    }
}

/// The devices of `run`: those of `run.devices` (`"cuda:1"`, `"wgpu:0"`, `"flex"`), or the one
/// device of `run.device`; a device this machine does not have is an error naming it.
pub fn select_devices(run: &RunSection) -> anyhow::Result<Vec<Device>> {
    if run.devices.is_empty() {
        return Ok(vec![select_device(run.backend()).context("run.device")?]);
    }
    run.devices
        .iter()
        .enumerate()
        .map(|(i, spec)| {
            let (backend, index) = parse_device(spec).map_err(|e| anyhow::anyhow!("run.devices[{i}] = {spec:?}: {e}"))?;
            let Some(index) = index else { return select_device(backend).with_context(|| format!("run.devices[{i}] = {spec:?}")) };
            let found = available_devices(backend).with_context(|| format!("run.devices[{i}] = {spec:?}"))?;
            found.get(index).cloned().with_context(|| {
                format!(
                    "run.devices[{i}] = {spec:?}: this machine has {} {backend} device{} ({backend}:0 to {backend}:{})",
                    found.len(),
                    if found.len() == 1 { "" } else { "s" },
                    found.len().saturating_sub(1)
                )
            })
        })
        .collect()
}

/// The devices of `backend` this machine has, in burn's order (its `Device::enumerate`).
fn available_devices(backend: &str) -> anyhow::Result<Vec<Device>> {
    match backend {
        #[cfg(feature = "cuda")]
        "cuda" => Ok(Device::enumerate(burn::tensor::DeviceType::Cuda).into_vec()),
        #[cfg(feature = "wgpu")]
        "wgpu" => Ok(Device::enumerate(burn::tensor::DeviceType::Wgpu).into_vec()),
        other => {
            select_device(other)?;
            bail!("the {other} backend has one device: write {other:?} without an index")
        }
    }
}

/// Prepares `devices` for `run.precision = precision` and says how the run computes: a pure
/// half type (`pure-bf16`, `pure-f16`) becomes the default float type of every device, before
/// any tensor is created there; the mixed types (`bf16`, `f16`) leave the devices in f32 and
/// are checked against the backend.
pub fn set_precision(devices: &mut [Device], precision: &str) -> anyhow::Result<Precision> {
    let (mode, default) = Precision::parse(precision).map_err(anyhow::Error::msg)?;
    let mut configured: Vec<Device> = Vec::new();
    for device in devices.iter_mut() {
        if let Some(dtype) = mode.compute_dtype() {
            check_support(device, dtype, precision)?;
        }
        let Some(dtype) = default else { continue };
        // The CPU device listed several times (simulated ranks) is configured once.
        if configured.contains(device) {
            continue;
        }
        check_support(device, dtype, precision)?;
        device
            .configure(dtype)
            .map_err(|e| anyhow::anyhow!("run.precision = {precision:?}: {e:?}"))?;
        configured.push(device.clone());
    }
    Ok(mode)
}

/// Where and how the training step runs (`[run]`'s devices and precision).
///
/// With several devices, a step is data-parallel (`crate::parallel`): the batch is split into
/// one shard per device, each device computes its shard's features on a replica of the model
/// (`Module::fork`, as burn-train's multi-device strategy does), the features are gathered with
/// gradient (`clip_core::loss::all_gather`), the contrastive loss sees the global batch, and
/// every replica's gradients are moved to the first device (`GradientsParams::to_device`) and
/// summed there, where the optimizer steps. The first device also runs the evaluation.
#[derive(Debug, Clone)]
pub struct Execution {
    /// The devices, without autodiff (the trainer adds it); the first is the master.
    pub devices: Vec<Device>,
    /// f32, mixed or pure half precision.
    pub precision: Precision,
}

impl Execution {
    /// One device, in its own float type.
    pub fn single(device: Device) -> Self {
        Self { devices: vec![device], precision: Precision::Uniform }
    }
}

/// Trains as `config` says, writing everything under `output`; with `resume`, continues
/// from the newest checkpoint there.
pub fn train(config: &RunConfig, output: &Path, resume: bool) -> anyhow::Result<Summary> {
    let mut devices = select_devices(&config.run)?;
    let precision = set_precision(&mut devices, &config.run.precision)?;
    std::fs::create_dir_all(output).with_context(|| format!("creating {}", output.display()))?;
    std::fs::write(output.join("config.json"), serde_json::to_string_pretty(config)?)
        .with_context(|| format!("writing {}", output.join("config.json").display()))?;
    let task = registry::task(&config.train.objective).map_err(anyhow::Error::msg)?;
    let section = task.section().and_then(|key| config.sections.get(key));
    task.train(section, config.context(output), &config.train, &Execution { devices, precision }, resume)
}

/// Trains `task` on `device` (autodiff is added here) as `train` says, writing checkpoints,
/// metrics and `summary.json` under `output`; with `resume`, continues from the newest
/// checkpoint there. The task's evaluation runs at the end on `device`.
pub fn train_task<T: Task>(task: T, train: &TrainSection, device: &Device, output: &Path, resume: bool) -> anyhow::Result<Summary> {
    train_task_with(task, train, &Execution::single(device.clone()), output, resume)
}

/// [`train_task`] on the devices and in the precision of `execution`.
pub fn train_task_with<T: Task>(mut task: T, train: &TrainSection, execution: &Execution, output: &Path, resume: bool) -> anyhow::Result<Summary> {
    std::fs::create_dir_all(output).with_context(|| format!("creating {}", output.display()))?;
    let device = execution.devices.first().context("run.devices lists no device")?;
    device.seed(task.run().seed);
    let autodiff = |device: &Device| {
        let device = device.clone().autodiff();
        if train.grad_checkpointing { device.gradient_checkpointing() } else { device }
    };
    let train_devices: Vec<Device> = execution.devices.iter().map(autodiff).collect();
    let train_device = train_devices[0].clone();
    let mut model = freeze(task.model(&train_device)?, &train.freeze)?;
    if train.lock_image {
        model = lock_image(model, train.lock_image_unlocked_groups)?;
    }
    let source = task.train_source(&model, &train_device)?;
    let objective = task.objective();
    if train.accum_freq > 1 && objective.feature_loss().is_none() {
        bail!(
            "train.accum_freq = {} needs an objective whose loss is computed from the whole batch's features \
             (`contrastive`); train.objective = {:?} has none: use train.accumulate_batches, which averages \
             per-batch gradients",
            train.accum_freq,
            task.run().objective
        );
    }
    if train_devices.len() > 1 && objective.feature_loss().is_none() {
        bail!(
            "run.devices lists {} devices: data parallelism needs an objective whose loss is computed from the \
             batch's features (`contrastive`), and train.objective = {:?} has none",
            train_devices.len(),
            task.run().objective
        );
    }
    let run = Run {
        train,
        output,
        resume,
        seed: task.run().seed,
        data: &task.run().data.train,
        objective: &task.run().objective,
        devices: &train_devices,
        precision: execution.precision,
    };
    let zero_shot = PeriodicZeroShot::new(task.run())?;
    let periodic = |model: &TaskModel<T>, step: usize| match &zero_shot {
        Some(zero_shot) if step % zero_shot.every == 0 => Ok(Some(zero_shot.run(&task.clip(model.clone().valid(), device)?, device)?)),
        _ => Ok(None),
    };
    let fitted = run.fit(&objective, model, &source, |batch| task.to_batch(batch, &train_device), periodic)?;
    let eval = task.evaluate(&fitted.model.valid(), device)?;
    run.finish(fitted.outcome, eval)
}

/// The parts of a run every task shares.
struct Run<'a> {
    train: &'a TrainSection,
    output: &'a Path,
    resume: bool,
    seed: u64,
    /// The training data, named in errors.
    data: &'a Path,
    /// `train.objective`, named in errors.
    objective: &'a str,
    /// The training devices (autodiff); the first holds the model and the optimizer.
    devices: &'a [Device],
    /// f32, mixed or pure half precision.
    precision: Precision,
}

/// A trained model and how the training went.
struct Fitted<M> {
    model: M,
    outcome: Outcome,
}

struct Outcome {
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
    fn fit<O: Objective, S: BatchSource>(
        &self,
        objective: &O,
        mut model: O::Model,
        source: &S,
        to_batch: impl Fn(S::Batch) -> anyhow::Result<O::Batch>,
        periodic: impl Fn(&O::Model, usize) -> anyhow::Result<Option<[(&'static str, f64); 2]>>,
    ) -> anyhow::Result<Fitted<O::Model>> {
        let (t, output) = (self.train, self.output);
        let checkpoints = Checkpoints::new(output, t.keep_checkpoints);
        let mut state = TrainState::default();
        let resume_from = match checkpoints.latest()? {
            Some(dir) if self.resume => Some(dir),
            None if self.resume => {
                eprintln!("--resume: no checkpoint under {}, starting fresh", output.display());
                None
            }
            Some(_) => bail!(
                "{} already holds checkpoints: pass --resume to continue that run, or choose another --output",
                output.display()
            ),
            None => None,
        };
        if let Some(dir) = &resume_from {
            (model, state) = Checkpoints::load_model(dir, model)?;
        }
        // Groups match parameters by id, which a loaded checkpoint brings: build them now.
        let mut optimizer = adamw(t, &model);
        let lr_policy = LrPolicy::new(&model, t)?;
        if let Some(dir) = &resume_from {
            optimizer = Checkpoints::load_optimizer(dir, optimizer)?;
            eprintln!("resuming from {} (step {})", dir.display(), state.step);
        }

        let schedule = Schedule::new(source.rows(), t.batch_size, self.seed).with_shuffle(source.shuffled());
        if schedule.steps_per_epoch() == 0 {
            bail!(
                "train.batch_size = {} is larger than the {} rows of {}",
                t.batch_size,
                source.rows(),
                self.data.display()
            );
        }
        // An optimizer step consumes `accumulate` consecutive batches of the schedule.
        let accumulate = t.accumulate_batches.max(t.accum_freq).max(1);
        let key = if t.accum_freq > 1 { "train.accum_freq" } else { "train.accumulate_batches" };
        let steps_per_epoch = schedule.steps_per_epoch() / accumulate;
        if steps_per_epoch == 0 {
            bail!(
                "{key} = {accumulate} batches of {} exceed the {} rows of {}",
                t.batch_size,
                source.rows(),
                self.data.display()
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
        let precision = self.precision;
        let mut loss_scale = precision.scales_loss().then(|| state.loss_scale.unwrap_or_default());
        let mut last_loss = f64::NAN;
        let mut last_checkpoint = checkpoints.latest()?;
        let started = Instant::now();
        let time_before = state.train_seconds;
        for step in state.step..total_steps {
            let mut accumulator = GradientsAccumulator::<O::Model>::new();
            let (mut samples, mut batches_used, mut loss_sum, mut step_metrics) = (0, 0, 0.0, Vec::new());
            // Mixed f16 multiplies the loss before every backward pass, against underflow.
            let loss_factor = loss_scale.map_or(1.0, |s| s.scale);
            // With `accum_freq`, the step's micro-batches, for one loss over all of them.
            let mut micro_batches = Vec::new();
            let not_finite = |loss_value: f64| {
                let kept = last_checkpoint
                    .as_ref()
                    .map(|p| format!("the last good checkpoint is {}", p.display()))
                    .unwrap_or_else(|| "no checkpoint was written yet".into());
                anyhow::anyhow!("loss is {loss_value} at step {}: stopping ({kept}); try a lower train.lr", step + 1)
            };
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
                let batch = cast_inputs(objective, to_batch(batch)?, precision, self.objective)?;
                if t.accum_freq > 1 {
                    micro_batches.push(batch);
                    continue;
                }
                batches_used += 1;
                let (loss_value, metrics, grads) = if self.devices.len() > 1 {
                    parallel_gradients(objective, &model, batch, self.devices, precision, t.local_loss, loss_factor)?
                } else {
                    gradients(objective, &model, batch, precision, loss_factor)?
                };
                if !loss_value.is_finite() {
                    return Err(not_finite(loss_value));
                }
                loss_sum += loss_value;
                step_metrics = metrics;
                accumulator.accumulate(&model, grads);
            }
            if !micro_batches.is_empty() {
                let (loss_value, metrics, grads) = feature_cached_gradients(objective, &model, micro_batches, precision, loss_factor)?;
                if !loss_value.is_finite() {
                    return Err(not_finite(loss_value));
                }
                (batches_used, loss_sum, step_metrics) = (1, loss_value, metrics);
                accumulator.accumulate(&model, grads);
            }
            if batches_used == 0 {
                // Every image of this step was unreadable and skipped.
                state.step = step + 1;
                continue;
            }
            let mut grads = accumulator.grads();
            if batches_used > 1 || loss_factor != 1.0 {
                scale_gradients(&model, &mut grads, 1.0 / (batches_used as f32 * loss_factor));
            }
            let loss_value = loss_sum / batches_used as f64;
            // Under loss scaling, gradients that overflowed skip the update and halve the scale.
            let overflowed = match &mut loss_scale {
                Some(scale) => {
                    let finite = global_norm(&model, &grads).is_finite();
                    if !finite {
                        progress.suspend(|| eprintln!("step {}: f16 gradients overflowed at loss scale {}; update skipped", step + 1, scale.scale));
                    }
                    scale.update(finite);
                    state.loss_scale = Some(*scale);
                    !finite
                }
                None => false,
            };
            if t.grad_clip_norm > 0.0 && !overflowed {
                clip_global_norm(&model, &mut grads, t.grad_clip_norm);
            }
            let lr = learning_rate(t.lr, step, t.warmup_steps, total_steps, t.schedule == "cosine");
            if !overflowed {
                model = objective.after_update(optimizer.step(lr_policy.at(lr), model, grads));
            }

            state.step = step + 1;
            state.samples += samples;
            state.train_seconds = time_before + started.elapsed().as_secs_f64();
            last_loss = loss_value;
            let rate = (state.samples as f64 / state.train_seconds.max(1e-9)).round();
            progress.set_position(state.step as u64);
            progress.set_message(format!("loss {loss_value:.4}, {rate} samples/s"));
            // The periodic zero-shot evaluation (`eval.zero_shot_every`), logged with the step.
            let evaluated = periodic(&model, state.step)?;
            if state.step % t.log_every.max(1) == 0 || state.step == total_steps || evaluated.is_some() {
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
                for (name, value) in evaluated.iter().flatten() {
                    line[*name] = serde_json::json!(value);
                    // Apart from the final evaluation's `eval/zero_shot_top1` (on data.val).
                    let tag = name.replacen("zero_shot_", "zero_shot/", 1);
                    tensorboard.add_scalar(&tag, *value as f32, state.step);
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
    fn finish(&self, outcome: Outcome, eval: Option<serde_json::Value>) -> anyhow::Result<Summary> {
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

/// The loss, metrics and gradients of `batch` on one device: the forward pass under
/// `precision` (on a half-precision copy of `model` when mixed), the backward pass of the loss
/// times `loss_factor` (loss scaling; 1 otherwise), the gradients of `model`'s parameters. A
/// non-finite loss comes back without a backward pass (and without gradients).
pub fn gradients<O: Objective>(
    objective: &O,
    model: &O::Model,
    batch: O::Batch,
    precision: Precision,
    loss_factor: f32,
) -> anyhow::Result<(f64, Vec<(&'static str, f64)>, GradientsParams)> {
    let output = objective.forward(&precision.compute(model), batch)?;
    let loss_value = f64::from(output.loss.clone().into_scalar::<f32>());
    if !loss_value.is_finite() {
        return Ok((loss_value, output.metrics, GradientsParams::new()));
    }
    let grads = GradientsParams::from_grads(scaled(output.loss, loss_factor).backward(), model);
    Ok((loss_value, output.metrics, grads))
}

/// `loss * factor`, or `loss` itself for a factor of 1.
pub(crate) fn scaled(loss: Tensor<1>, factor: f32) -> Tensor<1> {
    if factor == 1.0 { loss } else { loss.mul_scalar(factor) }
}

/// `batch` with its inputs in the compute type of mixed `precision` (unchanged otherwise); an
/// error naming `objective_name` for an objective that does not support mixed precision.
fn cast_inputs<O: Objective>(objective: &O, batch: O::Batch, precision: Precision, objective_name: &str) -> anyhow::Result<O::Batch> {
    let Some(dtype) = precision.compute_dtype() else { return Ok(batch) };
    objective.cast_inputs(batch, dtype).with_context(|| {
        format!(
            "run.precision = {:?} (mixed precision) needs an objective that casts its inputs (contrastive, supervised, \
             distillation); train.objective = {objective_name:?} does not: use run.precision = \"pure-{0}\" or \"f32\"",
            if dtype == burn::tensor::FloatDType::F16 { "f16" } else { "bf16" }
        )
    })
}

/// open_clip's `accum_freq` step over `micro_batches`: the features of every micro-batch
/// without gradient, then for each micro-batch its features again with gradient, spliced among
/// the cached ones, the loss over all of them and its backward pass; the gradients are summed.
/// The result is the loss, metrics and gradients of one batch made of all the micro-batches.
/// Parameters the loss uses directly (the logit scale) take their gradient from the first
/// micro-batch's pass only (open_clip counts it once per micro-batch). The passes run under
/// `precision`, each backward pass on the loss times `loss_factor`.
pub fn feature_cached_gradients<O: Objective>(
    objective: &O,
    model: &O::Model,
    micro_batches: Vec<O::Batch>,
    precision: Precision,
    loss_factor: f32,
) -> anyhow::Result<(f64, Vec<(&'static str, f64)>, GradientsParams)> {
    let features = objective
        .feature_loss()
        .context("train.accum_freq needs an objective whose loss is computed from the batch's features")?;
    let cached = {
        let compute = precision.compute(model);
        micro_batches
            .iter()
            .map(|batch| Ok(features.features(&compute, batch)?.into_iter().map(|f| f.detach()).collect::<Vec<_>>()))
            .collect::<anyhow::Result<Vec<Vec<Tensor<2>>>>>()?
    };
    let mut accumulator = GradientsAccumulator::<O::Model>::new();
    let (mut loss_value, mut metrics) = (f64::NAN, Vec::new());
    for (j, batch) in micro_batches.iter().enumerate() {
        let compute = precision.compute(model);
        let own = features.features(&compute, batch)?;
        anyhow::ensure!(
            own.len() == cached[j].len(),
            "the objective gave {} feature tensors with gradient but {} without",
            own.len(),
            cached[j].len()
        );
        let spliced: Vec<Tensor<2>> = own
            .into_iter()
            .enumerate()
            .map(|(kind, own)| {
                let parts = cached.iter().enumerate().map(|(i, c)| if i == j { own.clone() } else { c[kind].clone() }).collect();
                Tensor::cat(parts, 0)
            })
            .collect();
        let output = features.loss(&compute, spliced, j == 0)?;
        if j == 0 {
            loss_value = f64::from(output.loss.clone().into_scalar::<f32>());
            metrics = output.metrics;
            if !loss_value.is_finite() {
                break;
            }
        }
        accumulator.accumulate(model, GradientsParams::from_grads(scaled(output.loss, loss_factor).backward(), model));
    }
    Ok((loss_value, metrics, accumulator.grads()))
}

/// AdamW as `t` says, without weight decay on the parameters of fewer than two dimensions
/// (open_clip's rule, by rank: gains, biases, 1-D embeddings, scalars).
fn adamw<M: Module>(t: &TrainSection, model: &M) -> ModuleOptimizer {
    let adamw = AdamWConfig::new()
        .with_beta_1(t.beta1 as f32)
        .with_beta_2(t.beta2 as f32)
        .with_epsilon(t.eps as f32)
        .with_weight_decay(t.weight_decay as f32);
    adamw.init().with_group(rank_group(model, 1), adamw.with_weight_decay(0.0).build(), None)
}

/// Scales all gradients so that their global L2 norm is at most `max_norm`
/// (`torch.nn.utils.clip_grad_norm_`).
fn clip_global_norm<M: Module>(model: &M, grads: &mut GradientsParams, max_norm: f64) {
    let norm = global_norm(model, grads);
    if norm > max_norm {
        scale_gradients(model, grads, (max_norm / (norm + 1e-6)) as f32);
    }
}

/// The global L2 norm of the gradients of `model`'s parameters (not finite when one is not).
fn global_norm<M: Module>(model: &M, grads: &GradientsParams) -> f64 {
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
    norm.total.sqrt()
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

#[cfg(test)]
mod tests {
    use burn::nn::{Linear, LinearConfig};
    use burn::tensor::{Distribution, FloatDType};

    use super::*;

    /// A layer and a free 1-D parameter (as GLIP's alignment bias or ViLD's background).
    #[derive(Module, Debug)]
    struct Layer {
        linear: Linear,
        offset: Param<Tensor<1>>,
    }

    /// Every parameter's gradient in `grads`, by parameter, flattened.
    fn gradients_of<M: Module>(model: &M, grads: &GradientsParams) -> Vec<(String, Vec<f32>)> {
        struct Collect<'a> {
            grads: &'a GradientsParams,
            out: Vec<(String, Vec<f32>)>,
        }
        impl ModuleVisitor for Collect<'_> {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
                let grad = self.grads.get::<D>(param.id).map(|g| g.into_data().iter::<f32>().collect()).unwrap_or_default();
                self.out.push((format!("{:?}", param.id), grad));
            }
        }
        let mut collect = Collect { grads, out: Vec::new() };
        model.visit(&mut collect);
        collect.out
    }

    /// A tiny CLIP on an autodiff flex device seeded with `seed`, and a random batch of `batch`
    /// 8-pixel images and 6-token captions drawn after it.
    fn tiny_contrastive_batch(seed: u64, batch: usize) -> (Device, clip_core::Clip, Tensor<4>, Tensor<2, burn::tensor::Int>) {
        let device = Device::flex().autodiff();
        device.seed(seed);
        let json = r#"{"embed_dim": 8, "vision_cfg": {"image_size": 8, "layers": 1, "width": 16, "patch_size": 4,
            "head_width": 8}, "text_cfg": {"context_length": 6, "width": 16, "heads": 2, "layers": 1, "vocab_size": 50}}"#;
        let model = clip_core::ClipConfig::from_open_clip_json(json, "tiny").unwrap().init(&device);
        let images = Tensor::<4>::random([batch, 3, 8, 8], Distribution::Normal(0.0, 1.0), &device);
        let tokens = Tensor::random([batch, 6], Distribution::Uniform(0.0, 50.0), &device);
        (device, model, images, tokens)
    }

    /// `base` for `loss`: SigLIP's model carries a logit bias (-2), InfoNCE's none.
    fn for_loss(base: &clip_core::Clip, loss: clip_task::contrastive::ContrastiveLoss, device: &Device) -> clip_core::Clip {
        let mut model = base.clone();
        if loss == clip_task::contrastive::ContrastiveLoss::SigLip {
            model.logit_bias = Some(Param::from_tensor(Tensor::from_floats([-2.0], device)));
        }
        model
    }

    #[test]
    fn accum_freq_gives_the_loss_and_gradients_of_the_whole_batch() {
        use clip_task::contrastive::{ContrastiveBatch, ContrastiveLoss, ContrastiveObjective};
        let (device, base, images, tokens) = tiny_contrastive_batch(3, 32);
        for loss in [ContrastiveLoss::InfoNce, ContrastiveLoss::SigLip] {
            let model = for_loss(&base, loss, &device);
            let objective = ContrastiveObjective { loss, ..Default::default() };
            let whole = objective.forward(&model, ContrastiveBatch::new(images.clone(), tokens.clone()).unwrap()).unwrap();
            let whole_loss = f64::from(whole.loss.clone().into_scalar::<f32>());
            let whole_grads = GradientsParams::from_grads(whole.loss.backward(), &model);
            let micro: Vec<ContrastiveBatch> = (0..4)
                .map(|i| ContrastiveBatch::new(images.clone().narrow(0, i * 8, 8), tokens.clone().narrow(0, i * 8, 8)).unwrap())
                .collect();
            let (micro_loss, _, micro_grads) = feature_cached_gradients(&objective, &model, micro, Precision::Uniform, 1.0).unwrap();
            assert!((whole_loss - micro_loss).abs() < 1e-5, "{loss:?}: loss {whole_loss} vs {micro_loss}");
            // A micro-batch of 8 alone is a different contrastive problem: the test can tell.
            let alone = objective.forward(&model, ContrastiveBatch::new(images.clone().narrow(0, 0, 8), tokens.clone().narrow(0, 0, 8)).unwrap()).unwrap();
            assert!((f64::from(alone.loss.into_scalar::<f32>()) - whole_loss).abs() > 1e-3);
            let (whole, micro) = (gradients_of(&model, &whole_grads), gradients_of(&model, &micro_grads));
            let (mut max_diff, mut max_grad) = (0f32, 0f32);
            for ((name, a), (_, b)) in whole.iter().zip(&micro) {
                assert_eq!(a.len(), b.len(), "{loss:?}: parameter {name} has a gradient in one run only");
                assert!(!a.is_empty(), "{loss:?}: parameter {name} has no gradient");
                for (x, y) in a.iter().zip(b) {
                    max_diff = max_diff.max((x - y).abs());
                    max_grad = max_grad.max(x.abs());
                }
            }
            eprintln!(
                "{loss:?}: loss {whole_loss}, largest gradient difference {max_diff:e} (largest gradient {max_grad}) over {} parameters",
                whole.len()
            );
            // f32 rounding scales with the largest gradient (about 40 for InfoNCE here, 500 for
            // SigLIP, which sums over the texts), and the order of the threads' partial sums
            // varies between runs: 1e-5 relative. A wrong micro-batch gradient is off by far more.
            let tolerance = 1e-5 * max_grad.max(1.0);
            assert!(max_diff < tolerance, "{loss:?}: gradients differ by {max_diff} (tolerance {tolerance})");
        }
    }

    #[test]
    fn simulated_ranks_give_the_loss_and_gradients_of_one_device_on_the_global_batch() {
        use clip_task::contrastive::{ContrastiveBatch, ContrastiveLoss, ContrastiveObjective};
        let (device, base, images, tokens) = tiny_contrastive_batch(5, 30);
        // Four ranks on the one CPU device, each computing on its own forked replica as it would
        // on its own GPU: 30 samples split 8, 8, 7, 7.
        let devices = vec![device.clone(); 4];
        for loss in [ContrastiveLoss::InfoNce, ContrastiveLoss::SigLip] {
            let model = for_loss(&base, loss, &device);
            // Patch dropout draws per sample: the shards must draw what the whole batch draws.
            let objective = ContrastiveObjective { loss, patch_dropout: 0.25, seed: 9 };
            let batch = || ContrastiveBatch::new(images.clone(), tokens.clone()).unwrap().with_step(3);
            let (one_loss, _, one_grads) = gradients(&objective, &model, batch(), Precision::Uniform, 1.0).unwrap();
            let one = gradients_of(&model, &one_grads);
            let largest = one.iter().flat_map(|(_, g)| g.iter()).fold(0f32, |m, g| m.max(g.abs()));
            for local_loss in [false, true] {
                let (ranks_loss, _, grads) = parallel_gradients(&objective, &model, batch(), &devices, Precision::Uniform, local_loss, 1.0).unwrap();
                let ranks = gradients_of(&model, &grads);
                let loss_gap = (ranks_loss - one_loss).abs() / one_loss.abs();
                let mut worst = 0f32;
                for ((name, a), (_, b)) in one.iter().zip(&ranks) {
                    assert!(!a.is_empty() && a.len() == b.len(), "{loss:?}, local_loss {local_loss}: parameter {name}: {} vs {} gradient values", a.len(), b.len());
                    worst = a.iter().zip(b).fold(worst, |m, (x, y)| m.max((x - y).abs()));
                }
                eprintln!(
                    "{loss:?}, local_loss {local_loss}: loss {one_loss} vs {ranks_loss} (relative {loss_gap:e}), largest gradient \
                     difference {worst:e} of largest gradient {largest}, {} parameters",
                    one.len()
                );
                assert!(loss_gap <= 1e-5, "{loss:?}, local_loss {local_loss}: loss {ranks_loss} vs {one_loss}");
                assert!(worst <= 1e-5 * largest, "{loss:?}, local_loss {local_loss}: gradients differ by {worst} (largest {largest})");
            }
            // A rank's shard alone is another contrastive problem: the comparison can tell.
            let alone = ContrastiveBatch::new(images.clone().narrow(0, 0, 8), tokens.clone().narrow(0, 0, 8)).unwrap().with_step(3);
            let (alone_loss, _, _) = gradients(&objective, &model, alone, Precision::Uniform, 1.0).unwrap();
            assert!((alone_loss - one_loss).abs() > 1e-3, "{loss:?}: {alone_loss} vs {one_loss}");
        }
    }

    /// One parameter, `value`.
    #[derive(Module, Debug)]
    struct Scalar {
        value: Param<Tensor<1>>,
    }

    /// The objective `weight * sum(value * input)`, the product in the model's float type, the
    /// rest in f32: the gradient of `value` is `weight * input`. Records the float type the
    /// model computed in.
    #[derive(Default)]
    struct Nudge {
        weight: f64,
        computed_in: std::cell::Cell<Option<burn::tensor::DType>>,
    }

    impl Objective for Nudge {
        type Model = Scalar;
        type Batch = Tensor<1>;

        fn forward(&self, model: &Scalar, input: Tensor<1>) -> clip_core::Result<clip_core::StepOutput> {
            let value = model.value.val();
            self.computed_in.set(Some(value.dtype()));
            let loss = clip_core::loss::in_default_float((value * input).sum()).mul_scalar(self.weight);
            Ok(clip_core::StepOutput { loss, metrics: Vec::new() })
        }

        fn cast_inputs(&self, input: Tensor<1>, dtype: FloatDType) -> Option<Tensor<1>> {
            Some(input.cast(dtype))
        }
    }

    #[test]
    fn mixed_precision_keeps_f32_master_weights_that_accumulate_updates_below_bf16_resolution() {
        let device = Device::flex().autodiff();
        let train = TrainSection { weight_decay: 0.0, ..TrainSection::default() };
        // `steps` AdamW steps of learning rate 1e-4 on a gradient of 1: each moves `value` by 1e-4.
        // The input is made in the parameter's type, as a pure-bf16 device would make it.
        let run = |model: Scalar, precision: Precision, steps: usize| {
            let objective = Nudge { weight: 1.0, ..Nudge::default() };
            let mut optimizer = adamw(&train, &model);
            let mut model = model;
            for _ in 0..steps {
                let made = Tensor::<1>::from_floats([1.0], &device).cast(model.value.val().dtype());
                let input = cast_inputs(&objective, made, precision, "nudge").unwrap();
                let (_, _, grads) = gradients(&objective, &model, input, precision, 1.0).unwrap();
                model = optimizer.step(1e-4, model, grads);
            }
            (model.value.val(), objective.computed_in.get())
        };
        let one = |dtype: FloatDType| Scalar { value: Param::from_tensor(Tensor::<1>::from_floats([1.0], &device).cast(dtype)) };
        let (mixed, computed_in) = run(one(FloatDType::F32), Precision::Mixed(FloatDType::BF16), 50);
        assert_eq!(computed_in, Some(burn::tensor::DType::BF16), "mixed precision computes in bf16");
        assert_eq!(mixed.dtype(), burn::tensor::DType::F32, "the master parameter stays f32");
        let moved = mixed.into_scalar::<f32>();
        assert!((moved - 0.995).abs() < 1e-5, "50 updates of 1e-4 from 1.0 reach 0.995 in f32: {moved}");
        // In pure bf16 the parameter itself is bf16, whose spacing below 1.0 is 2^-8: every
        // update of 1e-4 rounds away.
        let (pure, computed_in) = run(one(FloatDType::BF16), Precision::Uniform, 50);
        assert_eq!(computed_in, Some(burn::tensor::DType::BF16));
        assert_eq!(pure.into_scalar::<f32>(), 1.0, "pure bf16 loses the updates");
    }

    #[test]
    fn mixed_precision_is_refused_for_an_objective_that_does_not_cast_its_inputs() {
        struct Plain;
        impl Objective for Plain {
            type Model = Scalar;
            type Batch = Tensor<1>;
            fn forward(&self, model: &Scalar, input: Tensor<1>) -> clip_core::Result<clip_core::StepOutput> {
                Ok(clip_core::StepOutput { loss: (model.value.val() * input).sum(), metrics: Vec::new() })
            }
        }
        let input = || Tensor::<1>::from_floats([1.0], &Device::flex());
        let error = cast_inputs(&Plain, input(), Precision::Mixed(FloatDType::BF16), "plain").unwrap_err().to_string();
        assert!(error.contains("run.precision = \"bf16\"") && error.contains("train.objective = \"plain\""), "{error}");
        assert!(cast_inputs(&Plain, input(), Precision::Uniform, "plain").is_ok());
    }

    #[test]
    fn loss_scaling_keeps_f16_gradients_from_underflowing() {
        let device = Device::flex().autodiff();
        let model = Scalar { value: Param::from_tensor(Tensor::<1>::from_floats([1.0], &device)) };
        // A gradient of 1e-8 is below f16's smallest subnormal (6e-8): it reaches the f16
        // product as 0 unless the loss is scaled first.
        let objective = Nudge { weight: 1e-8, ..Nudge::default() };
        let f16 = Precision::Mixed(FloatDType::F16);
        let grad = |factor: f32| {
            let input = cast_inputs(&objective, Tensor::<1>::from_floats([1.0], &device), f16, "nudge").unwrap();
            let (_, _, grads) = gradients(&objective, &model, input, f16, factor).unwrap();
            grads.get::<1>(model.value.id).unwrap().into_scalar::<f32>() / factor
        };
        assert_eq!(grad(1.0), 0.0, "unscaled, the f16 gradient underflows");
        let scaled = grad(crate::precision::LossScale::default().scale);
        assert!((scaled - 1e-8).abs() < 1e-11, "scaled by 65536, it survives: {scaled:e}");
    }

    #[test]
    fn weight_decay_spares_every_parameter_of_fewer_than_two_dimensions() {
        let device = Device::flex().autodiff();
        let model = Layer {
            linear: LinearConfig::new(3, 2).init(&device),
            offset: Param::from_tensor(Tensor::random([2], Distribution::Normal(0.0, 1.0), &device)),
        };
        // A zero gradient everywhere: AdamW moves the parameters by weight decay alone.
        let loss = (model.linear.weight.val().sum() + model.linear.bias.as_ref().unwrap().val().sum() + model.offset.val().sum()) * 0.0;
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let train = TrainSection { weight_decay: 0.5, ..TrainSection::default() };
        let stepped = adamw(&train, &model).step(0.1, model.clone(), grads);
        let values = |t: Tensor<2>| t.into_data().iter::<f32>().collect::<Vec<_>>();
        let decayed: Vec<f32> = values(model.linear.weight.val()).iter().map(|w| w * (1.0 - 0.1 * 0.5)).collect();
        for (got, want) in values(stepped.linear.weight.val()).iter().zip(&decayed) {
            assert!((got - want).abs() < 1e-6, "the 2-D weight decays: {got} vs {want}");
        }
        stepped.linear.bias.unwrap().val().into_data().assert_eq(&model.linear.bias.unwrap().val().into_data(), true);
        stepped.offset.val().into_data().assert_eq(&model.offset.val().into_data(), true);
    }
}

//! The training loop: contrastive CLIP training with AdamW (no weight decay on gains, biases,
//! the class embedding and the logit scale, as open_clip), warm-up and cosine learning rate,
//! global gradient-norm clipping, frozen parameter groups, checkpoints with exact resume,
//! `metrics.jsonl` and TensorBoard event files, a progress bar, and an evaluation and
//! `summary.json` at the end.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use burn::module::{Module, ModuleVisitor, Param, ParamGroup};
use burn::optim::{AdamWConfig, GradientsParams, ModuleOptimizer};
use burn::tensor::{Device, Int, Tensor, TensorData};
use clip_core::preprocess::{EvalTransformConfig, TrainTransformConfig, stack_images};
use clip_core::{Clip, ClipConfig, ClipLoss, ClipTokenizer, weights};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use tensorboard_rs::summary_writer::SummaryWriter;

use crate::checkpoint::{Checkpoints, TrainState};
use crate::config::RunConfig;
use crate::data::{Batcher, PairTable, Schedule, Transform, prefetch};
use crate::eval::{EvalReport, evaluate};
use crate::lr::learning_rate;

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
    /// Full evaluation report.
    pub eval: Option<EvalReport>,
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

/// Builds the model a config describes on `device`: random weights, or a checkpoint to
/// fine-tune (a Hugging Face directory brings its own `config.json`).
pub fn build_model(config: &RunConfig, device: &Device) -> anyhow::Result<(Clip, ClipConfig)> {
    match &config.model.weights {
        Some(dir) if dir.is_dir() => Ok(weights::load_hugging_face(dir, device)?),
        Some(file) => {
            let clip = ClipConfig::from_name_or_path(&config.model.name)?;
            Ok((weights::load_clip(file, &clip, device)?, clip))
        }
        None => {
            let clip = ClipConfig::from_name_or_path(&config.model.name)?;
            Ok((clip.init(device), clip))
        }
    }
}

/// Trains as `config` says, writing everything under `output`; with `resume`, continues
/// from the newest checkpoint there.
pub fn train(config: &RunConfig, output: &Path, resume: bool) -> anyhow::Result<Summary> {
    let t = &config.train;
    let device = select_device(&config.run.device)?;
    device.seed(config.run.seed);
    let train_device = device.clone().autodiff();
    let (mut model, clip_config) = build_model(config, &train_device)?;
    if !t.freeze.is_empty() {
        let prefixes: Vec<String> = t.freeze.iter().map(|p| p.replace('.', r"\.")).collect();
        let group = ParamGroup::from_regex(format!(r"^({})(\.|$)", prefixes.join("|")))
            .map_err(|e| anyhow::anyhow!("train.freeze: {e:?}"))?;
        model = model.freeze_group(group);
    }
    let tokenizer = ClipTokenizer::new().with_context_length(clip_config.text.context_length)?;
    let image_size = clip_config.vision.image_size;

    let adamw = AdamWConfig::new()
        .with_beta_1(t.beta1 as f32)
        .with_beta_2(t.beta2 as f32)
        .with_epsilon(t.eps as f32)
        .with_weight_decay(t.weight_decay as f32);
    let no_decay = ParamGroup::from_regex(NO_WEIGHT_DECAY).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let mut optimizer: ModuleOptimizer = adamw.init().with_group(no_decay, adamw.with_weight_decay(0.0).build(), None);

    std::fs::create_dir_all(output).with_context(|| format!("creating {}", output.display()))?;
    std::fs::write(output.join("config.json"), serde_json::to_string_pretty(config)?)
        .with_context(|| format!("writing {}", output.join("config.json").display()))?;
    let checkpoints = Checkpoints::new(output, t.keep_checkpoints);
    let mut state = TrainState::default();
    if resume {
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

    let train_table = PairTable::read(&config.data.train, &config.data)?;
    let train_transform = TrainTransformConfig::new()
        .with_image_size(image_size)
        .with_scale(config.data.crop_scale)
        .init()?;
    let batcher = Batcher::new(
        train_table,
        tokenizer.clone(),
        Transform::Train(train_transform),
        config.data.workers,
        config.data.skip_bad_samples,
        config.run.seed,
    );
    let schedule = Schedule::new(batcher.table().pairs.len(), t.batch_size, config.run.seed);
    if schedule.steps_per_epoch() == 0 {
        bail!(
            "train.batch_size = {} is larger than the {} rows of {}",
            t.batch_size,
            batcher.table().pairs.len(),
            config.data.train.display()
        );
    }
    let mut total_steps = schedule.steps_per_epoch() * t.epochs;
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

    let batches = prefetch(batcher.clone(), schedule.clone(), state.step..total_steps, 2);
    let mut last_loss = f64::NAN;
    let mut last_checkpoint = checkpoints.latest()?;
    let started = Instant::now();
    let time_before = state.train_seconds;
    for (step, batch) in batches {
        let batch = batch?;
        state.skipped += batch.skipped.len();
        for skipped in &batch.skipped {
            progress.suspend(|| eprintln!("skipped: {skipped}"));
        }
        let samples = batch.rows.len();
        if samples == 0 {
            continue;
        }
        let images = stack_images(&batch.images, &train_device)?;
        let tokens = Tensor::<2, Int>::from_data(
            TensorData::new(batch.tokens, [samples, tokenizer.context_length()]),
            &train_device,
        );
        let image = model.encode_image(images, true);
        let text = model.encode_text(tokens, true);
        let loss = ClipLoss::default().forward(image, text, model.logit_scale());
        let loss_value = f64::from(loss.clone().into_scalar::<f32>());
        if !loss_value.is_finite() {
            let kept = last_checkpoint
                .as_ref()
                .map(|p| format!("the last good checkpoint is {}", p.display()))
                .unwrap_or_else(|| "no checkpoint was written yet".into());
            bail!("loss is {loss_value} at step {}: stopping ({kept}); try a lower train.lr", step + 1);
        }
        let mut grads = GradientsParams::from_grads(loss.backward(), &model);
        if t.grad_clip_norm > 0.0 {
            clip_global_norm(&model, &mut grads, t.grad_clip_norm);
        }
        let lr = learning_rate(t.lr, step, t.warmup_steps, total_steps, t.schedule == "cosine");
        model = optimizer.step(lr, model, grads).clamp_logit_scale();

        state.step = step + 1;
        state.samples += samples;
        state.train_seconds = time_before + started.elapsed().as_secs_f64();
        last_loss = loss_value;
        let rate = (state.samples as f64 / state.train_seconds.max(1e-9)).round();
        progress.set_position(state.step as u64);
        progress.set_message(format!("loss {loss_value:.4}, {rate} samples/s"));
        if state.step % t.log_every.max(1) == 0 || state.step == total_steps {
            let scale = f64::from(model.logit_scale().into_scalar::<f32>());
            let line = serde_json::json!({
                "step": state.step,
                "epoch": step / schedule.steps_per_epoch(),
                "loss": loss_value,
                "lr": lr,
                "logit_scale": scale,
                "samples_per_second": rate,
                "skipped_samples": state.skipped,
            });
            writeln!(metrics, "{line}").context("writing metrics.jsonl")?;
            tensorboard.add_scalar("train/loss", loss_value as f32, state.step);
            tensorboard.add_scalar("train/lr", lr as f32, state.step);
            tensorboard.add_scalar("train/logit_scale", scale as f32, state.step);
            tensorboard.add_scalar("train/samples_per_second", rate as f32, state.step);
        }
        if t.checkpoint_every > 0 && state.step % t.checkpoint_every == 0 && state.step < total_steps {
            last_checkpoint = Some(checkpoints.save(&model, &optimizer, &state)?);
        }
    }
    if state.step < total_steps {
        bail!("the data loader stopped at step {} of {total_steps}", state.step);
    }
    progress.finish();
    let checkpoint = match last_checkpoint.filter(|p| p.ends_with(format!("step-{:08}", state.step))) {
        Some(done) => done,
        None => checkpoints.save(&model, &optimizer, &state)?,
    };

    let eval = match &config.data.val {
        Some(val) => {
            let eval_batcher = Batcher::new(
                PairTable::read(val, &config.data)?,
                tokenizer.clone(),
                Transform::Eval(EvalTransformConfig::new().with_image_size(image_size).init()),
                config.data.workers,
                config.data.skip_bad_samples,
                config.run.seed,
            );
            Some(evaluate(&model.valid(), &eval_batcher, &tokenizer, &config.eval, &device)?)
        }
        None => None,
    };
    if let Some(report) = &eval {
        for (tag, value) in [("eval/zero_shot_top1", report.zero_shot_top1), ("eval/zero_shot_top5", report.zero_shot_top5)] {
            if let Some(value) = value {
                tensorboard.add_scalar(tag, value as f32, state.step);
            }
        }
        for (k, (i2t, t2i)) in [1, 5, 10].iter().zip(report.image_to_text_recall.iter().zip(&report.text_to_image_recall)) {
            tensorboard.add_scalar(&format!("eval/image_to_text_r{k}"), *i2t as f32, state.step);
            tensorboard.add_scalar(&format!("eval/text_to_image_r{k}"), *t2i as f32, state.step);
        }
    }
    // Dropping the writer joins its thread, which writes everything out.
    drop(tensorboard);
    let summary = Summary {
        steps: state.step,
        samples: state.samples,
        train_seconds: state.train_seconds,
        samples_per_second: state.samples as f64 / state.train_seconds.max(1e-9),
        final_loss: last_loss,
        skipped_samples: state.skipped,
        zero_shot_top1: eval.as_ref().and_then(|e| e.zero_shot_top1),
        zero_shot_top5: eval.as_ref().and_then(|e| e.zero_shot_top5),
        chance_top1: eval.as_ref().and_then(|e| e.chance_top1),
        eval,
        checkpoint,
    };
    clip_core::weights::write_atomically(
        &output.join("summary.json"),
        serde_json::to_string_pretty(&summary)?.as_bytes(),
    )?;
    Ok(summary)
}

/// Scales all gradients so that their global L2 norm is at most `max_norm`
/// (`torch.nn.utils.clip_grad_norm_`).
fn clip_global_norm(model: &Clip, grads: &mut GradientsParams, max_norm: f64) {
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
    let mut norm = SquaredNorm { grads, total: 0.0 };
    model.visit(&mut norm);
    let norm = norm.total.sqrt();
    if norm > max_norm {
        let factor = (max_norm / (norm + 1e-6)) as f32;
        model.visit(&mut Scale { grads, factor });
    }
}

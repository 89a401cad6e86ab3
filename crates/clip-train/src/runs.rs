//! The run an inference command names: a TOML run config, a run's output folder (its
//! `config.json` and newest checkpoint), or (`--config`) a run config whose run is trained
//! first when it has not finished.

use std::path::{Path, PathBuf};

use anyhow::Context;
use burn::tensor::Device;
use clip_core::{Clip, ClipConfig};

use crate::checkpoint::Checkpoints;
use crate::config::RunConfig;
use crate::{registry, trainer};

/// The run config and checkpoint that `model` names: a TOML run config, or a run's output
/// folder (its `config.json` and, unless `checkpoint` is given, its newest checkpoint); with
/// `overrides` layered on either.
pub fn resolve(model: &Path, checkpoint: Option<PathBuf>, overrides: &[String]) -> anyhow::Result<(RunConfig, Option<PathBuf>)> {
    if !model.is_dir() {
        return Ok((RunConfig::load(model, overrides)?, checkpoint));
    }
    let file = model.join("config.json");
    anyhow::ensure!(file.is_file(), "{}: not a run folder (no config.json)", model.display());
    let config = RunConfig::load_run(&file, overrides)?;
    let checkpoint = match checkpoint {
        Some(dir) => dir,
        None => Checkpoints::new(model, config.train.keep_checkpoints)
            .latest()?
            .with_context(|| format!("{}: the run has no checkpoint yet", model.display()))?,
    };
    Ok((config, Some(checkpoint)))
}

/// The newest checkpoint of the run that `config` (a TOML run config) describes, in its
/// `run.output`, where the run is trained first (or, interrupted, resumed) when it has not
/// finished (no `summary.json`). A `run.output` that holds a run of another configuration is
/// refused, naming the first key that differs: `[model]`, `[data]`, `[train]`, `run.seed` and
/// `run.precision` must match, while `[eval]`, the task's section and the rest of `[run]` are
/// the caller's (they do not change the trained model, so an inference command may set them
/// anew).
pub fn trained(config: &RunConfig) -> anyhow::Result<PathBuf> {
    let (file, output) = (&config.file, config.run.output.clone());
    let previous = output.join("config.json");
    if previous.is_file() {
        let previous_config = RunConfig::load_run(&previous, &[])?;
        if let Some(key) = first_training_difference(config, &previous_config)? {
            anyhow::bail!(
                "{}: run.output = {} holds a run of another configuration ({key} differs from {}); remove that folder, \
                 or train this config elsewhere with --set run.output=DIR",
                file.display(),
                output.display(),
                previous.display()
            );
        }
    }
    let checkpoints = Checkpoints::new(&output, config.train.keep_checkpoints);
    if !output.join("summary.json").is_file() {
        let resume = checkpoints.latest()?.is_some();
        eprintln!("{}: {} the run in {}", file.display(), if resume { "finishing" } else { "training" }, output.display());
        trainer::train(config, &output, resume)?;
    }
    checkpoints.latest()?.with_context(|| format!("{}: the finished run has no checkpoint", output.display()))
}

/// The first key that shapes the trained model and differs between `a` and `b`, if any.
fn first_training_difference(a: &RunConfig, b: &RunConfig) -> anyhow::Result<Option<String>> {
    let (a, b) = (serde_json::to_value(a)?, serde_json::to_value(b)?);
    let sections = ["model", "data", "train"].map(|s| (s.to_string(), &a[s], &b[s]));
    let run_keys = ["seed", "precision"].map(|k| (format!("run.{k}"), &a["run"][k], &b["run"][k]));
    for (name, left, right) in sections.into_iter().chain(run_keys) {
        if same(left, right) {
            continue;
        }
        let key = match (left.as_object(), right.as_object()) {
            (Some(l), Some(r)) => l
                .keys()
                .chain(r.keys())
                .find(|k| !l.get(*k).zip(r.get(*k)).is_some_and(|(x, y)| same(x, y)))
                .map(|k| format!("{name}.{k}"))
                .unwrap_or(name),
            _ => name,
        };
        return Ok(Some(key));
    }
    Ok(None)
}

/// Whether two config values are equal, numbers to float rounding (a value read back from a
/// run's `config.json` may differ from the TOML one in its last bit).
fn same(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    use serde_json::Value;
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_f64(), y.as_f64()) {
            (Some(x), Some(y)) => (x - y).abs() <= 1e-12 * x.abs().max(y.abs()),
            _ => x == y,
        },
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same(x, y)),
        (Value::Object(x), Value::Object(y)) => x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w))),
        _ => a == b,
    }
}

/// The run a checkpoint folder (`<run>/checkpoints/step-N`) belongs to, by its `config.json`.
fn run_of_checkpoint(checkpoint: &Path) -> Option<RunConfig> {
    let run = checkpoint.parent()?.parent()?;
    RunConfig::load_run(&run.join("config.json"), &[]).ok()
}

/// Zero-shot ranks of `files` by the task of the run checkpoint `weights` (audio for AudioCLIP,
/// say): `None` when `weights` is no run checkpoint or its task ranks images only.
pub fn rank_files(weights: &Path, labels: &[String], files: &[PathBuf], device: &Device) -> anyhow::Result<Option<Vec<Vec<(usize, f32)>>>> {
    let Some(config) = run_of_checkpoint(weights).filter(|_| weights.join("model.bpk").is_file()) else {
        return Ok(None);
    };
    let task = registry::task(&config.train.objective).map_err(anyhow::Error::msg)?;
    let section = task.section().and_then(|key| config.sections.get(key));
    task.rank_files(section, config.context(&config.run.output), Some(weights), labels, files, device)
}

/// A CLIP from `weights`: the CLIP inside a run checkpoint of any task (its image tower with
/// the text tower the run started from, for supervised and distillation runs), or weights in
/// any layout [`clip_task::clip_model::load_model`] reads (architecture `name`).
pub fn load_clip(name: &str, weights: &Path, device: &Device) -> anyhow::Result<(Clip, ClipConfig)> {
    if weights.join("model.bpk").is_file()
        && let Some(config) = run_of_checkpoint(weights)
    {
        let task = registry::task(&config.train.objective).map_err(anyhow::Error::msg)?;
        let section = task.section().and_then(|key| config.sections.get(key));
        let from_run = task
            .clip(section, config.context(&config.run.output), Some(weights), device)
            .with_context(|| format!("{}: the CLIP of a {:?} run", weights.display(), config.train.objective));
        // A CLIP checkpoint whose run cannot be rebuilt here (moved files) still loads as one.
        return from_run.or_else(|error| clip_task::clip_model::load_model(name, Some(weights), device).map_err(|_| error));
    }
    clip_task::clip_model::load_model(name, Some(weights), device)
}

//! The run an inference command names: a TOML run config, or a run's output folder (its
//! `config.json` and newest checkpoint).

use std::path::{Path, PathBuf};

use anyhow::Context;
use burn::tensor::Device;
use clip_core::{Clip, ClipConfig};

use crate::checkpoint::Checkpoints;
use crate::config::RunConfig;
use crate::registry;

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

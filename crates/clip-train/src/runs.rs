//! The run an inference command names: a TOML run config, or a run's output folder (its
//! `config.json` and newest checkpoint).

use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::checkpoint::Checkpoints;
use crate::config::RunConfig;

/// The run config and checkpoint that `model` names: a TOML run config (with `overrides`), or
/// a run's output folder (its `config.json` and, unless `checkpoint` is given, its newest
/// checkpoint).
pub fn resolve(model: &Path, checkpoint: Option<PathBuf>, overrides: &[String]) -> anyhow::Result<(RunConfig, Option<PathBuf>)> {
    if !model.is_dir() {
        return Ok((RunConfig::load(model, overrides)?, checkpoint));
    }
    let file = model.join("config.json");
    let text = std::fs::read_to_string(&file).with_context(|| format!("{}: not a run folder", model.display()))?;
    let mut config: RunConfig = serde_json::from_str(&text).with_context(|| format!("reading {}", file.display()))?;
    config.file = file;
    let checkpoint = match checkpoint {
        Some(dir) => dir,
        None => Checkpoints::new(model, config.train.keep_checkpoints)
            .latest()?
            .with_context(|| format!("{}: the run has no checkpoint yet", model.display()))?,
    };
    Ok((config, Some(checkpoint)))
}

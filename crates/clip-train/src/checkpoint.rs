//! Checkpoints: `checkpoints/step-NNNNNNNN/` holding the model, the optimizer state and
//! `state.json` (step, samples seen, skipped samples). Each is written under a `.tmp` name and
//! renamed when complete, so a killed run never leaves a half-written checkpoint behind.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use burn::module::Module;
use burn::optim::ModuleOptimizer;
use serde::{Deserialize, Serialize};

/// Progress saved with a checkpoint.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct TrainState {
    /// Optimizer steps completed.
    pub step: usize,
    /// Training samples consumed.
    pub samples: usize,
    /// Samples skipped because their image could not be read.
    pub skipped: usize,
    /// Seconds spent training so far.
    pub train_seconds: f64,
    /// The loss scale of a mixed-f16 run (`run.precision = "f16"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_scale: Option<crate::precision::LossScale>,
}

/// The checkpoint folder of a run.
#[derive(Debug, Clone)]
pub struct Checkpoints {
    dir: PathBuf,
    keep: usize,
}

impl Checkpoints {
    /// Checkpoints under `output/checkpoints`, keeping the newest `keep`.
    pub fn new(output: &Path, keep: usize) -> Self {
        Self {
            dir: output.join("checkpoints"),
            keep: keep.max(1),
        }
    }

    /// Writes a checkpoint at `state.step`, then deletes all but the newest `keep`.
    pub fn save<M: Module>(&self, model: &M, optimizer: &ModuleOptimizer, state: &TrainState) -> anyhow::Result<PathBuf> {
        let final_dir = self.dir.join(format!("step-{:08}", state.step));
        let tmp = self.dir.join(format!("step-{:08}.tmp", state.step));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).with_context(|| format!("removing stale {}", tmp.display()))?;
        }
        std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        model
            .clone()
            .save_file(tmp.join("model.bpk"))
            .with_context(|| format!("writing {}", tmp.join("model.bpk").display()))?;
        optimizer
            .save(tmp.join("optimizer.bpk"))
            .with_context(|| format!("writing {}", tmp.join("optimizer.bpk").display()))?;
        std::fs::write(tmp.join("state.json"), serde_json::to_string_pretty(state)?)
            .with_context(|| format!("writing {}", tmp.join("state.json").display()))?;
        if final_dir.exists() {
            std::fs::remove_dir_all(&final_dir)?;
        }
        std::fs::rename(&tmp, &final_dir).with_context(|| format!("renaming to {}", final_dir.display()))?;
        let all = self.list()?;
        for old in all.iter().take(all.len().saturating_sub(self.keep)) {
            std::fs::remove_dir_all(old).with_context(|| format!("removing {}", old.display()))?;
        }
        Ok(final_dir)
    }

    /// Complete checkpoints, oldest first.
    pub fn list(&self) -> anyhow::Result<Vec<PathBuf>> {
        if !self.dir.is_dir() {
            return Ok(Vec::new());
        }
        let mut found: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .with_context(|| format!("reading {}", self.dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.is_dir()
                    && p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("step-") && !n.ends_with(".tmp"))
            })
            .collect();
        found.sort();
        Ok(found)
    }

    /// The newest complete checkpoint, if any.
    pub fn latest(&self) -> anyhow::Result<Option<PathBuf>> {
        Ok(self.list()?.pop())
    }

    /// Restores the model and the progress from checkpoint `dir`. The parameters take the
    /// ids they were saved with, so parameter groups are built after this.
    pub fn load_model<M: Module>(dir: &Path, model: M) -> anyhow::Result<(M, TrainState)> {
        let model_path = dir.join("model.bpk");
        let model = model
            .try_load_file(&model_path)
            .map_err(|e| anyhow::anyhow!("{}: {e}", model_path.display()))?;
        let state_path = dir.join("state.json");
        let text = std::fs::read_to_string(&state_path).with_context(|| format!("reading {}", state_path.display()))?;
        let state: TrainState = serde_json::from_str(&text).with_context(|| format!("parsing {}", state_path.display()))?;
        if state.step == 0 {
            bail!("{}: step 0 is not a resumable checkpoint", state_path.display());
        }
        Ok((model, state))
    }

    /// Restores the optimizer state (moments, by parameter id) from checkpoint `dir`.
    pub fn load_optimizer(dir: &Path, optimizer: ModuleOptimizer) -> anyhow::Result<ModuleOptimizer> {
        let optimizer_path = dir.join("optimizer.bpk");
        optimizer.load(&optimizer_path).map_err(|e| anyhow::anyhow!("{}: {e}", optimizer_path.display()))
    }
}

//! Run configuration: a TOML file, then `CLIPFORGE_*` environment variables, then
//! `--set key=value` overrides, deserialized into typed sections that reject unknown keys and
//! validated so that every error names the file and the key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use clip_task::{DataSection, EvalSection, ModelSection, RunContext};

use crate::registry;

/// A complete training run: the sections every run has, and the section of its task
/// (`[segmentation]`, `[video]`, ...), which the task itself parses and validates.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunConfig {
    /// Where and how the run executes.
    #[serde(default)]
    pub run: RunSection,
    /// The model to train.
    pub model: ModelSection,
    /// Training and validation data.
    pub data: DataSection,
    /// Optimization.
    #[serde(default)]
    pub train: TrainSection,
    /// Evaluation at the end of training (and by `clipforge eval`).
    #[serde(default)]
    pub eval: EvalSection,
    /// The task's own section, by key (`segmentation`); anything else is refused.
    #[serde(flatten)]
    pub sections: BTreeMap<String, serde_json::Value>,
    /// The file the config was read from.
    #[serde(skip)]
    pub file: PathBuf,
}

/// `[run]`: output, backend and devices, seed, precision.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunSection {
    /// Output directory (checkpoints, metrics, summary); `--output` overrides it.
    pub output: PathBuf,
    /// Backend: `flex` (CPU), `wgpu` or `cuda`; unset, the backend of `devices`, else `flex`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// Devices of a data-parallel run (`["cuda:0", "cuda:1"]`): each batch is split across
    /// them and the contrastive loss gathers every device's features (see
    /// `crate::trainer::Execution`); the first holds the master parameters and the optimizer.
    /// Empty: the one device of `device`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<String>,
    /// Seed of model initialization, shuffling and augmentation.
    pub seed: u64,
    /// Float types: `f32`; `bf16` or `f16` (mixed precision: f32 master parameters and
    /// optimizer state, forward and backward passes in half precision); `pure-bf16` or
    /// `pure-f16` (every tensor in half precision: half the memory of the parameter state, but
    /// updates below the half type's resolution are lost).
    pub precision: String,
}

impl Default for RunSection {
    fn default() -> Self {
        Self {
            output: PathBuf::from("runs/default"),
            device: None,
            devices: Vec::new(),
            seed: 0,
            precision: "f32".into(),
        }
    }
}

/// The backends, and whether this build has each.
const BACKENDS: [(&str, bool); 3] = [("flex", true), ("wgpu", cfg!(feature = "wgpu")), ("cuda", cfg!(feature = "cuda"))];

impl RunSection {
    /// The backend the run uses: `device`, else the backend of `devices`, else `flex`.
    pub fn backend(&self) -> &str {
        match (&self.device, self.devices.first()) {
            (Some(device), _) => device,
            (None, Some(first)) => first.split(':').next().unwrap_or(first),
            (None, None) => "flex",
        }
    }

    /// Checks `device`, `devices` and `precision`, naming the key.
    fn validate(&self) -> Result<(), String> {
        crate::precision::Precision::parse(&self.precision)?;
        let built = |key: &str, name: &str| match BACKENDS.iter().find(|(backend, _)| *backend == name) {
            None => Err(format!("{key}: {name:?} is no backend: use \"flex\", \"wgpu\" or \"cuda\"")),
            Some((_, false)) => Err(format!(
                "{key}: this clipforge was built without the {name} backend; rebuild with \
                 `cargo build --release -p clip-train --features {name}`"
            )),
            Some(_) => Ok(()),
        };
        if let Some(device) = &self.device {
            built(&format!("run.device = {device:?}"), device)?;
        }
        let mut seen = Vec::new();
        for (i, spec) in self.devices.iter().enumerate() {
            let key = format!("run.devices[{i}] = {spec:?}");
            let (backend, index) = parse_device(spec).map_err(|e| format!("{key}: {e}"))?;
            built(&key, backend)?;
            if backend != self.backend() {
                return Err(format!(
                    "{key} is not on the run's backend {:?} ({}): every device of a run is on one backend",
                    self.backend(),
                    if self.device.is_some() { "run.device" } else { "run.devices[0]" }
                ));
            }
            // The one CPU device may be listed several times: ranks simulated on it.
            if backend != "flex" && seen.contains(&(backend, index)) {
                return Err(format!("{key}: the device is listed twice"));
            }
            seen.push((backend, index));
        }
        Ok(())
    }
}

/// A `run.devices` entry: a backend and an optional index (`"cuda:1"`, `"wgpu:0"`, `"flex"`).
pub fn parse_device(spec: &str) -> Result<(&str, Option<usize>), String> {
    match spec.split_once(':') {
        None => Ok((spec, None)),
        Some((backend, index)) => {
            let index = index.parse::<usize>().map_err(|_| format!("{index:?} is not a device index (write \"{backend}:0\")"))?;
            if backend == "flex" {
                return Err("the flex backend has one device: write \"flex\"".into());
            }
            Ok((backend, Some(index)))
        }
    }
}

/// `[train]`: objective and optimizer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainSection {
    /// The task trained (see [`registry::TASKS`]): `contrastive` (CLIP on image-caption
    /// pairs), `supervised` (image classifier on `data.label_column`), `distillation` (image
    /// tower towards `[distill]`), or a method.
    pub objective: String,
    /// Moved to `[contrastive] loss`; kept to name the new place.
    #[serde(default, skip_serializing)]
    pub loss: Option<serde_json::Value>,
    /// Moved to `[supervised] zero_shot_head`; kept to name the new place.
    #[serde(default, skip_serializing)]
    pub zero_shot_head: Option<serde_json::Value>,
    /// Moved to `[supervised] label_smoothing`; kept to name the new place.
    #[serde(default, skip_serializing)]
    pub label_smoothing: Option<serde_json::Value>,
    /// Samples per batch.
    pub batch_size: usize,
    /// Batches whose gradients are averaged into one optimizer step. Each batch is its own
    /// contrastive problem (negatives come from the batch), unlike `accum_freq`; this is the
    /// accumulation for objectives that are not losses over the batch's features.
    pub accumulate_batches: usize,
    /// open_clip's `accum_freq`: one optimizer step over this many batches (micro-batches)
    /// whose features are computed without gradient, then recomputed one micro-batch at a
    /// time with gradient and spliced among the cached ones, so the loss and its negatives
    /// span all of them (the same loss and gradients as one batch of `accum_freq *
    /// batch_size`). Needs an objective with features (`contrastive`); exclusive with
    /// `accumulate_batches`.
    pub accum_freq: usize,
    /// Passes over the training data.
    pub epochs: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// AdamW decoupled weight decay (not applied to gains, biases, 1-D embeddings, logit scale).
    pub weight_decay: f64,
    /// AdamW beta 1.
    pub beta1: f64,
    /// AdamW beta 2.
    pub beta2: f64,
    /// AdamW epsilon.
    pub eps: f64,
    /// Linear warm-up steps.
    pub warmup_steps: usize,
    /// Schedule after warm-up: `cosine` or `constant`.
    pub schedule: String,
    /// Clip the global gradient norm to this value (0: off).
    pub grad_clip_norm: f64,
    /// Parameter path prefixes to freeze (`visual` locks the image tower as in LiT).
    pub freeze: Vec<String>,
    /// open_clip's `--lock-image`: freeze the image tower (the parameters under `visual`)
    /// but for its last `lock_image_unlocked_groups` groups.
    pub lock_image: bool,
    /// With `lock_image`: the image tower's last groups left trainable (a ViT's groups: stem,
    /// each residual block, the last with `ln_post`, projection; a ResNet's: stem, layer1-4,
    /// attention pool).
    pub lock_image_unlocked_groups: usize,
    /// Layer-wise learning-rate decay in `(0, 1]` (1: off): each layer group of the CLIP
    /// towers (`visual`, `text`; grouped as `lock_image` groups them, head last) trains at
    /// `lr * layer_decay^(groups after it)`; `lr_groups` apply on top.
    pub layer_decay: f64,
    /// Parameters with their own peak learning rate (a pretrained backbone slower than new
    /// heads); later groups win where prefixes overlap.
    pub lr_groups: Vec<LrGroup>,
    /// Write a checkpoint every this many steps (0: only at the end).
    pub checkpoint_every: usize,
    /// Checkpoints to keep.
    pub keep_checkpoints: usize,
    /// Append to `metrics.jsonl` every this many steps.
    pub log_every: usize,
    /// Stop after this many steps even if epochs remain (0: no limit).
    pub max_steps: usize,
    /// open_clip's `--local-loss`, with several `run.devices`: each device computes the
    /// contrastive loss of its own rows only, against the features gathered from every device
    /// (memory of a `local x global` logit matrix per device instead of `global x global` on
    /// the first); the loss and gradients are those of the global batch either way.
    pub local_loss: bool,
    /// Gradient checkpointing (burn's balanced checkpointing): memory-bound operations are
    /// recomputed in the backward pass instead of keeping their outputs.
    pub grad_checkpointing: bool,
}

impl Default for TrainSection {
    fn default() -> Self {
        Self {
            objective: "contrastive".into(),
            loss: None,
            zero_shot_head: None,
            label_smoothing: None,
            batch_size: 64,
            accumulate_batches: 1,
            accum_freq: 1,
            epochs: 1,
            lr: 5e-4,
            weight_decay: 0.2,
            beta1: 0.9,
            beta2: 0.98,
            eps: 1e-6,
            warmup_steps: 0,
            schedule: "cosine".into(),
            grad_clip_norm: 0.0,
            freeze: Vec::new(),
            lock_image: false,
            lock_image_unlocked_groups: 0,
            layer_decay: 1.0,
            lr_groups: Vec::new(),
            checkpoint_every: 0,
            keep_checkpoints: 2,
            log_every: 10,
            max_steps: 0,
            local_loss: false,
            grad_checkpointing: false,
        }
    }
}

/// `[[train.lr_groups]]`: parameters trained at their own peak learning rate, which follows
/// the run's warm-up and schedule.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LrGroup {
    /// Parameter path prefixes in the trained model, matched as `train.freeze` matches them
    /// (`clip` is the whole CLIP of CLIP4Clip).
    pub prefixes: Vec<String>,
    /// Peak learning rate of these parameters.
    pub lr: f64,
}

/// A configuration problem, naming the file and the key.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {message}")]
pub struct ConfigError {
    /// The configuration file.
    pub file: PathBuf,
    /// What is wrong, with the key.
    pub message: String,
}

impl RunConfig {
    /// What the task sees of this run, writing under `output`.
    pub fn context(&self, output: &Path) -> RunContext {
        RunContext {
            file: self.file.clone(),
            objective: self.train.objective.clone(),
            model: self.model.clone(),
            data: self.data.clone(),
            eval: self.eval.clone(),
            seed: self.run.seed,
            output: output.to_path_buf(),
        }
    }

    /// Reads the TOML file `path`, layers `CLIPFORGE_<SECTION>__<KEY>` environment variables
    /// and `overrides` (`section.key=value`) on top, and validates the result.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self, ConfigError> {
        if !path.is_file() {
            return Err(ConfigError { file: path.to_path_buf(), message: "no such configuration file".into() });
        }
        Self::load_source(path, config::File::from(path).format(config::FileFormat::Toml), overrides)
    }

    /// Reads the `config.json` a run wrote (upgrading one written before the task sections:
    /// `null` sections dropped, `train.loss`, `train.zero_shot_head` and `train.label_smoothing`
    /// moved into their task's section), then layers and validates as [`Self::load`].
    pub fn load_run(path: &Path, overrides: &[String]) -> Result<Self, ConfigError> {
        let error = |message: String| ConfigError { file: path.to_path_buf(), message };
        let text = std::fs::read_to_string(path).map_err(|e| error(e.to_string()))?;
        let mut value: serde_json::Value = serde_json::from_str(&text).map_err(|e| error(e.to_string()))?;
        upgrade_run_json(&mut value);
        Self::load_source(path, config::File::from_str(&value.to_string(), config::FileFormat::Json), overrides)
    }

    /// `source` (read from `path`) with the environment and `overrides` on top, validated.
    fn load_source<S: config::Source + Send + Sync + 'static>(path: &Path, source: S, overrides: &[String]) -> Result<Self, ConfigError> {
        let error = |message: String| ConfigError {
            file: path.to_path_buf(),
            message,
        };
        let mut builder = config::Config::builder()
            .add_source(source)
            .add_source(
                config::Environment::with_prefix("CLIPFORGE")
                    .prefix_separator("_")
                    .separator("__")
                    .try_parsing(true),
            );
        for item in overrides {
            let (key, value) = item
                .split_once('=')
                .ok_or_else(|| error(format!("--set {item:?} is not key=value")))?;
            builder = builder
                .set_override(key.trim(), parse_override(value.trim()))
                .map_err(|e| error(format!("--set {item:?}: {e}")))?;
        }
        let mut config: Self = builder
            .build()
            .and_then(|c| c.try_deserialize())
            .map_err(|e| error(e.to_string()))?;
        config.file = path.to_path_buf();
        config.validate().map_err(error)?;
        Ok(config)
    }

    /// Checks values serde cannot: ranges, choices and the existence of input files.
    pub fn validate(&self) -> Result<(), String> {
        let t = &self.train;
        let checks: [(bool, String); 16] = [
            (t.layer_decay > 0.0 && t.layer_decay <= 1.0, format!("train.layer_decay = {} must be in (0, 1]", t.layer_decay)),
            (
                t.lock_image || t.lock_image_unlocked_groups == 0,
                "train.lock_image_unlocked_groups needs train.lock_image = true".into(),
            ),
            (t.batch_size > 0, "train.batch_size must be at least 1".into()),
            (t.accumulate_batches > 0, "train.accumulate_batches must be at least 1".into()),
            (t.accum_freq > 0, "train.accum_freq must be at least 1".into()),
            (
                t.accum_freq == 1 || t.accumulate_batches == 1,
                format!(
                    "train.accum_freq = {} and train.accumulate_batches = {} are exclusive: accum_freq caches features so \
                     the loss spans all micro-batches (contrastive objectives), accumulate_batches averages per-batch \
                     gradients (any objective); give one",
                    t.accum_freq, t.accumulate_batches
                ),
            ),
            (t.epochs > 0, "train.epochs must be at least 1".into()),
            (t.lr.is_finite() && t.lr > 0.0, format!("train.lr = {} must be positive", t.lr)),
            (t.weight_decay >= 0.0, format!("train.weight_decay = {} must not be negative", t.weight_decay)),
            ((0.0..1.0).contains(&t.beta1), format!("train.beta1 = {} must be in [0, 1)", t.beta1)),
            ((0.0..1.0).contains(&t.beta2), format!("train.beta2 = {} must be in [0, 1)", t.beta2)),
            (t.eps > 0.0, format!("train.eps = {} must be positive", t.eps)),
            (t.grad_clip_norm >= 0.0, format!("train.grad_clip_norm = {} must not be negative", t.grad_clip_norm)),
            (["cosine", "constant"].contains(&t.schedule.as_str()), format!("train.schedule = {:?}: use \"cosine\" or \"constant\"", t.schedule)),
            (t.keep_checkpoints > 0, "train.keep_checkpoints must be at least 1".into()),
            (self.eval.batch_size > 0, "eval.batch_size must be at least 1".into()),
        ];
        if let Some((_, message)) = checks.into_iter().find(|(ok, _)| !ok) {
            return Err(message);
        }
        for (i, group) in t.lr_groups.iter().enumerate() {
            if !(group.lr.is_finite() && group.lr >= 0.0) {
                return Err(format!("train.lr_groups[{i}].lr = {} must be a finite, non-negative number", group.lr));
            }
            if group.prefixes.is_empty() || group.prefixes.iter().any(|p| p.is_empty()) {
                return Err(format!("train.lr_groups[{i}].prefixes must list non-empty parameter path prefixes"));
            }
        }
        let moved = [("loss", &t.loss, "[contrastive] loss"), ("zero_shot_head", &t.zero_shot_head, "[supervised] zero_shot_head"), ("label_smoothing", &t.label_smoothing, "[supervised] label_smoothing")];
        if let Some((key, _, place)) = moved.iter().find(|(_, value, _)| value.is_some()) {
            return Err(format!("train.{key} has moved: write it as {place}"));
        }
        self.run.validate()?;
        if self.run.devices.len() > t.batch_size {
            return Err(format!("train.batch_size = {} is smaller than the {} run.devices", t.batch_size, self.run.devices.len()));
        }
        if self.run.devices.len() > 1 && t.accum_freq > 1 {
            return Err(format!(
                "train.accum_freq = {} with {} run.devices is not supported: split the batch across the devices \
                 (a larger train.batch_size) instead",
                t.accum_freq,
                self.run.devices.len()
            ));
        }
        let (lo, hi) = self.data.crop_scale;
        if !(0.0 < lo && lo <= hi && hi <= 1.0) {
            return Err(format!("data.crop_scale = {:?} must satisfy 0 < min <= max <= 1", self.data.crop_scale));
        }
        if clip_task::shards::is_shard_spec(&self.data.train) {
            clip_task::shards::ShardSpec::validate(&self.data)?;
        } else {
            if !self.data.train.exists() {
                return Err(format!("data.train = {}: no such file or folder", self.data.train.display()));
            }
            let shard_keys = [
                ("resampled", self.data.resampled),
                ("train_num_samples", self.data.train_num_samples > 0),
                ("train_weights", !self.data.train_weights.is_empty()),
            ];
            if let Some((key, _)) = shard_keys.iter().find(|(_, set)| *set) {
                return Err(format!("data.{key} applies to tar shards, and data.train = {} is not (shards end in .tar)", self.data.train.display()));
            }
        }
        if let Some(val) = self.data.val.as_ref().filter(|v| !v.exists()) {
            return Err(format!("data.val = {}: no such file or folder", val.display()));
        }
        if !(0.0..1.0).contains(&self.data.val_fraction) {
            return Err(format!("data.val_fraction = {} must be in [0, 1)", self.data.val_fraction));
        }
        if self.data.val.is_some() && self.data.val_fraction > 0.0 {
            return Err("data.val and data.val_fraction are exclusive: give one".into());
        }
        if !self.data.caption_template.contains("{}") {
            return Err("data.caption_template needs a {} for the class name".into());
        }
        if let Some(weights) = self.model.weights.as_ref().filter(|w| !w.exists()) {
            return Err(format!("model.weights = {}: no such file", weights.display()));
        }
        match (self.eval.zero_shot_every, &self.eval.zero_shot_data) {
            (0, _) => {}
            (_, None) => return Err("eval.zero_shot_every needs eval.zero_shot_data (a class folder)".into()),
            (_, Some(data)) if !data.exists() => return Err(format!("eval.zero_shot_data = {}: no such file or folder", data.display())),
            _ => {}
        }
        if self.eval.templates.iter().any(|t| !t.contains("{}")) {
            return Err("eval.templates: every template needs a {} for the class name".into());
        }
        registry::validate(self)
    }
}

/// Brings a run's `config.json` written before the task sections up to date: drops `null`
/// sections and moves the keys that became task keys into the section of the run's task
/// (dropping them for other tasks, which never read them).
fn upgrade_run_json(value: &mut serde_json::Value) {
    let Some(map) = value.as_object_mut() else { return };
    map.retain(|_, v| !v.is_null());
    let objective = map.get("train").and_then(|t| t.get("objective")).and_then(|o| o.as_str()).unwrap_or("contrastive").to_string();
    for (key, section) in [("loss", "contrastive"), ("zero_shot_head", "supervised"), ("label_smoothing", "supervised")] {
        let Some(moved) = map.get_mut("train").and_then(|t| t.as_object_mut()).and_then(|t| t.remove(key)) else { continue };
        if objective == section
            && !moved.is_null()
            && let Some(table) = map.entry(section).or_insert_with(|| serde_json::json!({})).as_object_mut()
        {
            table.entry(key).or_insert(moved);
        }
    }
}

/// `--set` values: numbers and booleans typed, `[a, b]` a list (of items without commas;
/// `["cuda:0", "cuda:1"]`), anything else a string (surrounding double quotes dropped in lists).
fn parse_override(value: &str) -> config::Value {
    if let Some(items) = value.strip_prefix('[').and_then(|v| v.strip_suffix(']')) {
        let items: Vec<config::Value> = items
            .split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .map(|item| parse_override(item.strip_prefix('"').and_then(|i| i.strip_suffix('"')).unwrap_or(item)))
            .collect();
        return items.into();
    }
    if let Ok(v) = value.parse::<i64>() {
        v.into()
    } else if let Ok(v) = value.parse::<f64>() {
        v.into()
    } else if let Ok(v) = value.parse::<bool>() {
        v.into()
    } else {
        value.into()
    }
}

#[cfg(test)]
mod tests {
    use super::{RunSection, parse_override, upgrade_run_json};

    #[test]
    fn run_devices_are_checked_naming_the_entry() {
        let run = |device: Option<&str>, devices: &[&str], precision: &str| RunSection {
            device: device.map(String::from),
            devices: devices.iter().map(|d| d.to_string()).collect(),
            precision: precision.into(),
            ..RunSection::default()
        };
        let ranks = run(None, &["flex", "flex", "flex"], "bf16");
        assert_eq!((ranks.validate(), ranks.backend()), (Ok(()), "flex"));
        assert_eq!(run(Some("flex"), &["flex"], "pure-bf16").validate(), Ok(()));
        assert_eq!(RunSection::default().backend(), "flex");
        let refused = [
            (run(None, &["flex:1"], "f32"), "run.devices[0] = \"flex:1\": the flex backend has one device"),
            (run(None, &["flex", "gpu:0"], "f32"), "run.devices[1] = \"gpu:0\": \"gpu\" is no backend"),
            (run(None, &["flex", "flex:x"], "f32"), "run.devices[1] = \"flex:x\": \"x\" is not a device index"),
            (run(Some("flex"), &[], "fp8"), "run.precision = \"fp8\""),
        ];
        for (section, expected) in refused {
            let error = section.validate().unwrap_err();
            assert!(error.contains(expected), "{error}");
        }
        if !cfg!(feature = "cuda") {
            let error = run(None, &["cuda:0", "cuda:1"], "f32").validate().unwrap_err();
            assert!(error.contains("run.devices[0] = \"cuda:0\": this clipforge was built without the cuda backend"), "{error}");
            let error = run(Some("flex"), &["flex", "cuda:1"], "f32").validate().unwrap_err();
            assert!(error.contains("run.devices[1]"), "{error}");
        }
    }

    #[test]
    fn set_takes_lists() {
        let value = parse_override(r#"["cuda:0", "cuda:1"]"#);
        assert_eq!(value.into_array().unwrap().into_iter().map(|v| v.into_string().unwrap()).collect::<Vec<_>>(), ["cuda:0", "cuda:1"]);
        assert_eq!(parse_override("[]").into_array().unwrap().len(), 0);
    }

    #[test]
    fn a_run_config_written_before_the_task_sections_is_upgraded() {
        let mut old = serde_json::json!({
            "train": {"objective": "supervised", "loss": "infonce", "zero_shot_head": false, "label_smoothing": 0.1, "lr": 0.1},
            "segmentation": null, "video": null, "distill": null, "detection": null,
        });
        upgrade_run_json(&mut old);
        assert_eq!(
            old,
            serde_json::json!({
                "train": {"objective": "supervised", "lr": 0.1},
                "supervised": {"zero_shot_head": false, "label_smoothing": 0.1},
            })
        );
    }
}

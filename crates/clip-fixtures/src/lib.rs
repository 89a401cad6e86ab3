//! # clip-fixtures
//!
//! A test helper, not published: discovery of reference fixtures (tensors produced by open_clip,
//! transformers and each method's official code), shared by the parity tests of every ClipForge
//! crate.
//!
//! The root is `$CLIP_FIXTURES`, or `../shared/fixtures` beside the workspace. Each
//! `models/<name>/fixture.json` names its `format`; parity tests handle the formats they know
//! and fail on unknown ones.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use clip_core::weights::{Checkpoint, RawTensor};
use clip_core::{ClipError, Result};

/// The fixture root: `$CLIP_FIXTURES` if set, else `<workspace>/../shared/fixtures`.
pub fn root() -> PathBuf {
    match std::env::var_os("CLIP_FIXTURES") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures"),
    }
}

/// One `models/<name>/` fixture folder.
#[derive(Debug, Clone)]
pub struct ModelFixture {
    /// The folder.
    pub dir: PathBuf,
    /// `format` from `fixture.json` (`open_clip`, `hf_clip`, `hf_groupvit`, ...).
    pub format: String,
    /// The whole `fixture.json`.
    pub meta: serde_json::Value,
}

impl ModelFixture {
    /// `model_config` from `fixture.json`.
    pub fn model_config(&self) -> serde_json::Value {
        self.meta["model_config"].clone()
    }

    /// Tensors of `<dir>/<name>.safetensors` (`model`, `inputs`, `expected`).
    pub fn tensors(&self, name: &str) -> Result<BTreeMap<String, RawTensor>> {
        read_tensors(&self.dir.join(format!("{name}.safetensors")))
    }

    /// Path of `<dir>/<name>.safetensors`.
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.safetensors"))
    }
}

/// Every model fixture under `root/models`, sorted by folder name.
pub fn model_fixtures(root: &Path) -> Result<Vec<ModelFixture>> {
    fixtures_in(&root.join("models"))
}

/// Every ResNet CLIP fixture under `root/resnet` (the layout of `models/`), sorted by name.
pub fn resnet_fixtures(root: &Path) -> Result<Vec<ModelFixture>> {
    fixtures_in(&root.join("resnet"))
}

/// Every fixture folder (one holding `fixture.json`) directly under `dir`, sorted by name.
fn fixtures_in(models: &Path) -> Result<Vec<ModelFixture>> {
    let entries = std::fs::read_dir(models).map_err(|e| ClipError::io(models, e))?;
    let mut dirs: Vec<PathBuf> = entries
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    dirs.into_iter()
        .map(|dir| {
            let meta_path = dir.join("fixture.json");
            let text = std::fs::read_to_string(&meta_path).map_err(|e| ClipError::io(&meta_path, e))?;
            let meta: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| ClipError::checkpoint(&meta_path, e.to_string()))?;
            let format = meta["format"]
                .as_str()
                .ok_or_else(|| ClipError::checkpoint(&meta_path, "no string 'format' key"))?
                .to_string();
            Ok(ModelFixture { dir, format, meta })
        })
        .collect()
}

/// All tensors of a safetensors file, as f32.
pub fn read_tensors(path: &Path) -> Result<BTreeMap<String, RawTensor>> {
    Ok(Checkpoint::read(path)?.tensors)
}

/// Largest and mean absolute difference between two equally long slices.
pub fn abs_diff(got: &[f32], expected: &[f32]) -> (f32, f32) {
    let max = got
        .iter()
        .zip(expected)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    let mean = got.iter().zip(expected).map(|(a, b)| (a - b).abs()).sum::<f32>() / got.len().max(1) as f32;
    (max, mean)
}

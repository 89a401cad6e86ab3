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

    /// Tensors of `<dir>/<name>.safetensors` or, where only that exists, the gzip-compressed
    /// `<dir>/<name>.safetensors.gz` (`model`, `inputs`, `expected`).
    pub fn tensors(&self, name: &str) -> Result<BTreeMap<String, RawTensor>> {
        Ok(self.checkpoint(name)?.tensors)
    }

    /// As [`tensors`](Self::tensors), as a [`Checkpoint`] naming the file it came from (for
    /// loaders that take a checkpoint).
    pub fn checkpoint(&self, name: &str) -> Result<Checkpoint> {
        let plain = self.file(name);
        if plain.is_file() {
            return Checkpoint::read(&plain);
        }
        let gz = self.dir.join(format!("{name}.safetensors.gz"));
        read_gzip_safetensors(&gz)
    }

    /// Path of `<dir>/<name>.safetensors`.
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.safetensors"))
    }

    /// The folder's name (`clip4clip-seqTransf`, ...).
    pub fn name(&self) -> String {
        self.dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
    }
}

/// Reads a gzip-compressed safetensors file: decompressed into a uniquely named temporary
/// file, read, and removed. The checkpoint names the `.gz` file.
fn read_gzip_safetensors(gz: &Path) -> Result<Checkpoint> {
    use std::io::Read;
    use std::sync::atomic::{AtomicUsize, Ordering};
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let file = std::fs::File::open(gz).map_err(|e| ClipError::io(gz, e))?;
    let mut bytes = Vec::new();
    flate2::read::GzDecoder::new(file)
        .read_to_end(&mut bytes)
        .map_err(|e| ClipError::io(gz, e))?;
    let tmp = std::env::temp_dir().join(format!(
        "clip-fixture-{}-{}.safetensors",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&tmp, &bytes).map_err(|e| ClipError::io(&tmp, e))?;
    let read = Checkpoint::read(&tmp);
    let _ = std::fs::remove_file(&tmp);
    let mut checkpoint = read.map_err(|e| ClipError::checkpoint(gz, e.to_string()))?;
    checkpoint.path = gz.to_path_buf();
    Ok(checkpoint)
}

/// Every model fixture under `root/models`, sorted by folder name.
pub fn model_fixtures(root: &Path) -> Result<Vec<ModelFixture>> {
    fixtures_in(&root.join("models"))
}

/// Every ResNet CLIP fixture under `root/resnet` (the layout of `models/`), sorted by name.
pub fn resnet_fixtures(root: &Path) -> Result<Vec<ModelFixture>> {
    fixtures_in(&root.join("resnet"))
}

/// Every fixture of a method's official code under `root/methods`, sorted by folder name.
pub fn method_fixtures(root: &Path) -> Result<Vec<ModelFixture>> {
    fixtures_in(&root.join("methods"))
}

/// The method-fixture formats and the crate whose parity tests check each. A format not listed
/// here is unknown and fails every method parity test.
pub const METHOD_FORMATS: &[(&str, &str)] = &[
    ("clip4clip", "clip-video"),
    ("actionclip", "clip-video"),
    ("lseg", "clip-seg"),
    ("audioclip", "clip-audio (issue 15)"),
    ("pointclip-projection", "clip-3d (issue 16)"),
    ("pointclip-zeroshot", "clip-3d (issue 16)"),
    ("pointclip-adapter", "clip-3d (issue 16)"),
    ("pointclip-fewshot", "clip-3d (issue 16)"),
    ("depthclip", "clip-3d (issue 16)"),
];

/// Which crate checks the method fixture `fixture`; an error naming the folder for a format
/// not in [`METHOD_FORMATS`].
pub fn method_owner(fixture: &ModelFixture) -> Result<&'static str> {
    METHOD_FORMATS
        .iter()
        .find(|(format, _)| *format == fixture.format)
        .map(|(_, owner)| *owner)
        .ok_or_else(|| {
            ClipError::checkpoint(
                fixture.dir.join("fixture.json"),
                format!(
                    "unknown method fixture format '{}' (known: {})",
                    fixture.format,
                    METHOD_FORMATS.iter().map(|(f, _)| *f).collect::<Vec<_>>().join(", ")
                ),
            )
        })
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

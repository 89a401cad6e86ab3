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

/// The device the parity tests run on: `flex`, or the backend `BURN_DEVICE` names (`wgpu`,
/// `cuda`, ...; burn's own selection, so one test binary runs on every backend it was built
/// with). A build with `--features wgpu` still tests on flex unless `BURN_DEVICE` says
/// otherwise: `cargo test --workspace --features wgpu` runs every test on flex, and `cargo
/// test-wgpu` then runs the parity tests of that same build again with `BURN_DEVICE=wgpu` (see
/// docs/backends.md). An unknown or not-compiled-in `BURN_DEVICE` panics (burn's message).
///
/// Where the device cannot run, this skips or fails as [`usable`] says:
///
/// ```ignore
/// let Some(device) = clip_fixtures::device() else { return };
/// ```
pub fn device() -> Option<burn::tensor::Device> {
    let device = match std::env::var_os("BURN_DEVICE") {
        Some(_) => burn::tensor::Device::default(),
        None => burn::tensor::Device::flex(),
    };
    usable(device)
}

/// `device`, once a small computation on it has given the right numbers (tried once per device
/// and test binary). Where it cannot run (a wgpu build on a machine without a Vulkan driver, a
/// CUDA build without a GPU), this prints why and returns `None`, and the caller skips its
/// checks; under CI (`CI` set) it panics instead, so a CI that lost its driver fails rather than
/// passing tests that never ran.
pub fn usable(device: burn::tensor::Device) -> Option<burn::tensor::Device> {
    use std::collections::BTreeMap;
    use std::sync::Mutex;
    static PROBES: Mutex<BTreeMap<String, std::result::Result<(), String>>> = Mutex::new(BTreeMap::new());
    let name = format!("{device:?}");
    let probe = PROBES
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .entry(name.clone())
        .or_insert_with(|| probe(&device, &name))
        .clone();
    match probe {
        Ok(()) => Some(device),
        Err(reason) if std::env::var_os("CI").is_some() => {
            panic!("{reason} (CI is set, so this fails instead of skipping; on a machine without a GPU install Mesa's lavapipe: apt install mesa-vulkan-drivers)")
        }
        Err(reason) => {
            say(&format!(
                "SKIPPED: {reason}; install a Vulkan driver (Mesa's lavapipe: apt install mesa-vulkan-drivers) or unset BURN_DEVICE"
            ));
            None
        }
    }
}

/// Computes 1+1, 2+2 on `device`: `Err` says why it cannot be used.
fn probe(device: &burn::tensor::Device, name: &str) -> std::result::Result<(), String> {
    let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let x = burn::tensor::Tensor::<1>::from_data(burn::tensor::TensorData::new(vec![1.0f32, 2.0], [2]), device);
        (x.clone() + x).into_data().iter::<f32>().collect::<Vec<_>>()
    }));
    match ran {
        Ok(values) if values == [2.0, 4.0] => {
            say(&format!("clip-fixtures: tests run on {name}"));
            Ok(())
        }
        Ok(values) => Err(format!("{name} computed 1+1, 2+2 as {values:?}")),
        Err(payload) => {
            let reason = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "it panicked".into());
            Err(format!("{name} cannot run here: {reason}"))
        }
    }
}

/// Writes a line to the process's stderr past the test harness's output capture (which takes
/// only `print!`/`eprint!`), so that a skip is visible in `cargo test`'s output.
fn say(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

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
    ("audioclip", "clip-audio"),
    ("pointclip-projection", "clip-3d"),
    ("pointclip-zeroshot", "clip-3d"),
    ("pointclip-adapter", "clip-3d"),
    ("pointclip-fewshot", "clip-3d"),
    ("depthclip", "clip-3d"),
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
    // NaN wins: `f32::max` would skip it and report a NaN output as matching.
    let max = got
        .iter()
        .zip(expected)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, |worst, d| if d.is_nan() || worst.is_nan() { f32::NAN } else { worst.max(d) });
    let mean = got.iter().zip(expected).map(|(a, b)| (a - b).abs()).sum::<f32>() / got.len().max(1) as f32;
    (max, mean)
}

/// Absolute tolerance of method parity checks: the method fixtures are f32 computations of the
/// official code, which a correct f32 port meets (the README's bound).
pub const METHOD_TOLERANCE: f32 = 1e-4;

/// Compares a port's outputs with a fixture's `expected` tensors: every comparison within a
/// tolerance, and [`finish`](Self::finish) fails when an expected tensor was never compared (an
/// output of a fixture the test does not know). Panics name the fixture and the tensor.
pub struct Comparison<'a> {
    fixture: &'a ModelFixture,
    expected: BTreeMap<String, RawTensor>,
    errors: Vec<(String, f32)>,
}

impl<'a> Comparison<'a> {
    /// The expected tensors of `fixture`.
    pub fn new(fixture: &'a ModelFixture) -> Self {
        let expected = fixture.tensors("expected").unwrap_or_else(|e| panic!("{e}"));
        Self { fixture, expected, errors: Vec::new() }
    }

    /// Expected tensor `key`.
    pub fn expected(&self, key: &str) -> &RawTensor {
        self.expected
            .get(key)
            .unwrap_or_else(|| panic!("{}: expected.safetensors has no '{key}'", self.fixture.name()))
    }

    /// `got` against `key` within [`METHOD_TOLERANCE`] (shapes compared without size-1 axes).
    pub fn check<const D: usize>(&mut self, key: &str, got: burn::tensor::Tensor<D>) {
        self.check_within(key, got, METHOD_TOLERANCE);
    }

    /// `got` against `key` within `tolerance`, absolute.
    pub fn check_within<const D: usize>(&mut self, key: &str, got: burn::tensor::Tensor<D>, tolerance: f32) {
        let data = got.into_data();
        let shape = data.shape().to_vec();
        let values: Vec<f32> = data.iter::<f32>().collect();
        self.check_values(key, &values, &shape, tolerance);
    }

    /// Values `got` of shape `shape` against `key` within `tolerance` (token ids: 0).
    pub fn check_values(&mut self, key: &str, got: &[f32], shape: &[usize], tolerance: f32) {
        let want = self.expected(key);
        let squeeze = |s: &[usize]| s.iter().copied().filter(|&d| d != 1).collect::<Vec<_>>();
        assert_eq!(squeeze(shape), squeeze(&want.shape), "{}: '{key}' shape", self.fixture.name());
        let (max, _) = abs_diff(got, &want.values);
        assert!(
            max <= tolerance && !max.is_nan(),
            "{}: '{key}' differs by {max:.3e} (tolerance {tolerance:e})",
            self.fixture.name()
        );
        self.errors.push((key.to_string(), max));
    }

    /// Fails when an expected tensor was not compared; prints the fixture's line: the number
    /// of tensors, the largest error and where, and every tensor's error.
    pub fn finish(self) {
        let missed: Vec<&String> =
            self.expected.keys().filter(|k| !self.errors.iter().any(|(c, _)| c == *k)).collect();
        assert!(missed.is_empty(), "{}: expected tensors not compared: {missed:?}", self.fixture.name());
        let worst = self.errors.iter().fold((0.0f32, ""), |w, (k, e)| if *e >= w.0 { (*e, k.as_str()) } else { w });
        let all: Vec<String> = self.errors.iter().map(|(k, e)| format!("{k} {e:.1e}")).collect();
        println!(
            "{}: {} tensors, max abs error {:.2e} ({}) [{}]",
            self.fixture.name(),
            self.errors.len(),
            worst.0,
            worst.1,
            all.join(", ")
        );
    }
}

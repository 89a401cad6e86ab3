//! A short training run on the wgpu backend (built only with `--features wgpu`, and run by
//! `cargo test --workspace --features wgpu`; CI runs it on Mesa's lavapipe, a Vulkan driver on
//! the CPU): the quickstart's tiny CLIP, fine-tuned for a few
//! steps from the same starting weights on `flex` and on `wgpu`, must give the same loss at
//! every step and evaluate to the same numbers.
//!
//! The runs start from a checkpoint exported on flex, not from each backend's own random
//! initialization: `run.seed` seeds each backend's random generator, and flex and the cubecl
//! runtimes draw different numbers from the same seed. Everything else (data order, crops,
//! the learning-rate schedule) is computed on the host and identical.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Largest difference allowed between a flex and a wgpu loss at the same step. The losses are
/// about ln(16) = 2.8 and every kernel is f32 on both backends, so they agree to rounding; the
/// parity tests' bound for outputs (1e-4) holds after 8 AdamW steps, and a wrong backward kernel
/// shows as a difference in the first decimal.
const LOSS_TOLERANCE: f64 = 1e-4;

/// A run the size of `cli.rs`'s fast runs: 16-sample batches, a loss logged at every step.
const FAST: &[&str] = &[
    "--set", "train.batch_size=16", "--set", "train.log_every=1", "--set", "train.warmup_steps=2",
];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn clipforge(args: &[&str]) {
    let output = Command::new(env!("CARGO_BIN_EXE_clipforge")).current_dir(workspace()).args(args).output().unwrap();
    assert!(output.status.success(), "clipforge {}:\n{}", args.join(" "), String::from_utf8_lossy(&output.stderr));
}

fn losses(output: &Path) -> BTreeMap<u64, f64> {
    let text = std::fs::read_to_string(output.join("metrics.jsonl")).unwrap();
    text.lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .map(|v| (v["step"].as_u64().unwrap(), v["loss"].as_f64().unwrap()))
        .collect()
}

fn summary(output: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(output.join("summary.json")).unwrap()).unwrap()
}

#[test]
fn a_short_run_on_wgpu_gives_the_losses_of_flex() {
    // Skipped (or, under CI, failed) where no Vulkan driver is found.
    let wgpu = burn::tensor::Device::wgpu(burn::tensor::DeviceKind::default());
    let Some(_) = clip_fixtures::usable(wgpu) else { return };
    let dir = tempfile::Builder::new().prefix("clipforge-wgpu-").tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_string();

    // Starting weights: one step on flex, exported as a Hugging Face directory.
    let init = path("init");
    let mut args = vec!["train", "configs/quickstart.toml", "--output", &init, "--set", "train.max_steps=1"];
    args.extend(FAST);
    clipforge(&args);
    let (start, checkpoint) = (path("start"), path("init/checkpoints/step-00000001"));
    clipforge(&[
        "export", "--model", "configs/models/tiny-digits.json", "--weights", &checkpoint, "--format", "hf",
        "--output", &start,
    ]);

    let weights = format!("model.weights={start}");
    let mut runs = BTreeMap::new();
    for device in ["flex", "wgpu"] {
        let output = path(device);
        let set_device = format!("run.device={device}");
        let mut args = vec!["train", "configs/quickstart.toml", "--output", &output, "--set", &weights];
        args.extend(["--set", "train.max_steps=8", "--set", &set_device]);
        args.extend(FAST);
        let started = std::time::Instant::now();
        clipforge(&args);
        eprintln!("{device}: {:.1} s", started.elapsed().as_secs_f64());
        runs.insert(device, (losses(Path::new(&output)), summary(Path::new(&output))));
    }

    let (flex, wgpu) = (&runs["flex"], &runs["wgpu"]);
    assert_eq!(flex.0.len(), 8, "flex logged a loss per step");
    assert_eq!(wgpu.0.keys().collect::<Vec<_>>(), flex.0.keys().collect::<Vec<_>>(), "the same steps");
    let mut largest = 0.0f64;
    for (step, want) in &flex.0 {
        let got = wgpu.0[step];
        let difference = (got - want).abs();
        eprintln!("step {step}: flex {want:.6}, wgpu {got:.6}, difference {difference:.2e}");
        assert!(got.is_finite() && difference <= LOSS_TOLERANCE, "step {step}: wgpu loss {got} against flex {want}");
        largest = largest.max(difference);
    }
    eprintln!("largest loss difference {largest:.2e} (tolerance {LOSS_TOLERANCE:e})");
    for key in ["zero_shot_top1", "zero_shot_top5"] {
        let (want, got) = (flex.1[key].as_f64().unwrap(), wgpu.1[key].as_f64().unwrap());
        eprintln!("{key}: flex {want}, wgpu {got}");
        // One of the 359 validation digits may change its top label on a near tie.
        assert!((got - want).abs() <= 1.0 / 359.0 + 1e-9, "{key}: wgpu {got} against flex {want}");
    }
}

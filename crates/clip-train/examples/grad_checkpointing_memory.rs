//! What `train.grad_checkpointing` saves: the peak memory of contrastive training steps of a
//! small ViT CLIP with and without burn's balanced gradient checkpointing, each in a fresh
//! process of its own (the peak resident set, `VmHWM`, only grows).
//!
//! ```sh
//! cargo run --release -p clip-train --example grad_checkpointing_memory
//! ```
//!
//! The figures are the CPU's (`flex`): resident memory, not an accelerator's.

use std::process::Command;
use std::time::Instant;

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::{Device, Distribution, Int, Tensor};
use clip_core::ClipConfig;
use clip_task::contrastive::{ContrastiveBatch, ContrastiveObjective};
use clip_train::precision::Precision;
use clip_train::trainer::gradients;

/// A ViT-B-32-shaped CLIP, smaller: 64-pixel images in 8-pixel patches (65 tokens), 6 blocks
/// of width 256 per tower, 32-token captions.
const MODEL: &str = r#"{"embed_dim": 256,
    "vision_cfg": {"image_size": 64, "layers": 6, "width": 256, "patch_size": 8, "head_width": 64},
    "text_cfg": {"context_length": 32, "width": 256, "heads": 4, "layers": 6, "vocab_size": 49408}}"#;
const BATCH: usize = 64;
const STEPS: usize = 3;

fn main() -> anyhow::Result<()> {
    match std::env::args().nth(1).as_deref() {
        Some(mode @ ("off" | "on")) => measure(mode == "on"),
        _ => {
            println!("{BATCH} samples per step, {STEPS} steps (forward and backward) of a 6+6-block width-256 ViT CLIP on flex");
            println!("| grad_checkpointing | peak RSS (MiB) | RSS with model and batch (MiB) | added by the steps (MiB) | seconds per step |");
            println!("| --- | --- | --- | --- | --- |");
            for mode in ["off", "on"] {
                let output = Command::new(std::env::current_exe()?).arg(mode).output()?;
                anyhow::ensure!(output.status.success(), "{mode}: {}", String::from_utf8_lossy(&output.stderr));
                print!("{}", String::from_utf8_lossy(&output.stdout));
            }
            Ok(())
        }
    }
}

/// One table row: this process's training steps, with checkpointing or without.
fn measure(checkpointing: bool) -> anyhow::Result<()> {
    let device = Device::flex().autodiff();
    let device = if checkpointing { device.gradient_checkpointing() } else { device };
    device.seed(0);
    let model = ClipConfig::from_open_clip_json(MODEL, "memory")?.init(&device);
    // Parameters initialize lazily: initialize them now, so that the steps' figure is theirs.
    model.visit(&mut Initialize);
    let objective = ContrastiveObjective::default();
    let images = Tensor::<4>::random([BATCH, 3, 64, 64], Distribution::Normal(0.0, 1.0), &device);
    let tokens = Tensor::<2, Int>::random([BATCH, 32], Distribution::Uniform(0.0, 49408.0), &device);
    let before = memory_kib("VmRSS")?;
    let started = Instant::now();
    for _ in 0..STEPS {
        let batch = ContrastiveBatch::new(images.clone(), tokens.clone())?;
        let (loss, _, grads) = gradients(&objective, &model, batch, Precision::Uniform, 1.0)?;
        anyhow::ensure!(loss.is_finite() && !grads.is_empty(), "a training step failed");
    }
    let seconds = started.elapsed().as_secs_f64() / STEPS as f64;
    let peak = memory_kib("VmHWM")?;
    let mib = |kib: u64| kib as f64 / 1024.0;
    println!(
        "| {} | {:.0} | {:.0} | {:.0} | {seconds:.2} |",
        if checkpointing { "on" } else { "off" },
        mib(peak),
        mib(before),
        mib(peak.saturating_sub(before))
    );
    Ok(())
}

/// Initializes every parameter by reading it.
struct Initialize;

impl ModuleVisitor for Initialize {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        param.val().sum().into_scalar::<f32>();
    }
}

/// A `/proc/self/status` figure in KiB (`VmRSS`, `VmHWM`); Linux only.
fn memory_kib(key: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(key)?.trim_start_matches(':').trim().strip_suffix("kB")?.trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("/proc/self/status has no {key} (the measurement needs Linux)"))
}

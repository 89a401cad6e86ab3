//! Developer commands: `cargo xtask <command>`.
//!
//! - `digits [ASSET]`: regenerate `datasets/digits` from the UCI handwritten digits
//!   (`../shared/assets/digits.csv.gz` by default).
//! - `shapes`: regenerate `datasets/shapes` and `datasets/shapes-colors`, tiny generated
//!   segmentation sets.
//! - `det-shapes`: regenerate `datasets/det-shapes`, a tiny generated COCO detection set.
//! - `videos [--train N --val N --frames N] [--output DIR]`: regenerate `datasets/moving-shapes`, a
//!   tiny generated video set (clip_video's `MovingShapesConfig`), or a larger one elsewhere.
//! - `pointclouds`: regenerate `datasets/pointclouds`, a tiny generated point-cloud set.
//! - `spoken-digits`: regenerate `datasets/spoken-digits`, espeak-ng digit words with digit images.
//! - `bench`: throughput of ViT-B-32 and the quickstart model (image and text encoding, a training
//!   step) on the CPU, or on a GPU with `--device wgpu|cuda`, with open_clip's same measurement
//!   beside it when a Python has it; `--ops` times single ops against PyTorch's.

mod bench;
mod data_bench;
mod det_shapes;
mod digits;
mod pointclouds;
mod shapes;
mod spoken_digits;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

const USAGE: &str = "usage: cargo xtask <command>
  digits [ASSET]  regenerate datasets/digits from digits.csv.gz (default ../shared/assets/digits.csv.gz)
  shapes          regenerate datasets/shapes and datasets/shapes-colors (generated shapes with label masks and captions)
  det-shapes      regenerate datasets/det-shapes (generated shapes with COCO boxes, captions and proposals)
  videos [--train N] [--val N] [--frames N] [--plain true] [--output DIR]
                  regenerate datasets/moving-shapes (generated moving-shape clips with captions and labels)
  pointclouds     regenerate datasets/pointclouds (generated primitive point clouds with labels)
  spoken-digits   regenerate datasets/spoken-digits (espeak-ng digit words paired with digit images)
  bench [--models A,B] [--iters N] [--ops] [--device flex|wgpu|cuda] [--batches A,B] [--train-batch N]
                  encode and train-step throughput (or single ops), ours and open_clip's side by side;
                  flex (CPU, batches 1,8,32, train 32) by default, wgpu or cuda (batches 32,256, train 256)
                  beside torch on cuda where it has one
  data-bench [SAMPLES] [WORKERS]  samples/s the tar-shard loader decodes per worker, JPEG at 224 px
  sketch-bench    CLIPasso seconds per iteration at 224 px, RN50 and the tiny digits ResNet (CPU)";

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = workspace_root();
    match args.first().map(String::as_str) {
        Some("digits") => {
            let asset = args
                .get(1)
                .map(PathBuf::from)
                .unwrap_or_else(|| root.join("../shared/assets/digits.csv.gz"));
            digits::convert(&asset, &root.join("datasets/digits"))
        }
        Some("shapes") => shapes::generate(&root.join("datasets")),
        Some("det-shapes") => det_shapes::generate(&root.join("datasets/det-shapes")),
        Some("videos") => videos(&root, &args[1..]),
        Some("pointclouds") => pointclouds::generate(&root.join("datasets/pointclouds")),
        Some("spoken-digits") => spoken_digits::generate(&root.join("datasets/spoken-digits")),
        Some("bench") => bench::run(&root, &args[1..]),
        Some("data-bench") => data_bench::run(&args[1..]),
        Some("sketch-bench") => cargo(&root, &["bench", "-p", "clip-sketch", "--bench", "sketch_step"]),
        Some(other) => bail!("unknown command '{other}'\n{USAGE}"),
        None => bail!("{USAGE}"),
    }
}

/// `videos`: the moving-shapes set, by default the shipped one.
fn videos(root: &Path, args: &[String]) -> anyhow::Result<()> {
    let mut config = clip_video::data::MovingShapesConfig::new();
    let mut output = root.join("datasets/moving-shapes");
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        let value = rest.next().with_context(|| format!("videos: {arg} needs a value"))?;
        let number = || value.parse::<usize>().with_context(|| format!("videos: {arg} {value:?} is not a number"));
        match arg.as_str() {
            "--train" => config.train = number()?,
            "--val" => config.val = number()?,
            "--frames" => config.frames = number()?,
            "--output" => output = PathBuf::from(value),
            "--plain" => config.plain = value.parse().with_context(|| format!("videos: --plain {value:?} is not true or false"))?,
            other => bail!("videos: unknown argument {other:?} (use --train, --val, --frames, --plain, --output)"),
        }
    }
    config.generate(&output)?;
    println!("wrote {} training and {} validation clips to {}", config.train, config.val, output.display());
    Ok(())
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs cargo with `args` in the workspace root, failing if it fails.
fn cargo(root: &Path, args: &[&str]) -> anyhow::Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(&cargo)
        .args(args)
        .current_dir(root)
        .status()
        .with_context(|| format!("running {cargo}"))?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}

//! `cargo xtask bench`: our throughput (crates/clip-core/benches/throughput.rs) and, where a
//! Python with torch and open_clip is found, open_clip's same measurement (`bench_open_clip.py`:
//! same models, random weights, batches and threads, f32 on both sides) in one invocation,
//! printed side by side.
//!
//! `--device flex` (the default) measures the CPU against torch on the CPU. `--device wgpu` and
//! `--device cuda` build the bench with clip-core's `wgpu` or `cuda` feature and set
//! `BURN_DEVICE` so that burn's default device is that backend; torch then runs on CUDA when it
//! sees a GPU (for wgpu there is no torch counterpart, so CUDA is the nearest), else on the CPU.
//! The table's header names the device of each column.
//!
//! The Python is `CLIPFORGE_BENCH_PYTHON` (a venv's `bin/python`), else `python3` when it
//! imports torch and open_clip. Make one with
//! `python3 -m venv ~/.venvs/clipbench && ~/.venvs/clipbench/bin/pip install torch open_clip_torch`
//! (add `--index-url https://download.pytorch.org/whl/cpu` for the CPU-only wheel).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, bail};

/// Models measured unless `--models` names others: ViT-B-32 and the quickstart's tiny model.
const DEFAULT_MODELS: &str = "ViT-B-32,configs/models/tiny-digits.json";

/// (model, measurement, batch) -> items per second.
type Figures = BTreeMap<(String, String, usize), f64>;

/// Where our side runs: burn's `flex` CPU backend, or a GPU through clip-core's `wgpu` or `cuda`
/// feature.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BenchDevice {
    Flex,
    Wgpu,
    Cuda,
}

impl BenchDevice {
    fn parse(name: &str) -> anyhow::Result<Self> {
        match name {
            "flex" | "cpu" => Ok(Self::Flex),
            "wgpu" => Ok(Self::Wgpu),
            "cuda" => Ok(Self::Cuda),
            other => bail!("--device {other:?}: use flex, wgpu or cuda"),
        }
    }

    /// The name `BURN_DEVICE` takes (burn-dispatch's `Device::default`) and clip-core's feature.
    fn name(self) -> &'static str {
        match self {
            Self::Flex => "flex",
            Self::Wgpu => "wgpu",
            Self::Cuda => "cuda",
        }
    }

    fn is_gpu(self) -> bool {
        self != Self::Flex
    }

    /// Encode batches and the training batch measured unless `--batches` / `--train-batch` say.
    fn default_batches(self) -> (&'static str, &'static str) {
        if self.is_gpu() { ("32,256", "256") } else { ("1,8,32", "32") }
    }
}

/// The command line of `cargo xtask bench`.
#[derive(Debug, PartialEq)]
struct Options {
    models: String,
    iters: Option<String>,
    ops: bool,
    device: BenchDevice,
    batches: String,
    train_batch: String,
}

fn parse_args(args: &[String]) -> anyhow::Result<Options> {
    let mut models = DEFAULT_MODELS.to_string();
    let mut iters = None;
    let mut ops = false;
    let mut device = BenchDevice::Flex;
    let mut batches = None;
    let mut train_batch = None;
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "--models" => models = rest.next().context("--models needs a comma-separated list")?.clone(),
            "--iters" => iters = Some(rest.next().context("--iters needs a number")?.clone()),
            "--ops" => ops = true,
            "--device" => device = BenchDevice::parse(rest.next().context("--device needs flex, wgpu or cuda")?)?,
            "--batches" => batches = Some(batch_list(rest.next().context("--batches needs a comma-separated list")?)?),
            "--train-batch" => {
                let batch = rest.next().context("--train-batch needs a number")?;
                let size = batch.trim().parse::<usize>().ok().filter(|&n| n > 0);
                let size = size.with_context(|| format!("--train-batch takes one batch size, not {batch:?}"))?;
                train_batch = Some(size.to_string());
            }
            other => bail!(
                "cargo xtask bench: unknown argument {other:?} (use --models A,B, --iters N, --ops, \
                 --device flex|wgpu|cuda, --batches A,B and --train-batch N)"
            ),
        }
    }
    if let Some(iters) = &iters {
        iters.parse::<usize>().with_context(|| format!("--iters {iters:?} is not a number"))?;
    }
    let (default_batches, default_train) = device.default_batches();
    Ok(Options {
        models,
        iters,
        ops,
        device,
        batches: batches.unwrap_or_else(|| default_batches.into()),
        train_batch: train_batch.unwrap_or_else(|| default_train.into()),
    })
}

/// `list` checked to be positive batch sizes separated by commas, without spaces.
fn batch_list(list: &str) -> anyhow::Result<String> {
    let sizes: Vec<usize> = list
        .split(',')
        .map(|b| b.trim().parse().ok().filter(|&n: &usize| n > 0).with_context(|| format!("{b:?} is not a batch size")))
        .collect::<anyhow::Result<_>>()?;
    Ok(sizes.iter().map(usize::to_string).collect::<Vec<_>>().join(","))
}

/// Runs both measurements and prints the table; `args` may hold `--models A,B`, `--iters N`,
/// `--ops` (single ops instead of whole models), `--device flex|wgpu|cuda`, `--batches A,B` and
/// `--train-batch N`.
pub fn run(root: &Path, args: &[String]) -> anyhow::Result<()> {
    let Options { models, iters, ops, device, batches, train_batch } = parse_args(args)?;
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let python = python_with_open_clip();
    if ops {
        if device.is_gpu() {
            bail!("--ops times the flex CPU backend only (benches/ops.rs against bench_ops.py on the CPU)");
        }
        return run_ops(root, iters.as_deref().unwrap_or("20"), threads, python.as_deref());
    }
    // torch's device: the CPU beside flex; CUDA beside a GPU backend when torch sees one.
    let torch_device = match &python {
        Some(python) if device.is_gpu() && torch_sees_cuda(python) => "cuda",
        _ => "cpu",
    };
    let iters = iters.unwrap_or_else(|| "3".into());
    let mut ours = Figures::new();
    let mut theirs = Figures::new();
    for model in models.split(',').map(str::trim).filter(|m| !m.is_empty()) {
        // JSON configs are named from the workspace root; the bench runs in its crate's folder.
        let spec = if model.ends_with(".json") { root.join(model).display().to_string() } else { model.to_string() };
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut command = Command::new(cargo);
        command.current_dir(root).args(["bench", "-p", "clip-core"]);
        if device.is_gpu() {
            command.args(["--features", device.name()]);
        }
        command
            .args(["--bench", "throughput"])
            .env("BURN_DEVICE", device.name())
            .env("CLIP_BENCH_MODEL", &spec)
            .env("CLIP_BENCH_ITERS", &iters)
            .env("CLIP_BENCH_BATCHES", &batches)
            .env("CLIP_BENCH_TRAIN_BATCH", &train_batch);
        let what = if device.is_gpu() {
            format!("BURN_DEVICE={0} cargo bench -p clip-core --features {0} --bench throughput", device.name())
        } else {
            "cargo bench -p clip-core --bench throughput".to_string()
        };
        let output = capture(command, &what)?;
        parse(&output, model, &mut ours);
        if let Some(python) = &python {
            let mut command = Command::new(python);
            command.arg(root.join("xtask/bench_open_clip.py")).args([
                "--model", &spec, "--batches", &batches, "--train-batch", &train_batch, "--iters", &iters, "--threads",
                &threads.to_string(), "--device", torch_device,
            ]);
            let output = capture(command, "xtask/bench_open_clip.py")?;
            parse(&output, model, &mut theirs);
        }
    }
    println!("\n{}", header_line(device, threads, &iters, python.is_some().then_some(torch_device)));
    let ours_column = match device {
        BenchDevice::Flex => "ours (flex, CPU)".to_string(),
        gpu => format!("ours ({0}, BURN_DEVICE={0})", gpu.name()),
    };
    let theirs_column = match torch_device {
        "cuda" => "open_clip (torch, cuda)",
        _ => "open_clip (torch, CPU)",
    };
    println!("| model | measurement | batch | {ours_column} | {theirs_column} | ratio |");
    println!("| --- | --- | --- | --- | --- | --- |");
    for ((model, what, batch), rate) in &ours {
        let other = theirs.get(&(model.clone(), what.clone(), *batch));
        let (other_text, ratio) = match other {
            Some(o) => (format!("{o:.1}"), format!("{:.2}", rate / o)),
            None => ("-".into(), "-".into()),
        };
        println!("| {model} | {what} | {batch} | {rate:.1} | {other_text} | {ratio} |");
    }
    if python.is_none() {
        println!(
            "\nopen_clip not measured: set CLIPFORGE_BENCH_PYTHON to a Python with torch and open_clip \
             (see docs/performance.md or xtask/src/bench.rs)"
        );
    }
    Ok(())
}

/// The line above the table: what was measured where, and in which precision.
fn header_line(device: BenchDevice, threads: usize, iters: &str, torch_device: Option<&str>) -> String {
    let ours = match device {
        BenchDevice::Flex => "ours on the CPU (flex)".to_string(),
        gpu => format!("ours on {0} (BURN_DEVICE={0})", gpu.name()),
    };
    let theirs = match torch_device {
        Some("cuda") => "open_clip on torch's cuda device".to_string(),
        Some(_) if device.is_gpu() => "open_clip on the CPU (torch sees no CUDA device)".to_string(),
        Some(_) => "open_clip on the CPU".to_string(),
        None => "open_clip not measured".to_string(),
    };
    format!(
        "{ours}, {theirs}; {threads} CPU threads, {iters} timed iterations (median), random weights, \
         f32 on both sides (no autocast, TF32 off in torch)"
    )
}

/// Whether `python`'s torch sees a CUDA device.
fn torch_sees_cuda(python: &str) -> bool {
    Command::new(python)
        .args(["-c", "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// `--ops`: single ops at the towers' shapes (benches/ops.rs and bench_ops.py), in microseconds.
fn run_ops(root: &Path, iters: &str, threads: usize, python: Option<&str>) -> anyhow::Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut command = Command::new(cargo);
    command.current_dir(root).args(["bench", "-p", "clip-core", "--bench", "ops"]).env("CLIP_BENCH_ITERS", iters);
    let ours = parse_ops(&capture(command, "cargo bench -p clip-core --bench ops")?);
    let theirs = match python {
        Some(python) => {
            let mut command = Command::new(python);
            command.arg(root.join("xtask/bench_ops.py")).args(["--iters", iters, "--threads", &threads.to_string()]);
            parse_ops(&capture(command, "xtask/bench_ops.py")?)
        }
        None => BTreeMap::new(),
    };
    println!("\n{threads} threads, median of {iters} runs, microseconds (lower is faster)");
    println!("| op | shape | ours (flex) | PyTorch | PyTorch time / ours |");
    println!("| --- | --- | --- | --- | --- |");
    for ((op, shape), micros) in &ours {
        // clip-core's own GELU is compared with PyTorch's one GELU.
        let key = (op.trim_end_matches("_all_cores").to_string(), shape.clone());
        let (other, ratio) = match theirs.get(&key) {
            Some(t) => (format!("{t:.1}"), format!("{:.2}", t / micros)),
            None => ("-".into(), "-".into()),
        };
        println!("| {op} | {shape} | {micros:.1} | {other} | {ratio} |");
    }
    Ok(())
}

/// The lines `op gelu [1600,3072]: 37480.7 us` as (op, shape) -> microseconds.
fn parse_ops(output: &str) -> BTreeMap<(String, String), f64> {
    output
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("op ")?;
            let (head, tail) = rest.split_once(": ")?;
            let (op, shape) = head.split_once(' ')?;
            let micros = tail.strip_suffix(" us")?.trim().parse().ok()?;
            Some(((op.to_string(), shape.to_string()), micros))
        })
        .collect()
}

/// Runs `command`, echoing and returning its standard output; an error if it fails.
fn capture(mut command: Command, what: &str) -> anyhow::Result<String> {
    let output = command.output().with_context(|| format!("running {what}"))?;
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    print!("{text}");
    if !output.status.success() {
        bail!("{what} failed ({}): {}", output.status, String::from_utf8_lossy(&output.stderr));
    }
    Ok(text)
}

/// The lines `encode_image  batch   8:    10.80 images/s` (and `encode_text`, `train step`).
fn parse(output: &str, model: &str, into: &mut Figures) {
    for line in output.lines() {
        let Some((head, tail)) = line.split_once(':') else { continue };
        let Some((what, batch)) = head.split_once("batch") else { continue };
        let (Ok(batch), Some(Ok(rate))) = (batch.trim().parse::<usize>(), tail.split_whitespace().next().map(str::parse::<f64>)) else {
            continue;
        };
        into.insert((model.to_string(), what.trim().to_string(), batch), rate);
    }
}

/// `CLIPFORGE_BENCH_PYTHON`, or `python3` if it imports torch and open_clip.
fn python_with_open_clip() -> Option<String> {
    let candidate = std::env::var("CLIPFORGE_BENCH_PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = Command::new(&candidate)
        .args(["-c", "import torch, open_clip"])
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        Some(candidate)
    } else {
        if std::env::var("CLIPFORGE_BENCH_PYTHON").is_ok() {
            eprintln!("CLIPFORGE_BENCH_PYTHON = {candidate}: it does not import torch and open_clip");
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_bench_lines_of_both_sides() {
        let mut figures = Figures::new();
        let text = "model x, device Flex, 3 timed iterations\nencode_image  batch   8:    10.80 images/s\n\
                    train step    batch  32:     1.93 samples/s (forward + backward + AdamW)\nnoise: 4\n";
        parse(text, "m", &mut figures);
        assert_eq!(figures.len(), 2);
        assert_eq!(figures[&("m".into(), "encode_image".into(), 8)], 10.8);
        assert_eq!(figures[&("m".into(), "train step".into(), 32)], 1.93);
    }

    #[test]
    fn parses_the_op_lines() {
        let ops = parse_ops("device Flex\nop gelu [544,256]: 1027.9 us\nop matmul [2,3,4]: 7 us\nop bad: x us\n");
        assert_eq!(ops.len(), 2);
        assert_eq!(ops[&("gelu".into(), "[544,256]".into())], 1027.9);
        assert_eq!(ops[&("matmul".into(), "[2,3,4]".into())], 7.0);
    }

    fn args(line: &str) -> Vec<String> {
        line.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn parses_the_device_and_batch_options() {
        let flex = parse_args(&[]).unwrap();
        assert_eq!((flex.device, flex.batches.as_str(), flex.train_batch.as_str()), (BenchDevice::Flex, "1,8,32", "32"));
        assert_eq!(flex.models, DEFAULT_MODELS);
        let cuda = parse_args(&args("--device cuda --models ViT-B-32")).unwrap();
        assert_eq!((cuda.device, cuda.batches.as_str(), cuda.train_batch.as_str()), (BenchDevice::Cuda, "32,256", "256"));
        let wgpu = parse_args(&args("--device wgpu --batches 8,16 --train-batch 8 --iters 2")).unwrap();
        assert_eq!(wgpu.device, BenchDevice::Wgpu);
        assert_eq!((wgpu.batches.as_str(), wgpu.train_batch.as_str(), wgpu.iters.as_deref()), ("8,16", "8", Some("2")));
        for bad in ["--device tpu", "--batches 8,x", "--batches 0", "--train-batch 8,16", "--iters many", "--device", "--frobnicate"] {
            assert!(parse_args(&args(bad)).is_err(), "{bad} was accepted");
        }
    }
}

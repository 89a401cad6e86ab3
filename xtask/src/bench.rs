//! `cargo xtask bench`: our CPU throughput (crates/clip-core/benches/throughput.rs) and, where a
//! Python with torch and open_clip is found, open_clip's same measurement (`bench_open_clip.py`:
//! same models, random weights, batches and threads) in one invocation, printed side by side.
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

/// Runs both measurements and prints the table; `args` may hold `--models A,B`, `--iters N`
/// and `--ops` (single ops instead of whole models).
pub fn run(root: &Path, args: &[String]) -> anyhow::Result<()> {
    let mut models = DEFAULT_MODELS.to_string();
    let mut iters = None;
    let mut ops = false;
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "--models" => models = rest.next().context("--models needs a comma-separated list")?.clone(),
            "--iters" => iters = Some(rest.next().context("--iters needs a number")?.clone()),
            "--ops" => ops = true,
            other => bail!("cargo xtask bench: unknown argument {other:?} (use --models A,B, --iters N and --ops)"),
        }
    }
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let python = python_with_open_clip();
    if ops {
        return run_ops(root, iters.as_deref().unwrap_or("20"), threads, python.as_deref());
    }
    let iters = iters.unwrap_or_else(|| "3".into());
    let mut ours = Figures::new();
    let mut theirs = Figures::new();
    for model in models.split(',').map(str::trim).filter(|m| !m.is_empty()) {
        // JSON configs are named from the workspace root; the bench runs in its crate's folder.
        let spec = if model.ends_with(".json") { root.join(model).display().to_string() } else { model.to_string() };
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut command = Command::new(cargo);
        command
            .current_dir(root)
            .args(["bench", "-p", "clip-core", "--bench", "throughput"])
            .env("CLIP_BENCH_MODEL", &spec)
            .env("CLIP_BENCH_ITERS", &iters)
            .env("CLIP_BENCH_BATCHES", "1,8,32")
            .env("CLIP_BENCH_TRAIN_BATCH", "32");
        let output = capture(command, "cargo bench -p clip-core --bench throughput")?;
        parse(&output, model, &mut ours);
        if let Some(python) = &python {
            let mut command = Command::new(python);
            command.arg(root.join("xtask/bench_open_clip.py")).args([
                "--model", &spec, "--batches", "1,8,32", "--train-batch", "32", "--iters", &iters, "--threads", &threads.to_string(),
            ]);
            let output = capture(command, "xtask/bench_open_clip.py")?;
            parse(&output, model, &mut theirs);
        }
    }
    println!("\n{threads} threads, {iters} timed iterations, random weights");
    println!("| model | measurement | batch | ours (flex) | open_clip | ratio |");
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
}

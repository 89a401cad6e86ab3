//! Developer commands: `cargo xtask <command>`.
//!
//! - `bench`: throughput of ViT-B-32 (image and text encoding, a training step) on the CPU.

use std::process::Command;

use anyhow::{Context, bail};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("bench") => cargo(&["bench", "-p", "clip-core", "--bench", "throughput"]),
        Some(other) => bail!("unknown command '{other}'\n{USAGE}"),
        None => bail!("{USAGE}"),
    }
}

const USAGE: &str = "usage: cargo xtask <command>\n  bench   ViT-B-32 encode and train-step throughput (CPU)";

/// Runs cargo with `args` in the workspace root, failing if it fails.
fn cargo(args: &[&str]) -> anyhow::Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
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

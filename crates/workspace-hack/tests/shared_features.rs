//! The list in this crate's `Cargo.toml` is complete: every crate that both CI builds compile
//! gets the same features in both, apart from burn and cubecl themselves, which the wgpu feature
//! changes by design. Fails with the entries to add when an update of burn or wgpu turns on more.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

/// Crate (`name vX.Y.Z`) to the union of the features cargo resolves for it.
type Features = BTreeMap<String, BTreeSet<String>>;

fn workspace_root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

/// `cargo tree` over the test build that `args` select.
fn resolved_features(args: &[&str]) -> Features {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(&cargo)
        .arg("tree")
        .args(args)
        .args(["--edges", "normal,build,dev", "--prefix", "none", "--format", "{p}|{f}"])
        .current_dir(workspace_root())
        .output()
        .expect("running cargo tree");
    assert!(output.status.success(), "cargo tree {args:?} failed:\n{}", String::from_utf8_lossy(&output.stderr));
    let mut features = Features::new();
    for line in String::from_utf8(output.stdout).expect("cargo tree prints UTF-8").lines() {
        let Some((package, list)) = line.trim_end_matches(" (*)").split_once('|') else { continue };
        let package = package.trim_end_matches(" (proc-macro)");
        // Workspace members print their path; their wgpu feature is the point of the second build.
        if package.contains(" (") {
            continue;
        }
        let entry = features.entry(package.to_owned()).or_default();
        entry.extend(list.split(',').filter(|f| !f.is_empty()).map(str::to_owned));
    }
    features
}

/// The arguments of the `test-wgpu` alias that choose what it builds (`-p` and `--features`).
fn wgpu_build_args() -> Vec<String> {
    let path = workspace_root().join(".cargo/config.toml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let config: toml::Table = toml::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()));
    let alias = config["alias"]["test-wgpu"].as_array().expect("alias.test-wgpu is a list");
    let words: Vec<&str> = alias.iter().map(|w| w.as_str().expect("alias words are strings")).collect();
    words
        .windows(2)
        .filter(|pair| matches!(pair[0], "-p" | "--package" | "--features"))
        .flat_map(|pair| [pair[0].to_owned(), pair[1].to_owned()])
        .collect()
}

#[test]
fn flex_build_has_every_feature_the_wgpu_build_turns_on() {
    let flex = resolved_features(&["--workspace"]);
    let wgpu_args = wgpu_build_args();
    assert!(wgpu_args.iter().any(|a| a == "--features"), "alias.test-wgpu selects no features: {wgpu_args:?}");
    let wgpu = resolved_features(&wgpu_args.iter().map(String::as_str).collect::<Vec<_>>());

    let mut missing = Vec::new();
    for (package, features) in &wgpu {
        let name = package.split(' ').next().unwrap_or_default();
        if name.starts_with("burn") || name.starts_with("cubecl") {
            continue;
        }
        if let Some(in_flex) = flex.get(package) {
            let extra: Vec<&String> = features.difference(in_flex).collect();
            if !extra.is_empty() {
                missing.push(format!("{package}: {extra:?}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "the wgpu test build turns on features the flex build lacks, so CI compiles these crates (and \
         every crate above them) twice; add them to crates/workspace-hack/Cargo.toml:\n  {}",
        missing.join("\n  ")
    );
}

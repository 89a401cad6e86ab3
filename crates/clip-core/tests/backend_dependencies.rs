//! The default build and the wgpu build never pull the LLVM bundle that burn's CUDA backend
//! needs: `cubecl-cuda` 0.11.3 depends, without a feature to turn it off, on `cubecl-llvm`,
//! whose build dependency `tracel-llvm-bundler` downloads a prebuilt LLVM from GitHub while
//! building (docs/backends.md). A machine that reaches only crates.io must be able to build and
//! test everything but `--features cuda`; this reads the dependency graphs with `cargo tree`.
//! The cuda graph is checked too, so that the test fails (and is revisited) the day a burn
//! upgrade drops the bundle, and so that the package names it looks for are proven right.

use std::process::Command;

/// Crates that exist only for the CUDA backend's LLVM: the bundle's downloader, and the
/// compiler and bindings that link the bundle.
const LLVM_CRATES: &[&str] = &["tracel-llvm-bundler", "cubecl-llvm", "llvm-sys"];

/// Every package of the workspace's dependency graph (normal, build and dev dependencies, for
/// this machine's target; the LLVM crates depend on no target) with `features` on.
fn packages(features: &str) -> Vec<String> {
    let workspace = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let mut command = Command::new(env!("CARGO"));
    command
        .current_dir(workspace)
        .args(["tree", "--workspace", "--locked", "-e", "normal,build,dev", "--prefix", "none", "--format", "{p}"]);
    if !features.is_empty() {
        command.args(["--features", features]);
    }
    let output = command.output().expect("cargo tree runs");
    assert!(
        output.status.success(),
        "cargo tree --features '{features}' failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut names: Vec<String> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next().map(str::to_string))
        .collect();
    names.sort();
    names.dedup();
    assert!(names.iter().any(|n| n == "burn"), "cargo tree --features '{features}' lists no burn: {names:?}");
    names
}

fn llvm_crates_in(names: &[String]) -> Vec<&'static str> {
    LLVM_CRATES.iter().copied().filter(|c| names.iter().any(|n| n == c)).collect()
}

#[test]
fn default_and_wgpu_builds_never_pull_the_llvm_bundle() {
    // Every crate's wgpu feature at once: the widest wgpu build.
    let wgpu = "clip-train/wgpu,clip-audio/wgpu,clip-sketch/wgpu,clip-det/wgpu,clip-seg/wgpu,clip-video/wgpu,clip-3d/wgpu";
    for (build, features) in [("default", ""), ("wgpu", wgpu)] {
        let names = packages(features);
        assert_eq!(llvm_crates_in(&names), Vec::<&str>::new(), "the {build} build pulls the LLVM bundle");
        if build == "wgpu" {
            assert!(names.iter().any(|n| n == "cubecl-wgpu"), "the wgpu graph has no cubecl-wgpu: {names:?}");
        }
    }
    // The CUDA backend does pull it (see the module comment).
    let cuda = packages("clip-core/cuda");
    assert_eq!(llvm_crates_in(&cuda), LLVM_CRATES, "the cuda build no longer pulls the whole LLVM bundle chain");
}

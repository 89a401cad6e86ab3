#!/usr/bin/env bash
# GPU check: run in the repository root on a machine with an NVIDIA GPU, Rust, and network access
# to the package registries only (crates.io, PyPI). It takes a few minutes, most of it the builds.
#
#   xtask/gpu_check.sh [LOG_DIR]        # LOG_DIR defaults to gpu-check/
#
# Steps, each timed and marked PASS / FAIL / SKIP; a failed step does not stop the next:
#   1. nvidia-smi and `vulkaninfo --summary`, when installed;
#   2. `cargo test-wgpu` and `cargo test-wgpu-3d` (the parity tests, DepthCLIP's and PointCLIP's
#      included, on the wgpu backend, here on the GPU) and the flex-against-wgpu training run;
#   3. `cargo xtask bench --device wgpu --models ViT-B-32` (inference at batch 32 and 256, a
#      training step at batch 256, beside open_clip on torch's cuda when CLIPFORGE_BENCH_PYTHON or
#      python3 has torch and open_clip);
#   4. the cuda bench's build (`cargo bench --no-run -p clip-core --features cuda`) and, only if
#      that builds, `cargo xtask bench --device cuda --models ViT-B-32` and clip-core's parity
#      tests on cuda. The CUDA backend needs the prebuilt
#      LLVM that cubecl's build script downloads from GitHub (see
#      crates/clip-core/tests/backend_dependencies.rs); when it is neither installed nor its
#      archive cached, the step is skipped at once (the message says where to put it) rather
#      than failing slowly.
# Everything goes to LOG_DIR/gpu-check.log as well as the terminal; a summary ends it.
set -u

log_dir=${1:-gpu-check}
mkdir -p "$log_dir"
log="$log_dir/gpu-check.log"
: >"$log"
# Quiets the Vulkan loader's complaints on machines without a session runtime directory.
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-/tmp}

summary=()

say() { echo "$*" | tee -a "$log"; }

# step NAME COMMAND...: runs the command with its output in the log, prints wall time and result.
step() {
    local name=$1
    shift
    say ""
    say "=== $name: $* ($(date -u +%H:%M:%S) UTC)"
    local start=$SECONDS
    "$@" 2>&1 | tee -a "$log"
    local rc=${PIPESTATUS[0]}
    local took=$((SECONDS - start))
    if [ "$rc" -eq 0 ]; then
        say "=== $name: PASS in ${took}s"
        summary+=("PASS  ${took}s  $name")
    else
        say "=== $name: FAIL (exit $rc) in ${took}s"
        summary+=("FAIL  ${took}s  $name (exit $rc)")
    fi
    return "$rc"
}

skip() {
    say ""
    say "=== $1: SKIP: $2"
    summary+=("SKIP        $1: $2")
}

say "ClipForge GPU check, $(date -u '+%Y-%m-%d %H:%M:%S') UTC, in $(pwd)"
say "log: $log"

if command -v nvidia-smi >/dev/null; then
    step "nvidia-smi" nvidia-smi
else
    skip "nvidia-smi" "not installed"
fi
if command -v vulkaninfo >/dev/null; then
    step "vulkaninfo" vulkaninfo --summary
else
    skip "vulkaninfo" "not installed (apt install vulkan-tools); wgpu may still find the GPU"
fi
step "rust toolchain" bash -c 'cargo --version && rustc --version'

step "cargo test-wgpu" cargo test-wgpu
step "cargo test-wgpu-3d" cargo test-wgpu-3d
step "wgpu training run" cargo test --workspace --features wgpu --test wgpu_training

step "bench wgpu" cargo xtask bench --device wgpu --models ViT-B-32

# The CUDA backend's LLVM (tracel-llvm-bundler 23.1.0-4, built by cubecl-llvm): installed in
# llvm_root once the marker exists; else the bundler extracts the archive from its cache (only
# the download needs GitHub), else it downloads archive and checksums from GitHub.
llvm_root=${XDG_DATA_HOME:-$HOME/.local/share}/tracel/tracel-llvm-23.1.0-4
llvm_cache=$HOME/.cache/tracel/tracel-llvm-23.1.0-4-linux-x64
llvm_url=https://github.com/tracel-ai/tracel-llvm/releases/download/v23.1.0-4
if [ ! -e "$llvm_root/.tracel-llvm-installed" ] && [ -f "$llvm_cache.tar.xz" ] && [ -f "$llvm_cache.checksums.json" ]; then
    say ""
    say "=== the LLVM bundle is not installed but its archive is cached in $HOME/.cache/tracel: the cuda build unpacks it (no download)"
    export TRACEL_LLVM_BUNDLER_SKIP_CHECKSUM_DOWNLOAD=1
    llvm_ready=yes
elif [ -e "$llvm_root/.tracel-llvm-installed" ]; then
    llvm_ready=yes
else
    llvm_ready=no
fi
if [ "$llvm_ready" = no ]; then
    skip "cuda build and bench" "the LLVM bundle the CUDA backend needs is missing \
($llvm_root/.tracel-llvm-installed does not exist), and its build script would download it from GitHub. \
Either copy an installed $llvm_root directory (with its .tracel-llvm-installed marker) from a machine that built --features cuda, \
or fetch $llvm_url/linux-x64.tar.xz and $llvm_url/linux-x64.checksums.json elsewhere and put them at \
$llvm_cache.tar.xz and $llvm_cache.checksums.json; then run this script again"
elif step "cuda build" cargo bench --no-run -p clip-core --features cuda --bench throughput; then
    # The bench's own build (same profile as the step above, so nothing is rebuilt).
    step "bench cuda" cargo xtask bench --device cuda --models ViT-B-32
    # clip-core's reference parity tests on the CUDA backend (burn's default device there).
    step "parity cuda" env BURN_DEVICE=cuda cargo test --features cuda -p clip-core --test parity --test loss_parity
else
    skip "bench cuda" "the cuda build failed"
fi

say ""
say "=== summary (wall time per step)"
for line in "${summary[@]}"; do
    say "$line"
done
say "log: $log"

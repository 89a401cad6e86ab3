//! PyTorch `.pt`/`.bin` checkpoints load through burn-store's reader exactly as their
//! safetensors twins do, plain and nested as open_clip's training checkpoints
//! (`state_dict`, DistributedDataParallel's `module.` prefix). The `.pt` files are written
//! from the fixtures by `support/safetensors_to_torch.py` (plain Python, no torch needed).

use std::path::Path;
use std::process::Command;

use burn::tensor::Device;
use clip_fixtures as fixtures;
use clip_core::weights::{self, CheckpointFormat};
use clip_core::ClipConfig;

fn convert(source: &Path, target: &Path, nest: bool) -> bool {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/safetensors_to_torch.py");
    let mut command = Command::new("python3");
    command.arg(&script).arg(source).arg(target);
    if nest {
        command.arg("--nest");
    }
    match command.output() {
        Ok(out) => {
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            true
        }
        Err(e) if std::env::var_os("CI").is_none() => {
            eprintln!("python3 is not available ({e}): PyTorch import check skipped");
            false
        }
        Err(e) => panic!("python3: {e}"),
    }
}

#[test]
fn pytorch_checkpoints_load_like_safetensors() {
    let device = Device::flex();
    let dir = tempfile::Builder::new().prefix("clip-core-pytorch-").tempdir().unwrap();
    let mut checked = 0;
    for fixture in fixtures::model_fixtures(&fixtures::root()).unwrap() {
        let (config, format) = match fixture.format.as_str() {
            "open_clip" => (
                ClipConfig::from_open_clip_value(fixture.model_config(), "fixture").unwrap(),
                CheckpointFormat::OpenClip,
            ),
            "hf_clip" => (
                ClipConfig::from_hf_value(fixture.model_config(), "fixture").unwrap(),
                CheckpointFormat::HuggingFace,
            ),
            _ => continue,
        };
        let reference = weights::load_clip(&fixture.file("model"), &config, &device).unwrap();
        let layout = format.layout(&config).unwrap();
        let expected = weights::export(&reference, &layout).unwrap();
        for nest in [false, true] {
            let name = fixture.dir.file_name().unwrap().to_string_lossy().to_string();
            let path = dir.path().join(format!("{name}-{nest}.pt"));
            if !convert(&fixture.file("model"), &path, nest) {
                return;
            }
            let model = weights::load_clip(&path, &config, &device)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert_eq!(weights::export(&model, &layout).unwrap(), expected, "{}", path.display());
            checked += 1;
        }
    }
    assert!(checked > 0, "no CLIP fixture to convert");
}

//! A checkpoint that does not fit the model is an error naming the key, never a partial load.

use burn::tensor::Device;
use clip_fixtures as fixtures;
use clip_core::weights::{self, Checkpoint};
use clip_core::{ClipConfig, ClipError};

fn open_clip_fixture() -> (ClipConfig, std::collections::BTreeMap<String, weights::RawTensor>) {
    let fixture = fixtures::model_fixtures(&fixtures::root())
        .unwrap()
        .into_iter()
        .find(|f| f.format == "open_clip")
        .expect("an open_clip fixture");
    let config = ClipConfig::from_open_clip_value(fixture.model_config(), "fixture").unwrap();
    (config, fixture.tensors("model").unwrap())
}

/// A scratch directory for one test, removed when dropped.
fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("clip-core-weight-errors-").tempdir().unwrap()
}

#[test]
fn missing_key_is_named_with_its_shape() {
    let (config, mut tensors) = open_clip_fixture();
    tensors.remove("visual.ln_post.bias");
    let dir = scratch();
    let path = dir.path().join("missing.safetensors");
    Checkpoint::write_safetensors(&tensors, &path).unwrap();
    let err = weights::load_clip(&path, &config, &Device::flex()).unwrap_err();
    assert!(matches!(&err, ClipError::MissingKey { key, .. } if key == "visual.ln_post.bias"), "{err}");
    assert!(err.to_string().contains("missing.safetensors"), "{err}");
}

/// A torchvision `FrozenBatchNorm2d` state dict has no `num_batches_tracked`: it loads as 0, as
/// in PyTorch, while a missing running statistic is an error.
#[test]
fn resnet_checkpoint_without_batch_counters_loads() {
    let fixture = fixtures::resnet_fixtures(&fixtures::root())
        .unwrap()
        .into_iter()
        .next()
        .expect("a ResNet fixture");
    let config = ClipConfig::from_open_clip_value(fixture.model_config(), "fixture").unwrap();
    let mut tensors = fixture.tensors("model").unwrap();
    tensors.retain(|key, _| !key.ends_with("num_batches_tracked"));
    let dir = scratch();
    let path = dir.path().join("frozen-bn.safetensors");
    Checkpoint::write_safetensors(&tensors, &path).unwrap();
    let model = weights::load_clip(&path, &config, &Device::flex()).unwrap();
    let resnet = model.visual.as_resnet().unwrap();
    assert_eq!(resnet.layer1[0].bn2.num_batches_tracked.value().into_scalar::<f32>(), 0.0);
    assert_eq!(
        resnet.layer1[0].bn2.running_var.value().into_data().iter::<f32>().collect::<Vec<_>>(),
        tensors["visual.layer1.0.bn2.running_var"].values
    );
    tensors.remove("visual.layer1.0.bn2.running_var");
    Checkpoint::write_safetensors(&tensors, &path).unwrap();
    let err = weights::load_clip(&path, &config, &Device::flex()).unwrap_err();
    assert!(matches!(&err, ClipError::MissingKey { key, .. } if key == "visual.layer1.0.bn2.running_var"), "{err}");
}

#[test]
fn unexpected_key_is_named() {
    let (config, mut tensors) = open_clip_fixture();
    let extra = tensors["logit_scale"].clone();
    tensors.insert("visual.extra_head.weight".into(), extra);
    let dir = scratch();
    let path = dir.path().join("unexpected.safetensors");
    Checkpoint::write_safetensors(&tensors, &path).unwrap();
    let err = weights::load_clip(&path, &config, &Device::flex()).unwrap_err();
    assert!(err.to_string().contains("visual.extra_head.weight"), "{err}");
}

#[test]
fn mis_shaped_key_names_both_shapes() {
    let (config, mut tensors) = open_clip_fixture();
    let key = "transformer.resblocks.0.mlp.c_fc.weight";
    let original = tensors[key].clone();
    let truncated = original.chunk(0, 2);
    tensors.insert(key.into(), truncated.clone());
    let dir = scratch();
    let path = dir.path().join("shape.safetensors");
    Checkpoint::write_safetensors(&tensors, &path).unwrap();
    let err = weights::load_clip(&path, &config, &Device::flex()).unwrap_err();
    match &err {
        ClipError::ShapeMismatch { key: k, expected, found, .. } => {
            assert_eq!(k, key);
            assert_eq!(expected, &original.shape);
            assert_eq!(found, &truncated.shape);
        }
        other => panic!("expected a shape mismatch, got {other}"),
    }
}

#[test]
fn corrupt_and_absent_files_are_errors_naming_the_path() {
    let (config, _) = open_clip_fixture();
    let dir = scratch();
    let path = dir.path().join("corrupt.safetensors");
    std::fs::write(&path, b"this is not a safetensors file").unwrap();
    let err = weights::load_clip(&path, &config, &Device::flex()).unwrap_err();
    assert!(err.to_string().contains("corrupt.safetensors"), "{err}");

    let absent = dir.path().join("absent.safetensors");
    let err = weights::load_clip(&absent, &config, &Device::flex()).unwrap_err();
    assert!(err.to_string().contains("absent.safetensors"), "{err}");
}

#[test]
fn checkpoint_for_another_architecture_is_rejected() {
    let (mut config, tensors) = open_clip_fixture();
    config.text.layers += 1;
    let dir = scratch();
    let path = dir.path().join("deeper.safetensors");
    Checkpoint::write_safetensors(&tensors, &path).unwrap();
    let err = weights::load_clip(&path, &config, &Device::flex()).unwrap_err();
    let layer = config.text.layers - 1;
    assert!(err.to_string().contains(&format!("transformer.resblocks.{layer}.")), "{err}");
}

//! GroupViT against transformers' `GroupViTModel`: every `hf_groupvit` fixture under the fixture
//! root, plus weight round trips and key errors.

use std::collections::BTreeMap;

use burn::tensor::{Device, Int, Tensor, TensorData};
use clip_core::ClipError;
use clip_fixtures::{self as fixtures, ModelFixture, abs_diff};
use clip_core::weights::{Checkpoint, RawTensor, export, import};
use clip_seg::groupvit::{
    GroupVit, GroupVitConfig, hugging_face_layout, load_groupvit, load_hugging_face,
    save_hugging_face,
};

fn groupvit_fixtures() -> Vec<ModelFixture> {
    let root = fixtures::root();
    let all = fixtures::model_fixtures(&root)
        .unwrap_or_else(|e| panic!("fixtures under {}: {e}", root.display()));
    let found: Vec<ModelFixture> = all
        .into_iter()
        .filter(|f| f.format == "hf_groupvit")
        .collect();
    assert!(
        !found.is_empty(),
        "no fixture of format hf_groupvit under {}/models",
        root.display()
    );
    found
}

fn config_of(fixture: &ModelFixture) -> GroupVitConfig {
    let origin = fixture.dir.join("fixture.json").display().to_string();
    GroupVitConfig::from_hf_json(&fixture.model_config(), &origin).unwrap_or_else(|e| panic!("{e}"))
}

fn tensor<const D: usize>(raw: &RawTensor, device: &Device) -> Tensor<D> {
    Tensor::from_data(
        TensorData::new(raw.values.clone(), raw.shape.clone()),
        device,
    )
}

fn get<'a>(
    tensors: &'a BTreeMap<String, RawTensor>,
    key: &str,
    fixture: &ModelFixture,
) -> &'a RawTensor {
    tensors
        .get(key)
        .unwrap_or_else(|| panic!("{}: no tensor '{key}'", fixture.dir.display()))
}

/// Largest error, absolute where the reference is at most 1 in magnitude, relative above.
fn max_scaled_error(got: &[f32], expected: &[f32]) -> f32 {
    got.iter()
        .zip(expected)
        .map(|(g, e)| (g - e).abs() / e.abs().max(1.0))
        .fold(0.0, f32::max)
}

fn values<const D: usize>(t: Tensor<D>) -> (Vec<usize>, Vec<f32>) {
    let data = t.into_data();
    (data.shape().to_vec(), data.iter::<f32>().collect())
}

#[test]
fn groupvit_matches_transformers_on_every_fixture() {
    let Some(device) = fixtures::device() else { return };
    for fixture in groupvit_fixtures() {
        let name = fixture.dir.display().to_string();
        let config = config_of(&fixture);
        let model = load_groupvit(&fixture.file("model"), &config, &device)
            .unwrap_or_else(|e| panic!("{e}"));
        let inputs = fixture.tensors("inputs").unwrap_or_else(|e| panic!("{e}"));
        let expected = fixture
            .tensors("expected")
            .unwrap_or_else(|e| panic!("{e}"));
        let pixels: Tensor<4> = tensor(get(&inputs, "pixel_values", &fixture), &device);
        let ids = get(&inputs, "input_ids", &fixture);
        let ids: Vec<i64> = ids.values.iter().map(|&v| v as i64).collect::<Vec<_>>();
        let id_shape = get(&inputs, "input_ids", &fixture).shape.clone();
        let tokens = Tensor::<2, Int>::from_data(TensorData::new(ids, id_shape), &device);

        let image_embeds = model.encode_image(pixels.clone(), true);
        let text_embeds = model.encode_text(tokens.clone(), true);
        let logits = model.forward(pixels.clone(), tokens);
        let segmentation = model.segment(pixels, text_embeds.clone());
        for (key, got, tolerance) in [
            ("image_embeds", values(image_embeds), 1e-4),
            ("text_embeds", values(text_embeds), 1e-4),
            ("logits_per_image", values(logits), 1e-4),
            ("segmentation_logits", values(segmentation), 1e-3),
        ] {
            let want = get(&expected, key, &fixture);
            assert_eq!(got.0, want.shape, "{name}: {key} shape");
            let (max, mean) = abs_diff(&got.1, &want.values);
            let scaled = max_scaled_error(&got.1, &want.values);
            println!(
                "{name} {key}: max abs diff {max:.3e}, mean {mean:.3e}, max scaled {scaled:.3e}"
            );
            assert!(
                scaled <= tolerance,
                "{name}: {key} differs by {scaled:e} (tolerance {tolerance:e})"
            );
        }
    }
}

/// A fresh scratch directory, removed when dropped.
fn scratch_dir(name: &str) -> tempfile::TempDir {
    tempfile::Builder::new().prefix(&format!("clip-seg-{name}-")).tempdir().unwrap()
}

#[test]
fn save_then_load_is_bit_identical() {
    let Some(device) = fixtures::device() else { return };
    for fixture in groupvit_fixtures() {
        let config = config_of(&fixture);
        let model = load_groupvit(&fixture.file("model"), &config, &device).unwrap();
        let dir = scratch_dir("groupvit-roundtrip");
        save_hugging_face(&model, &config, dir.path()).unwrap();
        let (back, back_config): (GroupVit, GroupVitConfig) =
            load_hugging_face(dir.path(), &device).unwrap();
        assert_eq!(back_config, config);
        let layout = hugging_face_layout(&config);
        assert_eq!(
            export(&back, &layout).unwrap(),
            export(&model, &layout).unwrap()
        );
        // The export holds every fixture tensor but the BatchNorm step counters, bit for bit.
        let original = Checkpoint::read(&fixture.file("model")).unwrap();
        let saved = Checkpoint::read(&dir.path().join("model.safetensors")).unwrap();
        for (key, raw) in &original.tensors {
            match saved.tensors.get(key) {
                Some(ours) => assert_eq!(ours, raw, "{key}"),
                None => assert!(key.ends_with("num_batches_tracked"), "{key} not exported"),
            }
        }
    }
}

#[test]
fn missing_and_misshaped_keys_are_named() {
    let Some(device) = fixtures::device() else { return };
    let fixture = &groupvit_fixtures()[0];
    let config = config_of(fixture);
    let layout = hugging_face_layout(&config);
    let key = "vision_model.encoder.stages.0.downsample.assign.q_proj.weight";

    let mut checkpoint = Checkpoint::read(&fixture.file("model")).unwrap();
    let original = checkpoint.tensors.remove(key).unwrap();
    match import(config.init(&device).unwrap(), &checkpoint, &layout) {
        Err(ClipError::MissingKey { key: missing, .. }) => assert_eq!(missing, key),
        other => panic!("expected a missing-key error, got {other:?}"),
    }

    let wrong = RawTensor {
        shape: vec![original.shape[0], original.shape[1] - 1],
        values: original.values[..original.shape[0] * (original.shape[1] - 1)].to_vec(),
    };
    checkpoint.tensors.insert(key.to_string(), wrong);
    match import(config.init(&device).unwrap(), &checkpoint, &layout) {
        Err(ClipError::ShapeMismatch {
            key: bad, found, ..
        }) => {
            assert_eq!(bad, key);
            assert_eq!(found, vec![original.shape[0], original.shape[1] - 1]);
        }
        other => panic!("expected a shape error, got {other:?}"),
    }

    checkpoint.tensors.insert(key.to_string(), original);
    checkpoint.tensors.insert(
        "extra.weight".into(),
        RawTensor {
            shape: vec![1],
            values: vec![0.0],
        },
    );
    match import(config.init(&device).unwrap(), &checkpoint, &layout) {
        Err(ClipError::UnexpectedKeys { keys, .. }) => {
            assert_eq!(keys, vec!["extra.weight".to_string()])
        }
        other => panic!("expected an unexpected-keys error, got {other:?}"),
    }
}

#[test]
fn other_image_sizes_use_a_resized_positional_embedding() {
    let Some(device) = fixtures::device() else { return };
    let fixture = &groupvit_fixtures()[0];
    let config = config_of(fixture);
    let model = load_groupvit(&fixture.file("model"), &config, &device).unwrap();
    let side = config.image_size() + 2 * config.vision.patch_size;
    let images = Tensor::<4>::ones([2, 3, side, side], &device);
    let tokens = Tensor::<2, Int>::from_data(
        TensorData::new(vec![49406i64, 320, 49407, 0], [1, 4]),
        &device,
    );
    let text = model.encode_text(tokens, true);
    assert_eq!(
        model.encode_image(images.clone(), true).dims(),
        [2, config.projection_dim]
    );
    let segmentation = model.segment(images, text);
    assert_eq!(segmentation.dims(), [2, 1, side, side]);
    assert!(segmentation.into_data().iter::<f32>().all(f32::is_finite));
}

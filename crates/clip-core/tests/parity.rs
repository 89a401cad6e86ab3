//! Numerical parity with open_clip and Hugging Face transformers on every model fixture under
//! `$CLIP_FIXTURES/models` and every ResNet CLIP fixture under `$CLIP_FIXTURES/resnet` (default
//! `../shared/fixtures`). Expected values are read from the fixture files, never written here:
//! every tensor of each `expected.safetensors` is compared with the output of the same name.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::tensor::{Device, Int, Tensor, TensorData};
use clip_fixtures::{self as fixtures, ModelFixture, abs_diff};
use clip_core::weights::{self, CheckpointFormat, RawTensor};
use clip_core::{Clip, ClipConfig, ImageTower};

/// Embeddings, logits and feature maps must agree to this absolute tolerance (the fixtures'
/// README).
const TOLERANCE: f32 = 1e-4;

/// Formats handled by other crates' parity tests.
const FORMATS_OF_OTHER_CRATES: &[(&str, &str)] = &[("hf_groupvit", "clip-seg")];

fn tensor<const D: usize>(raw: &RawTensor, device: &Device) -> Tensor<D> {
    Tensor::from_data(TensorData::new(raw.values.clone(), raw.shape.clone()), device)
}

fn token_ids(raw: &RawTensor, device: &Device) -> Tensor<2, Int> {
    let ids: Vec<i64> = raw.values.iter().map(|&v| v as i64).collect();
    Tensor::from_data(TensorData::new(ids, raw.shape.clone()), device)
}

fn raw<const D: usize>(t: Tensor<D>) -> RawTensor {
    let data = t.into_data();
    RawTensor {
        shape: data.shape().to_vec(),
        values: data.iter::<f32>().collect(),
    }
}

/// Our outputs for a CLIP fixture's inputs, named as `expected.safetensors` names them;
/// `normalized` says whether the expected embeddings are L2-normalized.
fn clip_outputs(fixture: &ModelFixture, model: &Clip, normalized: bool, device: &Device) -> BTreeMap<String, RawTensor> {
    let inputs = fixture.tensors("inputs").unwrap();
    let images = tensor::<4>(&inputs["pixel_values"], device);
    let tokens = token_ids(&inputs["input_ids"], device);
    let image_embeds = model.encode_image(images.clone(), normalized);
    let text_embeds = model.encode_text(tokens, normalized);
    let logits = model.logits_from_embeddings(image_embeds.clone(), text_embeds.clone());
    let mut outputs = BTreeMap::from([
        ("image_embeds".to_string(), raw(image_embeds)),
        ("text_embeds".to_string(), raw(text_embeds)),
        ("logits_per_image".to_string(), raw(logits.per_image)),
    ]);
    if let ImageTower::ResNet(tower) = &model.visual {
        let features = tower.forward_features(images);
        outputs.insert("visual_stem".into(), raw(features.stem));
        for (index, stage) in features.stages.into_iter().enumerate() {
            outputs.insert(format!("visual_layer{}", index + 1), raw(stage));
        }
    }
    outputs
}

/// Compares every expected tensor with our output of the same name; prints one line with the
/// largest error and returns the tensors beyond the tolerance.
fn compare(fixture: &ModelFixture, outputs: &BTreeMap<String, RawTensor>) -> Vec<String> {
    let expected = fixture.tensors("expected").unwrap();
    let dir = fixture.dir.display();
    let (mut largest, mut worst, mut failures) = (0.0f32, String::new(), Vec::new());
    for (name, want) in &expected {
        let got = outputs
            .get(name)
            .unwrap_or_else(|| panic!("{dir}: expected.safetensors holds '{name}', which this test does not compute"));
        assert_eq!(got.shape, want.shape, "{dir}: {name} shape");
        let (max, _) = abs_diff(&got.values, &want.values);
        if max > largest || worst.is_empty() {
            (largest, worst) = (max, name.clone());
        }
        if max > TOLERANCE {
            failures.push(format!("{dir}: {name} differs by {max:e} (> {TOLERANCE:e})"));
        }
    }
    eprintln!("{dir}: largest abs error {largest:.3e} ({worst}) over {} tensors", expected.len());
    failures
}

fn config_of(fixture: &ModelFixture) -> ClipConfig {
    let origin = fixture.dir.join("fixture.json").display().to_string();
    match fixture.format.as_str() {
        "open_clip" => ClipConfig::from_open_clip_value(fixture.model_config(), &origin).unwrap(),
        _ => ClipConfig::from_hf_value(fixture.model_config(), &origin).unwrap(),
    }
}

/// The fixtures of `models/` and `resnet/`.
fn all_fixtures(root: &Path) -> Vec<ModelFixture> {
    let models = fixtures::model_fixtures(root)
        .unwrap_or_else(|e| panic!("cannot read fixtures under {} ({e}); set CLIP_FIXTURES", root.display()));
    let resnets = fixtures::resnet_fixtures(root)
        .unwrap_or_else(|e| panic!("cannot read ResNet fixtures under {} ({e}); set CLIP_FIXTURES", root.display()));
    models.into_iter().chain(resnets).collect()
}

#[test]
fn every_model_fixture_matches_its_reference() {
    let Some(device) = fixtures::device() else { return };
    let root = fixtures::root();
    let (mut checked, mut resnets, mut failures) = (0, 0, Vec::new());
    for fixture in &all_fixtures(&root) {
        match fixture.format.as_str() {
            "open_clip" | "hf_clip" => {
                let config = config_of(fixture);
                let model = weights::load_clip(&fixture.file("model"), &config, &device).unwrap();
                let outputs = clip_outputs(fixture, &model, fixture.format == "hf_clip", &device);
                failures.extend(compare(fixture, &outputs));
                checked += 1;
                resnets += usize::from(model.visual.as_resnet().is_some());
            }
            other => match FORMATS_OF_OTHER_CRATES.iter().find(|(format, _)| *format == other) {
                Some((_, owner)) => eprintln!("{}: format {other} is checked by {owner}", fixture.dir.display()),
                None => panic!(
                    "{}: unknown fixture format '{other}' (known: open_clip, hf_clip, hf_groupvit)",
                    fixture.dir.display()
                ),
            },
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(checked > 0, "no open_clip or hf_clip fixture found under {}", root.display());
    assert!(resnets > 0, "no ResNet CLIP fixture found under {}", root.join("resnet").display());
}

/// Saves `model` in `format` under `dir` and returns the weights file written.
fn save(format: CheckpointFormat, model: &Clip, config: &ClipConfig, dir: &Path) -> PathBuf {
    match format {
        CheckpointFormat::OpenClip => {
            let path = dir.join("open_clip_model.safetensors");
            weights::save_open_clip(model, config, &path).unwrap();
            path
        }
        CheckpointFormat::HuggingFace => {
            weights::save_hugging_face(model, config, dir).unwrap();
            dir.join("model.safetensors")
        }
    }
}

/// Keys and safetensors dtypes of a file.
fn dtypes(path: &Path) -> BTreeMap<String, String> {
    let bytes = std::fs::read(path).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    file.tensors().into_iter().map(|(key, view)| (key, format!("{:?}", view.dtype()))).collect()
}

#[test]
fn export_then_import_gives_identical_tensors() {
    let Some(device) = fixtures::device() else { return };
    let out = tempfile::Builder::new().prefix("clip-core-roundtrip-").tempdir().unwrap();
    for fixture in all_fixtures(&fixtures::root()) {
        let (own, other) = match fixture.format.as_str() {
            "open_clip" => (CheckpointFormat::OpenClip, CheckpointFormat::HuggingFace),
            "hf_clip" => (CheckpointFormat::HuggingFace, CheckpointFormat::OpenClip),
            _ => continue,
        };
        let config = config_of(&fixture);
        let original = fixture.tensors("model").unwrap();
        let model = weights::load_clip(&fixture.file("model"), &config, &device).unwrap();
        let dir = out.path().join(fixture.dir.file_name().unwrap());

        // Exported in the fixture's own layout, every tensor comes back bit for bit, with its
        // dtype (BatchNorm's num_batches_tracked stays int64).
        let same = save(own, &model, &config, &dir.join("same"));
        assert_eq!(fixtures::read_tensors(&same).unwrap(), original, "{}", fixture.dir.display());
        assert_eq!(dtypes(&same), dtypes(&fixture.file("model")), "{}", fixture.dir.display());
        let reimported = weights::load_clip(&same, &config, &device).unwrap();
        let back = save(own, &reimported, &config, &dir.join("again"));
        assert_eq!(fixtures::read_tensors(&back).unwrap(), original, "{}", fixture.dir.display());

        if model.visual.as_resnet().is_some() {
            // Hugging Face's CLIPModel has no ResNet tower: exporting to it is an error.
            let err = weights::save_hugging_face(&model, &config, &dir.join("hf")).unwrap_err().to_string();
            assert!(err.contains("ResNet") && err.contains("open_clip"), "{err}");
            continue;
        }

        // Through the other layout and back, nothing changes either.
        let crossed = save(other, &model, &config, &dir.join("other"));
        let reimported = weights::load_clip(&crossed, &config, &device).unwrap();
        let back = save(own, &reimported, &config, &dir.join("back"));
        assert_eq!(fixtures::read_tensors(&back).unwrap(), original, "{}", fixture.dir.display());
    }
}

#[test]
fn hugging_face_export_carries_its_config() {
    let Some(device) = fixtures::device() else { return };
    let fixture = fixtures::model_fixtures(&fixtures::root())
        .unwrap()
        .into_iter()
        .find(|f| f.format == "hf_clip" || f.format == "open_clip")
        .expect("a CLIP fixture");
    let config = config_of(&fixture);
    let model = weights::load_clip(&fixture.file("model"), &config, &device).unwrap();
    let dir = tempfile::Builder::new().prefix("clip-core-hf-export-").tempdir().unwrap();
    weights::save_hugging_face(&model, &config, dir.path()).unwrap();
    let (_, read_back) = weights::load_hugging_face(dir.path(), &device).unwrap();
    assert_eq!(read_back.vision, config.vision);
    assert_eq!(read_back.text, config.text);
}

#[test]
fn logit_bias_round_trips_through_the_open_clip_layout() {
    let Some(device) = fixtures::device() else { return };
    let fixture = fixtures::model_fixtures(&fixtures::root())
        .unwrap()
        .into_iter()
        .find(|f| f.format == "open_clip")
        .expect("an open_clip fixture");
    let mut config = config_of(&fixture);
    config.init_logit_bias = Some(-10.0);
    let model = config.init(&device);
    let dir = tempfile::Builder::new().prefix("clip-core-bias-").tempdir().unwrap();
    let path = dir.path().join("siglip.safetensors");
    weights::save_open_clip(&model, &config, &path).unwrap();
    let saved = fixtures::read_tensors(&path).unwrap();
    assert_eq!(saved["logit_bias"].values, vec![-10.0]);
    let back = weights::load_clip(&path, &config, &device).unwrap();
    let layout = CheckpointFormat::OpenClip.layout(&config).unwrap();
    assert_eq!(weights::export(&back, &layout).unwrap(), weights::export(&model, &layout).unwrap());
    // The exported JSON config carries the bias, so the model is rebuilt with one.
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("open_clip_config.json")).unwrap()).unwrap();
    let rebuilt = ClipConfig::from_open_clip_value(json["model_cfg"].clone(), "exported").unwrap();
    assert_eq!(rebuilt.init_logit_bias, Some(-10.0));
    // A checkpoint without the bias does not load into a model that has one.
    let err = weights::load_clip(&fixture.file("model"), &config, &device).unwrap_err();
    assert!(err.to_string().contains("logit_bias"), "{err}");
    // Hugging Face's CLIPModel has no place for it.
    assert!(weights::save_hugging_face(&model, &config, &dir.path().join("hf")).is_err());
}

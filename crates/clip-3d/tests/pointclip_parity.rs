//! PointCLIP against its official code: every `pointclip-*` fixture under `<fixture root>/methods`
//! (projection, zero-shot, adapter, few-shot), models loaded from the official key layout, every
//! tensor of `expected.safetensors` compared within 1e-4, and the layout written back exactly.
//! Method fixtures of other crates (and DepthCLIP's, which has its own test) are skipped by name;
//! an unknown format fails.

use std::collections::{BTreeMap, BTreeSet};
use std::f64::consts::PI;

use burn::tensor::{Device, Int, Tensor, TensorData};
use clip_3d::pointclip::adapter::AdapterConfig;
use clip_3d::pointclip::official::{self, OpenAiClipArgs};
use clip_3d::pointclip::projection::{ProjectionConfig, View};
use clip_3d::pointclip::{PointClip, PointClipConfig, prompts};
use clip_core::weights::{Checkpoint, RawTensor};
use clip_core::{ClipConfig, ClipTokenizer};
use clip_fixtures::{self as fixtures, Comparison, ModelFixture};
use serde_json::Value;



fn tensor<const D: usize>(raw: &RawTensor, device: &Device) -> Tensor<D> {
    let shape: [usize; D] = raw.shape.clone().try_into().unwrap_or_else(|_| panic!("{:?} is not {D}-D", raw.shape));
    Tensor::from_data(TensorData::new(raw.values.clone(), shape), device)
}

fn input<'a>(inputs: &'a BTreeMap<String, RawTensor>, key: &str, fixture: &ModelFixture) -> &'a RawTensor {
    inputs.get(key).unwrap_or_else(|| panic!("{}: inputs.safetensors has no '{key}'", fixture.name()))
}

fn number(value: &Value, what: &str, fixture: &ModelFixture) -> f64 {
    value.as_f64().unwrap_or_else(|| panic!("{}: model_config {what} is not a number: {value}", fixture.name()))
}

fn count(value: &Value, what: &str, fixture: &ModelFixture) -> usize {
    value.as_u64().unwrap_or_else(|| panic!("{}: model_config {what} is not a count: {value}", fixture.name())) as usize
}

fn strings(value: &Value, what: &str, fixture: &ModelFixture) -> Vec<String> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("{}: model_config {what} is not a list", fixture.name()))
        .iter()
        .map(|v| v.as_str().unwrap_or_else(|| panic!("{}: {what} holds {v}", fixture.name())).to_string())
        .collect()
}

/// An angle as the fixtures write it: a number, or `[-][k]pi[/d]` (`"3pi/2"`, `"-pi/4"`),
/// evaluated as the official `k * np.pi / d`.
fn angle(value: &Value) -> f64 {
    if let Some(x) = value.as_f64() {
        return x;
    }
    let text = value.as_str().unwrap_or_else(|| panic!("angle {value}"));
    let (sign, text) = match text.strip_prefix('-') {
        Some(rest) => (-1.0, rest),
        None => (1.0, text),
    };
    let (coefficient, rest) = text.split_once("pi").unwrap_or_else(|| panic!("angle {value}"));
    let coefficient: f64 = if coefficient.is_empty() { 1.0 } else { coefficient.parse().unwrap() };
    let divisor: f64 = rest.strip_prefix('/').map_or(1.0, |d| d.parse().unwrap());
    sign * (coefficient * PI / divisor)
}

/// A projection from its fixture description (`num_views`, `resolution`, `trans`,
/// `upsample_to`, `views_euler_xyz`, plus the shared `splat_size` and `epsilon`).
fn projection_from(meta: &Value, shared: &Value, fixture: &ModelFixture) -> ProjectionConfig {
    let trans = number(&meta["trans"], "trans", fixture);
    let views: Vec<View> = meta["views_euler_xyz"]
        .as_array()
        .unwrap_or_else(|| panic!("{}: no views_euler_xyz", fixture.name()))
        .iter()
        .map(|v| {
            let a = v.as_array().unwrap();
            View::new([angle(&a[0]), angle(&a[1]), angle(&a[2])], trans)
        })
        .collect();
    assert_eq!(views.len(), count(&meta["num_views"], "num_views", fixture), "{}: num_views", fixture.name());
    let image_size = match &meta["upsample_to"] {
        Value::Null => None,
        sizes => {
            let sizes = sizes.as_array().unwrap();
            assert_eq!(sizes[0], sizes[1], "{}: square upsampling", fixture.name());
            Some(count(&sizes[0], "upsample_to", fixture))
        }
    };
    let splat = shared["splat_size"].as_array().unwrap_or_else(|| panic!("{}: no splat_size", fixture.name()));
    ProjectionConfig::new(views, count(&meta["resolution"], "resolution", fixture))
        .with_image_size(image_size)
        .with_splat([count(&splat[0], "splat_size", fixture), count(&splat[1], "splat_size", fixture)])
        .with_epsilon(number(&shared["epsilon"], "epsilon", fixture))
}

fn check_projection(fixture: &ModelFixture, device: &Device) {
    let meta = fixture.model_config();
    let inputs = fixture.tensors("inputs").unwrap_or_else(|e| panic!("{e}"));
    let points: Tensor<3> = tensor(input(&inputs, "points", fixture), device);
    let mut comparison = Comparison::new(fixture);
    for (prefix, key, preset) in
        [("zs", "zero_shot", ProjectionConfig::zero_shot()), ("fs", "few_shot", ProjectionConfig::few_shot())]
    {
        let config = projection_from(&meta[key], &meta, fixture);
        assert_eq!(config, preset, "{}: {key} is the official projection", fixture.name());
        comparison.check(&format!("{prefix}_rot_mat"), config.rotation_tensor(device));
        comparison.check(&format!("{prefix}_translation"), config.translation_tensor(device));
        comparison.check(&format!("{prefix}_points_view"), config.transform(points.clone()));
        let depth = config.depth_maps(points.clone());
        comparison.check(&format!("{prefix}_depth"), depth.clone());
        if config.image_size.is_some() {
            let images = config.images_from_depth(depth);
            comparison.check(&format!("{prefix}_image"), images.narrow(1, 0, 1));
        }
    }
    comparison.finish();
}

/// The CLIP architecture of `model_config.clip` (OpenAI's `CLIP(...)` arguments), which must
/// also be what the checkpoint's keys and shapes say (with the fixture's text heads).
fn clip_config(fixture: &ModelFixture, checkpoint: &Checkpoint) -> ClipConfig {
    let meta = fixture.model_config();
    let args: OpenAiClipArgs = serde_json::from_value(meta["clip"].clone()).unwrap_or_else(|e| panic!("{}: {e}", fixture.name()));
    let config = args.to_config(&fixture.name()).unwrap_or_else(|e| panic!("{e}"));
    let read = official::clip_config(checkpoint, "", Some(args.transformer_heads)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(read, config, "{}: CLIP read off the checkpoint", fixture.name());
    config
}

/// Tokenized prompts of `model_config.classnames` with `model_config.template`, checked against
/// `model_config.prompts`.
fn prompt_tokens(fixture: &ModelFixture, device: &Device) -> Tensor<2, Int> {
    let meta = fixture.model_config();
    let classnames = strings(&meta["classnames"], "classnames", fixture);
    let template = meta["template"].as_str().unwrap_or_else(|| panic!("{}: no template", fixture.name()));
    assert_eq!(prompts(template, &classnames), strings(&meta["prompts"], "prompts", fixture), "{}: prompts", fixture.name());
    PointClip::tokenize(&ClipTokenizer::new(), template, &classnames, device).unwrap_or_else(|e| panic!("{e}"))
}

/// The official layout written back from the loaded model equals the checkpoint, key for key
/// and value for value.
fn assert_round_trip(name: &str, checkpoint: &Checkpoint, written: BTreeMap<String, RawTensor>) {
    let theirs: BTreeSet<&String> = checkpoint.tensors.keys().collect();
    let ours: BTreeSet<&String> = written.keys().collect();
    assert_eq!(theirs, ours, "{name}: keys written back differ");
    for (key, tensor) in &written {
        assert_eq!(tensor, &checkpoint.tensors[key], "{name}: '{key}' changed on the round trip");
    }
}

/// The whole model on the fixture's clouds: images, per-view and fused features, text and
/// logits, with and without the view weights.
fn check_model(fixture: &ModelFixture, config: &PointClipConfig, checkpoint: &Checkpoint, device: &Device) {
    let model = official::import_official(checkpoint, config, device).unwrap_or_else(|e| panic!("{e}"));
    let inputs = fixture.tensors("inputs").unwrap_or_else(|e| panic!("{e}"));
    let points: Tensor<3> = tensor(input(&inputs, "points", fixture), device);
    let view_weights: Tensor<1> = tensor(input(&inputs, "view_weights", fixture), device);
    assert_eq!(view_weights.dims()[0], model.num_views(), "{}: one weight per view", fixture.name());

    let mut comparison = Comparison::new(fixture);
    let tokens = prompt_tokens(fixture, device);
    comparison.check("prompt_input_ids", tokens.clone().float());
    let text_embeddings = model.text_embeddings(tokens);
    comparison.check("text_features", text_embeddings.clone());
    let text = model.text_features(text_embeddings);
    comparison.check("text_feat", text.clone());

    let out = model.forward_parts(points, text.clone());
    comparison.check("image_ch0", out.images.clone().narrow(1, 0, 1));
    comparison.check("view_features", out.view_features.clone());
    if let Some(adapter) = &out.adapter {
        comparison.check("adapter_out", adapter.output.clone());
    }
    comparison.check("image_feat", out.image_features.clone());
    comparison.check("logits", out.logits.clone());
    comparison.check("logits_view_weighted", model.weighted_logits(out.image_features, text, view_weights));
    comparison.finish();
    assert_round_trip(&fixture.name(), checkpoint, official::export_official(&model, config).unwrap());
}

fn check_zeroshot(fixture: &ModelFixture, device: &Device) {
    let meta = fixture.model_config();
    let checkpoint = fixture.checkpoint("model").unwrap_or_else(|e| panic!("{e}"));
    let clip = clip_config(fixture, &checkpoint);
    assert_eq!(count(&meta["channel"], "channel", fixture), clip.embed_dim, "{}: channel", fixture.name());
    let projection = ProjectionConfig::zero_shot();
    assert_eq!(projection.num_views(), count(&meta["num_views"], "num_views", fixture), "{}: views", fixture.name());
    let config = PointClipConfig::zero_shot(clip);
    let text_heads = Some(config.clip.text.heads);
    let read = official::official_config(&checkpoint, projection, text_heads, 0.6).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(read, config, "{}: configuration read off the checkpoint", fixture.name());
    check_model(fixture, &config, &checkpoint, device);
}

/// The adapter configuration of a fixture's `model_config` (or its `adapter` object).
fn adapter_config(meta: &Value, fixture: &ModelFixture) -> AdapterConfig {
    let field = |a: &str, b: &str| if meta[a].is_null() { &meta[b] } else { &meta[a] };
    let mut config = AdapterConfig::new(count(&meta["num_views"], "num_views", fixture), count(&meta["in_features"], "in_features", fixture))
        .with_ratio(number(field("adapter_ratio", "ratio"), "ratio", fixture))
        .with_fusion_init(number(field("fusion_init", "init"), "init", fixture))
        .with_dropout(number(&meta["dropout"], "dropout", fixture));
    if !meta["batchnorm_eps"].is_null() {
        config = config.with_batch_norm_eps(number(&meta["batchnorm_eps"], "batchnorm_eps", fixture));
    }
    config
}

fn check_adapter(fixture: &ModelFixture, device: &Device) {
    let config = adapter_config(&fixture.model_config(), fixture);
    let checkpoint = fixture.checkpoint("model").unwrap_or_else(|e| panic!("{e}"));
    let read = official::adapter_config(&checkpoint.tensors, "", config.ratio, &checkpoint.path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((read.num_views, read.in_features), (config.num_views, config.in_features), "{}: sizes read off", fixture.name());
    let adapter = official::import_adapter(&checkpoint, &config, device).unwrap_or_else(|e| panic!("{e}"));
    let inputs = fixture.tensors("inputs").unwrap_or_else(|e| panic!("{e}"));
    let parts = adapter.forward_parts(tensor(input(&inputs, "view_features", fixture), device));
    let mut comparison = Comparison::new(fixture);
    comparison.check("global_feat", parts.global);
    comparison.check("view_feat", parts.view);
    comparison.check("output", parts.output);
    comparison.finish();
    assert_round_trip(&fixture.name(), &checkpoint, official::export_adapter(&adapter).unwrap());
}

fn check_fewshot(fixture: &ModelFixture, device: &Device) {
    let meta = fixture.model_config();
    let checkpoint = fixture.checkpoint("model").unwrap_or_else(|e| panic!("{e}"));
    let clip = clip_config(fixture, &checkpoint);
    assert_eq!(count(&meta["channel"], "channel", fixture), clip.embed_dim, "{}: channel", fixture.name());
    let adapter = adapter_config(&meta["adapter"], fixture);
    let projection = ProjectionConfig::few_shot();
    assert_eq!(projection.num_views(), count(&meta["num_views"], "num_views", fixture), "{}: views", fixture.name());
    let config = PointClipConfig::new(clip, projection.clone()).with_adapter(Some(adapter.clone()));
    let text_heads = Some(config.clip.text.heads);
    let read = official::official_config(&checkpoint, projection, text_heads, adapter.ratio).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(read, config, "{}: configuration read off the checkpoint", fixture.name());
    check_model(fixture, &config, &checkpoint, device);
}

#[test]
fn official_pointclip_outputs_are_matched() {
    let root = fixtures::root();
    let all = fixtures::method_fixtures(&root).unwrap_or_else(|e| panic!("method fixtures under {}: {e}", root.display()));
    let Some(device) = fixtures::device() else { return };
    let mut checked = BTreeSet::new();
    for fixture in &all {
        let owner = fixtures::method_owner(fixture).unwrap_or_else(|e| panic!("{e}"));
        match fixture.format.as_str() {
            "pointclip-projection" => check_projection(fixture, &device),
            "pointclip-zeroshot" => check_zeroshot(fixture, &device),
            "pointclip-adapter" => check_adapter(fixture, &device),
            "pointclip-fewshot" => check_fewshot(fixture, &device),
            other => {
                let by = if owner == "clip-3d" { "another clip-3d test" } else { owner };
                println!("{}: format {other} is checked by {by}, skipped here", fixture.name());
                continue;
            }
        }
        checked.insert(fixture.format.clone());
    }
    for format in ["pointclip-projection", "pointclip-zeroshot", "pointclip-adapter", "pointclip-fewshot"] {
        assert!(checked.contains(format), "no {format} fixture under {}/methods", root.display());
    }
}

/// The first fixture of `format`.
fn fixture_of(format: &str) -> ModelFixture {
    let root = fixtures::root();
    fixtures::method_fixtures(&root)
        .unwrap()
        .into_iter()
        .find(|f| f.format == format)
        .unwrap_or_else(|| panic!("a {format} fixture under {}/methods", root.display()))
}

#[test]
fn a_missing_unexpected_or_misshaped_official_key_is_named() {
    let Some(device) = fixtures::device() else { return };
    // The adapter checkpoint.
    let fixture = fixture_of("pointclip-adapter");
    let checkpoint = fixture.checkpoint("model").unwrap();
    let config = adapter_config(&fixture.model_config(), &fixture);
    let mut missing = checkpoint.clone();
    missing.tensors.remove("global_f.4.running_var");
    let err = official::import_adapter(&missing, &config, &device).unwrap_err().to_string();
    assert!(err.contains("global_f.4.running_var"), "{err}");
    let mut misshaped = checkpoint.clone();
    let weight = misshaped.tensors.get_mut("view_f.0.weight").unwrap();
    weight.shape[0] -= 1;
    weight.values.truncate(weight.shape[0] * weight.shape[1]);
    let err = official::import_adapter(&misshaped, &config, &device).unwrap_err().to_string();
    assert!(err.contains("view_f.0.weight"), "{err}");
    let mut unexpected = checkpoint;
    unexpected.tensors.insert("global_f.6.weight".into(), RawTensor { shape: vec![2], values: vec![0.0; 2] });
    let err = official::import_adapter(&unexpected, &config, &device).unwrap_err().to_string();
    assert!(err.contains("global_f.6.weight"), "{err}");

    // The few-shot model: CLIP and the adapter under `adapter.`.
    let fixture = fixture_of("pointclip-fewshot");
    let checkpoint = fixture.checkpoint("model").unwrap();
    let meta = fixture.model_config();
    let clip = clip_config(&fixture, &checkpoint);
    let config = PointClipConfig::new(clip, ProjectionConfig::few_shot()).with_adapter(Some(adapter_config(&meta["adapter"], &fixture)));
    let mut missing = checkpoint.clone();
    missing.tensors.remove("adapter.fusion_ratio");
    let err = official::import_official(&missing, &config, &device).unwrap_err().to_string();
    assert!(err.contains("adapter.fusion_ratio"), "{err}");
    let mut missing = checkpoint.clone();
    missing.tensors.remove("visual.attnpool.q_proj.bias");
    let err = official::import_official(&missing, &config, &device).unwrap_err().to_string();
    assert!(err.contains("visual.attnpool.q_proj.bias"), "{err}");
    let mut misshaped = checkpoint.clone();
    let weight = misshaped.tensors.get_mut("adapter.global_f.3.weight").unwrap();
    weight.shape[1] -= 1;
    weight.values.truncate(weight.shape[0] * weight.shape[1]);
    let err = official::import_official(&misshaped, &config, &device).unwrap_err().to_string();
    assert!(err.contains("adapter.global_f.3.weight"), "{err}");
    let mut unexpected = checkpoint.clone();
    unexpected.tensors.insert("adapter.global_f.5.weight".into(), RawTensor { shape: vec![2], values: vec![0.0; 2] });
    let err = official::import_official(&unexpected, &config, &device).unwrap_err().to_string();
    assert!(err.contains("adapter.global_f.5.weight"), "{err}");
    // Zero-shot weights (no adapter) are refused by a few-shot configuration.
    let mut clip_only = checkpoint;
    clip_only.tensors.retain(|k, _| !k.starts_with("adapter."));
    let err = official::import_official(&clip_only, &config, &device).unwrap_err().to_string();
    assert!(err.contains("adapter."), "{err}");
}

#[test]
fn clip_and_adapter_checkpoints_merge_into_the_few_shot_model() {
    let Some(device) = fixtures::device() else { return };
    let fixture = fixture_of("pointclip-fewshot");
    let checkpoint = fixture.checkpoint("model").unwrap();
    let meta = fixture.model_config();
    let config = PointClipConfig::new(clip_config(&fixture, &checkpoint), ProjectionConfig::few_shot())
        .with_adapter(Some(adapter_config(&meta["adapter"], &fixture)));
    // The two files of the official evaluation: CLIP's state dict and the adapter's, unprefixed.
    let mut clip = checkpoint.clone();
    clip.tensors.retain(|k, _| !k.starts_with("adapter."));
    let adapter = Checkpoint {
        path: "model-best.pth.tar".into(),
        tensors: checkpoint
            .tensors
            .iter()
            .filter_map(|(k, t)| Some((k.strip_prefix("adapter.")?.to_string(), t.clone())))
            .collect(),
    };
    let merged = official::merge_adapter(&clip, &adapter).unwrap();
    let model = official::import_official(&merged, &config, &device).unwrap();
    assert_round_trip(&fixture.name(), &checkpoint, official::export_official(&model, &config).unwrap());
    let err = official::merge_adapter(&merged, &adapter).unwrap_err().to_string();
    assert!(err.contains("adapter.fusion_ratio"), "{err}");
}

#[test]
fn saved_official_weights_load_back() {
    let Some(device) = fixtures::device() else { return };
    let fixture = fixture_of("pointclip-adapter");
    let checkpoint = fixture.checkpoint("model").unwrap();
    let meta = fixture.model_config();
    let config = adapter_config(&meta, &fixture);
    let adapter = official::import_adapter(&checkpoint, &config, &device).unwrap();
    // The adapter checkpoint written as safetensors (counters as int64) reads back unchanged.
    let dir = tempfile::Builder::new().prefix("pointclip-adapter-").tempdir().unwrap();
    let file = dir.path().join("adapter.safetensors");
    let layout = official::adapter_layout();
    Checkpoint::write_safetensors_with_integers(&official::export_adapter(&adapter).unwrap(), &layout.integer_keys(), &file).unwrap();
    let reread = Checkpoint::read(&file).unwrap();
    assert_round_trip("adapter.safetensors", &checkpoint, reread.tensors);
}

//! CLIP4Clip and ActionCLIP against their official code: every `clip4clip` and `actionclip`
//! fixture under `<fixture root>/methods`, loaded from the official checkpoint layout, every
//! tensor of `expected.safetensors` compared within 1e-4, and the layout written back exactly.
//! Method fixtures of other crates are skipped by name; an unknown format fails.

use std::collections::{BTreeMap, BTreeSet};

use burn::tensor::{Device, Int, Tensor, TensorData};
use clip_core::l2_normalize;
use clip_core::weights::{Checkpoint, RawTensor, export};
use clip_fixtures::{self as fixtures, Comparison, ModelFixture};
use clip_video::actionclip::{self, kl_divergence, soft_targets, template_scores};
use clip_video::clip4clip::objective::symmetric_cross_entropy;
use clip_video::clip4clip::{self, SimilarityHeader};



fn tensor<const D: usize>(raw: &RawTensor, shape: [usize; D], device: &Device) -> Tensor<D> {
    Tensor::from_data(TensorData::new(raw.values.clone(), shape), device)
}

fn ids<const D: usize>(raw: &RawTensor, shape: [usize; D], device: &Device) -> Tensor<D, Int> {
    let values: Vec<i64> = raw.values.iter().map(|&v| v as i64).collect();
    Tensor::from_data(TensorData::new(values, shape), device)
}

fn input<'a>(inputs: &'a BTreeMap<String, RawTensor>, key: &str, fixture: &ModelFixture) -> &'a RawTensor {
    inputs.get(key).unwrap_or_else(|| panic!("{}: inputs.safetensors has no '{key}'", fixture.name()))
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

fn check_clip4clip(fixture: &ModelFixture, device: &Device) {
    let meta = &fixture.meta["model_config"];
    let checkpoint = fixture.checkpoint("model").unwrap_or_else(|e| panic!("{e}"));
    let inputs = fixture.tensors("inputs").unwrap_or_else(|e| panic!("{e}"));
    let video = input(&inputs, "video", fixture);
    let [batch, pairs, frames, ts, channels, height, width]: [usize; 7] = video.shape.clone().try_into().unwrap();
    assert_eq!((pairs, ts), (1, 1), "{}: one pair and one time step per frame", fixture.name());
    let cross_heads = meta["cross_effective"]["num_attention_heads"]
        .as_u64()
        .or(meta["cross_config_json"]["num_attention_heads"].as_u64())
        .map_or(clip4clip::official::OFFICIAL_CROSS_HEADS, |h| h as usize);
    let config = clip4clip::official::official_config(&checkpoint, frames, cross_heads).unwrap_or_else(|e| panic!("{e}"));
    let header: SimilarityHeader = serde_json::from_value(meta["sim_header"].clone()).unwrap();
    assert_eq!(config.similarity, header, "{}: header read off the checkpoint", fixture.name());
    let model = clip4clip::official::import_official(&checkpoint, &config, device).unwrap_or_else(|e| panic!("{e}"));

    let words = input(&inputs, "input_ids", fixture).shape[2];
    let tokens = ids(input(&inputs, "input_ids", fixture), [batch, words], device);
    let videos = tensor(video, [batch, frames, channels, height, width], device);
    let mask = tensor(input(&inputs, "video_mask", fixture), [batch, frames], device);
    let mut comparison = Comparison::new(fixture);
    let text = model.text_features(tokens);
    let visual = model.frame_features(videos);
    comparison.check("sequence_output", text.clone());
    comparison.check("visual_output", visual.clone());
    let sim = model.similarity_from_features(text, visual, Some(mask));
    comparison.check("sim_matrix", sim.clone());
    comparison.check("train_loss", symmetric_cross_entropy(sim));
    comparison.finish();
    let written = export(&model, &clip4clip::official::official_layout(&config)).unwrap();
    assert_round_trip(&fixture.name(), &checkpoint, written);
}

fn check_actionclip(fixture: &ModelFixture, device: &Device) {
    let meta = &fixture.meta["model_config"];
    let checkpoint = fixture.checkpoint("model").unwrap_or_else(|e| panic!("{e}"));
    let inputs = fixture.tensors("inputs").unwrap_or_else(|e| panic!("{e}"));
    let frames_raw = input(&inputs, "frames", fixture);
    let [batch, frames, channels, height, width]: [usize; 5] = frames_raw.shape.clone().try_into().unwrap();
    let config = actionclip::official::official_config(&checkpoint, frames).unwrap_or_else(|e| panic!("{e}"));
    let fusion: actionclip::Fusion = serde_json::from_value(meta["sim_header"].clone()).unwrap();
    assert_eq!(config.fusion, fusion, "{}: fusion read off the checkpoint", fixture.name());
    let model = actionclip::official::import_official(&checkpoint, &config, device).unwrap_or_else(|e| panic!("{e}"));

    let mut comparison = Comparison::new(fixture);
    let videos = tensor(frames_raw, [batch, frames, channels, height, width], device);
    let frame_features = model.frame_features(videos);
    comparison.check("frame_features", frame_features.clone());
    let video = model.fuse(frame_features);
    comparison.check("video_features", video.clone());
    let prompts = input(&inputs, "text_input_ids", fixture);
    let text = model.clip.encode_text(ids(prompts, [prompts.shape[0], prompts.shape[1]], device), false);
    comparison.check("text_features", text.clone());
    let (video, text) = (l2_normalize(video), l2_normalize(text));
    comparison.check("similarity_logits", video.clone().matmul(text.clone().transpose()) * actionclip::model::EVAL_LOGIT_SCALE);
    let classes = meta["class_names"].as_array().map_or(0, |c| c.len());
    assert!(classes > 0, "{}: model_config.class_names is empty", fixture.name());
    comparison.check("similarity", template_scores(video.clone(), text, classes));

    let train = input(&inputs, "train_text_input_ids", fixture);
    let train_text = l2_normalize(model.clip.encode_text(ids(train, [train.shape[0], train.shape[1]], device), false));
    let per_image = model.logits_from_embeddings(video, train_text);
    comparison.check("train_logits_per_image", per_image.clone());
    comparison.check("train_logits_per_text", per_image.clone().transpose());
    let labels = ids(input(&inputs, "train_list_id", fixture), [batch], device);
    let ground_truth = labels.clone().reshape([batch, 1]).expand([batch, batch]).equal(labels.reshape([1, batch]).expand([batch, batch])).float();
    comparison.check("train_ground_truth", ground_truth.clone());
    let targets = soft_targets(ground_truth);
    let loss_images = kl_divergence(per_image.clone(), targets.clone());
    let loss_texts = kl_divergence(per_image.transpose(), targets);
    comparison.check("train_loss_imgs", loss_images.clone());
    comparison.check("train_loss_texts", loss_texts.clone());
    comparison.check("train_total_loss", (loss_images + loss_texts) / 2.0);
    let prediction = input(&inputs, "kl_prediction", fixture);
    let label = input(&inputs, "kl_label", fixture);
    let kl = kl_divergence(
        tensor(prediction, [prediction.shape[0], prediction.shape[1]], device),
        soft_targets(tensor(label, [label.shape[0], label.shape[1]], device)),
    );
    comparison.check("kl_loss", kl);
    comparison.finish();
    let written = export(&model, &actionclip::official::official_layout(&config)).unwrap();
    assert_round_trip(&fixture.name(), &checkpoint, written);
}

#[test]
fn official_clip4clip_and_actionclip_outputs_are_matched() {
    let root = fixtures::root();
    let all = fixtures::method_fixtures(&root).unwrap_or_else(|e| panic!("method fixtures under {}: {e}", root.display()));
    let Some(device) = fixtures::device() else { return };
    let mut checked = 0;
    for fixture in &all {
        let owner = fixtures::method_owner(fixture).unwrap_or_else(|e| panic!("{e}"));
        match fixture.format.as_str() {
            "clip4clip" => check_clip4clip(fixture, &device),
            "actionclip" => check_actionclip(fixture, &device),
            other => {
                println!("{}: format {other} is checked by {owner}, skipped here", fixture.name());
                continue;
            }
        }
        checked += 1;
    }
    assert!(checked > 0, "no clip4clip or actionclip fixture under {}/methods", root.display());
}

/// Writes `checkpoint` as safetensors with the tensors named in `fp16_keys` stored as float16,
/// as the official GPU checkpoints hold them.
fn write_with_fp16(checkpoint: &Checkpoint, fp16_keys: &BTreeSet<String>, path: &std::path::Path) {
    use safetensors::tensor::{Dtype, TensorView};
    let bytes: Vec<(String, Dtype, Vec<u8>, Vec<usize>)> = checkpoint
        .tensors
        .iter()
        .map(|(key, t)| {
            if fp16_keys.contains(key) {
                let data = t.values.iter().flat_map(|&v| half::f16::from_f32(v).to_le_bytes()).collect();
                (key.clone(), Dtype::F16, data, t.shape.clone())
            } else {
                (key.clone(), Dtype::F32, t.values.iter().flat_map(|v| v.to_le_bytes()).collect(), t.shape.clone())
            }
        })
        .collect();
    let views: Vec<(String, TensorView)> = bytes
        .iter()
        .map(|(key, dtype, data, shape)| (key.clone(), TensorView::new(*dtype, shape.clone(), data).unwrap()))
        .collect();
    std::fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
}

#[test]
fn float16_official_checkpoints_load() {
    let root = fixtures::root();
    let all = fixtures::method_fixtures(&root).unwrap_or_else(|e| panic!("{e}"));
    let Some(device) = fixtures::device() else { return };
    let mut checked = 0;
    for fixture in all.iter().filter(|f| f.format == "clip4clip" || f.format == "actionclip") {
        let keys: BTreeSet<String> = fixture.meta["model_config"]["fp16_keys_in_official_checkpoints"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|k| k.as_str())
            .map(String::from)
            .collect();
        if keys.is_empty() {
            continue;
        }
        let checkpoint = fixture.checkpoint("model").unwrap();
        let found: BTreeSet<String> = keys.iter().filter(|k| checkpoint.tensors.contains_key(*k)).cloned().collect();
        assert_eq!(found, keys, "{}: fp16 keys not in the checkpoint", fixture.name());
        let dir = tempfile::Builder::new().prefix("fp16-").tempdir().unwrap();
        let file = dir.path().join(format!("{}.safetensors", fixture.name()));
        write_with_fp16(&checkpoint, &keys, &file);
        // The fixtures' values are fp16-representable: read back as f32 they are the same.
        let reread = Checkpoint::read(&file).unwrap();
        for (key, tensor) in &checkpoint.tensors {
            assert_eq!(&reread.tensors[key], tensor, "{}: '{key}' after float16", fixture.name());
        }
        let model_loads = match fixture.format.as_str() {
            "clip4clip" => {
                let config = clip4clip::official::official_config(&reread, 4, 4).unwrap();
                clip4clip::official::import_official(&reread, &config, &device).map(|_| ())
            }
            _ => {
                let config = actionclip::official::official_config(&reread, 4).unwrap();
                actionclip::official::import_official(&reread, &config, &device).map(|_| ())
            }
        };
        model_loads.unwrap_or_else(|e| panic!("{}: {e}", fixture.name()));
        checked += 1;
    }
    assert!(checked > 0, "no clip4clip or actionclip fixture lists fp16 keys");
}

#[test]
fn a_missing_or_misshaped_official_key_is_named() {
    let root = fixtures::root();
    let fixture = fixtures::method_fixtures(&root)
        .unwrap()
        .into_iter()
        .find(|f| f.format == "clip4clip" && f.meta["model_config"]["sim_header"] == "seqTransf")
        .expect("a clip4clip-seqTransf fixture");
    let Some(device) = fixtures::device() else { return };
    let checkpoint = fixture.checkpoint("model").unwrap();
    let config = clip4clip::official::official_config(&checkpoint, 4, 4).unwrap();
    let mut missing = checkpoint.clone();
    missing.tensors.remove("transformerClip.resblocks.0.ln_1.weight");
    let err = clip4clip::official::import_official(&missing, &config, &device).unwrap_err().to_string();
    assert!(err.contains("transformerClip.resblocks.0.ln_1.weight"), "{err}");
    let mut misshaped = checkpoint.clone();
    let table = misshaped.tensors.get_mut("frame_position_embeddings.weight").unwrap();
    table.shape[0] -= 1;
    table.values.truncate(table.shape[0] * table.shape[1]);
    let err = clip4clip::official::import_official(&misshaped, &config, &device).unwrap_err().to_string();
    assert!(err.contains("frame_position_embeddings.weight"), "{err}");
    let mut unexpected = checkpoint;
    unexpected.tensors.insert("cross.pooler.dense.bias".into(), RawTensor { shape: vec![2], values: vec![0.0; 2] });
    let err = clip4clip::official::import_official(&unexpected, &config, &device).unwrap_err().to_string();
    assert!(err.contains("cross.pooler.dense.bias"), "{err}");
}

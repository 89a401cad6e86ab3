//! AudioCLIP against its official code: every `audioclip` fixture under `<fixture root>/methods`
//! (every size read from its `fixture.json` and state dict), loaded from the official state
//! dict, every tensor of `expected.safetensors` compared, and the state dict written back exactly.
//! Method fixtures of other crates are skipped by name; an unknown format fails.
//!
//! Tolerances (absolute), as the fixture's notes justify: the front end's power is a difference
//! of nearly equal terms at spectral near-nulls (-100..-140 dB), where f32 rounding moves the dB
//! value by a few hundredths; the ResNeXt carries that into the audio embeddings (~1e-4 on values
//! of ~1) and the logits multiply it by scales up to 100. Image, text and `loss_ttf` meet 1e-4.

use std::collections::BTreeSet;

use burn::tensor::{Device, Int, Tensor, TensorData};
use clip_audio::config::FbspConfig;
use clip_audio::loss::{Embeddings, TriModalLoss, logits};
use clip_audio::official::{export_official, import_official, official_config};
use clip_core::{ClipTokenizer, l2_normalize};
use clip_fixtures::{self as fixtures, Comparison, ModelFixture, abs_diff};
use serde_json::Value;

/// The complex spectrogram (values up to a few units; an f32 port of the kernels meets ~5e-6).
const SPEC_TOLERANCE: f32 = 5e-5;
/// dB at isolated spectral near-nulls.
const DB_TOLERANCE: f32 = 0.05;
/// Pooled body features (sums of up to thousands of gated activations).
const POOLED_TOLERANCE: f32 = 5e-3;
/// Audio embeddings and features.
const AUDIO_TOLERANCE: f32 = 1e-3;
/// Audio logits (scales up to 100).
const AUDIO_LOGIT_TOLERANCE: f32 = 2e-2;
/// Losses holding audio terms.
const LOSS_TOLERANCE: f32 = 2e-3;

fn field(meta: &Value, key: &str, name: &str) -> usize {
    meta[key].as_u64().unwrap_or_else(|| panic!("{name}: model_config.{key} is not an integer")) as usize
}

fn tensor<const D: usize>(fixture: &ModelFixture, inputs: &std::collections::BTreeMap<String, clip_core::weights::RawTensor>, key: &str, device: &Device) -> Tensor<D> {
    let raw = inputs.get(key).unwrap_or_else(|| panic!("{}: inputs has no '{key}'", fixture.name()));
    let shape: [usize; D] = raw.shape.clone().try_into().unwrap_or_else(|_| panic!("{}: '{key}' is not {D}-D", fixture.name()));
    Tensor::from_data(TensorData::new(raw.values.clone(), shape), device)
}

fn check_audioclip(fixture: &ModelFixture, device: &Device) {
    let name = fixture.name();
    let meta = fixture.model_config();
    let fbsp = FbspConfig::new()
        .with_sample_rate(field(&meta, "sample_rate", &name))
        .with_n_fft(field(&meta, "n_fft", &name))
        .with_hop_length(field(&meta, "hop_length", &name))
        .with_win_length(field(&meta, "win_length", &name))
        .with_normalized(meta["normalized"].as_bool().unwrap_or_else(|| panic!("{name}: model_config.normalized")));
    assert_eq!(meta["window"].as_str(), Some("blackmanharris"), "{name}: only the Blackman-Harris window is ported");
    let checkpoint = fixture.checkpoint("model").unwrap_or_else(|e| panic!("{e}"));
    let heads = meta["transformer_heads"].as_u64().map(|h| h as usize);
    let config = official_config(&checkpoint, heads, fbsp).unwrap_or_else(|e| panic!("{e}"));
    // The architecture read off the state dict is the one the fixture was built with.
    assert_eq!(config.embed_dim(), field(&meta, "embed_dim", &name), "{name}: embed_dim");
    assert_eq!(config.clip.text.width, field(&meta, "transformer_width", &name), "{name}: text width");
    assert_eq!(config.clip.text.layers, field(&meta, "transformer_layers", &name), "{name}: text layers");
    assert_eq!(config.clip.text.context_length, field(&meta, "context_length", &name), "{name}: context");
    assert_eq!(config.clip.vision.image_size(), field(&meta, "image_resolution", &name), "{name}: image size");
    assert_eq!(config.audio.attention, meta["apply_attention"].as_bool().unwrap_or(true), "{name}: attention");
    let model = import_official(&checkpoint, &config, device).unwrap_or_else(|e| panic!("{e}"));

    let inputs = fixture.tensors("inputs").unwrap_or_else(|e| panic!("{e}"));
    let audio: Tensor<3> = tensor(fixture, &inputs, "audio", device);
    let images: Tensor<4> = tensor(fixture, &inputs, "pixel_values", device);
    let ids = inputs.get("input_ids").unwrap_or_else(|| panic!("{name}: inputs has no 'input_ids'"));
    let tokens = Tensor::<2, Int>::from_data(
        TensorData::new(ids.values.iter().map(|&v| v as i64).collect::<Vec<_>>(), [ids.shape[0], ids.shape[1]]),
        device,
    );
    // The ids are what our tokenizer makes of the joined texts.
    let joined: Vec<String> = fixture.meta["texts_joined"]
        .as_array()
        .unwrap_or_else(|| panic!("{name}: no texts_joined"))
        .iter()
        .map(|t| t.as_str().expect("texts_joined holds strings").to_string())
        .collect();
    let tokenizer = ClipTokenizer::new().with_context_length(config.clip.text.context_length).expect("context");
    let ours = tokenizer.tokenize_batch(&joined, device).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(ours.to_data().iter::<i64>().collect::<Vec<_>>(), ids.values.iter().map(|&v| v as i64).collect::<Vec<_>>(), "{name}: token ids");
    let pairs = inputs.get("batch_indices").unwrap_or_else(|| panic!("{name}: inputs has no 'batch_indices'"));
    let pairs: Vec<i64> = pairs.values.iter().map(|&v| v as i64).collect();

    let mut comparison = Comparison::new(fixture);
    let spectrogram = model.audio.spectrogram(audio.clone());
    let spec = Tensor::stack::<4>(vec![spectrogram.re.clone(), spectrogram.im.clone()], 3);
    comparison.check_within("fbsp_spec", spec, SPEC_TOLERANCE);
    let out = model.audio.forward_all(audio);
    comparison.check_within("spectrogram_db", out.spectrogram_db.clone(), DB_TOLERANCE);

    // The body alone, fed the official spectrogram, meets the tight tolerance.
    let expected_db = comparison.expected("spectrogram_db").clone();
    let db_shape: [usize; 5] = expected_db.shape.clone().try_into().expect("spectrogram_db is 5-D");
    let pooled_official = model.audio.pooled(Tensor::from_data(TensorData::new(expected_db.values, db_shape), device));
    let embeds_official = model.audio.fc.forward(pooled_official.clone());
    let (body_error, _) = abs_diff(
        &embeds_official.to_data().iter::<f32>().collect::<Vec<_>>(),
        &comparison.expected("audio_embeds").values,
    );
    assert!(body_error <= 1e-4, "{name}: audio embeddings of the official spectrogram differ by {body_error:e}");

    comparison.check_within("audio_pooled", out.pooled.clone(), POOLED_TOLERANCE);
    comparison.check_within("audio_embeds", out.embeds.clone(), AUDIO_TOLERANCE);
    let image_embeds = model.encode_image(images);
    comparison.check("image_embeds", image_embeds.clone());
    let text_embeds = model.encode_text(tokens);
    comparison.check("text_embeds", text_embeds.clone());
    comparison.check_within("audio_features", l2_normalize(out.embeds.clone()), AUDIO_TOLERANCE);
    comparison.check("image_features", l2_normalize(image_embeds.clone()));
    comparison.check("text_features", l2_normalize(text_embeds.clone()));
    let (ai, at, it) = logits(&model, Some(out.embeds.clone()), Some(image_embeds.clone()), Some(text_embeds.clone()));
    comparison.check_within("logits_audio_image", ai.expect("audio and image"), AUDIO_LOGIT_TOLERANCE);
    comparison.check_within("logits_audio_text", at.expect("audio and text"), AUDIO_LOGIT_TOLERANCE);
    comparison.check("logits_image_text", it.expect("image and text"));

    // The loss pairs each audio and image with the text `batch_indices` names.
    let paired = Tensor::<1, Int>::from_data(TensorData::new(pairs.clone(), [pairs.len()]), device);
    let paired_text = text_embeds.select(0, paired);
    let loss = TriModalLoss::default();
    let full = loss
        .forward(
            &model,
            Embeddings {
                audio: Some(out.embeds.clone()),
                image: Some(image_embeds),
                text: Some(paired_text.clone()),
                kernels: Some(out.kernels.clone()),
            },
        )
        .expect("three modalities");
    assert_eq!(full.matrices, 3, "{name}: three logit matrices");
    comparison.check_within("loss", full.total, LOSS_TOLERANCE);
    comparison.check("loss_ttf", full.ttf.expect("audio given"));
    let audio_text = loss
        .forward(
            &model,
            Embeddings { audio: Some(out.embeds), image: None, text: Some(paired_text), kernels: Some(out.kernels) },
        )
        .expect("two modalities");
    assert_eq!(audio_text.matrices, 1, "{name}: one logit matrix");
    comparison.check_within("loss_audio_text", audio_text.total, LOSS_TOLERANCE);
    comparison.finish();

    // The state dict written back is the one read, key for key and value for value.
    let written = export_official(&model, &config).unwrap_or_else(|e| panic!("{e}"));
    let theirs: BTreeSet<&String> = checkpoint.tensors.keys().collect();
    let ours: BTreeSet<&String> = written.keys().collect();
    assert_eq!(theirs, ours, "{name}: keys written back differ");
    for (key, tensor) in &written {
        assert_eq!(tensor, &checkpoint.tensors[key], "{name}: '{key}' changed on the round trip");
    }
}

#[test]
fn official_audioclip_outputs_are_matched() {
    let root = fixtures::root();
    let all = fixtures::method_fixtures(&root).unwrap_or_else(|e| panic!("method fixtures under {}: {e}", root.display()));
    let Some(device) = fixtures::device() else { return };
    let mut checked = 0;
    for fixture in &all {
        let owner = fixtures::method_owner(fixture).unwrap_or_else(|e| panic!("{e}"));
        match fixture.format.as_str() {
            "audioclip" => check_audioclip(fixture, &device),
            other => {
                println!("{}: format {other} is checked by {owner}, skipped here", fixture.name());
                continue;
            }
        }
        checked += 1;
    }
    assert!(checked > 0, "no audioclip fixture under {}/methods", root.display());
}

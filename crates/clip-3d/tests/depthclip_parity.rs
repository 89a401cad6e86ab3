//! DepthCLIP against its official code: every `depthclip` fixture under
//! `<fixture root>/methods`, loaded from the official state dict, every tensor of
//! `expected.safetensors` compared within 1e-4, and the state dict written back exactly.
//! Method fixtures of other crates are skipped by name; an unknown format fails.

use std::collections::BTreeSet;

use burn::tensor::{Device, Tensor, TensorData};
use clip_3d::depthclip::model::{prompt_tokens, upsample_depth, zeroshot_text_features};
use clip_3d::depthclip::official::{export_official, import_official, official_config};
use clip_3d::depthclip::{DenseClipConfig, DepthClip, DepthClipConfig};
use clip_core::ClipTokenizer;
use clip_fixtures::{self as fixtures, Comparison, ModelFixture, abs_diff};
use serde_json::Value;



fn strings(value: &Value, what: &str) -> Vec<String> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("model_config.{what} is not a list"))
        .iter()
        .map(|v| v.as_str().unwrap_or_else(|| panic!("model_config.{what} holds a non-string")).to_string())
        .collect()
}

fn usizes(value: &Value, what: &str) -> Vec<usize> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("model_config.{what} is not a list"))
        .iter()
        .map(|v| v.as_u64().unwrap_or_else(|| panic!("model_config.{what} holds a non-integer")) as usize)
        .collect()
}

/// The method configuration the fixture's `model_config` describes, on `clip`.
fn method_config(meta: &Value, clip: DenseClipConfig) -> DepthClipConfig {
    let size = usizes(&meta["eval_upsample_size"], "eval_upsample_size");
    DepthClipConfig::new(clip)
        .with_templates(strings(&meta["depth_templates"], "depth_templates"))
        .with_obj_classes(strings(&meta["obj_classes"], "obj_classes"))
        .with_depth_classes(strings(&meta["depth_classes"], "depth_classes"))
        .with_bins(
            meta["bin_list"].as_array().expect("model_config.bin_list").iter().map(|v| v.as_f64().unwrap() as f32).collect(),
        )
        .with_temperature(meta["temperature"].as_f64().expect("model_config.temperature"))
        .with_logit_factor(meta["logit_factor"].as_f64().expect("model_config.logit_factor"))
        .with_flip_average(true)
        .with_output_size(Some([size[0], size[1]]))
}

fn check_depthclip(fixture: &ModelFixture, device: &Device) {
    let name = fixture.name();
    let meta = fixture.model_config();
    let arch = &meta["clip"];
    let checkpoint = fixture.checkpoint("model").unwrap_or_else(|e| panic!("{e}"));
    // The text heads are not in a state dict (and width / 64 is 0 for the tiny tower).
    let heads = arch["transformer_heads"].as_u64().map(|h| h as usize);
    let clip_config = official_config(&checkpoint, heads).unwrap_or_else(|e| panic!("{e}"));
    // The architecture read off the state dict is the one the fixture was built with.
    let layers = usizes(&arch["vision_layers"], "clip.vision_layers");
    assert_eq!(clip_config.layers.to_vec(), layers, "{name}: vision layers");
    let field = |key: &str| arch[key].as_u64().unwrap_or_else(|| panic!("{name}: model_config.clip.{key}")) as usize;
    assert_eq!(clip_config.width, field("vision_width"), "{name}: vision width");
    assert_eq!(clip_config.embed_dim, field("embed_dim"), "{name}: embed_dim");
    assert_eq!(clip_config.text.width, field("transformer_width"), "{name}: text width");
    assert_eq!(clip_config.text.layers, field("transformer_layers"), "{name}: text layers");
    assert_eq!(clip_config.text.context_length, field("context_length"), "{name}: context");
    assert_eq!(clip_config.text.vocab_size, field("vocab_size"), "{name}: vocabulary");
    let clip = import_official(&checkpoint, &clip_config, device).unwrap_or_else(|e| panic!("{e}"));

    let config = method_config(&meta, clip_config.clone());
    let prompts = config.prompts().unwrap_or_else(|e| panic!("{e}"));
    let listed: Vec<String> = meta["prompts"]
        .as_array()
        .expect("model_config.prompts")
        .iter()
        .map(|p| p["text"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(prompts, listed, "{name}: prompts and their order");

    let mut comparison = Comparison::new(fixture);
    let tokenizer = ClipTokenizer::new();
    let tokens = prompt_tokens(&config, &tokenizer, device).unwrap_or_else(|e| panic!("{e}"));
    let ids: Vec<i64> = tokens.to_data().iter::<i64>().collect();
    let ids: Vec<f32> = ids.iter().map(|&id| id as f32).collect();
    comparison.check_values("prompt_input_ids", &ids, &tokens.dims(), 0.0);
    let embeds = clip.encode_text(tokens);
    comparison.check("prompt_text_embeds", embeds.clone());
    let text_features = zeroshot_text_features(embeds, config.num_bins()).unwrap_or_else(|e| panic!("{e}"));
    comparison.check("text_features", text_features.clone());

    let inputs = fixture.tensors("inputs").unwrap_or_else(|e| panic!("{e}"));
    let pixels = inputs.get("pixel_values").unwrap_or_else(|| panic!("{name}: inputs has no 'pixel_values'"));
    let shape: [usize; 4] = pixels.shape.clone().try_into().expect("pixel_values is [B, 3, H, W]");
    let images = Tensor::<4>::from_data(TensorData::new(pixels.values.clone(), shape), device);

    let depthclip = DepthClip::new(clip, config.clone(), &tokenizer).unwrap_or_else(|e| panic!("{e}"));
    let (max, _) = abs_diff(
        &depthclip.text_features.to_data().iter::<f32>().collect::<Vec<_>>(),
        &text_features.to_data().iter::<f32>().collect::<Vec<_>>(),
    );
    // Bit-identical on flex. On wgpu, burn's fusion builds its kernels from whatever is still
    // unmaterialized, so the same expression can round differently in the last bit.
    assert!(max <= 1e-6, "{name}: DepthClip::new encodes the prompts differently ({max:e})");

    let out = depthclip.forward(images.clone());
    let [_, channels, h, w] = out.layer4.dims();
    assert_eq!(vec![h, w], usizes(&meta["feature_grid"], "feature_grid"), "{name}: feature grid");
    assert_eq!(channels, meta["layer4_channels"].as_u64().unwrap() as usize, "{name}: layer4 channels");
    comparison.check("layer4", out.layer4);
    comparison.check("image_features_halved", out.features);
    comparison.check("depth_logits", out.logits);
    comparison.check("depth_probs", out.probs);
    comparison.check("depth", out.depth.clone());
    let flip = depthclip.depth_flip(images);
    comparison.check("depth_flip", flip.clone());
    // `DepthClip::predict` chains these two steps (checked against them in depthclip_model.rs).
    let size = config.output_size.expect("set from eval_upsample_size");
    let eval = upsample_depth((out.depth + flip) * 0.5, size);
    comparison.check("depth_eval", eval);
    comparison.finish();

    // The state dict written back is the one read, key for key and value for value.
    let written = export_official(&depthclip.clip, &clip_config).unwrap_or_else(|e| panic!("{e}"));
    let theirs: BTreeSet<&String> = checkpoint.tensors.keys().collect();
    let ours: BTreeSet<&String> = written.keys().collect();
    assert_eq!(theirs, ours, "{name}: keys written back differ");
    for (key, tensor) in &written {
        assert_eq!(tensor, &checkpoint.tensors[key], "{name}: '{key}' changed on the round trip");
    }
}

#[test]
fn official_depthclip_outputs_are_matched() {
    let root = fixtures::root();
    let all = fixtures::method_fixtures(&root)
        .unwrap_or_else(|e| panic!("method fixtures under {}: {e}", root.display()));
    let Some(device) = fixtures::device() else { return };
    let mut checked = 0;
    for fixture in &all {
        let owner = fixtures::method_owner(fixture).unwrap_or_else(|e| panic!("{e}"));
        match fixture.format.as_str() {
            "depthclip" => check_depthclip(fixture, &device),
            other => {
                println!("{}: format {other} is checked by {owner}, skipped here", fixture.name());
                continue;
            }
        }
        checked += 1;
    }
    assert!(checked > 0, "no depthclip fixture under {}/methods", root.display());
}

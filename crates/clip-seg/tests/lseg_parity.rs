//! LSeg against the official code (isl-org/lang-seg `LSegNet`): every method fixture of format
//! `lseg` under the fixture root, loaded from its official state dict and compared tensor by
//! tensor; plus the official layout's round trip, Lightning (`net.`) and fp16 checkpoints, and
//! key errors.

use std::collections::BTreeMap;

use burn::tensor::{Device, Int, Tensor, TensorData};
use clip_core::ClipError;
use clip_core::weights::{Checkpoint, RawTensor};
use clip_fixtures::{self as fixtures, ModelFixture, abs_diff};
use clip_seg::lseg::decoder::resize_bilinear;
use clip_seg::lseg::{
    Lseg, LsegConfig, OfficialLsegConfig, export_official, import_official, load_official,
    official_layout, save_official,
};

/// The f32 parts of the official forward (ViT, reassemble, fusion, the f32 text tower):
/// absolute tolerance.
const F32_TOLERANCE: f32 = 1e-4;
/// `text_features` come from the official fp16 text tower (`clip.load` on CUDA converts the
/// weights to fp16): fp16 keeps 11 significant bits (a relative rounding of up to 4.9e-4 per
/// operation), compounded over the tower's layers; the fixtures' own fp16 and f32 towers differ
/// by up to 7.1e-4. We run the tower in f32, so the error is scaled: absolute where the value
/// is at most 1 in magnitude, relative above.
const FP16_TEXT_TOLERANCE: f32 = 2e-3;
/// `logits` and `logits_lowres` carry fp16 rounding in the official code (fp16 text features,
/// and `(scale * image_features.half()) @ text_features.t()` in fp16); ours are f32
/// throughout. Recomputing the official logits in f32 differed by up to 4.6e-3 (fixture notes,
/// logits up to 5 in magnitude), so the bound is 1e-2 absolute, as the notes advise.
const FP16_LOGIT_TOLERANCE: f32 = 1e-2;
/// Our `logits_lowres` recomputed with the official fp16 casts emulated: 4 fp16 ulps, scaled
/// (an fp16 ulp is 2^-10 relative; the product is rounded once to fp16 and the head blocks mix
/// up to 9 rounded neighbours and the label maximum).
const FP16_EMULATED_TOLERANCE: f32 = 4.0 / 1024.0;

fn config_of(fixture: &ModelFixture) -> LsegConfig {
    let origin = fixture.dir.join("fixture.json").display().to_string();
    OfficialLsegConfig::from_value(fixture.model_config(), &origin)
        .and_then(|official| official.to_lseg_config(&origin))
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Every method fixture of format `lseg`; an unknown format fails. With `report`, the others
/// are named with the crate that checks them.
fn lseg_fixtures(report: bool) -> Vec<ModelFixture> {
    let root = fixtures::root();
    let all = fixtures::method_fixtures(&root)
        .unwrap_or_else(|e| panic!("method fixtures under {}: {e}", root.display()));
    let mut found = Vec::new();
    for fixture in all {
        let owner = fixtures::method_owner(&fixture).unwrap_or_else(|e| panic!("{e}"));
        match (owner, fixture.format.as_str()) {
            ("clip-seg", "lseg") => found.push(fixture),
            ("clip-seg", other) => panic!(
                "{}: format '{other}' belongs to clip-seg but no clip-seg parity test knows it",
                fixture.dir.display()
            ),
            (owner, format) if report => println!("{}: format {format} is checked by {owner}, skipped", fixture.name()),
            _ => {}
        }
    }
    assert!(!found.is_empty(), "no method fixture of format lseg under {}/methods", root.display());
    found
}

fn tensor<const D: usize>(raw: &RawTensor, device: &Device) -> Tensor<D> {
    Tensor::from_data(TensorData::new(raw.values.clone(), raw.shape.clone()), device)
}

fn get<'a>(tensors: &'a BTreeMap<String, RawTensor>, key: &str, fixture: &ModelFixture) -> &'a RawTensor {
    tensors
        .get(key)
        .unwrap_or_else(|| panic!("{}: no tensor '{key}'", fixture.dir.display()))
}

fn raw<const D: usize>(t: Tensor<D>) -> RawTensor {
    let data = t.into_data();
    RawTensor { shape: data.shape().to_vec(), values: data.iter::<f32>().collect() }
}

/// Largest error, absolute where the reference is at most 1 in magnitude, relative above.
fn max_scaled_error(got: &[f32], expected: &[f32]) -> f32 {
    got.iter()
        .zip(expected)
        .map(|(g, e)| (g - e).abs() / e.abs().max(1.0))
        .fold(0.0, f32::max)
}

/// How an output is compared.
#[derive(Clone, Copy)]
enum Bound {
    /// Absolute, f32 parts.
    F32,
    /// Scaled, the fp16 text tower.
    Fp16Text,
    /// Absolute, logits with fp16 rounding.
    Fp16Logits,
}

/// Every tensor of the official `expected` file that the model produces, by name.
fn outputs(model: &Lseg, pixels: Tensor<4>, tokens: Tensor<2, Int>) -> BTreeMap<String, (RawTensor, Bound)> {
    let mut out = BTreeMap::new();
    let [_, _, height, width] = pixels.dims();
    let vit = model.vit.as_ref().expect("a timm backbone");
    let grid = [height / vit.patch_size, width / vit.patch_size];
    out.insert("pos_embed_resized".to_string(), (raw(vit.positional_embedding_for(grid)), Bound::F32));
    let (hidden, hook_grid) = model.hook_states(pixels.clone());
    assert_eq!(hook_grid, grid);
    for (i, state) in hidden.iter().enumerate() {
        out.insert(format!("hook_{}", i + 1), (raw(state.clone()), Bound::F32));
    }
    let maps = model.decoder.forward_intermediates(hidden, grid);
    for i in 0..4 {
        let n = i + 1;
        out.insert(format!("layer_{n}"), (raw(maps.layers[i].clone()), Bound::F32));
        out.insert(format!("layer_{n}_rn"), (raw(maps.layers_rn[i].clone()), Bound::F32));
        out.insert(format!("path_{n}"), (raw(maps.paths[i].clone()), Bound::F32));
    }
    let text = raw(model.text.forward(tokens.clone()));
    out.insert("text_features_f32".to_string(), (text.clone(), Bound::F32));
    out.insert("text_features".to_string(), (text, Bound::Fp16Text));
    let labels = model.label_embeddings(tokens);
    out.insert("logits_lowres".to_string(), (raw(model.logits_lowres(pixels.clone(), labels.clone())), Bound::Fp16Logits));
    out.insert("logits".to_string(), (raw(model.logits(pixels, labels)), Bound::Fp16Logits));
    out
}

#[test]
fn lseg_matches_the_official_code_on_every_fixture() {
    let Some(device) = fixtures::device() else { return };
    for fixture in lseg_fixtures(true) {
        let name = fixture.name();
        let config = config_of(&fixture);
        let checkpoint = fixture.checkpoint("model").unwrap_or_else(|e| panic!("{e}"));
        let model = import_official(&checkpoint, &config, &device).unwrap_or_else(|e| panic!("{name}: {e}"));
        let inputs = fixture.tensors("inputs").unwrap_or_else(|e| panic!("{e}"));
        let expected = fixture.tensors("expected").unwrap_or_else(|e| panic!("{e}"));
        let pixels: Tensor<4> = tensor(get(&inputs, "pixel_values", &fixture), &device);
        let ids = get(&inputs, "input_ids", &fixture);
        let tokens = Tensor::<2, Int>::from_data(
            TensorData::new(ids.values.iter().map(|&v| v as i64).collect::<Vec<_>>(), ids.shape.clone()),
            &device,
        );
        let produced = outputs(&model, pixels, tokens);

        // Every expected tensor is compared: one we do not produce fails the test.
        let missing: Vec<&String> = expected.keys().filter(|k| !produced.contains_key(*k)).collect();
        assert!(missing.is_empty(), "{name}: expected tensors this test does not produce: {missing:?}");
        assert!(expected.contains_key("logits"), "{name}: no expected logits");
        let mut failures = Vec::new();
        let mut worst = [(0.0f32, String::new()), (0.0, String::new()), (0.0, String::new())];
        for (key, want) in &expected {
            let (got, bound) = &produced[key];
            assert_eq!(got.shape, want.shape, "{name}: {key} shape");
            let (error, tolerance, slot) = match bound {
                Bound::F32 => (abs_diff(&got.values, &want.values).0, F32_TOLERANCE, 0),
                Bound::Fp16Text => (max_scaled_error(&got.values, &want.values), FP16_TEXT_TOLERANCE, 1),
                Bound::Fp16Logits => (abs_diff(&got.values, &want.values).0, FP16_LOGIT_TOLERANCE, 2),
            };
            if error > worst[slot].0 || worst[slot].1.is_empty() {
                worst[slot] = (error, key.clone());
            }
            // `abs_diff` skips NaN, so check finiteness apart.
            if !got.values.iter().all(|v| v.is_finite()) || error > tolerance {
                failures.push(format!("{key} differs by {error:e} (tolerance {tolerance:e})"));
            }
        }
        // The official output_conv (bilinear x2, align_corners=True) is f32: our resize of the
        // official low-resolution logits meets the f32 bound.
        let mut upsampling = f32::NAN;
        if let Some(lowres) = expected.get("logits_lowres") {
            let lowres: Tensor<4> = tensor(lowres, &device);
            let [_, _, h, w] = lowres.dims();
            let upsampled = raw(resize_bilinear(lowres, [2 * h, 2 * w]));
            upsampling = abs_diff(&upsampled.values, &expected["logits"].values).0;
            if upsampling > F32_TOLERANCE {
                failures.push(format!("output_conv of the official logits_lowres differs by {upsampling:e}"));
            }
        }
        // With the official fp16 casts emulated (from the official fp16 text features), the
        // remaining difference is fp16 rounding of the product (a few ulps, relative).
        let mut emulation = f32::NAN;
        if let (Some(text16), Some(lowres)) = (expected.get("text_features"), expected.get("logits_lowres")) {
            let pixels = tensor(get(&inputs, "pixel_values", &fixture), &device);
            let emulated = fp16_logits_lowres(&model, pixels, text16, &device);
            emulation = max_scaled_error(&emulated.values, &lowres.values);
            if !emulated.values.iter().all(|v| v.is_finite()) || emulation > FP16_EMULATED_TOLERANCE {
                failures.push(format!("logits_lowres with fp16 emulated differs by {emulation:e} (scaled)"));
            }
        }
        println!(
            "{name}: {} tensors compared; largest f32 error {:.2e} ({}); text_features (fp16) {:.2e}; \
             logits (fp16) {:.2e} ({}), {:.2e} with fp16 emulated (scaled); output_conv {:.2e}",
            expected.len(),
            worst[0].0,
            worst[0].1,
            worst[1].0,
            worst[2].0,
            worst[2].1,
            emulation,
            upsampling
        );
        assert!(failures.is_empty(), "{name}: {}", failures.join("; "));
    }
}

/// The official low-resolution logits with its fp16 casts emulated, from our f32 pixel
/// embeddings and the official fp16 `text_features`.
fn fp16_logits_lowres(model: &Lseg, pixels: Tensor<4>, text16: &RawTensor, device: &Device) -> RawTensor {
    let r = |v: f32| f16_value(f16_bits(v));
    let embeddings = model.decoder_intermediates(pixels).embeddings;
    let [batch, dim, h, w] = embeddings.dims();
    let flat = embeddings.permute([0, 2, 3, 1]).reshape([batch * h * w, dim]);
    let norm = flat.clone().square().sum_dim(1).sqrt();
    let image: Vec<f32> = (flat / norm).into_data().iter::<f32>().collect();
    let scale = model.logit_scale().into_scalar::<f32>();
    let image: Vec<f32> = image.into_iter().map(|v| r(scale * r(v))).collect();
    let labels = text16.shape[0];
    let mut text = Vec::with_capacity(labels * dim);
    for row in text16.values.chunks(dim) {
        let norm = r(row.iter().map(|v| v * v).sum::<f32>().sqrt());
        text.extend(row.iter().map(|v| r(v / norm)));
    }
    let mut logits = vec![0.0f32; batch * h * w * labels];
    for (p, pixel) in image.chunks(dim).enumerate() {
        for (l, label) in text.chunks(dim).enumerate() {
            logits[p * labels + l] = r(pixel.iter().zip(label).map(|(a, b)| a * b).sum());
        }
    }
    let logits = Tensor::<4>::from_data(TensorData::new(logits, [batch, h, w, labels]), device).permute([0, 3, 1, 2]);
    let logits = match &model.regularization {
        Some(block) => block.forward(logits),
        None => logits,
    };
    raw(logits)
}

#[test]
fn export_gives_back_every_checkpoint_tensor() {
    let Some(device) = fixtures::device() else { return };
    for fixture in lseg_fixtures(false) {
        let name = fixture.name();
        let config = config_of(&fixture);
        let checkpoint = fixture.checkpoint("model").unwrap();
        let model = import_official(&checkpoint, &config, &device).unwrap();
        let exported = export_official(&model, &config).unwrap();
        let theirs: Vec<&String> = checkpoint.tensors.keys().collect();
        let ours: Vec<&String> = exported.keys().collect();
        assert_eq!(ours, theirs, "{name}: exported keys");
        for (key, tensor) in &checkpoint.tensors {
            assert!(exported[key] == *tensor, "{name}: {key} differs after the round trip");
        }
        // Written to disk (BatchNorm counters as int64) and read back: the same tensors.
        let dir = tempfile::Builder::new().prefix("clip-seg-lseg-").tempdir().unwrap();
        let path = dir.path().join(format!("{name}.safetensors"));
        save_official(&model, &config, &path).unwrap();
        let back = Checkpoint::read(&path).unwrap();
        assert!(back.tensors == checkpoint.tensors, "{name}: saved file differs");
    }
}

/// The IEEE half-precision bits of `x`, rounded to nearest even (no NaN payloads).
fn f16_bits(x: f32) -> u16 {
    let bits = x.to_bits();
    let sign = ((bits >> 16) & 0x8000) as u16;
    let exponent = ((bits >> 23) & 0xff) as i32;
    let mantissa = bits & 0x7f_ffff;
    if exponent == 0xff {
        return sign | 0x7c00 | if mantissa != 0 { 0x200 } else { 0 };
    }
    let e = exponent - 127 + 15;
    if e >= 0x1f {
        return sign | 0x7c00;
    }
    let (m, shift) = if e <= 0 {
        // Subnormal half: the implicit bit joins the mantissa.
        if e < -10 {
            return sign;
        }
        (mantissa | 0x80_0000, (14 - e) as u32)
    } else {
        (mantissa, 13)
    };
    let half = 1u32 << (shift - 1);
    let rest = m & ((1 << shift) - 1);
    let mut rounded = m >> shift;
    if rest > half || (rest == half && rounded & 1 == 1) {
        rounded += 1;
    }
    let out = if e <= 0 { rounded } else { ((e as u32) << 10) + rounded };
    sign | out as u16
}

fn f16_value(bits: u16) -> f32 {
    let sign = if bits & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exponent = ((bits >> 10) & 0x1f) as i32;
    let mantissa = (bits & 0x3ff) as f32;
    sign * match exponent {
        0 => mantissa * 2f32.powi(-24),
        0x1f => f32::INFINITY,
        e => (1.0 + mantissa / 1024.0) * 2f32.powi(e - 15),
    }
}

/// A safetensors file of `tensors`, those whose key satisfies `half` stored as F16.
fn write_mixed_safetensors(tensors: &BTreeMap<String, RawTensor>, half: impl Fn(&str) -> bool, path: &std::path::Path) {
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (key, t) in tensors {
        let start = data.len();
        let dtype = if half(key) {
            data.extend(t.values.iter().flat_map(|&v| f16_bits(v).to_le_bytes()));
            "F16"
        } else {
            data.extend(t.values.iter().flat_map(|&v| v.to_le_bytes()));
            "F32"
        };
        header.insert(
            key.clone(),
            serde_json::json!({"dtype": dtype, "shape": t.shape, "data_offsets": [start, data.len()]}),
        );
    }
    let mut json = serde_json::to_string(&header).unwrap().into_bytes();
    while !json.len().is_multiple_of(8) {
        json.push(b' ');
    }
    let mut bytes = (json.len() as u64).to_le_bytes().to_vec();
    bytes.extend(json);
    bytes.extend(data);
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn lightning_keys_and_fp16_tensors_load() {
    // The official Lightning checkpoints hold the state dict under `net.`, with CLIP's weights in
    // fp16 (`clip.load` on CUDA); the BatchNorm counters are integers (stored here as f32).
    let Some(device) = fixtures::device() else { return };
    let fixture = &lseg_fixtures(false)[0];
    let config = config_of(fixture);
    let checkpoint = fixture.checkpoint("model").unwrap();
    let prefixed: BTreeMap<String, RawTensor> =
        checkpoint.tensors.iter().map(|(k, t)| (format!("net.{k}"), t.clone())).collect();
    let dir = tempfile::Builder::new().prefix("clip-seg-lseg-fp16-").tempdir().unwrap();
    let path = dir.path().join("lseg-fp16.safetensors");
    let half = |key: &str| key.starts_with("net.clip_pretrained.") && !key.ends_with("logit_scale");
    write_mixed_safetensors(&prefixed, half, &path);
    let model = load_official(&path, &config, &device).unwrap_or_else(|e| panic!("{e}"));
    let exported = export_official(&model, &config).unwrap();
    for (key, original) in &checkpoint.tensors {
        let want: Vec<f32> = if half(&format!("net.{key}")) {
            original.values.iter().map(|&v| f16_value(f16_bits(v))).collect()
        } else {
            original.values.clone()
        };
        assert_eq!(exported[key].values, want, "{key}");
    }
}

#[test]
fn f16_rounding_helper_is_exact_on_known_values() {
    for (x, bits) in [(1.0f32, 0x3c00u16), (-2.0, 0xc000), (65504.0, 0x7bff), (6.1035156e-5, 0x0400), (5.9604645e-8, 0x0001)] {
        assert_eq!(f16_bits(x), bits, "{x}");
        assert_eq!(f16_value(bits), x, "{x}");
    }
    // 0.1 rounds to 0x2e66 = 0.0999755859375.
    assert_eq!(f16_bits(0.1), 0x2e66);
    assert_eq!(f16_value(0x2e66), 0.099_975_586);
    // Ties go to even: 1 + 2^-11 is halfway between 1 and 1 + 2^-10.
    assert_eq!(f16_bits(1.0 + 2f32.powi(-11)), 0x3c00);
    assert_eq!(f16_bits(1.0 + 3.0 * 2f32.powi(-11)), 0x3c02);
}

#[test]
fn missing_misshaped_and_unexpected_keys_are_named() {
    let Some(device) = fixtures::device() else { return };
    let fixture = &lseg_fixtures(false)[0];
    let config = config_of(fixture);
    let layout = official_layout(&config).unwrap();
    let key = "scratch.refinenet2.resConfUnit1.conv1.weight";
    let mut checkpoint = fixture.checkpoint("model").unwrap();
    let original = checkpoint.tensors.remove(key).unwrap();
    match import_official(&checkpoint, &config, &device) {
        Err(ClipError::MissingKey { key: missing, expected, .. }) => {
            assert_eq!(missing, key);
            assert_eq!(expected, original.shape);
        }
        other => panic!("expected a missing-key error, got {other:?}"),
    }
    let mut wrong = original.clone();
    wrong.shape[1] -= 1;
    wrong.values.truncate(wrong.shape.iter().product());
    checkpoint.tensors.insert(key.to_string(), wrong.clone());
    match import_official(&checkpoint, &config, &device) {
        Err(ClipError::ShapeMismatch { key: bad, found, expected, .. }) => {
            assert_eq!((bad.as_str(), found, expected), (key, wrong.shape.clone(), original.shape.clone()));
        }
        other => panic!("expected a shape error, got {other:?}"),
    }
    checkpoint.tensors.insert(key.to_string(), original);
    checkpoint.tensors.insert("net.scratch.extra.weight".into(), RawTensor { shape: vec![1], values: vec![0.0] });
    match import_official(&checkpoint, &config, &device) {
        Err(ClipError::UnexpectedKeys { keys, .. }) => assert_eq!(keys, vec!["scratch.extra.weight".to_string()]),
        other => panic!("expected an unexpected-keys error, got {other:?}"),
    }
    // The layout covers the model: a plain import of the fixture through it works.
    checkpoint.tensors.remove("net.scratch.extra.weight");
    assert!(import_official(&checkpoint, &config, &device).is_ok());
    assert!(layout.entries.iter().all(|e| checkpoint.tensors.contains_key(&e.checkpoint)));
}

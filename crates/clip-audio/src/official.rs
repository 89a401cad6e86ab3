//! The official AudioCLIP checkpoint layout (`AudioCLIP-Full-Training.pt`, `AudioCLIP-Partial-
//! Training.pt`): the state dict of `model.audioclip.AudioCLIP`, a subclass of OpenAI's CLIP, so
//! the CLIP keys sit at the root and the audio head under `audio.`.
//!
//! | official key | ours |
//! | --- | --- |
//! | `visual.*`, `token_embedding.weight`, `positional_embedding`, `transformer.*`, `ln_final.*`, `text_projection`, `logit_scale` | `clip.*` (clip-core's OpenAI table) |
//! | `logit_scale_ai`, `logit_scale_at` (scalars) | `logit_scale_ai`, `logit_scale_at` (`[1]`) |
//! | `audio.fbsp.m`, `audio.fbsp.fb`, `audio.fbsp.fc` | `audio.fbsp.m`, `.fb`, `.fc` |
//! | `audio.fbsp.bias` (an empty `[0]` parameter: `bias=False`) | none; written back empty |
//! | `audio.window` (buffer) | `audio.window` |
//! | `audio.conv1.weight`, `audio.bn1.*` | `audio.body.conv1.weight`, `audio.body.bn1.*` |
//! | `audio.layerS.B.{conv,bn}{1,2,3}.*` | `audio.body.layerS.B.{conv,bn}{1,2,3}.*` |
//! | `audio.layerS.0.downsample.0.weight` / `.1.*` | `audio.body.layerS.0.downsample.conv` / `.bn` |
//! | `audio.attN.conv_depth.*`, `.conv_point.*`, `.bn.*` | `audio.body.attN.*` |
//! | `audio.fc.weight` (`[out, in]`), `audio.fc.bias` | `audio.fc.weight` (`[in, out]`), `audio.fc.bias` |
//! | `input_resolution`, `context_length`, `vocab_size` | ignored |
//!
//! BatchNorm `weight`/`bias` are our `gamma`/`beta`; `num_batches_tracked` is an int64 counter.

use std::collections::BTreeMap;
use std::path::Path;

use burn::tensor::Device;
use clip_core::image_tower::ImageTowerConfig;
use clip_core::weights::layouts::{batch_norm, linear, open_clip};
use clip_core::weights::{Checkpoint, Entry, Layout, RawTensor, Transform, export, import, openai_config};
use clip_core::{ClipError, Result};

use crate::config::{AudioClipConfig, EsResNeXtConfig, FbspConfig};
use crate::model::AudioClip;

/// The empty parameter the official LinearFBSP leaves in the state dict.
pub const EMPTY_FBSP_BIAS: &str = "audio.fbsp.bias";

/// The key table of the official state dict of a model built from `config`.
pub fn official_layout(config: &AudioClipConfig) -> Layout {
    let mut layout = open_clip(&config.clip).prefixed("", "clip.");
    let e = &mut layout.entries;
    for scale in ["logit_scale_ai", "logit_scale_at"] {
        e.push(Entry::new(scale, scale, Transform::Scalar));
    }
    for part in ["m", "fb", "fc"] {
        e.push(Entry::new(format!("audio.fbsp.{part}"), format!("audio.fbsp.{part}"), Transform::Identity));
    }
    e.push(Entry::new("audio.window", "audio.window", Transform::Identity));
    e.push(Entry::new("audio.conv1.weight", "audio.body.conv1.weight", Transform::Identity));
    batch_norm(e, "audio.bn1", "audio.body.bn1");
    let body = &config.audio;
    for (stage, &blocks) in body.layers.iter().enumerate() {
        for block in 0..blocks {
            let theirs = format!("audio.layer{}.{block}", stage + 1);
            let ours = format!("audio.body.layer{}.{block}", stage + 1);
            for i in 1..=3 {
                e.push(Entry::new(format!("{theirs}.conv{i}.weight"), format!("{ours}.conv{i}.weight"), Transform::Identity));
                batch_norm(e, &format!("{theirs}.bn{i}"), &format!("{ours}.bn{i}"));
            }
            if has_downsample(body, stage, block) {
                e.push(Entry::new(
                    format!("{theirs}.downsample.0.weight"),
                    format!("{ours}.downsample.conv.weight"),
                    Transform::Identity,
                ));
                batch_norm(e, &format!("{theirs}.downsample.1"), &format!("{ours}.downsample.bn"));
            }
        }
    }
    if body.attention {
        for n in 1..=5 {
            let (theirs, ours) = (format!("audio.att{n}"), format!("audio.body.att{n}"));
            for conv in ["conv_depth", "conv_point"] {
                for part in ["weight", "bias"] {
                    e.push(Entry::new(format!("{theirs}.{conv}.{part}"), format!("{ours}.{conv}.{part}"), Transform::Identity));
                }
            }
            batch_norm(e, &format!("{theirs}.bn"), &format!("{ours}.bn"));
        }
    }
    linear(e, "audio.fc", "audio.fc");
    layout.ignored.push(EMPTY_FBSP_BIAS.into());
    layout
}

/// Whether block `block` of stage `stage` has a projection shortcut (torchvision: the first
/// block of a stage that strides or widens; with expansion 4 every stage's first block widens).
pub fn has_downsample(body: &EsResNeXtConfig, stage: usize, block: usize) -> bool {
    let inplanes = if stage == 0 { body.stem_width } else { body.planes(stage - 1) * 4 };
    block == 0 && (stage > 0 || inplanes != body.planes(0) * 4)
}

fn dims<'a>(tensors: &'a BTreeMap<String, RawTensor>, key: &str, rank: usize, origin: &str) -> Result<&'a [usize]> {
    let tensor = tensors.get(key).ok_or_else(|| ClipError::config(origin, format!("no '{key}' in the checkpoint")))?;
    if tensor.shape.len() != rank {
        return Err(ClipError::config(origin, format!("'{key}' has shape {:?}, expected {rank} dimensions", tensor.shape)));
    }
    Ok(&tensor.shape)
}

fn count_blocks(tensors: &BTreeMap<String, RawTensor>, stem: &str) -> usize {
    tensors
        .keys()
        .filter_map(|k| k.strip_prefix(stem)?.split('.').next()?.parse::<usize>().ok())
        .max()
        .map_or(0, |last| last + 1)
}

/// The architecture of an official state dict, read off its keys and shapes. What a state dict
/// does not record comes from the arguments: the text heads (`None`: OpenAI's `width / 64`) and
/// the front end's hop, sample rate and normalization (`fbsp`, whose `n_fft` and `win_length`
/// must agree with `audio.fbsp.m` and `audio.window`).
pub fn official_config(checkpoint: &Checkpoint, text_heads: Option<usize>, fbsp: FbspConfig) -> Result<AudioClipConfig> {
    let origin = checkpoint.path.display().to_string();
    config_from_tensors(&checkpoint.tensors, text_heads, fbsp, &origin)
}

/// As [`official_config`] on a key-to-tensor map; `origin` names errors.
pub fn config_from_tensors(
    tensors: &BTreeMap<String, RawTensor>,
    text_heads: Option<usize>,
    fbsp: FbspConfig,
    origin: &str,
) -> Result<AudioClipConfig> {
    let mut clip = openai_config(tensors, "", origin)?;
    if let Some(heads) = text_heads {
        clip.text.heads = heads;
    }
    if let ImageTowerConfig::ResNet(_) = clip.vision {
    } else {
        return Err(ClipError::config(origin, "a ViT CLIP: AudioCLIP's checkpoints hold a ResNet CLIP"));
    }
    let frequencies = dims(tensors, "audio.fbsp.m", 1, origin)?[0];
    let window = dims(tensors, "audio.window", 1, origin)?[0];
    if fbsp.frequencies() != frequencies || fbsp.win_length != window {
        return Err(ClipError::config(
            origin,
            format!(
                "the front end has {frequencies} kernels and a {window}-sample window; the given n_fft {} and \
                 win_length {} need {} and {}",
                fbsp.n_fft,
                fbsp.win_length,
                fbsp.frequencies(),
                fbsp.win_length
            ),
        ));
    }
    let conv1 = dims(tensors, "audio.conv1.weight", 4, origin)?;
    let (stem_width, bands) = (conv1[0], conv1[1]);
    let layers = [1, 2, 3, 4].map(|stage| count_blocks(tensors, &format!("audio.layer{stage}.")));
    let conv2 = dims(tensors, "audio.layer1.0.conv2.weight", 4, origin)?;
    let (inner, per_group) = (conv2[0], conv2[1]);
    if per_group == 0 || inner % per_group != 0 {
        return Err(ClipError::config(origin, format!("audio.layer1.0.conv2.weight has shape {conv2:?}")));
    }
    let groups = inner / per_group;
    let width_per_group = per_group * 64 / stem_width.max(1);
    let attention = tensors.contains_key("audio.att1.conv_depth.weight");
    let mut kernels = crate::config::OFFICIAL_ATTENTION_KERNELS;
    if attention {
        for (n, kernel) in kernels.iter_mut().enumerate() {
            let shape = dims(tensors, &format!("audio.att{}.conv_depth.weight", n + 1), 4, origin)?;
            *kernel = [shape[2], shape[3]];
        }
    }
    let audio = EsResNeXtConfig::new()
        .with_layers(layers)
        .with_stem_width(stem_width)
        .with_groups(groups)
        .with_width_per_group(width_per_group)
        .with_attention(attention)
        .with_attention_kernels(kernels)
        .with_bands(bands);
    let config = AudioClipConfig::new(clip).with_fbsp(fbsp).with_audio(audio);
    config.validate(origin)?;
    if config.audio.inner_width(0) != inner {
        return Err(ClipError::config(origin, "audio.layer1.0.conv2.weight: a body of unequal groups per stage"));
    }
    Ok(config)
}

/// Loads an official state dict into a model built from `config`. A missing, unexpected or
/// mis-shaped key is an error naming the key and the shapes.
pub fn import_official(checkpoint: &Checkpoint, config: &AudioClipConfig, device: &Device) -> Result<AudioClip> {
    let origin = checkpoint.path.display().to_string();
    if let Some(bias) = checkpoint.tensors.get(EMPTY_FBSP_BIAS)
        && !bias.values.is_empty()
    {
        return Err(ClipError::ShapeMismatch {
            path: checkpoint.path.clone(),
            key: EMPTY_FBSP_BIAS.into(),
            expected: vec![0],
            found: bias.shape.clone(),
        });
    }
    import(config.init(device).map_err(|e| ClipError::config(&origin, e.to_string()))?, checkpoint, &official_layout(config))
}

/// Reads the state dict at `path`, infers its architecture ([`official_config`]) and loads it.
pub fn load_official(
    path: &Path,
    text_heads: Option<usize>,
    fbsp: FbspConfig,
    device: &Device,
) -> Result<(AudioClip, AudioClipConfig)> {
    let checkpoint = Checkpoint::read(path)?;
    let config = official_config(&checkpoint, text_heads, fbsp)?;
    let model = import_official(&checkpoint, &config, device)?;
    Ok((model, config))
}

/// The model's parameters under the official keys, with the empty `audio.fbsp.bias`.
pub fn export_official(model: &AudioClip, config: &AudioClipConfig) -> Result<BTreeMap<String, RawTensor>> {
    let mut tensors = export(model, &official_layout(config))?;
    tensors.insert(EMPTY_FBSP_BIAS.into(), RawTensor { shape: vec![0], values: Vec::new() });
    Ok(tensors)
}

/// Writes the model under the official keys as f32 safetensors (BatchNorm counters as int64).
pub fn save_official(model: &AudioClip, config: &AudioClipConfig, path: &Path) -> Result<()> {
    let layout = official_layout(config);
    Checkpoint::write_safetensors_with_integers(&export_official(model, config)?, &layout.integer_keys(), path)
}

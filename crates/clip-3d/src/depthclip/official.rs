//! Official DepthCLIP weights: the CLIP state dict that `clip.load('RN50')` loads inside
//! `MonoCLIP`, in OpenAI's layout. DepthCLIP has no weights of its own (its `FCLayer` adapter
//! is built but never called, and never saved).
//!
//! | official key | ours |
//! | --- | --- |
//! | `visual.conv1..3.weight`, `visual.bn1..3.*` | `visual.conv1..3`, `visual.bn1..3` |
//! | `visual.layerS.B.{conv,bn}{1,2,3}.*` | `visual.layerS.B.{conv,bn}{1,2,3}` |
//! | `visual.layerS.0.downsample.0.weight` / `.1.*` | `visual.layerS.0.downsample.conv` / `.bn` |
//! | `visual.attnpool.*` (in OpenAI's files; never run by DepthCLIP) | ignored |
//! | `token_embedding`, `positional_embedding`, `transformer.resblocks.N.*`, `ln_final`, `text_projection` | `text.*` |
//! | `logit_scale` (unused) | `logit_scale` |
//! | `input_resolution`, `context_length`, `vocab_size` | ignored |

use std::collections::BTreeMap;
use std::path::Path;

use burn::tensor::Device;
use clip_core::weights::layouts::open_clip;
use clip_core::weights::{Checkpoint, Layout, RawTensor, export, import, openai_resnet_depths, openai_text_config};
use clip_core::{ClipError, Result};

use super::config::DenseClipConfig;
use super::model::DenseClip;

const ATTNPOOL: &str = "visual.attnpool.";

/// The attention-pool keys of OpenAI's ResNet state dicts, which DepthCLIP never runs.
pub fn attention_pool_keys() -> Vec<String> {
    let mut keys = vec![format!("{ATTNPOOL}positional_embedding")];
    for proj in ["q_proj", "k_proj", "v_proj", "c_proj"] {
        for part in ["weight", "bias"] {
            keys.push(format!("{ATTNPOOL}{proj}.{part}"));
        }
    }
    keys
}

/// The key table of the official state dict of a model built from `config`: clip-core's
/// open_clip/OpenAI table without the attention pool, whose keys are ignored when present.
pub fn official_layout(config: &DenseClipConfig) -> Layout {
    let mut layout = open_clip(&config.clip_config());
    layout.entries.retain(|entry| !entry.checkpoint.starts_with(ATTNPOOL));
    layout.ignored.extend(attention_pool_keys());
    layout
}

/// The architecture of an OpenAI ResNet CLIP state dict, read off its keys and shapes as
/// `build_model` does (block counts, widths, embedding size, context, vocabulary, MLP width),
/// without needing the attention pool. State dicts do not record the text heads: `text_heads`,
/// or OpenAI's `width / 64`. clip-core's `openai_config` reads the image size off
/// `visual.attnpool.positional_embedding`, which DepthCLIP's checkpoints may lack, hence this.
pub fn official_config(checkpoint: &Checkpoint, text_heads: Option<usize>) -> Result<DenseClipConfig> {
    let origin = checkpoint.path.display().to_string();
    config_from_tensors(&checkpoint.tensors, text_heads, &origin)
}

/// As [`official_config`] on a key-to-tensor map; `origin` names errors.
pub fn config_from_tensors(
    tensors: &BTreeMap<String, RawTensor>,
    text_heads: Option<usize>,
    origin: &str,
) -> Result<DenseClipConfig> {
    if tensors.contains_key("visual.proj") || tensors.contains_key("visual.class_embedding") {
        return Err(ClipError::config(
            origin,
            "a ViT CLIP: DepthCLIP reads the dense layer4 map of a ResNet CLIP (RN50 in the paper)",
        ));
    }
    let (layers, width) = openai_resnet_depths(tensors, "", origin)?;
    let text = openai_text_config(tensors, "", origin, text_heads)?;
    let embed_dim = text.embed_dim;
    let config = DenseClipConfig::new(layers, width, embed_dim, text);
    config.validate(origin)?;
    Ok(config)
}

/// Loads an official state dict (safetensors, or PyTorch's `.pt`/`.bin` as clip-core's
/// [`Checkpoint`] reads them) into a model built from `config`. A missing, unexpected or
/// mis-shaped key is an error naming the key and the shapes.
pub fn import_official(checkpoint: &Checkpoint, config: &DenseClipConfig, device: &Device) -> Result<DenseClip> {
    config.validate(&checkpoint.path.display().to_string())?;
    import(config.init(device), checkpoint, &official_layout(config))
}

/// Reads the state dict at `path`, infers its architecture ([`official_config`]) and loads it.
pub fn load_official(path: &Path, text_heads: Option<usize>, device: &Device) -> Result<(DenseClip, DenseClipConfig)> {
    let checkpoint = Checkpoint::read(path)?;
    let config = official_config(&checkpoint, text_heads)?;
    let model = import_official(&checkpoint, &config, device)?;
    Ok((model, config))
}

/// The model's parameters under the official keys (without an attention pool).
pub fn export_official(model: &DenseClip, config: &DenseClipConfig) -> Result<BTreeMap<String, RawTensor>> {
    export(model, &official_layout(config))
}

/// Writes the model under the official keys as f32 safetensors (BatchNorm counters as int64).
pub fn save_official(model: &DenseClip, config: &DenseClipConfig, path: &Path) -> Result<()> {
    let layout = official_layout(config);
    Checkpoint::write_safetensors_with_integers(&export(model, &layout)?, &layout.integer_keys(), path)
}

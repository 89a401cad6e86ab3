//! Official PointCLIP weights: OpenAI CLIP state dicts (what `clip._download` fetches, which
//! PointCLIP loads unchanged) and the inter-view adapter's checkpoint
//! (`ckpt/adapter/model-best.pth.tar`, whose `state_dict` holds `Adapter.state_dict()`).
//!
//! | official key | ours |
//! | --- | --- |
//! | CLIP (OpenAI layout, top level) | `clip.*` |
//! | `fusion_ratio` | `adapter.fusion_ratio` |
//! | `global_f.0.bn.{weight,bias,running_mean,running_var,num_batches_tracked}` | `adapter.view_norm.{gamma,beta,...}` |
//! | `global_f.3.{weight,bias}` (`[C, V*C]`) | `adapter.global_linear` (transposed) |
//! | `global_f.4.*` (BatchNorm1d) | `adapter.global_norm.*` |
//! | `view_f.0.{weight,bias}` | `adapter.expand_linear` (transposed) |
//! | `view_f.2.{weight,bias}` | `adapter.view_linear` (transposed) |
//!
//! The few-shot model's own `state_dict` (`PointCLIP_Model`) names the adapter's keys under
//! `adapter.`; the adapter checkpoint holds them without the prefix. Dropout (`global_f.1`,
//! `global_f.6`) and ReLU have no weights.

use std::collections::BTreeMap;
use std::path::Path;

use burn::tensor::Device;
use clip_core::image_tower::ImageTowerConfig;
use clip_core::resnet::ModifiedResNetConfig;
use clip_core::text::TextTransformerConfig;
use clip_core::transformer::Activation;
use clip_core::vision::VisionTransformerConfig;
use clip_core::weights::layouts::{batch_norm, linear, open_clip};
use clip_core::weights::{Checkpoint, Entry, Layout, RawTensor, Transform, export, import, openai_config};
use clip_core::{ClipConfig, ClipError, Result};
use serde::{Deserialize, Serialize};

use crate::pointclip::adapter::{Adapter, AdapterConfig};
use crate::pointclip::model::{PointClip, PointClipConfig};
use crate::pointclip::projection::ProjectionConfig;

/// OpenAI's head width: the image towers have `width / 64` heads (ViT) and `width * 32 / 64`
/// (ResNet attention pool).
const HEAD_WIDTH: usize = 64;

/// `vision_layers` of OpenAI's `CLIP(...)`: a ViT's block count or a ResNet's four stage depths.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum VisionLayers {
    /// ViT blocks.
    Vit(usize),
    /// ModifiedResNet blocks per stage.
    ResNet([usize; 4]),
}

/// The arguments of OpenAI's `clip/model.py` `CLIP(...)`, which PointCLIP's `build_model`
/// passes: a CLIP architecture in OpenAI's terms (QuickGELU, MLPs 4x wide, image heads derived
/// from the width).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OpenAiClipArgs {
    /// Joint embedding size.
    pub embed_dim: usize,
    /// Input image side.
    pub image_resolution: usize,
    /// ViT depth or ResNet stage depths.
    pub vision_layers: VisionLayers,
    /// ViT width or ResNet stem width.
    pub vision_width: usize,
    /// ViT patch size; `None` for a ResNet.
    pub vision_patch_size: Option<usize>,
    /// Text context length.
    pub context_length: usize,
    /// Text vocabulary size.
    pub vocab_size: usize,
    /// Text width.
    pub transformer_width: usize,
    /// Text heads (`build_model` derives `width / 64`).
    pub transformer_heads: usize,
    /// Text blocks.
    pub transformer_layers: usize,
}

impl OpenAiClipArgs {
    /// The clip-core configuration of this architecture; an error names an inconsistent
    /// argument.
    pub fn to_config(&self, origin: &str) -> Result<ClipConfig> {
        let vision = match (self.vision_layers, self.vision_patch_size) {
            (VisionLayers::Vit(layers), Some(patch)) => ImageTowerConfig::Vit(
                VisionTransformerConfig::new(
                    self.image_resolution,
                    patch,
                    self.vision_width,
                    layers,
                    (self.vision_width / HEAD_WIDTH).max(1),
                    4 * self.vision_width,
                    self.embed_dim,
                )
                .with_activation(Activation::QuickGelu),
            ),
            (VisionLayers::ResNet(layers), None) => ImageTowerConfig::ResNet(ModifiedResNetConfig::new(
                self.image_resolution,
                layers,
                self.vision_width,
                self.vision_width * 32 / HEAD_WIDTH,
                self.embed_dim,
            )),
            (layers, patch) => {
                return Err(ClipError::config(
                    origin,
                    format!("vision_layers {layers:?} with vision_patch_size {patch:?}: a ViT needs a patch size, a ResNet none"),
                ));
            }
        };
        let text = TextTransformerConfig::new(
            self.context_length,
            self.vocab_size,
            self.transformer_width,
            self.transformer_layers,
            self.transformer_heads,
            4 * self.transformer_width,
            self.embed_dim,
        )
        .with_activation(Activation::QuickGelu);
        let config = ClipConfig::new(self.embed_dim, vision, text);
        config.validate(origin)?;
        Ok(config)
    }
}

/// The CLIP architecture of the OpenAI-layout state dict under `prefix` in `checkpoint`, as
/// `build_model` reads it; `text_heads` replaces the derived `width / 64` text heads where the
/// checkpoint's model was built with others (checkpoints do not record heads).
pub fn clip_config(checkpoint: &Checkpoint, prefix: &str, text_heads: Option<usize>) -> Result<ClipConfig> {
    let origin = checkpoint.path.display().to_string();
    let mut config = openai_config(&checkpoint.tensors, prefix, &origin)?;
    if let Some(heads) = text_heads {
        config.text.heads = heads;
        config.validate(&origin)?;
    }
    Ok(config)
}

/// The adapter's official key table (`Adapter.state_dict()`), without a prefix.
pub fn adapter_layout() -> Layout {
    let mut e = vec![Entry::new("fusion_ratio", "fusion_ratio", Transform::Identity)];
    batch_norm(&mut e, "global_f.0.bn", "view_norm");
    linear(&mut e, "global_f.3", "global_linear");
    batch_norm(&mut e, "global_f.4", "global_norm");
    linear(&mut e, "view_f.0", "expand_linear");
    linear(&mut e, "view_f.2", "view_linear");
    Layout { entries: e, ignored: vec![] }
}

/// The official keys of a PointCLIP model built from `config`: CLIP's OpenAI layout at the top
/// level (as `clip._download`'s checkpoint holds it) and, few-shot, the adapter's keys under
/// `adapter.` (`PointCLIP_Model.state_dict()` less its CLIP, which it names `visual_encoder.` and
/// `textual_encoder.clip_model.`).
pub fn official_layout(config: &PointClipConfig) -> Layout {
    let mut layout = open_clip(&config.clip).prefixed("", "clip.");
    if config.adapter.is_some() {
        let adapter = adapter_layout().prefixed("adapter.", "adapter.");
        layout.entries.extend(adapter.entries);
    }
    layout
}

/// The adapter configuration of an official adapter state dict under `prefix` (`""` for the
/// adapter checkpoint, `"adapter."` inside the model's): views from `fusion_ratio`, features
/// from `global_f.3.weight`; the ratio, fusion init and dropout, which checkpoints do not hold,
/// are `ratio`, the official 0.5 and 0.075.
pub fn adapter_config(tensors: &BTreeMap<String, RawTensor>, prefix: &str, ratio: f64, origin: &Path) -> Result<AdapterConfig> {
    let shape = |key: &str| -> Result<&[usize]> {
        let full = format!("{prefix}{key}");
        tensors
            .get(&full)
            .map(|t| t.shape.as_slice())
            .ok_or_else(|| ClipError::MissingKey { path: origin.to_path_buf(), key: full, expected: vec![] })
    };
    let views = match shape("fusion_ratio")? {
        [views] => *views,
        other => return Err(ClipError::checkpoint(origin, format!("'{prefix}fusion_ratio' has shape {other:?}, not [V]"))),
    };
    let channels = match shape("global_f.3.weight")? {
        [channels, _] => *channels,
        other => return Err(ClipError::checkpoint(origin, format!("'{prefix}global_f.3.weight' has shape {other:?}, not [C, V*C]"))),
    };
    let config = AdapterConfig::new(views, channels).with_ratio(ratio);
    config.validate().map_err(|e| ClipError::checkpoint(origin, e))?;
    Ok(config)
}

/// Loads an official adapter state dict (`ckpt/adapter/model-best.pth.tar`'s `state_dict`, or
/// the same keys as safetensors) into an adapter built from `config`. A missing, unexpected or
/// mis-shaped key is an error naming it.
pub fn import_adapter(checkpoint: &Checkpoint, config: &AdapterConfig, device: &Device) -> Result<Adapter> {
    config.validate().map_err(|e| ClipError::checkpoint(&checkpoint.path, e))?;
    import(config.init(device), checkpoint, &adapter_layout())
}

/// The adapter's state dict with the official keys.
pub fn export_adapter(adapter: &Adapter) -> Result<BTreeMap<String, RawTensor>> {
    export(adapter, &adapter_layout())
}

/// The configuration of the PointCLIP model whose official weights `checkpoint` holds: CLIP
/// read off its OpenAI keys (`text_heads` as in [`clip_config`]), few-shot when it holds
/// `adapter.*` keys (with the adapter ratio `adapter_ratio`), and `projection` (the official
/// [`ProjectionConfig::zero_shot`] or [`ProjectionConfig::few_shot`], which checkpoints do not
/// record).
pub fn official_config(
    checkpoint: &Checkpoint,
    projection: ProjectionConfig,
    text_heads: Option<usize>,
    adapter_ratio: f64,
) -> Result<PointClipConfig> {
    let clip = clip_config(checkpoint, "", text_heads)?;
    let adapter = if checkpoint.tensors.keys().any(|k| k.starts_with("adapter.")) {
        Some(adapter_config(&checkpoint.tensors, "adapter.", adapter_ratio, &checkpoint.path)?)
    } else {
        None
    };
    let config = PointClipConfig::new(clip, projection).with_adapter(adapter);
    config.validate().map_err(|e| ClipError::checkpoint(&checkpoint.path, e))?;
    Ok(config)
}

/// The few-shot model's weights as the official evaluation assembles them: CLIP's OpenAI state
/// dict (`clip._download`) plus the adapter checkpoint (`ckpt/adapter/model-best.pth.tar`,
/// keys without a prefix), whose keys go under `adapter.` (keys already under `adapter.` stay).
/// An error names a key both hold. The result names the CLIP file.
pub fn merge_adapter(clip: &Checkpoint, adapter: &Checkpoint) -> Result<Checkpoint> {
    let mut merged = clip.clone();
    for (key, tensor) in &adapter.tensors {
        let key = if key.starts_with("adapter.") { key.clone() } else { format!("adapter.{key}") };
        if merged.tensors.insert(key.clone(), tensor.clone()).is_some() {
            return Err(ClipError::checkpoint(
                &adapter.path,
                format!("'{key}' is also in the CLIP checkpoint {}", clip.path.display()),
            ));
        }
    }
    Ok(merged)
}

/// Reads CLIP's OpenAI checkpoint and the adapter checkpoint (see [`merge_adapter`]) and loads
/// them into a few-shot model built from `config`.
pub fn load_few_shot(clip: &Path, adapter: &Path, config: &PointClipConfig, device: &Device) -> Result<PointClip> {
    let merged = merge_adapter(&Checkpoint::read(clip)?, &Checkpoint::read(adapter)?)?;
    import_official(&merged, config, device)
}

/// Loads official weights (see [`official_layout`]) into a model built from `config`. A missing,
/// unexpected or mis-shaped key is an error naming it.
pub fn import_official(checkpoint: &Checkpoint, config: &PointClipConfig, device: &Device) -> Result<PointClip> {
    let model = config.init(device).map_err(|e| ClipError::checkpoint(&checkpoint.path, e))?;
    import(model, checkpoint, &official_layout(config))
}

/// As [`import_official`], from a file (`.safetensors` or a PyTorch state dict).
pub fn load_official(path: &Path, config: &PointClipConfig, device: &Device) -> Result<PointClip> {
    import_official(&Checkpoint::read(path)?, config, device)
}

/// The model's weights with the official keys (see [`official_layout`]).
pub fn export_official(model: &PointClip, config: &PointClipConfig) -> Result<BTreeMap<String, RawTensor>> {
    export(model, &official_layout(config))
}

/// Writes the model with the official keys as safetensors (BatchNorm counters as int64).
pub fn save_official(model: &PointClip, config: &PointClipConfig, path: &Path) -> Result<()> {
    let layout = official_layout(config);
    Checkpoint::write_safetensors_with_integers(&export(model, &layout)?, &layout.integer_keys(), path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adapter_keys_round_trip() {
        let device = Device::flex();
        let config = AdapterConfig::new(3, 4);
        let adapter = config.init(&device);
        let tensors = export_adapter(&adapter).unwrap();
        let keys: Vec<&str> = tensors.keys().map(String::as_str).collect();
        assert!(keys.contains(&"global_f.0.bn.running_var") && keys.contains(&"view_f.2.weight"), "{keys:?}");
        assert_eq!(tensors["global_f.3.weight"].shape, [4, 12]);
        assert_eq!(tensors["global_f.4.num_batches_tracked"].shape, Vec::<usize>::new());
        let checkpoint = Checkpoint { path: "adapter.safetensors".into(), tensors: tensors.clone() };
        let read = adapter_config(&checkpoint.tensors, "", 0.6, &checkpoint.path).unwrap();
        assert_eq!(read, config);
        let back = import_adapter(&checkpoint, &read, &device).unwrap();
        assert_eq!(export_adapter(&back).unwrap(), tensors);
    }

    #[test]
    fn openai_arguments_build_both_towers() {
        let json = serde_json::json!({
            "embed_dim": 64, "image_resolution": 224, "vision_layers": [1, 1, 1, 1], "vision_width": 16,
            "vision_patch_size": null, "context_length": 77, "vocab_size": 100, "transformer_width": 32,
            "transformer_heads": 2, "transformer_layers": 2
        });
        let args: OpenAiClipArgs = serde_json::from_value(json.clone()).unwrap();
        let config = args.to_config("test").unwrap();
        let ImageTowerConfig::ResNet(resnet) = &config.vision else { panic!() };
        assert_eq!((resnet.heads, resnet.layers), (8, [1, 1, 1, 1]));
        assert_eq!(config.text.heads, 2);
        let mut vit = json;
        vit["vision_layers"] = 2.into();
        vit["vision_width"] = 128.into();
        vit["vision_patch_size"] = 32.into();
        let config = serde_json::from_value::<OpenAiClipArgs>(vit.clone()).unwrap().to_config("test").unwrap();
        let ImageTowerConfig::Vit(v) = &config.vision else { panic!() };
        assert_eq!((v.heads, v.layers, v.patch_size), (2, 2, 32));
        vit["vision_patch_size"] = serde_json::Value::Null;
        let err = serde_json::from_value::<OpenAiClipArgs>(vit).unwrap().to_config("test").unwrap_err();
        assert!(err.to_string().contains("vision_patch_size"), "{err}");
    }
}

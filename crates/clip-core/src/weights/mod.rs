//! Weight import and export: open_clip/OpenAI (ViT and ResNet towers) and Hugging Face
//! `CLIPModel` checkpoints.
//!
//! ```no_run
//! # fn main() -> clip_core::Result<()> {
//! use clip_core::{ClipConfig, weights};
//! let device = burn::tensor::Device::flex();
//! let config = ClipConfig::named("ViT-B-32")?;
//! let model = weights::load_clip("open_clip_model.safetensors".as_ref(), &config, &device)?;
//! weights::save_hugging_face(&model, &config, "exported/".as_ref())?;
//! # Ok(()) }
//! ```

mod checkpoint;
pub mod layouts;
mod mapping;
mod openai;

use std::path::{Path, PathBuf};

use burn::tensor::Device;

pub use checkpoint::{Checkpoint, RawTensor, write_atomically};
pub use mapping::{Entry, Layout, Transform, export, import};
pub use openai::{openai_config, openai_resnet_depths, openai_text_config};

use crate::config::ClipConfig;
use crate::error::{ClipError, Result};
use crate::model::Clip;

/// The checkpoint layouts this crate reads and writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointFormat {
    /// open_clip / OpenAI state dict (`visual.conv1.weight`, `transformer.resblocks.N...`).
    OpenClip,
    /// Hugging Face `CLIPModel` (`vision_model.*`, `text_model.*`).
    HuggingFace,
}

impl CheckpointFormat {
    /// Recognizes the layout from the checkpoint's keys.
    pub fn detect(checkpoint: &Checkpoint) -> Result<Self> {
        let has = |key: &str| checkpoint.tensors.contains_key(key);
        if has("visual.conv1.weight") {
            Ok(Self::OpenClip)
        } else if has("vision_model.embeddings.patch_embedding.weight") {
            Ok(Self::HuggingFace)
        } else {
            Err(ClipError::checkpoint(
                &checkpoint.path,
                "neither an open_clip ('visual.conv1.weight') nor a Hugging Face CLIPModel \
                 ('vision_model.embeddings.patch_embedding.weight') checkpoint",
            ))
        }
    }

    /// The key table of this layout for `config`; an error where the layout cannot hold the
    /// model (a ResNet tower in Hugging Face's `CLIPModel`).
    pub fn layout(self, config: &ClipConfig) -> Result<Layout> {
        match self {
            Self::OpenClip => Ok(layouts::open_clip(config)),
            Self::HuggingFace => layouts::hugging_face(config),
        }
    }
}

/// Loads a checkpoint of either layout (detected from its keys) into a model built from
/// `config`. Missing, unexpected or mis-shaped keys are errors naming the key.
pub fn load_clip(path: &Path, config: &ClipConfig, device: &Device) -> Result<Clip> {
    let checkpoint = Checkpoint::read(path)?;
    let format = CheckpointFormat::detect(&checkpoint)?;
    let layout = format.layout(config).map_err(|e| ClipError::checkpoint(path, e.to_string()))?;
    mapping::import(config.init(device), &checkpoint, &layout)
}

/// Loads a Hugging Face `CLIPModel` from a directory holding `config.json` and
/// `model.safetensors` (or `pytorch_model.bin`), or from the weights file with `config.json`
/// beside it. Returns the model and the configuration read from `config.json`.
pub fn load_hugging_face(path: &Path, device: &Device) -> Result<(Clip, ClipConfig)> {
    let (config_file, weights) = hugging_face_files(path)?;
    let config = ClipConfig::from_json_file(&config_file)?;
    let model = load_clip(&weights, &config, device)?;
    Ok((model, config))
}

/// The `config.json` and weights file of a Hugging Face model given as its directory (holding
/// `model.safetensors` or `pytorch_model.bin`) or as its weights file (`config.json` beside it).
pub fn hugging_face_files(path: &Path) -> Result<(PathBuf, PathBuf)> {
    if !path.is_dir() {
        return Ok((path.with_file_name("config.json"), path.to_path_buf()));
    }
    let weights = ["model.safetensors", "pytorch_model.bin"]
        .iter()
        .map(|name| path.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| ClipError::checkpoint(path, "no model.safetensors or pytorch_model.bin in this directory"))?;
    Ok((path.join("config.json"), weights))
}

/// Writes the model in open_clip's layout as safetensors (loadable by
/// `open_clip.create_model(..., pretrained=path)`), plus `open_clip_config.json` beside it.
pub fn save_open_clip(model: &Clip, config: &ClipConfig, path: &Path) -> Result<()> {
    let layout = CheckpointFormat::OpenClip.layout(config)?;
    let tensors = mapping::export(model, &layout)?;
    Checkpoint::write_safetensors_with_integers(&tensors, &layout.integer_keys(), path)?;
    let config_path = path.with_file_name("open_clip_config.json");
    let json = serde_json::json!({ "model_cfg": config.to_open_clip_json() });
    write_atomically(&config_path, serde_json::to_string_pretty(&json).unwrap_or_default().as_bytes())
}

/// Writes the model as a Hugging Face `CLIPModel` directory: `model.safetensors` and
/// `config.json` (loadable by `transformers.CLIPModel.from_pretrained(dir)`).
pub fn save_hugging_face(model: &Clip, config: &ClipConfig, dir: &Path) -> Result<()> {
    if config.init_logit_bias.is_some() {
        return Err(ClipError::config(
            dir.display().to_string(),
            "a model with a logit bias (SigLIP) has no Hugging Face CLIPModel layout; export it as open_clip",
        ));
    }
    let json = serde_json::to_string_pretty(&config.to_hf_json()?).unwrap_or_default();
    let tensors = mapping::export(model, &CheckpointFormat::HuggingFace.layout(config)?)?;
    Checkpoint::write_safetensors(&tensors, &dir.join("model.safetensors"))?;
    write_atomically(&dir.join("config.json"), json.as_bytes())
}

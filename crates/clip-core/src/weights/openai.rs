//! The architecture of an OpenAI-layout CLIP read off its state dict, as OpenAI's
//! `clip.model.build_model` does: method checkpoints (CLIP4Clip, ActionCLIP, LSeg) embed such a
//! state dict under a prefix and carry no model config of their own.

use std::collections::BTreeMap;

use super::checkpoint::RawTensor;
use crate::config::ClipConfig;
use crate::error::{ClipError, Result};
use crate::image_tower::ImageTowerConfig;
use crate::resnet::ModifiedResNetConfig;
use crate::text::TextTransformerConfig;
use crate::transformer::Activation;
use crate::vision::VisionTransformerConfig;

/// OpenAI's head width: every tower has `width / 64` heads (rounded down).
const HEAD_WIDTH: usize = 64;

/// Shapes of an OpenAI-layout state dict under a key prefix.
struct StateDict<'a> {
    tensors: &'a BTreeMap<String, RawTensor>,
    prefix: &'a str,
    origin: &'a str,
}

impl StateDict<'_> {
    /// Extent `axis` of tensor `key`; an error naming the key when it is absent, has fewer axes
    /// or is empty along `axis`.
    fn dim(&self, key: &str, axis: usize) -> Result<usize> {
        let full = format!("{}{key}", self.prefix);
        let tensor = self
            .tensors
            .get(&full)
            .ok_or_else(|| ClipError::config(self.origin, format!("no '{full}': not an OpenAI-layout CLIP state dict")))?;
        match tensor.shape.get(axis) {
            Some(&extent) if extent > 0 => Ok(extent),
            _ => Err(ClipError::config(self.origin, format!("'{full}' has shape {:?}: no extent along axis {axis}", tensor.shape))),
        }
    }

    /// Number of numbered blocks under `stem` (`transformer.resblocks.` -> 12).
    fn count_blocks(&self, stem: &str) -> usize {
        let stem = format!("{}{stem}", self.prefix);
        self.tensors
            .keys()
            .filter_map(|k| k.strip_prefix(&stem)?.split('.').next()?.parse::<usize>().ok())
            .max()
            .map_or(0, |last| last + 1)
    }

    /// Whether tensor `key` is present.
    fn has(&self, key: &str) -> bool {
        self.tensors.contains_key(&format!("{}{key}", self.prefix))
    }
}

/// The CLIP architecture of the OpenAI-layout state dict under `prefix` (`""`, `"clip."`,
/// `"model_state_dict."`) in `tensors`: ViT or ModifiedResNet image tower, QuickGELU, heads
/// `width / 64`, as `build_model`. `origin` (the checkpoint file) names errors, which name the
/// missing key.
pub fn openai_config(tensors: &BTreeMap<String, RawTensor>, prefix: &str, origin: &str) -> Result<ClipConfig> {
    let dict = StateDict { tensors, prefix, origin };
    let embed_dim = dict.dim("text_projection", 1)?;
    let vision = if dict.has("visual.proj") {
        let (width, patch) = (dict.dim("visual.conv1.weight", 0)?, dict.dim("visual.conv1.weight", 3)?);
        let positions = dict.dim("visual.positional_embedding", 0)?;
        let grid = ((positions - 1) as f64).sqrt().round() as usize;
        let layers = dict.count_blocks("visual.transformer.resblocks.");
        ImageTowerConfig::Vit(
            VisionTransformerConfig::new(grid * patch, patch, width, layers, (width / HEAD_WIDTH).max(1), 4 * width, embed_dim)
                .with_activation(Activation::QuickGelu),
        )
    } else {
        let positions = dict.dim("visual.attnpool.positional_embedding", 0)?;
        let grid = ((positions - 1) as f64).sqrt().round() as usize;
        let (layers, width) = openai_resnet_depths(tensors, prefix, origin)?;
        ImageTowerConfig::ResNet(ModifiedResNetConfig::new(grid * 32, layers, width, width * 32 / HEAD_WIDTH, embed_dim))
    };
    let config = ClipConfig::new(embed_dim, vision, openai_text_config(tensors, prefix, origin, None)?);
    config.validate(origin)?;
    Ok(config)
}

/// The ModifiedResNet image tower's stage depths and stem width in the OpenAI-layout state dict
/// under `prefix` (`visual.layerN.M.*`, `visual.layer1.0.conv1.weight`).
pub fn openai_resnet_depths(tensors: &BTreeMap<String, RawTensor>, prefix: &str, origin: &str) -> Result<([usize; 4], usize)> {
    let dict = StateDict { tensors, prefix, origin };
    let layers = [1, 2, 3, 4].map(|stage| dict.count_blocks(&format!("visual.layer{stage}.")));
    Ok((layers, dict.dim("visual.layer1.0.conv1.weight", 0)?))
}

/// The text tower of the OpenAI-layout state dict under `prefix`: context, vocabulary, width,
/// blocks and MLP width from the shapes, QuickGELU, and `heads` (not in the weights) or
/// OpenAI's `width / 64`.
pub fn openai_text_config(
    tensors: &BTreeMap<String, RawTensor>,
    prefix: &str,
    origin: &str,
    heads: Option<usize>,
) -> Result<TextTransformerConfig> {
    let dict = StateDict { tensors, prefix, origin };
    let width = dict.dim("ln_final.weight", 0)?;
    Ok(TextTransformerConfig::new(
        dict.dim("positional_embedding", 0)?,
        dict.dim("token_embedding.weight", 0)?,
        width,
        dict.count_blocks("transformer.resblocks."),
        heads.unwrap_or((width / HEAD_WIDTH).max(1)),
        dict.dim("transformer.resblocks.0.mlp.c_fc.weight", 0)?,
        dict.dim("text_projection", 1)?,
    )
    .with_activation(Activation::QuickGelu))
}

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

/// The CLIP architecture of the OpenAI-layout state dict under `prefix` (`""`, `"clip."`,
/// `"model_state_dict."`) in `tensors`: ViT or ModifiedResNet image tower, QuickGELU, heads
/// `width / 64`, as `build_model`. `origin` (the checkpoint file) names errors, which name the
/// missing key.
pub fn openai_config(tensors: &BTreeMap<String, RawTensor>, prefix: &str, origin: &str) -> Result<ClipConfig> {
    // Extent `axis` of tensor `key`; an error naming the key when it is absent, has fewer axes
    // or is empty along `axis`.
    let dim = |key: &str, axis: usize| -> Result<usize> {
        let full = format!("{prefix}{key}");
        let tensor = tensors
            .get(&full)
            .ok_or_else(|| ClipError::config(origin, format!("no '{full}': not an OpenAI-layout CLIP state dict")))?;
        match tensor.shape.get(axis) {
            Some(&extent) if extent > 0 => Ok(extent),
            _ => Err(ClipError::config(origin, format!("'{full}' has shape {:?}: no extent along axis {axis}", tensor.shape))),
        }
    };
    let count_blocks = |stem: &str| {
        let stem = format!("{prefix}{stem}");
        tensors
            .keys()
            .filter_map(|k| k.strip_prefix(&stem)?.split('.').next()?.parse::<usize>().ok())
            .max()
            .map_or(0, |last| last + 1)
    };
    let embed_dim = dim("text_projection", 1)?;
    let vision = if tensors.contains_key(&format!("{prefix}visual.proj")) {
        let (width, patch) = (dim("visual.conv1.weight", 0)?, dim("visual.conv1.weight", 3)?);
        let positions = dim("visual.positional_embedding", 0)?;
        let grid = ((positions - 1) as f64).sqrt().round() as usize;
        let layers = count_blocks("visual.transformer.resblocks.");
        ImageTowerConfig::Vit(
            VisionTransformerConfig::new(grid * patch, patch, width, layers, (width / HEAD_WIDTH).max(1), 4 * width, embed_dim)
                .with_activation(Activation::QuickGelu),
        )
    } else {
        let layers = [1, 2, 3, 4].map(|stage| count_blocks(&format!("visual.layer{stage}.")));
        let width = dim("visual.layer1.0.conv1.weight", 0)?;
        let positions = dim("visual.attnpool.positional_embedding", 0)?;
        let grid = ((positions - 1) as f64).sqrt().round() as usize;
        ImageTowerConfig::ResNet(ModifiedResNetConfig::new(grid * 32, layers, width, width * 32 / HEAD_WIDTH, embed_dim))
    };
    let text_width = dim("ln_final.weight", 0)?;
    let text = TextTransformerConfig::new(
        dim("positional_embedding", 0)?,
        dim("token_embedding.weight", 0)?,
        text_width,
        count_blocks("transformer.resblocks."),
        (text_width / HEAD_WIDTH).max(1),
        4 * text_width,
        embed_dim,
    )
    .with_activation(Activation::QuickGelu);
    let config = ClipConfig::new(embed_dim, vision, text);
    config.validate(origin)?;
    Ok(config)
}

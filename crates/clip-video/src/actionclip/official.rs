//! Official ActionCLIP checkpoints (sallymmx/ActionCLIP `utils/saving.py`): a dict with
//! `model_state_dict` (the CLIP model, OpenAI layout, unwrapped) and `fusion_model_state_dict`
//! (the `visual_prompt` fusion wrapped in `DataParallel`, hence `module.`). Loaded from the
//! `.pt` file, the two dicts read as `model_state_dict.<key>` and
//! `fusion_model_state_dict.module.<key>`.
//!
//! | official key (under `fusion_model_state_dict.module.`) | ours |
//! | --- | --- |
//! | `frame_position_embeddings.weight` (`Transf`) | `fusion.frame_position_embeddings` |
//! | `transformer.resblocks.N.*` (`Transf`) | `fusion.transformer.resblocks.N.*` |
//! | `frame_position_embeddings.weight` (`LSTM`, `Conv_1D`, `Transf_cls`; unused) | `unused_positions` |
//! | `lstm_visual.{weight,bias}_{ih,hh}_l0` | `lstm.{input,forget,cell,output}_gate` |
//! | `shift.weight` | `shift.weight` |
//! | `transformer.cls_token`, `transformer.pos_embed` | `aggregate.cls_token`, `aggregate.pos_embed` |
//! | `transformer.transformer_enc.layers.N.*`, `.norm` | `aggregate.layers.N.*`, `aggregate.norm` |

use std::path::Path;

use burn::tensor::Device;
use clip_core::weights::layouts::{layer_norm, linear, open_clip, open_clip_blocks};
use clip_core::weights::{Checkpoint, Entry, Layout, Transform, export, import, openai_config};
use clip_core::{ClipError, Result};

use crate::actionclip::config::{ActionClipConfig, Fusion};
use crate::actionclip::model::ActionClip;
use crate::clip4clip::official::lstm_entries;

use Transform::Identity;

/// Prefix of the CLIP model's keys.
pub const CLIP_PREFIX: &str = "model_state_dict.";
/// Prefix of the fusion's keys.
pub const FUSION_PREFIX: &str = "fusion_model_state_dict.module.";

/// The key table of an official checkpoint of a model built from `config`.
pub fn official_layout(config: &ActionClipConfig) -> Layout {
    let mut layout = open_clip(&config.clip).prefixed(CLIP_PREFIX, "clip.");
    let e = &mut layout.entries;
    let f = |key: &str| format!("{FUSION_PREFIX}{key}");
    let positions = f("frame_position_embeddings.weight");
    match config.fusion {
        Fusion::MeanP => {}
        Fusion::Transf => {
            e.push(Entry::new(positions, "fusion.frame_position_embeddings", Identity));
            open_clip_blocks(e, &f("transformer"), "fusion.transformer", config.fusion_layers);
        }
        Fusion::Lstm => {
            e.push(Entry::new(positions, "unused_positions", Identity));
            lstm_entries(e, &f("lstm_visual"), "lstm");
        }
        Fusion::Conv1d => {
            e.push(Entry::new(positions, "unused_positions", Identity));
            e.push(Entry::new(f("shift.weight"), "shift.weight", Identity));
        }
        Fusion::TransfCls => {
            e.push(Entry::new(positions, "unused_positions", Identity));
            e.push(Entry::new(f("transformer.cls_token"), "aggregate.cls_token", Identity));
            e.push(Entry::new(f("transformer.pos_embed"), "aggregate.pos_embed", Identity));
            for i in 0..config.fusion_layers {
                let c = f(&format!("transformer.transformer_enc.layers.{i}"));
                let o = format!("aggregate.layers.{i}");
                for (index, name) in ["query", "key", "value"].into_iter().enumerate() {
                    e.push(Entry::new(
                        format!("{c}.self_attn.in_proj_weight"),
                        format!("{o}.self_attn.{name}.weight"),
                        Transform::Chunk { index, count: 3, transpose: true },
                    ));
                    e.push(Entry::new(
                        format!("{c}.self_attn.in_proj_bias"),
                        format!("{o}.self_attn.{name}.bias"),
                        Transform::Chunk { index, count: 3, transpose: false },
                    ));
                }
                linear(e, &format!("{c}.self_attn.out_proj"), &format!("{o}.self_attn.out_proj"));
                linear(e, &format!("{c}.linear1"), &format!("{o}.linear1"));
                linear(e, &format!("{c}.linear2"), &format!("{o}.linear2"));
                layer_norm(e, &format!("{c}.norm1"), &format!("{o}.norm1"));
                layer_norm(e, &format!("{c}.norm2"), &format!("{o}.norm2"));
            }
            layer_norm(e, &f("transformer.transformer_enc.norm"), "aggregate.norm");
        }
    }
    layout
}

/// The configuration of the model an official checkpoint holds, read off its keys and shapes
/// as the official code builds it: CLIP from `model_state_dict.*` (`build_model`), the fusion
/// from which keys are present, `Transf` heads = text width / 64, block counts from the keys,
/// `Transf_cls` frames from its positions and its feed-forward width from its weights (its 8
/// heads, fixed in the official code, are not in the weights). `max_frames` (the clip's
/// segments, 8 in the paper) applies where the checkpoint does not fix it.
pub fn official_config(checkpoint: &Checkpoint, max_frames: usize) -> Result<ActionClipConfig> {
    let origin = checkpoint.path.display().to_string();
    let tensors = &checkpoint.tensors;
    let clip = openai_config(tensors, CLIP_PREFIX, &origin)?;
    let has = |key: &str| tensors.keys().any(|k| k.starts_with(&format!("{FUSION_PREFIX}{key}")));
    // Extent `axis` of fusion tensor `key`: `None` when absent, an error naming it when it has
    // no such axis.
    let extent = |key: &str, axis: usize| -> Result<Option<usize>> {
        let full = format!("{FUSION_PREFIX}{key}");
        match tensors.get(&full) {
            None => Ok(None),
            Some(t) => t.shape.get(axis).copied().map(Some).ok_or_else(|| {
                ClipError::checkpoint(&checkpoint.path, format!("'{full}' has shape {:?}: no axis {axis}", t.shape))
            }),
        }
    };
    let count = |stem: &str| {
        let stem = format!("{FUSION_PREFIX}{stem}");
        tensors
            .keys()
            .filter_map(|k| k.strip_prefix(&stem)?.split('.').next()?.parse::<usize>().ok())
            .max()
            .map_or(0, |last| last + 1)
    };
    let fusion = if has("transformer.transformer_enc.") {
        Fusion::TransfCls
    } else if has("transformer.resblocks.") {
        Fusion::Transf
    } else if has("lstm_visual.") {
        Fusion::Lstm
    } else if has("shift.") {
        Fusion::Conv1d
    } else {
        Fusion::MeanP
    };
    let positions = extent("frame_position_embeddings.weight", 0)?;
    if fusion != Fusion::MeanP && positions.is_none() {
        return Err(ClipError::checkpoint(
            &checkpoint.path,
            format!("a {fusion:?} fusion without '{FUSION_PREFIX}frame_position_embeddings.weight'"),
        ));
    }
    let mut config = ActionClipConfig::new(clip.clone())
        .with_fusion(fusion)
        .with_heads((clip.text.width / 64).max(1))
        .with_max_frames(max_frames)
        .with_position_embeddings(positions);
    match fusion {
        Fusion::Transf => config = config.with_fusion_layers(count("transformer.resblocks.")),
        Fusion::TransfCls => {
            let frames = extent("transformer.pos_embed", 1)?.map_or(max_frames, |rows| rows.saturating_sub(1));
            let mlp = extent("transformer.transformer_enc.layers.0.linear1.weight", 0)?.unwrap_or(2048);
            config = config
                .with_fusion_layers(count("transformer.transformer_enc.layers."))
                .with_max_frames(frames)
                .with_cls_mlp_width(mlp);
        }
        _ => {}
    }
    config.validate().map_err(|e| ClipError::checkpoint(&checkpoint.path, e.to_string()))?;
    Ok(config)
}

/// Loads an official checkpoint (the `.pt` of `utils/saving.py`, or the same keys as
/// safetensors) into a model built from `config` (see [`official_config`]). A missing,
/// unexpected or mis-shaped key is an error naming the key and shapes.
pub fn load_official(path: &Path, config: &ActionClipConfig, device: &Device) -> Result<ActionClip> {
    import_official(&Checkpoint::read(path)?, config, device)
}

/// As [`load_official`], from a checkpoint already read. What the official training saves
/// besides the two models (`epoch`, `optimizer_state_dict.*`) is skipped.
pub fn import_official(checkpoint: &Checkpoint, config: &ActionClipConfig, device: &Device) -> Result<ActionClip> {
    let models = Checkpoint {
        path: checkpoint.path.clone(),
        tensors: checkpoint
            .tensors
            .iter()
            .filter(|(key, _)| key.starts_with(CLIP_PREFIX) || key.starts_with(FUSION_PREFIX))
            .map(|(key, tensor)| (key.clone(), tensor.clone()))
            .collect(),
    };
    import(config.init(device)?, &models, &official_layout(config))
}

/// Writes `model` with the official keys (`model_state_dict.*`, `fusion_model_state_dict.module.*`)
/// as f32 safetensors.
pub fn save_official(model: &ActionClip, config: &ActionClipConfig, path: &Path) -> Result<()> {
    Checkpoint::write_safetensors(&export(model, &official_layout(config))?, path)
}

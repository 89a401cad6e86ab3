//! Official CLIP4Clip checkpoints (`pytorch_model.bin.N` of ArrowLuo/CLIP4Clip): the CLIP model
//! under `clip.` in OpenAI's layout, and each similarity calculator's keys at the top level.
//!
//! | official key | ours |
//! | --- | --- |
//! | `clip.*` (OpenAI layout) | `clip.*` |
//! | `frame_position_embeddings.weight` (`seqLSTM`, unused there) | `lstm.frame_position_embeddings` |
//! | `lstm_visual.{weight,bias}_{ih,hh}_l0` (gates i, f, g, o) | `lstm.lstm.{input,forget,cell,output}_gate` |
//! | `frame_position_embeddings.weight` (`seqTransf`) | `temporal.frame_position_embeddings` |
//! | `transformerClip.resblocks.N.*` | `temporal.transformer.resblocks.N.*` |
//! | `cross.embeddings.position_embeddings.weight` | `cross.position_embeddings` |
//! | `cross.transformer.resblocks.N.*` | `cross.transformer.resblocks.N.*` |
//! | `cross.pooler.ln_pool.*`, `cross.pooler.dense.*` | `cross.ln_pool`, `cross.pool_dense` |
//! | `similarity_dense.*` | `cross.score` |
//!
//! Official checkpoints hold most CLIP weights as float16; they are read as f32.

use std::path::Path;

use burn::tensor::Device;
use clip_core::weights::layouts::{layer_norm, linear, open_clip, open_clip_blocks};
use clip_core::weights::{Checkpoint, Entry, Layout, Transform, export, import, openai_config};
use clip_core::{ClipError, Result};

use crate::clip4clip::config::{Clip4ClipConfig, SimilarityHeader};
use crate::clip4clip::model::Clip4Clip;

use Transform::Identity;

/// The cross encoder's heads in the official `cross-base` config (`num_attention_heads`), which
/// checkpoints do not record.
pub const OFFICIAL_CROSS_HEADS: usize = 8;

/// PyTorch's LSTM parameters `{name}_l0` with the gates stacked i, f, g, o onto burn's
/// [`Lstm`](burn::nn::Lstm) `ours`.
pub fn lstm_entries(e: &mut Vec<Entry>, checkpoint: &str, ours: &str) {
    for (index, gate) in ["input_gate", "forget_gate", "cell_gate", "output_gate"].into_iter().enumerate() {
        for (torch, transform) in [("ih", "input_transform"), ("hh", "hidden_transform")] {
            e.push(Entry::new(
                format!("{checkpoint}.weight_{torch}_l0"),
                format!("{ours}.{gate}.{transform}.weight"),
                Transform::Chunk { index, count: 4, transpose: true },
            ));
            e.push(Entry::new(
                format!("{checkpoint}.bias_{torch}_l0"),
                format!("{ours}.{gate}.{transform}.bias"),
                Transform::Chunk { index, count: 4, transpose: false },
            ));
        }
    }
}

/// The key table of an official checkpoint of a model built from `config`.
pub fn official_layout(config: &Clip4ClipConfig) -> Layout {
    let mut layout = open_clip(&config.clip).prefixed("clip.", "clip.");
    let e = &mut layout.entries;
    match config.similarity {
        SimilarityHeader::MeanP => {}
        SimilarityHeader::SeqLstm => {
            e.push(Entry::new("frame_position_embeddings.weight", "lstm.frame_position_embeddings", Identity));
            lstm_entries(e, "lstm_visual", "lstm.lstm");
        }
        SimilarityHeader::SeqTransf => {
            e.push(Entry::new("frame_position_embeddings.weight", "temporal.frame_position_embeddings", Identity));
            open_clip_blocks(e, "transformerClip", "temporal.transformer", config.temporal_layers);
        }
        SimilarityHeader::TightTransf => {
            e.push(Entry::new("cross.embeddings.position_embeddings.weight", "cross.position_embeddings", Identity));
            open_clip_blocks(e, "cross.transformer", "cross.transformer", config.cross_layers);
            layer_norm(e, "cross.pooler.ln_pool", "cross.ln_pool");
            linear(e, "cross.pooler.dense", "cross.pool_dense");
            linear(e, "similarity_dense", "cross.score");
        }
    }
    layout
}

/// The configuration of the model an official checkpoint holds, read off its keys and shapes as
/// the official code builds it: CLIP from `clip.*` (`build_model`), the similarity calculator
/// from which header keys are present, block counts from the keys, `seqTransf` heads = text
/// width / 64. Checkpoints do not record the cross encoder's heads (`cross_heads`, official
/// [`OFFICIAL_CROSS_HEADS`]) nor the frames per video (`max_frames`, 12 in the paper); an error
/// when `max_frames` exceeds the checkpoint's frame position embeddings.
pub fn official_config(checkpoint: &Checkpoint, max_frames: usize, cross_heads: usize) -> Result<Clip4ClipConfig> {
    let origin = checkpoint.path.display().to_string();
    let tensors = &checkpoint.tensors;
    let clip = openai_config(tensors, "clip.", &origin)?;
    let has = |prefix: &str| tensors.keys().any(|k| k.starts_with(prefix));
    let count = |stem: &str| {
        tensors
            .keys()
            .filter_map(|k| k.strip_prefix(stem)?.split('.').next()?.parse::<usize>().ok())
            .max()
            .map_or(0, |last| last + 1)
    };
    let rows = |key: &str| tensors.get(key).and_then(|t| t.shape.first().copied());
    let (similarity, positions) = if has("cross.") {
        (SimilarityHeader::TightTransf, rows("cross.embeddings.position_embeddings.weight"))
    } else if has("transformerClip.") {
        (SimilarityHeader::SeqTransf, rows("frame_position_embeddings.weight"))
    } else if has("lstm_visual.") {
        (SimilarityHeader::SeqLstm, rows("frame_position_embeddings.weight"))
    } else {
        (SimilarityHeader::MeanP, None)
    };
    if similarity != SimilarityHeader::MeanP && positions.is_none() {
        let key = match similarity {
            SimilarityHeader::TightTransf => "cross.embeddings.position_embeddings.weight",
            _ => "frame_position_embeddings.weight",
        };
        return Err(ClipError::checkpoint(&checkpoint.path, format!("a {similarity:?} checkpoint without '{key}'")));
    }
    let heads = (clip.text.width / 64).max(1);
    let config = Clip4ClipConfig::new(clip)
        .with_similarity(similarity)
        .with_max_frames(max_frames)
        .with_temporal_layers(count("transformerClip.resblocks.").max(1))
        .with_cross_layers(count("cross.transformer.resblocks.").max(1))
        .with_heads(heads)
        .with_cross_heads(Some(cross_heads))
        .with_position_embeddings(positions)
        .with_init_from_text(false);
    config.validate().map_err(|e| ClipError::checkpoint(&checkpoint.path, e.to_string()))?;
    Ok(config)
}

/// Loads an official checkpoint (`pytorch_model.bin.N`, or the same keys as safetensors) into a
/// model built from `config` (see [`official_config`]). A missing, unexpected or mis-shaped key
/// is an error naming the key and shapes.
pub fn load_official(path: &Path, config: &Clip4ClipConfig, device: &Device) -> Result<Clip4Clip> {
    import_official(&Checkpoint::read(path)?, config, device)
}

/// As [`load_official`], from a checkpoint already read.
pub fn import_official(checkpoint: &Checkpoint, config: &Clip4ClipConfig, device: &Device) -> Result<Clip4Clip> {
    let model = config.clone().with_init_from_text(false).init(device)?;
    import(model, checkpoint, &official_layout(config))
}

/// Writes `model` with the official keys as f32 safetensors (what the official loader reads
/// after `torch.load` is swapped for `safetensors.torch.load_file`).
pub fn save_official(model: &Clip4Clip, config: &Clip4ClipConfig, path: &Path) -> Result<()> {
    Checkpoint::write_safetensors(&export(model, &official_layout(config))?, path)
}

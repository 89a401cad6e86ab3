//! The key tables of the supported checkpoint layouts: open_clip/OpenAI (ViT and ModifiedResNet
//! image towers) and Hugging Face `CLIPModel`. Each is read in both directions (import and
//! export). The entry builders are public for the layouts of models built from the same parts
//! (GroupViT's).

use super::mapping::{Entry, Layout, Transform};
use crate::config::ClipConfig;
use crate::error::Result;
use crate::image_tower::ImageTowerConfig;
use crate::resnet::{ModifiedResNetConfig, has_shortcut};
use crate::vision::VisionTransformerConfig;

use Transform::{Count, Identity, PositionalEmbedding, Scalar, Transpose};

/// Entries of a LayerNorm: `weight`/`bias` in PyTorch, `gamma`/`beta` in burn.
pub fn layer_norm(entries: &mut Vec<Entry>, checkpoint: &str, ours: &str) {
    entries.push(Entry::new(format!("{checkpoint}.weight"), format!("{ours}.gamma"), Identity));
    entries.push(Entry::new(format!("{checkpoint}.bias"), format!("{ours}.beta"), Identity));
}

/// Entries of a PyTorch Linear with bias.
pub fn linear(entries: &mut Vec<Entry>, checkpoint: &str, ours: &str) {
    entries.push(Entry::new(format!("{checkpoint}.weight"), format!("{ours}.weight"), Transpose));
    entries.push(Entry::new(format!("{checkpoint}.bias"), format!("{ours}.bias"), Identity));
}

/// Entries of a PyTorch `BatchNorm2d`: `weight`/`bias` become `gamma`/`beta`; the running
/// statistics and the integer batch counter keep their names.
pub fn batch_norm(entries: &mut Vec<Entry>, checkpoint: &str, ours: &str) {
    entries.push(Entry::new(format!("{checkpoint}.weight"), format!("{ours}.gamma"), Identity));
    entries.push(Entry::new(format!("{checkpoint}.bias"), format!("{ours}.beta"), Identity));
    for buffer in ["running_mean", "running_var"] {
        entries.push(Entry::new(format!("{checkpoint}.{buffer}"), format!("{ours}.{buffer}"), Identity));
    }
    entries.push(Entry::new(
        format!("{checkpoint}.num_batches_tracked"),
        format!("{ours}.num_batches_tracked"),
        Count,
    ));
}

/// open_clip/OpenAI layout (`visual.conv1.weight`, fused `in_proj_weight`, `x @ proj`; for a
/// ResNet tower `visual.layer1.0.conv1.weight`, `visual.attnpool.q_proj.weight`, ...).
pub fn open_clip(config: &ClipConfig) -> Layout {
    let mut e = Vec::new();
    match &config.vision {
        ImageTowerConfig::Vit(vision) => open_clip_vit(&mut e, vision),
        ImageTowerConfig::ResNet(vision) => open_clip_resnet(&mut e, vision),
    }

    e.push(Entry::new("token_embedding.weight", "text.token_embedding.weight", Identity));
    e.push(Entry::new("positional_embedding", "text.positional_embedding", Identity));
    open_clip_blocks(&mut e, "transformer", "text.transformer", config.text.layers);
    layer_norm(&mut e, "ln_final", "text.ln_final");
    e.push(Entry::new("text_projection", "text.text_projection", Identity));
    e.push(Entry::new("logit_scale", "logit_scale", Scalar));
    if config.init_logit_bias.is_some() {
        e.push(Entry::new("logit_bias", "logit_bias", Scalar));
    }
    Layout {
        entries: e,
        // OpenAI's released state dicts carry these three scalars besides the weights.
        ignored: vec!["input_resolution".into(), "context_length".into(), "vocab_size".into()],
    }
}

fn open_clip_vit(e: &mut Vec<Entry>, vision: &VisionTransformerConfig) {
    e.push(Entry::new("visual.conv1.weight", "visual.conv1.weight", Identity));
    e.push(Entry::new("visual.class_embedding", "visual.class_embedding", Identity));
    e.push(Entry::new(
        "visual.positional_embedding",
        "visual.positional_embedding",
        PositionalEmbedding,
    ));
    layer_norm(e, "visual.ln_pre", "visual.ln_pre");
    open_clip_blocks(e, "visual.transformer", "visual.transformer", vision.layers);
    layer_norm(e, "visual.ln_post", "visual.ln_post");
    e.push(Entry::new("visual.proj", "visual.proj", Identity));
}

/// open_clip's `ModifiedResNet` state dict; the shortcut's `downsample.0`/`.1` are our
/// `downsample.conv`/`.bn`, the attention pool's `q_proj`..`c_proj` our `attn.query`..`out_proj`.
fn open_clip_resnet(e: &mut Vec<Entry>, vision: &ModifiedResNetConfig) {
    for i in 1..=3 {
        e.push(Entry::new(format!("visual.conv{i}.weight"), format!("visual.conv{i}.weight"), Identity));
        batch_norm(e, &format!("visual.bn{i}"), &format!("visual.bn{i}"));
    }
    for (stage, &blocks) in vision.layers.iter().enumerate() {
        for block in 0..blocks {
            let b = format!("visual.layer{}.{block}", stage + 1);
            for i in 1..=3 {
                e.push(Entry::new(format!("{b}.conv{i}.weight"), format!("{b}.conv{i}.weight"), Identity));
                batch_norm(e, &format!("{b}.bn{i}"), &format!("{b}.bn{i}"));
            }
            if has_shortcut(block) {
                e.push(Entry::new(format!("{b}.downsample.0.weight"), format!("{b}.downsample.conv.weight"), Identity));
                batch_norm(e, &format!("{b}.downsample.1"), &format!("{b}.downsample.bn"));
            }
        }
    }
    let pool = "visual.attnpool";
    e.push(Entry::new(
        format!("{pool}.positional_embedding"),
        format!("{pool}.positional_embedding"),
        PositionalEmbedding,
    ));
    for (theirs, ours) in [("q_proj", "query"), ("k_proj", "key"), ("v_proj", "value"), ("c_proj", "out_proj")] {
        linear(e, &format!("{pool}.{theirs}"), &format!("{pool}.attn.{ours}"));
    }
}

/// Entries of OpenAI's residual attention blocks `{checkpoint}.resblocks.N` (fused
/// `attn.in_proj_*`, `attn.out_proj`, `ln_1`, `ln_2`, `mlp.c_fc`, `mlp.c_proj`) onto the blocks of
/// a clip-core [`Transformer`](crate::transformer::Transformer) `ours`.
pub fn open_clip_blocks(e: &mut Vec<Entry>, checkpoint: &str, ours: &str, layers: usize) {
    for i in 0..layers {
        let c = format!("{checkpoint}.resblocks.{i}");
        let o = format!("{ours}.resblocks.{i}");
        for (index, name) in ["query", "key", "value"].into_iter().enumerate() {
            e.push(Entry::new(
                format!("{c}.attn.in_proj_weight"),
                format!("{o}.attn.{name}.weight"),
                Transform::Chunk { index, count: 3, transpose: true },
            ));
            e.push(Entry::new(
                format!("{c}.attn.in_proj_bias"),
                format!("{o}.attn.{name}.bias"),
                Transform::Chunk { index, count: 3, transpose: false },
            ));
        }
        linear(e, &format!("{c}.attn.out_proj"), &format!("{o}.attn.out_proj"));
        for part in ["ln_1", "ln_2"] {
            layer_norm(e, &format!("{c}.{part}"), &format!("{o}.{part}"));
        }
        for part in ["mlp.c_fc", "mlp.c_proj"] {
            linear(e, &format!("{c}.{part}"), &format!("{o}.{part}"));
        }
    }
}

/// Hugging Face `CLIPModel` layout (`vision_model.encoder.layers.N.self_attn.q_proj`, ...);
/// an error for a ResNet image tower, which `CLIPModel` does not have.
pub fn hugging_face(config: &ClipConfig) -> Result<Layout> {
    let vision = config.vision.hugging_face_vit()?;
    let mut e = Vec::new();
    let v = "vision_model";
    e.push(Entry::new(
        format!("{v}.embeddings.patch_embedding.weight"),
        "visual.conv1.weight",
        Identity,
    ));
    e.push(Entry::new(format!("{v}.embeddings.class_embedding"), "visual.class_embedding", Identity));
    e.push(Entry::new(
        format!("{v}.embeddings.position_embedding.weight"),
        "visual.positional_embedding",
        PositionalEmbedding,
    ));
    layer_norm(&mut e, &format!("{v}.pre_layrnorm"), "visual.ln_pre");
    hugging_face_layers(&mut e, &format!("{v}.encoder.layers"), "visual.transformer", vision.layers);
    layer_norm(&mut e, &format!("{v}.post_layernorm"), "visual.ln_post");
    e.push(Entry::new("visual_projection.weight", "visual.proj", Transpose));

    let t = "text_model";
    hugging_face_text(&mut e, config.text.layers);
    e.push(Entry::new("text_projection.weight", "text.text_projection", Transpose));
    e.push(Entry::new("logit_scale", "logit_scale", Scalar));
    Ok(Layout {
        entries: e,
        // Older transformers versions persisted these index buffers.
        ignored: vec![
            format!("{v}.embeddings.position_ids"),
            format!("{t}.embeddings.position_ids"),
        ],
    })
}

/// Entries of transformers' `text_model` (embeddings, encoder, final norm) onto a text tower
/// `text` with clip-core's field names, without the projection.
pub fn hugging_face_text(e: &mut Vec<Entry>, layers: usize) {
    let t = "text_model";
    e.push(Entry::new(format!("{t}.embeddings.token_embedding.weight"), "text.token_embedding.weight", Identity));
    e.push(Entry::new(format!("{t}.embeddings.position_embedding.weight"), "text.positional_embedding", Identity));
    hugging_face_layers(e, &format!("{t}.encoder.layers"), "text.transformer", layers);
    layer_norm(e, &format!("{t}.final_layer_norm"), "text.ln_final");
}

/// Entries of transformers' encoder layers `{checkpoint}.{i}` (separate q/k/v/out projections,
/// `layer_norm1/2`, `mlp.fc1/2`) onto the residual blocks of clip-core's [`Transformer`](crate::transformer::Transformer) `ours`.
pub fn hugging_face_layers(e: &mut Vec<Entry>, checkpoint: &str, ours: &str, layers: usize) {
    for i in 0..layers {
        let c = format!("{checkpoint}.{i}");
        let o = format!("{ours}.resblocks.{i}");
        for (hf, name) in [("q_proj", "query"), ("k_proj", "key"), ("v_proj", "value"), ("out_proj", "out_proj")] {
            linear(e, &format!("{c}.self_attn.{hf}"), &format!("{o}.attn.{name}"));
        }
        layer_norm(e, &format!("{c}.layer_norm1"), &format!("{o}.ln_1"));
        layer_norm(e, &format!("{c}.layer_norm2"), &format!("{o}.ln_2"));
        linear(e, &format!("{c}.mlp.fc1"), &format!("{o}.mlp.c_fc"));
        linear(e, &format!("{c}.mlp.fc2"), &format!("{o}.mlp.c_proj"));
    }
}

//! Hugging Face `GroupViTModel` checkpoints: the key table and directory load/save.

use std::path::Path;

use burn::module::Module;
use burn::tensor::Device;
use clip_core::weights::layouts::{hugging_face_layers, hugging_face_text, layer_norm, linear};
use clip_core::weights::{Checkpoint, Entry, Layout, Transform, export, hugging_face_files, import, write_atomically};
use clip_core::{ClipError, Result};

use super::config::GroupVitConfig;
use super::model::GroupVit;

use Transform::{Identity, Scalar};

/// A two-layer MLP: `fc1`/`fc2` in transformers, `c_fc`/`c_proj` in clip-core.
fn mlp(e: &mut Vec<Entry>, checkpoint: &str, ours: &str) {
    linear(e, &format!("{checkpoint}.fc1"), &format!("{ours}.c_fc"));
    linear(e, &format!("{checkpoint}.fc2"), &format!("{ours}.c_proj"));
}

/// Multi-head attention with separate q/k/v/out projections.
fn attention(e: &mut Vec<Entry>, checkpoint: &str, ours: &str) {
    for (hf, name) in [
        ("q_proj", "query"),
        ("k_proj", "key"),
        ("v_proj", "value"),
        ("out_proj", "out_proj"),
    ] {
        linear(e, &format!("{checkpoint}.{hf}"), &format!("{ours}.{name}"));
    }
}

/// `nn.Sequential(Linear, BatchNorm1d, ReLU, Linear)` onto a [`ProjectionHead`](super::projection::ProjectionHead).
fn projection(e: &mut Vec<Entry>, ignored: &mut Vec<String>, name: &str) {
    linear(e, &format!("{name}.0"), &format!("{name}.fc1"));
    e.push(Entry::new(
        format!("{name}.1.weight"),
        format!("{name}.batch_norm.gamma"),
        Identity,
    ));
    e.push(Entry::new(
        format!("{name}.1.bias"),
        format!("{name}.batch_norm.beta"),
        Identity,
    ));
    for stat in ["running_mean", "running_var"] {
        e.push(Entry::new(
            format!("{name}.1.{stat}"),
            format!("{name}.batch_norm.{stat}"),
            Identity,
        ));
    }
    // Only used by PyTorch when `momentum=None`; PyTorch fills it with 0 when absent.
    ignored.push(format!("{name}.1.num_batches_tracked"));
    linear(e, &format!("{name}.3"), &format!("{name}.fc2"));
}

/// The key table of transformers' `GroupViTModel` for `config`.
pub fn hugging_face_layout(config: &GroupVitConfig) -> Layout {
    let mut e = Vec::new();
    let mut ignored = vec!["text_model.embeddings.position_ids".to_string()];
    let v = &config.vision;
    let emb = "vision_model.embeddings";
    e.push(Entry::new(
        format!("{emb}.patch_embeddings.projection.weight"),
        "vision.patch_embedding.weight",
        Identity,
    ));
    e.push(Entry::new(
        format!("{emb}.patch_embeddings.projection.bias"),
        "vision.patch_embedding.bias",
        Identity,
    ));
    layer_norm(&mut e, &format!("{emb}.layernorm"), "vision.embedding_norm");
    e.push(Entry::new(
        format!("{emb}.position_embeddings"),
        "vision.position_embeddings",
        Identity,
    ));
    for i in 0..v.depths.len() {
        let (c, o) = (
            format!("vision_model.encoder.stages.{i}"),
            format!("vision.stages.{i}"),
        );
        let groups = v.num_group_tokens[i];
        if groups > 0 {
            e.push(Entry::new(
                format!("{c}.group_token"),
                format!("{o}.group_token"),
                Identity,
            ));
        }
        hugging_face_layers(&mut e, &format!("{c}.layers"), &format!("{o}.layers"), v.depths[i]);
        if groups > 0 {
            let (c, o) = (format!("{c}.downsample"), format!("{o}.downsample"));
            layer_norm(
                &mut e,
                &format!("{c}.norm_tokens"),
                &format!("{o}.norm_tokens"),
            );
            mlp(&mut e, &format!("{c}.mlp_inter"), &format!("{o}.mlp_inter"));
            layer_norm(
                &mut e,
                &format!("{c}.norm_post_tokens"),
                &format!("{o}.norm_post_tokens"),
            );
            layer_norm(&mut e, &format!("{c}.norm_x"), &format!("{o}.norm_x"));
            let (pc, po) = (
                format!("{c}.pre_assign_attn"),
                format!("{o}.pre_assign_attn"),
            );
            attention(&mut e, &format!("{pc}.attn"), &format!("{po}.attn"));
            layer_norm(&mut e, &format!("{pc}.norm2"), &format!("{po}.norm2"));
            mlp(&mut e, &format!("{pc}.mlp"), &format!("{po}.mlp"));
            layer_norm(
                &mut e,
                &format!("{pc}.norm_post"),
                &format!("{po}.norm_post"),
            );
            for part in ["q_proj", "k_proj", "v_proj", "proj"] {
                linear(
                    &mut e,
                    &format!("{c}.assign.{part}"),
                    &format!("{o}.assign.{part}"),
                );
            }
            layer_norm(
                &mut e,
                &format!("{c}.norm_new_x"),
                &format!("{o}.norm_new_x"),
            );
            mlp(
                &mut e,
                &format!("{c}.mlp_channels"),
                &format!("{o}.mlp_channels"),
            );
        }
        if groups > 0 && i > 0 && v.num_output_groups[i - 1] > 0 {
            layer_norm(
                &mut e,
                &format!("{c}.group_projector.0"),
                &format!("{o}.group_projector.norm"),
            );
            mlp(
                &mut e,
                &format!("{c}.group_projector.1"),
                &format!("{o}.group_projector.mlp"),
            );
        }
    }
    layer_norm(&mut e, "vision_model.layernorm", "vision.layernorm");

    hugging_face_text(&mut e, config.text.num_hidden_layers);

    projection(&mut e, &mut ignored, "visual_projection");
    projection(&mut e, &mut ignored, "text_projection");
    e.push(Entry::new("logit_scale", "logit_scale", Scalar));
    Layout {
        entries: e,
        ignored,
    }
}

/// Loads a checkpoint in transformers' `GroupViTModel` layout (safetensors or PyTorch) into a
/// model built from `config`. Missing, unexpected or mis-shaped keys are errors naming the key.
pub fn load_groupvit(path: &Path, config: &GroupVitConfig, device: &Device) -> Result<GroupVit> {
    let checkpoint = Checkpoint::read(path)?;
    import(
        config.init(device)?,
        &checkpoint,
        &hugging_face_layout(config),
    )
}

/// Loads a Hugging Face GroupViT from a directory holding `config.json` and
/// `model.safetensors` (or `pytorch_model.bin`), or from the weights file with `config.json`
/// beside it (as `nvidia/groupvit-gcc-yfcc` on the hub). Returns the model and its configuration.
pub fn load_hugging_face(path: &Path, device: &Device) -> Result<(GroupVit, GroupVitConfig)> {
    let (config_file, weights) = hugging_face_files(path)?;
    let config = GroupVitConfig::from_file(&config_file)?;
    let model = load_groupvit(&weights, &config, device)?;
    Ok((model, config))
}

/// Writes the model as a Hugging Face `GroupViTModel` directory (created if needed):
/// `model.safetensors` and `config.json`, loadable by `GroupViTModel.from_pretrained(dir)`.
pub fn save_hugging_face(model: &GroupVit, config: &GroupVitConfig, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| ClipError::io(dir, e))?;
    // `valid` folds the last BatchNorm running-statistics update into the exported values.
    let tensors = export(&model.valid(), &hugging_face_layout(config))?;
    Checkpoint::write_safetensors(&tensors, &dir.join("model.safetensors"))?;
    let json = serde_json::to_string_pretty(&config.to_hf_json()).unwrap_or_default();
    write_atomically(&dir.join("config.json"), json.as_bytes())
}

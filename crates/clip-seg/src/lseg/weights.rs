//! The official LSeg checkpoint layout (isl-org/lang-seg `LSegNet.state_dict()`; its Lightning
//! checkpoints hold the same keys under `net.`): the key table, load and save.
//!
//! | official key | ours |
//! | --- | --- |
//! | `pretrained.model.{cls_token, pos_embed}` | `vit.{cls_token, pos_embed}` |
//! | `pretrained.model.patch_embed.proj` | `vit.patch_embed` |
//! | `pretrained.model.blocks.N.attn.qkv` (q, k, v stacked) | `vit.blocks.resblocks.N.attn.{query, key, value}` |
//! | `pretrained.model.blocks.N.{attn.proj, norm1, norm2, mlp.fc1, mlp.fc2}` | `vit.blocks.resblocks.N.{attn.out_proj, ln_1, ln_2, mlp.c_fc, mlp.c_proj}` |
//! | `pretrained.model.{norm, head}` (unused) | `vit.{norm, head}` |
//! | `pretrained.act_postprocessN.0.project.0` (readout `project`) | `decoder.stages.{N-1}.readout_projection` |
//! | `pretrained.act_postprocessN.3` (1x1 conv) | `decoder.stages.{N-1}.project` |
//! | `pretrained.act_postprocessN.4` (ConvTranspose2d, or the 3x3 stride-2 conv) | `decoder.stages.{N-1}.{upsample, downsample}` |
//! | `scratch.layerN_rn` | `decoder.stages.{N-1}.to_features` |
//! | `scratch.refinenetN.{resConfUnit1, resConfUnit2, out_conv}` | `decoder.fusion.{4-N}.{skip_unit, refine_unit, out_conv}` |
//! | `scratch.head1` | `decoder.head` |
//! | `scratch.head_block.depthwise.depthwise` (`arch_option` 1, 2) | `regularization.depthwise` |
//! | `clip_pretrained.*` (OpenAI layout) | `visual.*` (unused), `text.*`, `clip_logit_scale` |
//!
//! The logit scale of LSeg itself is not in the state dict (a constant 1/0.07); ours keeps its
//! initial value.

use std::collections::BTreeMap;
use std::path::Path;

use burn::module::{Module, Param};
use burn::tensor::{Device, Tensor};
use clip_core::text::TextTransformer;
use clip_core::vision::VisionTransformer;
use clip_core::weights::layouts::{batch_norm, layer_norm, linear, open_clip};
use clip_core::weights::{Checkpoint, Entry, Layout, RawTensor, Transform, export, import};
use clip_core::{ClipError, Result};

use crate::lseg::backbone::TimmVit;
use crate::lseg::config::{LsegBackbone, LsegConfig, Readout};
use crate::lseg::decoder::{DptDecoder, Resample};
use crate::lseg::model::{Lseg, SpatialRegularization};

use Transform::{Chunk, Identity};

/// The prefix of the state dict in lang-seg's Lightning checkpoints (`LSegModule.net`).
pub const LIGHTNING_PREFIX: &str = "net.";

/// A convolution: `weight`, and `bias` when it has one.
fn conv(e: &mut Vec<Entry>, checkpoint: &str, ours: &str, bias: bool) {
    e.push(Entry::new(format!("{checkpoint}.weight"), format!("{ours}.weight"), Identity));
    if bias {
        e.push(Entry::new(format!("{checkpoint}.bias"), format!("{ours}.bias"), Identity));
    }
}

/// timm's ViT (`pretrained.model`) onto [`TimmVit`] `vit`.
fn timm_vit(e: &mut Vec<Entry>, layers: usize, head: bool) {
    let m = "pretrained.model";
    e.push(Entry::new(format!("{m}.cls_token"), "vit.cls_token", Identity));
    e.push(Entry::new(format!("{m}.pos_embed"), "vit.pos_embed", Identity));
    conv(e, &format!("{m}.patch_embed.proj"), "vit.patch_embed", true);
    for i in 0..layers {
        let (c, o) = (format!("{m}.blocks.{i}"), format!("vit.blocks.resblocks.{i}"));
        for (index, name) in ["query", "key", "value"].into_iter().enumerate() {
            e.push(Entry::new(
                format!("{c}.attn.qkv.weight"),
                format!("{o}.attn.{name}.weight"),
                Chunk { index, count: 3, transpose: true },
            ));
            e.push(Entry::new(
                format!("{c}.attn.qkv.bias"),
                format!("{o}.attn.{name}.bias"),
                Chunk { index, count: 3, transpose: false },
            ));
        }
        linear(e, &format!("{c}.attn.proj"), &format!("{o}.attn.out_proj"));
        layer_norm(e, &format!("{c}.norm1"), &format!("{o}.ln_1"));
        layer_norm(e, &format!("{c}.norm2"), &format!("{o}.ln_2"));
        linear(e, &format!("{c}.mlp.fc1"), &format!("{o}.mlp.c_fc"));
        linear(e, &format!("{c}.mlp.fc2"), &format!("{o}.mlp.c_proj"));
    }
    layer_norm(e, &format!("{m}.norm"), "vit.norm");
    if head {
        linear(e, &format!("{m}.head"), "vit.head");
    }
}

/// A residual convolution unit (`ResidualConvUnit_custom`).
fn residual_unit(e: &mut Vec<Entry>, checkpoint: &str, ours: &str, bn: bool) {
    for i in [1, 2] {
        conv(e, &format!("{checkpoint}.conv{i}"), &format!("{ours}.conv{i}"), !bn);
        if bn {
            batch_norm(e, &format!("{checkpoint}.bn{i}"), &format!("{ours}.norm{i}"));
        }
    }
}

/// The key table of the official `LSegNet` state dict for `config`, whose backbone must be
/// [`LsegBackbone::Timm`].
pub fn official_layout(config: &LsegConfig) -> Result<Layout> {
    let LsegBackbone::Timm(vit) = &config.backbone else {
        return Err(ClipError::config(
            "LsegConfig",
            "the official LSeg layout needs backbone = timm (the official image encoder is a timm ViT)",
        ));
    };
    let mut e = Vec::new();
    timm_vit(&mut e, vit.layers, vit.num_classes > 0);
    let resampling = config.stage_resampling();
    for (i, resample) in resampling.iter().enumerate() {
        let (c, o) = (format!("pretrained.act_postprocess{}", i + 1), format!("decoder.stages.{i}"));
        if config.readout == Readout::Project {
            linear(&mut e, &format!("{c}.0.project.0"), &format!("{o}.readout_projection"));
        }
        conv(&mut e, &format!("{c}.3"), &format!("{o}.project"), true);
        match resample {
            Resample::Up(_) => conv(&mut e, &format!("{c}.4"), &format!("{o}.upsample"), true),
            Resample::Down => conv(&mut e, &format!("{c}.4"), &format!("{o}.downsample"), true),
            Resample::Keep => {}
        }
        conv(&mut e, &format!("scratch.layer{}_rn", i + 1), &format!("{o}.to_features"), false);
    }
    for n in 1..=4 {
        let (c, o) = (format!("scratch.refinenet{n}"), format!("decoder.fusion.{}", 4 - n));
        residual_unit(&mut e, &format!("{c}.resConfUnit1"), &format!("{o}.skip_unit"), config.batch_norm);
        residual_unit(&mut e, &format!("{c}.resConfUnit2"), &format!("{o}.refine_unit"), config.batch_norm);
        conv(&mut e, &format!("{c}.out_conv"), &format!("{o}.out_conv"), true);
    }
    conv(&mut e, "scratch.head1", "decoder.head", true);
    if config.spatial_regularization {
        conv(&mut e, "scratch.head_block.depthwise.depthwise", "regularization.depthwise", true);
    }
    let clip = open_clip(&config.clip);
    for entry in clip.entries {
        let ours = if entry.ours == "logit_scale" { "clip_logit_scale".to_string() } else { entry.ours };
        e.push(Entry::new(format!("clip_pretrained.{}", entry.checkpoint), ours, entry.transform));
    }
    Ok(Layout {
        entries: e,
        ignored: clip.ignored.iter().map(|key| format!("clip_pretrained.{key}")).collect(),
    })
}

/// The parts of an [`Lseg`] the official state dict holds (all but `logit_scale`), under the
/// same parameter paths.
#[derive(Module, Debug)]
struct OfficialParts {
    visual: VisionTransformer,
    vit: Option<TimmVit>,
    text: TextTransformer,
    decoder: DptDecoder,
    regularization: Option<SpatialRegularization>,
    clip_logit_scale: Option<Param<Tensor<1>>>,
}

/// `checkpoint` with the Lightning prefix `net.` removed from the keys that carry it.
pub fn strip_lightning_prefix(checkpoint: &Checkpoint) -> Checkpoint {
    let tensors = checkpoint
        .tensors
        .iter()
        .map(|(key, tensor)| (key.strip_prefix(LIGHTNING_PREFIX).unwrap_or(key).to_string(), tensor.clone()))
        .collect();
    Checkpoint { path: checkpoint.path.clone(), tensors }
}

/// Loads an official state dict (keys with or without `net.`; any float dtype, fp16 included)
/// into a model built from `config` (timm backbone). Missing, unexpected or mis-shaped keys
/// are errors naming the key and both shapes. The logit scale keeps `config`'s initial value.
pub fn import_official(checkpoint: &Checkpoint, config: &LsegConfig, device: &Device) -> Result<Lseg> {
    let layout = official_layout(config)?;
    let model = config.init(device)?;
    let Lseg { visual, vit, text, decoder, regularization, logit_scale, clip_logit_scale, hooks } = model;
    let parts = OfficialParts { visual, vit, text, decoder, regularization, clip_logit_scale };
    let parts = import(parts, &strip_lightning_prefix(checkpoint), &layout)?;
    Ok(Lseg {
        visual: parts.visual,
        vit: parts.vit,
        text: parts.text,
        decoder: parts.decoder,
        regularization: parts.regularization,
        logit_scale,
        clip_logit_scale: parts.clip_logit_scale,
        hooks,
    })
}

/// Reads an official checkpoint: a safetensors file, a PyTorch state dict, or a Lightning
/// `.ckpt` (its `state_dict`, keys under `net.`), and loads it as [`import_official`] does.
pub fn load_official(path: &Path, config: &LsegConfig, device: &Device) -> Result<Lseg> {
    import_official(&Checkpoint::read(path)?, config, device)
}

/// The model's tensors in the official layout (without `net.`), as f32; the BatchNorm step
/// counters are integers in value.
pub fn export_official(model: &Lseg, config: &LsegConfig) -> Result<BTreeMap<String, RawTensor>> {
    let layout = official_layout(config)?;
    let parts = OfficialParts {
        visual: model.visual.clone(),
        vit: model.vit.clone(),
        text: model.text.clone(),
        decoder: model.decoder.clone(),
        regularization: model.regularization.clone(),
        clip_logit_scale: model.clip_logit_scale.clone(),
    };
    export(&parts, &layout)
}

/// Writes the model as an official `LSegNet` state dict in safetensors (f32, the BatchNorm
/// counters int64), loadable with `LSegNet.load_state_dict(safetensors.torch.load_file(path))`.
pub fn save_official(model: &Lseg, config: &LsegConfig, path: &Path) -> Result<()> {
    let layout = official_layout(config)?;
    let tensors = export_official(model, config)?;
    Checkpoint::write_safetensors_with_integers(&tensors, &layout.integer_keys(), path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lseg::backbone::TimmVitConfig;
    use crate::lseg::config::tests::tiny_config;
    use crate::lseg::model::{RegularizationActivation, RegularizationKind};

    /// A tiny official-layout config: a timm ViT of width 16 with 4 blocks and patch `patch`.
    fn official(patch: usize, readout: Readout) -> LsegConfig {
        tiny_config()
            .with_backbone(LsegBackbone::Timm(TimmVitConfig::new(4 * patch, patch, 16, 4, 2, 32).with_num_classes(3)))
            .with_readout(readout)
    }

    fn configs() -> Vec<LsegConfig> {
        vec![
            official(32, Readout::Project),
            official(16, Readout::Add).with_batch_norm(false).with_spatial_regularization(true),
            official(8, Readout::Ignore)
                .with_spatial_regularization(true)
                .with_regularization_kind(RegularizationKind::Depthwise)
                .with_regularization_activation(RegularizationActivation::Tanh)
                .with_regularization_depth(3),
            official(16, Readout::Project).with_backbone(LsegBackbone::Timm(TimmVitConfig::new(48, 16, 16, 4, 2, 32))),
        ]
    }

    #[test]
    fn every_option_round_trips_through_the_official_layout() {
        let device = Device::flex();
        for config in configs() {
            let model = config.init(&device).unwrap();
            let exported = export_official(&model, &config).unwrap();
            let layout = official_layout(&config).unwrap();
            // One checkpoint key per table row, but fused q/k/v rows share theirs.
            let keys: std::collections::BTreeSet<&str> = layout.entries.iter().map(|e| e.checkpoint.as_str()).collect();
            assert_eq!(exported.len(), keys.len());
            let lightning = Checkpoint {
                path: "memory".into(),
                tensors: exported.iter().map(|(k, t)| (format!("net.{k}"), t.clone())).collect(),
            };
            let back = import_official(&lightning, &config, &device).unwrap();
            assert_eq!(export_official(&back, &config).unwrap(), exported, "{config:?}");
        }
    }

    #[test]
    fn stage_keys_follow_the_patch_size() {
        let exported = |config: &LsegConfig| export_official(&config.init(&Device::flex()).unwrap(), config).unwrap();
        // Patch 32 (`_make_vit_b32_backbone`): transposed convolutions 8, 4, 2, nothing after the
        // fourth stage's 1x1 convolution.
        let b32 = exported(&official(32, Readout::Project));
        for (stage, factor) in [(1, 8), (2, 4), (3, 2)] {
            let weight = &b32[&format!("pretrained.act_postprocess{stage}.4.weight")];
            assert_eq!(weight.shape[2..], [factor, factor]);
        }
        assert!(!b32.contains_key("pretrained.act_postprocess4.4.weight"));
        assert!(b32.contains_key("pretrained.act_postprocess1.0.project.0.weight"));
        assert!(b32.contains_key("pretrained.model.head.weight"));
        // Patch 16 (`_make_vit_b16_backbone`): 4, 2, nothing, then a 3x3 stride-2 convolution.
        let b16 = exported(&official(16, Readout::Add).with_batch_norm(false));
        assert_eq!(b16["pretrained.act_postprocess1.4.weight"].shape[2..], [4, 4]);
        assert!(!b16.contains_key("pretrained.act_postprocess3.4.weight"));
        assert_eq!(b16["pretrained.act_postprocess4.4.weight"].shape[2..], [3, 3]);
        assert!(!b16.contains_key("pretrained.act_postprocess1.0.project.0.weight"));
        // Without batch norm the unit convolutions have biases.
        assert!(b16.contains_key("scratch.refinenet1.resConfUnit1.conv1.bias"));
        assert!(!b16.contains_key("scratch.refinenet1.resConfUnit1.bn1.weight"));
    }

    #[test]
    fn the_clip_backbone_has_no_official_layout() {
        let err = official_layout(&tiny_config()).unwrap_err().to_string();
        assert!(err.contains("backbone = timm"), "{err}");
    }

    #[test]
    fn a_timm_model_segments_any_multiple_of_the_patch() {
        let device = Device::flex();
        for config in configs() {
            let model = config.init(&device).unwrap();
            let patch = match &config.backbone {
                LsegBackbone::Timm(vit) => vit.patch_size,
                LsegBackbone::Clip => unreachable!(),
            };
            let images = Tensor::<4>::ones([1, 3, 2 * patch, 3 * patch], &device);
            let labels = Tensor::<2>::random([3, 16], burn::tensor::Distribution::Normal(0.0, 1.0), &device);
            let lowres = model.logits_lowres(images.clone(), labels.clone());
            // The finest stage is up 8x (patch 32) or 4x, and fusion doubles it once more.
            let factor = match config.stage_resampling()[0] {
                Resample::Up(factor) => 2 * factor,
                other => panic!("{other:?}"),
            };
            assert_eq!(lowres.dims(), [1, 3, 2 * factor, 3 * factor]);
            assert_eq!(model.logits(images, labels).dims(), [1, 3, 2 * patch, 3 * patch]);
        }
    }
}

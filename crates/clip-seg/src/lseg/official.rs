//! The official `LSegNet`'s arguments (isl-org/lang-seg), turned into an [`LsegConfig`] with the
//! timm backbone: the keyword arguments of `LSegNet`, the timm `VisionTransformer` behind its
//! `backbone` (`vit`) and the OpenAI CLIP behind `clip_pretrained` (`clip`), under the names
//! those libraries use. Official checkpoints carry no architecture, so these are given (the
//! method fixtures' `model_config` has this layout).
//!
//! ```json
//! {"backbone": "clip_vitl16_384", "features": 256, "readout": "project", "use_bn": true,
//!  "arch_option": 0, "block_depth": 0, "activation": "lrelu",
//!  "vit": {"img_size": 384, "patch_size": 16, "embed_dim": 1024, "depth": 24, "num_heads": 16,
//!          "mlp_ratio": 4.0, "num_classes": 1000},
//!  "clip": {"embed_dim": 512, "image_resolution": 224, "vision_layers": 12, "vision_width": 768,
//!           "vision_patch_size": 32, "context_length": 77, "vocab_size": 49408,
//!           "transformer_width": 512, "transformer_heads": 8, "transformer_layers": 12}}
//! ```

use clip_core::transformer::Activation;
use clip_core::vision::VisionTransformerConfig;
use clip_core::text::TextTransformerConfig;
use clip_core::{ClipConfig, ClipError, ImageTowerConfig};
use serde::{Deserialize, Serialize};

use crate::lseg::backbone::TimmVitConfig;
use crate::lseg::config::{LSEG_LOG_LOGIT_SCALE, LsegBackbone, LsegConfig, Readout};
use crate::lseg::model::{RegularizationActivation, RegularizationKind};

fn default_features() -> usize {
    256
}
fn default_readout() -> Readout {
    Readout::Project
}
fn default_true() -> bool {
    true
}
fn default_activation() -> String {
    "lrelu".into()
}
fn default_mlp_ratio() -> f64 {
    4.0
}
fn default_num_classes() -> usize {
    1000
}
fn default_layer_norm_eps() -> f64 {
    1e-6
}

/// `LSegNet`'s keyword arguments plus the two models under it. Defaults are lang-seg's
/// (`features` 256, `readout` project, `use_bn` true as `LSegNet` forces, `arch_option` 0,
/// `block_depth` 0, `activation` lrelu); unknown keys are ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OfficialLsegConfig {
    /// The official backbone name (`clip_vitl16_384`, `clip_vitb32_384`), for reference only:
    /// the architecture is `vit` and `clip`.
    #[serde(default)]
    pub backbone: Option<String>,
    /// The hooked blocks; `None`: lang-seg's, `[5, 11, 17, 23]` for 24 blocks, `[2, 5, 8, 11]`
    /// for 12.
    #[serde(default)]
    pub hooks: Option<Vec<usize>>,
    /// Channels of the four reassembled stages (the `features` list of `_make_vit_*_backbone`);
    /// `None`: `[256, 512, 1024, 1024]` for ViT-L, `[96, 192, 384, 768]` for ViT-B.
    #[serde(default)]
    pub reassemble_features: Option<Vec<usize>>,
    /// The ViT width as the reassemble stages see it (`vit_features`); checked against `vit`.
    #[serde(default)]
    pub vit_features: Option<usize>,
    /// Fused channels.
    #[serde(default = "default_features")]
    pub features: usize,
    /// Class-token handling.
    #[serde(default = "default_readout")]
    pub readout: Readout,
    /// Batch norm in the residual convolution units.
    #[serde(default = "default_true")]
    pub use_bn: bool,
    /// 0: no head block; 1: bottleneck; 2: depthwise.
    #[serde(default)]
    pub arch_option: usize,
    /// The head block runs `max(block_depth, 1)` times (when `arch_option` is 1 or 2).
    #[serde(default)]
    pub block_depth: usize,
    /// `lrelu` or `tanh`, between head blocks.
    #[serde(default = "default_activation")]
    pub activation: String,
    /// The pixel embedding size (`head1`'s output); must be CLIP's `embed_dim`.
    #[serde(default)]
    pub out_c: Option<usize>,
    /// The fixed logit scale (`exp(ln(1/0.07))` = 14.2857 in the official code).
    #[serde(default)]
    pub logit_scale: Option<f64>,
    /// The timm ViT (`pretrained.model`).
    pub vit: OfficialVitArgs,
    /// The OpenAI CLIP (`clip_pretrained`).
    pub clip: OfficialClipArgs,
}

/// timm `VisionTransformer` arguments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OfficialVitArgs {
    /// Image side of the positional embedding.
    pub img_size: usize,
    /// Patch side.
    pub patch_size: usize,
    /// Width.
    pub embed_dim: usize,
    /// Blocks.
    pub depth: usize,
    /// Heads.
    pub num_heads: usize,
    /// MLP hidden size over width.
    #[serde(default = "default_mlp_ratio")]
    pub mlp_ratio: f64,
    /// Must be true (every ViT lang-seg builds has q/k/v biases).
    #[serde(default = "default_true")]
    pub qkv_bias: bool,
    /// Classes of the (unused) head; 0 for none.
    #[serde(default = "default_num_classes")]
    pub num_classes: usize,
    /// Layer-norm epsilon.
    #[serde(default = "default_layer_norm_eps")]
    pub layer_norm_eps: f64,
    /// Must be true (DPT reads the class token).
    #[serde(default = "default_true")]
    pub class_token: bool,
}

/// `clip.model.CLIP` arguments (OpenAI); the image tower must be a ViT (`vision_layers` a
/// number).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OfficialClipArgs {
    /// Joint embedding size.
    pub embed_dim: usize,
    /// Image side.
    pub image_resolution: usize,
    /// ViT blocks (a list means a ResNet tower, which is not supported).
    pub vision_layers: serde_json::Value,
    /// ViT width (heads: width / 64, as OpenAI's CLIP).
    pub vision_width: usize,
    /// ViT patch side.
    pub vision_patch_size: usize,
    /// Text context length.
    pub context_length: usize,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Text width.
    pub transformer_width: usize,
    /// Text heads.
    pub transformer_heads: usize,
    /// Text blocks.
    pub transformer_layers: usize,
}

impl OfficialClipArgs {
    /// The CLIP architecture (OpenAI's: QuickGELU, MLP 4x, image heads `width / 64`).
    pub fn to_clip_config(&self, origin: &str) -> clip_core::Result<ClipConfig> {
        let Some(vision_layers) = self.vision_layers.as_u64() else {
            return Err(ClipError::config(
                origin,
                format!(
                    "clip.vision_layers = {}: only ViT CLIPs are supported (a list means a ResNet \
                     image tower, as lang-seg's clipRN50x16_vitl16_384)",
                    self.vision_layers
                ),
            ));
        };
        let vision = VisionTransformerConfig::new(
            self.image_resolution,
            self.vision_patch_size,
            self.vision_width,
            vision_layers as usize,
            (self.vision_width / 64).max(1),
            4 * self.vision_width,
            self.embed_dim,
        )
        .with_activation(Activation::QuickGelu);
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
        let config = ClipConfig::new(self.embed_dim, ImageTowerConfig::Vit(vision), text);
        config.validate(origin)?;
        Ok(config)
    }
}

impl OfficialLsegConfig {
    /// Parses the JSON object; `origin` names errors.
    pub fn from_value(value: serde_json::Value, origin: &str) -> clip_core::Result<Self> {
        serde_json::from_value(value).map_err(|e| ClipError::config(origin, e.to_string()))
    }

    /// The [`LsegConfig`] of this model (timm backbone); `origin` names errors.
    pub fn to_lseg_config(&self, origin: &str) -> clip_core::Result<LsegConfig> {
        let v = &self.vit;
        if !v.qkv_bias || !v.class_token {
            return Err(ClipError::config(
                origin,
                "vit: only ViTs with q/k/v biases and a class token are supported (as lang-seg builds)",
            ));
        }
        if let Some(width) = self.vit_features.filter(|&w| w != v.embed_dim) {
            return Err(ClipError::config(
                origin,
                format!("vit_features = {width} but vit.embed_dim = {}", v.embed_dim),
            ));
        }
        let clip = self.clip.to_clip_config(origin)?;
        if let Some(out) = self.out_c.filter(|&out| out != clip.embed_dim) {
            return Err(ClipError::config(
                origin,
                format!("out_c = {out} must be CLIP's embed_dim ({})", clip.embed_dim),
            ));
        }
        let (regularization, kind) = match self.arch_option {
            0 => (false, RegularizationKind::Bottleneck),
            1 => (true, RegularizationKind::Bottleneck),
            2 => (true, RegularizationKind::Depthwise),
            other => {
                return Err(ClipError::config(origin, format!("arch_option = {other} (use 0, 1 or 2)")));
            }
        };
        let activation = match self.activation.as_str() {
            "lrelu" => RegularizationActivation::LeakyRelu,
            "tanh" => RegularizationActivation::Tanh,
            other => {
                return Err(ClipError::config(origin, format!("activation = \"{other}\" (use \"lrelu\" or \"tanh\")")));
            }
        };
        let vit = TimmVitConfig::new(
            v.img_size,
            v.patch_size,
            v.embed_dim,
            v.depth,
            v.num_heads,
            (v.embed_dim as f64 * v.mlp_ratio) as usize,
        )
        .with_layer_norm_eps(v.layer_norm_eps)
        .with_num_classes(v.num_classes);
        let config = LsegConfig::new(clip)
            .with_backbone(LsegBackbone::Timm(vit))
            .with_hooks(self.hooks.clone())
            .with_stage_channels(self.reassemble_features.clone())
            .with_features(self.features)
            .with_readout(self.readout)
            .with_batch_norm(self.use_bn)
            .with_spatial_regularization(regularization)
            .with_regularization_kind(kind)
            .with_regularization_depth(self.block_depth.max(1))
            .with_regularization_activation(activation)
            .with_init_logit_scale(self.logit_scale.map_or(LSEG_LOG_LOGIT_SCALE, f64::ln));
        config.validate()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lseg::decoder::Resample;

    fn json() -> serde_json::Value {
        serde_json::json!({
            "backbone": "clip_vitb32_384", "hooks": [2, 5, 8, 11], "reassemble_features": [8, 16, 32, 64],
            "vit_features": 32, "features": 16, "readout": "add", "use_bn": true, "arch_option": 2,
            "block_depth": 0, "activation": "tanh", "out_c": 64, "labels": ["ignored"],
            "vit": {"img_size": 96, "embed_dim": 32, "depth": 12, "num_heads": 4, "mlp_ratio": 2.0,
                    "patch_size": 32, "qkv_bias": true, "num_classes": 10},
            "clip": {"embed_dim": 64, "image_resolution": 32, "vision_layers": 1, "vision_width": 64,
                     "vision_patch_size": 32, "context_length": 77, "vocab_size": 100,
                     "transformer_width": 32, "transformer_heads": 2, "transformer_layers": 2}
        })
    }

    fn config(value: serde_json::Value) -> clip_core::Result<LsegConfig> {
        OfficialLsegConfig::from_value(value, "test")?.to_lseg_config("test")
    }

    #[test]
    fn arguments_map_onto_the_timm_backbone() {
        let c = config(json()).unwrap();
        let LsegBackbone::Timm(vit) = &c.backbone else { panic!("{:?}", c.backbone) };
        assert_eq!((vit.grid_size(), vit.width, vit.layers, vit.heads, vit.mlp_width), (3, 32, 12, 4, 64));
        assert_eq!((vit.layer_norm_eps, vit.num_classes), (1e-6, 10));
        assert_eq!(c.hooks(), [2, 5, 8, 11]);
        assert_eq!(c.stage_channels(), [8, 16, 32, 64]);
        assert_eq!(c.stage_resampling(), Resample::PATCH_32);
        assert_eq!((c.features, c.readout, c.batch_norm), (16, Readout::Add, true));
        // arch_option 2 with block_depth 0 runs the depthwise block once.
        assert!(c.spatial_regularization);
        assert_eq!(c.regularization_kind, RegularizationKind::Depthwise);
        assert_eq!(c.regularization_depth, 1);
        assert_eq!(c.regularization_activation, RegularizationActivation::Tanh);
        assert_eq!(c.clip.text.activation, Activation::QuickGelu);
        assert_eq!(c.clip.text.heads, 2);
        assert!((c.init_logit_scale - LSEG_LOG_LOGIT_SCALE).abs() < 1e-12);
        // Serializable like any LsegConfig.
        let back: LsegConfig = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn bad_arguments_are_named() {
        let with = |key: &str, value: serde_json::Value| {
            let mut json = json();
            json[key] = value;
            config(json).unwrap_err().to_string()
        };
        assert!(with("arch_option", 3.into()).contains("arch_option = 3"));
        assert!(with("activation", "relu".into()).contains("activation = \"relu\""));
        assert!(with("out_c", 512.into()).contains("out_c = 512"));
        assert!(with("vit_features", 768.into()).contains("vit_features = 768"));
        let mut resnet = json();
        resnet["clip"]["vision_layers"] = serde_json::json!([3, 4, 6, 3]);
        let err = config(resnet).unwrap_err().to_string();
        assert!(err.contains("only ViT CLIPs"), "{err}");
        let mut no_bias = json();
        no_bias["vit"]["qkv_bias"] = false.into();
        assert!(config(no_bias).unwrap_err().to_string().contains("q/k/v biases"));
        let mut missing = json();
        missing.as_object_mut().unwrap().remove("vit");
        assert!(config(missing).unwrap_err().to_string().contains("vit"));
    }

    #[test]
    fn lang_seg_defaults_fill_the_rest() {
        let mut json = json();
        for key in ["hooks", "reassemble_features", "features", "readout", "arch_option", "activation", "out_c"] {
            json.as_object_mut().unwrap().remove(key);
        }
        let c = config(json).unwrap();
        assert_eq!((c.features, c.readout, c.spatial_regularization), (256, Readout::Project, false));
        assert_eq!(c.hooks(), [2, 5, 8, 11]);
        assert_eq!(c.stage_channels(), [4, 8, 16, 32]);
    }
}

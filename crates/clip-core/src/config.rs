//! Model configurations: our own [`ClipConfig`], named architectures shipped as open_clip JSON
//! files, and conversion from open_clip and Hugging Face configuration files.

use std::path::Path;

use burn::config::Config;
use serde::Deserialize;

use crate::error::ClipError;
use crate::image_tower::ImageTowerConfig;
use crate::resnet::ModifiedResNetConfig;
use crate::text::TextTransformerConfig;
use crate::transformer::Activation;
use crate::vision::VisionTransformerConfig;

/// ln(1 / 0.07): the initial log logit scale of CLIP.
pub const DEFAULT_LOG_LOGIT_SCALE: f64 = 2.659_260_036_932_778_5;

/// A complete CLIP architecture: both towers and the shared embedding size.
#[derive(Config, Debug, PartialEq)]
pub struct ClipConfig {
    /// Size of the joint image-text embedding.
    pub embed_dim: usize,
    /// The image tower (a ViT or a ModifiedResNet).
    pub vision: ImageTowerConfig,
    /// The text tower.
    pub text: TextTransformerConfig,
    /// Initial value of the learnable log logit scale.
    #[config(default = "DEFAULT_LOG_LOGIT_SCALE")]
    pub init_logit_scale: f64,
    /// Initial value of a learnable logit bias (SigLIP; open_clip's `init_logit_bias`, -10
    /// in its SigLIP configs); none for CLIP.
    #[config(default = "None")]
    pub init_logit_bias: Option<f64>,
}

/// Named architectures shipped with the crate, as open_clip JSON model configs.
const NAMED_CONFIGS: &[(&str, &str)] = &[
    ("ViT-B-32", include_str!("../model_configs/ViT-B-32.json")),
    ("ViT-B-32-quickgelu", include_str!("../model_configs/ViT-B-32-quickgelu.json")),
    ("ViT-B-16", include_str!("../model_configs/ViT-B-16.json")),
    ("ViT-B-16-quickgelu", include_str!("../model_configs/ViT-B-16-quickgelu.json")),
    ("ViT-L-14", include_str!("../model_configs/ViT-L-14.json")),
    ("ViT-L-14-quickgelu", include_str!("../model_configs/ViT-L-14-quickgelu.json")),
    ("ViT-L-14-336", include_str!("../model_configs/ViT-L-14-336.json")),
    (
        "ViT-L-14-336-quickgelu",
        include_str!("../model_configs/ViT-L-14-336-quickgelu.json"),
    ),
    ("ViT-H-14", include_str!("../model_configs/ViT-H-14.json")),
    ("RN50", include_str!("../model_configs/RN50.json")),
    ("RN50-quickgelu", include_str!("../model_configs/RN50-quickgelu.json")),
    ("RN101", include_str!("../model_configs/RN101.json")),
    ("RN101-quickgelu", include_str!("../model_configs/RN101-quickgelu.json")),
    ("RN50x4", include_str!("../model_configs/RN50x4.json")),
    ("RN50x4-quickgelu", include_str!("../model_configs/RN50x4-quickgelu.json")),
    ("RN50x16", include_str!("../model_configs/RN50x16.json")),
    ("RN50x16-quickgelu", include_str!("../model_configs/RN50x16-quickgelu.json")),
    ("RN50x64", include_str!("../model_configs/RN50x64.json")),
    ("RN50x64-quickgelu", include_str!("../model_configs/RN50x64-quickgelu.json")),
];

impl ClipConfig {
    /// The names accepted by [`ClipConfig::named`].
    pub fn names() -> impl Iterator<Item = &'static str> {
        NAMED_CONFIGS.iter().map(|(name, _)| *name)
    }

    /// A shipped architecture by its open_clip name (`ViT-B-32`, `ViT-L-14-336`, `RN50`, ...).
    pub fn named(name: &str) -> crate::Result<Self> {
        let (_, json) = NAMED_CONFIGS
            .iter()
            .find(|(known, _)| *known == name)
            .ok_or_else(|| {
                ClipError::config(
                    name,
                    format!(
                        "unknown model name; known names: {}",
                        Self::names().collect::<Vec<_>>().join(", ")
                    ),
                )
            })?;
        Self::from_open_clip_json(json, name)
    }

    /// A model name or a path to an open_clip or Hugging Face JSON config file.
    pub fn from_name_or_path(name_or_path: &str) -> crate::Result<Self> {
        let path = Path::new(name_or_path);
        if path.is_file() {
            Self::from_json_file(path)
        } else {
            Self::named(name_or_path)
        }
    }

    /// Reads a JSON config file in open_clip or Hugging Face (`CLIPConfig`) layout.
    pub fn from_json_file(path: &Path) -> crate::Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| ClipError::io(path, e))?;
        let origin = path.display().to_string();
        let value: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| ClipError::config(&origin, format!("invalid JSON: {e}")))?;
        if value.get("vision_config").is_some() || value.get("text_config").is_some() {
            Self::from_hf_value(value, &origin)
        } else {
            Self::from_open_clip_value(value, &origin)
        }
    }

    /// Parses open_clip's JSON model config (`embed_dim`, `quick_gelu`, `vision_cfg`, `text_cfg`).
    pub fn from_open_clip_json(json: &str, origin: &str) -> crate::Result<Self> {
        let value = serde_json::from_str(json)
            .map_err(|e| ClipError::config(origin, format!("invalid JSON: {e}")))?;
        Self::from_open_clip_value(value, origin)
    }

    /// Converts an already parsed open_clip model config.
    pub fn from_open_clip_value(value: serde_json::Value, origin: &str) -> crate::Result<Self> {
        let cfg: OpenClipModelConfig = serde_json::from_value(value)
            .map_err(|e| ClipError::config(origin, e.to_string()))?;
        cfg.into_clip_config(origin)
    }

    /// Parses a Hugging Face `CLIPConfig` (`config.json` of a `CLIPModel` checkpoint).
    pub fn from_hf_json(json: &str, origin: &str) -> crate::Result<Self> {
        let value = serde_json::from_str(json)
            .map_err(|e| ClipError::config(origin, format!("invalid JSON: {e}")))?;
        Self::from_hf_value(value, origin)
    }

    /// Converts an already parsed Hugging Face `CLIPConfig`.
    pub fn from_hf_value(value: serde_json::Value, origin: &str) -> crate::Result<Self> {
        let cfg: HfClipConfig = serde_json::from_value(value)
            .map_err(|e| ClipError::config(origin, e.to_string()))?;
        cfg.into_clip_config(origin)
    }

    /// This configuration in open_clip's JSON model-config layout.
    pub fn to_open_clip_json(&self) -> serde_json::Value {
        let t = &self.text;
        let vision_cfg = match &self.vision {
            ImageTowerConfig::Vit(v) => serde_json::json!({
                "image_size": v.image_size,
                "layers": v.layers,
                "width": v.width,
                "head_width": v.width / v.heads,
                "patch_size": v.patch_size,
                "mlp_ratio": v.mlp_width as f64 / v.width as f64,
            }),
            ImageTowerConfig::ResNet(v) => serde_json::json!({
                "image_size": v.image_size,
                "layers": v.layers,
                "width": v.width,
                "head_width": v.feature_width() / v.heads,
                "patch_size": null,
            }),
        };
        let mut json = serde_json::json!({
            "embed_dim": self.embed_dim,
            "quick_gelu": t.activation == Activation::QuickGelu,
            "vision_cfg": vision_cfg,
            "text_cfg": {
                "context_length": t.context_length,
                "vocab_size": t.vocab_size,
                "width": t.width,
                "heads": t.heads,
                "layers": t.layers,
                "mlp_ratio": t.mlp_width as f64 / t.width as f64,
            },
        });
        if let Some(bias) = self.init_logit_bias {
            json["init_logit_bias"] = bias.into();
        }
        json
    }

    /// This configuration as a Hugging Face `CLIPConfig` (`config.json`); an error for a ResNet
    /// image tower, which transformers' `CLIPModel` does not have.
    pub fn to_hf_json(&self) -> crate::Result<serde_json::Value> {
        let v = self.vision.hugging_face_vit()?;
        let t = &self.text;
        Ok(serde_json::json!({
            "architectures": ["CLIPModel"],
            "model_type": "clip",
            "projection_dim": self.embed_dim,
            "logit_scale_init_value": self.init_logit_scale,
            "text_config": {
                "model_type": "clip_text_model",
                "vocab_size": t.vocab_size,
                "hidden_size": t.width,
                "intermediate_size": t.mlp_width,
                "num_hidden_layers": t.layers,
                "num_attention_heads": t.heads,
                "max_position_embeddings": t.context_length,
                "hidden_act": t.activation.hf_name(),
                "layer_norm_eps": t.layer_norm_eps,
                "projection_dim": self.embed_dim,
                "bos_token_id": 49406,
                "eos_token_id": 49407,
                "pad_token_id": 1,
            },
            "vision_config": {
                "model_type": "clip_vision_model",
                "hidden_size": v.width,
                "intermediate_size": v.mlp_width,
                "num_hidden_layers": v.layers,
                "num_attention_heads": v.heads,
                "image_size": v.image_size,
                "patch_size": v.patch_size,
                "num_channels": 3,
                "hidden_act": v.activation.hf_name(),
                "layer_norm_eps": v.layer_norm_eps,
                "projection_dim": self.embed_dim,
            },
        }))
    }
}

fn default_head_width() -> usize {
    64
}
fn default_mlp_ratio() -> f64 {
    4.0
}
fn default_context_length() -> usize {
    77
}
fn default_vocab_size() -> usize {
    49408
}

/// open_clip's JSON model config. Keys open_clip knows but this crate does not implement are
/// rejected by name rather than silently ignored.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OpenClipModelConfig {
    embed_dim: usize,
    #[serde(default)]
    quick_gelu: bool,
    vision_cfg: OpenClipVisionConfig,
    text_cfg: OpenClipTextConfig,
    #[serde(default)]
    init_logit_scale: Option<f64>,
    #[serde(default)]
    init_logit_bias: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OpenClipVisionConfig {
    image_size: usize,
    layers: OpenClipLayers,
    width: usize,
    #[serde(default)]
    patch_size: Option<usize>,
    #[serde(default = "default_head_width")]
    head_width: usize,
    #[serde(default = "default_mlp_ratio")]
    mlp_ratio: f64,
}

/// `vision_cfg.layers`: a block count (ViT) or four stage depths (ModifiedResNet).
#[derive(Deserialize)]
#[serde(untagged)]
enum OpenClipLayers {
    Vit(usize),
    ResNet(Vec<usize>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OpenClipTextConfig {
    #[serde(default = "default_context_length")]
    context_length: usize,
    #[serde(default = "default_vocab_size")]
    vocab_size: usize,
    width: usize,
    heads: usize,
    layers: usize,
    #[serde(default = "default_mlp_ratio")]
    mlp_ratio: f64,
}

impl OpenClipModelConfig {
    fn into_clip_config(self, origin: &str) -> crate::Result<ClipConfig> {
        let activation = if self.quick_gelu {
            Activation::QuickGelu
        } else {
            Activation::Gelu
        };
        let v = self.vision_cfg;
        let t = self.text_cfg;
        let vision = match v.layers {
            OpenClipLayers::Vit(layers) => {
                if v.head_width == 0 || !v.width.is_multiple_of(v.head_width) {
                    return Err(ClipError::config(
                        origin,
                        format!(
                            "vision_cfg.width {} is not a multiple of vision_cfg.head_width {}",
                            v.width, v.head_width
                        ),
                    ));
                }
                let patch_size = v.patch_size.ok_or_else(|| {
                    ClipError::config(origin, "vision_cfg.patch_size is required for a ViT (vision_cfg.layers a number)")
                })?;
                ImageTowerConfig::Vit(
                    VisionTransformerConfig::new(
                        v.image_size,
                        patch_size,
                        v.width,
                        layers,
                        v.width / v.head_width,
                        (v.width as f64 * v.mlp_ratio) as usize,
                        self.embed_dim,
                    )
                    .with_activation(activation),
                )
            }
            OpenClipLayers::ResNet(layers) => {
                let layers: [usize; 4] = layers.try_into().map_err(|layers: Vec<usize>| {
                    ClipError::config(
                        origin,
                        format!("vision_cfg.layers lists {} stages; a ModifiedResNet has 4", layers.len()),
                    )
                })?;
                if v.patch_size.is_some() {
                    return Err(ClipError::config(
                        origin,
                        "vision_cfg.patch_size must be null for a ModifiedResNet (vision_cfg.layers a list)",
                    ));
                }
                let features = v.width * 32;
                if v.head_width == 0 || !features.is_multiple_of(v.head_width) {
                    return Err(ClipError::config(
                        origin,
                        format!(
                            "the ResNet feature width 32 x vision_cfg.width = {features} is not a multiple of \
                             vision_cfg.head_width {}",
                            v.head_width
                        ),
                    ));
                }
                ImageTowerConfig::ResNet(ModifiedResNetConfig::new(
                    v.image_size,
                    layers,
                    v.width,
                    features / v.head_width,
                    self.embed_dim,
                ))
            }
        };
        let text = TextTransformerConfig::new(
            t.context_length,
            t.vocab_size,
            t.width,
            t.layers,
            t.heads,
            (t.width as f64 * t.mlp_ratio) as usize,
            self.embed_dim,
        )
        .with_activation(activation);
        let config = ClipConfig::new(self.embed_dim, vision, text)
            .with_init_logit_scale(self.init_logit_scale.unwrap_or(DEFAULT_LOG_LOGIT_SCALE))
            .with_init_logit_bias(self.init_logit_bias);
        config.validate(origin)?;
        Ok(config)
    }
}

/// Hugging Face `CLIPConfig`; absent keys take transformers' defaults.
#[derive(Deserialize)]
struct HfClipConfig {
    #[serde(default = "hf_projection_dim")]
    projection_dim: usize,
    #[serde(default = "hf_logit_scale")]
    logit_scale_init_value: f64,
    #[serde(default)]
    text_config: HfTextConfig,
    #[serde(default)]
    vision_config: HfVisionConfig,
}

fn hf_projection_dim() -> usize {
    512
}
fn hf_logit_scale() -> f64 {
    2.6592
}

#[derive(Deserialize)]
#[serde(default)]
struct HfTextConfig {
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    max_position_embeddings: usize,
    hidden_act: String,
    layer_norm_eps: f64,
}

impl Default for HfTextConfig {
    fn default() -> Self {
        Self {
            vocab_size: 49408,
            hidden_size: 512,
            intermediate_size: 2048,
            num_hidden_layers: 12,
            num_attention_heads: 8,
            max_position_embeddings: 77,
            hidden_act: "quick_gelu".into(),
            layer_norm_eps: 1e-5,
        }
    }
}

#[derive(Deserialize)]
#[serde(default)]
struct HfVisionConfig {
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_channels: usize,
    image_size: usize,
    patch_size: usize,
    hidden_act: String,
    layer_norm_eps: f64,
}

impl Default for HfVisionConfig {
    fn default() -> Self {
        Self {
            hidden_size: 768,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            num_channels: 3,
            image_size: 224,
            patch_size: 32,
            hidden_act: "quick_gelu".into(),
            layer_norm_eps: 1e-5,
        }
    }
}

impl HfClipConfig {
    fn into_clip_config(self, origin: &str) -> crate::Result<ClipConfig> {
        let t = self.text_config;
        let v = self.vision_config;
        if v.num_channels != 3 {
            return Err(ClipError::config(
                origin,
                format!("vision_config.num_channels = {} (only 3 is supported)", v.num_channels),
            ));
        }
        let vision = ImageTowerConfig::Vit(
            VisionTransformerConfig::new(
            v.image_size,
            v.patch_size,
            v.hidden_size,
            v.num_hidden_layers,
            v.num_attention_heads,
            v.intermediate_size,
            self.projection_dim,
        )
        .with_activation(Activation::from_hf_name(&v.hidden_act, origin, "vision_config.hidden_act")?)
        .with_layer_norm_eps(v.layer_norm_eps),
        );
        let text = TextTransformerConfig::new(
            t.max_position_embeddings,
            t.vocab_size,
            t.hidden_size,
            t.num_hidden_layers,
            t.num_attention_heads,
            t.intermediate_size,
            self.projection_dim,
        )
        .with_activation(Activation::from_hf_name(&t.hidden_act, origin, "text_config.hidden_act")?)
        .with_layer_norm_eps(t.layer_norm_eps);
        let config = ClipConfig::new(self.projection_dim, vision, text)
            .with_init_logit_scale(self.logit_scale_init_value);
        config.validate(origin)?;
        Ok(config)
    }
}

impl ClipConfig {
    /// Checks that the sizes fit together (heads divide widths, patches tile the image).
    pub fn validate(&self, origin: &str) -> crate::Result<()> {
        let t = &self.text;
        let vision_checks = match &self.vision {
            ImageTowerConfig::Vit(v) => [
                (v.heads > 0 && v.width.is_multiple_of(v.heads), "vision width must be a multiple of vision heads"),
                (
                    v.patch_size > 0 && v.image_size.is_multiple_of(v.patch_size),
                    "vision image_size must be a multiple of patch_size",
                ),
                (v.layers > 0, "the image tower needs at least one layer"),
            ],
            ImageTowerConfig::ResNet(v) => [
                (
                    v.heads > 0 && v.width > 1 && v.feature_width().is_multiple_of(v.heads),
                    "the ResNet feature width (32 x width) must be a multiple of its attention-pool heads",
                ),
                (v.image_size >= 32, "a ResNet's image_size must be at least 32 (its feature map is 1/32 of it)"),
                (v.layers.iter().all(|&blocks| blocks > 0), "every ResNet stage needs at least one block"),
            ],
        };
        let checks = [
            (t.heads > 0 && t.width.is_multiple_of(t.heads), "text width must be a multiple of text heads"),
            (self.embed_dim > 0, "embed_dim must be positive"),
            (t.context_length > 0, "text context_length must be positive"),
            (t.layers > 0, "the text tower needs at least one layer"),
            (
                self.vision.embed_dim() == self.embed_dim && t.embed_dim == self.embed_dim,
                "tower embed_dim must equal the model's embed_dim",
            ),
        ];
        match vision_checks.iter().chain(&checks).find(|(ok, _)| !ok) {
            Some((_, message)) => Err(ClipError::config(origin, *message)),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_named_config_parses() {
        for name in ClipConfig::names() {
            let config = ClipConfig::named(name).unwrap();
            assert_eq!(config.text.activation == Activation::QuickGelu, name.ends_with("quickgelu"));
        }
        let b32 = ClipConfig::named("ViT-B-32").unwrap();
        let v = b32.vision.vit("test").unwrap();
        assert_eq!((v.width, v.heads, v.patch_size), (768, 12, 32));
        assert_eq!(v.mlp_width, 3072);
        let h14 = ClipConfig::named("ViT-H-14").unwrap();
        assert_eq!(h14.vision.vit("test").unwrap().heads, 16);
    }

    #[test]
    fn resnet_names_give_open_clip_towers() {
        let resnet = |name: &str| match ClipConfig::named(name).unwrap().vision {
            ImageTowerConfig::ResNet(config) => config,
            other => panic!("{name}: {other:?}"),
        };
        let rn50 = resnet("RN50");
        assert_eq!((rn50.layers, rn50.width, rn50.heads, rn50.embed_dim), ([3, 4, 6, 3], 64, 32, 1024));
        assert_eq!(resnet("RN101").layers, [3, 4, 23, 3]);
        let x64 = resnet("RN50x64");
        assert_eq!((x64.image_size, x64.width, x64.heads), (448, 128, 64));
        // A ViT-only method gets an error naming it.
        let err = ClipConfig::named("RN50").unwrap().vision.vit("LSeg").unwrap_err().to_string();
        assert!(err.contains("LSeg") && err.contains("ResNet"), "{err}");
    }

    #[test]
    fn resnet_config_round_trips_and_has_no_hugging_face_layout() {
        let config = ClipConfig::named("RN50x4-quickgelu").unwrap();
        let back = ClipConfig::from_open_clip_value(config.to_open_clip_json(), "rt").unwrap();
        assert_eq!(back, config);
        assert!(config.to_hf_json().unwrap_err().to_string().contains("open_clip"));
        let json = r#"{"embed_dim": 8, "vision_cfg": {"image_size": 64, "layers": [1, 1, 1], "width": 8},
            "text_cfg": {"width": 8, "heads": 1, "layers": 1}}"#;
        let err = ClipConfig::from_open_clip_json(json, "three.json").unwrap_err().to_string();
        assert!(err.contains("three.json") && err.contains("4"), "{err}");
    }

    #[test]
    fn unknown_name_lists_known_ones() {
        let err = ClipConfig::named("ViT-X-1").unwrap_err().to_string();
        assert!(err.contains("ViT-X-1") && err.contains("ViT-B-32"), "{err}");
    }

    #[test]
    fn unsupported_open_clip_key_is_named() {
        let json = r#"{"embed_dim": 8, "vision_cfg": {"image_size": 8, "layers": 1, "width": 8,
            "patch_size": 4, "ls_init_value": 0.1}, "text_cfg": {"width": 8, "heads": 1, "layers": 1}}"#;
        let err = ClipConfig::from_open_clip_json(json, "test.json").unwrap_err().to_string();
        assert!(err.contains("ls_init_value") && err.contains("test.json"), "{err}");
    }

    #[test]
    fn open_clip_and_hf_json_round_trip() {
        let config = ClipConfig::named("ViT-B-16-quickgelu").unwrap();
        let back = ClipConfig::from_open_clip_value(config.to_open_clip_json(), "rt").unwrap();
        assert_eq!(back, config);
        let back = ClipConfig::from_hf_value(config.to_hf_json().unwrap(), "rt").unwrap();
        assert_eq!(back.vision, config.vision);
        assert_eq!(back.text, config.text);
    }

    #[test]
    fn inconsistent_sizes_are_rejected() {
        let json = r#"{"embed_dim": 8, "vision_cfg": {"image_size": 10, "layers": 1, "width": 8,
            "patch_size": 4, "head_width": 4}, "text_cfg": {"width": 8, "heads": 3, "layers": 1}}"#;
        let err = ClipConfig::from_open_clip_json(json, "bad.json").unwrap_err().to_string();
        assert!(err.contains("bad.json"), "{err}");
    }
}

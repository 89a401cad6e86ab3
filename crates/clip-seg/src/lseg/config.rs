//! [`LsegConfig`]: the CLIP architecture underneath, the image encoder and the DPT decoder's
//! knobs.

use burn::config::Config;
use burn::tensor::Device;
use clip_core::{Clip, ClipConfig, ClipError};
use serde::{Deserialize, Serialize};

use crate::lseg::backbone::TimmVitConfig;
use crate::lseg::decoder::{DptDecoderConfig, Resample};
use crate::lseg::model::{Lseg, RegularizationActivation, RegularizationKind, SpatialRegularizationConfig};

/// ln(1 / 0.07): LSeg's initial log logit scale.
pub const LSEG_LOG_LOGIT_SCALE: f64 = 2.659_260_036_932_778_5;

/// Where this crate reports configuration errors from.
const ORIGIN: &str = "LsegConfig";

/// How the decoder treats the ViT's class token (DPT's `readout`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Readout {
    /// Drop the class token.
    Ignore,
    /// Add the class token to every patch token.
    Add,
    /// Concatenate the class token to every patch token, then `Linear(2w, w)` and GELU.
    Project,
}

/// The image encoder feeding the decoder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LsegBackbone {
    /// CLIP's own image tower (a ViT), so both towers come from one CLIP model.
    Clip,
    /// A separate timm ViT, as the official `LSegNet` (`pretrained.model`, ImageNet-trained
    /// `vit_large_patch16_384` or `vit_base_patch32_384`); CLIP's image tower is then unused.
    /// The model then has the official checkpoint layout (see [`crate::lseg::weights`]).
    Timm(TimmVitConfig),
}

/// Configuration of an [`Lseg`] model.
#[derive(Config, Debug, PartialEq)]
pub struct LsegConfig {
    /// The CLIP model whose text tower embeds labels and, with the CLIP backbone, whose image
    /// tower feeds the decoder.
    pub clip: ClipConfig,
    /// The image encoder: CLIP's image tower (default) or the official code's timm ViT.
    #[config(default = "LsegBackbone::Clip")]
    pub backbone: LsegBackbone,
    /// The four transformer blocks (0-based) whose outputs the decoder reassembles; `None`:
    /// evenly spaced, the last block last (`[2, 5, 8, 11]` for 12 blocks, `[5, 11, 17, 23]`
    /// for 24, as DPT and LSeg use).
    #[config(default = "None")]
    pub hooks: Option<Vec<usize>>,
    /// Channels of the fused feature maps (LSeg: 256).
    #[config(default = 256)]
    pub features: usize,
    /// Class-token handling.
    #[config(default = "Readout::Project")]
    pub readout: Readout,
    /// Channels of the four reassembled stages; `None`: DPT's choice, `[256, 512, 1024, 1024]`
    /// for towers 1024 wide or wider, else `[w/8, w/4, w/2, w]` (`[96, 192, 384, 768]` for
    /// ViT-B).
    #[config(default = "None")]
    pub stage_channels: Option<Vec<usize>>,
    /// Resampling of the four stages (finest first); `None`: [`Resample::PATCH_32`] for a timm
    /// backbone with patch 32 (lang-seg's `clip_vitb32_384`), else [`Resample::PATCH_16`]
    /// (DPT's ViT-L/16 design, also used for every CLIP backbone).
    #[config(default = "None")]
    pub stage_resampling: Option<Vec<Resample>>,
    /// Batch norm inside the residual convolution units (the official `LSegNet` sets it).
    #[config(default = true)]
    pub batch_norm: bool,
    /// Spatial regularization of the logits (LSeg's bottleneck blocks); off by default.
    #[config(default = false)]
    pub spatial_regularization: bool,
    /// How many times the (weight-shared) block is applied when enabled (the official
    /// `max(block_depth, 1)`).
    #[config(default = 1)]
    pub regularization_depth: usize,
    /// The regularization block: bottleneck (official `arch_option = 1`) or depthwise (2).
    #[config(default = "RegularizationKind::Bottleneck")]
    pub regularization_kind: RegularizationKind,
    /// The activation between regularization blocks (official `activation`).
    #[config(default = "RegularizationActivation::LeakyRelu")]
    pub regularization_activation: RegularizationActivation,
    /// Initial log logit scale.
    #[config(default = "LSEG_LOG_LOGIT_SCALE")]
    pub init_logit_scale: f64,
}

impl LsegConfig {
    /// Blocks and width of the image encoder (zeros for a ResNet CLIP tower, which `validate`
    /// rejects).
    fn vit_size(&self) -> (usize, usize) {
        match &self.backbone {
            LsegBackbone::Timm(vit) => (vit.layers, vit.width),
            LsegBackbone::Clip => self.clip.vision.vit(ORIGIN).map(|v| (v.layers, v.width)).unwrap_or((0, 0)),
        }
    }

    /// The stage resampling, resolving the default.
    pub fn stage_resampling(&self) -> Vec<Resample> {
        self.stage_resampling.clone().unwrap_or_else(|| match &self.backbone {
            LsegBackbone::Timm(vit) if vit.patch_size == 32 => Resample::PATCH_32.to_vec(),
            _ => Resample::PATCH_16.to_vec(),
        })
    }

    /// The hook layers, resolving the default.
    pub fn hooks(&self) -> Vec<usize> {
        self.hooks.clone().unwrap_or_else(|| {
            let (depth, _) = self.vit_size();
            (1..=4).map(|i| (i * depth / 4).max(1) - 1).collect()
        })
    }

    /// The four stage channel counts, resolving the default.
    pub fn stage_channels(&self) -> Vec<usize> {
        self.stage_channels.clone().unwrap_or_else(|| {
            let (_, width) = self.vit_size();
            if width >= 1024 {
                vec![256, 512, 1024, 1024]
            } else {
                vec![width / 8, width / 4, width / 2, width]
            }
        })
    }

    /// Checks that the hooks exist in the image tower and that every size is positive.
    pub fn validate(&self) -> clip_core::Result<()> {
        self.clip.validate(ORIGIN)?;
        let clip_depth = self.clip.vision.vit("LSeg")?.layers;
        let depth = match &self.backbone {
            LsegBackbone::Clip => clip_depth,
            LsegBackbone::Timm(vit) => {
                let sizes = [vit.image_size, vit.patch_size, vit.width, vit.layers, vit.heads, vit.mlp_width];
                if sizes.contains(&0) || vit.width % vit.heads != 0 || vit.image_size < vit.patch_size {
                    return Err(ClipError::config(
                        ORIGIN,
                        format!(
                            "backbone timm: sizes must be positive, the width ({}) a multiple of the \
                             heads ({}) and the image ({}) at least one patch ({})",
                            vit.width, vit.heads, vit.image_size, vit.patch_size
                        ),
                    ));
                }
                vit.layers
            }
        };
        let hooks = self.hooks();
        if hooks.len() != 4 {
            return Err(ClipError::config(
                ORIGIN,
                format!("hooks must name 4 layers, got {hooks:?}"),
            ));
        }
        if let Some(bad) = hooks.iter().find(|&&h| h >= depth) {
            return Err(ClipError::config(
                ORIGIN,
                format!(
                    "hooks: layer {bad} does not exist (the image encoder has {depth} blocks, 0-based)"
                ),
            ));
        }
        let channels = self.stage_channels();
        if channels.len() != 4 || channels.contains(&0) {
            return Err(ClipError::config(
                ORIGIN,
                format!("stage_channels must be 4 positive numbers, got {channels:?}"),
            ));
        }
        if self.features == 0 {
            return Err(ClipError::config(ORIGIN, "features must be positive"));
        }
        let resampling = self.stage_resampling();
        if resampling.len() != 4 || resampling.iter().any(|r| matches!(r, Resample::Up(0))) {
            return Err(ClipError::config(
                ORIGIN,
                format!("stage_resampling must name 4 stages with positive factors, got {resampling:?}"),
            ));
        }
        if self.spatial_regularization && self.regularization_depth == 0 {
            return Err(ClipError::config(
                ORIGIN,
                "regularization_depth must be at least 1",
            ));
        }
        Ok(())
    }

    /// Builds an LSeg model with freshly initialized weights everywhere.
    pub fn init(&self, device: &Device) -> clip_core::Result<Lseg> {
        self.validate()?;
        self.init_with_clip(self.clip.init(device), device)
    }

    /// Builds an LSeg model on top of an existing (pretrained) CLIP model: its image tower
    /// becomes the encoder (with the CLIP backbone; with the timm backbone a new timm ViT is
    /// the encoder) and its text tower the label encoder; the decoder is new. `clip` must have
    /// the architecture of `self.clip`.
    pub fn init_with_clip(&self, clip: Clip, device: &Device) -> clip_core::Result<Lseg> {
        self.validate()?;
        let visual = clip.visual.into_vit("LSeg")?;
        let width = visual.conv1.weight.dims()[0];
        let depth = visual.transformer.resblocks.len();
        let embed_dim = clip.text.text_projection.dims()[1];
        let clip_vision = self.clip.vision.vit(ORIGIN)?;
        let expected = (clip_vision.width, clip_vision.layers, self.clip.embed_dim);
        if (width, depth, embed_dim) != expected {
            return Err(ClipError::config(
                ORIGIN,
                format!(
                    "the CLIP model has image width {width}, {depth} image blocks and embed_dim \
                     {embed_dim}; the config says {}, {} and {}",
                    expected.0, expected.1, expected.2
                ),
            ));
        }
        let channels = self.stage_channels();
        let resampling = self.stage_resampling();
        let vit = match &self.backbone {
            LsegBackbone::Clip => None,
            LsegBackbone::Timm(config) => Some(config.init(device)),
        };
        let official = vit.is_some();
        let (_, encoder_width) = self.vit_size();
        let decoder = DptDecoderConfig::new(
            encoder_width,
            [channels[0], channels[1], channels[2], channels[3]],
            self.features,
            embed_dim,
        )
        .with_readout(self.readout)
        .with_batch_norm(self.batch_norm)
        .with_resampling([resampling[0], resampling[1], resampling[2], resampling[3]])
        .with_coarsest_skip_unit(official)
        .init(device);
        let hooks = self.hooks();
        Ok(Lseg {
            visual,
            vit,
            text: clip.text,
            decoder,
            regularization: self.spatial_regularization.then(|| {
                SpatialRegularizationConfig::new(self.regularization_depth)
                    .with_kind(self.regularization_kind)
                    .with_activation(self.regularization_activation)
                    .init(device)
            }),
            logit_scale: burn::module::Param::from_tensor(burn::tensor::Tensor::from_floats(
                [self.init_logit_scale as f32],
                device,
            )),
            clip_logit_scale: official.then_some(clip.logit_scale),
            hooks: [hooks[0], hooks[1], hooks[2], hooks[3]],
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A tiny CLIP (32-pixel images, 4-pixel patches, width 32, 4 blocks; embed 16) under
    /// LSeg with 16 fused features.
    pub(crate) fn tiny_config() -> LsegConfig {
        let json = r#"{"embed_dim": 16,
            "vision_cfg": {"image_size": 32, "layers": 4, "width": 32, "patch_size": 4,
                           "head_width": 16, "mlp_ratio": 2.0},
            "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 2,
                         "layers": 2, "mlp_ratio": 2.0}}"#;
        LsegConfig::new(ClipConfig::from_open_clip_json(json, "tiny").unwrap()).with_features(16)
    }

    #[test]
    fn default_hooks_are_evenly_spaced() {
        let mut config = tiny_config();
        assert_eq!(config.hooks(), [0, 1, 2, 3]);
        config.clip.vision.vit_mut("test").unwrap().layers = 12;
        assert_eq!(config.hooks(), [2, 5, 8, 11]);
        config.clip.vision.vit_mut("test").unwrap().layers = 24;
        assert_eq!(config.hooks(), [5, 11, 17, 23]);
    }

    #[test]
    fn default_stage_channels_follow_dpt() {
        let mut config = tiny_config();
        assert_eq!(config.stage_channels(), [4, 8, 16, 32]);
        config.clip.vision.vit_mut("test").unwrap().width = 768;
        assert_eq!(config.stage_channels(), [96, 192, 384, 768]);
        config.clip.vision.vit_mut("test").unwrap().width = 1024;
        assert_eq!(config.stage_channels(), [256, 512, 1024, 1024]);
    }

    #[test]
    fn bad_hooks_and_channels_are_named() {
        let err = tiny_config()
            .with_hooks(Some(vec![0, 1, 2, 4]))
            .validate()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("hooks") && err.contains("layer 4") && err.contains("4 blocks"),
            "{err}"
        );
        let err = tiny_config()
            .with_hooks(Some(vec![0, 1]))
            .validate()
            .unwrap_err()
            .to_string();
        assert!(err.contains("hooks must name 4 layers"), "{err}");
        let err = tiny_config()
            .with_stage_channels(Some(vec![4, 0, 4, 4]))
            .validate()
            .unwrap_err()
            .to_string();
        assert!(err.contains("stage_channels"), "{err}");
    }

    #[test]
    fn json_round_trip() {
        let config = tiny_config()
            .with_readout(Readout::Add)
            .with_spatial_regularization(true)
            .with_hooks(Some(vec![1, 1, 2, 3]));
        let json = serde_json::to_string(&config).unwrap();
        assert!(json.contains(r#""readout":"add""#), "{json}");
        let back: LsegConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(back, config);
    }

    #[test]
    fn a_timm_backbone_sets_its_own_sizes() {
        let config = tiny_config().with_backbone(LsegBackbone::Timm(TimmVitConfig::new(64, 32, 24, 8, 2, 48)));
        assert_eq!(config.hooks(), [1, 3, 5, 7]);
        assert_eq!(config.stage_channels(), [3, 6, 12, 24]);
        assert_eq!(config.stage_resampling(), Resample::PATCH_32);
        assert!(serde_json::to_string(&tiny_config()).unwrap().contains(r#""backbone":"clip""#));
        let json = serde_json::to_string(&config).unwrap();
        assert!(json.contains(r#""backbone":{"timm":{"#), "{json}");
        assert_eq!(serde_json::from_str::<LsegConfig>(&json).unwrap(), config);
        let err = tiny_config()
            .with_backbone(LsegBackbone::Timm(TimmVitConfig::new(64, 32, 24, 8, 5, 48)))
            .validate()
            .unwrap_err()
            .to_string();
        assert!(err.contains("multiple of the heads"), "{err}");
        let err = config.with_hooks(Some(vec![1, 2, 3, 8])).validate().unwrap_err().to_string();
        assert!(err.contains("layer 8") && err.contains("8 blocks"), "{err}");
    }

    #[test]
    fn init_with_clip_rejects_another_architecture() {
        let device = Device::flex();
        let mut other = tiny_config().clip;
        let vision = other.vision.vit_mut("test").unwrap();
        vision.width = 64;
        vision.mlp_width = 128;
        let err = tiny_config()
            .init_with_clip(other.init(&device), &device)
            .unwrap_err()
            .to_string();
        assert!(err.contains("image width 64"), "{err}");
        let mut shallow = tiny_config().clip;
        shallow.vision.vit_mut("test").unwrap().layers = 2;
        let err = tiny_config()
            .init_with_clip(shallow.init(&device), &device)
            .unwrap_err()
            .to_string();
        assert!(err.contains("2 image blocks"), "{err}");
    }
}

//! [`ActionClipConfig`]: the CLIP architecture underneath and the temporal fusion.

use burn::config::Config;
use burn::tensor::Device;
use clip_core::{Clip, ClipConfig, ClipError};
use serde::{Deserialize, Serialize};

use crate::actionclip::model::ActionClip;
use crate::clip4clip::config::check_clip;
use crate::clip4clip::temporal::TemporalTransformerConfig;

/// Where configuration errors are reported from.
const ORIGIN: &str = "ActionClipConfig";

/// How frame embeddings are fused into one video embedding (the paper's post-network prompt).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Fusion {
    /// The mean of the (unnormalized) frame embeddings.
    #[serde(rename = "meanP")]
    MeanP,
    /// Frame position embeddings and a transformer with a residual connection, then the mean
    /// (the official `Transf`).
    #[serde(rename = "transf", alias = "Transf")]
    Transf,
}

/// Configuration of an [`ActionClip`] model.
#[derive(Config, Debug, PartialEq)]
pub struct ActionClipConfig {
    /// The CLIP model encoding frames and class prompts.
    pub clip: ClipConfig,
    /// The temporal fusion.
    #[config(default = "Fusion::Transf")]
    pub fusion: Fusion,
    /// Transformer blocks of the `transf` fusion (6 in the paper).
    #[config(default = 6)]
    pub fusion_layers: usize,
    /// Attention heads of the fusion blocks (official: text width / 64, 8 for ViT-B/32).
    #[config(default = 8)]
    pub heads: usize,
    /// The most frames per video (8 in the paper's main setting).
    #[config(default = 8)]
    pub max_frames: usize,
}

impl ActionClipConfig {
    /// Checks the CLIP config and the fusion's sizes.
    pub fn validate(&self) -> clip_core::Result<()> {
        self.clip.validate(ORIGIN)?;
        if self.max_frames == 0 {
            return Err(ClipError::config(ORIGIN, "max_frames must be positive"));
        }
        if self.fusion == Fusion::Transf {
            if self.fusion_layers == 0 {
                return Err(ClipError::config(ORIGIN, "fusion_layers must be positive"));
            }
            if self.heads == 0 || !self.clip.embed_dim.is_multiple_of(self.heads) {
                return Err(ClipError::config(
                    ORIGIN,
                    format!("heads = {} must divide embed_dim = {}", self.heads, self.clip.embed_dim),
                ));
            }
        }
        Ok(())
    }

    /// Builds an ActionCLIP model with freshly initialized weights everywhere.
    pub fn init(&self, device: &Device) -> clip_core::Result<ActionClip> {
        self.validate()?;
        self.init_with_clip(self.clip.init(device), device)
    }

    /// Builds an ActionCLIP model on a (pretrained) CLIP model, which must have the
    /// architecture of `self.clip`; the fusion is new (frame position embeddings `N(0, 0.02)`,
    /// as the official code).
    pub fn init_with_clip(&self, clip: Clip, device: &Device) -> clip_core::Result<ActionClip> {
        self.validate()?;
        check_clip(&self.clip, &clip, ORIGIN)?;
        let fusion = (self.fusion == Fusion::Transf).then(|| {
            TemporalTransformerConfig::new(self.clip.embed_dim, self.fusion_layers, self.heads, self.max_frames)
                .init(device)
        });
        Ok(ActionClip { clip, fusion })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::clip4clip::config::tests::tiny_clip;

    /// ActionCLIP on the tiny CLIP with 4 frames and a 2-block, 2-head fusion.
    pub(crate) fn tiny_config(fusion: Fusion) -> ActionClipConfig {
        ActionClipConfig::new(tiny_clip())
            .with_fusion(fusion)
            .with_fusion_layers(2)
            .with_heads(2)
            .with_max_frames(4)
    }

    #[test]
    fn fusion_names_round_trip() {
        let json = serde_json::to_string(&tiny_config(Fusion::Transf)).unwrap();
        assert!(json.contains(r#""fusion":"transf""#), "{json}");
        let back: ActionClipConfig = serde_json::from_str(&json.replace(r#""transf""#, r#""Transf""#)).unwrap();
        assert_eq!(back, tiny_config(Fusion::Transf));
        let json = serde_json::to_string(&tiny_config(Fusion::MeanP)).unwrap();
        assert!(json.contains(r#""fusion":"meanP""#), "{json}");
    }

    #[test]
    fn bad_sizes_are_named() {
        let err = tiny_config(Fusion::Transf)
            .with_heads(5)
            .validate()
            .unwrap_err()
            .to_string();
        assert!(err.contains("heads = 5") && err.contains("ActionClipConfig"), "{err}");
        let err = tiny_config(Fusion::Transf)
            .with_fusion_layers(0)
            .validate()
            .unwrap_err()
            .to_string();
        assert!(err.contains("fusion_layers"), "{err}");
        assert!(tiny_config(Fusion::MeanP).with_fusion_layers(0).validate().is_ok());
    }
}

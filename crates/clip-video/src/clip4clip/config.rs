//! [`Clip4ClipConfig`]: the CLIP architecture underneath and the similarity calculator.

use burn::config::Config;
use burn::tensor::Device;
use clip_core::{Clip, ClipConfig, ClipError};
use serde::{Deserialize, Serialize};

use crate::clip4clip::cross::CrossEncoderConfig;
use crate::clip4clip::model::Clip4Clip;
use crate::clip4clip::seq_lstm::SeqLstmConfig;
use crate::clip4clip::temporal::TemporalTransformerConfig;

/// Where configuration errors are reported from.
const ORIGIN: &str = "Clip4ClipConfig";

/// How frame embeddings become a text-video similarity (the paper's similarity calculators).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SimilarityHeader {
    /// Parameter-free: mean of the L2-normalized frame embeddings.
    #[serde(rename = "meanP")]
    MeanP,
    /// An LSTM over the frames with a residual connection, then the mean.
    #[serde(rename = "seqLSTM")]
    SeqLstm,
    /// Frame position embeddings and a transformer with a residual connection, then the mean.
    #[serde(rename = "seqTransf")]
    SeqTransf,
    /// A cross transformer over the text embedding and the frames, scoring each pair.
    #[serde(rename = "tightTransf")]
    TightTransf,
}

/// Configuration of a [`Clip4Clip`] model.
#[derive(Config, Debug, PartialEq)]
pub struct Clip4ClipConfig {
    /// The CLIP model encoding frames and captions.
    pub clip: ClipConfig,
    /// The similarity calculator.
    #[config(default = "SimilarityHeader::MeanP")]
    pub similarity: SimilarityHeader,
    /// The most frames per video (12 in the paper).
    #[config(default = 12)]
    pub max_frames: usize,
    /// Transformer blocks of `seqTransf` (4 in the paper, `cross_num_hidden_layers`).
    #[config(default = 4)]
    pub temporal_layers: usize,
    /// Transformer blocks of `tightTransf`'s cross encoder (4 in the paper).
    #[config(default = 4)]
    pub cross_layers: usize,
    /// Attention heads of the `seqTransf` blocks, and of `tightTransf`'s unless `cross_heads` is
    /// set (official: text width / 64, 8 for ViT-B/32).
    #[config(default = 8)]
    pub heads: usize,
    /// Attention heads of `tightTransf`'s cross encoder (official: `num_attention_heads` of the
    /// cross config); `None` for `heads`.
    #[config(default = "None")]
    pub cross_heads: Option<usize>,
    /// Rows of the frame (`seqLSTM`, `seqTransf`) and cross (`tightTransf`) position
    /// embeddings; official checkpoints have the text context length, 77. `None` for exactly
    /// as many as the longest clip needs (`max_frames`, plus one for the cross encoder's text
    /// token).
    #[config(default = "None")]
    pub position_embeddings: Option<usize>,
    /// Seed the `seqTransf`/`tightTransf` blocks and position embeddings from the first layers
    /// of CLIP's text tower, as the official code does when starting from CLIP (only where the
    /// text tower's width equals `embed_dim` and its head count equals `heads`).
    #[config(default = true)]
    pub init_from_text: bool,
}

impl Clip4ClipConfig {
    /// Checks the CLIP config and that the similarity calculator's sizes are usable.
    pub fn validate(&self) -> clip_core::Result<()> {
        self.clip.validate(ORIGIN)?;
        if self.max_frames == 0 {
            return Err(ClipError::config(ORIGIN, "max_frames must be positive"));
        }
        let layers = match self.similarity {
            SimilarityHeader::SeqTransf => Some(("temporal_layers", self.temporal_layers)),
            SimilarityHeader::TightTransf => Some(("cross_layers", self.cross_layers)),
            SimilarityHeader::MeanP | SimilarityHeader::SeqLstm => None,
        };
        if let Some((field, count)) = layers {
            if count == 0 {
                return Err(ClipError::config(ORIGIN, format!("{field} must be positive")));
            }
            let (field, heads) = match self.similarity {
                SimilarityHeader::TightTransf => ("cross_heads", self.cross_heads()),
                _ => ("heads", self.heads),
            };
            if heads == 0 || !self.clip.embed_dim.is_multiple_of(heads) {
                return Err(ClipError::config(
                    ORIGIN,
                    format!("{field} = {heads} must divide embed_dim = {}", self.clip.embed_dim),
                ));
            }
        }
        if let Some(rows) = self.position_embeddings {
            let needed = self.max_frames + usize::from(self.similarity == SimilarityHeader::TightTransf);
            if rows < needed {
                return Err(ClipError::config(
                    ORIGIN,
                    format!("position_embeddings = {rows} is fewer than the {needed} that max_frames = {} needs", self.max_frames),
                ));
            }
        }
        Ok(())
    }

    /// Heads of the cross encoder.
    pub fn cross_heads(&self) -> usize {
        self.cross_heads.unwrap_or(self.heads)
    }

    /// Builds a CLIP4Clip model with freshly initialized weights everywhere.
    pub fn init(&self, device: &Device) -> clip_core::Result<Clip4Clip> {
        self.validate()?;
        self.init_with_clip(self.clip.init(device), device)
    }

    /// Builds a CLIP4Clip model on a (pretrained) CLIP model, which must have the architecture
    /// of `self.clip`; the similarity calculator's weights are new.
    pub fn init_with_clip(&self, clip: Clip, device: &Device) -> clip_core::Result<Clip4Clip> {
        self.validate()?;
        check_clip(&self.clip, &clip, ORIGIN)?;
        let width = self.clip.embed_dim;
        let frame_rows = self.position_embeddings.unwrap_or(self.max_frames);
        let temporal = (self.similarity == SimilarityHeader::SeqTransf).then(|| {
            let config = TemporalTransformerConfig::new(width, self.temporal_layers, self.heads, frame_rows);
            if self.init_from_text {
                config.init_from_text(&clip.text, device)
            } else {
                config.init(device)
            }
        });
        let cross = (self.similarity == SimilarityHeader::TightTransf).then(|| {
            let config = CrossEncoderConfig::new(width, self.cross_layers, self.cross_heads(), self.max_frames)
                .with_positions(self.position_embeddings);
            if self.init_from_text {
                config.init_from_text(&clip.text, device)
            } else {
                config.init(device)
            }
        });
        let lstm = (self.similarity == SimilarityHeader::SeqLstm)
            .then(|| SeqLstmConfig::new(width, frame_rows).init(&clip.text, device));
        Ok(Clip4Clip {
            clip,
            lstm,
            temporal,
            cross,
            similarity: self.similarity,
        })
    }
}

/// Checks that `clip`'s sizes are those of `config` (image width and depth, embedding size).
pub(crate) fn check_clip(config: &ClipConfig, clip: &Clip, origin: &str) -> clip_core::Result<()> {
    let found = (clip.visual.architecture(), clip.text.text_projection.dims()[1]);
    let expected = (config.vision.architecture(), config.embed_dim);
    if found != expected {
        return Err(ClipError::config(
            origin,
            format!(
                "the CLIP model has a {} image tower and embed_dim {}; the config says a {} and {}",
                found.0, found.1, expected.0, expected.1
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A tiny CLIP: 16-pixel images, 8-pixel patches, width 32, 2 blocks per tower, embed 32
    /// (equal to the text width, so the text tower can seed the temporal blocks).
    pub(crate) fn tiny_clip() -> ClipConfig {
        let json = r#"{"embed_dim": 32,
            "vision_cfg": {"image_size": 16, "layers": 2, "width": 32, "patch_size": 8,
                           "head_width": 16, "mlp_ratio": 2.0},
            "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 2,
                         "layers": 2, "mlp_ratio": 4.0}}"#;
        ClipConfig::from_open_clip_json(json, "tiny").unwrap()
    }

    /// CLIP4Clip on [`tiny_clip`] with 4 frames, 2 heads and 2 temporal and cross blocks.
    pub(crate) fn tiny_config(similarity: SimilarityHeader) -> Clip4ClipConfig {
        Clip4ClipConfig::new(tiny_clip())
            .with_similarity(similarity)
            .with_max_frames(4)
            .with_heads(2)
            .with_temporal_layers(2)
            .with_cross_layers(2)
    }

    #[test]
    fn header_names_follow_the_paper() {
        for (header, name) in [
            (SimilarityHeader::MeanP, "meanP"),
            (SimilarityHeader::SeqLstm, "seqLSTM"),
            (SimilarityHeader::SeqTransf, "seqTransf"),
            (SimilarityHeader::TightTransf, "tightTransf"),
        ] {
            let json = serde_json::to_string(&tiny_config(header)).unwrap();
            assert!(json.contains(&format!(r#""similarity":"{name}""#)), "{json}");
            let back: Clip4ClipConfig = serde_json::from_str(&json).unwrap();
            assert_eq!(back, tiny_config(header));
        }
    }

    #[test]
    fn bad_sizes_are_named() {
        let err = tiny_config(SimilarityHeader::SeqTransf)
            .with_heads(3)
            .validate()
            .unwrap_err()
            .to_string();
        assert!(err.contains("heads = 3") && err.contains("Clip4ClipConfig"), "{err}");
        let err = tiny_config(SimilarityHeader::TightTransf)
            .with_cross_layers(0)
            .validate()
            .unwrap_err()
            .to_string();
        assert!(err.contains("cross_layers"), "{err}");
        let err = tiny_config(SimilarityHeader::MeanP)
            .with_max_frames(0)
            .validate()
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_frames"), "{err}");
    }

    #[test]
    fn a_clip_of_another_architecture_is_rejected() {
        let device = burn::tensor::Device::flex();
        let mut other = tiny_clip();
        other.vision.vit_mut("test").unwrap().layers = 1;
        let err = tiny_config(SimilarityHeader::MeanP)
            .init_with_clip(other.init(&device), &device)
            .unwrap_err()
            .to_string();
        assert!(err.contains("with 1 blocks") && err.contains("with 2 blocks"), "{err}");
    }
}

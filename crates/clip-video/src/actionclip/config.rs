//! [`ActionClipConfig`]: the CLIP architecture underneath and the temporal fusion.

use burn::config::Config;
use burn::module::Param;
use burn::nn::conv::Conv1dConfig;
use burn::nn::{Initializer, LstmConfig, PaddingConfig1d};
use burn::tensor::{Device, Tensor, TensorData};
use clip_core::{Clip, ClipConfig, ClipError};
use serde::{Deserialize, Serialize};

use crate::actionclip::aggregate::TemporalAggregateConfig;
use crate::actionclip::model::ActionClip;
use crate::clip4clip::config::check_clip;
use crate::clip4clip::temporal::{INIT_STD, TemporalTransformerConfig};

/// Where configuration errors are reported from.
const ORIGIN: &str = "ActionClipConfig";

/// How frame embeddings are fused into one video embedding (the paper's post-network prompt,
/// the official `visual_prompt`'s `sim_header`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Fusion {
    /// The mean of the (unnormalized) frame embeddings.
    #[serde(rename = "meanP")]
    MeanP,
    /// One LSTM layer over the frames, a residual connection, the mean (official `LSTM`).
    #[serde(rename = "LSTM", alias = "lstm")]
    Lstm,
    /// A depthwise temporal convolution (kernel 3) applied to the `view(b, E, t)` of the
    /// `[b, t, E]` frame embeddings, permuted back, a residual connection, the mean (official
    /// `Conv_1D`).
    #[serde(rename = "Conv_1D", alias = "conv_1d")]
    Conv1d,
    /// Frame position embeddings and a transformer with a residual connection, then the mean
    /// (the official `Transf`).
    #[serde(rename = "transf", alias = "Transf")]
    Transf,
    /// A class token through PyTorch's post-norm transformer encoder (official `Transf_cls`).
    #[serde(rename = "Transf_cls", alias = "transf_cls")]
    TransfCls,
}

impl Fusion {
    /// Every fusion, with its official name.
    pub const ALL: [(Fusion, &'static str); 5] = [
        (Fusion::MeanP, "meanP"),
        (Fusion::Lstm, "LSTM"),
        (Fusion::Conv1d, "Conv_1D"),
        (Fusion::Transf, "Transf"),
        (Fusion::TransfCls, "Transf_cls"),
    ];
}

/// Configuration of an [`ActionClip`] model.
#[derive(Config, Debug, PartialEq)]
pub struct ActionClipConfig {
    /// The CLIP model encoding frames and class prompts.
    pub clip: ClipConfig,
    /// The temporal fusion.
    #[config(default = "Fusion::Transf")]
    pub fusion: Fusion,
    /// Transformer blocks of the `Transf` and `Transf_cls` fusions (6 in the paper).
    #[config(default = 6)]
    pub fusion_layers: usize,
    /// Attention heads of the `Transf` blocks (official: text width / 64, 8 for ViT-B/32).
    #[config(default = 8)]
    pub heads: usize,
    /// Attention heads of the `Transf_cls` encoder (official: 8 whatever the width).
    #[config(default = 8)]
    pub cls_heads: usize,
    /// Feed-forward width of the `Transf_cls` encoder layers (official: PyTorch's 2048).
    #[config(default = 2048)]
    pub cls_mlp_width: usize,
    /// The most frames per video (8 in the paper's main setting); `Transf_cls` has positions
    /// for exactly this many.
    #[config(default = 8)]
    pub max_frames: usize,
    /// Rows of the frame position embeddings (`Transf`; official checkpoints carry them,
    /// unused, for `LSTM`, `Conv_1D` and `Transf_cls` too, with the text context length, 77);
    /// `None` for `max_frames`.
    #[config(default = "None")]
    pub position_embeddings: Option<usize>,
}

impl ActionClipConfig {
    /// Checks the CLIP config and the fusion's sizes.
    pub fn validate(&self) -> clip_core::Result<()> {
        self.clip.validate(ORIGIN)?;
        if self.max_frames == 0 {
            return Err(ClipError::config(ORIGIN, "max_frames must be positive"));
        }
        let heads = match self.fusion {
            Fusion::Transf => Some(("heads", self.heads)),
            Fusion::TransfCls => Some(("cls_heads", self.cls_heads)),
            _ => None,
        };
        if let Some((field, heads)) = heads {
            if self.fusion_layers == 0 {
                return Err(ClipError::config(ORIGIN, "fusion_layers must be positive"));
            }
            if heads == 0 || !self.clip.embed_dim.is_multiple_of(heads) {
                return Err(ClipError::config(
                    ORIGIN,
                    format!("{field} = {heads} must divide embed_dim = {}", self.clip.embed_dim),
                ));
            }
        }
        if self.position_embeddings.is_some_and(|rows| rows < self.max_frames) {
            return Err(ClipError::config(
                ORIGIN,
                format!("position_embeddings = {:?} is fewer than max_frames = {}", self.position_embeddings, self.max_frames),
            ));
        }
        Ok(())
    }

    /// Rows of the frame position embeddings.
    fn position_rows(&self) -> usize {
        self.position_embeddings.unwrap_or(self.max_frames)
    }

    /// Builds an ActionCLIP model with freshly initialized weights everywhere.
    pub fn init(&self, device: &Device) -> clip_core::Result<ActionClip> {
        self.validate()?;
        self.init_with_clip(self.clip.init(device), device)
    }

    /// Builds an ActionCLIP model on a (pretrained) CLIP model, which must have the
    /// architecture of `self.clip`; the fusion is new, initialized as the official code does
    /// (position embeddings and linear weights `N(0, 0.02)`, PyTorch's LSTM initialization,
    /// `Conv_1D` as a temporal shift: a quarter of the channels look one frame back, half stay,
    /// a quarter look one frame ahead).
    pub fn init_with_clip(&self, clip: Clip, device: &Device) -> clip_core::Result<ActionClip> {
        self.validate()?;
        check_clip(&self.clip, &clip, ORIGIN)?;
        let width = self.clip.embed_dim;
        let fusion = (self.fusion == Fusion::Transf).then(|| {
            TemporalTransformerConfig::new(width, self.fusion_layers, self.heads, self.position_rows()).init(device)
        });
        let lstm = (self.fusion == Fusion::Lstm).then(|| {
            let bound = 1.0 / (width as f64).sqrt();
            LstmConfig::new(width, width, true)
                .with_initializer(Initializer::Uniform { min: -bound, max: bound })
                .init(device)
        });
        let shift = (self.fusion == Fusion::Conv1d).then(|| {
            let mut conv = Conv1dConfig::new(width, width, 3)
                .with_groups(width)
                .with_padding(PaddingConfig1d::Explicit(1, 1))
                .with_bias(false)
                .init(device);
            conv.weight = Param::from_tensor(Tensor::from_data(TensorData::new(temporal_shift(width), [width, 1, 3]), device));
            conv
        });
        let aggregate = (self.fusion == Fusion::TransfCls).then(|| {
            TemporalAggregateConfig::new(width, self.max_frames)
                .with_layers(self.fusion_layers)
                .with_heads(self.cls_heads)
                .with_mlp_width(self.cls_mlp_width)
                .init(device)
        });
        let unused_positions = matches!(self.fusion, Fusion::Lstm | Fusion::Conv1d | Fusion::TransfCls)
            .then(|| Initializer::Normal { mean: 0.0, std: INIT_STD }.init([self.position_rows(), width], device));
        Ok(ActionClip { clip, fusion, lstm, shift, aggregate, unused_positions })
    }
}

/// The official initial `Conv_1D` kernel `[width, 1, 3]`: channels `[0, w/4)` take the previous
/// position, `[w/4, w/4 + w/2)` the current one, the last `⌈w/4⌉` the next one.
fn temporal_shift(width: usize) -> Vec<f32> {
    let quarter = width / 4;
    let mut weight = vec![0.0; width * 3];
    for channel in 0..quarter {
        weight[channel * 3] = 1.0;
    }
    for channel in quarter..(quarter + width / 2).min(width) {
        weight[channel * 3 + 1] = 1.0;
    }
    // Python's `weight[-width // 4:]`: `-width // 4` rounds down, so the last ⌈w/4⌉ channels.
    for channel in width - width.div_ceil(4)..width {
        weight[channel * 3 + 2] = 1.0;
    }
    weight
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

//! The GLIP model on CLIP's towers: ViT patch tokens and per-word text features projected to a
//! common width, deep fusion, and per-anchor box regression and word-alignment heads.

use burn::config::Config;
use burn::module::{Module, Param};
use burn::nn::{Initializer, Linear, LinearConfig};
use burn::tensor::activation::sigmoid;
use burn::tensor::{Bool, Device, Int, Tensor, TensorData};
use clip_core::text::{TextTransformer, end_of_text_positions};
use clip_core::vision::VisionTransformer;
use clip_core::{Clip, ClipError};

use crate::boxes::{self, BoxCoder, BoxXyxy, DetectOptions, Prediction};
use crate::glip::fusion::{FusionLayer, FusionLayerConfig};
use crate::glip::prompt::GroundingPrompt;

/// Prior probability of a word matching an anchor at initialization: the alignment bias starts
/// at `-ln((1 - p) / p)`, as GLIP's (and RetinaNet's) classification bias.
const PRIOR_PROBABILITY: f32 = 0.01;

/// Configuration of a [`Glip`] model and of its training objective.
#[derive(Config, Debug)]
pub struct GlipConfig {
    /// Anchor sizes in pixels (square root of the area) at every feature-map location.
    #[config(default = "vec![16.0, 32.0, 64.0]")]
    pub anchor_sizes: Vec<f32>,
    /// Anchor aspect ratios (height / width).
    #[config(default = "vec![0.5, 1.0, 2.0]")]
    pub anchor_ratios: Vec<f32>,
    /// Width of the fused image and text features.
    #[config(default = 256)]
    pub hidden: usize,
    /// Number of fusion layers.
    #[config(default = 2)]
    pub fusion_layers: usize,
    /// Attention heads of the fusion layers (must divide `hidden`).
    #[config(default = 8)]
    pub fusion_heads: usize,
    /// IoU at or above which an anchor is matched to a ground-truth box.
    #[config(default = 0.5)]
    pub fg_iou: f32,
    /// IoU below which an anchor is background (anchors in between are ignored).
    #[config(default = 0.4)]
    pub bg_iou: f32,
    /// Focal-loss weight of positive targets.
    #[config(default = 0.25)]
    pub focal_alpha: f32,
    /// Focal-loss focusing exponent.
    #[config(default = 2.0)]
    pub focal_gamma: f32,
    /// Weight of the GIoU box loss.
    #[config(default = 2.0)]
    pub box_weight: f32,
}

impl GlipConfig {
    /// Checks the values `init_with_clip` and the objective rely on.
    pub fn validate(&self) -> clip_core::Result<()> {
        let fail = |message: String| Err(ClipError::config("glip", message));
        if self.anchor_sizes.is_empty() || self.anchor_ratios.is_empty() {
            return fail("anchor_sizes and anchor_ratios must not be empty".into());
        }
        if self
            .anchor_sizes
            .iter()
            .chain(&self.anchor_ratios)
            .any(|v| v.is_nan() || *v <= 0.0)
        {
            return fail(format!(
                "anchor sizes {:?} and ratios {:?} must be positive",
                self.anchor_sizes, self.anchor_ratios
            ));
        }
        if self.hidden == 0
            || self.fusion_heads == 0
            || !self.hidden.is_multiple_of(self.fusion_heads)
        {
            return fail(format!(
                "fusion_heads = {} must divide hidden = {} (both positive)",
                self.fusion_heads, self.hidden
            ));
        }
        if !(0.0..=1.0).contains(&self.bg_iou) || !(self.bg_iou..=1.0).contains(&self.fg_iou) {
            return fail(format!(
                "need 0 <= bg_iou ({}) <= fg_iou ({}) <= 1",
                self.bg_iou, self.fg_iou
            ));
        }
        if !(0.0..=1.0).contains(&self.focal_alpha)
            || self.focal_gamma < 0.0
            || self.box_weight < 0.0
        {
            return fail(format!(
                "need focal_alpha ({}) in [0, 1], focal_gamma ({}) >= 0, box_weight ({}) >= 0",
                self.focal_alpha, self.focal_gamma, self.box_weight
            ));
        }
        Ok(())
    }

    /// Anchors per feature-map location.
    pub fn anchors_per_location(&self) -> usize {
        self.anchor_sizes.len() * self.anchor_ratios.len()
    }

    /// GLIP on copies of `clip`'s towers, with fresh projections, fusion layers and heads.
    pub fn init_with_clip(&self, clip: &Clip, device: &Device) -> clip_core::Result<Glip> {
        self.validate()?;
        let visual = clip.visual.vit("GLIP")?;
        let image_width = visual.conv1.weight.dims()[0];
        let text_width = clip.text.token_embedding.weight.dims()[1];
        let anchors = self.anchors_per_location();
        let bias = -((1.0 - PRIOR_PROBABILITY) / PRIOR_PROBABILITY).ln();
        Ok(Glip {
            visual: visual.clone(),
            text: clip.text.clone(),
            image_projection: LinearConfig::new(image_width, self.hidden).init(device),
            text_projection: LinearConfig::new(text_width, self.hidden).init(device),
            fusion: (0..self.fusion_layers)
                .map(|_| FusionLayerConfig::new(self.hidden, self.fusion_heads).init(device))
                .collect(),
            box_head: LinearConfig::new(self.hidden, anchors * 4)
                .with_initializer(Initializer::Normal {
                    mean: 0.0,
                    std: 0.01,
                })
                .init(device),
            anchor_embedding: LinearConfig::new(self.hidden, anchors * self.hidden).init(device),
            word_embedding: LinearConfig::new(self.hidden, self.hidden).init(device),
            alignment_bias: Param::from_tensor(Tensor::from_floats([bias], device)),
            anchor_sizes: self.anchor_sizes.clone(),
            anchor_ratios: self.anchor_ratios.clone(),
            hidden: self.hidden,
        })
    }
}

/// GLIP: CLIP's image and text towers, deep fusion, and per-anchor heads.
#[derive(Module, Debug)]
pub struct Glip {
    /// CLIP's ViT; its patch tokens are the image features (stride = patch size).
    pub visual: VisionTransformer,
    /// CLIP's text tower; its per-token features are the word features.
    pub text: TextTransformer,
    /// Patch tokens `[.., vision width]` to `[.., hidden]`.
    pub image_projection: Linear,
    /// Word features `[.., text width]` to `[.., hidden]`.
    pub text_projection: Linear,
    /// The fusion layers, applied in order.
    pub fusion: Vec<FusionLayer>,
    /// Box deltas of every anchor of a location: `hidden -> anchors * 4` (initialized with
    /// `N(0, 0.01)` as RetinaNet's and GLIP's, so boxes start at the anchors).
    pub box_head: Linear,
    /// Alignment query of every anchor of a location: `hidden -> anchors * hidden`.
    pub anchor_embedding: Linear,
    /// Alignment key of every word: `hidden -> hidden`.
    pub word_embedding: Linear,
    /// Learnable alignment bias `[1]`.
    pub alignment_bias: Param<Tensor<1>>,
    /// Anchor sizes in pixels.
    #[module(skip)]
    pub anchor_sizes: Vec<f32>,
    /// Anchor aspect ratios.
    #[module(skip)]
    pub anchor_ratios: Vec<f32>,
    /// Width of the fused features.
    pub hidden: usize,
}

/// Raw outputs of [`Glip::forward`].
#[derive(Debug, Clone)]
pub struct GlipOutput {
    /// Alignment logits `[batch, anchors, words]`: anchor-word dot products over
    /// `sqrt(hidden)` plus the bias; words outside the text (start- and end-of-text, padding)
    /// are filled with [`Glip::MASKED_LOGIT`].
    pub alignment: Tensor<3>,
    /// Box deltas `[batch, anchors, 4]` relative to `anchors` ([`BoxCoder::default`]).
    pub deltas: Tensor<3>,
    /// The anchors, the same for every image: locations row-major, then sizes x ratios.
    pub anchors: Vec<BoxXyxy>,
    /// `[batch * words]`, row-major: whether a word is a text token (strictly between the
    /// start- and end-of-text tokens), i.e. may score.
    pub text_words: Vec<bool>,
    /// Input image `[height, width]` in pixels.
    pub image_size: [usize; 2],
}

impl Glip {
    /// The alignment logit of words that never score (`sigmoid` rounds it to 0).
    pub const MASKED_LOGIT: f32 = -1e4;

    /// Runs the model on `images: [batch, 3, H, W]` (sides multiples of the patch size) and
    /// prompt `tokens: [batch, words]`.
    pub fn forward(&self, images: Tensor<4>, tokens: Tensor<2, Int>) -> GlipOutput {
        let [batch, _, height, width] = images.dims();
        let words = tokens.dims()[1];
        let device = images.device();
        let end = end_of_text_positions(&tokens.to_data());
        // Keys beyond the end-of-text token are padding; scoring words exclude start and end.
        let padding: Vec<bool> = end
            .iter()
            .flat_map(|&e| (0..words).map(move |w| w as i64 > e))
            .collect();
        let text_words: Vec<bool> = end
            .iter()
            .flat_map(|&e| (0..words).map(move |w| w > 0 && (w as i64) < e))
            .collect();
        let padding =
            Tensor::<2, Bool>::from_data(TensorData::new(padding, [batch, words]), &device);

        let vision = self.visual.forward_features(images, false);
        let grid = vision.grid;
        let mut image = self.image_projection.forward(vision.patch_tokens);
        let mut text = self
            .text_projection
            .forward(self.text.forward_features(tokens, false).tokens);
        for layer in &self.fusion {
            (image, text) = layer.forward(image, text, padding.clone());
        }

        let locations = grid[0] * grid[1];
        let per_location = self.anchor_sizes.len() * self.anchor_ratios.len();
        let total = locations * per_location;
        let deltas = self
            .box_head
            .forward(image.clone())
            .reshape([batch, total, 4]);
        let queries = self
            .anchor_embedding
            .forward(image)
            .reshape([batch, total, self.hidden]);
        let keys = self.word_embedding.forward(text);
        let alignment = queries.matmul(keys.swap_dims(1, 2)) / (self.hidden as f32).sqrt()
            + self.alignment_bias.val().reshape([1, 1, 1]);
        let scoring = Tensor::<2, Bool>::from_data(
            TensorData::new(text_words.clone(), [batch, words]),
            &device,
        );
        let alignment = alignment.mask_fill(
            scoring
                .bool_not()
                .unsqueeze_dim::<3>(1)
                .expand([batch, total, words]),
            Self::MASKED_LOGIT,
        );
        let stride = self.visual.patch_size as f32;
        GlipOutput {
            alignment,
            deltas,
            anchors: boxes::anchors(grid, stride, &self.anchor_sizes, &self.anchor_ratios),
            text_words,
            image_size: [height, width],
        }
    }

    /// Detections of the prompt's phrases in `images: [batch, 3, H, W]`: a phrase's score at an
    /// anchor is the mean of `sigmoid(alignment)` over its tokens (all its spans), boxes are
    /// the decoded anchors clipped to the image, then [`boxes::select_predictions`] with
    /// category = phrase index.
    ///
    /// # Panics
    /// If the prompt has more tokens than the text tower's context length (a prompt built with
    /// another tokenizer).
    pub fn detect(
        &self,
        images: Tensor<4>,
        prompt: &GroundingPrompt,
        options: &DetectOptions,
    ) -> Vec<Vec<Prediction>> {
        let [batch, ..] = images.dims();
        let device = images.device();
        let words = prompt.tokens.len();
        let tokens =
            Tensor::<1, Int>::from_data(TensorData::new(prompt.tokens.clone(), [words]), &device)
                .unsqueeze::<2>()
                .expand([batch, words]);
        let output = self.forward(images, tokens);
        let phrases = prompt.phrase_tokens.len();
        // [words, phrases]: 1 / (tokens of the phrase) on each of its tokens.
        let mut average = vec![0.0f32; words * phrases];
        for (p, spans) in prompt.phrase_tokens.iter().enumerate() {
            let positions: Vec<usize> = spans.iter().flat_map(|s| s.clone()).collect();
            for &w in &positions {
                average[w * phrases + p] += 1.0 / positions.len() as f32;
            }
        }
        let average = Tensor::<2>::from_data(TensorData::new(average, [words, phrases]), &device);
        let scores = sigmoid(output.alignment).matmul(average.unsqueeze());
        let anchors = anchor_tensor(&output.anchors, &device);
        let [height, width] = output.image_size;
        let total = output.anchors.len();
        (0..batch)
            .map(|b| {
                let deltas = output.deltas.clone().narrow(0, b, 1).reshape([total, 4]);
                let decoded = BoxCoder::default().decode(anchors.clone(), deltas);
                let decoded = boxes::clip_boxes(decoded, width as f32, height as f32);
                let corners: Vec<f32> = decoded.into_data().iter::<f32>().collect();
                let boxes: Vec<BoxXyxy> = corners
                    .chunks_exact(4)
                    .map(|c| [c[0], c[1], c[2], c[3]])
                    .collect();
                let scores: Vec<f32> = scores
                    .clone()
                    .narrow(0, b, 1)
                    .into_data()
                    .iter::<f32>()
                    .collect();
                boxes::select_predictions(&boxes, &scores, phrases, options)
            })
            .collect()
    }
}

/// `[N, 4]` tensor of boxes.
pub(crate) fn anchor_tensor(anchors: &[BoxXyxy], device: &Device) -> Tensor<2> {
    let flat: Vec<f32> = anchors.iter().flatten().copied().collect();
    Tensor::from_data(TensorData::new(flat, [anchors.len(), 4]), device)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use burn::tensor::Distribution;
    use clip_core::ClipConfig;

    /// A tiny CLIP: 32-pixel images in 8-pixel patches (a 4 x 4 grid), 8-token texts, vocabulary
    /// of 64 (end-of-text 63).
    pub(crate) fn tiny_clip(device: &Device) -> Clip {
        let json = r#"{"embed_dim": 16,
            "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8,
                           "head_width": 16, "mlp_ratio": 2.0},
            "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 2,
                         "layers": 1, "mlp_ratio": 2.0}}"#;
        ClipConfig::from_open_clip_json(json, "tiny")
            .unwrap()
            .init(device)
    }

    /// GLIP with 2 anchors per location (sizes 8 and 16, square): 32 anchors.
    pub(crate) fn tiny_config() -> GlipConfig {
        GlipConfig::new()
            .with_anchor_sizes(vec![8.0, 16.0])
            .with_anchor_ratios(vec![1.0])
            .with_hidden(16)
            .with_fusion_layers(1)
            .with_fusion_heads(2)
    }

    /// Start 1, words 5..=7 ("circle . square" in spirit), end 63, padding.
    pub(crate) fn tiny_tokens() -> Vec<i64> {
        vec![1, 5, 6, 7, 63, 0, 0, 0]
    }

    #[test]
    fn config_validation_names_the_problem() {
        assert!(tiny_config().validate().is_ok());
        let err = tiny_config()
            .with_fusion_heads(3)
            .validate()
            .unwrap_err()
            .to_string();
        assert!(err.contains("fusion_heads = 3"), "{err}");
        let err = tiny_config()
            .with_fg_iou(0.3)
            .validate()
            .unwrap_err()
            .to_string();
        assert!(err.contains("bg_iou"), "{err}");
        let err = tiny_config()
            .with_anchor_ratios(vec![])
            .validate()
            .unwrap_err()
            .to_string();
        assert!(err.contains("anchor_ratios"), "{err}");
    }

    #[test]
    fn alignment_scores_every_anchor_against_every_word_and_masks_non_text_words() {
        let device = Device::flex();
        device.seed(1);
        let glip = tiny_config()
            .init_with_clip(&tiny_clip(&device), &device)
            .unwrap();
        let images = Tensor::<4>::random([2, 3, 32, 32], Distribution::Normal(0.0, 1.0), &device);
        let tokens = Tensor::<1, Int>::from_data(TensorData::new(tiny_tokens(), [8]), &device)
            .unsqueeze::<2>()
            .expand([2, 8]);
        let output = glip.forward(images, tokens);
        assert_eq!(output.alignment.dims(), [2, 32, 8]);
        assert_eq!(output.deltas.dims(), [2, 32, 4]);
        assert_eq!(output.anchors.len(), 32);
        assert_eq!(output.anchors[0], [0.0, 0.0, 8.0, 8.0]);
        assert_eq!(output.image_size, [32, 32]);
        let text = [false, true, true, true, false, false, false, false];
        assert_eq!(output.text_words, [text, text].concat());
        let logits: Vec<f32> = output.alignment.into_data().iter::<f32>().collect();
        for (i, &logit) in logits.iter().enumerate() {
            if text[i % 8] {
                // Near the prior's bias at initialization, never masked.
                assert!(logit.is_finite() && logit > Glip::MASKED_LOGIT, "{logit}");
            } else {
                assert_eq!(logit, Glip::MASKED_LOGIT);
            }
        }
    }

    #[test]
    fn fused_box_deltas_depend_on_the_prompt_only_with_fusion_layers() {
        let device = Device::flex();
        device.seed(4);
        let clip = tiny_clip(&device);
        let images = Tensor::<4>::random([1, 3, 32, 32], Distribution::Normal(0.0, 1.0), &device);
        let tokens =
            |ids: Vec<i64>| Tensor::<2, Int>::from_data(TensorData::new(ids, [1, 8]), &device);
        let other = vec![1, 9, 10, 11, 12, 63, 0, 0];
        for (layers, depends) in [(1, true), (0, false)] {
            let glip = tiny_config()
                .with_fusion_layers(layers)
                .init_with_clip(&clip, &device)
                .unwrap();
            let deltas = |ids: Vec<i64>| glip.forward(images.clone(), tokens(ids)).deltas;
            let diff = (deltas(tiny_tokens()) - deltas(other.clone()))
                .abs()
                .max()
                .into_scalar::<f32>();
            assert_eq!(
                diff > 0.0,
                depends,
                "{layers} fusion layers: difference {diff}"
            );
        }
    }

    #[test]
    fn detect_returns_boxes_inside_the_image_for_each_phrase() {
        let device = Device::flex();
        device.seed(2);
        let glip = tiny_config()
            .init_with_clip(&tiny_clip(&device), &device)
            .unwrap();
        let images = Tensor::<4>::random([2, 3, 32, 32], Distribution::Normal(0.0, 1.0), &device);
        let prompt = GroundingPrompt {
            text: "circle. square".into(),
            tokens: tiny_tokens(),
            spans: vec![1..2, 3..4],
            phrase_tokens: vec![vec![1..2], vec![3..4]],
        };
        // Scores start near the 0.01 prior: keep everything to see every phrase.
        let options = DetectOptions {
            score_threshold: 0.0,
            nms_iou: 0.5,
            max_per_image: 10,
        };
        let detections = glip.detect(images, &prompt, &options);
        assert_eq!(detections.len(), 2);
        for predictions in &detections {
            assert!(!predictions.is_empty() && predictions.len() <= 10);
            for p in predictions {
                assert!(p.category < 2);
                assert!(p.score > 0.0 && p.score < 1.0);
                let [x1, y1, x2, y2] = p.bbox;
                assert!(0.0 <= x1 && x1 <= x2 && x2 <= 32.0, "{:?}", p.bbox);
                assert!(0.0 <= y1 && y1 <= y2 && y2 <= 32.0, "{:?}", p.bbox);
            }
            assert!(predictions.windows(2).all(|w| w[0].score >= w[1].score));
        }
    }
}

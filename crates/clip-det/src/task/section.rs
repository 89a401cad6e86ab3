//! `[detection]`: the COCO-style data and settings of the `vild` and `glip` tasks.

use std::path::PathBuf;

use clip_task::RunContext;
use serde::{Deserialize, Serialize};

use crate::boxes::DetectOptions;
use crate::detector::DetectorConfig;
use crate::glip::{GlipConfig, NegativeSampling};
use crate::vild::VildConfig;

/// `[detection]`: the COCO-style data and settings of the `vild` (open-vocabulary detection)
/// and `glip` (grounding) tasks. `data.train` / `data.val` are COCO JSON files.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DetectionSection {
    /// Folder of the training images (`file_name` is relative to it); default: the JSON's folder.
    pub train_images: Option<PathBuf>,
    /// Folder of the validation images; default: the JSON's folder.
    pub val_images: Option<PathBuf>,
    /// Novel categories, by name: their boxes are dropped from training and AP-novel is
    /// reported over them.
    pub novel: Vec<String>,
    /// Take the LVIS rare categories (`frequency = "r"`) as the novel ones as well.
    pub novel_rare: bool,
    /// Side of the square network input; images are resized to it.
    pub image_size: usize,
    /// Training augmentation: random horizontal flips.
    pub flip: bool,
    /// Prompt templates turning category names into text (ViLD), `{}` standing for the name.
    pub templates: Vec<String>,
    /// Anchor sides in input pixels (every feature-map cell gets each size at each ratio).
    pub anchor_sizes: Vec<f32>,
    /// Anchor aspect ratios (height / width).
    pub anchor_ratios: Vec<f32>,
    /// Width of the detection heads (RPN, box head, GLIP fusion).
    pub hidden: usize,
    /// ViLD: proposals per image kept after the RPN's NMS.
    pub proposals_per_image: usize,
    /// ViLD: temperature of the cosine-similarity classifier.
    pub temperature: f64,
    /// ViLD: weight of the ViLD-text loss.
    pub text_weight: f64,
    /// ViLD: weight of the ViLD-image (L1 distillation) loss; 0 turns it off.
    pub image_weight: f64,
    /// ViLD: proposals (COCO results JSON over the training images) whose CLIP crop
    /// embeddings ViLD-image distills.
    pub proposals: Option<PathBuf>,
    /// ViLD: proposals per training image distilled (the top-scored ones).
    pub distill_per_image: usize,
    /// ViLD: the box head trains and evaluates on the top `proposals_per_image` proposals of
    /// `proposals` (precomputed, as the paper does) instead of the RPN's; the RPN still trains.
    pub file_proposals: bool,
    /// ViLD: where the CLIP embeddings of the proposal crops are cached (default:
    /// `<run.output>/vild_crop_embeddings.safetensors`).
    pub distill_cache: Option<PathBuf>,
    /// GLIP: deep-fusion layers (cross-modality attention between image and text features).
    pub fusion_layers: usize,
    /// GLIP: attention heads of the fusion layers.
    pub heads: usize,
    /// GLIP: train on captions with phrase boxes (`tokens_positive`) where images have them,
    /// on category prompts ("car. person. bicycle") otherwise.
    pub captions: bool,
    /// GLIP: each training image's category prompt lists its positive categories and sampled
    /// negatives in a random order, drawn anew each epoch (official `DATASETS.DISABLE_SHUFFLE
    /// = False`); `false`: every image gets the prompt of all base categories in order.
    pub shuffle_prompt: bool,
    /// GLIP: negative categories drawn per training image at most (official
    /// `DATASETS.RANDOM_SAMPLE_NEG`, 85 in the pretraining configs); the text context can cut
    /// them further. 0: positives only.
    #[serde(deserialize_with = "negative_count")]
    pub max_negatives: usize,
    /// GLIP: probability that an image draws all `max_negatives` negatives rather than a
    /// uniform number from 1 to `max_negatives` (official `DATASETS.CONTROL_PROB[2]`, 0.5).
    pub all_negatives_prob: f64,
    /// Detections below this score are dropped.
    pub score_threshold: f64,
    /// IoU above which class-wise NMS suppresses a detection.
    pub nms_iou: f64,
    /// Detections kept per image.
    pub max_detections: usize,
}

impl Default for DetectionSection {
    fn default() -> Self {
        Self {
            train_images: None,
            val_images: None,
            novel: Vec::new(),
            novel_rare: false,
            image_size: 224,
            flip: true,
            templates: vec!["a photo of a {}.".into()],
            anchor_sizes: vec![32.0, 64.0, 128.0],
            anchor_ratios: vec![0.5, 1.0, 2.0],
            hidden: 256,
            proposals_per_image: 100,
            temperature: 0.01,
            text_weight: 1.0,
            image_weight: 0.5,
            proposals: None,
            distill_per_image: 10,
            file_proposals: false,
            distill_cache: None,
            fusion_layers: 1,
            heads: 8,
            captions: true,
            shuffle_prompt: true,
            max_negatives: NegativeSampling::default().max_negatives,
            all_negatives_prob: NegativeSampling::default().all_negatives_prob,
            score_threshold: 0.05,
            nms_iou: 0.5,
            max_detections: 100,
        }
    }
}

impl DetectionSection {
    /// The detection settings shared by both methods.
    pub fn detect_options(&self) -> DetectOptions {
        DetectOptions {
            score_threshold: self.score_threshold as f32,
            nms_iou: self.nms_iou as f32,
            max_per_image: self.max_detections,
        }
    }

    /// The detector (backbone, RPN, box head) of ViLD.
    pub fn detector_config(&self) -> DetectorConfig {
        DetectorConfig::new()
            .with_anchor_sizes(self.anchor_sizes.clone())
            .with_anchor_ratios(self.anchor_ratios.clone())
            .with_hidden(self.hidden)
            .with_post_nms(self.proposals_per_image)
    }

    /// ViLD's configuration.
    pub fn vild_config(&self) -> VildConfig {
        VildConfig::new(self.detector_config())
            .with_temperature(self.temperature as f32)
            .with_text_weight(self.text_weight as f32)
            .with_image_weight(self.image_weight as f32)
    }

    /// How GLIP's category prompts sample negatives; `None` with `shuffle_prompt = false`
    /// (the fixed prompt of all base categories).
    pub fn negative_sampling(&self) -> Option<NegativeSampling> {
        self.shuffle_prompt.then_some(NegativeSampling { max_negatives: self.max_negatives, all_negatives_prob: self.all_negatives_prob })
    }

    /// GLIP's configuration.
    pub fn glip_config(&self) -> GlipConfig {
        GlipConfig::new()
            .with_anchor_sizes(self.anchor_sizes.clone())
            .with_anchor_ratios(self.anchor_ratios.clone())
            .with_hidden(self.hidden)
            .with_fusion_layers(self.fusion_layers)
            .with_fusion_heads(self.heads)
    }
}

/// `max_negatives`, refusing a negative count with the key named (the official
/// `RANDOM_SAMPLE_NEG = -1` has no counterpart: `shuffle_prompt = false` is the fixed prompt).
fn negative_count<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<usize, D::Error> {
    let count = i64::deserialize(deserializer)?;
    usize::try_from(count).map_err(|_| {
        serde::de::Error::custom(format!(
            "max_negatives = {count}: give 0 or more negatives per image (0: positives only; \
             shuffle_prompt = false for the fixed prompt of every category)"
        ))
    })
}

/// Checks what serde cannot: the data format, folders, ranges and ViLD-image's proposals.
pub fn validate(det: &DetectionSection, run: &RunContext) -> Result<(), String> {
    for (split, data) in [("train", Some(&run.data.train)), ("val", run.data.val.as_ref())] {
        if let Some(data) = data.filter(|d| d.extension().is_none_or(|e| e != "json")) {
            return Err(format!("data.{split} = {}: detection data is a COCO JSON file", data.display()));
        }
    }
    for (key, dir) in [("train_images", &det.train_images), ("val_images", &det.val_images)] {
        if let Some(dir) = dir.as_ref().filter(|d| !d.is_dir()) {
            return Err(format!("detection.{key} = {}: no such folder", dir.display()));
        }
    }
    if det.image_size == 0 {
        return Err("detection.image_size must be at least 1".into());
    }
    if det.anchor_sizes.is_empty() || det.anchor_sizes.iter().any(|s| !s.is_finite() || *s <= 0.0) {
        return Err(format!("detection.anchor_sizes = {:?}: give at least one positive size", det.anchor_sizes));
    }
    if det.anchor_ratios.is_empty() || det.anchor_ratios.iter().any(|r| !r.is_finite() || *r <= 0.0) {
        return Err(format!("detection.anchor_ratios = {:?}: give at least one positive ratio", det.anchor_ratios));
    }
    let checks: [(bool, String); 10] = [
        (det.hidden > 0, "detection.hidden must be at least 1".into()),
        (det.proposals_per_image > 0, "detection.proposals_per_image must be at least 1".into()),
        (det.temperature > 0.0, format!("detection.temperature = {} must be positive", det.temperature)),
        (det.text_weight >= 0.0, format!("detection.text_weight = {} must not be negative", det.text_weight)),
        (det.image_weight >= 0.0, format!("detection.image_weight = {} must not be negative", det.image_weight)),
        (det.heads > 0, "detection.heads must be at least 1".into()),
        (
            (0.0..=1.0).contains(&det.all_negatives_prob),
            format!("detection.all_negatives_prob = {} must be in [0, 1]", det.all_negatives_prob),
        ),
        ((0.0..=1.0).contains(&det.score_threshold), format!("detection.score_threshold = {} must be in [0, 1]", det.score_threshold)),
        ((0.0..=1.0).contains(&det.nms_iou), format!("detection.nms_iou = {} must be in [0, 1]", det.nms_iou)),
        (det.max_detections > 0, "detection.max_detections must be at least 1".into()),
    ];
    if let Some((_, message)) = checks.into_iter().find(|(ok, _)| !ok) {
        return Err(message);
    }
    if det.templates.is_empty() || det.templates.iter().any(|t| !t.contains("{}")) {
        return Err("detection.templates: give at least one template, each with a {} for the name".into());
    }
    if det.file_proposals && det.proposals.is_none() {
        return Err("detection.file_proposals needs detection.proposals, a COCO results JSON of proposals".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clip_task::{DataSection, ModelSection};

    use super::*;

    #[test]
    fn glip_prompt_keys_default_to_the_official_values_and_bad_values_name_the_key() {
        let det = DetectionSection::default();
        assert!(det.shuffle_prompt);
        assert_eq!(det.negative_sampling(), Some(NegativeSampling { max_negatives: 85, all_negatives_prob: 0.5 }));
        let fixed = DetectionSection { shuffle_prompt: false, ..det.clone() };
        assert_eq!(fixed.negative_sampling(), None);

        let parsed: DetectionSection = serde_json::from_value(serde_json::json!({"max_negatives": 3})).unwrap();
        assert_eq!(parsed.max_negatives, 3);
        let negative = serde_json::from_value::<DetectionSection>(serde_json::json!({"max_negatives": -1})).unwrap_err();
        assert!(negative.to_string().contains("max_negatives = -1"), "{negative}");

        let run = RunContext::new(ModelSection::named("tiny"), DataSection::new("train.json"), "out");
        assert_eq!(validate(&det, &run), Ok(()));
        for prob in [-0.1, 1.5, f64::NAN] {
            let bad = DetectionSection { all_negatives_prob: prob, ..det.clone() };
            let error = validate(&bad, &run).unwrap_err();
            assert!(error.starts_with("detection.all_negatives_prob"), "{error}");
        }
    }
}

//! `[segmentation]`: the label set and masks of segmentation data, and the settings of the
//! `groupvit` and `lseg` tasks.

use std::path::PathBuf;

use clip_task::RunContext;
use serde::{Deserialize, Serialize};

use crate::data::LabelSet;

/// `[segmentation]`: the label set and masks of segmentation data, and the settings of the
/// `groupvit` and `lseg` tasks.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SegmentationSection {
    /// Label names, one per line; mask value `k` is line `k + 1`.
    pub labels: PathBuf,
    /// Column of the data tables holding mask paths (PNG of label indices).
    pub mask_column: String,
    /// When `data.train` is a folder of images: the folder of their masks (same file stems).
    pub train_masks: Option<PathBuf>,
    /// When `data.train` is a folder: an image-set list (one stem a line) restricting it.
    pub train_list: Option<PathBuf>,
    /// When `data.val` is a folder of images: the folder of their masks.
    pub val_masks: Option<PathBuf>,
    /// When `data.val` is a folder: an image-set list restricting it.
    pub val_list: Option<PathBuf>,
    /// Mask value of unlabelled pixels, left out of the loss and the metrics.
    pub ignore_index: i64,
    /// ADE20K's convention: mask value 0 is unlabelled and `k` means label `k - 1`.
    pub reduce_zero_label: bool,
    /// Training augmentation: range of the random rescale before the square crop.
    pub scale: (f64, f64),
    /// Training augmentation: random horizontal flips.
    pub flip: bool,
    /// Prompt templates turning label names into text, `{}` standing for the name.
    pub templates: Vec<String>,
    /// LSeg: channels of the DPT decoder.
    pub decoder_features: usize,
    /// LSeg: the four ViT layers (0-based) the decoder reads (empty: evenly spaced).
    pub hooks: Vec<usize>,
    /// LSeg: how the class token enters the decoder: `ignore`, `add` or `project`.
    pub readout: String,
    /// LSeg: the spatial regularization blocks after the per-pixel logits.
    pub spatial_regularization: bool,
    /// GroupViT: noun prompts per caption for the multi-label contrastive loss (0: off).
    pub prompts_per_image: usize,
    /// GroupViT: weight of the multi-label contrastive loss.
    pub multi_label_weight: f64,
    /// GroupViT: nouns are words of this list (one per line) found in captions; without it,
    /// the label names, and without those a stopword heuristic.
    pub nouns: Option<PathBuf>,
    /// GroupViT: whether another image's prompt for a noun this image's caption also has is a
    /// `negative` of the image (the official code) or a `positive` (for small vocabularies,
    /// where such prompts fill the batch; see `GroupVitBatch::with_shared_nouns`).
    pub shared_nouns: String,
    /// GroupViT zero-shot segmentation: `hard` (NVlabs' evaluation: each pixel's argmax group,
    /// the top-k label filter, the background by threshold) or `soft` (Hugging Face's
    /// `segmentation_logits`, the background a text label).
    pub group_assignment: String,
    /// GroupViT (`hard`): labels kept per image, those its pooled embedding ranks highest
    /// (NVlabs: 5; 0 keeps all).
    pub top_k_labels: usize,
    /// GroupViT (`hard`): the label predicted where no other label scores above
    /// `background_threshold` (NVlabs' `with_bg`), when the label set has it; empty: none.
    pub background_label: String,
    /// GroupViT (`hard`): the background threshold (NVlabs: 0.95).
    pub background_threshold: f64,
    /// Evaluation and `segment`: sliding-window inference with square windows of this many
    /// pixels (mmseg's `slide` mode; NVlabs evaluates VOC with 448); 0: the whole image.
    pub window: usize,
    /// Step between windows, in pixels (NVlabs: 224); 0: half the window.
    pub window_stride: usize,
}

impl Default for SegmentationSection {
    fn default() -> Self {
        Self {
            labels: PathBuf::new(),
            mask_column: "mask".into(),
            train_masks: None,
            train_list: None,
            val_masks: None,
            val_list: None,
            ignore_index: 255,
            reduce_zero_label: false,
            scale: (0.5, 2.0),
            flip: true,
            templates: vec!["a photo of a {}.".into()],
            decoder_features: 256,
            hooks: Vec::new(),
            readout: "project".into(),
            spatial_regularization: false,
            prompts_per_image: 3,
            multi_label_weight: 1.0,
            nouns: None,
            shared_nouns: "negative".into(),
            group_assignment: "hard".into(),
            top_k_labels: 5,
            background_label: "background".into(),
            background_threshold: 0.95,
            window: 0,
            window_stride: 0,
        }
    }
}

/// Checks what serde cannot: files that must exist, ranges and choices.
pub fn validate(seg: &SegmentationSection, run: &RunContext) -> Result<(), String> {
    if seg.labels.as_os_str().is_empty() {
        return Err(format!("train.objective = {:?} needs segmentation.labels, the file of label names", run.objective));
    }
    if !seg.labels.is_file() {
        return Err(format!("segmentation.labels = {}: no such file", seg.labels.display()));
    }
    let (lo, hi) = seg.scale;
    if !(0.0 < lo && lo <= hi) {
        return Err(format!("segmentation.scale = {:?} must satisfy 0 < min <= max", seg.scale));
    }
    if seg.templates.is_empty() || seg.templates.iter().any(|t| !t.contains("{}")) {
        return Err("segmentation.templates: give at least one template, each with a {} for the label".into());
    }
    if !["ignore", "add", "project"].contains(&seg.readout.as_str()) {
        return Err(format!("segmentation.readout = {:?}: use \"ignore\", \"add\" or \"project\"", seg.readout));
    }
    if !seg.hooks.is_empty() && seg.hooks.len() != 4 {
        return Err(format!("segmentation.hooks = {:?}: give four layer indices (or none)", seg.hooks));
    }
    if seg.decoder_features == 0 {
        return Err("segmentation.decoder_features must be at least 1".into());
    }
    if !(seg.multi_label_weight.is_finite() && seg.multi_label_weight >= 0.0) {
        return Err(format!("segmentation.multi_label_weight = {} must not be negative", seg.multi_label_weight));
    }
    if !["negative", "positive"].contains(&seg.shared_nouns.as_str()) {
        return Err(format!("segmentation.shared_nouns = {:?}: use \"negative\" (the official code) or \"positive\"", seg.shared_nouns));
    }
    if !["hard", "soft"].contains(&seg.group_assignment.as_str()) {
        return Err(format!("segmentation.group_assignment = {:?}: use \"hard\" (NVlabs) or \"soft\" (Hugging Face)", seg.group_assignment));
    }
    if !(0.0..=1.0).contains(&seg.background_threshold) {
        return Err(format!("segmentation.background_threshold = {} must be in [0, 1]", seg.background_threshold));
    }
    if run.objective == "lseg" && (seg.window > 0 || seg.window_stride > 0) {
        return Err("segmentation.window and window_stride apply to GroupViT's evaluation; LSeg scores the whole image".into());
    }
    if seg.window_stride > seg.window {
        return Err(format!(
            "segmentation.window_stride = {} exceeds segmentation.window = {} (pixels would be skipped)",
            seg.window_stride, seg.window
        ));
    }
    if let Some(nouns) = seg.nouns.as_ref().filter(|n| !n.is_file()) {
        return Err(format!("segmentation.nouns = {}: no such file", nouns.display()));
    }
    let folders = [
        ("train", Some(&run.data.train), &seg.train_masks, &seg.train_list),
        ("val", run.data.val.as_ref(), &seg.val_masks, &seg.val_list),
    ];
    for (split, data, masks, list) in folders {
        let is_folder = data.is_some_and(|d| d.is_dir());
        match masks {
            None if is_folder => {
                return Err(format!("data.{split} is a folder of images: set segmentation.{split}_masks to the folder of their masks"));
            }
            Some(masks) if !masks.is_dir() => {
                return Err(format!("segmentation.{split}_masks = {}: no such folder", masks.display()));
            }
            _ => {}
        }
        if let Some(list) = list.as_ref().filter(|l| !l.is_file()) {
            return Err(format!("segmentation.{split}_list = {}: no such file", list.display()));
        }
    }
    Ok(())
}

/// The label set of `[segmentation]`.
pub fn label_set(seg: &SegmentationSection) -> anyhow::Result<LabelSet> {
    let mut labels = LabelSet::read(&seg.labels)?;
    labels.ignore_index = seg.ignore_index;
    labels.reduce_zero_label = seg.reduce_zero_label;
    Ok(labels)
}

//! Run configuration: a TOML file, then `CLIPFORGE_*` environment variables, then
//! `--set key=value` overrides, deserialized into typed sections that reject unknown keys and
//! validated so that every error names the file and the key.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::data::{DataError, PairTable};

/// A complete training run.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// Where and how the run executes.
    #[serde(default)]
    pub run: RunSection,
    /// The model to train.
    pub model: ModelSection,
    /// Training and validation data.
    pub data: DataSection,
    /// Optimization.
    #[serde(default)]
    pub train: TrainSection,
    /// Evaluation at the end of training (and by `clipforge eval`).
    #[serde(default)]
    pub eval: EvalSection,
    /// The teacher of the `distillation` objective.
    #[serde(default)]
    pub distill: Option<DistillSection>,
    /// Labels, masks and method settings of the `groupvit` and `lseg` objectives.
    #[serde(default)]
    pub segmentation: Option<SegmentationSection>,
    /// Clips, frame sampling and method settings of the `clip4clip` and `actionclip` objectives.
    #[serde(default)]
    pub video: Option<VideoSection>,
    /// Categories, proposals and method settings of the `vild` and `glip` objectives.
    #[serde(default)]
    pub detection: Option<DetectionSection>,
}

/// `[detection]`: the COCO-style data and settings of the `vild` (open-vocabulary detection)
/// and `glip` (grounding) objectives. `data.train` / `data.val` are COCO JSON files.
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
    /// on category prompts ("person. bicycle. car.") otherwise.
    pub captions: bool,
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
            score_threshold: 0.05,
            nms_iou: 0.5,
            max_detections: 100,
        }
    }
}

/// `[video]`: the clips and settings of the `clip4clip` (video-text retrieval) and
/// `actionclip` (action recognition) objectives.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VideoSection {
    /// Frames sampled uniformly from each clip (random within each segment while training).
    pub frames: usize,
    /// With an MSR-VTT annotation JSON as `data.train` / `data.val`: the folder of its videos
    /// (`<video_id>.mp4` files or `<video_id>/` frame folders).
    pub videos_dir: Option<PathBuf>,
    /// CLIP4Clip: similarity calculator, `meanP`, `seqLSTM`, `seqTransf` or `tightTransf`.
    pub similarity: String,
    /// CLIP4Clip: transformer (seqTransf) or LSTM (seqLSTM) layers over the frames.
    pub temporal_layers: usize,
    /// CLIP4Clip: layers of the tightTransf cross encoder.
    pub cross_layers: usize,
    /// CLIP4Clip: also report retrieval with the dual softmax at inference.
    pub dual_softmax: bool,
    /// ActionCLIP: temporal fusion of frame embeddings, `meanP` or `transf`.
    pub fusion: String,
    /// ActionCLIP: layers of the fusion transformer.
    pub fusion_layers: usize,
    /// Attention heads of the temporal, cross and fusion transformers.
    pub heads: usize,
    /// ActionCLIP: prompt templates turning an action label into text (`{}`: the label); one is
    /// drawn per video while training, all are averaged for evaluation.
    pub templates: Vec<String>,
}

impl Default for VideoSection {
    fn default() -> Self {
        Self {
            frames: 12,
            videos_dir: None,
            similarity: "meanP".into(),
            temporal_layers: 4,
            cross_layers: 4,
            dual_softmax: true,
            fusion: "transf".into(),
            fusion_layers: 6,
            heads: 8,
            templates: [
                "a photo of action {}", "a picture of action {}", "Human action of {}", "{}, an action",
                "{} this is an action", "{}, a video of action", "Playing action of {}", "{}",
                "Playing a kind of action, {}", "Doing a kind of action, {}", "Look, the human is {}",
                "Can you recognize the action of {}?", "Video classification of {}", "A video of {}",
                "The man is {}", "The woman is {}",
            ]
            .map(String::from)
            .to_vec(),
        }
    }
}

/// `[segmentation]`: the label set and masks of segmentation data, and the settings of the
/// `groupvit` and `lseg` objectives.
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
        }
    }
}

/// `[distill]`: the frozen teacher whose image embeddings the student learns.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DistillSection {
    /// Teacher architecture: a named model or a JSON config.
    pub teacher_model: String,
    /// Teacher weights (open_clip / Hugging Face layout, or a run's checkpoint folder).
    pub teacher_weights: PathBuf,
    /// Distance between embeddings: `l1` or `l2`.
    #[serde(default = "default_distill_loss")]
    pub loss: String,
    /// Where the teacher's embeddings of the training images are cached
    /// (default `<output>/teacher_embeddings.safetensors`).
    #[serde(default)]
    pub cache: Option<PathBuf>,
}

fn default_distill_loss() -> String {
    "l1".into()
}

/// `[run]`: output, backend, seed.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunSection {
    /// Output directory (checkpoints, metrics, summary); `--output` overrides it.
    pub output: PathBuf,
    /// Backend: `flex` (CPU), `wgpu` or `cuda`.
    pub device: String,
    /// Seed of model initialization, shuffling and augmentation.
    pub seed: u64,
    /// Float type of parameters and activations: `f32`, `bf16` or `f16` (where the backend
    /// supports it).
    pub precision: String,
}

impl Default for RunSection {
    fn default() -> Self {
        Self {
            output: PathBuf::from("runs/default"),
            device: "flex".into(),
            seed: 0,
            precision: "f32".into(),
        }
    }
}

/// `[model]`: architecture and optional starting weights.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// A named architecture (`ViT-B-32`) or the path of an open_clip / Hugging Face JSON config.
    pub name: String,
    /// Checkpoint to fine-tune from (open_clip or Hugging Face layout); random init if absent.
    #[serde(default)]
    pub weights: Option<PathBuf>,
}

/// `[data]`: image-caption tables in open_clip's CSV/TSV layout.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    /// Training data: a `.csv`/`.tsv`/`.jsonl` table (image paths relative to its folder) or a
    /// folder of class subfolders.
    pub train: PathBuf,
    /// Validation data, in the same forms, for the end-of-training evaluation.
    #[serde(default)]
    pub val: Option<PathBuf>,
    /// Without `val`: hold out this seeded random fraction of `train` for validation (0: none).
    #[serde(default)]
    pub val_fraction: f64,
    /// Caption of the images of a class folder, `{}` standing for the class name.
    #[serde(default = "default_caption_template")]
    pub caption_template: String,
    /// Column holding image paths.
    #[serde(default = "default_image_column")]
    pub image_column: String,
    /// Column holding captions.
    #[serde(default = "default_caption_column")]
    pub caption_column: String,
    /// Column holding class names, for zero-shot evaluation.
    #[serde(default)]
    pub label_column: Option<String>,
    /// Skip (and count) unreadable images instead of stopping the run.
    #[serde(default)]
    pub skip_bad_samples: bool,
    /// Threads decoding and transforming images.
    #[serde(default = "default_workers")]
    pub workers: usize,
    /// Range of the random-resized-crop area during training.
    #[serde(default = "default_crop_scale")]
    pub crop_scale: (f64, f64),
}

fn default_image_column() -> String {
    "filepath".into()
}
fn default_caption_column() -> String {
    "title".into()
}
fn default_caption_template() -> String {
    "a photo of a {}.".into()
}
fn default_workers() -> usize {
    2
}
fn default_crop_scale() -> (f64, f64) {
    (0.9, 1.0)
}

/// `[train]`: objective and optimizer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainSection {
    /// What is trained: `contrastive` (CLIP on image-caption pairs), `supervised` (image
    /// classifier on `data.label_column`) or `distillation` (image tower towards `[distill]`).
    pub objective: String,
    /// Contrastive loss: `infonce` (open_clip's ClipLoss) or `siglip` (needs a model config
    /// with `init_logit_bias`).
    pub loss: String,
    /// Supervised: start the classifier head from the zero-shot classifier (`true`) or at random.
    pub zero_shot_head: bool,
    /// Supervised: label smoothing of the cross-entropy (0: none).
    pub label_smoothing: f64,
    /// Samples per batch.
    pub batch_size: usize,
    /// Batches whose gradients are averaged into one optimizer step. Each batch is its own
    /// contrastive problem (negatives come from the batch), unlike open_clip's `accum_freq`.
    pub accumulate_batches: usize,
    /// Passes over the training data.
    pub epochs: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// AdamW decoupled weight decay (not applied to gains, biases, 1-D embeddings, logit scale).
    pub weight_decay: f64,
    /// AdamW beta 1.
    pub beta1: f64,
    /// AdamW beta 2.
    pub beta2: f64,
    /// AdamW epsilon.
    pub eps: f64,
    /// Linear warm-up steps.
    pub warmup_steps: usize,
    /// Schedule after warm-up: `cosine` or `constant`.
    pub schedule: String,
    /// Clip the global gradient norm to this value (0: off).
    pub grad_clip_norm: f64,
    /// Parameter path prefixes to freeze (`visual` locks the image tower as in LiT).
    pub freeze: Vec<String>,
    /// Parameters with their own peak learning rate (a pretrained backbone slower than new
    /// heads); later groups win where prefixes overlap.
    pub lr_groups: Vec<LrGroup>,
    /// Write a checkpoint every this many steps (0: only at the end).
    pub checkpoint_every: usize,
    /// Checkpoints to keep.
    pub keep_checkpoints: usize,
    /// Append to `metrics.jsonl` every this many steps.
    pub log_every: usize,
    /// Stop after this many steps even if epochs remain (0: no limit).
    pub max_steps: usize,
}

impl Default for TrainSection {
    fn default() -> Self {
        Self {
            objective: "contrastive".into(),
            loss: "infonce".into(),
            zero_shot_head: true,
            label_smoothing: 0.0,
            batch_size: 64,
            accumulate_batches: 1,
            epochs: 1,
            lr: 5e-4,
            weight_decay: 0.2,
            beta1: 0.9,
            beta2: 0.98,
            eps: 1e-6,
            warmup_steps: 0,
            schedule: "cosine".into(),
            grad_clip_norm: 0.0,
            freeze: Vec::new(),
            lr_groups: Vec::new(),
            checkpoint_every: 0,
            keep_checkpoints: 2,
            log_every: 10,
            max_steps: 0,
        }
    }
}

/// `[[train.lr_groups]]`: parameters trained at their own peak learning rate, which follows
/// the run's warm-up and schedule.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LrGroup {
    /// Parameter path prefixes in the trained model, matched as `train.freeze` matches them
    /// (`clip` is the whole CLIP of CLIP4Clip).
    pub prefixes: Vec<String>,
    /// Peak learning rate of these parameters.
    pub lr: f64,
}

/// `[eval]`: zero-shot classification and retrieval on the validation table.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvalSection {
    /// Class names for zero-shot classification (defaults to the labels found in the table).
    pub classes: Vec<String>,
    /// Prompt templates, `{}` standing for the class name (defaults to OpenAI's 80).
    pub templates: Vec<String>,
    /// Images per forward pass during evaluation.
    pub batch_size: usize,
}

impl Default for EvalSection {
    fn default() -> Self {
        Self {
            classes: Vec::new(),
            templates: Vec::new(),
            batch_size: 256,
        }
    }
}

/// A configuration problem, naming the file and the key.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {message}")]
pub struct ConfigError {
    /// The configuration file.
    pub file: PathBuf,
    /// What is wrong, with the key.
    pub message: String,
}

impl RunConfig {
    /// The training table and the validation table (`data.val`, or the `data.val_fraction`
    /// split off the training table), read from disk.
    pub fn tables(&self) -> Result<(PairTable, Option<PairTable>), DataError> {
        let train = PairTable::read(&self.data.train, &self.data)?;
        self.with_validation(train, |val| PairTable::read(val, &self.data))
    }

    /// Reads `path`, layers `CLIPFORGE_<SECTION>__<KEY>` environment variables and `overrides`
    /// (`section.key=value`) on top, and validates the result.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self, ConfigError> {
        let error = |message: String| ConfigError {
            file: path.to_path_buf(),
            message,
        };
        if !path.is_file() {
            return Err(error("no such configuration file".into()));
        }
        let mut builder = config::Config::builder()
            .add_source(config::File::from(path).format(config::FileFormat::Toml))
            .add_source(
                config::Environment::with_prefix("CLIPFORGE")
                    .prefix_separator("_")
                    .separator("__")
                    .try_parsing(true),
            );
        for item in overrides {
            let (key, value) = item
                .split_once('=')
                .ok_or_else(|| error(format!("--set {item:?} is not key=value")))?;
            builder = builder
                .set_override(key.trim(), parse_override(value.trim()))
                .map_err(|e| error(format!("--set {item:?}: {e}")))?;
        }
        let config: Self = builder
            .build()
            .and_then(|c| c.try_deserialize())
            .map_err(|e| error(e.to_string()))?;
        config.validate().map_err(error)?;
        Ok(config)
    }

    /// Checks the `[detection]` section the `vild` and `glip` objectives need.
    fn validate_detection(&self) -> Result<(), String> {
        let objective = &self.train.objective;
        let det = self
            .detection
            .as_ref()
            .ok_or_else(|| format!("train.objective = {objective:?} needs a [detection] section"))?;
        for (split, data) in [("train", Some(&self.data.train)), ("val", self.data.val.as_ref())] {
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
        let checks: [(bool, String); 9] = [
            (det.hidden > 0, "detection.hidden must be at least 1".into()),
            (det.proposals_per_image > 0, "detection.proposals_per_image must be at least 1".into()),
            (det.temperature > 0.0, format!("detection.temperature = {} must be positive", det.temperature)),
            (det.text_weight >= 0.0, format!("detection.text_weight = {} must not be negative", det.text_weight)),
            (det.image_weight >= 0.0, format!("detection.image_weight = {} must not be negative", det.image_weight)),
            (det.heads > 0, "detection.heads must be at least 1".into()),
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
        if objective == "vild" && det.image_weight > 0.0 {
            match &det.proposals {
                None => return Err("detection.image_weight > 0 (ViLD-image) needs detection.proposals, a COCO results JSON of proposals for the training images".into()),
                Some(file) if !file.is_file() => return Err(format!("detection.proposals = {}: no such file", file.display())),
                Some(_) if det.distill_per_image == 0 => return Err("detection.distill_per_image must be at least 1".into()),
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// Checks the `[video]` section the `clip4clip` and `actionclip` objectives need.
    fn validate_video(&self) -> Result<(), String> {
        let objective = &self.train.objective;
        let video = self.video.as_ref().ok_or_else(|| format!("train.objective = {objective:?} needs a [video] section"))?;
        if video.frames == 0 {
            return Err("video.frames must be at least 1".into());
        }
        if !["meanP", "seqLSTM", "seqTransf", "tightTransf"].contains(&video.similarity.as_str()) {
            return Err(format!(
                "video.similarity = {:?}: use \"meanP\", \"seqLSTM\", \"seqTransf\" or \"tightTransf\"",
                video.similarity
            ));
        }
        if !["meanP", "transf"].contains(&video.fusion.as_str()) {
            return Err(format!("video.fusion = {:?}: use \"meanP\" or \"transf\"", video.fusion));
        }
        if video.heads == 0 {
            return Err("video.heads must be at least 1".into());
        }
        if video.templates.is_empty() || video.templates.iter().any(|t| !t.contains("{}")) {
            return Err("video.templates: give at least one template, each with a {} for the label".into());
        }
        let msrvtt = [Some(&self.data.train), self.data.val.as_ref()].into_iter().flatten().any(|p| p.extension().is_some_and(|e| e == "json"));
        match &video.videos_dir {
            None if msrvtt => return Err("data.train / data.val is an MSR-VTT JSON: set video.videos_dir to the folder of its videos".into()),
            Some(dir) if !dir.is_dir() => return Err(format!("video.videos_dir = {}: no such folder", dir.display())),
            _ => {}
        }
        Ok(())
    }

    /// Checks the `[segmentation]` section the `groupvit` and `lseg` objectives need.
    fn validate_segmentation(&self) -> Result<(), String> {
        let objective = &self.train.objective;
        let seg = self
            .segmentation
            .as_ref()
            .ok_or_else(|| format!("train.objective = {objective:?} needs a [segmentation] section"))?;
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
        if let Some(nouns) = seg.nouns.as_ref().filter(|n| !n.is_file()) {
            return Err(format!("segmentation.nouns = {}: no such file", nouns.display()));
        }
        let folders = [
            ("train", Some(&self.data.train), &seg.train_masks, &seg.train_list),
            ("val", self.data.val.as_ref(), &seg.val_masks, &seg.val_list),
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

    /// Checks values serde cannot: ranges, choices and the existence of input files.
    pub fn validate(&self) -> Result<(), String> {
        let t = &self.train;
        let checks: [(bool, String); 13] = [
            (t.batch_size > 0, "train.batch_size must be at least 1".into()),
            (t.accumulate_batches > 0, "train.accumulate_batches must be at least 1".into()),
            (t.epochs > 0, "train.epochs must be at least 1".into()),
            (t.lr.is_finite() && t.lr > 0.0, format!("train.lr = {} must be positive", t.lr)),
            (t.weight_decay >= 0.0, format!("train.weight_decay = {} must not be negative", t.weight_decay)),
            ((0.0..1.0).contains(&t.beta1), format!("train.beta1 = {} must be in [0, 1)", t.beta1)),
            ((0.0..1.0).contains(&t.beta2), format!("train.beta2 = {} must be in [0, 1)", t.beta2)),
            (t.eps > 0.0, format!("train.eps = {} must be positive", t.eps)),
            (t.grad_clip_norm >= 0.0, format!("train.grad_clip_norm = {} must not be negative", t.grad_clip_norm)),
            (["infonce", "siglip"].contains(&t.loss.as_str()), format!("train.loss = {:?}: use \"infonce\" or \"siglip\"", t.loss)),
            (["cosine", "constant"].contains(&t.schedule.as_str()), format!("train.schedule = {:?}: use \"cosine\" or \"constant\"", t.schedule)),
            (t.keep_checkpoints > 0, "train.keep_checkpoints must be at least 1".into()),
            (self.eval.batch_size > 0, "eval.batch_size must be at least 1".into()),
        ];
        if let Some((_, message)) = checks.into_iter().find(|(ok, _)| !ok) {
            return Err(message);
        }
        for (i, group) in t.lr_groups.iter().enumerate() {
            if !(group.lr.is_finite() && group.lr >= 0.0) {
                return Err(format!("train.lr_groups[{i}].lr = {} must be a finite, non-negative number", group.lr));
            }
            if group.prefixes.is_empty() || group.prefixes.iter().any(|p| p.is_empty()) {
                return Err(format!("train.lr_groups[{i}].prefixes must list non-empty parameter path prefixes"));
            }
        }
        match t.objective.as_str() {
            "contrastive" => {}
            "supervised" if self.data.label_column.is_none() => {
                return Err("train.objective = \"supervised\" needs data.label_column".into());
            }
            "supervised" if !(0.0..1.0).contains(&t.label_smoothing) => {
                return Err(format!("train.label_smoothing = {} must be in [0, 1)", t.label_smoothing));
            }
            "supervised" => {}
            "distillation" => {
                let distill = self.distill.as_ref().ok_or("train.objective = \"distillation\" needs a [distill] section")?;
                if !["l1", "l2"].contains(&distill.loss.as_str()) {
                    return Err(format!("distill.loss = {:?}: use \"l1\" or \"l2\"", distill.loss));
                }
                if !distill.teacher_weights.exists() {
                    return Err(format!("distill.teacher_weights = {}: no such file", distill.teacher_weights.display()));
                }
                clip_core::ClipConfig::from_name_or_path(&distill.teacher_model)
                    .map_err(|e| format!("distill.teacher_model: {e}"))?;
            }
            "groupvit" | "lseg" => self.validate_segmentation()?,
            "clip4clip" | "actionclip" => self.validate_video()?,
            "vild" | "glip" => self.validate_detection()?,
            other => {
                return Err(format!(
                    "train.objective = {other:?}: use \"contrastive\", \"supervised\", \"distillation\", \"groupvit\", \"lseg\", \"clip4clip\", \"actionclip\", \"vild\" or \"glip\""
                ));
            }
        }
        if !["f32", "bf16", "f16"].contains(&self.run.precision.as_str()) {
            return Err(format!("run.precision = {:?}: use \"f32\", \"bf16\" or \"f16\"", self.run.precision));
        }
        let built = [("flex", true), ("wgpu", cfg!(feature = "wgpu")), ("cuda", cfg!(feature = "cuda"))];
        match built.iter().find(|(name, _)| *name == self.run.device) {
            None => return Err(format!("run.device = {:?}: use \"flex\", \"wgpu\" or \"cuda\"", self.run.device)),
            Some((name, false)) => {
                return Err(format!(
                    "run.device = \"{name}\": this clipforge was built without the {name} backend; \
                     rebuild with `cargo build --release -p clip-train --features {name}`"
                ));
            }
            Some(_) => {}
        }
        let (lo, hi) = self.data.crop_scale;
        if !(0.0 < lo && lo <= hi && hi <= 1.0) {
            return Err(format!("data.crop_scale = {:?} must satisfy 0 < min <= max <= 1", self.data.crop_scale));
        }
        if !self.data.train.exists() {
            return Err(format!("data.train = {}: no such file or folder", self.data.train.display()));
        }
        if let Some(val) = self.data.val.as_ref().filter(|v| !v.exists()) {
            return Err(format!("data.val = {}: no such file or folder", val.display()));
        }
        if !(0.0..1.0).contains(&self.data.val_fraction) {
            return Err(format!("data.val_fraction = {} must be in [0, 1)", self.data.val_fraction));
        }
        if self.data.val.is_some() && self.data.val_fraction > 0.0 {
            return Err("data.val and data.val_fraction are exclusive: give one".into());
        }
        if !self.data.caption_template.contains("{}") {
            return Err("data.caption_template needs a {} for the class name".into());
        }
        if let Some(weights) = self.model.weights.as_ref().filter(|w| !w.exists()) {
            return Err(format!("model.weights = {}: no such file", weights.display()));
        }
        if self.train.objective == "groupvit" {
            let hf_folder = self.model.weights.as_ref().filter(|w| w.is_dir() && !w.join("model.bpk").is_file());
            if hf_folder.is_none() {
                clip_seg::groupvit::GroupVitConfig::from_file(Path::new(&self.model.name))
                    .map_err(|e| format!("model.name: {e}"))?;
            }
        } else {
            clip_core::ClipConfig::from_name_or_path(&self.model.name).map_err(|e| format!("model.name: {e}"))?;
        }
        if self.eval.templates.iter().any(|t| !t.contains("{}")) {
            return Err("eval.templates: every template needs a {} for the class name".into());
        }
        Ok(())
    }
}

/// `--set` values: numbers and booleans typed, anything else a string.
fn parse_override(value: &str) -> config::Value {
    if let Ok(v) = value.parse::<i64>() {
        v.into()
    } else if let Ok(v) = value.parse::<f64>() {
        v.into()
    } else if let Ok(v) = value.parse::<bool>() {
        v.into()
    } else {
        value.into()
    }
}

//! `[video]`: the clips and settings of the `clip4clip` and `actionclip` tasks.

use std::path::PathBuf;

use clip_task::RunContext;
use serde::{Deserialize, Serialize};

/// `[video]`: the clips and settings of the `clip4clip` (video-text retrieval) and
/// `actionclip` (action recognition) tasks.
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
    /// ActionCLIP: temporal fusion of frame embeddings, `meanP`, `LSTM`, `Conv_1D`, `transf`
    /// (or `Transf`) or `Transf_cls`.
    pub fusion: String,
    /// ActionCLIP: layers of the `transf` and `Transf_cls` fusion transformers.
    pub fusion_layers: usize,
    /// Attention heads of the temporal, cross and fusion transformers.
    pub heads: usize,
    /// An official CLIP4Clip (`pytorch_model.bin.N`) or ActionCLIP (`.pt`) checkpoint, or one
    /// written by `clipforge export-official`: the model (CLIP and similarity calculator or
    /// fusion) is loaded from it, its architecture read off its keys, in place of `[model]`'s;
    /// `similarity` / `fusion` must name what it holds.
    pub official_checkpoint: Option<PathBuf>,
    /// ActionCLIP: prompt templates turning an action label into text (`{}`: the label); one is
    /// drawn per video while training, all are averaged for evaluation.
    pub templates: Vec<String>,
    /// Training augmentation: range of the random resized crop's area, one crop per clip
    /// (`[1.0, 1.0]`: none, as CLIP4Clip; ActionCLIP's multi-scale crop is about `[0.5, 1.0]`).
    pub crop_scale: (f64, f64),
    /// Training augmentation: probability that a clip is turned to gray (ActionCLIP: 0.2).
    pub grayscale: f64,
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
            official_checkpoint: None,
            templates: [
                "a photo of action {}", "a picture of action {}", "Human action of {}", "{}, an action",
                "{} this is an action", "{}, a video of action", "Playing action of {}", "{}",
                "Playing a kind of action, {}", "Doing a kind of action, {}", "Look, the human is {}",
                "Can you recognize the action of {}?", "Video classification of {}", "A video of {}",
                "The man is {}", "The woman is {}",
            ]
            .map(String::from)
            .to_vec(),
            crop_scale: (1.0, 1.0),
            grayscale: 0.0,
        }
    }
}

/// Checks what serde cannot: counts, choices, templates and the videos folder.
pub fn validate(video: &VideoSection, run: &RunContext) -> Result<(), String> {
    if video.frames == 0 {
        return Err("video.frames must be at least 1".into());
    }
    if !["meanP", "seqLSTM", "seqTransf", "tightTransf"].contains(&video.similarity.as_str()) {
        return Err(format!(
            "video.similarity = {:?}: use \"meanP\", \"seqLSTM\", \"seqTransf\" or \"tightTransf\"",
            video.similarity
        ));
    }
    if !["meanP", "LSTM", "Conv_1D", "transf", "Transf", "Transf_cls"].contains(&video.fusion.as_str()) {
        return Err(format!(
            "video.fusion = {:?}: use \"meanP\", \"LSTM\", \"Conv_1D\", \"transf\" or \"Transf_cls\"",
            video.fusion
        ));
    }
    if video.heads == 0 {
        return Err("video.heads must be at least 1".into());
    }
    if video.templates.is_empty() || video.templates.iter().any(|t| !t.contains("{}")) {
        return Err("video.templates: give at least one template, each with a {} for the label".into());
    }
    let (lo, hi) = video.crop_scale;
    if !(0.0 < lo && lo <= hi && hi <= 1.0) {
        return Err(format!("video.crop_scale = {:?} must satisfy 0 < min <= max <= 1", video.crop_scale));
    }
    if !(0.0..=1.0).contains(&video.grayscale) {
        return Err(format!("video.grayscale = {} must be a probability in [0, 1]", video.grayscale));
    }
    if let Some(file) = video.official_checkpoint.as_ref().filter(|f| !f.is_file()) {
        return Err(format!("video.official_checkpoint = {}: no such file", file.display()));
    }
    let msrvtt = [Some(&run.data.train), run.data.val.as_ref()].into_iter().flatten().any(|p| p.extension().is_some_and(|e| e == "json"));
    match &video.videos_dir {
        None if msrvtt => return Err("data.train / data.val is an MSR-VTT JSON: set video.videos_dir to the folder of its videos".into()),
        Some(dir) if !dir.is_dir() => return Err(format!("video.videos_dir = {}: no such folder", dir.display())),
        _ => {}
    }
    Ok(())
}

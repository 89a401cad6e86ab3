//! `clipforge detect` (boxes of any category list drawn on images) and `clipforge
//! pseudo-label` (a teacher's boxes for the phrases of captions, written as grounding data),
//! with a trained ViLD or GLIP.

use std::ops::Range;
use std::path::{Path, PathBuf};

use anyhow::Context;
use burn::tensor::{Device, Tensor};
use clip_core::ClipTokenizer;
use clip_core::preprocess::{Normalize, OPENAI_MEAN, OPENAI_STD, load_image, resize_bicubic};
use clip_task::RunContext;

use crate::boxes::{BoxXyxy, DetectOptions, Prediction};
use crate::data::{Annotation, Category, CocoDataset};
use crate::draw::{draw_detections, save_png};
use crate::task::open_detector::OpenDetector;
use crate::task::section::DetectionSection;

/// The name of the detection command.
pub const DETECT: &str = "detect";
/// The name of the pseudo-labelling command.
pub const PSEUDO_LABEL: &str = "pseudo-label";

/// `clipforge detect` arguments (after the run that holds the model).
#[derive(Debug, Clone, clap::Args)]
pub struct DetectArgs {
    /// Comma-separated category names (default: the categories of the config's `data.train`).
    #[arg(long)]
    pub labels: Option<String>,
    /// Images to detect in.
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
    /// Output folder.
    #[arg(long, default_value = "detected")]
    pub output: PathBuf,
    /// Lowest score drawn (default: the config's `detection.score_threshold`).
    #[arg(long)]
    pub threshold: Option<f32>,
}

/// `clipforge pseudo-label` arguments (after the run that holds the teacher).
#[derive(Debug, Clone, clap::Args)]
pub struct PseudoLabelArgs {
    /// COCO JSON of the images to label; each image needs a `caption`.
    #[arg(long)]
    pub data: PathBuf,
    /// Folder of its images (default: the JSON's folder).
    #[arg(long)]
    pub images: Option<PathBuf>,
    /// Comma-separated phrases to look for (default: the JSON's category names).
    #[arg(long)]
    pub phrases: Option<String>,
    /// Lowest teacher score kept as a pseudo-label.
    #[arg(long, default_value_t = 0.5)]
    pub threshold: f32,
    /// Output COCO JSON.
    #[arg(long)]
    pub output: PathBuf,
}

/// The two commands' definitions.
pub fn detection_commands() -> Vec<clap::Command> {
    use clap::Args;
    vec![
        DetectArgs::augment_args(clap::Command::new(DETECT).about(
            "Detect any list of categories in images with a ViLD or GLIP model; draws the boxes with their labels \
             (<image>.detections.png) and writes detections.json",
        )),
        PseudoLabelArgs::augment_args(clap::Command::new(PSEUDO_LABEL).about(
            "Pseudo-label caption data with a trained ViLD or GLIP teacher: boxes for the category names (or --phrases) \
             found in each image's caption, written as a COCO JSON with tokens_positive phrase spans (grounding data for GLIP)",
        )),
    ]
}

/// Runs command `name` of [`detection_commands`] with `loaded`.
pub fn run_detection_command(name: &str, args: &clap::ArgMatches, loaded: &Loaded<'_, impl OpenDetector>) -> anyhow::Result<()> {
    use clap::FromArgMatches;
    match name {
        DETECT => detect(loaded, &DetectArgs::from_arg_matches(args)?),
        PSEUDO_LABEL => pseudo_label(loaded, &PseudoLabelArgs::from_arg_matches(args)?),
        other => anyhow::bail!("no `{other}` command for detection runs"),
    }
}

/// A trained detector with what it needs to run on images.
pub struct Loaded<'a, D> {
    /// The detector.
    pub detector: D,
    /// Its tokenizer.
    pub tokenizer: &'a ClipTokenizer,
    /// The run's `[detection]` section.
    pub section: &'a DetectionSection,
    /// The run.
    pub run: &'a RunContext,
    /// Where the detector runs.
    pub device: Device,
}

impl<D> Loaded<'_, D> {
    /// The image resized and normalized as the network input `[1, 3, S, S]`.
    fn input(&self, image: &image::RgbImage) -> Tensor<4> {
        let size = self.section.image_size as u32;
        Normalize::new(OPENAI_MEAN, OPENAI_STD).apply(&resize_bicubic(image, size, size)).to_tensor(&self.device).unsqueeze_dim(0)
    }

    /// A box of the network input in the pixels of an image `width x height`.
    fn to_image(&self, bbox: &BoxXyxy, width: u32, height: u32) -> BoxXyxy {
        let size = self.section.image_size as f32;
        let (sx, sy) = (width as f32 / size, height as f32 / size);
        [bbox[0] * sx, bbox[1] * sy, bbox[2] * sx, bbox[3] * sy]
    }

    fn options(&self, threshold: Option<f32>) -> DetectOptions {
        let mut options = self.section.detect_options();
        if let Some(threshold) = threshold {
            options.score_threshold = threshold;
        }
        options
    }
}

/// The category names of a run's training data.
fn dataset_categories(run: &RunContext) -> anyhow::Result<Vec<String>> {
    let train = &run.data.train;
    let text = std::fs::read_to_string(train).with_context(|| format!("reading {}", train.display()))?;
    #[derive(serde::Deserialize)]
    struct Named {
        name: String,
    }
    #[derive(serde::Deserialize)]
    struct Categories {
        categories: Vec<Named>,
    }
    let parsed: Categories = serde_json::from_str(&text).with_context(|| format!("{}: categories", train.display()))?;
    Ok(parsed.categories.into_iter().map(|c| c.name).collect())
}

/// Detects the `--labels` (or the training categories) in each image, draws the boxes with
/// their labels on the images (`<stem>.detections.png` under `--output`) and writes all
/// detections to `<output>/detections.json`.
pub fn detect(loaded: &Loaded<'_, impl OpenDetector>, args: &DetectArgs) -> anyhow::Result<()> {
    let names: Vec<String> = match &args.labels {
        Some(list) => list.split(',').map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect(),
        None => dataset_categories(loaded.run)?,
    };
    anyhow::ensure!(!names.is_empty(), "--labels: give at least one category name");
    let options = loaded.options(args.threshold);
    let output = &args.output;
    std::fs::create_dir_all(output).with_context(|| format!("creating {}", output.display()))?;
    let mut results = Vec::new();
    for path in &args.images {
        let image = load_image(path)?;
        let predictions = loaded
            .detector
            .detect_in(loaded.input(&image), None, &names, loaded.tokenizer, &loaded.section.templates, &options)?
            .into_iter()
            .next()
            .unwrap_or_default();
        let boxes: Vec<(BoxXyxy, String, f32)> = predictions
            .iter()
            .map(|p| (loaded.to_image(&p.bbox, image.width(), image.height()), names[p.category].clone(), p.score))
            .collect();
        let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("image");
        save_png(&draw_detections(&image, &boxes), &output.join(format!("{stem}.detections.png")))?;
        let listed: Vec<String> = boxes.iter().take(5).map(|(_, name, score)| format!("{name} {score:.2}")).collect();
        println!("{}: {} boxes{}{}", path.display(), boxes.len(), if listed.is_empty() { "" } else { ": " }, listed.join(", "));
        for (bbox, label, score) in boxes {
            results.push(serde_json::json!({ "image": path, "label": label, "score": score, "bbox": bbox }));
        }
    }
    let file = output.join("detections.json");
    std::fs::write(&file, serde_json::to_string_pretty(&results)?).with_context(|| format!("writing {}", file.display()))?;
    println!("wrote {} images with boxes and {} to {}", args.images.len(), file.display(), output.display());
    Ok(())
}

/// Where each of `names` occurs in `caption` as whole words (ASCII case-insensitive): per name, its
/// char spans (empty when absent).
pub fn phrase_spans(caption: &str, names: &[String]) -> Vec<Vec<Range<usize>>> {
    let lower = caption.to_ascii_lowercase();
    let is_word = |c: char| c.is_alphanumeric();
    names
        .iter()
        .map(|name| {
            let needle = name.to_ascii_lowercase();
            let mut spans = Vec::new();
            let mut from = 0;
            while let Some(found) = lower[from..].find(&needle) {
                let (start, end) = (from + found, from + found + needle.len());
                let before = lower[..start].chars().next_back().is_none_or(|c| !is_word(c));
                let after = lower[end..].chars().next().is_none_or(|c| !is_word(c));
                if before && after {
                    spans.push(start..end);
                }
                from = end;
            }
            spans
        })
        .collect()
}

/// Pseudo-labels caption data with a trained teacher: for every image of the `--data` COCO
/// JSON (images with a `caption`), the teacher's boxes (score ≥ `threshold`) for the category
/// names (or `phrases`) found in the caption; written as a COCO JSON whose annotations carry
/// the phrases' `tokens_positive`, ready for GLIP training.
pub fn pseudo_label(loaded: &Loaded<'_, impl OpenDetector>, args: &PseudoLabelArgs) -> anyhow::Result<()> {
    let PseudoLabelArgs { data, images: images_dir, phrases, threshold, output } = args;
    let (data, phrases, threshold, output) = (data.as_path(), phrases.as_deref(), *threshold, output.as_path());
    let images_dir = images_dir.clone().unwrap_or_else(|| data.parent().map(Path::to_path_buf).unwrap_or_default());
    let mut dataset = CocoDataset::read(data, &images_dir)?;
    if let Some(list) = phrases {
        dataset.categories = list
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .enumerate()
            .map(|(i, name)| Category { id: i as u64 + 1, name: name.to_string(), frequency: None })
            .collect();
    }
    anyhow::ensure!(!dataset.categories.is_empty(), "{}: no categories: pass --phrases", data.display());
    let names: Vec<String> = dataset.categories.iter().map(|c| c.name.clone()).collect();
    let options = loaded.options(Some(threshold));
    let (mut next_id, mut captioned, mut boxes) = (1u64, 0usize, 0usize);
    let progress = indicatif::ProgressBar::new(dataset.images.len() as u64);
    for record in &mut dataset.images {
        progress.inc(1);
        record.annotations.clear();
        let Some(caption) = record.caption.clone() else { continue };
        captioned += 1;
        let spans = phrase_spans(&caption, &names);
        let present: Vec<usize> = (0..names.len()).filter(|&c| !spans[c].is_empty()).collect();
        if present.is_empty() {
            continue;
        }
        let image = load_image(&record.file)?;
        let input = loaded.input(&image);
        let phrases: Vec<Vec<Range<usize>>> = present.iter().map(|&c| spans[c].clone()).collect();
        let predictions: Vec<Prediction> = match loaded.detector.ground(input.clone(), loaded.tokenizer, &caption, &phrases, &options)? {
            Some(grounded) => grounded,
            None => {
                let present_names: Vec<String> = present.iter().map(|&c| names[c].clone()).collect();
                let templates = &loaded.section.templates;
                loaded.detector.detect_in(input, None, &present_names, loaded.tokenizer, templates, &options)?.into_iter().next().unwrap_or_default()
            }
        };
        for prediction in predictions {
            let category = present[prediction.category];
            record.annotations.push(Annotation {
                id: next_id,
                category,
                bbox: loaded.to_image(&prediction.bbox, image.width(), image.height()),
                iscrowd: false,
                tokens_positive: spans[category].clone(),
            });
            next_id += 1;
            boxes += 1;
        }
    }
    progress.finish_and_clear();
    dataset.write(output)?;
    println!("pseudo-labelled {captioned} captioned images with {boxes} boxes into {}", output.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::phrase_spans;

    #[test]
    fn phrases_are_found_as_whole_words() {
        let names = ["circle".to_string(), "square".to_string(), "star".to_string()];
        let spans = phrase_spans("A red Circle and a blue square; no starfish, one star.", &names);
        assert_eq!(spans[0], vec![6..12]);
        assert_eq!(spans[1], vec![24..30]);
        assert_eq!(spans[2], vec![49..53]);
    }
}

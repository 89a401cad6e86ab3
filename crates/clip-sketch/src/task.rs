//! The `clipasso` task: CLIPasso over the run's CLIP, with `clipforge sketch` drawing images
//! as strokes. Training a `clipasso` run trains its CLIP contrastively (as the `contrastive`
//! task), so one config can first fit a small CLIP to a toy dataset and then sketch with it;
//! `clipforge sketch RUN` without images sketches the validation table and reports the
//! paper's measure, the zero-shot recognition of the sketches, at several stroke counts.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context;
use burn::tensor::{Device, Tensor};
use clip_core::image_tower::ImageTowerConfig;
use clip_core::preprocess::{EvalTransformConfig, OPENAI_MEAN, OPENAI_STD};
use clip_core::{Clip, ClipConfig, ZeroShotClassifier};
use clip_task::clip_model::{check_clip_model, clip_config, tokenizer_of};
use clip_task::contrastive::{ContrastiveObjective, ContrastiveSection, ContrastiveTask};
use clip_task::eval::{class_names, templates};
use clip_task::pairs::{Batcher, PairBatch, PairTable};
use clip_task::{RunContext, Task};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

use crate::loss::LossConfig;
use crate::output::{Style, write_sketch};
use crate::raster::to_clip_input;
use crate::saliency::Relevancy;
use crate::sketcher::{Sketch, Sketcher, SketcherConfig};

/// `[sketch]`: CLIPasso's settings (the defaults are the paper's) and what `clipforge sketch`
/// scores.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SketchSection {
    /// Strokes per sketch.
    pub strokes: usize,
    /// Stroke counts the recognition accuracy is measured at (with `strokes`).
    pub stroke_counts: Vec<usize>,
    /// Stroke width in canvas pixels (the canvas is the image tower's input size).
    pub width: f64,
    /// Stroke opacity.
    pub opacity: f64,
    /// `"black"` strokes on white (the paper) or `"white"` on black.
    pub ink: String,
    /// Optimization steps per seed.
    pub iterations: usize,
    /// Adam's learning rate, in canvas pixels per step.
    pub lr: f64,
    /// Seeds; each sketches from its own initialization, the lowest final loss is kept.
    pub seeds: Vec<u64>,
    /// Softmax temperature of the saliency map the start points are drawn from.
    pub temperature: f64,
    /// The text whose CLIP logit with the image the attention relevancy explains (ViT image
    /// towers; a ResNet tower's relevancy is gradient x input and reads no text). The
    /// official code's `--text_target` default is `"none"`; an object's name gives a map of
    /// that object.
    pub text_target: String,
    /// Largest step between successive control points of a new stroke (canvas units).
    pub radius: f64,
    /// Geometric loss weights of the ResNet's stem, layer1, layer2, layer3, layer4.
    pub layer_weights: [f64; 5],
    /// Weight of the semantic (cosine) loss.
    pub semantic_weight: f64,
    /// Random augmentations per step.
    pub augmentations: usize,
    /// Perspective distortion scale of the augmentations.
    pub distortion: f64,
    /// Area fraction of the augmentations' random crop.
    pub crop_scale: f64,
    /// Samples per pixel along each axis in the rasterizer.
    pub supersample: usize,
    /// Points each stroke's curve is sampled at.
    pub points_per_stroke: usize,
    /// Width of the rasterizer's coverage ramp, in pixels.
    pub softness: f64,
    /// Record an animation frame every this many iterations (0: no GIF).
    pub frame_every: usize,
    /// Validation images per class that `clipforge sketch` without images sketches and scores.
    pub per_class: usize,
    /// PNG and GIF outputs are this many times the canvas.
    pub scale: u32,
}

impl Default for SketchSection {
    fn default() -> Self {
        let loss = LossConfig::new();
        Self {
            strokes: 16,
            stroke_counts: vec![4, 8, 16, 32],
            width: 1.5,
            opacity: 1.0,
            ink: "black".into(),
            iterations: 2000,
            lr: 1.0,
            seeds: vec![0, 1, 2],
            temperature: 0.3,
            text_target: "none".into(),
            radius: 0.05,
            layer_weights: loss.layer_weights,
            semantic_weight: loss.semantic_weight,
            augmentations: loss.augmentations,
            distortion: loss.distortion,
            crop_scale: loss.crop_scale,
            supersample: 2,
            points_per_stroke: 32,
            softness: 1.0,
            frame_every: 10,
            per_class: 2,
            scale: 4,
        }
    }
}

impl SketchSection {
    /// The sketcher's configuration for a canvas of `size` pixels and `strokes` strokes.
    pub fn sketcher(&self, size: usize, strokes: usize) -> SketcherConfig {
        let loss = LossConfig::new()
            .with_layer_weights(self.layer_weights)
            .with_semantic_weight(self.semantic_weight)
            .with_augmentations(self.augmentations)
            .with_distortion(self.distortion)
            .with_crop_scale(self.crop_scale);
        SketcherConfig::new(size)
            .with_strokes(strokes)
            .with_width(self.width)
            .with_opacity(self.opacity)
            .with_ink(if self.ink == "white" { 1.0 } else { 0.0 })
            .with_iterations(self.iterations)
            .with_lr(self.lr)
            .with_seeds(self.seeds.clone())
            .with_temperature(self.temperature)
            .with_radius(self.radius)
            .with_frame_every(self.frame_every)
            .with_supersample(self.supersample)
            .with_points_per_stroke(self.points_per_stroke)
            .with_softness(self.softness)
            .with_loss(loss)
    }

    /// The stroke counts scored: `stroke_counts` and `strokes`, ascending, once each.
    fn counts(&self) -> Vec<usize> {
        let mut counts = self.stroke_counts.clone();
        counts.push(self.strokes);
        counts.sort();
        counts.dedup();
        counts
    }
}

/// CLIPasso over the CLIP of `[model]`; trains that CLIP contrastively when asked to.
pub struct ClipassoTask {
    section: SketchSection,
    inner: ContrastiveTask,
    clip: ClipConfig,
}

impl ClipassoTask {
    fn run_context(&self) -> &RunContext {
        self.inner.run()
    }

    /// The CLIP's input side, the canvas side.
    fn size(&self) -> usize {
        self.clip.vision.image_size()
    }

    /// Loads `path` as CLIP's evaluation transform does, `[1, 3, size, size]`.
    fn load_image(&self, path: &std::path::Path, device: &Device) -> anyhow::Result<Tensor<4>> {
        let transform = EvalTransformConfig::new().with_image_size(self.size()).init();
        Ok(transform.load(path)?.to_tensor(device).unsqueeze_dim(0))
    }

    /// The sketcher of `strokes` strokes over `clip`'s image tower: with the attention
    /// relevancy for `section.text_target` when the tower is a ViT, gradient x input otherwise.
    fn sketcher(&self, clip: &Clip, section: &SketchSection, strokes: usize, device: &Device) -> anyhow::Result<Sketcher> {
        let sketcher = section.sketcher(self.size(), strokes).init(clip.visual.clone()).map_err(|e| anyhow::anyhow!("sketch.{e}"))?;
        if clip.visual.as_vit().is_none() {
            return Ok(sketcher);
        }
        let tokens = tokenizer_of(&self.clip)?.tokenize_batch(std::slice::from_ref(&section.text_target), device)?;
        let [_, dim] = clip.text.text_projection.dims();
        let target = clip.encode_text(tokens, true).reshape([dim]) * clip.logit_scale();
        sketcher.with_relevancy(Relevancy::Attention(target)).map_err(anyhow::Error::msg)
    }

    fn style(&self) -> Style {
        let ink = if self.section.ink == "white" { 1.0 } else { 0.0 };
        Style { size: self.size(), width: self.section.width as f32, opacity: self.section.opacity as f32, ink, scale: self.section.scale }
    }

    /// The validation rows sketched by the scored run: the first `per_class` of each class.
    fn scored_rows(&self, table: &PairTable, classes: &[String]) -> Vec<usize> {
        let mut taken: BTreeMap<&str, usize> = BTreeMap::new();
        let mut rows = Vec::new();
        for (row, pair) in table.pairs.iter().enumerate() {
            let Some(label) = pair.label.as_deref() else { continue };
            if !classes.iter().any(|c| c == label) {
                continue;
            }
            let count = taken.entry(label).or_default();
            if *count < self.section.per_class {
                *count += 1;
                rows.push(row);
            }
        }
        rows
    }

    /// Sketches the validation images at every stroke count and writes `summary.json`.
    fn score(&self, clip: &Clip, args: &SketchArgs, device: &Device) -> anyhow::Result<()> {
        let run = self.run_context();
        let table = run
            .val_table(None)?
            .with_context(|| format!("{}: `clipforge sketch` without images sketches data.val, and neither data.val nor data.val_fraction is set", run.file.display()))?;
        anyhow::ensure!(
            table.pairs.iter().all(|p| p.label.is_some()),
            "{}: scoring sketches needs labels (data.label_column)",
            table.path.display()
        );
        let classes = class_names(&run.eval, &table)?;
        let rows = self.scored_rows(&table, &classes);
        anyhow::ensure!(!rows.is_empty(), "{}: no row to sketch", table.path.display());
        let tokenizer = tokenizer_of(&self.clip)?;
        let classifier = ZeroShotClassifier::build(clip, &tokenizer, &classes, &templates(&run.eval), device)?;
        let mut section = self.section.clone();
        if let Some(strokes) = args.strokes {
            section.strokes = strokes;
        }
        if let Some(iterations) = args.iterations {
            section.iterations = iterations;
        }
        let counts = section.counts();
        let images: Vec<Tensor<4>> = rows.iter().map(|&row| self.load_image(&table.pairs[row].image, device)).collect::<anyhow::Result<_>>()?;
        let labels: Vec<usize> = rows
            .iter()
            .map(|&row| classes.iter().position(|c| Some(c.as_str()) == table.pairs[row].label.as_deref()).unwrap_or(0))
            .collect();
        let steps = (counts.len() * section.seeds.len() * section.iterations) as u64;
        let batch = Tensor::cat(images.clone(), 0);
        let progress = progress_bar(steps);
        let started = std::time::Instant::now();
        let correct = |embeddings: Tensor<2>| -> usize {
            classifier.top_k(embeddings, 1).iter().zip(&labels).filter(|(top, label)| top.first().is_some_and(|p| p.class == **label)).count()
        };
        let image_correct = correct(clip.encode_image(Tensor::cat(images.clone(), 0), true));
        let mut by_strokes = BTreeMap::new();
        let mut loss_by_strokes = BTreeMap::new();
        let style = self.style();
        for &count in &counts {
            let sketcher = self.sketcher(clip, &section, count, device)?;
            let sketches = sketcher.sketch_batch(batch.clone(), &mut || progress.inc(1))?;
            let mut inputs = Vec::new();
            let mut loss = 0.0;
            for (&row, sketch) in rows.iter().zip(sketches) {
                loss += sketch.loss;
                inputs.push(self.clip_input(&sketcher, &sketch, device));
                let stem = format!("{}-{count}", file_stem(&table.pairs[row].image));
                let keep_frames = count == section.strokes;
                let sketch = if keep_frames { sketch } else { Sketch { frames: Vec::new(), ..sketch } };
                write_sketch(&args.output, &stem, &sketch, style)?;
            }
            let hits = correct(clip.encode_image(Tensor::cat(inputs, 0), true));
            by_strokes.insert(count.to_string(), hits as f64 / rows.len() as f64);
            loss_by_strokes.insert(count.to_string(), loss / rows.len() as f64);
        }
        progress.finish_and_clear();
        let seconds = started.elapsed().as_secs_f64();
        let summary = serde_json::json!({
            "images": rows.len(),
            "classes": classes.len(),
            "strokes": section.strokes,
            "iterations": section.iterations,
            "seeds": section.seeds.len(),
            "recognition_top1": by_strokes[&section.strokes.to_string()],
            "recognition_by_strokes": by_strokes,
            "loss_by_strokes": loss_by_strokes,
            "image_top1": image_correct as f64 / rows.len() as f64,
            "chance_top1": 1.0 / classes.len() as f64,
            "seconds": seconds,
            // Every image of the batch moves one step per iteration.
            "seconds_per_iteration": seconds / steps.max(1) as f64,
        });
        let path = args.output.join("summary.json");
        std::fs::write(&path, serde_json::to_string_pretty(&summary)?).with_context(|| format!("writing {}", path.display()))?;
        println!("{}", serde_json::to_string_pretty(&summary)?);
        println!("summary written to {}", path.display());
        Ok(())
    }

    /// The finished sketch as CLIP's normalized input `[1, 3, size, size]`.
    fn clip_input(&self, sketcher: &Sketcher, sketch: &Sketch, device: &Device) -> Tensor<4> {
        let size = sketcher.config().size;
        let ink = Tensor::<1>::from_floats(sketch.ink.as_slice(), device).reshape([size, size]);
        to_clip_input(ink, sketcher.config().ink as f32, OPENAI_MEAN, OPENAI_STD)
    }

    /// Sketches the given images, writing SVG, PNG and GIF of each.
    fn sketch_files(&self, clip: &Clip, args: &SketchArgs, device: &Device) -> anyhow::Result<()> {
        let strokes = args.strokes.unwrap_or(self.section.strokes);
        let mut section = self.section.clone();
        if let Some(iterations) = args.iterations {
            section.iterations = iterations;
        }
        let sketcher = self.sketcher(clip, &section, strokes, device)?;
        let progress = progress_bar((section.seeds.len() * section.iterations) as u64);
        let images: Vec<Tensor<4>> = args.images.iter().map(|path| self.load_image(path, device)).collect::<anyhow::Result<_>>()?;
        let sketches = sketcher.sketch_batch(Tensor::cat(images, 0), &mut || progress.inc(1))?;
        for (path, sketch) in args.images.iter().zip(sketches) {
            write_sketch(&args.output, &file_stem(path), &sketch, self.style())?;
            progress.println(format!("{}: {strokes} strokes, loss {:.4} (seed {})", path.display(), sketch.loss, sketch.seed));
        }
        progress.finish_and_clear();
        println!("wrote {} sketches to {}", args.images.len(), args.output.display());
        Ok(())
    }
}

fn progress_bar(steps: u64) -> ProgressBar {
    let progress = ProgressBar::new(steps);
    if let Ok(style) = ProgressStyle::with_template("{bar:40} {pos}/{len} iterations, {elapsed} elapsed, {eta} left") {
        progress.set_style(style);
    }
    progress
}

fn file_stem(path: &std::path::Path) -> String {
    path.file_stem().and_then(|s| s.to_str()).unwrap_or("image").to_string()
}

impl Task for ClipassoTask {
    type Section = SketchSection;
    type Objective = ContrastiveObjective;
    type Source = Batcher;

    const SECTION: Option<&'static str> = Some("sketch");

    fn validate(section: &SketchSection, run: &RunContext) -> Result<(), String> {
        check_clip_model(run)?;
        if !["black", "white"].contains(&section.ink.as_str()) {
            return Err(format!("sketch.ink = {:?}: use \"black\" or \"white\"", section.ink));
        }
        if section.text_target.trim().is_empty() {
            return Err("sketch.text_target must not be empty (the official default is \"none\")".into());
        }
        if section.stroke_counts.contains(&0) {
            return Err("sketch.stroke_counts: every count must be at least 1".into());
        }
        if section.scale == 0 || section.scale > 64 {
            return Err(format!("sketch.scale = {} must be 1 to 64", section.scale));
        }
        let clip = clip_config(&run.model.name, run.model.weights.as_deref()).map_err(|e| format!("model.name: {e:#}"))?;
        section.sketcher(clip.vision.image_size(), section.strokes).validate("sketch.")?;
        if section.layer_weights.iter().any(|w| *w > 0.0) && !matches!(clip.vision, ImageTowerConfig::ResNet(_)) {
            return Err(format!(
                "sketch.layer_weights: the geometric loss reads a ResNet image tower's layers, and {} has a ViT \
                 (use a ResNet CLIP, or set every layer weight to 0)",
                run.model.name
            ));
        }
        ContrastiveTask::validate(&ContrastiveSection::default(), run)
    }

    fn new(section: SketchSection, run: RunContext) -> anyhow::Result<Self> {
        let clip = clip_config(&run.model.name, run.model.weights.as_deref())?;
        let inner = ContrastiveTask::new(ContrastiveSection::default(), run)?;
        Ok(Self { section, inner, clip })
    }

    fn run(&self) -> &RunContext {
        self.inner.run()
    }

    fn model(&self, device: &Device) -> anyhow::Result<Clip> {
        self.inner.model(device)
    }

    fn train_source(&mut self, model: &Clip, device: &Device) -> anyhow::Result<Batcher> {
        self.inner.train_source(model, device)
    }

    fn to_batch(&self, batch: PairBatch, device: &Device) -> anyhow::Result<clip_task::contrastive::ContrastiveBatch> {
        self.inner.to_batch(batch, device)
    }

    fn objective(&self) -> ContrastiveObjective {
        self.inner.objective()
    }

    fn evaluate(&self, model: &Clip, device: &Device) -> anyhow::Result<Option<serde_json::Value>> {
        self.inner.evaluate(model, device)
    }

    fn clip(&self, model: Clip, _device: &Device) -> anyhow::Result<Clip> {
        Ok(model)
    }

    fn commands() -> Vec<clap::Command> {
        vec![sketch_command()]
    }

    fn run_command(&self, name: &str, args: &clap::ArgMatches, model: Clip, device: &Device) -> anyhow::Result<()> {
        use clap::FromArgMatches;
        anyhow::ensure!(name == SKETCH, "CLIPasso has no `{name}` command");
        let args = SketchArgs::from_arg_matches(args)?;
        if args.strokes == Some(0) {
            anyhow::bail!("--strokes must be at least 1");
        }
        std::fs::create_dir_all(&args.output).with_context(|| format!("creating {}", args.output.display()))?;
        if args.images.is_empty() { self.score(&model, &args, device) } else { self.sketch_files(&model, &args, device) }
    }
}

/// The name of the command.
pub const SKETCH: &str = "sketch";

/// Draw images as Bezier strokes with CLIPasso (`clipforge sketch` arguments, after the run
/// that holds the model).
#[derive(Debug, Clone, clap::Args)]
pub struct SketchArgs {
    /// Images to sketch. Without any, the first `sketch.per_class` validation images of each
    /// class are sketched at every `sketch.stroke_counts` and scored by zero-shot recognition
    /// (`summary.json`).
    pub images: Vec<PathBuf>,
    /// Strokes per sketch (default: `sketch.strokes`).
    #[arg(long)]
    pub strokes: Option<usize>,
    /// Optimization steps per seed (default: `sketch.iterations`).
    #[arg(long)]
    pub iterations: Option<usize>,
    /// Output folder: `<image>.svg`, `<image>.png`, `<image>.gif` (with the stroke count in the
    /// name when scoring) and `summary.json`.
    #[arg(long, default_value = "sketches")]
    pub output: PathBuf,
}

/// The `sketch` command's definition.
pub fn sketch_command() -> clap::Command {
    use clap::Args;
    SketchArgs::augment_args(clap::Command::new(SKETCH).about(
        "Draw images as Bezier strokes with CLIPasso; writes SVG, PNG and an animated GIF per image, or, without \
         images, sketches and scores the validation images",
    ))
}

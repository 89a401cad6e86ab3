//! The `depthclip` task: DepthCLIP's zero-shot depth evaluated on a table of images and 16-bit
//! depth PNGs (NYU Depth v2's layout), `clipforge depth` writing depth maps of any images, and,
//! as an extension of the paper, fine-tuning on measured depth with the scale-invariant loss.

use std::path::{Path, PathBuf};

use anyhow::Context;
use burn::tensor::{Device, Tensor, TensorData};
use clip_core::weights::Checkpoint;
use clip_core::image_tower::ImageTowerConfig;
use clip_core::{Clip, ClipConfig, ClipTokenizer};
use clip_task::data::{DataError, keep_readable, load_on_workers};
use clip_task::{BatchSource, LoadedBatch, RunContext, Task};
use serde::{Deserialize, Serialize};

use crate::depthclip::io::{DepthMap, NYU_TEST_CROP, image_tensor, read_rgb, read_sample, write_colorized_depth_png, write_depth_png};
use crate::depthclip::metrics::{EvalOptions, MetricsMean, depth_metrics};
use crate::depthclip::model::prompt_tokens;
use crate::depthclip::{DenseClip, DenseClipConfig, DepthBatch, DepthClip, DepthClipConfig, DepthClipObjective, official};
use crate::depthclip::config::{PAPER_BINS, PAPER_DEPTH_CLASSES, PAPER_TEMPERATURE};

/// `[depthclip]`: DepthCLIP's prompts and bins, and how its depth data is read and scored.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DepthClipSection {
    /// Distance words, one per bin (the paper's seven, "giant" to "unseen").
    pub distances: Vec<String>,
    /// Depth of each bin in metres (the paper's, 1.00 to 9.75).
    pub bins: Vec<f32>,
    /// Softmax temperature (the paper: 0.1).
    pub temperature: f64,
    /// Average with the prediction of the flipped image, as the official evaluation.
    pub flip_average: bool,
    /// Units per metre of the depth PNGs (NYU: 1000, KITTI: 256).
    pub depth_scale: f32,
    /// `depthclip_nyu` (the official evaluation: the 544 x 416 NYU input crop, its prediction
    /// pasted into the 640 x 480 frame, the official crop, depths in (1 mm, 10 m)), `eigen_nyu`
    /// (the same input, the Eigen crop), `garg_kitti` (the whole image, the Garg crop, up to 80 m)
    /// or `whole` (the whole image, every measured pixel).
    pub protocol: String,
}

impl Default for DepthClipSection {
    fn default() -> Self {
        Self {
            distances: PAPER_DEPTH_CLASSES.iter().map(|s| s.to_string()).collect(),
            bins: PAPER_BINS.to_vec(),
            temperature: PAPER_TEMPERATURE,
            flip_average: true,
            depth_scale: 1000.0,
            protocol: "depthclip_nyu".into(),
        }
    }
}

impl DepthClipSection {
    /// Whether images are cut to the NYU input crop.
    fn nyu_input(&self) -> bool {
        self.protocol.ends_with("_nyu")
    }

    /// The metric options of the protocol.
    fn eval_options(&self) -> EvalOptions {
        match self.protocol.as_str() {
            "depthclip_nyu" => EvalOptions::depthclip_nyu(),
            "eigen_nyu" => EvalOptions::eigen_nyu(),
            "garg_kitti" => EvalOptions::garg_kitti(),
            _ => EvalOptions::default(),
        }
    }
}

/// One row of a depth table: an image and its depth PNG.
#[derive(Debug, Clone)]
struct DepthRow {
    image: PathBuf,
    depth: PathBuf,
    line: usize,
}

/// A table of `image<TAB>depth` rows (paths relative to the table's folder; a header row
/// `image<TAB>depth` is skipped), read as a [`BatchSource`].
#[derive(Debug, Clone)]
pub struct DepthTable {
    path: PathBuf,
    rows: Vec<DepthRow>,
    section: DepthClipSection,
    workers: usize,
    skip_bad_samples: bool,
}

impl DepthTable {
    /// Reads the table at `path`; errors name the file and line.
    pub fn read(path: &Path, section: &DepthClipSection, run: &RunContext) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let mut rows = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let fields: Vec<&str> = line.split('\t').map(str::trim).collect();
            if line.trim().is_empty() || (index == 0 && fields == ["image", "depth"]) {
                continue;
            }
            anyhow::ensure!(fields.len() == 2, "{}:{}: expected `image<TAB>depth`, found {line:?}", path.display(), index + 1);
            rows.push(DepthRow { image: dir.join(fields[0]), depth: dir.join(fields[1]), line: index + 1 });
        }
        anyhow::ensure!(!rows.is_empty(), "{}: no image<TAB>depth rows", path.display());
        Ok(Self {
            path: path.to_path_buf(),
            rows,
            section: section.clone(),
            workers: run.data.workers,
            skip_bad_samples: run.data.skip_bad_samples,
        })
    }

    /// Row `row`'s image `[3, h, w]` values (the protocol's input) and its full depth map.
    fn load(&self, row: usize) -> Result<(Vec<f32>, [usize; 3], DepthMap), DataError> {
        let entry = &self.rows[row];
        let error = |message: String| DataError { path: self.path.clone(), line: Some(entry.line), message };
        let sample = read_sample(&entry.image, &entry.depth, self.section.depth_scale).map_err(|e| error(e.to_string()))?;
        let rgb = if self.section.nyu_input() {
            let r = NYU_TEST_CROP;
            if sample.rgb.dimensions() != (640, 480) {
                return Err(error(format!("{}: the NYU protocols need 640 x 480 images", entry.image.display())));
            }
            image::imageops::crop_imm(&sample.rgb, r.left as u32, r.top as u32, r.width as u32, r.height as u32).to_image()
        } else {
            sample.rgb
        };
        let tensor = image_tensor(&rgb, &Device::flex());
        let dims = tensor.dims();
        Ok((tensor.into_data().iter::<f32>().collect(), dims, sample.depth))
    }
}

/// Images and depth maps of one batch, loaded.
#[derive(Debug)]
pub struct DepthSamples {
    rows: Vec<usize>,
    skipped: Vec<DataError>,
    images: Vec<(Vec<f32>, [usize; 3])>,
    depths: Vec<DepthMap>,
}

impl LoadedBatch for DepthSamples {
    fn rows(&self) -> &[usize] {
        &self.rows
    }

    fn skipped(&self) -> &[DataError] {
        &self.skipped
    }
}

impl BatchSource for DepthTable {
    type Batch = DepthSamples;

    fn rows(&self) -> usize {
        self.rows.len()
    }

    fn batch(&self, indices: &[usize], _step: usize) -> Result<DepthSamples, DataError> {
        let loaded = load_on_workers(indices, self.workers, |row, _| self.load(row));
        let (kept, skipped) = keep_readable(indices, loaded, self.skip_bad_samples)?;
        let mut samples = DepthSamples { rows: Vec::new(), skipped, images: Vec::new(), depths: Vec::new() };
        for (row, (values, dims, depth)) in kept {
            samples.rows.push(row);
            samples.images.push((values, dims));
            samples.depths.push(depth);
        }
        Ok(samples)
    }
}

/// DepthCLIP over the ResNet CLIP of `[model]` (`model.weights`: an OpenAI state dict such as
/// RN50's), evaluated on `data.val`; offers `clipforge depth`.
pub struct DepthClipTask {
    section: DepthClipSection,
    run: RunContext,
    clip: ClipConfig,
    tokenizer: ClipTokenizer,
    /// Token ids of the distance prompts, `[prompts, context]` row-major, and their shape.
    prompts: (Vec<i64>, [usize; 2]),
}

impl DepthClipTask {
    /// The method's configuration over `clip`.
    fn method_config(&self, clip: DenseClipConfig) -> DepthClipConfig {
        DepthClipConfig::new(clip)
            .with_depth_classes(self.section.distances.clone())
            .with_bins(self.section.bins.clone())
            .with_temperature(self.section.temperature)
            .with_flip_average(self.section.flip_average)
    }

    /// The dense-CLIP architecture of `[model]`.
    fn dense_config(&self) -> anyhow::Result<DenseClipConfig> {
        dense_config(&self.clip).with_context(|| format!("model.name = {}", self.run.model.name))
    }

    /// The predictor around `model`, its prompts encoded.
    fn predictor(&self, model: &DenseClip) -> anyhow::Result<DepthClip> {
        Ok(DepthClip::new(model.clone(), self.method_config(self.dense_config()?), &self.tokenizer)?)
    }

    /// The prediction at full-frame size for `image` `[3, h, w]` values of the protocol's input.
    fn predict(&self, predictor: &DepthClip, values: &[f32], dims: [usize; 3], frame: (usize, usize), device: &Device) -> DepthMap {
        let image = Tensor::<3>::from_data(TensorData::new(values.to_vec(), dims), device).unsqueeze_dim(0);
        let depth = DepthMap::from_batch(predictor.predict(image)).remove(0);
        match self.section.nyu_input() {
            true => depth.place_in(frame.0, frame.1, NYU_TEST_CROP.left, NYU_TEST_CROP.top),
            false => depth,
        }
    }
}

/// The [`DenseClipConfig`] of a ResNet CLIP; an error for a ViT.
fn dense_config(clip: &ClipConfig) -> anyhow::Result<DenseClipConfig> {
    match &clip.vision {
        ImageTowerConfig::ResNet(resnet) => Ok(DenseClipConfig::new(resnet.layers, resnet.width, clip.embed_dim, clip.text.clone())),
        ImageTowerConfig::Vit(_) => anyhow::bail!("DepthCLIP reads the dense layer4 map of a ResNet CLIP (RN50 in the paper), not a ViT"),
    }
}

impl Task for DepthClipTask {
    type Section = DepthClipSection;
    type Objective = DepthClipObjective;
    type Source = DepthTable;

    const SECTION: Option<&'static str> = Some("depthclip");

    fn validate(section: &DepthClipSection, run: &RunContext) -> Result<(), String> {
        if section.distances.is_empty() || section.distances.len() != section.bins.len() {
            return Err(format!(
                "depthclip.distances ({}) and depthclip.bins ({}) must be as many, and at least one",
                section.distances.len(),
                section.bins.len()
            ));
        }
        if section.bins.iter().any(|b| !(b.is_finite() && *b > 0.0)) {
            return Err(format!("depthclip.bins = {:?}: depths must be positive", section.bins));
        }
        if !(section.temperature.is_finite() && section.temperature > 0.0) {
            return Err(format!("depthclip.temperature = {} must be positive", section.temperature));
        }
        if !(section.depth_scale.is_finite() && section.depth_scale > 0.0) {
            return Err(format!("depthclip.depth_scale = {} must be positive", section.depth_scale));
        }
        if !["depthclip_nyu", "eigen_nyu", "garg_kitti", "whole"].contains(&section.protocol.as_str()) {
            return Err(format!(
                "depthclip.protocol = {:?}: use \"depthclip_nyu\", \"eigen_nyu\", \"garg_kitti\" or \"whole\"",
                section.protocol
            ));
        }
        let clip = ClipConfig::from_name_or_path(&run.model.name).map_err(|e| format!("model.name: {e}"))?;
        let dense = dense_config(&clip).map_err(|e| format!("model.name = {}: {e:#}", run.model.name))?;
        let method = DepthClipConfig::new(dense)
            .with_depth_classes(section.distances.clone())
            .with_bins(section.bins.clone())
            .with_temperature(section.temperature);
        method.validate(&format!("model.name = {}", run.model.name)).map_err(|e| e.to_string())
    }

    fn new(section: DepthClipSection, run: RunContext) -> anyhow::Result<Self> {
        let clip = ClipConfig::from_name_or_path(&run.model.name)?;
        let tokenizer = ClipTokenizer::new().with_context_length(clip.text.context_length)?;
        let mut task = Self { section, run, clip, tokenizer, prompts: (Vec::new(), [0, 0]) };
        let config = task.method_config(task.dense_config()?);
        let tokens = prompt_tokens(&config, &task.tokenizer, &Device::flex()).context("depthclip prompts")?;
        let shape = tokens.dims();
        task.prompts = (tokens.into_data().iter::<i64>().collect(), shape);
        Ok(task)
    }

    fn run(&self) -> &RunContext {
        &self.run
    }

    fn model(&self, device: &Device) -> anyhow::Result<DenseClip> {
        let config = self.dense_config()?;
        match &self.run.model.weights {
            Some(path) => {
                let checkpoint = Checkpoint::read(path)?;
                Ok(official::import_official(&checkpoint, &config, device)?)
            }
            None => Ok(config.init(device)),
        }
    }

    fn train_source(&mut self, _model: &DenseClip, _device: &Device) -> anyhow::Result<DepthTable> {
        DepthTable::read(&self.run.data.train, &self.section, &self.run)
    }

    fn to_batch(&self, batch: DepthSamples, device: &Device) -> anyhow::Result<DepthBatch> {
        let first = batch.images.first().context("an empty batch")?.1;
        let mut images = Vec::with_capacity(batch.images.len());
        let mut depths = Vec::with_capacity(batch.depths.len());
        for ((values, dims), depth) in batch.images.iter().zip(&batch.depths) {
            anyhow::ensure!(*dims == first, "images of one batch must be the same size: {dims:?} and {first:?}");
            images.push(Tensor::<3>::from_data(TensorData::new(values.clone(), *dims), device));
            let depth = match self.section.nyu_input() {
                true => depth.crop(NYU_TEST_CROP),
                false => depth.clone(),
            };
            depths.push(depth.to_tensor(device));
        }
        Ok(DepthBatch::new(Tensor::stack(images, 0), Tensor::cat(depths, 0))?)
    }

    fn objective(&self) -> DepthClipObjective {
        let options = self.section.eval_options();
        DepthClipObjective {
            prompt_ids: self.prompts.0.clone(),
            prompt_shape: self.prompts.1,
            bins: self.section.bins.clone(),
            temperature: self.section.temperature,
            logit_factor: crate::depthclip::config::OFFICIAL_LOGIT_FACTOR,
            min_depth: options.min_depth as f64,
            max_depth: options.max_depth.map_or(f64::INFINITY, |d| d as f64),
        }
    }

    fn evaluate(&self, model: &DenseClip, device: &Device) -> anyhow::Result<Option<serde_json::Value>> {
        let Some(val) = &self.run.data.val else { return Ok(None) };
        let table = DepthTable::read(val, &self.section, &self.run)?;
        let predictor = self.predictor(model)?;
        let options = self.section.eval_options();
        let constant = self.section.bins.iter().sum::<f32>() / self.section.bins.len() as f32;
        let (mut ours, mut baseline, mut skipped) = (MetricsMean::new(), MetricsMean::new(), 0);
        for row in 0..table.rows() {
            let (values, dims, truth) = match table.load(row) {
                Ok(sample) => sample,
                Err(error) if table.skip_bad_samples => {
                    eprintln!("skipped: {error}");
                    skipped += 1;
                    continue;
                }
                Err(error) => return Err(error.into()),
            };
            let predicted = self.predict(&predictor, &values, dims, (truth.width, truth.height), device);
            let flat = DepthMap { values: predicted.values.iter().map(|&d| if d > 0.0 { constant } else { 0.0 }).collect(), ..predicted.clone() };
            if let (Some(m), Some(b)) = (depth_metrics(&predicted, &truth, &options), depth_metrics(&flat, &truth, &options)) {
                ours.add(&m);
                baseline.add(&b);
            }
        }
        let (Some(mean), Some(flat)) = (ours.mean(), baseline.mean()) else {
            anyhow::bail!("{}: no image with measured depth to evaluate", val.display());
        };
        Ok(Some(serde_json::json!({
            "images": ours.images(),
            "skipped": skipped,
            "protocol": self.section.protocol,
            "abs_rel": mean.abs_rel, "sq_rel": mean.sq_rel, "rmse": mean.rmse, "rmse_log": mean.rmse_log,
            "log10": mean.log10, "delta1": mean.delta1, "delta2": mean.delta2, "delta3": mean.delta3,
            // Every pixel at the mean bin depth: what the bins give without looking at the image.
            "constant_abs_rel": flat.abs_rel, "constant_delta1": flat.delta1,
        })))
    }

    fn clip(&self, _model: DenseClip, _device: &Device) -> anyhow::Result<Clip> {
        anyhow::bail!("a DepthCLIP model has no pooled image embedding (its ResNet has no attention pool)")
    }

    fn commands() -> Vec<clap::Command> {
        vec![depth_command()]
    }

    fn run_command(&self, name: &str, args: &clap::ArgMatches, model: DenseClip, device: &Device) -> anyhow::Result<()> {
        use clap::FromArgMatches;
        anyhow::ensure!(name == DEPTH, "DepthCLIP has no `{name}` command");
        let args = DepthArgs::from_arg_matches(args)?;
        let predictor = self.predictor(&model)?;
        std::fs::create_dir_all(&args.output).with_context(|| format!("creating {}", args.output.display()))?;
        for path in &args.images {
            let rgb = read_rgb(path)?;
            let image = image_tensor(&rgb, device).unsqueeze_dim(0);
            let depth = DepthMap::from_batch(predictor.predict(image)).remove(0);
            let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("image");
            write_depth_png(&args.output.join(format!("{stem}.depth.png")), &depth, self.section.depth_scale)?;
            write_colorized_depth_png(&args.output.join(format!("{stem}.depth-color.png")), &depth, None)?;
            let (lo, hi) = depth.valid_range().unwrap_or((0.0, 0.0));
            println!("{}: depth {lo:.2} m to {hi:.2} m", path.display());
        }
        println!("wrote {} depth maps to {}", args.images.len(), args.output.display());
        Ok(())
    }
}

/// The name of the command.
pub const DEPTH: &str = "depth";

/// `clipforge depth` arguments (after the run that holds the model).
#[derive(Debug, Clone, clap::Args)]
pub struct DepthArgs {
    /// Images to estimate depth for.
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
    /// Output folder: `<image>.depth.png` (16-bit, `depthclip.depth_scale` units per metre)
    /// and `<image>.depth-color.png` (near dark, far bright).
    #[arg(long, default_value = "depth")]
    pub output: PathBuf,
}

/// The `depth` command's definition.
pub fn depth_command() -> clap::Command {
    use clap::Args;
    DepthArgs::augment_args(clap::Command::new(DEPTH).about(
        "Estimate the depth of images with DepthCLIP; writes a 16-bit depth PNG and a colorized PNG per image",
    ))
}

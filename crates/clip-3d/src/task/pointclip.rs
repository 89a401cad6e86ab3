//! The `pointclip` task: PointCLIP's point-cloud classification on labelled clouds.
//!
//! Training stands in for CLIP's pretraining on images: the `[model]` CLIP is trained
//! contrastively on depth maps of the training clouds (one random view of the official
//! projection per sample) against captions made from their labels (`pointclip.template`).
//! Evaluation then runs PointCLIP as the official code does, with that CLIP frozen:
//!
//! - zero-shot: every held-out cloud projected onto all views, the per-view similarities to the
//!   class prompts summed with the view weights (`pointclip.view_weights`, or the official grid
//!   search run on the few-shot training clouds when `pointclip.search_time > 0`);
//! - few-shot: the inter-view adapter trained on `pointclip.shots` clouds per class of the
//!   training table (frozen CLIP, the official `smooth_loss`, AdamW), then scored on the
//!   held-out clouds.
//!
//! The report holds `zero_shot_top1`, `few_shot_top1` and `chance_top1`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use burn::module::Module;
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::{Device, Int, Tensor, TensorData};
use clip_core::{Clip, ClipConfig, ClipTokenizer};
use clip_task::clip_model::{check_clip_model, clip_config, load_run_model, tokenizer_of};
use clip_task::contrastive::{ContrastiveBatch, ContrastiveObjective};
use clip_task::data::{BatchSource, DataError, LoadedBatch, keep_readable, load_on_workers, sample_rng};
use clip_task::{RunContext, Splittable, Task};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::pointclip::adapter::AdapterConfig;
use crate::pointclip::io::read_point_cloud;
use crate::pointclip::model::{PointClip, ZERO_SHOT_TEMPLATE, clouds_tensor, prompts, search_view_weights, smooth_loss, view_weight_grid};
use crate::pointclip::png::save_views;
use crate::pointclip::projection::{ProjectionConfig, zero_shot_views};

/// `[pointclip]`: the clouds, the projection, the prompt and the few-shot adapter.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PointClipSection {
    /// Points per cloud: the first `points` of each file (the official `pointcloud[:1024]`).
    pub points: usize,
    /// The caption of a training view and the class prompt, `{}` standing for the label
    /// (underscores become spaces).
    pub template: String,
    /// Side of the depth maps, resized bilinearly to CLIP's image size when it differs (the
    /// official zero-shot projection renders 128 and resizes to 224).
    pub resolution: usize,
    /// The camera distance `TRANS` of the official zero-shot views (6 views: four sides, top and
    /// bottom).
    pub trans: f64,
    /// One weight per view for the zero-shot sum; empty: all 1 (or the searched ones).
    pub view_weights: Vec<f32>,
    /// Grid size of the official view-weight search (`SEARCH.TIME`), run on the few-shot
    /// training clouds; 0: no search.
    pub search_time: usize,
    /// Largest weight of the search grid (`SEARCH.RANGE`).
    pub search_range: f64,
    /// Training clouds per class of the few-shot adapter (16 in the paper); 0: no few-shot.
    pub shots: usize,
    /// Optimizer steps of the adapter.
    pub adapter_steps: usize,
    /// Clouds per adapter step.
    pub adapter_batch_size: usize,
    /// AdamW learning rate of the adapter.
    pub adapter_lr: f64,
    /// AdamW weight decay of the adapter.
    pub adapter_weight_decay: f64,
    /// Weight of the adapted features in the adapter's output (`ADAPTER.RATIO`).
    pub adapter_ratio: f64,
    /// Dropout of the adapter while it trains (`ADAPTER.DROPOUT`).
    pub adapter_dropout: f64,
    /// Augmented copies of every few-shot cloud the adapter also trains on (the official
    /// loader's random scale and shift, drawn once here since CLIP is frozen); 0: none.
    pub adapter_augment: usize,
}

impl Default for PointClipSection {
    fn default() -> Self {
        Self {
            points: 512,
            template: ZERO_SHOT_TEMPLATE.into(),
            resolution: 128,
            trans: -1.6,
            view_weights: Vec::new(),
            search_time: 0,
            search_range: 1.0,
            shots: 16,
            adapter_steps: 200,
            adapter_batch_size: 32,
            adapter_lr: 1e-3,
            adapter_weight_decay: 1e-4,
            adapter_ratio: 0.6,
            adapter_dropout: 0.075,
            adapter_augment: 0,
        }
    }
}

/// Views of the projection (the official zero-shot ones).
const VIEWS: usize = 6;

/// Checks `[pointclip]`; errors name the key.
fn validate_section(s: &PointClipSection) -> Result<(), String> {
    if s.points == 0 {
        return Err("pointclip.points must be at least 1".into());
    }
    if !s.template.contains("{}") {
        return Err(format!("pointclip.template = {:?} has no {{}} for the label", s.template));
    }
    if s.resolution < 2 {
        return Err(format!("pointclip.resolution = {} must be at least 2", s.resolution));
    }
    if !s.trans.is_finite() || s.trans >= 0.0 {
        return Err(format!("pointclip.trans = {} must be negative (the camera sits behind the cloud)", s.trans));
    }
    if !s.view_weights.is_empty() && s.view_weights.len() != VIEWS {
        return Err(format!("pointclip.view_weights has {} weights: give one per view ({VIEWS}) or none", s.view_weights.len()));
    }
    if s.view_weights.iter().any(|w| !w.is_finite() || *w < 0.0) {
        return Err(format!("pointclip.view_weights = {:?} must be finite and not negative", s.view_weights));
    }
    if s.search_time > 0 && !s.view_weights.is_empty() {
        return Err("pointclip.search_time > 0 searches the view weights: leave pointclip.view_weights empty".into());
    }
    if s.search_time > 16 {
        return Err(format!("pointclip.search_time = {} tries search_time^6 weightings: use 16 or fewer", s.search_time));
    }
    if !(s.search_range.is_finite() && s.search_range > 0.0) {
        return Err(format!("pointclip.search_range = {} must be positive", s.search_range));
    }
    if s.shots > 0 {
        if s.adapter_batch_size < 2 {
            return Err(format!("pointclip.adapter_batch_size = {} must be at least 2 (the adapter has BatchNorm)", s.adapter_batch_size));
        }
        if !(s.adapter_lr.is_finite() && s.adapter_lr > 0.0) {
            return Err(format!("pointclip.adapter_lr = {} must be positive", s.adapter_lr));
        }
        if !(s.adapter_weight_decay.is_finite() && s.adapter_weight_decay >= 0.0) {
            return Err(format!("pointclip.adapter_weight_decay = {} must not be negative", s.adapter_weight_decay));
        }
        if !(0.0..=1.0).contains(&s.adapter_ratio) {
            return Err(format!("pointclip.adapter_ratio = {} must be in [0, 1]", s.adapter_ratio));
        }
        if !(0.0..1.0).contains(&s.adapter_dropout) {
            return Err(format!("pointclip.adapter_dropout = {} must be in [0, 1)", s.adapter_dropout));
        }
    }
    Ok(())
}

/// One row of a cloud table.
#[derive(Debug, Clone)]
pub struct CloudRow {
    /// The cloud file (`.npy`, `.txt`, `.ply`), resolved against the table's folder.
    pub cloud: PathBuf,
    /// Its class name.
    pub label: String,
    /// 1-based line of the table.
    pub line: usize,
}

/// A `cloud\tlabel` table (TSV with a header naming both columns; other columns ignored).
#[derive(Debug, Clone)]
pub struct CloudTable {
    /// The table file.
    pub path: PathBuf,
    /// Its rows.
    pub rows: Vec<CloudRow>,
}

impl CloudTable {
    /// Reads a table; errors name the file and line.
    pub fn read(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let mut lines = text.lines().enumerate();
        let (_, header) = lines.next().with_context(|| format!("{}: empty table", path.display()))?;
        let columns: Vec<&str> = header.split('\t').map(str::trim).collect();
        let column = |name: &str| {
            columns.iter().position(|c| *c == name).with_context(|| {
                format!("{}:1: no `{name}` column (a PointCLIP table has the columns `cloud` and `label`)", path.display())
            })
        };
        let (cloud, label) = (column("cloud")?, column("label")?);
        let folder = path.parent().unwrap_or(Path::new(""));
        let mut rows = Vec::new();
        for (index, line) in lines {
            if line.trim().is_empty() {
                continue;
            }
            let fields: Vec<&str> = line.split('\t').collect();
            let field = |i: usize| {
                fields.get(i).map(|f| f.trim()).filter(|f| !f.is_empty()).with_context(|| {
                    format!("{}:{}: {} fields, the `{}` column is missing", path.display(), index + 1, fields.len(), columns[i])
                })
            };
            rows.push(CloudRow { cloud: folder.join(field(cloud)?), label: field(label)?.to_string(), line: index + 1 });
        }
        anyhow::ensure!(!rows.is_empty(), "{}: no clouds", path.display());
        Ok(Self { path: path.to_path_buf(), rows })
    }

    /// The sorted distinct labels.
    pub fn labels(&self) -> Vec<String> {
        let mut labels: Vec<String> = self.rows.iter().map(|r| r.label.clone()).collect();
        labels.sort();
        labels.dedup();
        labels
    }
}

impl Splittable for CloudTable {
    fn rows(&self) -> usize {
        self.rows.len()
    }
    fn split_off(self, fraction: f64, seed: u64) -> (Self, Self) {
        let (kept, held) = clip_core::split::split_rows(self.rows.len(), fraction, seed);
        let pick = |indices: Vec<usize>| indices.into_iter().map(|i| self.rows[i].clone()).collect();
        let (kept, val) = (pick(kept), pick(held));
        (Self { path: self.path.clone(), rows: kept }, Self { path: self.path, rows: val })
    }
}

/// Reads the cloud of `row`: its first `points` points, normalized to the unit sphere.
fn load_cloud(table: &CloudTable, row: usize, points: usize) -> Result<Vec<[f32; 3]>, DataError> {
    let entry = &table.rows[row];
    let error = |message: String| DataError { path: table.path.clone(), line: Some(entry.line), message };
    let cloud = read_point_cloud(&entry.cloud, 0, 0).map_err(|e| error(e.to_string()))?;
    let cloud = cloud
        .first(points)
        .ok_or_else(|| error(format!("{}: {} points, pointclip.points = {points}", entry.cloud.display(), cloud.len())))?;
    Ok(cloud.normalized().points)
}

/// Training batches: clouds and, per cloud, the view its depth map is taken from.
#[derive(Clone)]
pub struct CloudBatcher {
    table: Arc<CloudTable>,
    points: usize,
    seed: u64,
    workers: usize,
    skip_bad_samples: bool,
}

/// A loaded training batch.
pub struct CloudBatch {
    rows: Vec<usize>,
    clouds: Vec<Vec<[f32; 3]>>,
    views: Vec<usize>,
    skipped: Vec<DataError>,
}

impl LoadedBatch for CloudBatch {
    fn rows(&self) -> &[usize] {
        &self.rows
    }
    fn skipped(&self) -> &[DataError] {
        &self.skipped
    }
}

impl BatchSource for CloudBatcher {
    type Batch = CloudBatch;

    fn rows(&self) -> usize {
        self.table.rows.len()
    }

    fn batch(&self, indices: &[usize], step: usize) -> Result<CloudBatch, DataError> {
        let loaded = load_on_workers(indices, self.workers, |row, slot| {
            let cloud = load_cloud(&self.table, row, self.points)?;
            Ok((cloud, sample_rng(self.seed, step, slot).random_range(0..VIEWS)))
        });
        let (kept, skipped) = keep_readable(indices, loaded, self.skip_bad_samples)?;
        let mut batch = CloudBatch { rows: Vec::new(), clouds: Vec::new(), views: Vec::new(), skipped };
        for (row, (cloud, view)) in kept {
            batch.rows.push(row);
            batch.clouds.push(cloud);
            batch.views.push(view);
        }
        Ok(batch)
    }
}

/// PointCLIP over the CLIP of `[model]`, trained on depth views of labelled clouds.
pub struct PointClipTask {
    section: PointClipSection,
    run: RunContext,
    clip: ClipConfig,
    tokenizer: ClipTokenizer,
    train: Option<Arc<CloudTable>>,
    val: Option<CloudTable>,
}

impl PointClipTask {
    /// The official zero-shot views at `pointclip.trans`, rendered at `pointclip.resolution`
    /// and resized to CLIP's image size.
    pub fn projection(&self) -> ProjectionConfig {
        let size = self.clip.vision.image_size();
        let resize = (self.section.resolution != size).then_some(size);
        ProjectionConfig::new(zero_shot_views(self.section.trans), self.section.resolution).with_image_size(resize)
    }

    /// The training table and the validation table of `[data]`.
    fn tables(&self) -> anyhow::Result<(CloudTable, Option<CloudTable>)> {
        let train = CloudTable::read(&self.run.data.train)?;
        self.run.with_validation(train, CloudTable::read)
    }

    /// The clouds of `rows` of `table` (first `pointclip.points`, normalized).
    fn clouds(&self, table: &CloudTable, rows: &[usize]) -> anyhow::Result<Vec<Vec<[f32; 3]>>> {
        Ok(rows.iter().map(|&row| load_cloud(table, row, self.section.points)).collect::<Result<Vec<_>, _>>()?)
    }

    /// Unnormalized CLIP embeddings of every view, `[clouds * V, C]`.
    fn view_features(&self, model: &PointClip, clouds: &[Vec<[f32; 3]>], device: &Device) -> anyhow::Result<Tensor<2>> {
        let mut parts = Vec::new();
        for chunk in clouds.chunks(self.run.eval.batch_size.max(1)) {
            let points = clouds_tensor(chunk, device).map_err(anyhow::Error::msg)?;
            parts.push(model.view_features(model.images(points)));
        }
        Ok(Tensor::cat(parts, 0))
    }
}

/// The official few-shot training augmentation (`translate_pointcloud` of the ModelNet40
/// loader): every axis scaled by a factor in `[2/3, 3/2]`, then shifted by up to 0.2.
fn translate_cloud(cloud: &[[f32; 3]], rng: &mut impl Rng) -> Vec<[f32; 3]> {
    let scale: [f32; 3] = [0, 1, 2].map(|_| rng.random_range(2.0 / 3.0..1.5));
    let shift: [f32; 3] = [0, 1, 2].map(|_| rng.random_range(-0.2..0.2));
    cloud.iter().map(|p| [0, 1, 2].map(|i| p[i] * scale[i] + shift[i])).collect()
}

/// Class indices of `rows` of `table` in `classes`; an error names the line of an unknown label.
fn class_indices(table: &CloudTable, rows: &[usize], classes: &[String]) -> anyhow::Result<Vec<usize>> {
    rows.iter()
        .map(|&row| {
            let entry = &table.rows[row];
            classes
                .iter()
                .position(|c| *c == entry.label)
                .with_context(|| format!("{}:{}: label {:?} is not one of {classes:?}", table.path.display(), entry.line, entry.label))
        })
        .collect()
}

/// Top-1 accuracy (0 to 1) of logits `[N, K]` against `labels`.
fn top1(logits: Tensor<2>, labels: &[usize]) -> f64 {
    let [_, classes] = logits.dims();
    let values: Vec<f32> = logits.into_data().iter::<f32>().collect();
    let correct = values
        .chunks(classes)
        .zip(labels)
        .filter(|(row, label)| {
            let best = row.iter().enumerate().fold(0, |best, (k, v)| if *v > row[best] { k } else { best });
            best == **label
        })
        .count();
    correct as f64 / labels.len().max(1) as f64
}

impl Task for PointClipTask {
    type Section = PointClipSection;
    type Objective = ContrastiveObjective;
    type Source = CloudBatcher;

    const SECTION: Option<&'static str> = Some("pointclip");

    fn validate(section: &PointClipSection, run: &RunContext) -> Result<(), String> {
        validate_section(section)?;
        check_clip_model(run)
    }

    fn new(section: PointClipSection, run: RunContext) -> anyhow::Result<Self> {
        let clip = clip_config(&run.model.name, run.model.weights.as_deref())?;
        let tokenizer = tokenizer_of(&clip)?;
        Ok(Self { section, run, clip, tokenizer, train: None, val: None })
    }

    fn run(&self) -> &RunContext {
        &self.run
    }

    fn model(&self, device: &Device) -> anyhow::Result<Clip> {
        Ok(load_run_model(&self.run, device)?.0)
    }

    fn train_source(&mut self, _model: &Clip, _device: &Device) -> anyhow::Result<CloudBatcher> {
        let (train, val) = self.tables()?;
        let table = Arc::new(train);
        self.train = Some(table.clone());
        self.val = val;
        Ok(CloudBatcher {
            table,
            points: self.section.points,
            seed: self.run.seed,
            workers: self.run.data.workers,
            skip_bad_samples: self.run.data.skip_bad_samples,
        })
    }

    fn to_batch(&self, batch: CloudBatch, device: &Device) -> anyhow::Result<ContrastiveBatch> {
        let table = self.train.as_ref().context("to_batch before train_source")?;
        let count = batch.rows.len();
        let points = clouds_tensor(&batch.clouds, device).map_err(anyhow::Error::msg)?;
        // Every view rendered, then the sample's own one kept (row b * V + v).
        let images = self.projection().images(points);
        let picked: Vec<i64> = batch.views.iter().enumerate().map(|(b, &v)| (b * VIEWS + v) as i64).collect();
        let images = images.select(0, Tensor::<1, Int>::from_data(TensorData::new(picked, [count]), device));
        let captions: Vec<String> = batch.rows.iter().map(|&row| prompts(&self.section.template, &[&table.rows[row].label]).remove(0)).collect();
        let tokens = self.tokenizer.tokenize_batch(&captions, device)?;
        Ok(ContrastiveBatch::new(images, tokens)?)
    }

    fn objective(&self) -> ContrastiveObjective {
        ContrastiveObjective::default()
    }

    fn evaluate(&self, model: &Clip, device: &Device) -> anyhow::Result<Option<serde_json::Value>> {
        let (train, val) = match (&self.train, &self.val) {
            (Some(train), Some(val)) => (train.as_ref().clone(), val.clone()),
            _ => match self.tables()? {
                (train, Some(val)) => (train, val),
                (_, None) => return Ok(None),
            },
        };
        let mut classes = train.labels();
        classes.extend(val.labels());
        classes.sort();
        classes.dedup();
        let section = &self.section;
        let pointclip = PointClip { clip: model.clone(), adapter: None, projection: self.projection() };
        let tokens = PointClip::tokenize(&self.tokenizer, &section.template, &classes, device)?;
        let text_embeddings = pointclip.text_embeddings(tokens);
        let text = pointclip.text_features(text_embeddings.clone());

        let val_rows: Vec<usize> = (0..val.rows.len()).collect();
        let val_labels = class_indices(&val, &val_rows, &classes)?;
        let val_views = self.view_features(&pointclip, &self.clouds(&val, &val_rows)?, device)?;
        let (val_features, _) = pointclip.image_features(val_views.clone());

        // The few-shot training clouds: `shots` per class, a seeded choice.
        let mut order: Vec<usize> = (0..train.rows.len()).collect();
        order.shuffle(&mut rand::rngs::StdRng::seed_from_u64(self.run.seed));
        let mut shots: Vec<usize> = Vec::new();
        for class in &classes {
            shots.extend(order.iter().copied().filter(|&r| train.rows[r].label == *class).take(section.shots));
        }
        shots.sort();
        let shot_labels = class_indices(&train, &shots, &classes)?;
        let shot_clouds = self.clouds(&train, &shots)?;
        let shot_views = if shots.is_empty() { None } else { Some(self.view_features(&pointclip, &shot_clouds, device)?) };

        // Zero-shot: all views, weighted.
        let weights = if section.search_time > 0
            && let Some(views) = &shot_views
        {
            let (features, _) = pointclip.image_features(views.clone());
            let grid = view_weight_grid(section.search_time, section.search_range);
            search_view_weights(features, text.clone(), &shot_labels, VIEWS, &grid).weights
        } else if section.view_weights.is_empty() {
            vec![1.0; VIEWS]
        } else {
            section.view_weights.clone()
        };
        let weights_tensor = Tensor::<1>::from_data(TensorData::new(weights.clone(), [VIEWS]), device);
        let zero_shot = top1(pointclip.weighted_logits(val_features.clone(), text.clone(), weights_tensor), &val_labels);
        let equal = top1(pointclip.logits(val_features, text.clone()), &val_labels);

        let mut report = serde_json::json!({
            "clouds": val_rows.len(),
            "classes": classes.len(),
            "zero_shot_top1": zero_shot,
            "zero_shot_top1_equal_weights": equal,
            "view_weights": weights,
            "chance_top1": 1.0 / classes.len() as f64,
        });

        // Few-shot: the inter-view adapter on the frozen CLIP's view features.
        if let Some(shot_views) = shot_views {
            // The adapter trains on the clouds as they are and `adapter_augment` augmented copies
            // (seeded), their features computed once by the frozen CLIP.
            let mut rng = rand::rngs::StdRng::seed_from_u64(self.run.seed ^ 0x0a06_3e47);
            let copies: Vec<Vec<[f32; 3]>> =
                (0..section.adapter_augment).flat_map(|_| shot_clouds.iter().map(|c| translate_cloud(c, &mut rng)).collect::<Vec<_>>()).collect();
            let mut features = vec![shot_views];
            if !copies.is_empty() {
                features.push(self.view_features(&pointclip, &copies, device)?);
            }
            let labels: Vec<usize> = shot_labels.iter().copied().cycle().take(shot_labels.len() * (1 + section.adapter_augment)).collect();
            let (few_shot, loss) = self.train_adapter(&pointclip, Tensor::cat(features, 0), &labels, text_embeddings, val_views, &val_labels, device)?;
            report["few_shot_top1"] = few_shot.into();
            report["few_shot_final_loss"] = loss.into();
            report["shots"] = section.shots.into();
        }
        Ok(Some(report))
    }

    fn clip(&self, model: Clip, _device: &Device) -> anyhow::Result<Clip> {
        Ok(model)
    }

    fn commands() -> Vec<clap::Command> {
        vec![render_views_command()]
    }

    fn run_command(&self, name: &str, args: &clap::ArgMatches, _model: Clip, device: &Device) -> anyhow::Result<()> {
        use clap::FromArgMatches;
        anyhow::ensure!(name == RENDER_VIEWS, "PointCLIP has no `{name}` command");
        let args = RenderViewsArgs::from_arg_matches(args)?;
        let projection = self.projection();
        for path in &args.clouds {
            let cloud = read_point_cloud(path, self.section.points, self.run.seed)?.normalized();
            let points = clouds_tensor(&[cloud.points], device).map_err(anyhow::Error::msg)?;
            let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("cloud");
            let files = save_views(projection.depth_maps(points), projection.num_views(), &args.output, stem)?;
            println!("{}: {} views", path.display(), files.len());
        }
        println!("wrote the depth views of {} clouds to {}", args.clouds.len(), args.output.display());
        Ok(())
    }
}

/// The name of the command.
pub const RENDER_VIEWS: &str = "render-views";

/// `clipforge render-views` arguments (after the run or config whose projection is used).
#[derive(Debug, Clone, clap::Args)]
pub struct RenderViewsArgs {
    /// Point clouds (PLY, OFF, ModelNet40 `.txt`, `.npy`).
    #[arg(required = true)]
    pub clouds: Vec<PathBuf>,
    /// Output folder: `<cloud>_0_<view>.png` per view, 8-bit, each map scaled by its maximum.
    #[arg(long, default_value = "views")]
    pub output: PathBuf,
}

/// The `render-views` command's definition.
pub fn render_views_command() -> clap::Command {
    use clap::Args;
    RenderViewsArgs::augment_args(clap::Command::new(RENDER_VIEWS).about(
        "Project point clouds to PointCLIP's depth views (the config's projection) and write them as PNGs",
    ))
}

impl PointClipTask {
    /// Trains the inter-view adapter on the view features `[S * V, C]` of the few-shot clouds
    /// (labels `labels`) against the class prompts' embeddings `[K, C]`, with the official
    /// `smooth_loss` and AdamW, and returns its top-1 on the held-out view features and its last
    /// loss. CLIP is frozen: its features are computed once.
    #[allow(clippy::too_many_arguments)]
    fn train_adapter(
        &self,
        pointclip: &PointClip,
        shot_views: Tensor<2>,
        labels: &[usize],
        text_embeddings: Tensor<2>,
        val_views: Tensor<2>,
        val_labels: &[usize],
        device: &Device,
    ) -> anyhow::Result<(f64, f64)> {
        let section = &self.section;
        let train_device = device.clone().autodiff();
        train_device.seed(self.run.seed);
        let [_, channels] = shot_views.dims();
        let adapter_config = AdapterConfig::new(VIEWS, channels).with_ratio(section.adapter_ratio).with_dropout(section.adapter_dropout);
        adapter_config.validate().map_err(anyhow::Error::msg)?;
        let mut model = PointClip { clip: pointclip.clip.clone(), adapter: Some(adapter_config.init(&train_device)), projection: pointclip.projection.clone() };
        model.clip = model.clip.to_device(&train_device).no_grad();
        let features = shot_views.to_device(&train_device);
        let text = model.text_features(text_embeddings.clone().to_device(&train_device));
        let samples = labels.len();
        let mut optimizer = AdamWConfig::new().with_weight_decay(section.adapter_weight_decay as f32).init();
        let mut rng = rand::rngs::StdRng::seed_from_u64(self.run.seed ^ 0x0ada_97e5);
        let batch_size = section.adapter_batch_size.min(samples).max(2);
        let mut order: Vec<usize> = Vec::new();
        let mut last_loss = f64::NAN;
        for step in 0..section.adapter_steps {
            if order.len() < batch_size {
                let mut epoch: Vec<usize> = (0..samples).collect();
                epoch.shuffle(&mut rng);
                order.extend(epoch);
            }
            let picked: Vec<usize> = order.drain(..batch_size).collect();
            let rows: Vec<i64> = picked.iter().flat_map(|&s| (0..VIEWS).map(move |v| (s * VIEWS + v) as i64)).collect();
            let rows = Tensor::<1, Int>::from_data(TensorData::new(rows, [batch_size * VIEWS]), &train_device);
            let batch_labels: Vec<i64> = picked.iter().map(|&s| labels[s] as i64).collect();
            let batch_labels = Tensor::<1, Int>::from_data(TensorData::new(batch_labels, [batch_size]), &train_device);
            let (image, _) = model.image_features(features.clone().select(0, rows));
            let loss = smooth_loss(model.logits(image, text.clone()), batch_labels);
            last_loss = f64::from(loss.clone().into_scalar::<f32>());
            anyhow::ensure!(last_loss.is_finite(), "the adapter's loss is {last_loss} at step {step}: try a lower pointclip.adapter_lr");
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            // Cosine decay, as the official schedule.
            let progress = step as f64 / section.adapter_steps.max(1) as f64;
            let lr = section.adapter_lr * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
            model = optimizer.step(lr, model, grads);
        }
        let model = model.valid();
        let text = model.text_features(text_embeddings);
        let (image, _) = model.image_features(val_views);
        Ok((top1(model.logits(image, text), val_labels), last_loss))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_section_names_its_bad_keys() {
        let ok = PointClipSection::default();
        assert!(validate_section(&ok).is_ok());
        let bad = |f: fn(&mut PointClipSection), key: &str| {
            let mut s = PointClipSection::default();
            f(&mut s);
            let error = validate_section(&s).unwrap_err();
            assert!(error.contains(key), "{error}");
        };
        bad(|s| s.points = 0, "pointclip.points");
        bad(|s| s.template = "no label".into(), "pointclip.template");
        bad(|s| s.view_weights = vec![1.0; 3], "pointclip.view_weights");
        bad(|s| s.trans = 1.0, "pointclip.trans");
        bad(|s| s.adapter_batch_size = 1, "pointclip.adapter_batch_size");
        bad(|s| s.adapter_ratio = 2.0, "pointclip.adapter_ratio");
        let unknown = serde_json::from_str::<PointClipSection>(r#"{"shot": 4}"#).unwrap_err().to_string();
        assert!(unknown.contains("shot"), "{unknown}");
    }

    #[test]
    fn tables_name_the_missing_column_and_split() {
        let tmp = tempfile::Builder::new().prefix("pointclip-table-").tempdir().unwrap();
        let dir = tmp.path();
        let path = dir.join("t.tsv");
        std::fs::write(&path, "cloud\tname\na.npy\tcube\n").unwrap();
        let error = CloudTable::read(&path).unwrap_err().to_string();
        assert!(error.contains("t.tsv:1") && error.contains("label"), "{error}");
        std::fs::write(&path, "cloud\tlabel\na.npy\tcube\nb.npy\tcone\nc.npy\n").unwrap();
        let error = CloudTable::read(&path).unwrap_err().to_string();
        assert!(error.contains("t.tsv:4"), "{error}");
        std::fs::write(&path, "cloud\tlabel\na.npy\tcube\nb.npy\tcone\nc.npy\tcube\nd.npy\ttorus\n").unwrap();
        let table = CloudTable::read(&path).unwrap();
        assert_eq!(table.labels(), ["cone", "cube", "torus"]);
        assert_eq!(table.rows[0].cloud, dir.join("a.npy"));
        let (kept, val) = table.split_off(0.25, 3);
        assert_eq!((kept.rows.len(), val.rows.len()), (3, 1));
    }
}

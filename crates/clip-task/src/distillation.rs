//! Embedding distillation: a student image tower learns to reproduce a frozen teacher's
//! normalized image embeddings (as ViLD-image distils CLIP into region embeddings), with an
//! L1 or L2 loss. Teacher embeddings are computed once and cached on disk.

use std::path::{Path, PathBuf};

use burn::tensor::{Device, FloatDType, Tensor, TensorData};
use clip_core::loss::in_default_float;
use clip_core::preprocess::stack_images;
use clip_core::{Clip, ClipConfig, ClipTokenizer, ImageTower, Objective, StepOutput, l2_normalize};
use serde::{Deserialize, Serialize};

use crate::clip_model::{check_clip_model, clip_config, load_model, load_run_model, tokenizer_of};
use crate::config::RunContext;
use crate::embeddings_file::write_embeddings;
use crate::pairs::{Batcher, PairBatch, PairTable};
use crate::task::Task;

/// Images and the teacher's embeddings of them.
#[derive(Debug, Clone)]
pub struct DistillationBatch {
    /// `[batch, 3, H, W]`.
    pub(crate) images: Tensor<4>,
    /// `[batch, embed_dim]`, L2-normalized.
    pub(crate) teacher: Tensor<2>,
}

impl DistillationBatch {
    /// Images `[batch, 3, H, W]` and the teacher's normalized embeddings of them
    /// `[batch, embed_dim]`; an error when the counts differ.
    pub fn new(images: Tensor<4>, teacher: Tensor<2>) -> clip_core::Result<Self> {
        let (count, targets) = (images.dims()[0], teacher.dims()[0]);
        if count != targets {
            return Err(clip_core::ClipError::Shape(format!("DistillationBatch: {count} images but {targets} teacher embeddings")));
        }
        Ok(Self { images, teacher })
    }
}

/// Distance between student and teacher embeddings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DistillationLoss {
    /// Mean absolute difference (ViLD's choice).
    L1,
    /// Mean squared difference.
    L2,
}

/// Distils teacher embeddings into a student image tower; logs their mean cosine similarity.
#[derive(Debug, Clone)]
pub struct DistillationObjective {
    /// The distance.
    pub loss: DistillationLoss,
}

impl Objective for DistillationObjective {
    type Model = ImageTower;
    type Batch = DistillationBatch;

    fn forward(&self, model: &ImageTower, batch: DistillationBatch) -> clip_core::Result<StepOutput> {
        let student = in_default_float(l2_normalize(model.forward(batch.images)));
        let difference = student.clone() - batch.teacher.clone();
        let loss = match self.loss {
            DistillationLoss::L1 => difference.abs().mean(),
            DistillationLoss::L2 => difference.square().mean(),
        };
        let cosine = (student * batch.teacher).sum_dim(1).mean().into_scalar::<f32>();
        Ok(StepOutput {
            loss,
            metrics: vec![("teacher_cosine", f64::from(cosine))],
        })
    }

    fn cast_inputs(&self, mut batch: DistillationBatch, dtype: FloatDType) -> Option<DistillationBatch> {
        batch.images = batch.images.cast(dtype);
        Some(batch)
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

/// A student image tower trained towards a frozen teacher CLIP's embeddings of the training
/// images; evaluated by their mean cosine similarity on the validation images.
pub struct DistillationTask {
    section: DistillSection,
    run: RunContext,
    config: ClipConfig,
    tokenizer: ClipTokenizer,
    /// The teacher (on the evaluation device) and its architecture, once loaded.
    teacher: Option<(Clip, ClipConfig)>,
    /// Teacher embeddings of the training rows, `[rows * embed_dim]`.
    targets: Vec<f32>,
    val: Option<PairTable>,
}

impl Task for DistillationTask {
    type Section = DistillSection;
    type Objective = DistillationObjective;
    type Source = Batcher;

    const SECTION: Option<&'static str> = Some("distill");

    fn validate(section: &DistillSection, run: &RunContext) -> Result<(), String> {
        if !["l1", "l2"].contains(&section.loss.as_str()) {
            return Err(format!("distill.loss = {:?}: use \"l1\" or \"l2\"", section.loss));
        }
        if !section.teacher_weights.exists() {
            return Err(format!("distill.teacher_weights = {}: no such file", section.teacher_weights.display()));
        }
        let teacher = clip_config(&section.teacher_model, Some(&section.teacher_weights)).map_err(|e| format!("distill.teacher_model: {e:#}"))?;
        check_clip_model(run)?;
        let student = clip_config(&run.model.name, run.model.weights.as_deref()).map_err(|e| format!("model.name: {e:#}"))?;
        if teacher.embed_dim != student.embed_dim {
            return Err(format!(
                "distill.teacher_model embeds in {} dimensions but model.name in {}",
                teacher.embed_dim, student.embed_dim
            ));
        }
        Ok(())
    }

    fn new(section: DistillSection, run: RunContext) -> anyhow::Result<Self> {
        let config = clip_config(&run.model.name, run.model.weights.as_deref())?;
        let tokenizer = tokenizer_of(&config)?;
        Ok(Self { section, run, config, tokenizer, teacher: None, targets: Vec::new(), val: None })
    }

    fn run(&self) -> &RunContext {
        &self.run
    }

    fn model(&self, device: &Device) -> anyhow::Result<ImageTower> {
        Ok(load_run_model(&self.run, device)?.0.visual)
    }

    fn train_source(&mut self, _model: &ImageTower, device: &Device) -> anyhow::Result<Batcher> {
        let eval_device = device.clone().inner();
        let (teacher, teacher_config) = load_model(&self.section.teacher_model, Some(&self.section.teacher_weights), &eval_device)?;
        let (train, val) = self.run.tables()?;
        let cache = self.section.cache.clone().unwrap_or_else(|| self.run.output.join("teacher_embeddings.safetensors"));
        let teacher_batcher = Batcher::for_eval(&self.run, train.clone(), &self.tokenizer, teacher_config.vision.image_size());
        self.targets = teacher_embeddings(&teacher, &teacher_batcher, &cache, self.run.eval.batch_size, &eval_device)?;
        self.teacher = Some((teacher, teacher_config));
        self.val = val;
        Batcher::for_training(&self.run, train, &self.tokenizer, self.config.vision.image_size())
    }

    fn to_batch(&self, batch: PairBatch, device: &Device) -> anyhow::Result<DistillationBatch> {
        let dim = self.config.embed_dim;
        let values: Vec<f32> = batch.rows.iter().flat_map(|&r| self.targets[r * dim..(r + 1) * dim].iter().copied()).collect();
        let teacher = Tensor::from_data(TensorData::new(values, [batch.rows.len(), dim]), device);
        Ok(DistillationBatch::new(stack_images(&batch.images, device)?, teacher)?)
    }

    fn objective(&self) -> DistillationObjective {
        let loss = if self.section.loss == "l2" { DistillationLoss::L2 } else { DistillationLoss::L1 };
        DistillationObjective { loss }
    }

    fn evaluate(&self, model: &ImageTower, device: &Device) -> anyhow::Result<Option<serde_json::Value>> {
        let Some(val) = self.run.val_table(self.val.as_ref())? else { return Ok(None) };
        let loaded;
        let (teacher, teacher_config) = match &self.teacher {
            Some((teacher, config)) => (teacher, config),
            None => {
                loaded = load_model(&self.section.teacher_model, Some(&self.section.teacher_weights), device)?;
                (&loaded.0, &loaded.1)
            }
        };
        let batch_size = self.run.eval.batch_size;
        let batcher = Batcher::for_eval(&self.run, val.clone(), &self.tokenizer, self.config.vision.image_size());
        let teacher_batcher = Batcher::for_eval(&self.run, val, &self.tokenizer, teacher_config.vision.image_size());
        let ours = image_embeddings(model, &batcher, batch_size, device)?;
        let theirs = image_embeddings(&teacher.visual, &teacher_batcher, batch_size, device)?;
        let rows = batcher.table().pairs.len();
        let cosine = ours.iter().zip(&theirs).map(|(a, b)| f64::from(a * b)).sum::<f64>() / rows as f64;
        Ok(Some(serde_json::json!({ "samples": rows, "teacher_cosine": cosine })))
    }

    /// The distilled image tower with the text tower the student started from.
    fn clip(&self, model: ImageTower, device: &Device) -> anyhow::Result<Clip> {
        let (mut clip, _) = load_run_model(&self.run, device)?;
        clip.visual = model;
        Ok(clip)
    }
}

/// Normalized image embeddings of every row of `batcher`'s table, `[rows * dim]`.
fn image_embeddings(visual: &ImageTower, batcher: &Batcher, batch_size: usize, device: &Device) -> anyhow::Result<Vec<f32>> {
    let rows: Vec<usize> = (0..batcher.table().pairs.len()).collect();
    let mut values = Vec::new();
    for chunk in rows.chunks(batch_size.max(1)) {
        let batch = batcher.batch(chunk, 0)?;
        anyhow::ensure!(batch.rows.len() == chunk.len(), "{}", batch.skipped.first().map(|e| e.to_string()).unwrap_or_default());
        let embeds = l2_normalize(visual.forward(stack_images(&batch.images, device)?));
        values.extend(embeds.into_data().iter::<f32>());
    }
    Ok(values)
}

/// The teacher's embeddings of the training images, from `cache` when it matches the table,
/// computed and cached otherwise.
fn teacher_embeddings(teacher: &Clip, batcher: &Batcher, cache: &Path, batch_size: usize, device: &Device) -> anyhow::Result<Vec<f32>> {
    let rows = batcher.table().pairs.len();
    if cache.is_file() {
        let tensors = clip_core::weights::Checkpoint::read(cache)?.tensors;
        if let Some(cached) = tensors.get("embeddings").filter(|t| t.shape.first() == Some(&rows)) {
            eprintln!("teacher embeddings from {}", cache.display());
            return Ok(cached.values.clone());
        }
    }
    eprintln!("computing teacher embeddings of {rows} images into {}", cache.display());
    let values = image_embeddings(&teacher.visual, batcher, batch_size, device)?;
    write_embeddings(cache, values.clone(), [rows, values.len() / rows.max(1)])?;
    Ok(values)
}

//! The `vild` task: ViLD's open-vocabulary detector (ViLD-text on base categories, ViLD-image
//! distilling CLIP's crop embeddings of precomputed proposals), evaluated by COCO AP on base
//! and novel categories; offers `clipforge detect` and `clipforge pseudo-label`.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};
use clip_core::preprocess::stack_images;
use clip_core::weights::{Checkpoint, RawTensor};
use clip_core::{Clip, ClipTokenizer};
use clip_task::clip_model::{check_clip_model, clip_config, load_run_model, tokenizer_of};
use clip_task::{BatchSource, RunContext, Task};

use crate::boxes::BoxXyxy;
use crate::task::batcher::{DetectionBatch, DetectionBatcher, DetectionData, evaluation_data, file_proposals, mirrored};
use crate::task::detect::{Loaded, detection_commands, run_detection_command};
use crate::task::open_detector::evaluate_detection;
use crate::task::section::{self, DetectionSection};
use crate::vild::{Vild, VildBatch, VildObjective, crop_embeddings};

/// ViLD over the CLIP of `[model]`, trained on the base categories of `[detection]` data.
pub struct VildTask {
    section: DetectionSection,
    run: RunContext,
    tokenizer: ClipTokenizer,
    /// What training prepared (`train_source`).
    prepared: Option<Prepared>,
}

/// The training data and what its batches need.
struct Prepared {
    data: DetectionData,
    /// Text embeddings of the base categories, `[base, D]`.
    class_embeddings: TensorData,
    /// ViLD-image's targets, when it is on.
    targets: Option<DistillTargets>,
    /// Precomputed proposals of the training images (`detection.file_proposals`).
    given: Option<Vec<Vec<BoxXyxy>>>,
}

impl Task for VildTask {
    type Section = DetectionSection;
    type Objective = VildObjective;
    type Source = DetectionBatcher;

    const SECTION: Option<&'static str> = Some("detection");

    fn validate(det: &DetectionSection, run: &RunContext) -> Result<(), String> {
        section::validate(det, run)?;
            if det.image_weight > 0.0 {
            match &det.proposals {
                None => return Err("detection.image_weight > 0 (ViLD-image) needs detection.proposals, a COCO results JSON of proposals for the training images".into()),
                Some(file) if !file.is_file() => return Err(format!("detection.proposals = {}: no such file", file.display())),
                Some(_) if det.distill_per_image == 0 => return Err("detection.distill_per_image must be at least 1".into()),
                Some(_) => {}
            }
        }
        check_clip_model(run)
    }

    fn new(section: DetectionSection, run: RunContext) -> anyhow::Result<Self> {
        let tokenizer = tokenizer_of(&clip_config(&run.model.name, run.model.weights.as_deref())?)?;
        Ok(Self { section, run, tokenizer, prepared: None })
    }

    fn run(&self) -> &RunContext {
        &self.run
    }

    fn model(&self, device: &Device) -> anyhow::Result<Vild> {
        let (clip, _) = load_run_model(&self.run, device)?;
        Ok(self.section.vild_config().init_with_clip(&clip, device)?)
    }

    fn train_source(&mut self, model: &Vild, device: &Device) -> anyhow::Result<DetectionBatcher> {
        let det = &self.section;
        let eval_device = device.clone().inner();
        let data = DetectionData::read(&self.run, det)?;
        let class_embeddings = model.valid().class_embeddings(&self.tokenizer, &data.base_names, &det.templates, &eval_device)?.into_data();
        let targets = if det.image_weight > 0.0 {
            // The CLIP as loaded, outside autodiff, embeds the proposal crops.
            let (clip, _) = load_run_model(&self.run, &eval_device)?;
            let cache = det.distill_cache.clone().unwrap_or_else(|| self.run.output.join("vild_crop_embeddings.safetensors"));
            Some(DistillTargets::load(&clip, &data.train, det, &cache, self.run.eval.batch_size, &eval_device)?)
        } else {
            None
        };
        let given = if det.file_proposals { Some(file_proposals(data.train.dataset(), det, det.proposals_per_image)?) } else { None };
        let batcher = data.train.clone();
        self.prepared = Some(Prepared { data, class_embeddings, targets, given });
        Ok(batcher)
    }

    fn to_batch(&self, batch: DetectionBatch, device: &Device) -> anyhow::Result<VildBatch> {
        let prepared = self.prepared.as_ref().context("to_batch before train_source")?;
        let size = self.section.image_size;
        let labels = batch
            .samples
            .iter()
            .map(|s| s.labels.iter().map(|&c| prepared.data.base_index(c)).collect())
            .collect::<anyhow::Result<Vec<Vec<usize>>>>()?;
        let (mut distill_boxes, mut values) = (Vec::new(), Vec::new());
        if let Some(targets) = &prepared.targets {
            for (&row, &flip) in batch.rows.iter().zip(&batch.flipped) {
                let (boxes, embeddings) = targets.of(row, flip, size);
                distill_boxes.push(boxes);
                values.extend_from_slice(embeddings);
            }
        }
        let distilled = distill_boxes.iter().map(Vec::len).sum::<usize>();
        let distill_targets = prepared.targets.as_ref().map(|t| Tensor::from_data(TensorData::new(values, [distilled, t.dim]), device));
        let proposals = prepared
            .given
            .as_ref()
            .map(|given| batch.rows.iter().zip(&batch.flipped).map(|(&row, &flip)| mirrored(&given[row], flip, size)).collect());
        let images = stack_images(&batch.samples.iter().map(|s| s.image.clone()).collect::<Vec<_>>(), device)?;
        let boxes = batch.samples.iter().map(|s| s.boxes.clone()).collect();
        let class_embeddings = Tensor::from_data(prepared.class_embeddings.clone(), device);
        Ok(VildBatch::new(images, boxes, labels, class_embeddings, distill_boxes, distill_targets, proposals)?)
    }

    fn objective(&self) -> VildObjective {
        VildObjective::new(&self.section.vild_config(), self.run.seed)
    }

    fn evaluate(&self, model: &Vild, device: &Device) -> anyhow::Result<Option<serde_json::Value>> {
        let det = &self.section;
        let (split, val) = evaluation_data(&self.run, det, self.prepared.as_ref().map(|p| &p.data))?;
        let Some(val) = val else { return Ok(None) };
        let proposals = if det.file_proposals { Some(file_proposals(&val, det, det.proposals_per_image)?) } else { None };
        let batcher = DetectionBatcher::new(&self.run, val, det.image_size, false);
        let report = evaluate_detection(model, &batcher, proposals.as_deref(), &self.tokenizer, &split, det, self.run.eval.batch_size, device)?;
        Ok(Some(report))
    }

    fn commands() -> Vec<clap::Command> {
        detection_commands()
    }

    fn run_command(&self, name: &str, args: &clap::ArgMatches, model: Vild, device: &Device) -> anyhow::Result<()> {
        let loaded = Loaded { detector: model, tokenizer: &self.tokenizer, section: &self.section, run: &self.run, device: device.clone() };
        run_detection_command(name, args, &loaded)
    }
}

/// The CLIP embeddings ViLD-image distills: for each training image its top proposals (input
/// pixels) and their crop embeddings, row-aligned.
struct DistillTargets {
    boxes: Vec<Vec<BoxXyxy>>,
    offsets: Vec<usize>,
    embeddings: Vec<f32>,
    dim: usize,
}

impl DistillTargets {
    /// Reads the proposals, then the crop embeddings from `cache` when it matches them,
    /// computing (with `clip`, in batches) and caching them otherwise.
    fn load(clip: &Clip, batcher: &DetectionBatcher, det: &DetectionSection, cache: &Path, batch_size: usize, device: &Device) -> anyhow::Result<Self> {
        let boxes = file_proposals(batcher.dataset(), det, det.distill_per_image)?;
        let mut offsets = vec![0];
        for image in &boxes {
            offsets.push(offsets.last().copied().unwrap_or(0) + image.len());
        }
        let total = *offsets.last().unwrap_or(&0);
        let dim = clip.visual.embed_dim();
        let counts: Vec<f32> = boxes.iter().map(|b| b.len() as f32).collect();
        if cache.is_file() {
            let tensors = Checkpoint::read(cache)?.tensors;
            let matches = tensors.get("counts").is_some_and(|c| c.values == counts)
                && tensors.get("boxes").is_some_and(|b| b.values == boxes.iter().flatten().flatten().copied().collect::<Vec<_>>());
            if let Some(cached) = tensors.get("embeddings").filter(|e| matches && e.shape == [total, dim]) {
                eprintln!("ViLD-image: crop embeddings of {total} proposals from {}", cache.display());
                return Ok(Self { boxes, offsets, embeddings: cached.values.clone(), dim });
            }
        }
        eprintln!("ViLD-image: embedding {total} proposal crops (1x and 1.5x) with CLIP into {}", cache.display());
        let eval = batcher.unflipped();
        let rows: Vec<usize> = (0..eval.rows()).collect();
        let mut embeddings = Vec::with_capacity(total * dim);
        for chunk in rows.chunks(batch_size.max(1)) {
            let batch = eval.batch(chunk, 0)?;
            anyhow::ensure!(batch.rows.len() == chunk.len(), "{}", batch.skipped.first().map(|e| e.to_string()).unwrap_or_default());
            let images = stack_images(&batch.samples.iter().map(|s| s.image.clone()).collect::<Vec<_>>(), device)?;
            let chunk_boxes: Vec<Vec<BoxXyxy>> = chunk.iter().map(|&r| boxes[r].clone()).collect();
            if chunk_boxes.iter().all(Vec::is_empty) {
                continue;
            }
            embeddings.extend(crop_embeddings(clip, images, &chunk_boxes).into_data().iter::<f32>());
        }
        let tensors = BTreeMap::from([
            ("embeddings".to_string(), RawTensor { shape: vec![total, dim], values: embeddings.clone() }),
            ("counts".to_string(), RawTensor { shape: vec![counts.len()], values: counts }),
            ("boxes".to_string(), RawTensor { shape: vec![total, 4], values: boxes.iter().flatten().flatten().copied().collect() }),
        ]);
        if let Some(parent) = cache.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        Checkpoint::write_safetensors(&tensors, cache)?;
        Ok(Self { boxes, offsets, embeddings, dim })
    }

    /// The proposals of image `row` (mirrored with `flip`) and the rows of their embeddings.
    fn of(&self, row: usize, flip: bool, size: usize) -> (Vec<BoxXyxy>, &[f32]) {
        (mirrored(&self.boxes[row], flip, size), &self.embeddings[self.offsets[row] * self.dim..self.offsets[row + 1] * self.dim])
    }
}


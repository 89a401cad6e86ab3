//! The `supervised` task: a CLIP image tower with a linear head over its normalized
//! embeddings, trained with cross-entropy on `data.label_column` (linear probe with the tower
//! frozen, or fine-tuning). The head can start as the zero-shot classifier (WiSE-FT / FLYP
//! style).

use burn::module::{Module, Param};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::{Device, FloatDType, Int, Tensor, TensorData};
use clip_core::loss::in_default_float;
use clip_core::preprocess::stack_images;
use clip_core::{Clip, ClipConfig, ClipTokenizer, ImageTower, Objective, StepOutput, ZeroShotClassifier, l2_normalize};
use serde::{Deserialize, Serialize};

use crate::clip_model::{check_clip_model, clip_config, load_run_model, tokenizer_of};
use crate::config::RunContext;
use crate::eval::{class_indices, class_names, templates};
use crate::pairs::{Batcher, PairBatch, PairTable};
use crate::task::Task;

/// Images and their class indices.
#[derive(Debug, Clone)]
pub struct LabelledBatch {
    /// `[batch, 3, H, W]`.
    pub(crate) images: Tensor<4>,
    /// `[batch]` class indices.
    pub(crate) labels: Tensor<1, Int>,
}

impl LabelledBatch {
    /// Images `[batch, 3, H, W]` and their class indices `[batch]`; an error when the counts
    /// differ.
    pub fn new(images: Tensor<4>, labels: Tensor<1, Int>) -> clip_core::Result<Self> {
        let (count, labelled) = (images.dims()[0], labels.dims()[0]);
        if count != labelled {
            return Err(clip_core::ClipError::Shape(format!("LabelledBatch: {count} images but {labelled} labels")));
        }
        Ok(Self { images, labels })
    }
}

/// A CLIP image tower and a linear classifier over its L2-normalized embeddings.
#[derive(Module, Debug)]
pub struct ImageClassifier {
    /// The image tower.
    pub visual: ImageTower,
    /// `[embed_dim, classes]` classifier.
    pub head: Linear,
}

impl ImageClassifier {
    /// A classifier whose head is randomly initialized.
    pub fn new(visual: ImageTower, embed_dim: usize, classes: usize, device: &Device) -> Self {
        Self {
            visual,
            head: LinearConfig::new(embed_dim, classes).init(device),
        }
    }

    /// A classifier whose head is the zero-shot classifier: class text embeddings times the
    /// logit scale, no bias. Before any training it predicts exactly what zero-shot does.
    pub fn from_zero_shot(visual: ImageTower, zero_shot: &ZeroShotClassifier, device: &Device) -> Self {
        let [classes, embed_dim] = zero_shot.weights.dims();
        let weight = zero_shot.weights.clone().transpose().to_device(device) * zero_shot.logit_scale;
        let mut head = LinearConfig::new(embed_dim, classes).init(device);
        head.weight = Param::from_tensor(weight);
        head.bias = head.bias.map(|bias| bias.map(|b| b.zeros_like()));
        Self { visual, head }
    }

    /// Class logits `[batch, classes]`.
    pub fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        self.head.forward(l2_normalize(self.visual.forward(images)))
    }
}

/// Cross-entropy over the classifier's logits; logs the batch accuracy.
#[derive(Debug, Clone, Default)]
pub struct SupervisedObjective {
    /// Label smoothing (0: none).
    pub label_smoothing: Option<f32>,
}

impl Objective for SupervisedObjective {
    type Model = ImageClassifier;
    type Batch = LabelledBatch;

    fn forward(&self, model: &ImageClassifier, batch: LabelledBatch) -> clip_core::Result<StepOutput> {
        let logits = in_default_float(model.forward(batch.images));
        let [samples, _] = logits.dims();
        let correct = logits
            .clone()
            .argmax(1)
            .squeeze_dim::<1>(1)
            .equal(batch.labels.clone())
            .int()
            .sum()
            .into_scalar::<i64>();
        let loss = CrossEntropyLossConfig::new()
            .with_smoothing(self.label_smoothing)
            .init(&logits.device())
            .forward(logits, batch.labels);
        Ok(StepOutput {
            loss,
            metrics: vec![("accuracy", correct as f64 / samples as f64)],
        })
    }

    fn cast_inputs(&self, mut batch: LabelledBatch, dtype: FloatDType) -> Option<LabelledBatch> {
        batch.images = batch.images.cast(dtype);
        Some(batch)
    }
}

/// `[supervised]`: the classifier head of the `supervised` task.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SupervisedSection {
    /// Start the head from the zero-shot classifier (`true`) or at random.
    pub zero_shot_head: bool,
    /// Label smoothing of the cross-entropy (0: none).
    pub label_smoothing: f64,
}

impl Default for SupervisedSection {
    fn default() -> Self {
        Self { zero_shot_head: true, label_smoothing: 0.0 }
    }
}

/// An image classifier trained on the labels of `data.label_column` (the classes:
/// `eval.classes`, or the labels of the training table), evaluated by top-1/top-5 accuracy.
pub struct SupervisedTask {
    section: SupervisedSection,
    run: RunContext,
    config: ClipConfig,
    tokenizer: ClipTokenizer,
    train: Option<PairTable>,
    val: Option<PairTable>,
    /// The class names, once the training table is read.
    classes: Vec<String>,
}

impl SupervisedTask {
    /// The training table, read once.
    fn train_table(&self) -> anyhow::Result<PairTable> {
        match &self.train {
            Some(table) => Ok(table.clone()),
            None => Ok(self.run.tables()?.0),
        }
    }

    /// The class names, in head order.
    fn classes(&self) -> anyhow::Result<Vec<String>> {
        if !self.classes.is_empty() {
            return Ok(self.classes.clone());
        }
        class_names(&self.run.eval, &self.train_table()?)
    }
}

impl Task for SupervisedTask {
    type Section = SupervisedSection;
    type Objective = SupervisedObjective;
    type Source = Batcher;

    const SECTION: Option<&'static str> = Some("supervised");

    fn validate(section: &SupervisedSection, run: &RunContext) -> Result<(), String> {
        if run.data.label_column.is_none() {
            return Err("train.objective = \"supervised\" needs data.label_column".into());
        }
        if !(0.0..1.0).contains(&section.label_smoothing) {
            return Err(format!("supervised.label_smoothing = {} must be in [0, 1)", section.label_smoothing));
        }
        check_clip_model(run)
    }

    fn new(section: SupervisedSection, run: RunContext) -> anyhow::Result<Self> {
        let config = clip_config(&run.model.name, run.model.weights.as_deref())?;
        let tokenizer = tokenizer_of(&config)?;
        Ok(Self { section, run, config, tokenizer, train: None, val: None, classes: Vec::new() })
    }

    fn run(&self) -> &RunContext {
        &self.run
    }

    fn model(&self, device: &Device) -> anyhow::Result<ImageClassifier> {
        let (clip, _) = load_run_model(&self.run, device)?;
        let classes = self.classes()?;
        if self.section.zero_shot_head {
            // Built outside autodiff, so that the head starts as a leaf parameter.
            let plain = device.clone().inner();
            let zero_shot = ZeroShotClassifier::build(&clip.valid(), &self.tokenizer, &classes, &templates(&self.run.eval), &plain)?;
            Ok(ImageClassifier::from_zero_shot(clip.visual, &zero_shot, device))
        } else {
            Ok(ImageClassifier::new(clip.visual, self.config.embed_dim, classes.len(), device))
        }
    }

    fn train_source(&mut self, _model: &ImageClassifier, _device: &Device) -> anyhow::Result<Batcher> {
        let (train, val) = self.run.tables()?;
        self.train = Some(train.clone());
        self.val = val;
        self.classes = self.classes()?;
        Batcher::for_training(&self.run, train, &self.tokenizer, self.config.vision.image_size())
    }

    fn to_batch(&self, batch: PairBatch, device: &Device) -> anyhow::Result<LabelledBatch> {
        let table = self.train.as_ref().ok_or_else(|| anyhow::anyhow!("to_batch before train_source"))?;
        let labels = class_indices(table, &batch.rows, &self.classes)?;
        let labels = Tensor::from_data(TensorData::new(labels, [batch.rows.len()]), device);
        Ok(LabelledBatch::new(stack_images(&batch.images, device)?, labels)?)
    }

    fn objective(&self) -> SupervisedObjective {
        SupervisedObjective { label_smoothing: Some(self.section.label_smoothing as f32).filter(|s| *s > 0.0) }
    }

    fn evaluate(&self, model: &ImageClassifier, device: &Device) -> anyhow::Result<Option<serde_json::Value>> {
        let Some(val) = self.run.val_table(self.val.as_ref())? else { return Ok(None) };
        let batcher = Batcher::for_eval(&self.run, val, &self.tokenizer, self.config.vision.image_size());
        Ok(Some(evaluate_classifier(model, &batcher, &self.classes()?, self.run.eval.batch_size, device)?))
    }

    /// The trained image tower with the text tower the run started from.
    fn clip(&self, model: ImageClassifier, device: &Device) -> anyhow::Result<Clip> {
        let (mut clip, _) = load_run_model(&self.run, device)?;
        clip.visual = model.visual;
        Ok(clip)
    }
}

/// Top-1 and top-5 accuracy of a classifier on the labelled table of `batcher`.
pub fn evaluate_classifier(
    model: &ImageClassifier,
    batcher: &Batcher,
    classes: &[String],
    batch_size: usize,
    device: &Device,
) -> anyhow::Result<serde_json::Value> {
    let rows: Vec<usize> = (0..batcher.table().pairs.len()).collect();
    let (mut top1, mut top5, mut samples) = (0usize, 0usize, 0usize);
    for chunk in rows.chunks(batch_size.max(1)) {
        let batch = batcher.batch(chunk, 0)?;
        if batch.rows.is_empty() {
            continue;
        }
        let targets = class_indices(batcher.table(), &batch.rows, classes)?;
        let logits = model.forward(stack_images(&batch.images, device)?);
        let [n, k] = logits.dims();
        let values: Vec<f32> = logits.into_data().iter::<f32>().collect();
        for (row, target) in values.chunks(k).zip(&targets) {
            let better = row.iter().filter(|&&v| v > row[*target as usize]).count();
            top1 += usize::from(better < 1);
            top5 += usize::from(better < 5);
        }
        samples += n;
    }
    anyhow::ensure!(samples > 0, "{}: no readable image to evaluate", batcher.table().path.display());
    Ok(serde_json::json!({
        "samples": samples,
        "top1": top1 as f64 / samples as f64,
        "top5": top5 as f64 / samples as f64,
        "chance_top1": 1.0 / classes.len() as f64,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Distribution, Tolerance};
    use clip_core::{ClipConfig, ClipTokenizer};

    #[test]
    fn zero_shot_head_gives_the_zero_shot_logits() {
        let device = Device::flex();
        let json = r#"{"embed_dim": 8, "vision_cfg": {"image_size": 8, "layers": 1, "width": 16, "patch_size": 4,
            "head_width": 8}, "text_cfg": {"context_length": 8, "width": 16, "heads": 2, "layers": 1}}"#;
        let config = ClipConfig::from_open_clip_json(json, "test").unwrap();
        let model = config.init(&device);
        let tokenizer = ClipTokenizer::new().with_context_length(8).unwrap();
        let zero_shot = ZeroShotClassifier::build(&model, &tokenizer, &["cat", "dog", "car"], &["a {}", "the {}"], &device).unwrap();
        let images = Tensor::<4>::random([2, 3, 8, 8], Distribution::Normal(0.0, 1.0), &device);
        let expected = zero_shot.logits(model.encode_image(images.clone(), false));
        let classifier = ImageClassifier::from_zero_shot(model.visual, &zero_shot, &device);
        classifier
            .forward(images)
            .into_data()
            .assert_approx_eq::<f32>(&expected.into_data(), Tolerance::absolute(1e-5));
    }
}

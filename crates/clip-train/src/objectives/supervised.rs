//! Supervised classification: a CLIP image tower with a linear head over its normalized
//! embeddings, trained with cross-entropy (linear probe with the tower frozen, or fine-tuning).
//! The head can start as the zero-shot classifier (WiSE-FT / FLYP style).

use burn::module::{Module, Param};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::{Device, Int, Tensor};
use clip_core::{ImageTower, Objective, StepOutput, ZeroShotClassifier, l2_normalize};

/// Images and their class indices.
#[derive(Debug, Clone)]
pub struct LabelledBatch {
    /// `[batch, 3, H, W]`.
    pub images: Tensor<4>,
    /// `[batch]` class indices.
    pub labels: Tensor<1, Int>,
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

    fn forward(&self, model: &ImageClassifier, batch: LabelledBatch) -> StepOutput {
        let logits = model.forward(batch.images);
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
        StepOutput {
            loss,
            metrics: vec![("accuracy", correct as f64 / samples as f64)],
        }
    }
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

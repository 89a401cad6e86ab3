//! Zero-shot classification: class names times prompt templates become a linear classifier
//! over normalized image embeddings.

use burn::tensor::activation::softmax;
use burn::tensor::{Device, Int, Tensor};

use crate::error::{ClipError, Result};
use crate::model::{Clip, l2_normalize};
use crate::tokenizer::ClipTokenizer;

/// OpenAI's 80 ImageNet prompt templates; `{}` stands for the class name.
pub fn imagenet_templates() -> Vec<&'static str> {
    include_str!("../data/imagenet_templates.txt").lines().collect()
}

/// Texts encoded per forward pass while building a classifier.
const TEXT_BATCH: usize = 256;

/// One class with its probability.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    /// Index into the classifier's class names.
    pub class: usize,
    /// Softmax probability over all classes.
    pub probability: f32,
}

/// A zero-shot classifier: one normalized text embedding per class.
#[derive(Debug, Clone)]
pub struct ZeroShotClassifier {
    /// Class names, in index order.
    pub class_names: Vec<String>,
    /// `[classes, embed_dim]`, rows L2-normalized.
    pub weights: Tensor<2>,
    /// `exp(logit_scale)` of the model the classifier was built with.
    pub logit_scale: f32,
}

impl ZeroShotClassifier {
    /// For every class, encodes each template filled with the class name, L2-normalizes the
    /// embeddings, averages them and normalizes the mean again (open_clip's
    /// `build_zero_shot_classifier`).
    pub fn build<S: AsRef<str>, T: AsRef<str>>(
        model: &Clip,
        tokenizer: &ClipTokenizer,
        class_names: &[S],
        templates: &[T],
        device: &Device,
    ) -> Result<Self> {
        let weights = class_text_embeddings(|tokens| model.encode_text(tokens, true), tokenizer, class_names, templates, device)?;
        Ok(Self {
            class_names: class_names.iter().map(|c| c.as_ref().to_string()).collect(),
            weights,
            logit_scale: model.logit_scale().into_scalar::<f32>(),
        })
    }

    /// Scaled logits `[images, classes]` for image embeddings `[images, embed_dim]`
    /// (normalized here).
    pub fn logits(&self, image_embeds: Tensor<2>) -> Tensor<2> {
        l2_normalize(image_embeds).matmul(self.weights.clone().transpose()) * self.logit_scale
    }

    /// The `k` most probable classes of each image, best first.
    pub fn top_k(&self, image_embeds: Tensor<2>, k: usize) -> Vec<Vec<Prediction>> {
        let probabilities = softmax(self.logits(image_embeds), 1);
        let [images, classes] = probabilities.dims();
        let values: Vec<f32> = probabilities.into_data().iter::<f32>().collect();
        (0..images)
            .map(|i| {
                let row = &values[i * classes..(i + 1) * classes];
                let mut order: Vec<usize> = (0..classes).collect();
                order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
                order
                    .into_iter()
                    .take(k)
                    .map(|class| Prediction {
                        class,
                        probability: row[class],
                    })
                    .collect()
            })
            .collect()
    }
}


/// One normalized text embedding per class name, `[classes, embed_dim]`: the mean of the
/// normalized embeddings of the name put into each template (`{}` standing for the name),
/// normalized again (CLIP's prompt ensembling). `encode_text` maps token ids `[n, context]`
/// to normalized embeddings `[n, embed_dim]`, so any text tower can be used.
pub fn class_text_embeddings<S: AsRef<str>, T: AsRef<str>>(
    encode_text: impl Fn(Tensor<2, Int>) -> Tensor<2>,
    tokenizer: &ClipTokenizer,
    class_names: &[S],
    templates: &[T],
    device: &Device,
) -> Result<Tensor<2>> {
    if class_names.is_empty() || templates.is_empty() {
        return Err(ClipError::Shape("prompt ensembling needs at least one class name and one template".into()));
    }
    let mut class_embeddings = Vec::with_capacity(class_names.len());
    for name in class_names {
        let prompts: Vec<String> = templates.iter().map(|t| t.as_ref().replace("{}", name.as_ref())).collect();
        let mut embeddings = Vec::new();
        for chunk in prompts.chunks(TEXT_BATCH) {
            embeddings.push(encode_text(tokenizer.tokenize_batch(chunk, device)?));
        }
        class_embeddings.push(l2_normalize(Tensor::cat(embeddings, 0).mean_dim(0)));
    }
    Ok(Tensor::cat(class_embeddings, 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ships_the_80_openai_templates() {
        let templates = imagenet_templates();
        assert_eq!(templates.len(), 80);
        assert!(templates.iter().all(|t| t.matches("{}").count() == 1));
    }

    #[test]
    fn classifies_by_nearest_class_embedding() {
        let device = Device::flex();
        let classifier = ZeroShotClassifier {
            class_names: vec!["a".into(), "b".into(), "c".into()],
            weights: Tensor::<2>::eye(3, &device),
            logit_scale: 100.0,
        };
        let images = Tensor::<2>::from_floats([[0.1, 0.9, 0.0], [0.0, 0.2, 5.0]], &device);
        let top = classifier.top_k(images, 2);
        assert_eq!(top[0][0].class, 1);
        assert_eq!(top[1][0].class, 2);
        assert_eq!(top[1][1].class, 1);
        assert!(top[0][0].probability > 0.99);
    }
}

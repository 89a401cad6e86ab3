//! Evaluation on a labelled image-caption table: zero-shot top-1/top-5 accuracy over class
//! names and prompt templates, and image-text retrieval recall@1/5/10.

use burn::tensor::{Device, Int, Tensor, TensorData};
use clip_core::preprocess::stack_images;
use clip_core::{Clip, ClipTokenizer, ZeroShotClassifier, imagenet_templates};
use serde::Serialize;

use anyhow::Context;

use crate::config::{EvalSection, RunContext};
use crate::pairs::{Batcher, PairTable};

/// Evaluation results.
#[derive(Debug, Clone, Default, Serialize)]
pub struct EvalReport {
    /// Images evaluated (unreadable ones skipped when the config allows).
    pub samples: usize,
    /// Zero-shot top-1 accuracy (when the table has labels).
    pub zero_shot_top1: Option<f64>,
    /// Zero-shot top-5 accuracy.
    pub zero_shot_top5: Option<f64>,
    /// Top-1 accuracy of guessing: 1 / classes.
    pub chance_top1: Option<f64>,
    /// Image-to-text recall@1, @5, @10 (the row's own caption must be retrieved).
    pub image_to_text_recall: [f64; 3],
    /// Text-to-image recall@1, @5, @10.
    pub text_to_image_recall: [f64; 3],
}

/// Evaluates `model` (without autodiff) on every row of the batcher's table.
pub fn evaluate(
    model: &Clip,
    batcher: &Batcher,
    tokenizer: &ClipTokenizer,
    eval: &EvalSection,
    device: &Device,
) -> anyhow::Result<EvalReport> {
    let rows: Vec<usize> = (0..batcher.table().pairs.len()).collect();
    let mut image_embeds = Vec::new();
    let mut text_embeds = Vec::new();
    let mut kept = Vec::new();
    for chunk in rows.chunks(eval.batch_size) {
        let batch = batcher.batch(chunk, 0)?;
        if batch.rows.is_empty() {
            continue;
        }
        let images = stack_images(&batch.images, device)?;
        let tokens = Tensor::<2, Int>::from_data(
            TensorData::new(batch.tokens, [batch.rows.len(), tokenizer.context_length()]),
            device,
        );
        image_embeds.push(model.encode_image(images, true));
        text_embeds.push(model.encode_text(tokens, true));
        kept.extend(batch.rows);
    }
    anyhow::ensure!(!kept.is_empty(), "{}: no readable image to evaluate", batcher.table().path.display());
    let image_embeds = Tensor::cat(image_embeds, 0);
    let text_embeds = Tensor::cat(text_embeds, 0);

    let similarity = image_embeds.clone().matmul(text_embeds.transpose());
    let mut report = EvalReport {
        samples: kept.len(),
        image_to_text_recall: recall_at([1, 5, 10], &rank_of_diagonal(similarity.clone())),
        text_to_image_recall: recall_at([1, 5, 10], &rank_of_diagonal(similarity.transpose())),
        ..EvalReport::default()
    };

    let table = batcher.table();
    if kept.iter().all(|&row| table.pairs[row].label.is_some()) {
        let classes = class_names(eval, table)?;
        let targets = class_indices(table, &kept, &classes)?;
        let templates = templates(eval);
        let classifier = ZeroShotClassifier::build(model, tokenizer, &classes, &templates, device)?;
        let top = classifier.top_k(image_embeds, 5);
        let hits = |k: usize| {
            let correct = top
                .iter()
                .zip(&targets)
                .filter(|(predictions, target)| predictions.iter().take(k).any(|p| p.class as i64 == **target))
                .count();
            correct as f64 / targets.len() as f64
        };
        report.zero_shot_top1 = Some(hits(1));
        report.zero_shot_top5 = Some(hits(5));
        report.chance_top1 = Some(1.0 / classes.len() as f64);
    }
    Ok(report)
}

/// The zero-shot evaluation a run does every `eval.zero_shot_every` steps on
/// `eval.zero_shot_data` (open_clip's `--zeroshot-frequency` on ImageNet).
pub struct PeriodicZeroShot {
    batcher: Batcher,
    tokenizer: ClipTokenizer,
    eval: EvalSection,
    /// Steps between evaluations.
    pub every: usize,
}

impl PeriodicZeroShot {
    /// The evaluation `run` asks for (`None` without `eval.zero_shot_every`), its set read.
    pub fn new(run: &RunContext) -> anyhow::Result<Option<Self>> {
        let (every, Some(data)) = (run.eval.zero_shot_every, &run.eval.zero_shot_data) else { return Ok(None) };
        if every == 0 {
            return Ok(None);
        }
        let table = PairTable::read(data, &run.data)?;
        anyhow::ensure!(
            table.pairs.iter().all(|p| p.label.is_some()),
            "eval.zero_shot_data = {}: needs labels (a class folder, or a table with data.label_column)",
            data.display()
        );
        let config = crate::clip_model::clip_config(&run.model.name, run.model.weights.as_deref())?;
        let tokenizer = crate::clip_model::tokenizer_of(&config)?;
        let batcher = Batcher::for_eval(run, table, &tokenizer, config.vision.image_size());
        Ok(Some(Self { batcher, tokenizer, eval: run.eval.clone(), every }))
    }

    /// Zero-shot top-1 and top-5 accuracy of `model` (without autodiff).
    pub fn run(&self, model: &Clip, device: &Device) -> anyhow::Result<[(&'static str, f64); 2]> {
        let report = evaluate(model, &self.batcher, &self.tokenizer, &self.eval, device)?;
        let top = |v: Option<f64>| v.context("the zero-shot set has no labels");
        Ok([("zero_shot_top1", top(report.zero_shot_top1)?), ("zero_shot_top5", top(report.zero_shot_top5)?)])
    }
}

/// `eval.classes`, or the sorted distinct labels of `table`.
pub fn class_names(eval: &EvalSection, table: &PairTable) -> anyhow::Result<Vec<String>> {
    if !eval.classes.is_empty() {
        return Ok(eval.classes.clone());
    }
    let mut labels: Vec<String> = table.pairs.iter().filter_map(|p| p.label.clone()).collect();
    labels.sort();
    labels.dedup();
    anyhow::ensure!(!labels.is_empty(), "{}: no labels", table.path.display());
    Ok(labels)
}

/// `eval.templates`, or OpenAI's 80 ImageNet templates.
pub fn templates(eval: &EvalSection) -> Vec<String> {
    if eval.templates.is_empty() {
        imagenet_templates().into_iter().map(String::from).collect()
    } else {
        eval.templates.clone()
    }
}

/// Class index of each row's label.
pub fn class_indices(table: &PairTable, rows: &[usize], classes: &[String]) -> anyhow::Result<Vec<i64>> {
    rows.iter()
        .map(|&row| {
            let pair = &table.pairs[row];
            let label = pair.label.as_deref().unwrap_or_default();
            classes.iter().position(|c| c == label).map(|i| i as i64).ok_or_else(|| {
                anyhow::anyhow!("{}:{}: label {label:?} is not one of the classes", table.path.display(), pair.line)
            })
        })
        .collect()
}

/// For each row of a square similarity matrix, how many entries beat the diagonal one.
fn rank_of_diagonal(similarity: Tensor<2>) -> Vec<usize> {
    let [rows, cols] = similarity.dims();
    let values: Vec<f32> = similarity.into_data().iter::<f32>().collect();
    (0..rows)
        .map(|i| {
            let row = &values[i * cols..(i + 1) * cols];
            row.iter().filter(|&&v| v > row[i]).count()
        })
        .collect()
}

/// Fraction of ranks below each `k`.
fn recall_at(ks: [usize; 3], ranks: &[usize]) -> [f64; 3] {
    ks.map(|k| ranks.iter().filter(|&&r| r < k).count() as f64 / ranks.len().max(1) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recall_counts_the_rank_of_the_matching_item() {
        let device = Device::flex();
        // Row 0 ranks its match first, row 1 second (behind column 0), row 2 third.
        let similarity = Tensor::<2>::from_floats([[0.9, 0.1, 0.0], [0.8, 0.5, 0.1], [0.7, 0.6, 0.2]], &device);
        let ranks = rank_of_diagonal(similarity);
        assert_eq!(ranks, vec![0, 1, 2]);
        assert_eq!(recall_at([1, 2, 3], &ranks), [1.0 / 3.0, 2.0 / 3.0, 1.0]);
    }
}

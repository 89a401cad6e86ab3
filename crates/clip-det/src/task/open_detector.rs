//! What the detection tasks share: a detector that finds any list of category names
//! ([`OpenDetector`]), and its COCO-style evaluation.

use std::ops::Range;

use anyhow::Context;
use rand::{Rng, SeedableRng};
use burn::tensor::{Device, Tensor};
use clip_core::ClipTokenizer;
use clip_core::preprocess::stack_images;
use clip_task::BatchSource;

use crate::boxes::{BoxXyxy, DetectOptions, Prediction};
use crate::data::CategorySplit;
use crate::eval::{Detection, GroundTruthBox, coco_ap};
use crate::glip::{Glip, GroundingPrompt};
use crate::task::batcher::{DetectionBatcher, scale_box};
use crate::task::section::DetectionSection;
use crate::vild::Vild;

/// An open-vocabulary detector: category names in, boxes out.
pub trait OpenDetector {
    /// Detections of `names` in images `[batch, 3, S, S]` (`category` indexes `names`);
    /// `proposals` per image (input pixels), when given, replace the detector's own where it
    /// classifies proposals (ViLD).
    fn detect_in(
        &self,
        images: Tensor<4>,
        proposals: Option<&[Vec<BoxXyxy>]>,
        names: &[String],
        tokenizer: &ClipTokenizer,
        templates: &[String],
        options: &DetectOptions,
    ) -> anyhow::Result<Vec<Vec<Prediction>>>;

    /// Detections of the phrases of `caption` (char spans per phrase; category = phrase
    /// index) in one image, for detectors that read captions (GLIP); `None` otherwise.
    fn ground(&self, images: Tensor<4>, tokenizer: &ClipTokenizer, caption: &str, phrases: &[Vec<Range<usize>>], options: &DetectOptions) -> anyhow::Result<Option<Vec<Prediction>>> {
        let _ = (images, tokenizer, caption, phrases, options);
        Ok(None)
    }
}

impl OpenDetector for Vild {
    fn detect_in(
        &self,
        images: Tensor<4>,
        proposals: Option<&[Vec<BoxXyxy>]>,
        names: &[String],
        tokenizer: &ClipTokenizer,
        templates: &[String],
        options: &DetectOptions,
    ) -> anyhow::Result<Vec<Vec<Prediction>>> {
        let embeddings = self.class_embeddings(tokenizer, names, templates, &images.device())?;
        Ok(match proposals {
            Some(proposals) => self.detect_in_proposals(images, proposals, embeddings, options),
            None => self.detect(images, embeddings, options),
        })
    }
}

impl OpenDetector for Glip {
    fn detect_in(
        &self,
        images: Tensor<4>,
        _proposals: Option<&[Vec<BoxXyxy>]>,
        names: &[String],
        tokenizer: &ClipTokenizer,
        _templates: &[String],
        options: &DetectOptions,
    ) -> anyhow::Result<Vec<Vec<Prediction>>> {
        let batch = images.dims()[0];
        let mut merged = vec![Vec::new(); batch];
        // Long category lists are split over several prompts, as GLIP does.
        for chunk in prompt_chunks(tokenizer, names)? {
            let prompt = GroundingPrompt::from_categories(tokenizer, &names[chunk.clone()])?;
            for (image, predictions) in self.detect(images.clone(), &prompt, options).into_iter().enumerate() {
                merged[image].extend(predictions.into_iter().map(|p| Prediction { category: p.category + chunk.start, ..p }));
            }
        }
        for predictions in &mut merged {
            predictions.sort_by(|a, b| b.score.total_cmp(&a.score));
            predictions.truncate(options.max_per_image);
        }
        Ok(merged)
    }

    fn ground(&self, images: Tensor<4>, tokenizer: &ClipTokenizer, caption: &str, phrases: &[Vec<Range<usize>>], options: &DetectOptions) -> anyhow::Result<Option<Vec<Prediction>>> {
        let prompt = GroundingPrompt::from_caption(tokenizer, caption, phrases)?;
        Ok(self.detect(images, &prompt, options).into_iter().next())
    }
}

/// Consecutive ranges of `names` whose category prompt fits the tokenizer's context.
fn prompt_chunks(tokenizer: &ClipTokenizer, names: &[String]) -> anyhow::Result<Vec<Range<usize>>> {
    let mut chunks = Vec::new();
    let mut start = 0;
    while start < names.len() {
        let mut end = start + 1;
        while end < names.len() && GroundingPrompt::from_categories(tokenizer, &names[start..end + 1]).is_ok() {
            end += 1;
        }
        GroundingPrompt::from_categories(tokenizer, &names[start..end])
            .with_context(|| format!("category {:?} does not fit the text context", names[start]))?;
        chunks.push(start..end);
        start = end;
    }
    Ok(chunks)
}

/// COCO-style AP of `detector` on `batcher`'s dataset over all its categories, with AP over
/// the base and the novel categories of `split`; ViLD classifies `proposals` (per image of the
/// dataset) when given.
#[allow(clippy::too_many_arguments)]
pub fn evaluate_detection(
    detector: &impl OpenDetector,
    batcher: &DetectionBatcher,
    proposals: Option<&[Vec<BoxXyxy>]>,
    tokenizer: &ClipTokenizer,
    split: &CategorySplit,
    det: &DetectionSection,
    batch_size: usize,
    device: &Device,
) -> anyhow::Result<serde_json::Value> {
    let dataset = batcher.dataset();
    let names: Vec<String> = dataset.categories.iter().map(|c| c.name.clone()).collect();
    let options = det.detect_options();
    let (mut detections, mut ground_truth) = (Vec::new(), Vec::new());
    // COCOeval ranks detections of equal score by image id, so images are indexed by id order.
    let mut by_id: Vec<usize> = (0..dataset.images.len()).collect();
    by_id.sort_by_key(|&row| dataset.images[row].id);
    let mut id_rank = vec![0; by_id.len()];
    for (rank, row) in by_id.into_iter().enumerate() {
        id_rank[row] = rank;
    }
    let rows: Vec<usize> = (0..batcher.rows()).collect();
    for chunk in rows.chunks(batch_size.max(1)) {
        let batch = batcher.batch(chunk, 0)?;
        if batch.rows.is_empty() {
            continue;
        }
        let images = stack_images(&batch.samples.iter().map(|s| s.image.clone()).collect::<Vec<_>>(), device)?;
        let given: Option<Vec<Vec<BoxXyxy>>> = proposals.map(|all| batch.rows.iter().map(|&r| all[r].clone()).collect());
        let predicted = detector.detect_in(images, given.as_deref(), &names, tokenizer, &det.templates, &options)?;
        for (&row, predictions) in batch.rows.iter().zip(predicted) {
            let record = &dataset.images[row];
            for annotation in &record.annotations {
                let bbox = scale_box(&annotation.bbox, record, det.image_size);
                ground_truth.push(GroundTruthBox { image: id_rank[row], category: annotation.category, bbox, iscrowd: annotation.iscrowd });
            }
            let image = id_rank[row];
            detections.extend(predictions.into_iter().map(|p| Detection { image, category: p.category, bbox: p.bbox, score: p.score }));
        }
    }
    anyhow::ensure!(!ground_truth.is_empty(), "{}: no box to evaluate against", dataset.path.display());
    let all: Vec<usize> = (0..names.len()).collect();
    let report = coco_ap(&detections, &ground_truth, &all);
    let chance = coco_ap(&shuffled_ground_truth(&ground_truth, id_rank.len()), &ground_truth, &all);
    let per_category: serde_json::Map<String, serde_json::Value> = report
        .per_category
        .iter()
        .map(|(category, ap)| (names[*category].clone(), serde_json::json!(ap)))
        .collect();
    Ok(serde_json::json!({
        "images": batcher.rows(),
        "detections": detections.len(),
        "ap": report.ap,
        "ap50": report.ap50,
        "ap75": report.ap75,
        "chance_ap": chance.ap,
        "chance_ap50": chance.ap50,
        "ap_base": report.mean_over(&split.base),
        "ap_novel": report.mean_over(&split.novel),
        "per_category": per_category,
    }))
}

/// The chance level of detection: AP of a detector that never looks at the image but knows
/// the dataset's boxes. Image `i` gets the ground-truth boxes (categories, places, sizes) of
/// image `i + 1`, with seeded random scores.
fn shuffled_ground_truth(ground_truth: &[GroundTruthBox], images: usize) -> Vec<Detection> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    ground_truth
        .iter()
        .filter(|g| !g.iscrowd)
        .map(|g| Detection {
            image: (g.image + images - 1) % images,
            category: g.category,
            bbox: g.bbox,
            score: rng.random::<f32>(),
        })
        .collect()
}

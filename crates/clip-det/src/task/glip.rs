//! The `glip` task: GLIP's detection as phrase grounding (captions with phrase boxes where
//! images have them, per-image category prompts with sampled negatives otherwise), evaluated
//! by COCO AP on base and novel categories with the fixed prompt of every category; offers
//! `clipforge detect` and `clipforge pseudo-label`.

use std::ops::Range;

use anyhow::Context;
use burn::tensor::{Device, Tensor, TensorData};
use clip_core::ClipTokenizer;
use clip_core::preprocess::stack_images;
use clip_task::clip_model::{check_clip_model, clip_config, load_run_model, tokenizer_of};
use clip_task::{RunContext, Task};
use rand::SeedableRng;
use rand::rngs::StdRng;

use crate::boxes::BoxXyxy;
use crate::glip::{CategoryPrompts, Glip, GlipBatch, GlipObjective, GroundingPrompt, PromptError};
use crate::task::batcher::{DetectionBatch, DetectionBatcher, DetectionData, evaluation_data};
use crate::task::detect::{Loaded, detection_commands, run_detection_command};
use crate::task::open_detector::evaluate_detection;
use crate::task::section::{self, DetectionSection};

/// GLIP over the CLIP of `[model]`, trained on the base categories of `[detection]` data.
pub struct GlipTask {
    section: DetectionSection,
    run: RunContext,
    tokenizer: ClipTokenizer,
    /// What training prepared (`train_source`).
    prepared: Option<Prepared>,
}

/// The training data and what its batches need.
struct Prepared {
    data: DetectionData,
    /// The category prompts over the base categories (per image, or the fixed one).
    prompts: CategoryPrompts,
}

/// One training image as grounding data: its prompt's token ids, and the boxes it keeps with
/// the token positions of each box's phrase.
#[derive(Debug, Clone, PartialEq)]
struct Grounded {
    tokens: Vec<i64>,
    boxes: Vec<BoxXyxy>,
    positive_tokens: Vec<Vec<Range<usize>>>,
}

/// A detection image as grounding data: the category prompt `prompts` draws for it from
/// `seed` (its sample's seed, see `DetectionBatch::seeds`), each box (`categories`: its base
/// category) grounded to its category's name; boxes whose category the text budget cut off
/// are dropped, as the official code drops them.
fn category_grounding(
    prompts: &CategoryPrompts,
    tokenizer: &ClipTokenizer,
    boxes: &[BoxXyxy],
    categories: &[usize],
    seed: u64,
) -> Result<Grounded, PromptError> {
    let grounding = prompts.sample(tokenizer, categories, &mut StdRng::seed_from_u64(seed))?;
    let (mut kept, mut positive_tokens) = (Vec::new(), Vec::new());
    for (bbox, &category) in boxes.iter().zip(categories) {
        if let Some(tokens) = grounding.tokens_of(category) {
            kept.push(*bbox);
            positive_tokens.push(tokens.to_vec());
        }
    }
    Ok(Grounded { tokens: grounding.prompt.tokens, boxes: kept, positive_tokens })
}

impl Task for GlipTask {
    type Section = DetectionSection;
    type Objective = GlipObjective;
    type Source = DetectionBatcher;

    const SECTION: Option<&'static str> = Some("detection");

    fn validate(det: &DetectionSection, run: &RunContext) -> Result<(), String> {
        section::validate(det, run)?;
        check_clip_model(run)
    }

    fn new(section: DetectionSection, run: RunContext) -> anyhow::Result<Self> {
        let tokenizer = tokenizer_of(&clip_config(&run.model.name, run.model.weights.as_deref())?)?;
        Ok(Self { section, run, tokenizer, prepared: None })
    }

    fn run(&self) -> &RunContext {
        &self.run
    }

    fn model(&self, device: &Device) -> anyhow::Result<Glip> {
        let (clip, _) = load_run_model(&self.run, device)?;
        Ok(self.section.glip_config().init_with_clip(&clip, device)?)
    }

    fn train_source(&mut self, _model: &Glip, _device: &Device) -> anyhow::Result<DetectionBatcher> {
        let data = DetectionData::read(&self.run, &self.section)?;
        let base = &data.base_names;
        let sampling = self.section.negative_sampling();
        let prompts = CategoryPrompts::new(&self.tokenizer, base, sampling).with_context(|| match sampling {
            Some(_) => format!("a name of the {} base categories does not fit the text context on its own", base.len()),
            None => format!(
                "the prompt of the {} base categories does not fit the text context: set detection.shuffle_prompt = true or train GLIP on captions",
                base.len()
            ),
        })?;
        let batcher = data.train.clone();
        self.prepared = Some(Prepared { data, prompts });
        Ok(batcher)
    }

    fn to_batch(&self, batch: DetectionBatch, device: &Device) -> anyhow::Result<GlipBatch> {
        let prepared = self.prepared.as_ref().context("to_batch before train_source")?;
        let dataset = prepared.data.train.dataset();
        let (mut tokens, mut boxes, mut positive_tokens) = (Vec::new(), Vec::new(), Vec::new());
        for ((&row, sample), &seed) in batch.rows.iter().zip(&batch.samples).zip(&batch.seeds) {
            let record = &dataset.images[row];
            let image = || format!("{}: image {}", dataset.path.display(), record.id);
            let caption = record.caption.as_deref().filter(|_| self.section.captions && sample.spans.iter().all(|s| !s.is_empty()));
            let grounded = match caption {
                Some(caption) if !sample.spans.is_empty() => {
                    let prompt = GroundingPrompt::from_caption(&self.tokenizer, caption, &sample.spans).with_context(image)?;
                    Grounded { tokens: prompt.tokens, boxes: sample.boxes.clone(), positive_tokens: prompt.phrase_tokens }
                }
                _ => {
                    let categories =
                        sample.labels.iter().map(|&c| prepared.data.base_index(c)).collect::<anyhow::Result<Vec<_>>>()?;
                    category_grounding(&prepared.prompts, &self.tokenizer, &sample.boxes, &categories, seed).with_context(image)?
                }
            };
            tokens.extend(grounded.tokens);
            boxes.push(grounded.boxes);
            positive_tokens.push(grounded.positive_tokens);
        }
        let images = stack_images(&batch.samples.iter().map(|s| s.image.clone()).collect::<Vec<_>>(), device)?;
        let tokens = Tensor::from_data(TensorData::new(tokens, [batch.rows.len(), self.tokenizer.context_length()]), device);
        Ok(GlipBatch::new(images, tokens, boxes, positive_tokens)?)
    }

    fn objective(&self) -> GlipObjective {
        GlipObjective::new(&self.section.glip_config())
    }

    fn evaluate(&self, model: &Glip, device: &Device) -> anyhow::Result<Option<serde_json::Value>> {
        let det = &self.section;
        let (split, val) = evaluation_data(&self.run, det, self.prepared.as_ref().map(|p| &p.data))?;
        let Some(val) = val else { return Ok(None) };
        let batcher = DetectionBatcher::new(&self.run, val, det.image_size, false);
        Ok(Some(evaluate_detection(model, &batcher, None, &self.tokenizer, &split, det, self.run.eval.batch_size, device)?))
    }

    fn commands() -> Vec<clap::Command> {
        detection_commands()
    }

    fn run_command(&self, name: &str, args: &clap::ArgMatches, model: Glip, device: &Device) -> anyhow::Result<()> {
        let loaded = Loaded { detector: model, tokenizer: &self.tokenizer, section: &self.section, run: &self.run, device: device.clone() };
        run_detection_command(name, args, &loaded)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use clip_task::BatchSource;
    use clip_task::config::{DataSection, ModelSection};

    use super::*;
    use crate::data::CocoDataset;
    use crate::glip::NegativeSampling;

    /// The shipped detection set through the training batcher and the GLIP grounding of
    /// `to_batch`: for step `step`, each image's prompt text and its boxes' phrase texts.
    fn grounded_batch(prompts: &CategoryPrompts, tokenizer: &ClipTokenizer, rows: &[usize], step: usize) -> Vec<(String, Vec<String>, Grounded)> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../datasets/det-shapes");
        let dataset = CocoDataset::read(&root.join("train.json"), &root.join("images")).unwrap();
        let names: Vec<String> = dataset.categories.iter().map(|c| c.name.clone()).collect();
        let mut data = DataSection::new(root.join("train.json"));
        data.workers = 2;
        let mut run = RunContext::new(ModelSection::named("tiny"), data, "out");
        run.seed = 11;
        // A fresh batcher each time, as a resumed run builds it.
        let batch = DetectionBatcher::new(&run, dataset, 32, true).batch(rows, step).unwrap();
        batch
            .samples
            .iter()
            .zip(&batch.seeds)
            .map(|(sample, &seed)| {
                let grounded = category_grounding(prompts, tokenizer, &sample.boxes, &sample.labels, seed).unwrap();
                let prompt = prompts.sample(tokenizer, &sample.labels, &mut StdRng::seed_from_u64(seed)).unwrap().prompt;
                assert_eq!(grounded.boxes.len(), sample.boxes.len(), "every box fits the prompt");
                let phrases: Vec<String> = grounded
                    .positive_tokens
                    .iter()
                    .map(|spans| spans.iter().map(|s| tokenizer.decode(&grounded.tokens[s.clone()])).collect::<Vec<_>>().join(" "))
                    .collect();
                for (phrase, &label) in phrases.iter().zip(&sample.labels) {
                    assert_eq!(phrase, &names[label], "a box is grounded to its category's name in {:?}", prompt.text);
                }
                (prompt.text, phrases, grounded)
            })
            .collect()
    }

    #[test]
    fn training_prompts_are_drawn_per_image_and_step_and_replayed_on_resume() {
        let tokenizer = ClipTokenizer::new();
        let names: Vec<String> = ["circle", "square", "triangle", "star"].map(String::from).to_vec();
        let prompts = CategoryPrompts::new(&tokenizer, &names, Some(NegativeSampling::default())).unwrap();
        let rows: Vec<usize> = (0..12).collect();
        let first = grounded_batch(&prompts, &tokenizer, &rows, 5);
        assert_eq!(first, grounded_batch(&prompts, &tokenizer, &rows, 5), "the same step gives the same prompts");
        let later = grounded_batch(&prompts, &tokenizer, &rows, 5 + 12);
        let texts = |batch: &[(String, Vec<String>, Grounded)]| batch.iter().map(|b| b.0.clone()).collect::<Vec<_>>();
        let (a, b) = (texts(&first), texts(&later));
        let differ = a.iter().zip(&b).filter(|(x, y)| x != y).count();
        assert!(differ >= 6, "the same images in another epoch: {a:?} vs {b:?}");
        let distinct: std::collections::HashSet<&String> = a.iter().collect();
        assert!(distinct.len() >= 6, "images of one batch get different prompts: {a:?}");
    }
}

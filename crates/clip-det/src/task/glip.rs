//! The `glip` task: GLIP's detection as phrase grounding (captions with phrase boxes where
//! images have them, category prompts otherwise), evaluated by COCO AP on base and novel
//! categories; offers `clipforge detect` and `clipforge pseudo-label`.

use anyhow::Context;
use burn::tensor::{Device, Tensor, TensorData};
use clip_core::ClipTokenizer;
use clip_core::preprocess::stack_images;
use clip_task::clip_model::{check_clip_model, clip_config, load_run_model, tokenizer_of};
use clip_task::{RunContext, Task};

use crate::glip::{Glip, GlipBatch, GlipObjective, GroundingPrompt};
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
    /// The prompt of the base categories ("person. bicycle. car.").
    category_prompt: GroundingPrompt,
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
        let category_prompt = GroundingPrompt::from_categories(&self.tokenizer, base).with_context(|| {
            format!("the prompt of the {} base categories does not fit the text context: train GLIP on captions", base.len())
        })?;
        let batcher = data.train.clone();
        self.prepared = Some(Prepared { data, category_prompt });
        Ok(batcher)
    }

    fn to_batch(&self, batch: DetectionBatch, device: &Device) -> anyhow::Result<GlipBatch> {
        let prepared = self.prepared.as_ref().context("to_batch before train_source")?;
        let dataset = prepared.data.train.dataset();
        let (mut tokens, mut positive_tokens) = (Vec::new(), Vec::new());
        for (&row, sample) in batch.rows.iter().zip(&batch.samples) {
            let record = &dataset.images[row];
            let caption = record.caption.as_deref().filter(|_| self.section.captions && sample.spans.iter().all(|s| !s.is_empty()));
            match caption {
                Some(caption) if !sample.spans.is_empty() => {
                    let prompt = GroundingPrompt::from_caption(&self.tokenizer, caption, &sample.spans)
                        .with_context(|| format!("{}: image {}", dataset.path.display(), record.id))?;
                    positive_tokens.push(prompt.phrase_tokens);
                    tokens.extend(prompt.tokens);
                }
                _ => {
                    let spans = sample
                        .labels
                        .iter()
                        .map(|&c| prepared.data.base_index(c).map(|i| prepared.category_prompt.phrase_tokens[i].clone()))
                        .collect::<anyhow::Result<Vec<_>>>()?;
                    positive_tokens.push(spans);
                    tokens.extend(prepared.category_prompt.tokens.iter().copied());
                }
            }
        }
        let images = stack_images(&batch.samples.iter().map(|s| s.image.clone()).collect::<Vec<_>>(), device)?;
        let tokens = Tensor::from_data(TensorData::new(tokens, [batch.rows.len(), self.tokenizer.context_length()]), device);
        let boxes = batch.samples.iter().map(|s| s.boxes.clone()).collect();
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

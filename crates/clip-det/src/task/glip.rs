//! The `glip` task: GLIP's detection as phrase grounding (captions with phrase boxes where
//! images have them, category prompts otherwise), evaluated by COCO AP on base and novel
//! categories; offers `clipforge detect` and `clipforge pseudo-label`.

use anyhow::Context;
use burn::tensor::{Device, Tensor, TensorData};
use clip_core::ClipTokenizer;
use clip_core::preprocess::stack_images;
use clip_task::clip_model::{check_clip_model, clip_config, load_run_model, tokenizer_of};
use clip_task::{RunContext, Task};

use crate::data::{CategorySplit, CocoDataset};
use crate::glip::{Glip, GlipBatch, GlipObjective, GroundingPrompt};
use crate::task::batcher::{DetectionBatch, DetectionBatcher, category_split, detection_datasets, without_novel};
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
    split: CategorySplit,
    /// The prompt of the base categories ("person. bicycle. car.").
    category_prompt: GroundingPrompt,
    /// The training batcher, whose captions the batches read.
    train: DetectionBatcher,
    val: Option<CocoDataset>,
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
        let det = &self.section;
        let (train, val) = detection_datasets(&self.run, det)?;
        let split = category_split(&train, det)?;
        let names: Vec<String> = train.categories.iter().map(|c| c.name.clone()).collect();
        let base_names: Vec<String> = split.base.iter().map(|&c| names[c].clone()).collect();
        let novel: Vec<&str> = split.novel.iter().map(|&c| names[c].as_str()).collect();
        eprintln!("categories: {} base, {} novel ({})", split.base.len(), split.novel.len(), novel.join(", "));
        let category_prompt = GroundingPrompt::from_categories(&self.tokenizer, &base_names).with_context(|| {
            format!("the prompt of the {} base categories does not fit the text context: train GLIP on captions", base_names.len())
        })?;
        let batcher = DetectionBatcher::new(&self.run, without_novel(train, &split.novel), det.image_size, det.flip);
        self.prepared = Some(Prepared { split, category_prompt, train: batcher.clone(), val });
        Ok(batcher)
    }

    fn to_batch(&self, batch: DetectionBatch, device: &Device) -> anyhow::Result<GlipBatch> {
        let prepared = self.prepared.as_ref().context("to_batch before train_source")?;
        let dataset = prepared.train.dataset();
        let base_index = |category: usize| prepared.split.base.iter().position(|&c| c == category);
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
                        .map(|&c| base_index(c).map(|i| prepared.category_prompt.phrase_tokens[i].clone()).context("a novel box reached training"))
                        .collect::<anyhow::Result<Vec<_>>>()?;
                    positive_tokens.push(spans);
                    tokens.extend(prepared.category_prompt.tokens.iter().copied());
                }
            }
        }
        let images = stack_images(&batch.samples.iter().map(|s| s.image.clone()).collect::<Vec<_>>(), device)?;
        Ok(GlipBatch {
            images,
            tokens: Tensor::from_data(TensorData::new(tokens, [batch.rows.len(), self.tokenizer.context_length()]), device),
            boxes: batch.samples.iter().map(|s| s.boxes.clone()).collect(),
            positive_tokens,
        })
    }

    fn objective(&self) -> GlipObjective {
        GlipObjective::new(&self.section.glip_config())
    }

    fn evaluate(&self, model: &Glip, device: &Device) -> anyhow::Result<Option<serde_json::Value>> {
        let det = &self.section;
        let (split, val) = match &self.prepared {
            Some(prepared) => (prepared.split.clone(), prepared.val.clone()),
            None => {
                let (train, val) = detection_datasets(&self.run, det)?;
                (category_split(&train, det)?, val)
            }
        };
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

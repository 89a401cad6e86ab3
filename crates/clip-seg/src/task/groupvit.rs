//! The `groupvit` task: GroupViT trained on image-caption pairs (contrastive plus multi-label
//! noun-prompt loss), evaluated by zero-shot segmentation of masked validation images.

use std::path::Path;

use anyhow::Context;
use burn::tensor::{Device, Int, Tensor, TensorData};
use clip_core::ClipTokenizer;
use clip_core::preprocess::stack_images;
use clip_core::weights::hugging_face_files;
use clip_task::data::sample_rng;
use clip_task::embeddings_file::read_lines;
use clip_task::pairs::{Batcher, Pair, PairBatch, PairTable};
use clip_task::{RunContext, Task};

use crate::data::{LabelSet, SegmentationTable};
use crate::groupvit::{self, GroupAssignment, GroupVit, GroupVitBatch, GroupVitConfig, GroupVitObjective, ZeroShotSegmentation};
use crate::nouns::NounPrompts;
use crate::task::batcher::{SegmentationBatcher, segmentation_tables, validation_table};
use crate::task::section::{self, SegmentationSection, label_set};
use crate::task::segment::{SEGMENT, SegmentArgs, segment, segment_command};
use crate::task::segmenter::{Segmenter, SlidingWindow, ZeroShotGroupVit, evaluate_segmentation};

/// GroupViT (`model.name` a Hugging Face GroupViT `config.json`, or `model.weights` a Hugging
/// Face GroupViT folder) trained on the captions of `[segmentation]` data, evaluated by mIoU;
/// offers `clipforge segment`.
pub struct GroupVitTask {
    section: SegmentationSection,
    run: RunContext,
    config: GroupVitConfig,
    tokenizer: ClipTokenizer,
    labels: LabelSet,
    nouns: NounPrompts,
    /// The training batcher, whose captions the noun prompts come from.
    train: Option<Batcher>,
    val: Option<SegmentationTable>,
}

/// The Hugging Face GroupViT folder of `model.weights`, if it is one.
fn hugging_face_folder(run: &RunContext) -> Option<&Path> {
    run.model.weights.as_deref().filter(|w| w.is_dir() && !w.join("model.bpk").is_file())
}

/// The architecture: the folder's `config.json`, or the `model.name` file.
fn groupvit_config(run: &RunContext) -> clip_core::Result<GroupVitConfig> {
    match hugging_face_folder(run) {
        Some(dir) => GroupVitConfig::from_file(&hugging_face_files(dir)?.0),
        None => GroupVitConfig::from_file(Path::new(&run.model.name)),
    }
}

/// The image-caption pairs of a segmentation table (GroupViT trains on captions).
fn caption_table(table: &SegmentationTable) -> anyhow::Result<PairTable> {
    let pairs = table
        .samples
        .iter()
        .map(|sample| {
            let caption = sample
                .caption
                .clone()
                .with_context(|| format!("{}:{}: no caption (GroupViT trains on image-caption pairs)", table.path.display(), sample.line))?;
            Ok(Pair { image: sample.image.clone(), caption, label: None, line: sample.line })
        })
        .collect::<anyhow::Result<_>>()?;
    Ok(PairTable { path: table.path.clone(), pairs })
}

impl Task for GroupVitTask {
    type Section = SegmentationSection;
    type Objective = GroupVitObjective;
    type Source = Batcher;

    const SECTION: Option<&'static str> = Some("segmentation");

    fn validate(seg: &SegmentationSection, run: &RunContext) -> Result<(), String> {
        section::validate(seg, run)?;
        groupvit_config(run).map(drop).map_err(|e| format!("model.name: {e}"))
    }

    fn new(section: SegmentationSection, run: RunContext) -> anyhow::Result<Self> {
        let config = groupvit_config(&run)?;
        let tokenizer = ClipTokenizer::new().with_context_length(config.context_length())?;
        let labels = label_set(&section)?;
        let vocabulary = match &section.nouns {
            Some(path) => read_lines(path)?,
            None => labels.names.clone(),
        };
        let nouns = NounPrompts {
            templates: section.templates.clone(),
            per_caption: section.prompts_per_image,
            vocabulary: Some(vocabulary),
        };
        Ok(Self { section, run, config, tokenizer, labels, nouns, train: None, val: None })
    }

    fn run(&self) -> &RunContext {
        &self.run
    }

    fn model(&self, device: &Device) -> anyhow::Result<GroupVit> {
        Ok(match hugging_face_folder(&self.run) {
            Some(dir) => groupvit::load_hugging_face(dir, device)?.0,
            None => self.config.init(device)?,
        })
    }

    fn train_source(&mut self, _model: &GroupVit, _device: &Device) -> anyhow::Result<Batcher> {
        let (train, val) = segmentation_tables(&self.run, &self.section, true)?;
        self.val = val;
        let batcher = Batcher::for_training(&self.run, caption_table(&train)?, &self.tokenizer, self.config.image_size())?;
        self.train = Some(batcher.clone());
        Ok(batcher)
    }

    fn to_batch(&self, batch: PairBatch, device: &Device) -> anyhow::Result<GroupVitBatch> {
        let table = self.train.as_ref().context("to_batch before train_source")?.table();
        let (rows, context) = (batch.rows.len(), self.tokenizer.context_length());
        let mut prompts = Vec::with_capacity(rows * self.section.prompts_per_image);
        for (slot, &row) in batch.rows.iter().enumerate() {
            let mut rng = sample_rng(self.run.seed.wrapping_add(1), batch.step, slot);
            prompts.extend(self.nouns.prompts(&table.pairs[row].caption, &mut rng));
        }
        let prompt_tokens = if prompts.is_empty() {
            Tensor::<2, Int>::empty([0, context], device)
        } else {
            let texts: Vec<String> = prompts.iter().map(|p| p.text.clone()).collect();
            self.tokenizer.tokenize_batch(&texts, device)?
        };
        let batch_of = GroupVitBatch::new(
            stack_images(&batch.images, device)?,
            Tensor::from_data(TensorData::new(batch.tokens, [rows, context]), device),
            prompt_tokens,
        )?;
        if self.section.shared_nouns != "positive" {
            return Ok(batch_of);
        }
        let image_nouns: Vec<Vec<String>> = batch.rows.iter().map(|&row| self.nouns.nouns(&table.pairs[row].caption)).collect();
        let prompt_nouns: Vec<String> = prompts.into_iter().map(|p| p.noun).collect();
        Ok(batch_of.with_shared_nouns(&image_nouns, &prompt_nouns)?)
    }

    fn objective(&self) -> GroupVitObjective {
        GroupVitObjective { multi_label_weight: self.section.multi_label_weight as f32 }
    }

    fn evaluate(&self, model: &GroupVit, device: &Device) -> anyhow::Result<Option<serde_json::Value>> {
        let Some(val) = validation_table(&self.run, &self.section, self.val.as_ref())? else { return Ok(None) };
        let batcher = SegmentationBatcher::of(&self.run, &self.section, val, &self.labels, self.config.image_size(), false)?;
        let segmenter = self.segmenter(model);
        let label_embeds = segmenter.embed_labels(&self.tokenizer, &self.labels.names, &self.section.templates, device)?;
        let mut report = evaluate_segmentation(&segmenter, &batcher, &label_embeds, &self.labels, self.run.eval.batch_size, device)?;
        report["protocol"] = serde_json::json!(self.protocol());
        Ok(Some(report))
    }

    fn commands() -> Vec<clap::Command> {
        vec![segment_command()]
    }

    fn run_command(&self, name: &str, args: &clap::ArgMatches, model: GroupVit, device: &Device) -> anyhow::Result<()> {
        use clap::FromArgMatches;
        anyhow::ensure!(name == SEGMENT, "GroupViT has no `{name}` command");
        let args = SegmentArgs::from_arg_matches(args)?;
        segment(&self.segmenter(&model), &self.tokenizer, self.config.image_size(), &self.section, &args, device)
    }
}

impl GroupVitTask {
    /// `model` under the section's zero-shot protocol and windows.
    fn segmenter<'a>(&self, model: &'a GroupVit) -> SlidingWindow<ZeroShotGroupVit<'a>> {
        let seg = &self.section;
        let assignment = if seg.group_assignment == "soft" { GroupAssignment::Soft } else { GroupAssignment::Hard };
        let settings = ZeroShotSegmentation {
            assignment,
            top_k: seg.top_k_labels,
            background: None,
            background_threshold: seg.background_threshold,
        };
        let inner = ZeroShotGroupVit { model, settings, background_label: seg.background_label.clone() };
        let window = self.effective_window().unwrap_or(usize::MAX);
        let stride = if seg.window_stride == 0 { (window / 2).max(1) } else { seg.window_stride };
        SlidingWindow { inner, window, stride }
    }

    /// The window that slides over the evaluated images, which are resized to the model's image
    /// size: none when `segmentation.window` is 0 or not smaller than them.
    fn effective_window(&self) -> Option<usize> {
        Some(self.section.window).filter(|&w| w > 0 && w < self.config.image_size())
    }

    /// The evaluation protocol, as reported with the figures.
    fn protocol(&self) -> String {
        let seg = &self.section;
        let size = self.config.image_size();
        let windows = match self.effective_window() {
            None => format!("whole {size}px image"),
            Some(w) => format!("sliding {w}px windows over the {size}px image"),
        };
        match seg.group_assignment.as_str() {
            "soft" => format!("soft group assignment (Hugging Face), {windows}"),
            _ => {
                let background = match self.labels.names.iter().any(|n| !seg.background_label.is_empty() && *n == seg.background_label) {
                    true => format!("{:?} by threshold {}", seg.background_label, seg.background_threshold),
                    false => "no background label".into(),
                };
                format!("hard group assignment (NVlabs), top-{} labels per image, {background}, {windows}", seg.top_k_labels)
            }
        }
    }
}

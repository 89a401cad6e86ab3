//! The `lseg` task: LSeg's per-pixel contrastive objective on images with label masks.

use burn::tensor::Device;
use clip_core::preprocess::stack_images;
use clip_core::{Clip, ClipConfig, ClipTokenizer, ImageTower};
use clip_task::clip_model::{check_clip_model, clip_config, load_run_model, tokenizer_of};
use clip_task::{RunContext, Task};

use crate::data::{LabelSet, SegmentationTable, stack_masks};
use crate::lseg::{Lseg, LsegBatch, LsegConfig, LsegObjective, Readout};
use crate::task::batcher::{SegmentationBatch, SegmentationBatcher, segmentation_tables, validation_table};
use crate::task::section::{self, SegmentationSection, label_set};
use crate::task::segment::{SEGMENT, SegmentArgs, segment, segment_command};
use crate::task::segmenter::{Segmenter, evaluate_segmentation};

/// LSeg trained on `[segmentation]` data over a CLIP (`model.name`, `model.weights`),
/// evaluated by mIoU; offers `clipforge segment`.
pub struct LsegTask {
    section: SegmentationSection,
    run: RunContext,
    clip: ClipConfig,
    tokenizer: ClipTokenizer,
    labels: LabelSet,
    val: Option<SegmentationTable>,
}

/// The LSeg architecture of `[segmentation]` over a CLIP of `clip`'s architecture.
fn lseg_config(seg: &SegmentationSection, clip: ClipConfig) -> clip_core::Result<LsegConfig> {
    let readout = match seg.readout.as_str() {
        "ignore" => Readout::Ignore,
        "add" => Readout::Add,
        _ => Readout::Project,
    };
    let mut config = LsegConfig::new(clip)
        .with_features(seg.decoder_features)
        .with_readout(readout)
        .with_spatial_regularization(seg.spatial_regularization);
    if !seg.hooks.is_empty() {
        config = config.with_hooks(Some(seg.hooks.clone()));
    }
    config.validate()?;
    Ok(config)
}

impl Task for LsegTask {
    type Section = SegmentationSection;
    type Objective = LsegObjective;
    type Source = SegmentationBatcher;

    const SECTION: Option<&'static str> = Some("segmentation");

    fn validate(seg: &SegmentationSection, run: &RunContext) -> Result<(), String> {
        section::validate(seg, run)?;
        check_clip_model(run)?;
        let clip = clip_config(&run.model.name, run.model.weights.as_deref()).map_err(|e| format!("model.name: {e:#}"))?;
        lseg_config(seg, clip).map(drop).map_err(|e| format!("[segmentation]: {e}"))
    }

    fn new(section: SegmentationSection, run: RunContext) -> anyhow::Result<Self> {
        let clip = clip_config(&run.model.name, run.model.weights.as_deref())?;
        let tokenizer = tokenizer_of(&clip)?;
        let labels = label_set(&section)?;
        Ok(Self { section, run, clip, tokenizer, labels, val: None })
    }

    fn run(&self) -> &RunContext {
        &self.run
    }

    fn model(&self, device: &Device) -> anyhow::Result<Lseg> {
        let (clip, config) = load_run_model(&self.run, device)?;
        Ok(lseg_config(&self.section, config)?.init_with_clip(clip, device)?)
    }

    fn train_source(&mut self, _model: &Lseg, _device: &Device) -> anyhow::Result<SegmentationBatcher> {
        let (train, val) = segmentation_tables(&self.run, &self.section, false)?;
        self.val = val;
        SegmentationBatcher::of(&self.run, &self.section, train, &self.labels, self.clip.vision.image_size(), true)
    }

    fn to_batch(&self, batch: SegmentationBatch, device: &Device) -> anyhow::Result<LsegBatch> {
        // Training scores each pixel against one prompt per label: the first template.
        let prompts: Vec<String> = self.labels.names.iter().map(|name| self.section.templates[0].replace("{}", name)).collect();
        let label_tokens = self.tokenizer.tokenize_batch(&prompts, device)?;
        Ok(LsegBatch::new(stack_images(&batch.images, device)?, stack_masks(&batch.masks, device)?, label_tokens)?)
    }

    fn objective(&self) -> LsegObjective {
        LsegObjective { ignore_index: self.section.ignore_index }
    }

    fn evaluate(&self, model: &Lseg, device: &Device) -> anyhow::Result<Option<serde_json::Value>> {
        let Some(val) = validation_table(&self.run, &self.section, self.val.as_ref())? else { return Ok(None) };
        let image_size = self.clip.vision.image_size();
        let batcher = SegmentationBatcher::of(&self.run, &self.section, val, &self.labels, image_size, false)?;
        let label_embeds = model.embed_labels(&self.tokenizer, &self.labels.names, &self.section.templates, device)?;
        Ok(Some(evaluate_segmentation(model, &batcher, &label_embeds, &self.labels, self.run.eval.batch_size, device)?))
    }

    /// LSeg's CLIP towers (the image tower's backbone and the text tower) as a CLIP.
    fn clip(&self, model: Lseg, _device: &Device) -> anyhow::Result<Clip> {
        Ok(Clip { visual: ImageTower::Vit(model.visual), text: model.text, logit_scale: model.logit_scale, logit_bias: None })
    }

    fn commands() -> Vec<clap::Command> {
        vec![segment_command()]
    }

    fn run_command(&self, name: &str, args: &clap::ArgMatches, model: Lseg, device: &Device) -> anyhow::Result<()> {
        use clap::FromArgMatches;
        anyhow::ensure!(name == SEGMENT, "LSeg has no `{name}` command");
        let args = SegmentArgs::from_arg_matches(args)?;
        segment(&model, &self.tokenizer, self.clip.vision.image_size(), &self.section, &args, device)
    }
}

//! Trains LSeg on the shipped shapes set from Rust code, without `clipforge`: the same run as
//! `configs/lseg.toml`, built in code. From the repository root:
//!
//!     cargo run --release -p clip-train --example train_lseg

use burn::tensor::Device;
use clip_seg::LsegTask;
use clip_seg::task::SegmentationSection;
use clip_task::{DataSection, ModelSection, RunContext, Task};
use clip_train::config::TrainSection;
use clip_train::trainer::train_task;

fn main() -> anyhow::Result<()> {
    // Images with label masks, listed in tables; a tiny CLIP, randomly initialized (give
    // `ModelSection::weights` to start from a pretrained CLIP).
    let mut data = DataSection::new("datasets/shapes/train.tsv");
    data.val = Some("datasets/shapes/val.tsv".into());
    data.image_column = "image".into();
    let output = "runs/lseg-example";
    let run = RunContext::new(ModelSection::named("configs/models/tiny-shapes.json"), data, output);

    // LSeg's settings: the label names, a small decoder, the augmentation.
    let section = SegmentationSection {
        labels: "datasets/shapes/labels.txt".into(),
        decoder_features: 32,
        scale: (0.75, 1.5),
        ..SegmentationSection::default()
    };
    LsegTask::validate(&section, &run).map_err(anyhow::Error::msg)?;
    let task = LsegTask::new(section, run)?;

    // AdamW with warm-up and cosine decay; the text tower stays as CLIP trained it.
    let train = TrainSection {
        batch_size: 16,
        epochs: 8,
        lr: 1e-3,
        weight_decay: 0.01,
        warmup_steps: 10,
        grad_clip_norm: 1.0,
        freeze: vec!["text".into()],
        ..TrainSection::default()
    };
    let summary = train_task(task, &train, &Device::flex(), output.as_ref(), false)?;
    let eval = summary.eval.unwrap_or_default();
    println!("mIoU {} after {} steps; checkpoint {}", eval["mean_iou"], summary.steps, summary.checkpoint.display());
    Ok(())
}

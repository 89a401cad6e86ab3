//! `clipforge segment`: label maps of images for any label set, as color-coded PNGs and
//! overlays on the images, with a trained GroupViT or LSeg.

use std::path::PathBuf;

use anyhow::Context;
use burn::tensor::{Device, Tensor};
use clip_core::ClipTokenizer;
use clip_core::preprocess::{Normalize, OPENAI_MEAN, OPENAI_STD, load_image, resize_bicubic};
use clip_task::embeddings_file::read_lines;

use crate::render::{colorize, overlay, palette, save_png};
use crate::task::section::SegmentationSection;
use crate::task::segmenter::Segmenter;

/// The name of the command.
pub const SEGMENT: &str = "segment";

/// `clipforge segment` arguments (after the run that holds the model).
#[derive(Debug, Clone, clap::Args)]
pub struct SegmentArgs {
    /// Comma-separated label names (default: the config's `segmentation.labels` file).
    #[arg(long)]
    pub labels: Option<String>,
    /// Images to segment.
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
    /// Output folder.
    #[arg(long, default_value = "segmented")]
    pub output: PathBuf,
    /// Opacity of the label colors in the overlay.
    #[arg(long, default_value_t = 0.5)]
    pub alpha: f32,
}

/// The `segment` command's definition.
pub fn segment_command() -> clap::Command {
    use clap::Args;
    SegmentArgs::augment_args(clap::Command::new(SEGMENT).about(
        "Segment images into any label set with a GroupViT or LSeg model; writes a color-coded label map \
         (<image>.labels.png), an overlay (<image>.overlay.png) and legend.json",
    ))
}

/// Segments each image of `args` into its labels (or the section's label file) and writes the
/// results under `args.output`.
pub fn segment(
    model: &impl Segmenter,
    tokenizer: &ClipTokenizer,
    image_size: usize,
    seg: &SegmentationSection,
    args: &SegmentArgs,
    device: &Device,
) -> anyhow::Result<()> {
    let names: Vec<String> = match &args.labels {
        Some(list) => list.split(',').map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect(),
        None => read_lines(&seg.labels)?,
    };
    anyhow::ensure!(!names.is_empty(), "--labels: give at least one label name");
    let label_embeds = model.embed_labels(tokenizer, &names, &seg.templates, device)?;
    let colors = palette(names.len());
    let output = &args.output;
    std::fs::create_dir_all(output).with_context(|| format!("creating {}", output.display()))?;
    for path in &args.images {
        let image = load_image(path)?;
        let map = label_map(model, &image, &label_embeds, &names, image_size, device);
        let colored = colorize(&map, image_size as u32, image_size as u32, &colors);
        let colored = image::imageops::resize(&colored, image.width(), image.height(), image::imageops::FilterType::Nearest);
        let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("image");
        save_png(&colored, &output.join(format!("{stem}.labels.png")))?;
        save_png(&overlay(&image, &colored, args.alpha), &output.join(format!("{stem}.overlay.png")))?;
        let mut counts = vec![0usize; names.len()];
        for &label in &map {
            counts[label] += 1;
        }
        let mut shares: Vec<(usize, &String)> = counts.into_iter().zip(&names).filter(|(n, _)| *n > 0).collect();
        shares.sort_by_key(|share| std::cmp::Reverse(share.0));
        let shares: Vec<String> = shares.iter().map(|(n, name)| format!("{name} {:.0}%", 100.0 * *n as f64 / map.len() as f64)).collect();
        println!("{}: {}", path.display(), shares.join(", "));
    }
    let legend: Vec<serde_json::Value> =
        names.iter().zip(&colors).map(|(name, color)| serde_json::json!({ "label": name, "color": color })).collect();
    std::fs::write(output.join("legend.json"), serde_json::to_string_pretty(&legend)?)
        .with_context(|| format!("writing {}", output.join("legend.json").display()))?;
    println!("wrote {} label maps and overlays to {}", args.images.len(), output.display());
    Ok(())
}

/// The label of each pixel of `image` resized to `size x size`, row-major.
fn label_map(model: &impl Segmenter, image: &image::RgbImage, label_embeds: &Tensor<2>, names: &[String], size: usize, device: &Device) -> Vec<usize> {
    let pixels = Normalize::new(OPENAI_MEAN, OPENAI_STD).apply(&resize_bicubic(image, size as u32, size as u32));
    let map = model.label_map(pixels.to_tensor(device).unsqueeze_dim(0), label_embeds.clone(), names);
    map.into_data().iter::<i64>().map(|v| v as usize).collect()
}

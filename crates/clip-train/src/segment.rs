//! `clipforge segment`: label maps of images for any label set, as color-coded PNGs and
//! overlays on the images.

use std::path::{Path, PathBuf};

use anyhow::Context;
use burn::tensor::Device;
use clip_core::preprocess::{Normalize, OPENAI_MEAN, OPENAI_STD, load_image, resize_bicubic};
use clip_seg::render::{colorize, overlay, palette, save_png};

use crate::config::RunConfig;
use crate::embeddings_file::read_lines;
use crate::segmentation::{Segmenter, build_segmenter, latest_checkpoint};
use crate::trainer::select_device;

/// The run config and checkpoint that `model` names: a TOML run config, or a run's output
/// folder (its `config.json` and newest checkpoint).
pub(crate) fn resolve(model: &Path, checkpoint: Option<PathBuf>, overrides: &[String]) -> anyhow::Result<(RunConfig, Option<PathBuf>)> {
    if model.is_dir() {
        let file = model.join("config.json");
        let text = std::fs::read_to_string(&file).with_context(|| format!("{}: not a run folder", model.display()))?;
        let config: RunConfig = serde_json::from_str(&text).with_context(|| format!("reading {}", file.display()))?;
        let checkpoint = match checkpoint {
            Some(dir) => Some(dir),
            None => Some(
                latest_checkpoint(model, config.train.keep_checkpoints)?
                    .with_context(|| format!("{}: the run has no checkpoint yet", model.display()))?,
            ),
        };
        Ok((config, checkpoint))
    } else {
        Ok((RunConfig::load(model, overrides)?, checkpoint))
    }
}

/// Segments each of `images` into `labels` (or the config's label file) and writes the results
/// under `output`.
pub fn run(
    model: &Path,
    checkpoint: Option<PathBuf>,
    labels: Option<&str>,
    images: &[PathBuf],
    output: &Path,
    alpha: f32,
    overrides: &[String],
) -> anyhow::Result<()> {
    let (config, checkpoint) = resolve(model, checkpoint, overrides)?;
    let seg = config
        .segmentation
        .as_ref()
        .with_context(|| format!("{}: no [segmentation] section (train.objective must be groupvit or lseg)", model.display()))?;
    let names: Vec<String> = match labels {
        Some(list) => list.split(',').map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect(),
        None => read_lines(&seg.labels)?,
    };
    anyhow::ensure!(!names.is_empty(), "--labels: give at least one label name");
    let device = select_device(&config.run.device)?;
    let (segmenter, tokenizer, image_size) = build_segmenter(&config, checkpoint.as_deref(), &device)?;
    let label_embeds = segmenter.label_embeddings(&tokenizer, &names, &seg.templates, &device)?;
    let colors = palette(names.len());
    std::fs::create_dir_all(output).with_context(|| format!("creating {}", output.display()))?;
    for path in images {
        let image = load_image(path)?;
        let map = label_map(&segmenter, &image, &label_embeds, image_size, &device)?;
        let colored = colorize(&map, image_size as u32, image_size as u32, &colors);
        let colored = image::imageops::resize(&colored, image.width(), image.height(), image::imageops::FilterType::Nearest);
        let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("image");
        save_png(&colored, &output.join(format!("{stem}.labels.png")))?;
        save_png(&overlay(&image, &colored, alpha), &output.join(format!("{stem}.overlay.png")))?;
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
    println!("wrote {} label maps and overlays to {}", images.len(), output.display());
    Ok(())
}

/// The label of each pixel of `image` resized to `size x size`, row-major.
fn label_map(segmenter: &Segmenter, image: &image::RgbImage, label_embeds: &burn::tensor::Tensor<2>, size: usize, device: &Device) -> anyhow::Result<Vec<usize>> {
    let pixels = Normalize::new(OPENAI_MEAN, OPENAI_STD).apply(&resize_bicubic(image, size as u32, size as u32));
    let map = segmenter.label_map(pixels.to_tensor(device).unsqueeze_dim(0), label_embeds.clone());
    Ok(map.into_data().iter::<i64>().map(|v| v as usize).collect())
}

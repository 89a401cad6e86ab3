//! Batches of video data: sampled, transformed frames per clip and the text of each clip,
//! loaded on worker threads; the training and validation tables of a run.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use burn::tensor::{Device, Tensor};
use clip_core::preprocess::{EvalTransform, EvalTransformConfig, ImageTensorData};
use clip_task::data::{BatchSource, DataError, LoadedBatch, keep_readable, load_on_workers, sample_rng};
use clip_task::{RunContext, Splittable};
use rand::Rng;

use crate::data::{ClipAugment, ClipAugmentConfig, FrameSampler, VideoSource, VideoTable, load_clip, stack_videos};
use crate::task::section::VideoSection;

/// Frames and texts of one batch, ready to become tensors.
#[derive(Debug)]
pub struct VideoBatch {
    /// Table rows of the clips kept, in batch order.
    pub rows: Vec<usize>,
    /// `frames` transformed frames per clip.
    pub clips: Vec<Vec<ImageTensorData>>,
    /// The text of each clip: a caption, or a prompt of its action label.
    pub texts: Vec<String>,
    /// Rows skipped because their clip could not be read.
    pub skipped: Vec<DataError>,
}

impl LoadedBatch for VideoBatch {
    fn rows(&self) -> &[usize] {
        &self.rows
    }

    fn skipped(&self) -> &[DataError] {
        &self.skipped
    }
}

/// What text goes with a clip.
#[derive(Debug, Clone)]
pub enum ClipText {
    /// One of its captions (random while training, the first otherwise).
    Caption,
    /// Its label in one of these templates (random while training, the first otherwise).
    Label(Arc<Vec<String>>),
}

/// Builds batches of a video table on worker threads: sampled, transformed frames per clip.
#[derive(Clone)]
pub struct VideoBatcher {
    table: Arc<VideoTable>,
    sampler: FrameSampler,
    transform: EvalTransform,
    text: ClipText,
    workers: usize,
    skip_bad_samples: bool,
    seed: u64,
    augment: Option<ClipAugment>,
}

impl VideoBatcher {
    /// A batcher of `frames` frames per clip of `table`, sampled at random within segments
    /// (`train`) or at segment centers.
    pub fn new(run: &RunContext, frames: usize, table: VideoTable, image_size: usize, train: bool, text: ClipText) -> anyhow::Result<Self> {
        Ok(Self {
            table: Arc::new(table),
            sampler: if train { FrameSampler::train(frames) } else { FrameSampler::eval(frames) },
            transform: EvalTransformConfig::new().with_image_size(image_size).init(),
            text,
            workers: run.data.workers.max(1),
            skip_bad_samples: run.data.skip_bad_samples,
            seed: run.seed,
            augment: None,
        })
    }

    /// Training batches whose clips are augmented (in place of the evaluation transform);
    /// `None` when `video` asks for no augmentation.
    pub fn with_augment(mut self, video: &VideoSection, image_size: usize) -> anyhow::Result<Self> {
        self.augment = video_augment(video, image_size)?;
        Ok(self)
    }

    /// The table.
    pub fn table(&self) -> &VideoTable {
        &self.table
    }

    /// The table, shared.
    pub fn table_arc(&self) -> Arc<VideoTable> {
        Arc::clone(&self.table)
    }

    fn error(&self, line: usize, message: String) -> DataError {
        DataError { path: self.table.path.clone(), line: Some(line), message }
    }
}

impl BatchSource for VideoBatcher {
    type Batch = VideoBatch;

    fn rows(&self) -> usize {
        self.table.videos.len()
    }

    fn batch(&self, indices: &[usize], step: usize) -> Result<VideoBatch, DataError> {
        let train = self.sampler.train;
        let loaded = load_on_workers(indices, self.workers, |row, slot| {
            let mut rng = sample_rng(self.seed, step, slot);
            let video = &self.table.videos[row];
            let frames = VideoSource::from_path(&video.source)
                .and_then(|source| match &self.augment {
                    Some(augment) => augment.load(&source, &self.sampler, &mut rng),
                    None => load_clip(&source, &self.sampler, &self.transform, &mut rng),
                })
                .map_err(|e| self.error(video.line, e.to_string()))?;
            let text = match &self.text {
                ClipText::Caption => {
                    let pick = if train { rng.random_range(0..video.captions.len().max(1)) } else { 0 };
                    video.captions.get(pick).cloned().ok_or_else(|| self.error(video.line, "no caption".into()))?
                }
                ClipText::Label(templates) => {
                    let label = video.label.as_ref().ok_or_else(|| self.error(video.line, "no label".into()))?;
                    let pick = if train { rng.random_range(0..templates.len()) } else { 0 };
                    templates[pick].replace("{}", label)
                }
            };
            Ok((frames, text))
        });
        let (kept, skipped) = keep_readable(indices, loaded, self.skip_bad_samples)?;
        let (rows, loaded): (Vec<usize>, Vec<_>) = kept.into_iter().unzip();
        let (clips, texts) = loaded.into_iter().unzip();
        Ok(VideoBatch { rows, clips, texts, skipped })
    }
}

/// The clip augmentation `video.crop_scale` and `video.grayscale` ask for, if any.
fn video_augment(video: &VideoSection, image_size: usize) -> anyhow::Result<Option<ClipAugment>> {
    if video.crop_scale == (1.0, 1.0) && video.grayscale == 0.0 {
        return Ok(None);
    }
    let config = ClipAugmentConfig { image_size, crop_scale: video.crop_scale, grayscale: video.grayscale };
    Ok(Some(config.init().context("video.crop_scale / video.grayscale")?))
}

/// A config string as the serde enum it names (the method crates spell the choices).
pub fn choice<T: serde::de::DeserializeOwned>(key: &str, value: &str) -> anyhow::Result<T> {
    serde_json::from_value(serde_json::json!(value)).with_context(|| format!("{key} = {value:?}"))
}

/// A video table: an MSR-VTT JSON (with `video.videos_dir`), or a `video,caption` /
/// `video,label` table or class folders, as the objective needs.
pub fn read_table(path: &Path, video: &VideoSection, labelled: bool) -> anyhow::Result<VideoTable> {
    if path.extension().is_some_and(|e| e == "json") {
        let dir = video.videos_dir.as_deref().context("video.videos_dir is needed with an MSR-VTT JSON")?;
        return Ok(VideoTable::read_msrvtt(path, dir)?);
    }
    Ok(if labelled { VideoTable::read_labelled(path)? } else { VideoTable::read_captions(path)? })
}

/// The training and validation video tables.
pub fn video_tables(run: &RunContext, video: &VideoSection, labelled: bool) -> anyhow::Result<(VideoTable, Option<VideoTable>)> {
    let train = read_table(&run.data.train, video, labelled)?;
    run.with_validation(train, |val| read_table(val, video, labelled))
}

/// Frames `[B, T, 3, H, W]` of a chunk of clips, their texts and their table rows.
pub type EvalBatch = (Tensor<5>, Vec<String>, Vec<usize>);

/// Every clip of `batcher`'s table as frames `[B, T, 3, H, W]`, in chunks of `batch_size`,
/// with the text of each clip.
pub fn eval_batches(batcher: &VideoBatcher, batch_size: usize, device: &Device) -> anyhow::Result<Vec<EvalBatch>> {
    let rows: Vec<usize> = (0..batcher.rows()).collect();
    let mut batches = Vec::new();
    for chunk in rows.chunks(batch_size.max(1)) {
        let batch = batcher.batch(chunk, 0)?;
        if !batch.rows.is_empty() {
            batches.push((stack_videos(&batch.clips, device)?, batch.texts, batch.rows));
        }
    }
    anyhow::ensure!(!batches.is_empty(), "{}: no readable clip to evaluate", batcher.table().path.display());
    Ok(batches)
}

impl Splittable for VideoTable {
    fn rows(&self) -> usize {
        self.videos.len()
    }
    fn split_off(self, fraction: f64, seed: u64) -> (Self, Self) {
        self.split(fraction, seed)
    }
}

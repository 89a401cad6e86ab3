//! Batches of segmentation data: images and masks augmented together on worker threads, and
//! the training and validation tables of a run.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use clip_core::preprocess::ImageTensorData;
use clip_task::data::{BatchSource, DataError, LoadedBatch, keep_readable, load_on_workers, sample_rng};
use clip_task::{RunContext, Splittable};

use crate::data::{LabelSet, MaskData, SegmentationColumns, SegmentationTable, SegmentationTransform, SegmentationTransformConfig, load_sample};
use crate::task::section::SegmentationSection;

/// Images and masks of one batch, ready to become tensors.
#[derive(Debug)]
pub struct SegmentationBatch {
    /// Table rows of the samples kept, in batch order.
    pub rows: Vec<usize>,
    /// Transformed images.
    pub images: Vec<ImageTensorData>,
    /// Their masks, transformed with them.
    pub masks: Vec<MaskData>,
    /// Rows skipped because their image or mask could not be read.
    pub skipped: Vec<DataError>,
}

impl LoadedBatch for SegmentationBatch {
    fn rows(&self) -> &[usize] {
        &self.rows
    }

    fn skipped(&self) -> &[DataError] {
        &self.skipped
    }
}

/// Builds batches of a segmentation table on worker threads, image and mask augmented together.
#[derive(Clone)]
pub struct SegmentationBatcher {
    table: Arc<SegmentationTable>,
    labels: Arc<LabelSet>,
    transform: SegmentationTransform,
    workers: usize,
    skip_bad_samples: bool,
    seed: u64,
}

impl SegmentationBatcher {
    /// A batcher over `table` with `transform`, as the run's `[data]` says.
    pub fn new(run: &RunContext, table: SegmentationTable, labels: LabelSet, transform: SegmentationTransform) -> Self {
        Self {
            table: Arc::new(table),
            labels: Arc::new(labels),
            transform,
            workers: run.data.workers.max(1),
            skip_bad_samples: run.data.skip_bad_samples,
            seed: run.seed,
        }
    }

    /// The batcher of `table` with the training (`train`) or evaluation transform of `seg`.
    pub fn of(run: &RunContext, seg: &SegmentationSection, table: SegmentationTable, labels: &LabelSet, image_size: usize, train: bool) -> anyhow::Result<Self> {
        let config = SegmentationTransformConfig::new().with_image_size(image_size).with_scale(seg.scale).with_flip(seg.flip);
        let transform = if train { config.init_train()? } else { config.init_eval()? };
        Ok(Self::new(run, table, labels.clone(), transform))
    }

    /// The table.
    pub fn table(&self) -> &SegmentationTable {
        &self.table
    }
}

impl BatchSource for SegmentationBatcher {
    type Batch = SegmentationBatch;

    fn rows(&self) -> usize {
        self.table.samples.len()
    }

    fn batch(&self, indices: &[usize], step: usize) -> Result<SegmentationBatch, DataError> {
        let loaded = load_on_workers(indices, self.workers, |row, slot| {
            let sample = &self.table.samples[row];
            load_sample(sample, &self.labels, &self.transform, &mut sample_rng(self.seed, step, slot)).map_err(|e| DataError {
                path: self.table.path.clone(),
                line: Some(sample.line),
                message: e.to_string(),
            })
        });
        let (kept, skipped) = keep_readable(indices, loaded, self.skip_bad_samples)?;
        let (rows, loaded): (Vec<usize>, Vec<_>) = kept.into_iter().unzip();
        let (images, masks) = loaded.into_iter().unzip();
        Ok(SegmentationBatch { rows, images, masks, skipped })
    }
}

/// The training table and the validation table (`data.val`, or the `data.val_fraction` split):
/// tables with image and mask columns, or folders of images with `segmentation.*_masks` folders.
/// With `captions`, the training table also reads the caption column (GroupViT trains on
/// captions; validation only scores the masks).
pub fn segmentation_tables(run: &RunContext, seg: &SegmentationSection, captions: bool) -> anyhow::Result<(SegmentationTable, Option<SegmentationTable>)> {
    let captions = captions.then_some(run.data.caption_column.as_str());
    let read = |data: &Path, masks: Option<&PathBuf>, list: Option<&PathBuf>, caption: Option<&str>| -> anyhow::Result<SegmentationTable> {
        Ok(match (masks.filter(|_| data.is_dir()), list) {
            (Some(masks), Some(list)) => SegmentationTable::from_list(data, masks, list)?,
            (Some(masks), None) => SegmentationTable::from_folders(data, masks)?,
            (None, _) => SegmentationTable::read(data, &SegmentationColumns { image: &run.data.image_column, mask: &seg.mask_column, caption })?,
        })
    };
    let train = read(&run.data.train, seg.train_masks.as_ref(), seg.train_list.as_ref(), captions)?;
    run.with_validation(train, |val| read(val, seg.val_masks.as_ref(), seg.val_list.as_ref(), None))
}

/// The validation table: `read` (kept by a task that trained here), or read anew.
pub fn validation_table(run: &RunContext, seg: &SegmentationSection, read: Option<&SegmentationTable>) -> anyhow::Result<Option<SegmentationTable>> {
    match read {
        Some(val) => Ok(Some(val.clone())),
        None => Ok(segmentation_tables(run, seg, false)?.1),
    }
}

impl Splittable for SegmentationTable {
    fn rows(&self) -> usize {
        self.samples.len()
    }
    fn split_off(self, fraction: f64, seed: u64) -> (Self, Self) {
        self.split(fraction, seed)
    }
}

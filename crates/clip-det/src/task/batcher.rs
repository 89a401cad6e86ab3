//! Batches of COCO-style detection data (resized images, boxes in input pixels, random
//! flips) loaded on worker threads; the datasets of a run, their base/novel split, and
//! precomputed proposals.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use rand::Rng;
use clip_task::data::{BatchSource, DataError, LoadedBatch, keep_readable, load_on_workers, sample_rng};
use clip_task::{RunContext, Splittable};

use crate::boxes::BoxXyxy;
use crate::data::{CategorySplit, CocoDataset, DetectionSample, ImageRecord, load_detection_sample, read_proposals};
use crate::task::section::DetectionSection;

/// Images and boxes of one batch, ready to become tensors.
#[derive(Debug)]
pub struct DetectionBatch {
    /// Indices of the images kept, in batch order.
    pub rows: Vec<usize>,
    /// Their samples: resized, normalized images with boxes in input pixels.
    pub samples: Vec<DetectionSample>,
    /// Whether each image was flipped horizontally.
    pub flipped: Vec<bool>,
    /// Per image, a seed for its task's own random choices (GLIP's category prompt), drawn
    /// after the flip from the sample's generator ([`sample_rng`] of the run seed, the step and
    /// the slot): the same step gives the same seeds, so a resumed run replays them.
    pub seeds: Vec<u64>,
    /// Images skipped because they could not be read.
    pub skipped: Vec<DataError>,
}

impl LoadedBatch for DetectionBatch {
    fn rows(&self) -> &[usize] {
        &self.rows
    }

    fn skipped(&self) -> &[DataError] {
        &self.skipped
    }
}

/// Builds batches of a COCO dataset on worker threads.
#[derive(Clone)]
pub struct DetectionBatcher {
    dataset: Arc<CocoDataset>,
    image_size: usize,
    flip: bool,
    workers: usize,
    skip_bad_samples: bool,
    seed: u64,
}

impl DetectionBatcher {
    /// A batcher over `dataset` at `image_size`; `flip` draws random horizontal flips.
    pub fn new(run: &RunContext, dataset: CocoDataset, image_size: usize, flip: bool) -> Self {
        Self {
            dataset: Arc::new(dataset),
            image_size,
            flip,
            workers: run.data.workers.max(1),
            skip_bad_samples: run.data.skip_bad_samples,
            seed: run.seed,
        }
    }

    /// The dataset.
    pub fn dataset(&self) -> &CocoDataset {
        &self.dataset
    }

    /// The same batcher without random flips (for evaluation and caching).
    pub fn unflipped(&self) -> Self {
        Self { flip: false, ..self.clone() }
    }
}

impl BatchSource for DetectionBatcher {
    type Batch = DetectionBatch;

    fn rows(&self) -> usize {
        self.dataset.images.len()
    }

    fn batch(&self, indices: &[usize], step: usize) -> Result<DetectionBatch, DataError> {
        let loaded = load_on_workers(indices, self.workers, |row, slot| {
            let mut rng = sample_rng(self.seed, step, slot);
            let flip = self.flip && rng.random_bool(0.5);
            let seed: u64 = rng.random();
            let record = &self.dataset.images[row];
            load_detection_sample(record, self.image_size, flip)
                .map(|sample| (sample, (flip, seed)))
                .map_err(|e| DataError { path: self.dataset.path.clone(), line: None, message: e.to_string() })
        });
        let (kept, skipped) = keep_readable(indices, loaded, self.skip_bad_samples)?;
        let (rows, loaded): (Vec<usize>, Vec<_>) = kept.into_iter().unzip();
        let (samples, draws): (Vec<_>, Vec<_>) = loaded.into_iter().unzip();
        let (flipped, seeds) = draws.into_iter().unzip();
        Ok(DetectionBatch { rows, samples, flipped, seeds, skipped })
    }
}

/// The folder a COCO JSON's `file_name`s are relative to: `images`, or the JSON's folder.
pub fn images_dir(json: &Path, images: Option<&PathBuf>) -> PathBuf {
    images.cloned().unwrap_or_else(|| json.parent().map(Path::to_path_buf).unwrap_or_default())
}

/// The training dataset and the validation dataset (`data.val`, or the `data.val_fraction` split).
pub fn detection_datasets(run: &RunContext, det: &DetectionSection) -> anyhow::Result<(CocoDataset, Option<CocoDataset>)> {
    let train = CocoDataset::read(&run.data.train, &images_dir(&run.data.train, det.train_images.as_ref()))?;
    let train_ids: Vec<u64> = train.categories.iter().map(|c| c.id).collect();
    run.with_validation(train, |path| {
        let val = CocoDataset::read(path, &images_dir(path, det.val_images.as_ref()))?;
        anyhow::ensure!(
            val.categories.iter().map(|c| c.id).eq(train_ids.iter().copied()),
            "{} and {} list different categories",
            run.data.train.display(),
            path.display()
        );
        Ok(val)
    })
}

/// The base/novel split of `[detection]`: the `novel` names, plus LVIS rare categories with
/// `novel_rare`.
pub fn category_split(dataset: &CocoDataset, det: &DetectionSection) -> anyhow::Result<CategorySplit> {
    let mut split = CategorySplit::from_names(&dataset.categories, &det.novel)
        .with_context(|| format!("detection.novel ({})", dataset.path.display()))?;
    if det.novel_rare {
        split.novel.extend(CategorySplit::lvis_rare(&dataset.categories).novel);
        split.novel.sort_unstable();
        split.novel.dedup();
        split.base.retain(|c| !split.novel.contains(c));
    }
    anyhow::ensure!(!split.base.is_empty(), "{}: every category is novel: nothing to train on", dataset.path.display());
    Ok(split)
}

/// `dataset` without the boxes of `novel` categories (their objects become background).
pub fn without_novel(mut dataset: CocoDataset, novel: &[usize]) -> CocoDataset {
    for image in &mut dataset.images {
        image.annotations.retain(|a| !novel.contains(&a.category));
    }
    dataset
}

/// A box of `record` (its own pixels) in the `size x size` network input.
pub fn scale_box(bbox: &BoxXyxy, record: &ImageRecord, size: usize) -> BoxXyxy {
    let (sx, sy) = (size as f32 / record.width as f32, size as f32 / record.height as f32);
    [bbox[0] * sx, bbox[1] * sy, bbox[2] * sx, bbox[3] * sy]
}

/// The top `per_image` proposals of `detection.proposals` for each image of `dataset`, in
/// network-input pixels.
pub fn file_proposals(dataset: &CocoDataset, det: &DetectionSection, per_image: usize) -> anyhow::Result<Vec<Vec<BoxXyxy>>> {
    let file = det.proposals.as_deref().context("detection.proposals is not set")?;
    let proposals = read_proposals(file, dataset)?;
    Ok(proposals
        .iter()
        .zip(&dataset.images)
        .map(|(boxes, record)| boxes.iter().take(per_image).map(|b| scale_box(b, record, det.image_size)).collect())
        .collect())
}

/// Boxes of the network input mirrored horizontally with `flip`.
pub fn mirrored(boxes: &[BoxXyxy], flip: bool, size: usize) -> Vec<BoxXyxy> {
    let size = size as f32;
    boxes.iter().map(|b| if flip { [size - b[2], b[1], size - b[0], b[3]] } else { *b }).collect()
}

impl Splittable for CocoDataset {
    fn rows(&self) -> usize {
        self.images.len()
    }
    fn split_off(self, fraction: f64, seed: u64) -> (Self, Self) {
        self.split(fraction, seed)
    }
}

/// The data of a detection run: the training batcher (novel boxes dropped), the base/novel
/// split, the base category names and the validation dataset.
pub struct DetectionData {
    /// Batches of the training images, flipped at random with `detection.flip`.
    pub train: DetectionBatcher,
    /// Base and novel categories.
    pub split: CategorySplit,
    /// Names of the base categories, in split order.
    pub base_names: Vec<String>,
    /// The validation dataset (`data.val` or the `data.val_fraction` split).
    pub val: Option<CocoDataset>,
}

impl DetectionData {
    /// Reads the run's datasets and splits the categories; prints the split.
    pub fn read(run: &RunContext, det: &DetectionSection) -> anyhow::Result<Self> {
        let (train, val) = detection_datasets(run, det)?;
        let split = category_split(&train, det)?;
        let names: Vec<String> = train.categories.iter().map(|c| c.name.clone()).collect();
        let base_names: Vec<String> = split.base.iter().map(|&c| names[c].clone()).collect();
        let novel: Vec<&str> = split.novel.iter().map(|&c| names[c].as_str()).collect();
        eprintln!("categories: {} base, {} novel ({})", split.base.len(), split.novel.len(), novel.join(", "));
        let train = DetectionBatcher::new(run, without_novel(train, &split.novel), det.image_size, det.flip);
        Ok(Self { train, split, base_names, val })
    }

    /// The index among the base categories of dataset category `category`.
    pub fn base_index(&self, category: usize) -> anyhow::Result<usize> {
        self.split.base.iter().position(|&c| c == category).context("a novel box reached training")
    }
}

/// The category split and the validation dataset evaluation needs: of `data` when training
/// read it, read anew otherwise.
pub fn evaluation_data(run: &RunContext, det: &DetectionSection, data: Option<&DetectionData>) -> anyhow::Result<(CategorySplit, Option<CocoDataset>)> {
    match data {
        Some(data) => Ok((data.split.clone(), data.val.clone())),
        None => {
            let (train, val) = detection_datasets(run, det)?;
            Ok((category_split(&train, det)?, val))
        }
    }
}

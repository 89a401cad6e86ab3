//! Segmentation data: images with PNG label masks, a label-name list, and joint augmentation.
//!
//! - [`LabelSet`]: label names (a text file or ADE20K's `objectInfo150.csv`), the ignore index
//!   and ADE20K's `reduce_zero_label`.
//! - [`SegmentationTable`]: (image, mask, caption) rows from a TSV/CSV table, a pair of image
//!   and mask folders, or a PASCAL VOC image-set list.
//! - [`SegmentationTransform`]: random rescale, crop and flip for training, a square resize for
//!   evaluation, applied identically to image and mask.
//! - [`load_sample`] and [`stack_masks`]: one transformed (image, mask) pair, and masks batched.

mod labels;
mod mask;
mod table;
mod transform;

use std::path::{Path, PathBuf};

use burn::tensor::{Device, Int, Tensor, TensorData};
use clip_core::preprocess::{ImageTensorData, PreprocessError, load_image};
use rand::Rng;

pub use labels::LabelSet;
pub use table::{SegmentationColumns, SegmentationSample, SegmentationTable};
pub use transform::{SegmentationTransform, SegmentationTransformConfig};

/// A problem with segmentation data, naming the file (and the table line where there is one).
#[derive(Debug, thiserror::Error)]
pub enum SegmentationDataError {
    /// A label file, table, folder or image-set list is missing or malformed.
    #[error("{path}{}: {message}", line.map(|l| format!(":{l}")).unwrap_or_default())]
    Table {
        /// The file or folder.
        path: PathBuf,
        /// 1-based line, when the problem is in one line.
        line: Option<usize>,
        /// What is wrong.
        message: String,
    },
    /// An image or mask of one sample cannot be used.
    #[error("{path}: {message}{}", if *line > 0 { format!(" (table line {line})") } else { String::new() })]
    Sample {
        /// The image or mask file.
        path: PathBuf,
        /// The sample's line in its table (0 when it came from folders).
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// A transform setting or a batch is invalid.
    #[error("{message}")]
    Invalid {
        /// What is wrong.
        message: String,
    },
}

impl SegmentationDataError {
    fn table(path: &Path, line: Option<usize>, message: impl Into<String>) -> Self {
        Self::Table {
            path: path.to_path_buf(),
            line,
            message: message.into(),
        }
    }

    fn sample(path: &Path, line: usize, message: impl Into<String>) -> Self {
        Self::Sample {
            path: path.to_path_buf(),
            line,
            message: message.into(),
        }
    }
}

/// A label mask: `height * width` label indices, row-major; the ignore index marks pixels
/// without a label (unlabelled, or padding).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaskData {
    /// Rows.
    pub height: usize,
    /// Columns.
    pub width: usize,
    /// Label index per pixel, row-major.
    pub values: Vec<i64>,
}

/// Reads one sample's image and mask, checks them against each other and `labels`, and
/// transforms both identically: `[3, S, S]` normalized image values and an `S x S` mask.
pub fn load_sample(
    sample: &SegmentationSample,
    labels: &LabelSet,
    transform: &SegmentationTransform,
    rng: &mut impl Rng,
) -> Result<(ImageTensorData, MaskData), SegmentationDataError> {
    let image = load_image(&sample.image).map_err(|e| {
        let message = match e {
            PreprocessError::Io { error, .. } => error.to_string(),
            PreprocessError::Decode { message, .. } => format!("cannot decode the image: {message}"),
            other => other.to_string(),
        };
        SegmentationDataError::sample(&sample.image, sample.line, message)
    })?;
    let raw =
        mask::read_mask_png(&sample.mask).map_err(|m| SegmentationDataError::sample(&sample.mask, sample.line, m))?;
    if (raw.width, raw.height) != image.dimensions() {
        return Err(SegmentationDataError::sample(
            &sample.mask,
            sample.line,
            format!(
                "the mask is {}x{} but its image {} is {}x{}",
                raw.width,
                raw.height,
                sample.image.display(),
                image.width(),
                image.height()
            ),
        ));
    }
    let values = labels
        .to_labels(&raw.values)
        .map_err(|m| SegmentationDataError::sample(&sample.mask, sample.line, m))?;
    let mask = MaskData {
        height: raw.height as usize,
        width: raw.width as usize,
        values,
    };
    Ok(transform.apply(&image, &mask, labels.ignore_index, rng))
}

/// Stacks masks of one size into a `[batch, height, width]` tensor.
pub fn stack_masks(masks: &[MaskData], device: &Device) -> Result<Tensor<3, Int>, SegmentationDataError> {
    let Some(first) = masks.first() else {
        return Err(SegmentationDataError::Invalid {
            message: "cannot stack an empty list of masks".into(),
        });
    };
    if let Some((index, mask)) = masks
        .iter()
        .enumerate()
        .find(|(_, m)| (m.height, m.width) != (first.height, first.width))
    {
        return Err(SegmentationDataError::Invalid {
            message: format!(
                "masks of a batch must share one size: mask {index} is {}x{}, the first is {}x{}",
                mask.width, mask.height, first.width, first.height
            ),
        });
    }
    let values: Vec<i64> = masks.iter().flat_map(|m| m.values.iter().copied()).collect();
    Ok(Tensor::from_data(
        TensorData::new(values, [masks.len(), first.height, first.width]),
        device,
    ))
}

//! Joint image-mask transforms. Images are resampled bicubically (clip-core's PIL-exact
//! bicubic), masks by nearest neighbour (pixel centres: source index
//! `floor((i + 0.5) * source / target)`), so labels are never blended.
//!
//! - Training (mmsegmentation's `RandomResize` + `RandomCrop` + `RandomFlip` + `Pad`): the
//!   shorter side is rescaled to `image_size * r`, `r` uniform in `scale`, keeping the aspect
//!   ratio; a random `image_size` square is cropped (a side shorter than `image_size` is taken
//!   whole and padded at the bottom/right: zeros in the normalized image, the ignore index in
//!   the mask); then a horizontal flip with probability 1/2 when `flip` is set.
//! - Evaluation: the whole image is resized to `image_size` x `image_size` (aspect ratio not
//!   kept, so no pixel is cropped away and images batch together).

use burn::config::Config;
use clip_core::preprocess::{ImageTensorData, Normalize, OPENAI_MEAN, OPENAI_STD, resize_bicubic};
use image::RgbImage;
use rand::Rng;

use super::{MaskData, SegmentationDataError};

/// Configuration of the segmentation transforms.
#[derive(Config, Debug, PartialEq)]
pub struct SegmentationTransformConfig {
    /// Output side in pixels (square).
    #[config(default = 224)]
    pub image_size: usize,
    /// Range of the random rescale factor of the shorter side relative to `image_size`
    /// (training only; mmsegmentation's `ratio_range`).
    #[config(default = "(0.5, 2.0)")]
    pub scale: (f64, f64),
    /// Random horizontal flips with probability 1/2 (training only).
    #[config(default = true)]
    pub flip: bool,
    /// Per-channel mean subtracted after scaling to `[0, 1]`.
    #[config(default = "OPENAI_MEAN")]
    pub mean: [f32; 3],
    /// Per-channel standard deviation divided by.
    #[config(default = "OPENAI_STD")]
    pub std: [f32; 3],
}

impl SegmentationTransformConfig {
    /// The training transform; errors name the field out of range.
    pub fn init_train(&self) -> Result<SegmentationTransform, SegmentationDataError> {
        self.init(true)
    }

    /// The evaluation transform.
    pub fn init_eval(&self) -> Result<SegmentationTransform, SegmentationDataError> {
        self.init(false)
    }

    fn init(&self, train: bool) -> Result<SegmentationTransform, SegmentationDataError> {
        let invalid = |message: String| Err(SegmentationDataError::Invalid { message });
        if self.image_size == 0 {
            return invalid("image_size is 0".into());
        }
        let (lo, hi) = self.scale;
        if train && !(0.0 < lo && lo <= hi && hi.is_finite()) {
            return invalid(format!("scale {:?} must satisfy 0 < min <= max", self.scale));
        }
        Ok(SegmentationTransform {
            image_size: self.image_size,
            train: train.then_some((self.scale, self.flip)),
            normalize: Normalize::new(self.mean, self.std),
        })
    }
}

/// A joint image-mask transform (see the [module](self) documentation).
#[derive(Debug, Clone)]
pub struct SegmentationTransform {
    image_size: usize,
    /// Rescale range and flip, for the training transform.
    train: Option<((f64, f64), bool)>,
    normalize: Normalize,
}

impl SegmentationTransform {
    /// Output side in pixels.
    pub fn image_size(&self) -> usize {
        self.image_size
    }

    /// Whether this is the (random) training transform.
    pub fn is_train(&self) -> bool {
        self.train.is_some()
    }

    /// `[3, S, S]` normalized image values and the `S x S` mask, `S = image_size`; padding is
    /// `ignore_index` in the mask. All randomness comes from `rng` (the evaluation transform
    /// draws nothing).
    ///
    /// # Panics
    /// When the mask's size differs from the image's ([`super::load_sample`] checks it).
    pub fn apply(
        &self,
        image: &RgbImage,
        mask: &MaskData,
        ignore_index: i64,
        rng: &mut impl Rng,
    ) -> (ImageTensorData, MaskData) {
        assert_eq!(
            (mask.width as u32, mask.height as u32),
            image.dimensions(),
            "mask and image sizes differ"
        );
        let size = self.image_size as u32;
        let Some(((lo, hi), flip)) = self.train else {
            return (
                self.normalize.apply(&resize_bicubic(image, size, size)),
                resize_nearest(mask, self.image_size, self.image_size),
            );
        };
        // Rescale: the shorter side becomes size * r.
        let (width, height) = image.dimensions();
        let short = f64::from(width.min(height));
        let factor = f64::from(size) * rng.random_range(lo..=hi) / short;
        let new_width = ((f64::from(width) * factor).round() as u32).max(1);
        let new_height = ((f64::from(height) * factor).round() as u32).max(1);
        let image = resize_bicubic(image, new_width, new_height);
        let mask = resize_nearest(mask, new_width as usize, new_height as usize);
        // Crop.
        let (crop_width, crop_height) = (new_width.min(size), new_height.min(size));
        let left = rng.random_range(0..=new_width - crop_width);
        let top = rng.random_range(0..=new_height - crop_height);
        let mut image = image::imageops::crop_imm(&image, left, top, crop_width, crop_height).to_image();
        let mut mask = crop(
            &mask,
            left as usize,
            top as usize,
            crop_width as usize,
            crop_height as usize,
        );
        // Flip.
        if flip && rng.random_bool(0.5) {
            image::imageops::flip_horizontal_in_place(&mut image);
            for row in mask.values.chunks_mut(mask.width) {
                row.reverse();
            }
        }
        // Pad.
        let image = pad_image(self.normalize.apply(&image), self.image_size);
        let mask = pad_mask(&mask, self.image_size, ignore_index);
        (image, mask)
    }
}

/// Nearest-neighbour resize by pixel centres.
fn resize_nearest(mask: &MaskData, width: usize, height: usize) -> MaskData {
    let source = |target: usize, from: usize, to: usize| {
        (((target as f64 + 0.5) * from as f64 / to as f64) as usize).min(from - 1)
    };
    let columns: Vec<usize> = (0..width).map(|x| source(x, mask.width, width)).collect();
    let mut values = Vec::with_capacity(width * height);
    for y in 0..height {
        let row = &mask.values[source(y, mask.height, height) * mask.width..][..mask.width];
        values.extend(columns.iter().map(|&x| row[x]));
    }
    MaskData { height, width, values }
}

fn crop(mask: &MaskData, left: usize, top: usize, width: usize, height: usize) -> MaskData {
    let values = (top..top + height)
        .flat_map(|y| mask.values[y * mask.width + left..][..width].iter().copied())
        .collect();
    MaskData { height, width, values }
}

fn pad_mask(mask: &MaskData, size: usize, fill: i64) -> MaskData {
    let mut values = vec![fill; size * size];
    for (y, row) in mask.values.chunks(mask.width).enumerate() {
        values[y * size..][..mask.width].copy_from_slice(row);
    }
    MaskData {
        height: size,
        width: size,
        values,
    }
}

fn pad_image(image: ImageTensorData, size: usize) -> ImageTensorData {
    let [channels, height, width] = image.shape;
    if (height, width) == (size, size) {
        return image;
    }
    let mut values = vec![0.0; channels * size * size];
    for (plane, source) in image.values.chunks(height * width).enumerate() {
        for (y, row) in source.chunks(width).enumerate() {
            values[plane * size * size + y * size..][..width].copy_from_slice(row);
        }
    }
    ImageTensorData {
        shape: [channels, size, size],
        values,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    /// A 4x2 mask: 0 1 2 3 / 4 5 6 7.
    fn mask() -> MaskData {
        MaskData {
            height: 2,
            width: 4,
            values: (0..8).collect(),
        }
    }

    #[test]
    fn nearest_resize_uses_pixel_centres() {
        // Width 4 -> 2: target column x reads floor((x + 0.5) * 2) = 1, 3.
        // Height 2 -> 4: target row y reads floor((y + 0.5) / 2) = 0, 0, 1, 1.
        let resized = resize_nearest(&mask(), 2, 4);
        assert_eq!(resized.values, [1, 3, 1, 3, 5, 7, 5, 7]);
    }

    #[test]
    fn eval_transform_resizes_the_whole_image() {
        let transform = SegmentationTransformConfig::new()
            .with_image_size(8)
            .init_eval()
            .unwrap();
        let image = RgbImage::from_pixel(4, 2, image::Rgb([10, 20, 30]));
        let (pixels, labels) = transform.apply(&image, &mask(), 255, &mut StdRng::seed_from_u64(0));
        assert_eq!(pixels.shape, [3, 8, 8]);
        // Column x reads floor((x + 0.5) / 2), row y floor((y + 0.5) / 4): row 0 is 0 0 1 1 2 2 3 3.
        assert_eq!(&labels.values[..8], &[0, 0, 1, 1, 2, 2, 3, 3]);
        assert_eq!(&labels.values[56..], &[4, 4, 5, 5, 6, 6, 7, 7]);
        // A uniform image stays uniform: (10 / 255 - mean) / std in the red plane.
        let red = (10.0 / 255.0 - OPENAI_MEAN[0]) / OPENAI_STD[0];
        assert!(pixels.values[..64].iter().all(|v| (v - red).abs() < 1e-5));
    }

    #[test]
    fn train_transform_pads_flips_and_is_seeded() {
        // Scale fixed at 0.5 of 8: the 4x2 image's short side becomes 4 -> 8x4, cropped to
        // 8 wide and 4 high, padded to 8x8 below.
        let transform = SegmentationTransformConfig::new()
            .with_image_size(8)
            .with_scale((0.5, 0.5))
            .init_train()
            .unwrap();
        let image = RgbImage::from_fn(4, 2, |x, _| image::Rgb([x as u8 * 60, 0, 0]));
        let run = |seed| transform.apply(&image, &mask(), 255, &mut StdRng::seed_from_u64(seed));
        assert_eq!(run(3), run(3));
        let (flipped, unflipped): (Vec<_>, Vec<_>) = (0..20).map(run).partition(|(_, m)| m.values[0] == 3);
        assert!(!flipped.is_empty() && !unflipped.is_empty());
        for (pixels, labels) in unflipped.iter().chain(&flipped) {
            assert_eq!(pixels.shape, [3, 8, 8]);
            assert!(labels.values[32..].iter().all(|&v| v == 255));
            assert!(pixels.values[32..64].iter().all(|&v| v == 0.0));
        }
        assert_eq!(&unflipped[0].1.values[..8], &[0, 0, 1, 1, 2, 2, 3, 3]);
        assert_eq!(&flipped[0].1.values[..8], &[3, 3, 2, 2, 1, 1, 0, 0]);
        let err = SegmentationTransformConfig::new()
            .with_scale((2.0, 1.0))
            .init_train()
            .unwrap_err();
        assert!(err.to_string().contains("scale"), "{err}");
    }
}

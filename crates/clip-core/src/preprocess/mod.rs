//! Image loading and CLIP's image transforms: the evaluation transform (resize the shortest
//! side bicubically, center crop, normalize) and the training augmentation (random resized
//! crop and horizontal flip, seeded by the caller's random number generator).
//!
//! Resizing is PIL's bicubic resampling reproduced exactly ([`resample`]), so the pixels are
//! those of open_clip's torchvision transforms.

mod resample;

use std::path::{Path, PathBuf};

use burn::config::Config;
use burn::tensor::{Device, Tensor, TensorData};
use image::RgbImage;
use rand::Rng;

pub use resample::resize_bicubic;

/// OpenAI CLIP's per-channel mean of the training images (RGB, in `[0, 1]`).
pub const OPENAI_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
/// OpenAI CLIP's per-channel standard deviation (RGB, in `[0, 1]`), with open_clip's digits.
#[allow(clippy::excessive_precision)]
pub const OPENAI_STD: [f32; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_11];

/// Why an image could not be loaded or transformed; names the file where there is one.
#[derive(Debug, thiserror::Error)]
pub enum PreprocessError {
    /// The file could not be opened or read.
    #[error("image {path}: {error}")]
    Io {
        /// The image file.
        path: PathBuf,
        /// The I/O error (shown in the message, so not also a `source`).
        error: std::io::Error,
    },
    /// The bytes are not an image the `image` crate can decode.
    #[error("image {path}: cannot decode: {message}")]
    Decode {
        /// The image file (or `<memory>`).
        path: PathBuf,
        /// The decoder's message.
        message: String,
    },
    /// The image or the requested size is empty.
    #[error("image {path}: {message}")]
    Size {
        /// The image file (or `<memory>`).
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Images of one batch differ in size.
    #[error("images of a batch must share one size: image {index} is {found:?}, the first is {expected:?}")]
    Batch {
        /// Position of the offending image.
        index: usize,
        /// `[3, H, W]` of the first image.
        expected: [usize; 3],
        /// `[3, H, W]` of this image.
        found: [usize; 3],
    },
}

/// Loads any image format the `image` crate knows (PNG, JPEG, GIF, BMP, WebP, TIFF, PNM) as
/// 8-bit RGB: grey levels are replicated, an alpha channel is dropped (as PIL's `convert("RGB")`).
pub fn load_image(path: &Path) -> Result<RgbImage, PreprocessError> {
    let bytes = std::fs::read(path).map_err(|error| PreprocessError::Io {
        path: path.to_path_buf(),
        error,
    })?;
    decode_image(&bytes, path)
}

/// Decodes image bytes; `origin` names them in errors.
pub fn decode_image(bytes: &[u8], origin: &Path) -> Result<RgbImage, PreprocessError> {
    let image = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| decode_error(origin, e))?
        .decode()
        .map_err(|e| decode_error(origin, e))?;
    let rgb = image.to_rgb8();
    if rgb.width() == 0 || rgb.height() == 0 {
        return Err(PreprocessError::Size {
            path: origin.to_path_buf(),
            message: "the image has no pixels".into(),
        });
    }
    Ok(rgb)
}

fn decode_error(path: &Path, error: impl std::fmt::Display) -> PreprocessError {
    PreprocessError::Decode {
        path: path.to_path_buf(),
        message: error.to_string(),
    }
}

/// Configuration of CLIP's evaluation transform.
#[derive(Config, Debug, PartialEq)]
pub struct EvalTransformConfig {
    /// Output side in pixels (square).
    #[config(default = 224)]
    pub image_size: usize,
    /// Per-channel mean subtracted after scaling to `[0, 1]`.
    #[config(default = "OPENAI_MEAN")]
    pub mean: [f32; 3],
    /// Per-channel standard deviation divided by.
    #[config(default = "OPENAI_STD")]
    pub std: [f32; 3],
}

impl EvalTransformConfig {
    /// The transform.
    pub fn init(&self) -> EvalTransform {
        EvalTransform {
            image_size: self.image_size,
            normalize: Normalize::new(self.mean, self.std),
        }
    }
}

/// open_clip's evaluation transform: resize the shortest side to `image_size` (bicubic),
/// center crop to `image_size` square, scale to `[0, 1]`, normalize per channel.
#[derive(Debug, Clone)]
pub struct EvalTransform {
    image_size: usize,
    normalize: Normalize,
}

impl EvalTransform {
    /// Output side in pixels.
    pub fn image_size(&self) -> usize {
        self.image_size
    }

    /// The transformed image as `[3, image_size, image_size]` values, channel-major.
    pub fn apply(&self, image: &RgbImage) -> Result<ImageTensorData, PreprocessError> {
        let (width, height) = image.dimensions();
        let size = self.image_size as u32;
        if size == 0 {
            return Err(size_error("image_size is 0"));
        }
        // torchvision: the short side becomes `size`, the long side `int(size * long / short)`.
        let (new_width, new_height) = if width <= height {
            (size, (size as u64 * height as u64 / width as u64) as u32)
        } else {
            ((size as u64 * width as u64 / height as u64) as u32, size)
        };
        let resized = resize_bicubic(image, new_width, new_height);
        // torchvision's CenterCrop: offsets `int(round((side - size) / 2))`, ties to even.
        let left = ((new_width - size) as f64 / 2.0).round_ties_even() as u32;
        let top = ((new_height - size) as f64 / 2.0).round_ties_even() as u32;
        let cropped = image::imageops::crop_imm(&resized, left, top, size, size).to_image();
        Ok(self.normalize.apply(&cropped))
    }

    /// Loads and transforms an image file.
    pub fn load(&self, path: &Path) -> Result<ImageTensorData, PreprocessError> {
        self.apply(&load_image(path)?)
    }
}

/// Configuration of CLIP's training augmentation.
#[derive(Config, Debug, PartialEq)]
pub struct TrainTransformConfig {
    /// Output side in pixels (square).
    #[config(default = 224)]
    pub image_size: usize,
    /// Range of the crop's area as a fraction of the image (open_clip: 0.9 to 1.0).
    #[config(default = "(0.9, 1.0)")]
    pub scale: (f64, f64),
    /// Range of the crop's aspect ratio (width / height).
    #[config(default = "(0.75, 1.333_333_333_333_333_3)")]
    pub ratio: (f64, f64),
    /// Probability of a horizontal flip.
    #[config(default = 0.0)]
    pub flip_probability: f64,
    /// Per-channel mean subtracted after scaling to `[0, 1]`.
    #[config(default = "OPENAI_MEAN")]
    pub mean: [f32; 3],
    /// Per-channel standard deviation divided by.
    #[config(default = "OPENAI_STD")]
    pub std: [f32; 3],
}

impl TrainTransformConfig {
    /// The transform; errors name the field that is out of range.
    pub fn init(&self) -> Result<TrainTransform, PreprocessError> {
        let (lo, hi) = self.scale;
        if !(0.0 < lo && lo <= hi && hi <= 1.0) {
            return Err(size_error(format!("scale {:?} must satisfy 0 < min <= max <= 1", self.scale)));
        }
        let (lo, hi) = self.ratio;
        if !(0.0 < lo && lo <= hi) {
            return Err(size_error(format!("ratio {:?} must satisfy 0 < min <= max", self.ratio)));
        }
        if !(0.0..=1.0).contains(&self.flip_probability) {
            return Err(size_error(format!("flip_probability {} must be in [0, 1]", self.flip_probability)));
        }
        if self.image_size == 0 {
            return Err(size_error("image_size is 0"));
        }
        Ok(TrainTransform {
            config: self.clone(),
            normalize: Normalize::new(self.mean, self.std),
        })
    }
}

/// torchvision's `RandomResizedCrop` (bicubic) followed by an optional horizontal flip.
#[derive(Debug, Clone)]
pub struct TrainTransform {
    config: TrainTransformConfig,
    normalize: Normalize,
}

impl TrainTransform {
    /// The augmented image as `[3, image_size, image_size]` values; all randomness comes from `rng`.
    pub fn apply(&self, image: &RgbImage, rng: &mut impl Rng) -> Result<ImageTensorData, PreprocessError> {
        let size = self.config.image_size as u32;
        let [left, top, width, height] = self.crop_box(image.width(), image.height(), rng);
        let crop = image::imageops::crop_imm(image, left, top, width, height).to_image();
        let mut resized = resize_bicubic(&crop, size, size);
        if rng.random::<f64>() < self.config.flip_probability {
            image::imageops::flip_horizontal_in_place(&mut resized);
        }
        Ok(self.normalize.apply(&resized))
    }

    /// `[left, top, width, height]` of the crop, as torchvision samples it: ten tries at a
    /// random area and log-uniform aspect ratio, then a center crop clamped to the ratio range.
    fn crop_box(&self, width: u32, height: u32, rng: &mut impl Rng) -> [u32; 4] {
        let area = (width * height) as f64;
        let (log_lo, log_hi) = (self.config.ratio.0.ln(), self.config.ratio.1.ln());
        for _ in 0..10 {
            let target_area = area * rng.random_range(self.config.scale.0..=self.config.scale.1);
            let ratio = rng.random_range(log_lo..=log_hi).exp();
            let w = (target_area * ratio).sqrt().round() as u32;
            let h = (target_area / ratio).sqrt().round() as u32;
            if 0 < w && w <= width && 0 < h && h <= height {
                let top = rng.random_range(0..=height - h);
                let left = rng.random_range(0..=width - w);
                return [left, top, w, h];
            }
        }
        let in_ratio = width as f64 / height as f64;
        let (w, h) = if in_ratio < self.config.ratio.0 {
            (width, ((width as f64 / self.config.ratio.0).round() as u32).max(1))
        } else if in_ratio > self.config.ratio.1 {
            (((height as f64 * self.config.ratio.1).round() as u32).max(1), height)
        } else {
            (width, height)
        };
        [(width - w) / 2, (height - h) / 2, w, h]
    }
}

/// One transformed image: `[3, H, W]` f32 values, channel-major.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageTensorData {
    /// `[3, H, W]`.
    pub shape: [usize; 3],
    /// Values, channel-major.
    pub values: Vec<f32>,
}

impl ImageTensorData {
    /// A `[3, H, W]` tensor on `device`.
    pub fn to_tensor(&self, device: &Device) -> Tensor<3> {
        Tensor::from_data(TensorData::new(self.values.clone(), self.shape), device)
    }
}

/// Stacks transformed images of one size into a `[batch, 3, H, W]` tensor.
pub fn stack_images(images: &[ImageTensorData], device: &Device) -> Result<Tensor<4>, PreprocessError> {
    let Some(first) = images.first() else {
        return Err(size_error("cannot stack an empty list of images"));
    };
    if let Some((index, image)) = images.iter().enumerate().find(|(_, i)| i.shape != first.shape) {
        return Err(PreprocessError::Batch {
            index,
            expected: first.shape,
            found: image.shape,
        });
    }
    let [c, h, w] = first.shape;
    let values: Vec<f32> = images.iter().flat_map(|i| i.values.iter().copied()).collect();
    Ok(Tensor::from_data(TensorData::new(values, [images.len(), c, h, w]), device))
}

/// Scaling to `[0, 1]` and per-channel normalization, the last step of every transform.
#[derive(Debug, Clone)]
pub struct Normalize {
    /// `1 / (255 std)` per channel.
    scale: [f32; 3],
    /// `mean / std` per channel.
    offset: [f32; 3],
}

impl Normalize {
    /// Normalization by a per-channel `mean` and `std` (of values in `[0, 1]`).
    pub fn new(mean: [f32; 3], std: [f32; 3]) -> Self {
        Self {
            scale: std.map(|s| 1.0 / (255.0 * s)),
            offset: [0, 1, 2].map(|c| mean[c] / std[c]),
        }
    }

    /// The image as normalized `[3, H, W]` values, channel-major.
    pub fn apply(&self, image: &RgbImage) -> ImageTensorData {
        let (width, height) = image.dimensions();
        let plane = (width * height) as usize;
        let mut values = vec![0.0f32; 3 * plane];
        for (i, pixel) in image.pixels().enumerate() {
            for c in 0..3 {
                values[c * plane + i] = pixel.0[c] as f32 * self.scale[c] - self.offset[c];
            }
        }
        ImageTensorData {
            shape: [3, height as usize, width as usize],
            values,
        }
    }
}

fn size_error(message: impl Into<String>) -> PreprocessError {
    PreprocessError::Size {
        path: PathBuf::from("<memory>"),
        message: message.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn gradient(width: u32, height: u32) -> RgbImage {
        RgbImage::from_fn(width, height, |x, y| image::Rgb([(x * 7 % 256) as u8, (y * 5 % 256) as u8, 128]))
    }

    #[test]
    fn eval_transform_crops_the_center_of_the_short_side() {
        // A 40x20 image: the short side is already 20, so the center 20x20 is taken unchanged.
        let transform = EvalTransformConfig::new().with_image_size(20).init();
        let image = gradient(40, 20);
        let out = transform.apply(&image).unwrap();
        assert_eq!(out.shape, [3, 20, 20]);
        // Red channel at (row 0, column 0) comes from source column 10.
        let expected = (10.0 * 7.0 / 255.0 - OPENAI_MEAN[0]) / OPENAI_STD[0];
        assert!((out.values[0] - expected).abs() < 1e-5, "{} vs {expected}", out.values[0]);
    }

    #[test]
    fn train_transform_is_seeded_and_sized() {
        let transform = TrainTransformConfig::new()
            .with_image_size(16)
            .with_scale((0.3, 1.0))
            .with_flip_probability(0.5)
            .init()
            .unwrap();
        let image = gradient(50, 30);
        let run = |seed| transform.apply(&image, &mut StdRng::seed_from_u64(seed)).unwrap();
        assert_eq!(run(1), run(1));
        assert_ne!(run(1), run(2));
        assert_eq!(run(3).shape, [3, 16, 16]);
    }

    #[test]
    fn out_of_range_augmentation_is_named() {
        let err = TrainTransformConfig::new().with_scale((0.5, 1.5)).init().unwrap_err();
        assert!(err.to_string().contains("scale"), "{err}");
    }

    #[test]
    fn corrupt_image_names_its_path() {
        let err = decode_image(b"not an image", Path::new("photos/broken.jpg")).unwrap_err();
        assert!(err.to_string().contains("photos/broken.jpg"), "{err}");
        let err = load_image(Path::new("no/such/image.png")).unwrap_err();
        assert!(err.to_string().contains("no/such/image.png"), "{err}");
    }

    #[test]
    fn batches_must_share_a_size() {
        let device = Device::flex();
        let a = EvalTransformConfig::new().with_image_size(8).init().apply(&gradient(9, 9)).unwrap();
        let b = EvalTransformConfig::new().with_image_size(6).init().apply(&gradient(9, 9)).unwrap();
        assert_eq!(stack_images(&[a.clone(), a.clone()], &device).unwrap().dims(), [2, 3, 8, 8]);
        assert!(matches!(stack_images(&[a, b], &device), Err(PreprocessError::Batch { index: 1, .. })));
    }
}

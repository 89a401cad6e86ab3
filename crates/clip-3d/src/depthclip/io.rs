//! Depth data on disk: RGB images, 16-bit depth PNGs (NYU Depth v2 stores millimetres, KITTI
//! `depth * 256`), colorized depth maps, and the tensors DepthCLIP takes.

use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor, TensorData};
use clip_core::preprocess::{Normalize, load_image};
use image::{ImageBuffer, Luma, RgbImage};

/// ImageNet mean of the DepthCLIP data transform (not CLIP's mean).
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet std of the DepthCLIP data transform (not CLIP's std).
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];
/// Units per metre of NYU Depth v2 depth PNGs (millimetres).
pub const NYU_DEPTH_SCALE: f32 = 1000.0;
/// Units per metre of KITTI depth PNGs.
pub const KITTI_DEPTH_SCALE: f32 = 256.0;

/// A pixel rectangle: `left..left + width`, `top..top + height`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rect {
    /// First column.
    pub left: usize,
    /// First row.
    pub top: usize,
    /// Columns.
    pub width: usize,
    /// Rows.
    pub height: usize,
}

/// The official NYU test crop of the 640 x 480 RGB image, `rgb.crop((60, 56, 604, 472))`:
/// 544 x 416 pixels, the input size `MonoCLIP`'s hard-coded 13 x 17 grid needs.
pub const NYU_TEST_CROP: Rect = Rect { left: 60, top: 56, width: 544, height: 416 };

/// Errors of reading and writing depth data.
#[derive(Debug, thiserror::Error)]
pub enum DepthIoError {
    /// A file could not be read or written.
    #[error("{path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        error: std::io::Error,
    },
    /// The image codec failed.
    #[error("{path}: {error}")]
    Image {
        /// The file.
        path: PathBuf,
        /// What failed.
        error: image::ImageError,
    },
    /// The file decodes but is not what was asked for (an 8-bit depth map, a wrong size, ...).
    #[error("{path}: {message}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

fn image_error(path: &Path, error: image::ImageError) -> DepthIoError {
    DepthIoError::Image { path: path.to_path_buf(), error }
}

/// A depth map in metres, row-major; 0 marks a pixel without a measurement.
#[derive(Debug, Clone, PartialEq)]
pub struct DepthMap {
    /// Columns.
    pub width: usize,
    /// Rows.
    pub height: usize,
    /// `height * width` depths, row-major.
    pub values: Vec<f32>,
}

impl DepthMap {
    /// A map of the given values; `None` when their number is not `width * height`.
    pub fn new(width: usize, height: usize, values: Vec<f32>) -> Option<Self> {
        (values.len() == width * height).then_some(Self { width, height, values })
    }

    /// A map holding `value` everywhere.
    pub fn filled(width: usize, height: usize, value: f32) -> Self {
        Self { width, height, values: vec![value; width * height] }
    }

    /// Depth at column `x`, row `y`.
    pub fn get(&self, x: usize, y: usize) -> f32 {
        self.values[y * self.width + x]
    }

    /// Sets the depth at column `x`, row `y`.
    pub fn set(&mut self, x: usize, y: usize, value: f32) {
        self.values[y * self.width + x] = value;
    }

    /// The pixels inside `rect` (clipped to the map).
    pub fn crop(&self, rect: Rect) -> Self {
        let right = (rect.left + rect.width).min(self.width);
        let bottom = (rect.top + rect.height).min(self.height);
        let (left, top) = (rect.left.min(right), rect.top.min(bottom));
        let values = (top..bottom)
            .flat_map(|y| self.values[y * self.width + left..y * self.width + right].iter().copied())
            .collect();
        Self { width: right - left, height: bottom - top, values }
    }

    /// This map pasted into a `width x height` frame of zeros with its corner at (`left`, `top`),
    /// clipped to the frame: how the official NYU evaluation places a prediction of the 544 x 416
    /// crop into the 640 x 480 ground truth (`left` 60, `top` 56).
    pub fn place_in(&self, width: usize, height: usize, left: usize, top: usize) -> Self {
        let mut frame = Self::filled(width, height, 0.0);
        for y in 0..self.height.min(height.saturating_sub(top)) {
            for x in 0..self.width.min(width.saturating_sub(left)) {
                frame.set(left + x, top + y, self.get(x, y));
            }
        }
        frame
    }

    /// The maps of a `[batch, 1, H, W]` (or `[batch, H, W]`-like) tensor, one per batch item.
    pub fn from_batch<const D: usize>(depth: Tensor<D>) -> Vec<Self> {
        let dims = depth.dims();
        let (height, width) = (dims[D - 2], dims[D - 1]);
        let values: Vec<f32> = depth.into_data().iter::<f32>().collect();
        values
            .chunks(height * width)
            .map(|chunk| Self { width, height, values: chunk.to_vec() })
            .collect()
    }

    /// The map as a `[1, 1, H, W]` tensor.
    pub fn to_tensor(&self, device: &Device) -> Tensor<4> {
        Tensor::from_data(TensorData::new(self.values.clone(), [1, 1, self.height, self.width]), device)
    }

    /// Smallest and largest depth above zero; `None` without one.
    pub fn valid_range(&self) -> Option<(f32, f32)> {
        self.values.iter().copied().filter(|&d| d > 0.0 && d.is_finite()).fold(None, |range, d| match range {
            None => Some((d, d)),
            Some((lo, hi)) => Some((lo.min(d), hi.max(d))),
        })
    }
}

/// Reads an 8-bit RGB image (any format the `image` crate decodes).
pub fn read_rgb(path: &Path) -> Result<RgbImage, DepthIoError> {
    load_image(path).map_err(|e| DepthIoError::Format { path: path.to_path_buf(), message: e.to_string() })
}

/// The DepthCLIP data transform of an RGB image: values scaled to `[0, 1]` and normalized with
/// the ImageNet mean and std, as `[3, H, W]`.
pub fn image_tensor(image: &RgbImage, device: &Device) -> Tensor<3> {
    Normalize::new(IMAGENET_MEAN, IMAGENET_STD).apply(image).to_tensor(device)
}

/// The official NYU test input: the [`NYU_TEST_CROP`] of a 640 x 480 image, as a `[3, 416, 544]`
/// tensor; an error for other image sizes.
pub fn nyu_test_input(image: &RgbImage, device: &Device) -> Result<Tensor<3>, DepthIoError> {
    if image.dimensions() != (640, 480) {
        return Err(DepthIoError::Format {
            path: PathBuf::from("<image>"),
            message: format!("the NYU test crop needs a 640 x 480 image, not {:?}", image.dimensions()),
        });
    }
    let r = NYU_TEST_CROP;
    let crop = image::imageops::crop_imm(image, r.left as u32, r.top as u32, r.width as u32, r.height as u32).to_image();
    Ok(image_tensor(&crop, device))
}

/// Reads a 16-bit grayscale depth PNG: stored values divided by `scale` (units per metre:
/// [`NYU_DEPTH_SCALE`], [`KITTI_DEPTH_SCALE`]); 0 stays 0 (no measurement). Any other pixel
/// format is an error, since 8 bits cannot hold depth.
pub fn read_depth_png(path: &Path, scale: f32) -> Result<DepthMap, DepthIoError> {
    let decoded = image::open(path).map_err(|e| image_error(path, e))?;
    let image::DynamicImage::ImageLuma16(gray) = decoded else {
        return Err(DepthIoError::Format {
            path: path.to_path_buf(),
            message: format!("a depth PNG must be 16-bit grayscale, this one is {:?}", decoded.color()),
        });
    };
    let (width, height) = gray.dimensions();
    Ok(DepthMap {
        width: width as usize,
        height: height as usize,
        values: gray.pixels().map(|p| p.0[0] as f32 / scale).collect(),
    })
}

/// The 16-bit values `round(depth * scale)`, clamped to `0..=65535` (negative and non-finite
/// depths are 0).
pub fn quantize_depth(depth: &DepthMap, scale: f32) -> Vec<u16> {
    depth
        .values
        .iter()
        .map(|&d| if d.is_finite() && d > 0.0 { (d * scale).round().min(65535.0) as u16 } else { 0 })
        .collect()
}

/// Writes a 16-bit grayscale depth PNG holding `round(depth * scale)` (see [`quantize_depth`]).
pub fn write_depth_png(path: &Path, depth: &DepthMap, scale: f32) -> Result<(), DepthIoError> {
    let buffer: ImageBuffer<Luma<u16>, Vec<u16>> =
        ImageBuffer::from_raw(depth.width as u32, depth.height as u32, quantize_depth(depth, scale)).ok_or_else(
            || DepthIoError::Format { path: path.to_path_buf(), message: "depth map size does not match its values".into() },
        )?;
    buffer.save_with_format(path, image::ImageFormat::Png).map_err(|e| image_error(path, e))
}

/// Control points of the colormap, near (0) to far (1): dark purple through red and orange to
/// pale yellow, close to matplotlib's `magma`.
const COLORMAP: [[f32; 3]; 6] = [
    [0.0, 0.0, 4.0],
    [59.0, 15.0, 112.0],
    [140.0, 41.0, 129.0],
    [222.0, 73.0, 104.0],
    [254.0, 159.0, 109.0],
    [252.0, 253.0, 191.0],
];

/// The colormap at `t` in `[0, 1]` (clamped), linearly interpolated between control points.
pub fn colormap(t: f32) -> [u8; 3] {
    let t = if t.is_finite() { t.clamp(0.0, 1.0) } else { 0.0 };
    let position = t * (COLORMAP.len() - 1) as f32;
    let index = (position.floor() as usize).min(COLORMAP.len() - 2);
    let frac = position - index as f32;
    let (a, b) = (COLORMAP[index], COLORMAP[index + 1]);
    [0, 1, 2].map(|c| (a[c] + (b[c] - a[c]) * frac).round() as u8)
}

/// The depth map as colors: depths mapped linearly from `range` (or the map's own valid range)
/// onto [`colormap`], near dark and far bright; pixels without depth (0) are black.
pub fn colorize_depth(depth: &DepthMap, range: Option<(f32, f32)>) -> RgbImage {
    let (lo, hi) = range.or_else(|| depth.valid_range()).unwrap_or((0.0, 1.0));
    let span = (hi - lo).max(f32::EPSILON);
    RgbImage::from_fn(depth.width as u32, depth.height as u32, |x, y| {
        let d = depth.get(x as usize, y as usize);
        if d > 0.0 && d.is_finite() { image::Rgb(colormap((d - lo) / span)) } else { image::Rgb([0, 0, 0]) }
    })
}

/// Writes [`colorize_depth`] as an 8-bit RGB PNG.
pub fn write_colorized_depth_png(path: &Path, depth: &DepthMap, range: Option<(f32, f32)>) -> Result<(), DepthIoError> {
    colorize_depth(depth, range).save_with_format(path, image::ImageFormat::Png).map_err(|e| image_error(path, e))
}

/// One NYU-style sample: an RGB image and its depth in metres.
#[derive(Debug, Clone)]
pub struct DepthSample {
    /// The image.
    pub rgb: RgbImage,
    /// The depth map, the image's size.
    pub depth: DepthMap,
}

/// Reads an RGB image and its 16-bit depth PNG (units per metre `scale`); an error when their
/// sizes differ.
pub fn read_sample(rgb: &Path, depth: &Path, scale: f32) -> Result<DepthSample, DepthIoError> {
    let image = read_rgb(rgb)?;
    let map = read_depth_png(depth, scale)?;
    if image.dimensions() != (map.width as u32, map.height as u32) {
        return Err(DepthIoError::Format {
            path: depth.to_path_buf(),
            message: format!("depth is {}x{} but the image {} is {:?}", map.width, map.height, rgb.display(), image.dimensions()),
        });
    }
    Ok(DepthSample { rgb: image, depth: map })
}

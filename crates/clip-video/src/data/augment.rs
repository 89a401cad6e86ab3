//! Training augmentation of whole clips: one random resized crop and one color decision drawn
//! per clip and applied to every frame alike, so the motion between frames is kept (ActionCLIP's
//! `GroupMultiScaleCrop` and `GroupRandomGrayscale`, without the flip, which would turn
//! "moving left" into "moving right").

use clip_core::preprocess::{ImageTensorData, TrainTransform, TrainTransformConfig};
use image::RgbImage;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{FrameSampler, VideoDataError, VideoSource};

/// Settings of [`ClipAugment`].
#[derive(Debug, Clone, PartialEq)]
pub struct ClipAugmentConfig {
    /// Output side of every frame, in pixels.
    pub image_size: usize,
    /// Range of the crop's area as a fraction of the frame (`(1, 1)`: the whole frame).
    pub crop_scale: (f64, f64),
    /// Probability that a clip is turned to gray.
    pub grayscale: f64,
}

impl ClipAugmentConfig {
    /// The augmentation; errors name the setting that is out of range.
    pub fn init(&self) -> Result<ClipAugment, VideoDataError> {
        let invalid = |message: String| VideoDataError::Invalid { message };
        if !(0.0..=1.0).contains(&self.grayscale) {
            return Err(invalid(format!("grayscale probability {} must be in [0, 1]", self.grayscale)));
        }
        let crop = TrainTransformConfig::new()
            .with_image_size(self.image_size)
            .with_scale(self.crop_scale)
            .init()
            .map_err(|e| invalid(format!("clip crop: {e}")))?;
        Ok(ClipAugment { crop, grayscale: self.grayscale })
    }
}

/// One crop and color decision per clip, applied to each of its frames.
#[derive(Debug, Clone)]
pub struct ClipAugment {
    crop: TrainTransform,
    grayscale: f64,
}

impl ClipAugment {
    /// `frames` augmented alike: every frame gets the same crop box and the same color change;
    /// all randomness comes from `rng`.
    pub fn apply(&self, frames: &[RgbImage], rng: &mut impl Rng) -> Result<Vec<ImageTensorData>, VideoDataError> {
        let crop_seed: u64 = rng.random();
        let gray = rng.random::<f64>() < self.grayscale;
        frames
            .iter()
            .map(|frame| {
                let frame = if gray { to_gray(frame) } else { frame.clone() };
                self.crop
                    .apply(&frame, &mut StdRng::seed_from_u64(crop_seed))
                    .map_err(|e| VideoDataError::Invalid { message: e.to_string() })
            })
            .collect()
    }

    /// Samples `sampler.frames` frames of a video and augments them as one clip.
    pub fn load(&self, source: &VideoSource, sampler: &FrameSampler, rng: &mut impl Rng) -> Result<Vec<ImageTensorData>, VideoDataError> {
        if sampler.frames == 0 {
            return Err(VideoDataError::Invalid { message: "the frame sampler takes 0 frames per clip".into() });
        }
        let frames = source.frames(sampler, rng)?;
        self.apply(&frames, rng).map_err(|e| match e {
            VideoDataError::Invalid { message } => VideoDataError::video(source.path(), message),
            other => other,
        })
    }
}

/// ITU-R 601 luma in all three channels (torchvision's `Grayscale(3)`).
fn to_gray(frame: &RgbImage) -> RgbImage {
    let mut out = frame.clone();
    for pixel in out.pixels_mut() {
        let [r, g, b] = pixel.0.map(f32::from);
        let luma = (0.299 * r + 0.587 * g + 0.114 * b).round().clamp(0.0, 255.0) as u8;
        pixel.0 = [luma; 3];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame with one white pixel at `x` on black.
    fn dot(x: u32) -> RgbImage {
        let mut frame = RgbImage::new(16, 16);
        frame.put_pixel(x, 8, image::Rgb([255, 40, 10]));
        frame
    }

    fn brightest_column(data: &ImageTensorData) -> usize {
        let w = data.shape[2];
        let (mut best, mut column) = (f32::MIN, 0);
        for (i, &v) in data.values.iter().take(data.shape[1] * w).enumerate() {
            if v > best {
                best = v;
                column = i % w;
            }
        }
        column
    }

    #[test]
    fn every_frame_gets_the_same_crop_and_color() {
        let augment = ClipAugmentConfig { image_size: 16, crop_scale: (0.7, 1.0), grayscale: 0.5 }.init().unwrap();
        let mut rng = StdRng::seed_from_u64(3);
        let (mut moved_right, mut grays, mut colors) = (0, 0, 0);
        for _ in 0..20 {
            // A dot moving right one pixel a frame, inside every crop (at least 12 of 16 pixels wide).
            let clip: Vec<RgbImage> = (0..3).map(|t| dot(6 + t)).collect();
            let out = augment.apply(&clip, &mut rng).unwrap();
            let columns: Vec<usize> = out.iter().map(brightest_column).collect();
            // Same crop for every frame: the dot still moves right (or stays within a pixel
            // where the crop enlarges less than one pixel a step), never left.
            assert!(columns.windows(2).all(|w| w[0] <= w[1]), "{columns:?}");
            moved_right += usize::from(columns[0] < columns[2]);
            // Same color decision for every frame.
            let gray: Vec<bool> = out
                .iter()
                .map(|f| {
                    let plane = f.shape[1] * f.shape[2];
                    (0..plane).all(|i| (f.values[i] * 0.26862954 + 0.48145466 - (f.values[plane + i] * 0.26130258 + 0.4578275)).abs() < 1e-3)
                })
                .collect();
            assert!(gray.iter().all(|&g| g == gray[0]), "{gray:?}");
            if gray[0] { grays += 1 } else { colors += 1 }
        }
        assert!(moved_right >= 15, "{moved_right}");
        assert!(grays > 0 && colors > 0, "{grays} gray clips, {colors} in color");
    }

    #[test]
    fn out_of_range_settings_are_errors() {
        let bad = ClipAugmentConfig { image_size: 16, crop_scale: (1.0, 1.0), grayscale: 1.5 }.init().unwrap_err();
        assert!(bad.to_string().contains("grayscale"), "{bad}");
        let bad = ClipAugmentConfig { image_size: 16, crop_scale: (0.0, 1.0), grayscale: 0.0 }.init().unwrap_err();
        assert!(bad.to_string().contains("scale"), "{bad}");
    }
}

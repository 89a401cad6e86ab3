//! Label maps as images: PASCAL VOC's color map, color-coded maps, overlays on the input
//! image, and PNG files written atomically.

use std::path::{Path, PathBuf};

use clip_core::ClipError;
use image::RgbImage;
use image::imageops::FilterType;

/// A PNG could not be encoded or written; names the file.
#[derive(Debug, thiserror::Error)]
#[error("cannot write {path}: {message}")]
pub struct RenderError {
    /// The output file.
    pub path: PathBuf,
    /// What went wrong.
    pub message: String,
}

/// PASCAL VOC's color map for `n` labels: the bits of the label index are spread over the
/// color channels, three at a time, from the most significant bit of each channel down
/// (0 black, 1 dark red `[128, 0, 0]`, 2 dark green, ..., 255 `[224, 224, 192]`).
pub fn palette(n: usize) -> Vec<[u8; 3]> {
    (0..n)
        .map(|label| {
            let mut color = [0u8; 3];
            let mut bits = label;
            for shift in (0..8).rev() {
                for (channel, value) in color.iter_mut().enumerate() {
                    *value |= (((bits >> channel) & 1) as u8) << shift;
                }
                bits >>= 3;
            }
            color
        })
        .collect()
}

/// A `width` x `height` image with each pixel colored by its label (row-major `labels`);
/// labels beyond the palette are black.
///
/// # Panics
/// When `labels` does not hold `width * height` values (a caller bug).
pub fn colorize(labels: &[usize], width: u32, height: u32, palette: &[[u8; 3]]) -> RgbImage {
    assert_eq!(
        labels.len(),
        (width * height) as usize,
        "labels must hold width * height values"
    );
    RgbImage::from_fn(width, height, |x, y| {
        image::Rgb(
            palette
                .get(labels[(y * width + x) as usize])
                .copied()
                .unwrap_or([0, 0, 0]),
        )
    })
}

/// `image` blended with a colored label map: `(1 - alpha) image + alpha colored`, rounded. A
/// map of another size is first resized to the image (nearest neighbour, so colors stay exact).
pub fn overlay(image: &RgbImage, colored: &RgbImage, alpha: f32) -> RgbImage {
    let alpha = alpha.clamp(0.0, 1.0);
    let resized;
    let colored = if colored.dimensions() == image.dimensions() {
        colored
    } else {
        resized = image::imageops::resize(colored, image.width(), image.height(), FilterType::Nearest);
        &resized
    };
    let mut out = image.clone();
    for (pixel, color) in out.pixels_mut().zip(colored.pixels()) {
        for c in 0..3 {
            let blended = (1.0 - alpha) * f32::from(pixel.0[c]) + alpha * f32::from(color.0[c]);
            pixel.0[c] = blended.round().clamp(0.0, 255.0) as u8;
        }
    }
    out
}

/// Writes `image` as a PNG, atomically (a temporary file renamed into place), creating the
/// parent folder.
pub fn save_png(image: &RgbImage, path: &Path) -> Result<(), RenderError> {
    let error = |message: String| RenderError {
        path: path.to_path_buf(),
        message,
    };
    let mut bytes = Vec::new();
    image
        .write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png)
        .map_err(|e| error(e.to_string()))?;
    clip_core::weights::write_atomically(path, &bytes).map_err(|e| match e {
        ClipError::Io { path: file, error: io } => error(format!("{}: {io}", file.display())),
        other => error(other.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn voc_palette() {
        let p = palette(256);
        // 1 = 0b001: red's top bit -> [128, 0, 0]; 2 -> green; 3 -> red and green.
        assert_eq!(&p[..4], &[[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0]]);
        // 8 = 0b001_000: the second triple sets each channel's second bit: red 64.
        assert_eq!(p[8], [64, 0, 0]);
        // 15 = 0b001_111: red 128 + 64, green 128, blue 128 (VOC's "person" color).
        assert_eq!(p[15], [192, 128, 128]);
        // 255 = 0b11_111_111: red and green 128+64+32, blue 128+64 -> VOC's void color.
        assert_eq!(p[255], [224, 224, 192]);
    }

    #[test]
    fn colorize_and_overlay() {
        let p = palette(3);
        let map = colorize(&[0, 1, 2, 9], 2, 2, &p);
        assert_eq!(map.get_pixel(1, 0).0, [128, 0, 0]);
        assert_eq!(map.get_pixel(0, 1).0, [0, 128, 0]);
        // Label 9 is beyond the palette.
        assert_eq!(map.get_pixel(1, 1).0, [0, 0, 0]);

        // A 4x4 white image under the 2x2 map at alpha 0.5: each map pixel covers 2x2 pixels.
        let white = RgbImage::from_pixel(4, 4, image::Rgb([255, 255, 255]));
        let blended = overlay(&white, &map, 0.5);
        // (255 + 128) / 2 = 191.5 -> 192; (255 + 0) / 2 = 127.5 -> 128.
        assert_eq!(blended.get_pixel(3, 0).0, [192, 128, 128]);
        assert_eq!(blended.get_pixel(0, 3).0, [128, 192, 128]);
        assert_eq!(blended.get_pixel(0, 0).0, [128, 128, 128]);
    }

    #[test]
    fn save_png_round_trips_and_names_the_path_on_failure() {
        let dir = tempfile::Builder::new().prefix("clip-seg-render-").tempdir().unwrap();
        let path = dir.path().join("nested/map.png");
        let map = colorize(&[0, 1, 2, 3], 2, 2, &palette(4));
        save_png(&map, &path).unwrap();
        assert_eq!(image::open(&path).unwrap().to_rgb8(), map);
        // A file where a folder should be.
        let err = save_png(&map, &path.join("below-a-file.png")).unwrap_err();
        assert!(err.to_string().contains("below-a-file.png"), "{err}");
    }
}

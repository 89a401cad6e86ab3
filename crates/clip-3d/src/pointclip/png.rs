//! Depth maps as 8-bit grayscale PNG images, to look at the views CLIP sees.

use std::path::{Path, PathBuf};

use burn::tensor::Tensor;

use crate::pointclip::io::PointCloudError;

/// A depth map `height x width` (row-major) as 8-bit gray levels, normalized by its largest
/// value: `round(255 * d / max)`, so empty pixels (0) are black and the farthest point white.
/// Negative and non-finite values are black; an all-empty map is all black.
pub fn depth_to_gray(depth: &[f32]) -> Vec<u8> {
    let max = depth.iter().copied().filter(|v| v.is_finite()).fold(0.0f32, f32::max);
    depth
        .iter()
        .map(|&v| if max > 0.0 && v.is_finite() && v > 0.0 { (255.0 * v / max).round().clamp(0.0, 255.0) as u8 } else { 0 })
        .collect()
}

/// Writes a `height x width` depth map (row-major) as an 8-bit grayscale PNG (see
/// [`depth_to_gray`]); the error names the file.
pub fn save_depth_png(depth: &[f32], height: usize, width: usize, path: &Path) -> Result<(), PointCloudError> {
    let invalid = |message: String| PointCloudError::Invalid { path: path.to_path_buf(), message };
    if depth.len() != height * width {
        return Err(invalid(format!("{} depth values for a {height}x{width} image", depth.len())));
    }
    let (h, w) = (u32::try_from(height).map_err(|e| invalid(e.to_string()))?, u32::try_from(width).map_err(|e| invalid(e.to_string()))?);
    let image = image::GrayImage::from_raw(w, h, depth_to_gray(depth)).ok_or_else(|| invalid("image buffer size".into()))?;
    image.save_with_format(path, image::ImageFormat::Png).map_err(|e| invalid(format!("writing PNG: {e}")))
}

/// Writes every map of `depth` `[M, H, W]` (rows `b * V + v` of the projection) as
/// `<dir>/<stem>_<b>_<v>.png` with `views` views per cloud; returns the files in order.
pub fn save_views(depth: Tensor<3>, views: usize, dir: &Path, stem: &str) -> Result<Vec<PathBuf>, PointCloudError> {
    let [maps, height, width] = depth.dims();
    let values: Vec<f32> = depth.into_data().iter::<f32>().collect();
    std::fs::create_dir_all(dir).map_err(|error| PointCloudError::Io { path: dir.to_path_buf(), error })?;
    let views = views.max(1);
    (0..maps)
        .map(|m| {
            let path = dir.join(format!("{stem}_{}_{}.png", m / views, m % views));
            save_depth_png(&values[m * height * width..(m + 1) * height * width], height, width, &path)?;
            Ok(path)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Device, TensorData};

    use super::*;

    #[test]
    fn gray_levels_are_normalized_by_the_maximum() {
        assert_eq!(depth_to_gray(&[0.0, 1.0, 2.0, f32::NAN, -1.0]), [0, 128, 255, 0, 0]);
        assert_eq!(depth_to_gray(&[0.0, 0.0]), [0, 0]);
    }

    #[test]
    fn pngs_round_trip() {
        let tmp = tempfile::Builder::new().prefix("pointclip-png-").tempdir().unwrap();
        let dir = tmp.path();
        let device = Device::flex();
        let depth = Tensor::<3>::from_data(TensorData::new(vec![0.0f32, 0.5, 1.0, 2.0, 0.0, 0.0, 0.0, 4.0], [2, 2, 2]), &device);
        let files = save_views(depth, 2, dir, "cloud").unwrap();
        assert_eq!(files, [dir.join("cloud_0_0.png"), dir.join("cloud_0_1.png")]);
        let first = image::open(&files[0]).unwrap();
        assert_eq!(first.color(), image::ColorType::L8);
        assert_eq!(first.to_luma8().into_raw(), [0, 64, 128, 255]);
        assert_eq!(image::open(&files[1]).unwrap().to_luma8().into_raw(), [0, 0, 0, 255]);
        let err = save_depth_png(&[0.0; 3], 2, 2, &dir.join("bad.png")).unwrap_err().to_string();
        assert!(err.contains("bad.png") && err.contains("2x2"), "{err}");
    }
}

//! CLIPasso's augmentations on tensors: torchvision's `RandomPerspective(distortion_scale,
//! p = 1, fill = 0)` followed by `RandomResizedCrop(size, scale = (s, s), ratio = (1, 1))`,
//! drawn once and applied identically to the sketch and the image (the official loss
//! augments the pair stacked in one batch). Both are one sampling grid, read with bilinear
//! `grid_sample_2d` (zero outside), so the sketch's gradients flow through them.

use burn::tensor::ops::{GridSampleOptions, GridSamplePaddingMode, InterpolateMode};
use burn::tensor::{Tensor, TensorData};
use rand::Rng;

/// One drawn augmentation: for every output pixel of a `size x size` image, where to read the
/// input, as `grid_sample_2d`'s `[-1, 1]` coordinates.
#[derive(Debug, Clone)]
pub struct Augmentation {
    size: usize,
    /// `[size, size, 2]` (x, y), row-major.
    grid: Vec<f32>,
}

impl Augmentation {
    /// The identity (the image as it is).
    pub fn identity(size: usize) -> Self {
        Self::from_map(size, |x, y| [x, y])
    }

    /// A random perspective of `distortion` (each corner moves inward by up to `distortion / 2`
    /// of the side, as torchvision's) then a random square crop of `crop_scale` of the area,
    /// resized back to `size`.
    pub fn random(size: usize, distortion: f32, crop_scale: f32, rng: &mut impl Rng) -> Self {
        let s = size as f32;
        let half = distortion * s / 2.0;
        let mut inward = || if half > 0.0 { rng.random_range(0.0..=half) } else { 0.0 };
        // Where each corner of the input lands in the perspective's output.
        let (tl, tr, br, bl) = (
            [inward(), inward()],
            [s - inward(), inward()],
            [s - inward(), s - inward()],
            [inward(), s - inward()],
        );
        let corners = [[0.0, 0.0], [s, 0.0], [s, s], [0.0, s]];
        // Output position -> input position: the homography taking the moved corners back.
        let homography = homography([tl, tr, br, bl], corners).unwrap_or([1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0]);
        let side = crop_scale.clamp(0.0, 1.0).sqrt() * s;
        let (left, top) = (rng.random_range(0.0..=(s - side)), rng.random_range(0.0..=(s - side)));
        Self::from_map(size, |x, y| {
            let (cx, cy) = (left + x * side / s, top + y * side / s);
            apply(&homography, cx, cy)
        })
    }

    /// The augmentation reading input position `map(x, y)` (pixels, continuous) at output
    /// position `(x, y)`.
    fn from_map(size: usize, map: impl Fn(f32, f32) -> [f32; 2]) -> Self {
        let s = size as f32;
        let mut grid = Vec::with_capacity(size * size * 2);
        for row in 0..size {
            for col in 0..size {
                let [x, y] = map(col as f32 + 0.5, row as f32 + 0.5);
                grid.push(2.0 * x / s - 1.0);
                grid.push(2.0 * y / s - 1.0);
            }
        }
        Self { size, grid }
    }

    /// The augmented `images` `[batch, channels, size, size]`.
    pub fn apply(&self, images: Tensor<4>) -> Tensor<4> {
        let [batch, _, _, _] = images.dims();
        let grid = Tensor::<4>::from_data(TensorData::new(self.grid.clone(), [1, self.size, self.size, 2]), &images.device());
        let options = GridSampleOptions::new(InterpolateMode::Bilinear).with_padding_mode(GridSamplePaddingMode::Zeros);
        images.grid_sample_2d(grid.repeat_dim(0, batch), options)
    }
}

/// The homography `[a, b, c, d, e, f, g, h]` (`x' = (a x + b y + c) / (g x + h y + 1)`,
/// `y' = (d x + e y + f) / (g x + h y + 1)`) taking `from[i]` to `to[i]`; `None` when the
/// points are degenerate.
fn homography(from: [[f32; 2]; 4], to: [[f32; 2]; 4]) -> Option<[f32; 8]> {
    let mut m = [[0f64; 9]; 8];
    for i in 0..4 {
        let ([x, y], [u, v]) = (from[i].map(f64::from), to[i].map(f64::from));
        m[2 * i] = [x, y, 1.0, 0.0, 0.0, 0.0, -u * x, -u * y, u];
        m[2 * i + 1] = [0.0, 0.0, 0.0, x, y, 1.0, -v * x, -v * y, v];
    }
    // Gaussian elimination with partial pivoting.
    for col in 0..8 {
        let pivot = (col..8).max_by(|&a, &b| m[a][col].abs().total_cmp(&m[b][col].abs()))?;
        if m[pivot][col].abs() < 1e-12 {
            return None;
        }
        m.swap(col, pivot);
        for row in 0..8 {
            if row != col {
                let factor = m[row][col] / m[col][col];
                let pivot_row = m[col];
                for (value, pivot) in m[row].iter_mut().zip(pivot_row).skip(col) {
                    *value -= factor * pivot;
                }
            }
        }
    }
    Some(std::array::from_fn(|i| (m[i][8] / m[i][i]) as f32))
}

fn apply(h: &[f32; 8], x: f32, y: f32) -> [f32; 2] {
    let w = h[6] * x + h[7] * y + 1.0;
    [(h[0] * x + h[1] * y + h[2]) / w, (h[3] * x + h[4] * y + h[5]) / w]
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, Distribution};
    use rand::SeedableRng;

    #[test]
    fn the_homography_maps_the_corners() {
        let from = [[3.0, 2.0], [29.0, 5.0], [30.0, 31.0], [1.0, 27.0]];
        let to = [[0.0, 0.0], [32.0, 0.0], [32.0, 32.0], [0.0, 32.0]];
        let h = homography(from, to).unwrap();
        for (f, t) in from.iter().zip(&to) {
            let [x, y] = apply(&h, f[0], f[1]);
            assert!((x - t[0]).abs() < 1e-3 && (y - t[1]).abs() < 1e-3, "{f:?} -> {x}, {y}, not {t:?}");
        }
    }

    #[test]
    fn the_identity_keeps_the_image_and_a_random_one_treats_the_pair_alike() {
        let device = Device::flex();
        let image = Tensor::<4>::random([1, 3, 16, 16], Distribution::Uniform(0.0, 1.0), &device);
        let same = Augmentation::identity(16).apply(image.clone());
        assert!((same - image.clone()).abs().max().into_scalar::<f32>() < 1e-5);
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let augmentation = Augmentation::random(16, 0.5, 0.8, &mut rng);
        let pair = augmentation.apply(Tensor::cat(vec![image.clone(), image.clone()], 0));
        let [a, b] = [0, 1].map(|i| pair.clone().narrow(0, i, 1));
        assert!((a.clone() - b).abs().max().into_scalar::<f32>() < 1e-6);
        assert!((a - image).abs().max().into_scalar::<f32>() > 0.05, "the augmentation changes the image");
    }
}

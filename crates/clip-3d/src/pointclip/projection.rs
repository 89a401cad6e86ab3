//! PointCLIP's multi-view projection: a point cloud rendered as one sparse depth map per view,
//! as the official `PCViews.get_img` (`trainers/mv_utils_zs.py`, `mv_utils_fs.py`) does it.
//!
//! For view `v` the cloud is rotated and translated, `p' = p @ R_v - t_v` (`R_v` the transpose
//! of `euler2mat(angles_v)`, `t_v = (0, 0, TRANS)`), then projected perspectively onto an
//! `H x W` canvas:
//!
//! ```text
//! x_img = ((x' / (z' + eps) * W/H + 1) * H) / 2      row = ceil(x_img + i),  i in splat offsets
//! y_img = ((y' / (z' + eps)       + 1) * W) / 2      col = ceil(y_img + j)
//! ```
//!
//! A point counts where `0 <= row <= H-1`, `0 <= col <= W-1` and `z' >= 0`, with weight
//! `w = 1 / (z' + eps)`; each pixel is `sum(z' w) / sum(w)` over its points (the harmonic mean of
//! their depths), empty pixels are 0. Everything runs batched on burn tensors, one depth map per
//! `(cloud, view)` pair at row `b * V + v`.

use std::f64::consts::PI;

use burn::config::Config;
use burn::tensor::{Device, IndexingUpdateOp, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

/// The official epsilon added to depths before dividing by them.
pub const EPSILON: f64 = 1e-12;

/// One camera: Euler angles `(x, y, z)` in radians (`euler2mat`: `R = X(x) Y(y) Z(z)`) and the
/// translation subtracted after the rotation.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct View {
    /// Rotation angles about x, y and z, radians.
    pub euler: [f64; 3],
    /// Subtracted from the rotated points (`(0, 0, TRANS)` in the official views).
    pub translation: [f64; 3],
}

impl View {
    /// A view at `euler` with the official translation `(0, 0, trans)`.
    pub fn new(euler: [f64; 3], trans: f64) -> Self {
        Self { euler, translation: [0.0, 0.0, trans] }
    }
}

/// The official zero-shot views (`mv_utils_zs.py`): front, right, back, left, then two views
/// rotated by -pi/2 and pi/2 about y (top and bottom).
pub fn zero_shot_views(trans: f64) -> Vec<View> {
    let h = PI / 2.0;
    [[0.0, 0.0, h], [h, 0.0, h], [2.0 * h, 0.0, h], [3.0 * h, 0.0, h], [0.0, -h, h], [0.0, h, h]]
        .into_iter()
        .map(|euler| View::new(euler, trans))
        .collect()
}

/// The official few-shot views (`mv_utils_fs.py`): the four side views, four oblique ones at
/// `5pi/4` and `7pi/4` tilted by `-/+pi/4`, then top and bottom.
pub fn few_shot_views(trans: f64) -> Vec<View> {
    let h = PI / 2.0;
    let q = PI / 4.0;
    let (a, b) = (5.0 * PI / 4.0, 7.0 * PI / 4.0);
    [
        [0.0, 0.0, h],
        [h, 0.0, h],
        [2.0 * h, 0.0, h],
        [3.0 * h, 0.0, h],
        [a, -q, h],
        [a, q, h],
        [b, -q, h],
        [b, q, h],
        [0.0, -h, h],
        [0.0, h, h],
    ]
    .into_iter()
    .map(|euler| View::new(euler, trans))
    .collect()
}

/// Configuration of the multi-view projection ([`ProjectionConfig::zero_shot`],
/// [`ProjectionConfig::few_shot`] are the official ones).
#[derive(Config, Debug, PartialEq)]
pub struct ProjectionConfig {
    /// The cameras, in output order.
    pub views: Vec<View>,
    /// Side of the square depth maps (the official `RESOLUTION`).
    pub resolution: usize,
    /// Side the depth maps are resized to (bilinear, `align_corners=True`) before CLIP; `None`
    /// feeds them at `resolution`.
    #[config(default = "None")]
    pub image_size: Option<usize>,
    /// Pixels each point is splatted onto (`size_x`, `size_y` of `points2depth`; 1 or even; the
    /// official views use 1).
    #[config(default = "[1, 1]")]
    pub splat: [usize; 2],
    /// Added to depths before dividing by them.
    #[config(default = "EPSILON")]
    pub epsilon: f64,
}

impl ProjectionConfig {
    /// The official zero-shot projection: 6 views, 128x128 maps at `TRANS = -1.6`, upsampled to
    /// 224x224.
    pub fn zero_shot() -> Self {
        Self::new(zero_shot_views(-1.6), 128).with_image_size(Some(224))
    }

    /// The official few-shot projection: 10 views, 224x224 maps at `TRANS = -1.4`, fed as they
    /// are.
    pub fn few_shot() -> Self {
        Self::new(few_shot_views(-1.4), 224)
    }

    /// Number of views.
    pub fn num_views(&self) -> usize {
        self.views.len()
    }

    /// Side of the images fed to CLIP.
    pub fn output_size(&self) -> usize {
        self.image_size.unwrap_or(self.resolution)
    }

    /// Checks the sizes; an error names the field.
    pub fn validate(&self) -> Result<(), String> {
        if self.views.is_empty() {
            return Err("projection: no views".into());
        }
        if self.resolution == 0 || self.image_size == Some(0) {
            return Err("projection: resolution and image_size must be positive".into());
        }
        for size in self.splat {
            if size != 1 && (size == 0 || size % 2 != 0) {
                return Err(format!("projection: splat size {size} must be 1 or even (points2depth asserts it)"));
            }
        }
        Ok(())
    }

    /// `PCViews.rot_mat`: `euler2mat(angles).transpose(1, 2)` per view, computed in f32 as the
    /// official code does (the angles rounded to f32 first, so `cos(pi/2)` is `-4.37e-8`).
    pub fn rotation_matrices(&self) -> Vec<[[f32; 3]; 3]> {
        self.views.iter().map(|view| transpose(euler_to_matrix(view.euler))).collect()
    }

    /// `PCViews.rot_mat` as a `[V, 3, 3]` tensor.
    pub fn rotation_tensor(&self, device: &Device) -> Tensor<3> {
        let values: Vec<f32> = self.rotation_matrices().iter().flatten().flatten().copied().collect();
        Tensor::from_data(TensorData::new(values, [self.num_views(), 3, 3]), device)
    }

    /// `PCViews.translation` as a `[V, 1, 3]` tensor.
    pub fn translation_tensor(&self, device: &Device) -> Tensor<3> {
        let values: Vec<f32> = self.views.iter().flat_map(|v| v.translation.map(|t| t as f32)).collect();
        Tensor::from_data(TensorData::new(values, [self.num_views(), 1, 3]), device)
    }

    /// `point_transform`: clouds `[B, N, 3]` in every view's camera frame, `[B * V, N, 3]` with
    /// row `b * V + v` (`points @ R_v - t_v`).
    pub fn transform(&self, points: Tensor<3>) -> Tensor<3> {
        let [batch, count, _] = points.dims();
        let views = self.num_views();
        let device = points.device();
        let points = points.unsqueeze_dim::<4>(1).expand([batch, views, count, 3]).reshape([batch * views, count, 3]);
        let rotation = self.rotation_tensor(&device).unsqueeze_dim::<4>(0).expand([batch, views, 3, 3]);
        let translation = self.translation_tensor(&device).unsqueeze_dim::<4>(0).expand([batch, views, 1, 3]);
        points.matmul(rotation.reshape([batch * views, 3, 3])) - translation.reshape([batch * views, 1, 3])
    }

    /// `PCViews.get_img`: depth maps `[B * V, R, R]` of clouds `[B, N, 3]`, row `b * V + v`;
    /// map rows follow the camera's x, columns its y.
    pub fn depth_maps(&self, points: Tensor<3>) -> Tensor<3> {
        let transformed = self.transform(points);
        points_to_depth(transformed, self.resolution, self.resolution, self.splat, self.epsilon)
    }

    /// The images fed to CLIP from depth maps `[M, R, R]`: each map repeated to 3 channels and,
    /// for the zero-shot projection, resized bilinearly with `align_corners=True`
    /// (`PointCLIP_ZS.mv_proj`, `PointCLIP_Model.mv_proj`). No mean/std normalization.
    pub fn images_from_depth(&self, depth: Tensor<3>) -> Tensor<4> {
        // Every channel is the same map: resizing one and repeating it equals the official
        // repeat-then-resize.
        let depth = match self.image_size {
            Some(size) => resize_bilinear_align_corners(depth, [size, size]),
            None => depth,
        };
        let [maps, height, width] = depth.dims();
        depth.reshape([maps, 1, height, width]).repeat_dim(1, 3)
    }

    /// Depth maps then images: `[B * V, 3, S, S]` from clouds `[B, N, 3]`.
    pub fn images(&self, points: Tensor<3>) -> Tensor<4> {
        self.images_from_depth(self.depth_maps(points))
    }
}

/// PyTorch's bilinear resize with `align_corners=True` (`F.upsample(..., mode='bilinear',
/// align_corners=True)`) of maps `[M, H, W]` to `[M, size[0], size[1]]`, with PyTorch's f32
/// arithmetic: the source coordinate `i * (in - 1) / (out - 1)` and the weights `l1 = src -
/// floor(src)`, `l0 = 1 - l1` are computed in f32 (exact f64 weights differ from them by up to
/// 1e-5 of the values), the maps interpolated along the width, then the height. Runs as two
/// matrix products with the two-tap weight matrices.
pub fn resize_bilinear_align_corners(maps: Tensor<3>, size: [usize; 2]) -> Tensor<3> {
    let [count, height, width] = maps.dims();
    let device = maps.device();
    let rows = Tensor::<2>::from_data(TensorData::new(linear_weights(height, size[0]), [size[0], height]), &device);
    let cols = Tensor::<2>::from_data(TensorData::new(linear_weights(width, size[1]), [size[1], width]), &device);
    let along_width = maps.matmul(cols.transpose().unsqueeze_dim::<3>(0).expand([count, width, size[1]]));
    rows.unsqueeze_dim::<3>(0).expand([count, size[0], height]).matmul(along_width)
}

/// The `[output, input]` matrix of PyTorch's `align_corners=True` linear interpolation weights
/// (`compute_indices_weights_linear` in f32).
fn linear_weights(input: usize, output: usize) -> Vec<f32> {
    let scale = if output > 1 { (input - 1) as f32 / (output - 1) as f32 } else { 0.0 };
    let mut weights = vec![0.0f32; output * input];
    for i in 0..output {
        let source = scale * i as f32;
        let first = (source as usize).min(input - 1);
        let lambda = (source - first as f32).clamp(0.0, 1.0);
        let second = if first < input - 1 { first + 1 } else { first };
        weights[i * input + first] += 1.0 - lambda;
        weights[i * input + second] += lambda;
    }
    weights
}

/// `euler2mat` in f32: `X(x) @ Y(y) @ Z(z)` with each factor's sines and cosines of the
/// f32-rounded angles.
fn euler_to_matrix(euler: [f64; 3]) -> [[f32; 3]; 3] {
    let trig = |angle: f64| {
        let angle = angle as f32 as f64;
        (angle.cos() as f32, angle.sin() as f32)
    };
    let (cx, sx) = trig(euler[0]);
    let (cy, sy) = trig(euler[1]);
    let (cz, sz) = trig(euler[2]);
    let z = [[cz, -sz, 0.0], [sz, cz, 0.0], [0.0, 0.0, 1.0]];
    let y = [[cy, 0.0, sy], [0.0, 1.0, 0.0], [-sy, 0.0, cy]];
    let x = [[1.0, 0.0, 0.0], [0.0, cx, -sx], [0.0, sx, cx]];
    matmul3(matmul3(x, y), z)
}

fn matmul3(a: [[f32; 3]; 3], b: [[f32; 3]; 3]) -> [[f32; 3]; 3] {
    let mut out = [[0.0f32; 3]; 3];
    for (i, row) in out.iter_mut().enumerate() {
        for (j, cell) in row.iter_mut().enumerate() {
            *cell = a[i][0] * b[0][j] + a[i][1] * b[1][j] + a[i][2] * b[2][j];
        }
    }
    out
}

fn transpose(m: [[f32; 3]; 3]) -> [[f32; 3]; 3] {
    [[m[0][0], m[1][0], m[2][0]], [m[0][1], m[1][1], m[2][1]], [m[0][2], m[1][2], m[2][2]]]
}

/// The offsets `torch.linspace(-size / 2, size / 2 - 1, size)` of `distribute`: `-0.5` for a
/// single pixel, `-size/2 .. size/2 - 1` otherwise.
fn splat_offsets(size: usize) -> Vec<f64> {
    if size == 1 {
        vec![-0.5]
    } else {
        (0..size).map(|k| k as f64 - size as f64 / 2.0).collect()
    }
}

/// `points2depth` with `distribute`: depth maps `[M, H, W]` of camera-frame points `[M, N, 3]`.
/// A point falls on pixel `(ceil(x_img + i), ceil(y_img + j))` for every splat offset `(i, j)`
/// and counts there with weight `1 / (z + eps)` when the pixel is on the canvas and `z >= 0`;
/// each pixel is the weighted mean `sum(z w) / sum(w)` (the harmonic mean of its depths), 0
/// where no point counts. `splat` is `[size_x, size_y]`, each 1 or even.
pub fn points_to_depth(points: Tensor<3>, height: usize, width: usize, splat: [usize; 2], epsilon: f64) -> Tensor<3> {
    let [maps, count, _] = points.dims();
    let device = points.device();
    let coordinate = |axis: usize| points.clone().narrow(2, axis, 1).reshape([maps, count]);
    let depth = coordinate(2);
    let shifted = depth.clone() + epsilon;
    let aspect = width as f64 / height as f64;
    let x_img = (((coordinate(0) / shifted.clone()) * aspect + 1.0) * height as f64) / 2.0;
    let y_img = (((coordinate(1) / shifted.clone()) + 1.0) * width as f64) / 2.0;
    let weight = shifted.recip();
    let in_front = depth.clone().greater_equal_elem(0.0);

    let mut indices: Vec<Tensor<2, Int>> = Vec::new();
    let mut weights: Vec<Tensor<2>> = Vec::new();
    for di in splat_offsets(splat[0]) {
        for dj in splat_offsets(splat[1]) {
            let row = (x_img.clone() + di).ceil();
            let col = (y_img.clone() + dj).ceil();
            let counted = row
                .clone()
                .greater_equal_elem(0.0)
                .bool_and(row.clone().lower_equal_elem((height - 1) as f64))
                .bool_and(col.clone().greater_equal_elem(0.0))
                .bool_and(col.clone().lower_equal_elem((width - 1) as f64))
                .bool_and(in_front.clone());
            let dropped = counted.bool_not();
            // A point not counted adds exactly zero; its pixel index (the official wraps it with
            // %) is then irrelevant and set to 0, which also keeps infinite coordinates out of
            // the integer cast.
            indices.push((row * width as f64 + col).mask_fill(dropped.clone(), 0.0).int());
            weights.push(weight.clone().mask_fill(dropped, 0.0));
        }
    }
    let splats = indices.len();
    // Point-major, then the splat offsets: the order of the official flattened [N, sx, sy].
    let indices: Tensor<2, Int> = Tensor::stack::<3>(indices, 2).reshape([maps, count * splats]);
    let weights: Tensor<2> = Tensor::stack::<3>(weights, 2).reshape([maps, count * splats]);
    let depths = depth.unsqueeze_dim::<3>(2).repeat_dim(2, splats).reshape([maps, count * splats]);
    let weighted = depths * weights.clone();

    let zeros = || Tensor::<2>::zeros([maps, height * width], &device);
    let weight_sum = zeros().scatter(1, indices.clone(), weights, IndexingUpdateOp::Add);
    let value_sum = zeros().scatter(1, indices, weighted, IndexingUpdateOp::Add);
    let empty = weight_sum.clone().equal_elem(0.0).float();
    (value_sum / (weight_sum + empty)).reshape([maps, height, width])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data().iter::<f32>().collect()
    }

    #[test]
    fn official_presets() {
        let zs = ProjectionConfig::zero_shot();
        assert_eq!((zs.num_views(), zs.resolution, zs.output_size()), (6, 128, 224));
        let fs = ProjectionConfig::few_shot();
        assert_eq!((fs.num_views(), fs.resolution, fs.output_size()), (10, 224, 224));
        assert!(zs.validate().is_ok() && fs.validate().is_ok());
        assert!(ProjectionConfig::new(vec![], 4).validate().is_err());
        assert!(ProjectionConfig::few_shot().with_splat([3, 1]).validate().is_err());
    }

    #[test]
    fn rotation_keeps_f32_cosine_of_half_pi() {
        // First zero-shot view: X(0) Y(0) Z(pi/2), transposed.
        let r = ProjectionConfig::zero_shot().rotation_matrices()[0];
        let c = (std::f64::consts::FRAC_PI_2 as f32 as f64).cos() as f32;
        assert!(c < 0.0 && c > -1e-7);
        assert_eq!(r[0], [c, 1.0, 0.0]);
        assert_eq!(r[1], [-1.0, c, 0.0]);
        assert_eq!(r[2], [0.0, 0.0, 1.0]);
    }

    /// Two points on one pixel average harmonically; one behind the camera and one off the
    /// canvas are dropped.
    #[test]
    fn pixels_hold_the_harmonic_mean_of_their_depths() {
        let device = Device::flex();
        // 4x4 canvas; x = y = 0 projects to x_img = y_img = 2 -> pixel (ceil(1.5), ceil(1.5)) = (2, 2).
        let points = Tensor::<3>::from_data(
            TensorData::new(
                vec![0.0f32, 0.0, 1.0, 0.0, 0.0, 3.0, 0.0, 0.0, -1.0, 100.0, 0.0, 1.0],
                [1, 4, 3],
            ),
            &device,
        );
        let depth = values(points_to_depth(points, 4, 4, [1, 1], EPSILON));
        let expected = 2.0 / (1.0 / 1.0 + 1.0 / 3.0);
        for (i, v) in depth.iter().enumerate() {
            if i == 2 * 4 + 2 {
                assert!((v - expected).abs() < 1e-6, "{v}");
            } else {
                assert_eq!(*v, 0.0, "pixel {i}");
            }
        }
    }

    #[test]
    fn a_two_pixel_splat_covers_neighbours() {
        let device = Device::flex();
        let points = Tensor::<3>::from_data(TensorData::new(vec![0.0f32, 0.0, 2.0], [1, 1, 3]), &device);
        let depth = values(points_to_depth(points, 4, 4, [2, 2], EPSILON));
        // x_img = 2: offsets -1, 0 -> rows 1, 2; same for columns.
        let lit: Vec<usize> = depth.iter().enumerate().filter(|(_, v)| **v != 0.0).map(|(i, _)| i).collect();
        assert_eq!(lit, [5, 6, 9, 10]);
        assert!(depth.iter().all(|v| *v == 0.0 || (*v - 2.0).abs() < 1e-6));
    }

    #[test]
    fn bilinear_resize_keeps_the_corners() {
        let device = Device::flex();
        let maps = Tensor::<3>::from_data(TensorData::new(vec![0.0f32, 1.0, 2.0, 3.0], [1, 2, 2]), &device);
        let resized = values(resize_bilinear_align_corners(maps.clone(), [3, 3]));
        assert_eq!(resized, [0.0, 0.5, 1.0, 1.0, 1.5, 2.0, 2.0, 2.5, 3.0]);
        assert_eq!(values(resize_bilinear_align_corners(maps, [2, 2])), [0.0, 1.0, 2.0, 3.0]);
        // Weights in f32 as PyTorch computes them: each row sums to 1.
        let weights = linear_weights(128, 224);
        for row in weights.chunks(128) {
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-6);
            assert!(row.iter().filter(|w| **w != 0.0).count() <= 2);
        }
    }

    #[test]
    fn views_are_batched_cloud_major() {
        let device = Device::flex();
        let config = ProjectionConfig::zero_shot();
        let clouds = Tensor::<3>::from_data(
            TensorData::new(vec![0.1f32, 0.2, 0.3, -0.2, 0.1, 0.0, 0.3, -0.3, 0.2, 0.0, 0.0, 0.5], [2, 2, 3]),
            &device,
        );
        let all = values(config.transform(clouds.clone()));
        let second = values(config.transform(clouds.narrow(0, 1, 1)));
        // Rows 6..12 are the second cloud's six views.
        assert_eq!(&all[6 * 2 * 3..], &second[..]);
        let images = config.images(Tensor::zeros([2, 5, 3], &device));
        assert_eq!(images.dims(), [12, 3, 224, 224]);
    }
}

//! A differentiable rasterizer of cubic Bezier strokes on burn tensors.
//!
//! Each stroke is sampled as a polyline of `points_per_stroke` points (the Bernstein basis times
//! its four control points, so the polyline is a linear function of them). Every pixel is
//! covered by `supersample x supersample` sample positions; a sample's coverage by a stroke is a
//! smooth ramp of its distance `d` to the nearest polyline segment:
//!
//! ```text
//! x = clamp((width / 2 - d) / softness + 1/2, 0, 1)      c = x^2 (3 - 2 x)
//! ```
//!
//! (the smoothstep, symmetric about the stroke's edge, so a straight stroke covers
//! `length x width` plus its two round caps whatever the softness). Strokes combine as ink
//! over ink: `ink = 1 - prod_i (1 - opacity * c_i)`, and a pixel's ink is the mean over its
//! samples. Gradients flow from the image to the control points through `d`.
//!
//! Which (stroke, sample) pairs are within reach (`width / 2 + softness`) and which segment of
//! the stroke is nearest to the sample are found outside the autodiff graph, by a loop in which
//! each segment visits only the samples near its bounding box; the distances of those pairs
//! alone are then computed on tensors and their `ln(1 - opacity * c)` summed into the samples.
//! The minimum of distances is differentiable exactly so (its gradient is that of the nearest
//! segment), and pairs out of reach have zero coverage and zero gradient, so nothing is lost.

use burn::config::Config;
use burn::tensor::{IndexingUpdateOp, Int, Tensor, TensorData};

/// Configuration of a [`Rasterizer`].
#[derive(Config, Debug, PartialEq)]
pub struct RasterConfig {
    /// Canvas side in pixels (square).
    pub size: usize,
    /// Samples per pixel along each axis (`supersample^2` per pixel).
    #[config(default = 2)]
    pub supersample: usize,
    /// Points each stroke's Bezier curve is sampled at (a polyline of one segment fewer).
    #[config(default = 32)]
    pub points_per_stroke: usize,
    /// Width of the coverage ramp at a stroke's edge, in pixels.
    #[config(default = 1.0)]
    pub softness: f64,
}

impl RasterConfig {
    /// Checks the values, naming the key under `prefix` (`sketch.`).
    pub fn validate(&self, prefix: &str) -> Result<(), String> {
        if self.size == 0 {
            return Err(format!("{prefix}size must be at least 1"));
        }
        if self.supersample == 0 || self.supersample > 8 {
            return Err(format!("{prefix}supersample = {} must be 1 to 8", self.supersample));
        }
        if self.points_per_stroke < 2 {
            return Err(format!("{prefix}points_per_stroke = {} must be at least 2", self.points_per_stroke));
        }
        if !(self.softness.is_finite() && self.softness > 0.0) {
            return Err(format!("{prefix}softness = {} must be positive", self.softness));
        }
        Ok(())
    }

    /// The rasterizer (its basis and sample grid precomputed); an error for invalid values.
    pub fn init(&self) -> Result<Rasterizer, String> {
        self.validate("")?;
        let points = self.points_per_stroke;
        let basis = (0..points)
            .flat_map(|i| {
                let t = i as f32 / (points - 1) as f32;
                let u = 1.0 - t;
                [u * u * u, 3.0 * u * u * t, 3.0 * u * t * t, t * t * t]
            })
            .collect();
        let (size, k) = (self.size, self.supersample);
        let mut samples = Vec::with_capacity(size * size * k * k * 2);
        // Sample order (y, sub-y, x, sub-x), so the image is a reshape and a mean away.
        for y in 0..size {
            for sy in 0..k {
                for x in 0..size {
                    for sx in 0..k {
                        samples.push(x as f32 + (sx as f32 + 0.5) / k as f32);
                        samples.push(y as f32 + (sy as f32 + 0.5) / k as f32);
                    }
                }
            }
        }
        Ok(Rasterizer { size, supersample: k, points, basis, samples, softness: self.softness as f32 })
    }
}

/// Renders cubic Bezier strokes to ink coverage; see the module documentation.
#[derive(Debug, Clone)]
pub struct Rasterizer {
    size: usize,
    supersample: usize,
    points: usize,
    /// Bernstein basis `[points, 4]`, row-major.
    basis: Vec<f32>,
    /// Sample positions in pixels `[samples, 2]` (x, y), row-major.
    samples: Vec<f32>,
    softness: f32,
}

impl Rasterizer {
    /// Canvas side in pixels.
    pub fn size(&self) -> usize {
        self.size
    }

    /// The polylines of `control` `[strokes, 4, 2]` (canvas coordinates in `[0, 1]`, x right,
    /// y down): `[strokes, points, 2]` in pixels.
    pub fn polylines(&self, control: Tensor<3>) -> Tensor<3> {
        let [strokes, _, _] = control.dims();
        let device = control.device();
        let basis = Tensor::<2>::from_data(TensorData::new(self.basis.clone(), [self.points, 4]), &device);
        let basis = basis.unsqueeze_dim::<3>(0).repeat_dim(0, strokes);
        basis.matmul(control.mul_scalar(self.size as f32))
    }

    /// Ink coverage `[size, size]` in `[0, 1]` of strokes `control` `[strokes, 4, 2]` (canvas
    /// coordinates in `[0, 1]`) of `width` pixels and `opacity`, differentiable with respect
    /// to `control`. No strokes render an empty canvas.
    pub fn render(&self, control: Tensor<3>, width: f32, opacity: f32) -> Tensor<2> {
        let size = self.size;
        self.render_batch(control.unsqueeze_dim(0), width, opacity).reshape([size, size])
    }

    /// Ink coverage `[batch, size, size]` of a batch of sketches `control`
    /// `[batch, strokes, 4, 2]`, each rendered alone as [`Rasterizer::render`] does.
    pub fn render_batch(&self, control: Tensor<4>, width: f32, opacity: f32) -> Tensor<3> {
        let [batch, strokes, _, _] = control.dims();
        let device = control.device();
        let (size, k) = (self.size, self.supersample);
        let count = self.samples.len() / 2;
        if strokes == 0 || batch == 0 {
            return Tensor::zeros([batch, size, size], &device);
        }
        let all = batch * strokes;
        let polylines = self.polylines(control.reshape([all, 4, 2]));
        let pairs = self.covered_pairs(&polylines, strokes, width);
        if pairs.segment.is_empty() {
            return Tensor::zeros([batch, size, size], &device);
        }
        let active = pairs.segment.len();
        let points = polylines.reshape([all * self.points, 2]);
        let segment = Tensor::<1, Int>::from_data(TensorData::new(pairs.segment, [active]), &device);
        let start = points.clone().select(0, segment.clone());
        let end = points.select(0, segment.add_scalar(1));
        let samples = Tensor::<2>::from_data(TensorData::new(pairs.position, [active, 2]), &device);
        let distance = segment_distance(samples, start, end);
        let x = distance.neg().add_scalar(width / 2.0).div_scalar(self.softness).add_scalar(0.5).clamp(0.0, 1.0);
        let coverage = x.clone().square().mul(x.mul_scalar(-2.0).add_scalar(3.0));
        // 1 - prod(1 - a c), as exp(sum(ln(1 - a c))) summed into each sample; the epsilon
        // keeps the log finite where a stroke covers a sample completely (under 1e-4 of ink).
        let logs = coverage.mul_scalar(-opacity).add_scalar(1.0 + 1e-6).log();
        let target = Tensor::<1, Int>::from_data(TensorData::new(pairs.target, [active]), &device);
        let clear = Tensor::<1>::zeros([batch * count], &device).select_assign(0, target, logs, IndexingUpdateOp::Add).exp();
        let ink = clear.neg().add_scalar(1.0).clamp(0.0, 1.0);
        ink.reshape([batch, size, k, size, k]).mean_dim(4).mean_dim(2).reshape([batch, size, size])
    }

    /// The (stroke, sample) pairs within reach of each other, with the polyline segment
    /// nearest to the sample; found outside the autodiff graph, each segment visiting only the
    /// samples within reach of its bounding box.
    fn covered_pairs(&self, polylines: &Tensor<3>, strokes_per_image: usize, width: f32) -> Pairs {
        let [strokes, points, _] = polylines.dims();
        let values: Vec<f32> = polylines.clone().detach().into_data().iter::<f32>().collect();
        let count = self.samples.len() / 2;
        let per_row = self.size * self.supersample;
        let k = self.supersample as f32;
        let reach = width / 2.0 + self.softness;
        let reach2 = reach * reach;
        // Sample column (or row) index range covering pixel coordinates [lo, hi].
        let range = |lo: f32, hi: f32| -> Option<(usize, usize)> {
            let first = ((lo * k - 0.5).ceil()).max(0.0);
            let last = ((hi * k - 0.5).floor()).min(per_row as f32 - 1.0);
            (first.is_finite() && last.is_finite() && first <= last).then_some((first as usize, last as usize))
        };
        let mut pairs = Pairs::default();
        let mut best = vec![(f32::INFINITY, 0usize); count];
        let mut touched: Vec<usize> = Vec::new();
        for stroke in 0..strokes {
            let line = &values[stroke * points * 2..(stroke + 1) * points * 2];
            for (segment, pair) in line.windows(4).step_by(2).enumerate() {
                let (ax, ay, bx, by) = (pair[0], pair[1], pair[2], pair[3]);
                let (Some((c0, c1)), Some((r0, r1))) =
                    (range(ax.min(bx) - reach, ax.max(bx) + reach), range(ay.min(by) - reach, ay.max(by) + reach))
                else {
                    continue;
                };
                for row in r0..=r1 {
                    for col in c0..=c1 {
                        let m = row * per_row + col;
                        let d = squared_segment_distance(self.samples[2 * m], self.samples[2 * m + 1], ax, ay, bx, by);
                        if d < best[m].0 {
                            if best[m].0 == f32::INFINITY {
                                touched.push(m);
                            }
                            best[m] = (d, segment);
                        }
                    }
                }
            }
            let image = stroke / strokes_per_image;
            for m in touched.drain(..) {
                let (d, segment) = best[m];
                best[m] = (f32::INFINITY, 0);
                if d < reach2 {
                    pairs.segment.push((stroke * points + segment) as i64);
                    pairs.position.extend_from_slice(&self.samples[2 * m..2 * m + 2]);
                    pairs.target.push((image * count + m) as i64);
                }
            }
        }
        pairs
    }
}

/// Stroke-sample pairs a render computes: for each, the flat index of its nearest segment's
/// first point, the sample's position, and the flat index of the sample in the batch.
#[derive(Debug, Default)]
struct Pairs {
    segment: Vec<i64>,
    position: Vec<f32>,
    target: Vec<i64>,
}

/// Squared distance from `(px, py)` to the segment `(ax, ay)`-`(bx, by)`.
fn squared_segment_distance(px: f32, py: f32, ax: f32, ay: f32, bx: f32, by: f32) -> f32 {
    let (dx, dy) = (bx - ax, by - ay);
    let length = dx * dx + dy * dy;
    let t = if length > 0.0 { (((px - ax) * dx + (py - ay) * dy) / length).clamp(0.0, 1.0) } else { 0.0 };
    let (cx, cy) = (ax + t * dx - px, ay + t * dy - py);
    cx * cx + cy * cy
}

/// Distance `[pairs]` from points `[pairs, 2]` to segments `start`-`end` `[pairs, 2]`, on
/// tensors (differentiable in the segments).
fn segment_distance(points: Tensor<2>, start: Tensor<2>, end: Tensor<2>) -> Tensor<1> {
    let [pairs, _] = start.dims();
    let along = end - start.clone();
    let offset = points - start;
    let length = along.clone().square().sum_dim(1).add_scalar(1e-12);
    let t = (offset.clone().mul(along.clone()).sum_dim(1) / length).clamp(0.0, 1.0);
    let difference = offset - along * t;
    difference.square().sum_dim(1).add_scalar(1e-8).sqrt().reshape([pairs])
}

/// The canvas `[size, size]` as a `[1, 3, size, size]` CLIP input: ink drawn in `ink` (0 black,
/// 1 white) on the opposite background, normalized by CLIP's per-channel `mean` and `std`.
pub fn to_clip_input(ink: Tensor<2>, ink_value: f32, mean: [f32; 3], std: [f32; 3]) -> Tensor<4> {
    let [h, w] = ink.dims();
    let device = ink.device();
    let background = 1.0 - ink_value;
    let gray = ink.mul_scalar(ink_value - background).add_scalar(background);
    let gray = gray.reshape([1, 1, h, w]).repeat_dim(1, 3);
    let mean = Tensor::<1>::from_data(TensorData::new(mean.to_vec(), [3]), &device).reshape([1, 3, 1, 1]);
    let std = Tensor::<1>::from_data(TensorData::new(std.to_vec(), [3]), &device).reshape([1, 3, 1, 1]);
    (gray - mean) / std
}


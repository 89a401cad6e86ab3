//! The monocular depth metrics of the literature (Eigen et al., 2014), per image over valid
//! pixels, averaged over images as the official DepthCLIP (and BTS, AdaBins) evaluation does.

use super::io::DepthMap;

/// A region of the ground truth the metrics are computed on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum EvalCrop {
    /// The standard Eigen crop of NYU Depth v2: rows 45..471, columns 41..601 of the 640 x 480
    /// frame (scaled proportionally, rounded, for other sizes).
    EigenNyu,
    /// The crop of the official DepthCLIP NYU evaluation (`compute_errors_NYU`): rows 45..471,
    /// columns 46..601 (scaled like [`EigenNyu`](Self::EigenNyu)).
    DepthClipNyu,
    /// Garg et al.'s KITTI crop: rows `0.40810811 h .. 0.99189189 h`, columns
    /// `0.03594771 w .. 0.96405229 w` (truncated).
    Garg,
    /// Explicit half-open bounds in pixels.
    Rect {
        /// First row.
        top: usize,
        /// Row after the last.
        bottom: usize,
        /// First column.
        left: usize,
        /// Column after the last.
        right: usize,
    },
}

impl EvalCrop {
    /// `(top, bottom, left, right)` for a `width x height` map.
    pub fn bounds(self, width: usize, height: usize) -> (usize, usize, usize, usize) {
        let nyu = |top: usize, bottom: usize, left: usize, right: usize| {
            let sy = |v: usize| ((v * height) as f64 / 480.0).round() as usize;
            let sx = |v: usize| ((v * width) as f64 / 640.0).round() as usize;
            (sy(top), sy(bottom), sx(left), sx(right))
        };
        let (top, bottom, left, right) = match self {
            Self::EigenNyu => nyu(45, 471, 41, 601),
            Self::DepthClipNyu => nyu(45, 471, 46, 601),
            Self::Garg => {
                let (h, w) = (height as f64, width as f64);
                (
                    (0.408_108_11 * h) as usize,
                    (0.991_891_89 * h) as usize,
                    (0.035_947_71 * w) as usize,
                    (0.964_052_29 * w) as usize,
                )
            }
            Self::Rect { top, bottom, left, right } => (top, bottom, left, right),
        };
        (top.min(height), bottom.min(height), left.min(width), right.min(width))
    }
}

/// Which pixels count and how predictions are clamped.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EvalOptions {
    /// Ground truth must exceed this (so 0, "no measurement", never counts); predictions are
    /// clamped up to it.
    pub min_depth: f32,
    /// Ground truth must be below this; predictions are clamped down to it.
    pub max_depth: Option<f32>,
    /// Only pixels inside this region count.
    pub crop: Option<EvalCrop>,
    /// Pixels whose prediction is not above `min_depth` do not count either (the official NYU
    /// evaluation pastes its prediction into a zero frame and skips the zeros).
    pub require_prediction: bool,
}

impl Default for EvalOptions {
    /// Every pixel with ground truth above 1 mm, no cap, no crop.
    fn default() -> Self {
        Self { min_depth: 1e-3, max_depth: None, crop: None, require_prediction: false }
    }
}

impl EvalOptions {
    /// The common NYU Depth v2 protocol: depths in (1 mm, 10 m), Eigen crop.
    pub fn eigen_nyu() -> Self {
        Self { min_depth: 1e-3, max_depth: Some(10.0), crop: Some(EvalCrop::EigenNyu), require_prediction: false }
    }

    /// The official DepthCLIP NYU evaluation: depths in (1 mm, 10 m), its crop, and only pixels
    /// the prediction covers (see [`DepthMap::place_in`]).
    pub fn depthclip_nyu() -> Self {
        Self { min_depth: 1e-3, max_depth: Some(10.0), crop: Some(EvalCrop::DepthClipNyu), require_prediction: true }
    }

    /// The common KITTI protocol: depths in (1 mm, 80 m), Garg crop.
    pub fn garg_kitti() -> Self {
        Self { min_depth: 1e-3, max_depth: Some(80.0), crop: Some(EvalCrop::Garg), require_prediction: false }
    }
}

/// The depth metrics of one image (or their mean over images).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct DepthMetrics {
    /// Mean absolute relative error `mean(|d - d*| / d*)`.
    pub abs_rel: f64,
    /// Mean squared relative error `mean((d - d*)^2 / d*)`.
    pub sq_rel: f64,
    /// Root mean squared error `sqrt(mean((d - d*)^2))`, metres.
    pub rmse: f64,
    /// `sqrt(mean((ln d - ln d*)^2))`.
    pub rmse_log: f64,
    /// Mean absolute log10 error `mean(|log10 d - log10 d*|)`.
    pub log10: f64,
    /// Mean absolute error `mean(|d - d*|)`, metres (the official `abs_diff`).
    pub abs_diff: f64,
    /// Share of pixels with `max(d / d*, d* / d) < 1.25`.
    pub delta1: f64,
    /// As `delta1` with `1.25^2`.
    pub delta2: f64,
    /// As `delta1` with `1.25^3`.
    pub delta3: f64,
    /// Pixels the metrics were computed on (summed when averaged).
    pub pixels: usize,
}

/// The metrics of prediction `pred` against ground truth `truth` (both in metres, the same size)
/// over the pixels `options` marks valid; `None` when the sizes differ or no pixel is valid.
pub fn depth_metrics(pred: &DepthMap, truth: &DepthMap, options: &EvalOptions) -> Option<DepthMetrics> {
    if (pred.width, pred.height) != (truth.width, truth.height) {
        return None;
    }
    let (top, bottom, left, right) = match options.crop {
        Some(crop) => crop.bounds(truth.width, truth.height),
        None => (0, truth.height, 0, truth.width),
    };
    let max = options.max_depth.unwrap_or(f32::INFINITY);
    let mut sums = [0f64; 9];
    let mut n = 0usize;
    for y in top..bottom {
        for x in left..right {
            let (g, p) = (truth.get(x, y), pred.get(x, y));
            let valid = g > options.min_depth && g < max && (!options.require_prediction || p > options.min_depth);
            if !valid || p.is_nan() {
                continue;
            }
            let g = g as f64;
            let p = (p as f64).clamp(options.min_depth as f64, max as f64);
            let diff = p - g;
            let ratio = (p / g).max(g / p);
            let terms = [
                diff.abs() / g,
                diff * diff / g,
                diff * diff,
                (p.ln() - g.ln()).powi(2),
                (p.log10() - g.log10()).abs(),
                diff.abs(),
                (ratio < 1.25) as u8 as f64,
                (ratio < 1.25f64.powi(2)) as u8 as f64,
                (ratio < 1.25f64.powi(3)) as u8 as f64,
            ];
            for (sum, term) in sums.iter_mut().zip(terms) {
                *sum += term;
            }
            n += 1;
        }
    }
    if n == 0 {
        return None;
    }
    let m = sums.map(|s| s / n as f64);
    Some(DepthMetrics {
        abs_rel: m[0],
        sq_rel: m[1],
        rmse: m[2].sqrt(),
        rmse_log: m[3].sqrt(),
        log10: m[4],
        abs_diff: m[5],
        delta1: m[6],
        delta2: m[7],
        delta3: m[8],
        pixels: n,
    })
}

/// The mean of per-image metrics (each image weighs the same, as in the official evaluation).
#[derive(Debug, Clone, Default)]
pub struct MetricsMean {
    sum: DepthMetrics,
    images: usize,
}

impl MetricsMean {
    /// No images yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one image's metrics.
    pub fn add(&mut self, m: &DepthMetrics) {
        let s = &mut self.sum;
        s.abs_rel += m.abs_rel;
        s.sq_rel += m.sq_rel;
        s.rmse += m.rmse;
        s.rmse_log += m.rmse_log;
        s.log10 += m.log10;
        s.abs_diff += m.abs_diff;
        s.delta1 += m.delta1;
        s.delta2 += m.delta2;
        s.delta3 += m.delta3;
        s.pixels += m.pixels;
        self.images += 1;
    }

    /// Images added.
    pub fn images(&self) -> usize {
        self.images
    }

    /// The mean over the images added (`pixels` is their total); `None` before the first.
    pub fn mean(&self) -> Option<DepthMetrics> {
        if self.images == 0 {
            return None;
        }
        let k = self.images as f64;
        let s = &self.sum;
        Some(DepthMetrics {
            abs_rel: s.abs_rel / k,
            sq_rel: s.sq_rel / k,
            rmse: s.rmse / k,
            rmse_log: s.rmse_log / k,
            log10: s.log10 / k,
            abs_diff: s.abs_diff / k,
            delta1: s.delta1 / k,
            delta2: s.delta2 / k,
            delta3: s.delta3 / k,
            pixels: s.pixels,
        })
    }
}

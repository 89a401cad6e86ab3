//! RoIAlign (He et al., 2017) with torchvision's semantics and `aligned = true`: each output
//! bin averages bilinear samples taken on a regular grid inside the bin, with box corners
//! shifted by half a pixel so that pixel centres sit at integer + 0.5.
//!
//! Every sample grid is a product of a row grid and a column grid, and bilinear weights factor
//! into a row weight times a column weight, so each box's pooling is `Ay F Axᵀ` with host-built
//! `Ay: [oh, H]` and `Ax: [ow, W]` (sample weights averaged per bin). Applying them as two
//! matmuls keeps the result differentiable w.r.t. the features (not the boxes) and costs memory
//! proportional to the output, so it also serves for cropping full-resolution images.

use burn::tensor::{Tensor, TensorData};

use crate::boxes::BoxXyxy;

/// Pools `features` `[B, C, H, W]` inside `boxes` (per image, `[x1, y1, x2, y2]` input pixels;
/// multiplied by `spatial_scale` to reach feature cells) into `[R_total, C, oh, ow]` for
/// `output = [oh, ow]`, images in order. `sampling_ratio` samples per bin side; 0 picks
/// `ceil(roi side / bins)` per box as torchvision does. Samples more than one cell outside the
/// map contribute zero. No boxes at all gives `[0, C, oh, ow]`.
///
/// # Panics
/// If `boxes` does not hold one list per image (a caller bug, not a data error).
pub fn roi_align(
    features: Tensor<4>,
    boxes: &[Vec<BoxXyxy>],
    spatial_scale: f32,
    output: [usize; 2],
    sampling_ratio: usize,
) -> Tensor<4> {
    let [batch, channels, height, width] = features.dims();
    assert_eq!(
        boxes.len(),
        batch,
        "roi_align: {} box lists for {batch} images",
        boxes.len()
    );
    let device = features.device();
    let [oh, ow] = output;
    let mut pooled = Vec::new();
    for (b, image_boxes) in boxes.iter().enumerate() {
        let count = image_boxes.len();
        if count == 0 {
            continue;
        }
        let mut rows = Vec::with_capacity(count * oh * height);
        let mut cols = Vec::with_capacity(count * ow * width);
        for roi in image_boxes {
            let [x1, y1, x2, y2] = roi.map(|v| v * spatial_scale);
            rows.extend(axis_weights(y1, y2, height, oh, sampling_ratio));
            cols.extend(axis_weights(x1, x2, width, ow, sampling_ratio));
        }
        let ay = Tensor::<3>::from_data(TensorData::new(rows, [count, oh, height]), &device);
        let ax = Tensor::<2>::from_data(TensorData::new(cols, [count * ow, width]), &device);
        // [C * H, W] x [W, R * ow] -> [R, H, C * ow], then [R, oh, H] x that -> [R, oh, C * ow].
        let by_columns = features
            .clone()
            .narrow(0, b, 1)
            .reshape([channels * height, width])
            .matmul(ax.transpose())
            .reshape([channels, height, count, ow])
            .permute([2, 1, 0, 3])
            .reshape([count, height, channels * ow]);
        pooled.push(
            ay.matmul(by_columns)
                .reshape([count, oh, channels, ow])
                .permute([0, 2, 1, 3]),
        );
    }
    if pooled.is_empty() {
        return Tensor::zeros([0, channels, oh, ow], &device);
    }
    Tensor::cat(pooled, 0)
}

/// Row-major `[bins, size]` weights along one axis for a box side `[start, end]` in cells:
/// each bin averages `grid` bilinear samples (`grid = sampling_ratio`, or
/// `ceil(side / bins)` when it is 0) with torchvision's half-pixel shift and border rules.
fn axis_weights(start: f32, end: f32, size: usize, bins: usize, sampling_ratio: usize) -> Vec<f32> {
    let origin = start - 0.5;
    let bin = (end - start) / bins as f32;
    let grid = if sampling_ratio > 0 {
        sampling_ratio
    } else {
        bin.ceil().max(0.0) as usize
    };
    let mut weights = vec![0.0f32; bins * size];
    for p in 0..bins {
        for i in 0..grid {
            let v = origin + p as f32 * bin + (i as f32 + 0.5) * bin / grid as f32;
            if v < -1.0 || v > size as f32 {
                continue;
            }
            let v = v.max(0.0);
            let low = v.floor() as usize;
            let (low, high, frac) = if low >= size - 1 {
                (size - 1, size - 1, 0.0)
            } else {
                (low, low + 1, v - low as f32)
            };
            weights[p * size + low] += (1.0 - frac) / grid as f32;
            weights[p * size + high] += frac / grid as f32;
        }
    }
    weights
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Device;

    /// `[1, 2, 4, 4]`: channel 0 is `x` (column), channel 1 is `10 y` (row), at cell centres.
    fn ramp(device: &Device) -> Tensor<4> {
        let mut values = Vec::new();
        for c in 0..2 {
            for y in 0..4 {
                for x in 0..4 {
                    values.push(if c == 0 { x as f32 } else { 10.0 * y as f32 });
                }
            }
        }
        Tensor::from_data(TensorData::new(values, [1, 2, 4, 4]), device)
    }

    #[test]
    fn bilinear_ramp_is_sampled_exactly() {
        let device = Device::flex();
        // Box (1, 1)-(3, 3) in pixels, scale 1: with the half-pixel shift the 2x2 bins cover
        // continuous cell coordinates [0.5, 2.5]; bin centres (in cell index space) are 1.0
        // and 2.0. A linear ramp averages to its value at the bin centre.
        let out = roi_align(ramp(&device), &[vec![[1.0, 1.0, 3.0, 3.0]]], 1.0, [2, 2], 2);
        assert_eq!(out.dims(), [1, 2, 2, 2]);
        let v = out.into_data().iter::<f32>().collect::<Vec<_>>();
        let expected = [1.0, 2.0, 1.0, 2.0, 10.0, 10.0, 20.0, 20.0];
        for (a, b) in v.iter().zip(expected) {
            assert!((a - b).abs() < 1e-5, "{v:?}");
        }
    }

    #[test]
    fn spatial_scale_and_border_clamping() {
        let device = Device::flex();
        // Scale 0.5: box (0, 0)-(8, 8) becomes cells [-0.5, 3.5] over the whole map, one bin,
        // 2x2 samples at -0.5 + {1, 3} = 0.5 and 2.5 -> mean x = 1.5.
        let out = roi_align(ramp(&device), &[vec![[0.0, 0.0, 8.0, 8.0]]], 0.5, [1, 1], 2);
        let v = out.into_data().iter::<f32>().collect::<Vec<_>>();
        assert!(
            (v[0] - 1.5).abs() < 1e-5 && (v[1] - 15.0).abs() < 1e-5,
            "{v:?}"
        );
        // A box past the right border: samples beyond the last cell clamp to it (value 3).
        // Box (3, 0)-(5, 4), one bin, 1 sample at x = 3.5 -> clamped to column 3.
        let out = roi_align(ramp(&device), &[vec![[3.0, 0.0, 5.0, 4.0]]], 1.0, [1, 1], 1);
        let v = out.into_data().iter::<f32>().collect::<Vec<_>>();
        assert!(
            (v[0] - 3.0).abs() < 1e-5 && (v[1] - 15.0).abs() < 1e-5,
            "{v:?}"
        );
    }

    #[test]
    fn samples_beyond_one_cell_outside_count_as_zero() {
        let device = Device::flex();
        // Entirely outside: every sample lies below -1.
        let out = roi_align(
            ramp(&device),
            &[vec![[-4.0, -4.0, -2.0, -2.0]]],
            1.0,
            [1, 1],
            2,
        );
        assert!(out.into_data().iter::<f32>().all(|v| v == 0.0));
        // Box (-3, 0)-(1, 1), 2x2 samples: x at -2.5 (outside, zero) and -0.5 (clamped to
        // column 0); y at -0.25 (clamped to row 0, value 0) and 0.25 (value 2.5). Channel 1
        // (10 y) averages (0 + 2.5) / 2 over the two inside samples of four: 0.625.
        let out = roi_align(
            ramp(&device),
            &[vec![[-3.0, 0.0, 1.0, 1.0]]],
            1.0,
            [1, 1],
            2,
        );
        let v = out.into_data().iter::<f32>().collect::<Vec<_>>();
        assert!(v[0].abs() < 1e-6 && (v[1] - 0.625).abs() < 1e-5, "{v:?}");
    }

    /// torchvision's CPU forward written out per sample (not factored per axis), for one box
    /// on a single-channel `[height, width]` map.
    fn direct(
        map: &[f32],
        [height, width]: [usize; 2],
        roi: BoxXyxy,
        bins: usize,
        ratio: usize,
    ) -> Vec<f32> {
        let (x0, y0) = (roi[0] - 0.5, roi[1] - 0.5);
        let (bw, bh) = (
            (roi[2] - roi[0]) / bins as f32,
            (roi[3] - roi[1]) / bins as f32,
        );
        let gh = if ratio > 0 { ratio } else { bh.ceil() as usize };
        let gw = if ratio > 0 { ratio } else { bw.ceil() as usize };
        let count = (gh * gw).max(1) as f32;
        let sample = |y: f32, x: f32| -> f32 {
            if y < -1.0 || y > height as f32 || x < -1.0 || x > width as f32 {
                return 0.0;
            }
            let (mut y, mut x) = (y.max(0.0), x.max(0.0));
            let (mut yl, mut xl) = (y as usize, x as usize);
            let (yh, xh);
            if yl >= height - 1 {
                (yl, yh, y) = (height - 1, height - 1, (height - 1) as f32);
            } else {
                yh = yl + 1;
            }
            if xl >= width - 1 {
                (xl, xh, x) = (width - 1, width - 1, (width - 1) as f32);
            } else {
                xh = xl + 1;
            }
            let (ly, lx) = (y - yl as f32, x - xl as f32);
            let at = |r: usize, c: usize| map[r * width + c];
            (1.0 - ly) * (1.0 - lx) * at(yl, xl)
                + (1.0 - ly) * lx * at(yl, xh)
                + ly * (1.0 - lx) * at(yh, xl)
                + ly * lx * at(yh, xh)
        };
        let mut out = Vec::new();
        for ph in 0..bins {
            for pw in 0..bins {
                let mut sum = 0.0;
                for iy in 0..gh {
                    let y = y0 + ph as f32 * bh + (iy as f32 + 0.5) * bh / gh as f32;
                    for ix in 0..gw {
                        let x = x0 + pw as f32 * bw + (ix as f32 + 0.5) * bw / gw as f32;
                        sum += sample(y, x);
                    }
                }
                out.push(sum / count);
            }
        }
        out
    }

    #[test]
    fn matches_the_per_sample_algorithm_on_irregular_boxes() {
        let device = Device::flex();
        let (height, width) = (5, 7);
        let map: Vec<f32> = (0..height * width)
            .map(|i| ((i * 37) % 11) as f32 - 5.0)
            .collect();
        let features =
            Tensor::<4>::from_data(TensorData::new(map.clone(), [1, 1, height, width]), &device);
        let boxes = vec![
            [0.3, 0.7, 6.1, 4.2],
            [-1.7, 2.2, 3.3, 6.9],
            [5.5, -0.4, 8.6, 1.1],
            [2.0, 2.0, 2.4, 2.1],
            [-3.0, -2.5, 9.0, 7.5],
        ];
        for ratio in [0, 1, 3] {
            let out = roi_align(
                features.clone(),
                std::slice::from_ref(&boxes),
                1.0,
                [3, 3],
                ratio,
            );
            let got = out.into_data().iter::<f32>().collect::<Vec<_>>();
            let expected: Vec<f32> = boxes
                .iter()
                .flat_map(|b| direct(&map, [height, width], *b, 3, ratio))
                .collect();
            for (a, b) in got.iter().zip(&expected) {
                assert!(
                    (a - b).abs() < 1e-4,
                    "ratio {ratio}: {got:?} vs {expected:?}"
                );
            }
        }
    }

    #[test]
    fn adaptive_sampling_and_batch_index() {
        let device = Device::flex();
        let features = Tensor::cat(vec![ramp(&device), ramp(&device) * 2.0], 0);
        // Sampling ratio 0: ceil(2 / 1) = 2 samples per side; batch 1 doubles the values.
        let out = roi_align(
            features,
            &[vec![], vec![[1.0, 1.0, 3.0, 3.0]]],
            1.0,
            [1, 1],
            0,
        );
        let v = out.into_data().iter::<f32>().collect::<Vec<_>>();
        assert!(
            (v[0] - 3.0).abs() < 1e-5 && (v[1] - 30.0).abs() < 1e-5,
            "{v:?}"
        );
    }

    #[test]
    fn gradients_flow_to_the_sampled_cells() {
        let device = Device::flex().autodiff();
        let features = Tensor::<4>::zeros([1, 1, 4, 4], &device).require_grad();
        // One bin, one sample at cell coordinate (1.0, 1.25) -> x at 1.0 exactly, y between
        // rows 1 and 2 with weights 0.75 / 0.25.
        let out = roi_align(
            features.clone(),
            &[vec![[1.0, 1.0, 2.0, 2.5]]],
            1.0,
            [1, 1],
            1,
        );
        let grads = out.sum().backward();
        let g = features
            .grad(&grads)
            .unwrap()
            .into_data()
            .iter::<f32>()
            .collect::<Vec<_>>();
        let mut expected = vec![0.0f32; 16];
        expected[4 + 1] = 0.75;
        expected[8 + 1] = 0.25;
        for (a, b) in g.iter().zip(&expected) {
            assert!((a - b).abs() < 1e-6, "{g:?}");
        }
        assert!((g.iter().sum::<f32>() - 1.0).abs() < 1e-6);
    }

    #[test]
    fn boxes_keep_image_order_and_a_whole_map_box_averages_it() {
        let device = Device::flex();
        let features = Tensor::cat(vec![ramp(&device), ramp(&device) + 100.0], 0);
        // Image 0: the whole 4x4 map as one bin with 4x4 samples at cell centres -> the mean
        // (x 1.5, 10 y 15). Image 1: two boxes, each a single cell sample at its centre.
        let boxes = [
            vec![[0.0, 0.0, 4.0, 4.0]],
            vec![[2.0, 1.0, 3.0, 2.0], [0.0, 3.0, 1.0, 4.0]],
        ];
        let out = roi_align(features, &boxes, 1.0, [1, 1], 0);
        assert_eq!(out.dims(), [3, 2, 1, 1]);
        let v = out.into_data().iter::<f32>().collect::<Vec<_>>();
        let expected = [1.5, 15.0, 102.0, 110.0, 100.0, 130.0];
        for (a, b) in v.iter().zip(expected) {
            assert!((a - b).abs() < 1e-4, "{v:?}");
        }
    }

    #[test]
    fn no_rois_gives_an_empty_output() {
        let device = Device::flex();
        let out = roi_align(ramp(&device), &[vec![]], 1.0, [7, 7], 2);
        assert_eq!(out.dims(), [0, 2, 7, 7]);
    }
}

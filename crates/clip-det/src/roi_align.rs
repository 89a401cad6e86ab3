//! RoIAlign (He et al., 2017) with torchvision's semantics and `aligned = true`: each output
//! bin averages bilinear samples taken on a regular grid inside the bin, with box corners
//! shifted by half a pixel so that pixel centres sit at integer + 0.5.
//!
//! The sample positions and their four-corner weights depend only on the box coordinates, so
//! they are computed on the host as a dense weight matrix and applied to the feature map with a
//! matmul, which keeps the result differentiable w.r.t. the features (not the boxes).

use burn::tensor::{Tensor, TensorData};

/// One bilinear tap: flat index into the `H * W` cells of one feature map and its weight.
type Tap = (usize, f32);

/// Pools `features` `[B, C, H, W]` inside `boxes` (per image, `[x1, y1, x2, y2]` input pixels;
/// multiplied by `spatial_scale` to reach feature cells) into `[R_total, C, oh, ow]` for
/// `output = [oh, ow]`, images in order. `sampling_ratio` samples per bin side; 0 picks
/// `ceil(roi side / bins)` per box as torchvision does. Samples more than one cell outside the
/// map contribute zero. No boxes at all gives `[0, C, oh, ow]`.
///
/// Per image the bilinear weights form a dense `[R * oh * ow, H * W]` matrix built on the host,
/// applied to the map with one matmul.
///
/// # Panics
/// If `boxes` does not hold one list per image (a caller bug, not a data error).
pub fn roi_align(
    features: Tensor<4>,
    boxes: &[Vec<[f32; 4]>],
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
    let cells = height * width;
    let mut pooled = Vec::new();
    for (b, image_boxes) in boxes.iter().enumerate() {
        if image_boxes.is_empty() {
            continue;
        }
        let rows = image_boxes.len() * oh * ow;
        let mut weights = vec![0.0f32; rows * cells];
        for (r, roi) in image_boxes.iter().enumerate() {
            let taps = roi_taps(
                roi.map(|v| v * spatial_scale),
                [height, width],
                output,
                sampling_ratio,
            );
            for (bin, bin_taps) in taps.into_iter().enumerate() {
                let row = (r * oh * ow + bin) * cells;
                for (index, weight) in bin_taps {
                    weights[row + index] += weight;
                }
            }
        }
        let weights = Tensor::<2>::from_data(TensorData::new(weights, [rows, cells]), &device);
        let map = features
            .clone()
            .narrow(0, b, 1)
            .reshape([channels, cells])
            .swap_dims(0, 1);
        pooled.push(weights.matmul(map));
    }
    if pooled.is_empty() {
        return Tensor::zeros([0, channels, oh, ow], &device);
    }
    let pooled = Tensor::cat(pooled, 0);
    let count = pooled.dims()[0] / (oh * ow);
    pooled
        .reshape([count, oh, ow, channels])
        .permute([0, 3, 1, 2])
}

/// The bilinear taps of every bin (row-major) of one box `[x1, y1, x2, y2]` in feature cells on
/// a `[height, width]` map, with weights already divided by the number of samples per bin.
fn roi_taps(
    roi: [f32; 4],
    [height, width]: [usize; 2],
    [oh, ow]: [usize; 2],
    sampling_ratio: usize,
) -> Vec<Vec<Tap>> {
    let (x0, y0) = (roi[0] - 0.5, roi[1] - 0.5);
    let (roi_w, roi_h) = (roi[2] - roi[0], roi[3] - roi[1]);
    let (bin_w, bin_h) = (roi_w / ow as f32, roi_h / oh as f32);
    let grid_h = if sampling_ratio > 0 {
        sampling_ratio
    } else {
        (roi_h / oh as f32).ceil().max(0.0) as usize
    };
    let grid_w = if sampling_ratio > 0 {
        sampling_ratio
    } else {
        (roi_w / ow as f32).ceil().max(0.0) as usize
    };
    let samples = (grid_h * grid_w).max(1) as f32;
    let mut bins = Vec::with_capacity(oh * ow);
    for ph in 0..oh {
        for pw in 0..ow {
            let mut taps = Vec::with_capacity(4 * grid_h * grid_w);
            for iy in 0..grid_h {
                let y = y0 + ph as f32 * bin_h + (iy as f32 + 0.5) * bin_h / grid_h as f32;
                for ix in 0..grid_w {
                    let x = x0 + pw as f32 * bin_w + (ix as f32 + 0.5) * bin_w / grid_w as f32;
                    bilinear_taps(y, x, height, width, samples, &mut taps);
                }
            }
            bins.push(taps);
        }
    }
    bins
}

/// Appends the four corner taps of a bilinear sample at `(y, x)` (torchvision's border rules),
/// weights divided by `samples`; nothing when the point lies more than a cell outside.
fn bilinear_taps(y: f32, x: f32, height: usize, width: usize, samples: f32, taps: &mut Vec<Tap>) {
    if y < -1.0 || y > height as f32 || x < -1.0 || x > width as f32 {
        return;
    }
    let (y_low, y_high, ly) = corners(y.max(0.0), height);
    let (x_low, x_high, lx) = corners(x.max(0.0), width);
    let (hy, hx) = (1.0 - ly, 1.0 - lx);
    taps.push((y_low * width + x_low, hy * hx / samples));
    taps.push((y_low * width + x_high, hy * lx / samples));
    taps.push((y_high * width + x_low, ly * hx / samples));
    taps.push((y_high * width + x_high, ly * lx / samples));
}

/// Lower and upper neighbour along one axis of `size` cells and the fraction towards the upper.
fn corners(v: f32, size: usize) -> (usize, usize, f32) {
    let low = v.floor() as usize;
    if low >= size - 1 {
        (size - 1, size - 1, 0.0)
    } else {
        (low, low + 1, v - low as f32)
    }
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

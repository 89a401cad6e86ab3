//! The rasterizer on analytic cases, and its gradients against finite differences.

use burn::tensor::{Device, Distribution, Tensor, TensorData};
use clip_sketch::raster::{RasterConfig, Rasterizer};

fn rasterizer(size: usize, supersample: usize) -> Rasterizer {
    RasterConfig::new(size).with_supersample(supersample).with_points_per_stroke(24).init().unwrap()
}

fn control(points: &[[[f32; 2]; 4]], device: &Device) -> Tensor<3> {
    let values: Vec<f32> = points.iter().flat_map(|s| s.iter().flat_map(|p| p.iter().copied())).collect();
    Tensor::from_data(TensorData::new(values, [points.len(), 4, 2]), device)
}

/// A straight stroke from `a` to `b` with evenly spaced inner control points.
fn straight(a: [f32; 2], b: [f32; 2]) -> [[f32; 2]; 4] {
    let at = |t: f32| [a[0] + t * (b[0] - a[0]), a[1] + t * (b[1] - a[1])];
    [a, at(1.0 / 3.0), at(2.0 / 3.0), b]
}

fn pixels(image: Tensor<2>) -> Vec<f32> {
    image.into_data().iter::<f32>().collect()
}

#[test]
fn a_straight_stroke_covers_its_length_times_its_width_plus_round_caps() {
    let device = Device::flex();
    let raster = rasterizer(64, 4);
    for (a, b, width) in [([0.2, 0.5], [0.8, 0.5], 2.0f32), ([0.25, 0.2], [0.7, 0.75], 3.0), ([0.3, 0.3], [0.3, 0.7], 1.5)] {
        let ink = raster.render(control(&[straight(a, b)], &device), width, 1.0);
        let area: f32 = pixels(ink).iter().sum();
        let length = ((b[0] - a[0]).hypot(b[1] - a[1])) * 64.0;
        let expected = length * width + std::f32::consts::PI * width * width / 4.0;
        let error = (area - expected).abs() / expected;
        assert!(error < 0.02, "stroke {a:?}-{b:?} width {width}: area {area}, expected {expected}");
    }
}

#[test]
fn mirrored_strokes_render_mirrored_images() {
    let device = Device::flex();
    let raster = rasterizer(40, 2);
    let stroke = [[0.1f32, 0.2], [0.5, 0.9], [0.7, 0.1], [0.85, 0.6]];
    let mirrored = stroke.map(|p| [1.0 - p[0], p[1]]);
    let a = pixels(raster.render(control(&[stroke], &device), 2.5, 1.0));
    let b = pixels(raster.render(control(&[mirrored], &device), 2.5, 1.0));
    let mut worst = 0.0f32;
    for y in 0..40 {
        for x in 0..40 {
            worst = worst.max((a[y * 40 + x] - b[y * 40 + 39 - x]).abs());
        }
    }
    assert!(a.iter().sum::<f32>() > 20.0, "the stroke draws something");
    assert!(worst < 1e-3, "mirror images differ by {worst}");
}

#[test]
fn wider_strokes_cover_more_everywhere() {
    let device = Device::flex();
    let raster = rasterizer(32, 2);
    let stroke = [[0.1f32, 0.8], [0.3, 0.1], [0.7, 0.9], [0.9, 0.2]];
    let mut previous: Option<Vec<f32>> = None;
    for width in [0.5f32, 1.0, 1.5, 3.0, 5.0] {
        let ink = pixels(raster.render(control(&[stroke], &device), width, 1.0));
        assert!(ink.iter().all(|v| (0.0..=1.0).contains(v)));
        if let Some(previous) = previous {
            assert!(ink.iter().zip(&previous).all(|(now, before)| now + 1e-6 >= *before), "width {width} uncovers a pixel");
            assert!(ink.iter().sum::<f32>() > previous.iter().sum::<f32>() + 1.0, "width {width} adds too little ink");
        }
        previous = Some(ink);
    }
}

#[test]
fn overlapping_strokes_combine_as_ink_over_ink() {
    let device = Device::flex();
    let raster = rasterizer(32, 2);
    let (a, b) = (straight([0.1, 0.5], [0.9, 0.5]), straight([0.5, 0.1], [0.5, 0.9]));
    let one = pixels(raster.render(control(&[a], &device), 3.0, 0.5));
    let other = pixels(raster.render(control(&[b], &device), 3.0, 0.5));
    let both = pixels(raster.render(control(&[a, b], &device), 3.0, 0.5));
    for i in 0..one.len() {
        let expected = 1.0 - (1.0 - one[i]) * (1.0 - other[i]);
        assert!((both[i] - expected).abs() < 0.02, "pixel {i}: {} vs {expected}", both[i]);
    }
    assert!(both.iter().cloned().fold(0.0, f32::max) < 0.76, "half-opaque ink saturates at 0.75 where they cross");
}

#[test]
fn gradients_of_the_control_points_match_finite_differences() {
    let device = Device::flex();
    let raster = rasterizer(24, 2);
    let strokes = [[[0.15f32, 0.2], [0.4, 0.85], [0.6, 0.15], [0.85, 0.7]], [[0.2, 0.75], [0.35, 0.4], [0.7, 0.55], [0.8, 0.25]]];
    let weights = Tensor::<2>::random([24, 24], Distribution::Uniform(0.0, 1.0), &device);
    let width = 2.5;
    let loss = |points: Tensor<3>, weights: Tensor<2>| raster.render(points, width, 0.8).mul(weights).sum();

    let autodiff = device.clone().autodiff();
    let points = control(&strokes, &autodiff).require_grad();
    let grads = loss(points.clone(), weights.clone().to_device(&autodiff)).backward();
    let analytic: Vec<f32> = points.grad(&grads).unwrap().into_data().iter::<f32>().collect();

    let base: Vec<f32> = strokes.iter().flat_map(|s| s.iter().flat_map(|p| p.iter().copied())).collect();
    let eps = 2e-3f32;
    let at = |values: Vec<f32>| loss(Tensor::from_data(TensorData::new(values, [2, 4, 2]), &device), weights.clone()).into_scalar::<f32>();
    let scale = analytic.iter().fold(0.0f32, |m, g| m.max(g.abs()));
    let mut worst = 0.0f32;
    for i in 0..base.len() {
        let (mut plus, mut minus) = (base.clone(), base.clone());
        plus[i] += eps;
        minus[i] -= eps;
        let numeric = (at(plus) - at(minus)) / (2.0 * eps);
        let relative = (numeric - analytic[i]).abs() / scale;
        worst = worst.max(relative);
        assert!(relative < 0.03, "control value {i}: autodiff {} vs finite difference {numeric}", analytic[i]);
    }
    assert!(scale > 1.0, "the loss depends on the control points");
    eprintln!("max relative error (to the largest gradient): {worst:.2e}");
}

//! The depth metrics on generated scenes whose values are worked out by hand.

use clip_3d::depthclip::io::DepthMap;
use clip_3d::depthclip::metrics::{DepthMetrics, EvalCrop, EvalOptions, MetricsMean, depth_metrics};

fn assert_near(got: f64, want: f64, what: &str) {
    assert!((got - want).abs() < 1e-6 * want.abs().max(1.0), "{what}: {got} instead of {want}");
}

/// A 640 x 480 NYU-sized scene. Inside the Eigen crop (rows 45..471, columns 41..601) the left
/// half (columns < 320) is 2 m away and predicted at 2.2 m (ratio 1.1), the right half is 4 m
/// and predicted at 3 m (ratio 0.75). Inside the crop a 10 x 10 block has no depth (0) and a
/// 5 x 5 block on the right lies beyond 10 m; outside the crop the prediction is 100 m off.
fn scene() -> (DepthMap, DepthMap) {
    let (w, h) = (640, 480);
    let mut truth = DepthMap::filled(w, h, 5.0);
    let mut pred = DepthMap::filled(w, h, 100.0);
    for y in 45..471 {
        for x in 41..601 {
            let left = x < 320;
            truth.set(x, y, if left { 2.0 } else { 4.0 });
            pred.set(x, y, if left { 2.2 } else { 3.0 });
        }
    }
    for y in 100..110 {
        for x in 100..110 {
            truth.set(x, y, 0.0);
        }
    }
    for y in 200..205 {
        for x in 400..405 {
            truth.set(x, y, 12.0);
        }
    }
    (pred, truth)
}

#[test]
fn eigen_crop_and_cap_give_the_hand_computed_metrics() {
    let (pred, truth) = scene();
    let m = depth_metrics(&pred, &truth, &EvalOptions::eigen_nyu()).expect("valid pixels");
    // Valid pixels: 426 rows x 279 left columns less the 100 without depth; 426 x 281 right
    // columns less the 25 beyond the cap.
    let left = 426.0 * 279.0 - 100.0;
    let right = 426.0 * 281.0 - 25.0;
    let n = left + right;
    assert_eq!(m.pixels, n as usize);
    // Left: |d - d*| = 0.2, relative 0.1; right: |d - d*| = 1, relative 0.25.
    assert_near(m.abs_rel, (left * 0.1 + right * 0.25) / n, "AbsRel");
    assert_near(m.sq_rel, (left * 0.04 / 2.0 + right * 1.0 / 4.0) / n, "SqRel");
    assert_near(m.rmse, ((left * 0.04 + right * 1.0) / n).sqrt(), "RMSE");
    let (l, r) = (1.1f64.ln(), 0.75f64.ln());
    assert_near(m.rmse_log, ((left * l * l + right * r * r) / n).sqrt(), "log RMSE");
    assert_near(m.log10, (left * 1.1f64.log10() + right * (4.0f64 / 3.0).log10()) / n, "log10");
    assert_near(m.abs_diff, (left * 0.2 + right * 1.0) / n, "abs diff");
    // Ratios: 1.1 on the left (< 1.25), 4/3 on the right (< 1.25^2, not < 1.25).
    assert_near(m.delta1, left / n, "delta1");
    assert_near(m.delta2, 1.0, "delta2");
    assert_near(m.delta3, 1.0, "delta3");
}

#[test]
fn without_crop_every_measured_pixel_counts() {
    let (pred, truth) = scene();
    let all = EvalOptions::default();
    let m = depth_metrics(&pred, &truth, &all).unwrap();
    // Everything but the 100 pixels without depth.
    assert_eq!(m.pixels, 640 * 480 - 100);
    // Outside the crop d* = 5 and d = 100: ratio 20, beyond every threshold.
    let inside = 426.0 * 560.0 - 100.0;
    let left = 426.0 * 279.0 - 100.0;
    assert_near(m.delta1, left / (640.0 * 480.0 - 100.0), "delta1");
    let outside = 640.0 * 480.0 - 426.0 * 560.0;
    assert_near(m.delta3, (inside - 25.0) / (inside + outside), "delta3: the 12 m block predicted at 3 m is off by 4x");
}

#[test]
fn caps_clamp_predictions_and_drop_ground_truth() {
    // d* = (0, 1, 2, 20), d = (5, 2, 30, 1), max 10: only d* = 1 and 2 count; 30 is clamped to 10.
    let truth = DepthMap::new(4, 1, vec![0.0, 1.0, 2.0, 20.0]).unwrap();
    let pred = DepthMap::new(4, 1, vec![5.0, 2.0, 30.0, 1.0]).unwrap();
    let options = EvalOptions { max_depth: Some(10.0), ..EvalOptions::default() };
    let m = depth_metrics(&pred, &truth, &options).unwrap();
    assert_eq!(m.pixels, 2);
    assert_near(m.abs_rel, (1.0 / 1.0 + 8.0 / 2.0) / 2.0, "AbsRel");
    assert_near(m.sq_rel, (1.0 / 1.0 + 64.0 / 2.0) / 2.0, "SqRel");
    assert_near(m.rmse, (65.0f64 / 2.0).sqrt(), "RMSE");
    assert_near(m.rmse_log, ((2f64.ln().powi(2) + 5f64.ln().powi(2)) / 2.0).sqrt(), "log RMSE");
    assert_near(m.log10, (2f64.log10() + 5f64.log10()) / 2.0, "log10");
    // Ratios 2 and 5: 2 > 1.25^3 = 1.953.
    assert_eq!((m.delta1, m.delta2, m.delta3), (0.0, 0.0, 0.0));
}

#[test]
fn predictions_outside_the_pasted_crop_can_be_skipped() {
    let truth = DepthMap::new(2, 1, vec![1.0, 1.0]).unwrap();
    let pred = DepthMap::new(2, 1, vec![0.0, 1.0]).unwrap();
    let strict = EvalOptions { require_prediction: true, ..EvalOptions::default() };
    let m = depth_metrics(&pred, &truth, &strict).unwrap();
    assert_eq!((m.pixels, m.abs_rel, m.delta1), (1, 0.0, 1.0));
    // Counted, the 0 is clamped to the 1 mm floor.
    let m = depth_metrics(&pred, &truth, &EvalOptions::default()).unwrap();
    assert_near(m.abs_rel, 0.999 / 2.0, "AbsRel with the clamped zero");
    assert!(depth_metrics(&pred, &DepthMap::filled(2, 1, 0.0), &EvalOptions::default()).is_none());
    assert!(depth_metrics(&pred, &DepthMap::filled(1, 2, 1.0), &EvalOptions::default()).is_none());
}

#[test]
fn crops_of_the_literature() {
    assert_eq!(EvalCrop::EigenNyu.bounds(640, 480), (45, 471, 41, 601));
    assert_eq!(EvalCrop::DepthClipNyu.bounds(640, 480), (45, 471, 46, 601));
    // KITTI 1216 x 352: int(0.40810811 * 352) = 143, int(0.99189189 * 352) = 349, ...
    assert_eq!(EvalCrop::Garg.bounds(1216, 352), (143, 349, 43, 1172));
    assert_eq!(EvalCrop::Rect { top: 1, bottom: 900, left: 2, right: 3 }.bounds(10, 10), (1, 10, 2, 3));
}

#[test]
fn images_are_averaged_with_equal_weight() {
    let mut mean = MetricsMean::new();
    assert!(mean.mean().is_none());
    mean.add(&DepthMetrics { abs_rel: 0.1, rmse: 1.0, delta1: 1.0, pixels: 10, ..DepthMetrics::default() });
    mean.add(&DepthMetrics { abs_rel: 0.3, rmse: 2.0, delta1: 0.5, pixels: 1000, ..DepthMetrics::default() });
    let m = mean.mean().unwrap();
    assert_eq!(mean.images(), 2);
    assert_near(m.abs_rel, 0.2, "AbsRel");
    assert_near(m.rmse, 1.5, "RMSE");
    assert_near(m.delta1, 0.75, "delta1");
    assert_eq!(m.pixels, 1010);
}

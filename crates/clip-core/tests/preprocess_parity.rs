//! The evaluation transform against open_clip's on the photographs of
//! `$CLIP_FIXTURES/preprocess`. Resampling reproduces PIL's fixed-point arithmetic, so the
//! pixels are identical and only f32 rounding of the normalization remains.

use clip_fixtures::{self as fixtures, abs_diff};
use clip_core::preprocess::EvalTransformConfig;

/// One grey level after normalization is `1 / (255 * std)`, about 0.015; a single pixel off by
/// one level would exceed these bounds by three orders of magnitude.
const MAX_ABS_DIFF: f32 = 1e-5;
const MEAN_ABS_DIFF: f32 = 1e-6;

#[test]
fn eval_transform_matches_open_clip_on_real_photographs() {
    let dir = fixtures::root().join("preprocess");
    let meta_path = dir.join("fixture.json");
    let meta: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&meta_path).unwrap_or_else(|e| panic!("{}: {e}", meta_path.display())),
    )
    .unwrap();
    let expected = fixtures::read_tensors(&dir.join("expected_224.safetensors")).unwrap();
    let floats = |key: &str| -> [f32; 3] {
        let v: Vec<f32> = meta[key].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
        [v[0], v[1], v[2]]
    };
    let mut checked = 0;
    for (name, reference) in &expected {
        let size = reference.shape[1];
        let transform = EvalTransformConfig::new()
            .with_image_size(size)
            .with_mean(floats("mean"))
            .with_std(floats("std"))
            .init();
        let got = transform.load(&dir.join(format!("{name}.png"))).unwrap();
        assert_eq!(got.shape.to_vec(), reference.shape, "{name}: shape");
        let (max, mean) = abs_diff(&got.values, &reference.values);
        eprintln!("preprocess {name}: max abs diff {max:.2e}, mean abs diff {mean:.2e}");
        assert!(max <= MAX_ABS_DIFF, "{name}: max abs diff {max} > {MAX_ABS_DIFF}");
        assert!(mean <= MEAN_ABS_DIFF, "{name}: mean abs diff {mean} > {MEAN_ABS_DIFF}");
        checked += 1;
    }
    assert!(checked > 0, "no images in {}", dir.display());
}

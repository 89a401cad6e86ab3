//! open_clip's ClipLoss value and gradients on every `loss/*/case.safetensors` fixture.

use burn::tensor::{Device, Tensor, TensorData};
use clip_fixtures::{self as fixtures, abs_diff};
use clip_core::weights::RawTensor;
use clip_core::{ClipLoss, l2_normalize};

const TOLERANCE: f32 = 1e-5;

fn leaf<const D: usize>(raw: &RawTensor, device: &Device) -> Tensor<D> {
    let shape = if raw.shape.is_empty() { vec![1] } else { raw.shape.clone() };
    Tensor::<D>::from_data(TensorData::new(raw.values.clone(), shape), device).require_grad()
}

fn check<const D: usize>(case: &str, what: &str, got: Tensor<D>, expected: &RawTensor) {
    let got: Vec<f32> = got.into_data().iter::<f32>().collect();
    assert_eq!(got.len(), expected.values.len(), "{case}: {what} size");
    let (max, mean) = abs_diff(&got, &expected.values);
    eprintln!("{case}: {what}: max abs diff {max:.3e}, mean {mean:.3e}");
    assert!(max <= TOLERANCE, "{case}: {what} differs by {max:e}");
}

#[test]
fn clip_loss_value_and_gradients_match_open_clip() {
    let Some(device) = fixtures::device() else { return };
    let device = device.autodiff();
    let dir = fixtures::root().join("loss");
    let mut cases: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("case.safetensors").is_file())
        .collect();
    cases.sort();
    assert!(!cases.is_empty(), "no loss fixtures under {}", dir.display());
    for case_dir in cases {
        let case = case_dir.display().to_string();
        let t = fixtures::read_tensors(&case_dir.join("case.safetensors")).unwrap();
        let image = leaf::<2>(&t["image_features"], &device);
        let text = leaf::<2>(&t["text_features"], &device);
        let log_scale = leaf::<1>(&t["logit_scale"], &device);
        let loss = ClipLoss::default().forward(
            l2_normalize(image.clone()),
            l2_normalize(text.clone()),
            log_scale.clone().exp(),
        );
        let grads = loss.backward();
        check(&case, "loss", loss, &t["loss"]);
        check(&case, "grad_image_features", image.grad(&grads).unwrap(), &t["grad_image_features"]);
        check(&case, "grad_text_features", text.grad(&grads).unwrap(), &t["grad_text_features"]);
        check(&case, "grad_logit_scale", log_scale.grad(&grads).unwrap(), &t["grad_logit_scale"]);
    }
}

//! Per-pixel cross-entropy with an ignored label, LSeg's training loss.

use burn::tensor::activation::log_softmax;
use burn::tensor::{Int, Tensor};
use clip_core::ClipError;

/// Mean cross-entropy of `logits` `[batch, labels, H, W]` against `targets` `[batch, H, W]`
/// (label indices), over the pixels whose target is not `ignore_index`:
/// `-(1/|V|) sum_{p in V} log softmax(logits_p)[target_p]`. Returns `[1]`; 0 when every pixel
/// is ignored.
///
/// An error when the shapes disagree or a kept target is not in `0..labels`.
pub fn pixel_cross_entropy(
    logits: Tensor<4>,
    targets: Tensor<3, Int>,
    ignore_index: i64,
) -> clip_core::Result<Tensor<1>> {
    let [batch, labels, h, w] = logits.dims();
    if targets.dims() != [batch, h, w] {
        return Err(ClipError::Shape(format!(
            "pixel_cross_entropy: targets are {:?}, the logits need [batch, H, W] = {:?}",
            targets.dims(),
            [batch, h, w]
        )));
    }
    let keep = targets.clone().not_equal_elem(ignore_index);
    let index = targets.mask_fill(keep.clone().bool_not(), 0);
    let out_of_range = index
        .clone()
        .lower_elem(0)
        .bool_or(index.clone().greater_equal_elem(labels as i64));
    if out_of_range.any().into_scalar::<bool>() {
        return Err(ClipError::Shape(format!(
            "pixel_cross_entropy: a target is neither in 0..{labels} nor the ignore index {ignore_index}"
        )));
    }
    let picked = log_softmax(logits, 1)
        .gather(1, index.reshape([batch, 1, h, w]))
        .reshape([batch, h, w]);
    let keep = keep.float();
    let count = keep.clone().sum().clamp_min(1.0);
    Ok(-(picked * keep).sum() / count)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, TensorData};

    fn leaf(values: Vec<f32>, shape: [usize; 4], device: &Device) -> Tensor<4> {
        Tensor::from_data(TensorData::new(values, shape), device).require_grad()
    }

    #[test]
    fn loss_and_gradient_match_hand_values() {
        let device = Device::flex().autodiff();
        // One image, 2 labels, 1x3 pixels; logits per pixel: (0, 0), (ln 3, 0), (5, -5).
        let ln3 = 3f32.ln();
        let logits = leaf(vec![0.0, ln3, 5.0, 0.0, 0.0, -5.0], [1, 2, 1, 3], &device);
        let targets =
            Tensor::<3, Int>::from_data(TensorData::new(vec![0i64, 0, 255], [1, 1, 3]), &device);
        let loss = pixel_cross_entropy(logits.clone(), targets, 255).unwrap();
        // Pixel 0: -ln(1/2); pixel 1: -ln(3/4); pixel 2 ignored. Mean over 2 pixels.
        let want = (2f32.ln() + (4f32 / 3.0).ln()) / 2.0;
        let got = loss.clone().into_scalar::<f32>();
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        // d loss / d logits = (softmax - one_hot) / 2 on kept pixels, 0 on the ignored one.
        let grad: Vec<f32> = logits
            .grad(&loss.backward())
            .unwrap()
            .into_data()
            .iter::<f32>()
            .collect();
        let want_grad = [-0.25, -0.125, 0.0, 0.25, 0.125, 0.0];
        for (g, w) in grad.iter().zip(want_grad) {
            assert!((g - w).abs() < 1e-6, "{grad:?} vs {want_grad:?}");
        }
    }

    #[test]
    fn all_ignored_gives_zero_loss_and_gradient() {
        let device = Device::flex().autodiff();
        let logits = leaf(vec![1.0, 2.0, 3.0, 4.0], [1, 2, 1, 2], &device);
        let targets =
            Tensor::<3, Int>::from_data(TensorData::new(vec![-1i64, -1], [1, 1, 2]), &device);
        let loss = pixel_cross_entropy(logits.clone(), targets, -1).unwrap();
        assert_eq!(loss.clone().into_scalar::<f32>(), 0.0);
        let grad: Vec<f32> = logits
            .grad(&loss.backward())
            .unwrap()
            .into_data()
            .iter::<f32>()
            .collect();
        assert!(grad.iter().all(|&g| g == 0.0), "{grad:?}");
    }

    #[test]
    fn out_of_range_target_is_named() {
        let device = Device::flex();
        let logits = Tensor::<4>::zeros([1, 2, 1, 2], &device);
        let targets =
            Tensor::<3, Int>::from_data(TensorData::new(vec![0i64, 2], [1, 1, 2]), &device);
        let error = pixel_cross_entropy(logits, targets, 255).unwrap_err().to_string();
        assert!(error.contains("neither in 0..2 nor the ignore index 255"), "{error}");
    }
}

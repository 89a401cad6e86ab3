//! The projection heads into the joint embedding: Linear, BatchNorm1d, ReLU, Linear.

use burn::module::Module;
use burn::nn::{BatchNorm, BatchNormConfig, Linear, LinearConfig};
use burn::tensor::activation::relu;
use burn::tensor::module::{batch_norm, batch_norm_train};
use burn::tensor::{Device, Tensor};

/// Whether a forward pass trains (batch statistics, Gumbel sampling) or evaluates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Running statistics, hard argmax assignment; as PyTorch's `model.eval()`.
    Eval,
    /// Batch statistics (updating the running ones), Gumbel straight-through assignment; as
    /// PyTorch's `model.train()`.
    Train,
}

/// PyTorch's momentum for BatchNorm running statistics.
const MOMENTUM: f64 = 0.1;

/// `fc2(relu(batch_norm(fc1(x))))`.
///
/// burn's `BatchNorm::forward` picks batch statistics from the device (autodiff) and a flag;
/// this head decides from an explicit [`Phase`] instead, so that evaluation on a training device
/// uses the running statistics and training updates them as PyTorch does (unbiased variance).
#[derive(Module, Debug)]
pub struct ProjectionHead {
    /// First linear layer.
    pub fc1: Linear,
    /// Batch norm over the hidden features (`gamma`, `beta`, running mean and variance).
    pub batch_norm: BatchNorm,
    /// Output linear layer.
    pub fc2: Linear,
}

impl ProjectionHead {
    /// A head `[input, hidden, output]` with freshly initialized weights.
    pub fn new(sizes: [usize; 3], device: &Device) -> Self {
        Self {
            fc1: LinearConfig::new(sizes[0], sizes[1]).init(device),
            batch_norm: BatchNormConfig::new(sizes[1])
                .with_momentum(MOMENTUM)
                .init(device),
            fc2: LinearConfig::new(sizes[1], sizes[2]).init(device),
        }
    }

    /// `[batch, input]` to `[batch, output]`. [`Phase::Train`] needs at least two rows.
    pub fn forward(&self, x: Tensor<2>, phase: Phase) -> Tensor<2> {
        let h = self.fc1.forward(x);
        let bn = &self.batch_norm;
        let h = match phase {
            Phase::Eval => {
                let device = h.device();
                batch_norm(
                    h,
                    bn.gamma.val(),
                    bn.beta.val(),
                    bn.running_mean.value_sync().to_device(&device),
                    bn.running_var.value_sync().to_device(&device),
                    bn.epsilon,
                )
            }
            Phase::Train => {
                let rows = h.dims()[0] as f64;
                let device = h.device();
                let result = batch_norm_train(h, bn.gamma.val(), bn.beta.val(), bn.epsilon);
                let unbiased = result.variance.detach() * (rows / (rows - 1.0).max(1.0));
                let mean = bn.running_mean.value_sync().to_device(&device) * (1.0 - MOMENTUM)
                    + result.mean.detach() * MOMENTUM;
                let var = bn.running_var.value_sync().to_device(&device) * (1.0 - MOMENTUM)
                    + unbiased * MOMENTUM;
                bn.running_mean.update(mean.detach());
                bn.running_var.update(var.detach());
                result.output
            }
        };
        self.fc2.forward(relu(h))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::module::Param;

    /// fc1 = identity, fc2 = identity: the head is relu(batch_norm(x)).
    fn identity_head(device: &Device) -> ProjectionHead {
        let mut head = ProjectionHead::new([2, 2, 2], device);
        for linear in [&mut head.fc1, &mut head.fc2] {
            linear.weight =
                Param::from_tensor(Tensor::from_floats([[1.0, 0.0], [0.0, 1.0]], device));
            linear.bias = Some(Param::from_tensor(Tensor::zeros([2], device)));
        }
        head
    }

    #[test]
    fn train_uses_batch_statistics_and_updates_running_ones_like_pytorch() {
        let device = Device::flex();
        let head = identity_head(&device);
        // Column 0: values 1, 3 (mean 2, biased var 1, unbiased var 2).
        let x = Tensor::<2>::from_floats([[1.0, 5.0], [3.0, 5.0]], &device);
        let out = head
            .forward(x.clone(), Phase::Train)
            .into_data()
            .iter::<f32>()
            .collect::<Vec<_>>();
        let scale = 1.0 / (1.0f32 + 1e-5).sqrt();
        let expected = [0.0, 0.0, scale, 0.0];
        for (g, w) in out.iter().zip(expected) {
            assert!((g - w).abs() < 1e-5, "{out:?}");
        }
        let mean = head
            .batch_norm
            .running_mean
            .value_sync()
            .into_data()
            .iter::<f32>()
            .collect::<Vec<_>>();
        let var = head
            .batch_norm
            .running_var
            .value_sync()
            .into_data()
            .iter::<f32>()
            .collect::<Vec<_>>();
        // running = 0.9 * (0, 1) init + 0.1 * batch (mean (2, 5), unbiased var (2, 0)).
        for (g, w) in mean
            .iter()
            .zip([0.2, 0.5])
            .chain(var.iter().zip([1.1, 0.9]))
        {
            assert!((g - w).abs() < 1e-6, "mean {mean:?} var {var:?}");
        }
        // Eval uses the running statistics: (3 - 0.2) / sqrt(1.1 + eps).
        let eval = head
            .forward(x, Phase::Eval)
            .into_data()
            .iter::<f32>()
            .collect::<Vec<_>>();
        assert!(
            (eval[2] - 2.8 / (1.1f32 + 1e-5).sqrt()).abs() < 1e-5,
            "{eval:?}"
        );
    }
}

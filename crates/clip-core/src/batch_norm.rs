//! PyTorch's `BatchNorm2d`, as CLIP's ResNet towers use it.
//!
//! burn's own `BatchNorm` feeds the biased batch variance into its running variance; PyTorch
//! (and so every released ResNet CLIP) feeds the unbiased one, and counts the batches it has
//! seen in `num_batches_tracked`. This module does both, so a fine-tuned tower's statistics
//! evolve exactly as open_clip's would.

use burn::config::Config;
use burn::module::{Flag, Module, Param, RunningState};
use burn::tensor::module::{batch_norm, batch_norm_train};
use burn::tensor::{Device, Tensor};

/// Configuration of a [`BatchNorm2d`].
#[derive(Config, Debug)]
pub struct BatchNorm2dConfig {
    /// Channels normalized.
    pub channels: usize,
    /// Added to the variance for numerical stability.
    #[config(default = 1e-5)]
    pub epsilon: f64,
    /// Weight of a new batch in the running statistics (PyTorch's default 0.1, which open_clip
    /// keeps).
    #[config(default = 0.1)]
    pub momentum: f64,
}

impl BatchNorm2dConfig {
    /// A layer with unit scale, zero shift, zero running mean and unit running variance.
    pub fn init(&self, device: &Device) -> BatchNorm2d {
        BatchNorm2d {
            gamma: Param::from_tensor(Tensor::ones([self.channels], device)),
            beta: Param::from_tensor(Tensor::zeros([self.channels], device)),
            running_mean: RunningState::new(Tensor::zeros([self.channels], device)),
            running_var: RunningState::new(Tensor::ones([self.channels], device)),
            num_batches_tracked: RunningState::new(Tensor::zeros([1], device)),
            training: Param::from_bool(true),
            momentum: self.momentum,
            epsilon: self.epsilon,
        }
    }
}

/// Batch normalization over `[batch, channels, H, W]`: batch statistics while training (on an
/// autodiff device, unless frozen), running statistics otherwise.
#[derive(Module, Debug)]
pub struct BatchNorm2d {
    /// Scale, `[channels]` (PyTorch's `weight`).
    pub gamma: Param<Tensor<1>>,
    /// Shift, `[channels]` (PyTorch's `bias`).
    pub beta: Param<Tensor<1>>,
    /// Running mean, `[channels]`.
    pub running_mean: RunningState<Tensor<1>>,
    /// Running (unbiased) variance, `[channels]`.
    pub running_var: RunningState<Tensor<1>>,
    /// Training forward passes seen, `[1]` (PyTorch's integer `num_batches_tracked`).
    pub num_batches_tracked: RunningState<Tensor<1>>,
    /// Whether training behavior is enabled; `freeze` turns it off, so a frozen layer
    /// normalizes with its running statistics and leaves them alone.
    pub training: Param<Flag>,
    /// Weight of a new batch in the running statistics.
    pub momentum: f64,
    /// Added to the variance for numerical stability.
    pub epsilon: f64,
}

impl BatchNorm2d {
    /// Normalizes `[batch, channels, H, W]`.
    pub fn forward(&self, input: Tensor<4>) -> Tensor<4> {
        if input.device().is_autodiff() && self.training.is_enabled() {
            self.forward_train(input)
        } else {
            let (device, dtype) = (input.device(), input.dtype());
            // The running statistics stay in their own float type (f32 under mixed precision).
            batch_norm(
                input,
                self.gamma.val(),
                self.beta.val(),
                self.running_mean.value_sync().to_device(&device).cast(dtype),
                self.running_var.value_sync().to_device(&device).cast(dtype),
                self.epsilon,
            )
        }
    }

    fn forward_train(&self, input: Tensor<4>) -> Tensor<4> {
        let [batch, _, height, width] = input.dims();
        let samples = (batch * height * width) as f64;
        let device = input.device();
        let result = batch_norm_train(input, self.gamma.val(), self.beta.val(), self.epsilon);
        if samples < 2.0 {
            // One value per channel has no variance to track (PyTorch refuses such a batch);
            // the running statistics are left as they are.
            return result.output;
        }
        // PyTorch normalizes with the biased variance but tracks the unbiased one.
        let correction = samples / (samples - 1.0);
        let mean = self.running_mean.value_sync().to_device(&device);
        let var = self.running_var.value_sync().to_device(&device);
        let count = self.num_batches_tracked.value_sync().to_device(&device);
        let momentum = self.momentum;
        let (batch_mean, batch_variance) = (result.mean.detach().cast(mean.dtype()), result.variance.detach().cast(var.dtype()));
        self.running_mean
            .update((mean * (1.0 - momentum) + batch_mean * momentum).detach());
        self.running_var
            .update((var * (1.0 - momentum) + batch_variance * (momentum * correction)).detach());
        self.num_batches_tracked.update((count + 1.0).detach());
        // Fold the update in now rather than at the next read, so that a checkpoint or an export
        // taken right after this step holds it (burn's `RunningState` defers it otherwise).
        for state in [&self.running_mean, &self.running_var, &self.num_batches_tracked] {
            state.value_sync();
        }
        result.output
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Device, Tensor, TensorData};

    use super::*;

    fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data().iter::<f32>().collect()
    }

    /// Two channels, one 2x2 image each, batch 2: channel 0 holds 1..8, channel 1 all 3.
    fn input(device: &Device) -> Tensor<4> {
        let data: Vec<f32> = vec![1., 2., 3., 4., 3., 3., 3., 3., 5., 6., 7., 8., 3., 3., 3., 3.];
        Tensor::from_data(TensorData::new(data, [2, 2, 2, 2]), device)
    }

    #[test]
    fn eval_uses_running_statistics() {
        let device = Device::flex();
        let norm = BatchNorm2dConfig::new(2).init(&device);
        norm.running_mean.update(Tensor::from_floats([1.0, 2.0], &device));
        norm.running_var.update(Tensor::from_floats([4.0, 0.25], &device));
        let out = values(norm.forward(input(&device)));
        let expected_first = (1.0 - 1.0) / (4.0f32 + 1e-5).sqrt();
        let expected_second = (3.0 - 2.0) / (0.25f32 + 1e-5).sqrt();
        assert!((out[0] - expected_first).abs() < 1e-6 && (out[4] - expected_second).abs() < 1e-5, "{out:?}");
    }

    #[test]
    fn training_updates_statistics_as_pytorch_does() {
        let device = Device::flex().autodiff();
        let norm = BatchNorm2dConfig::new(2).init(&device);
        let out = values(norm.forward(input(&device)));
        // Channel 0 holds 1..8: mean 4.5, biased variance 5.25, unbiased 6.
        let normalized = (1.0 - 4.5) / (5.25f32 + 1e-5).sqrt();
        assert!((out[0] - normalized).abs() < 1e-5, "{out:?}");
        // running = 0.9 * initial + 0.1 * batch statistic (unbiased for the variance).
        let mean = values(norm.running_mean.value_sync());
        let var = values(norm.running_var.value_sync());
        assert!((mean[0] - 0.45).abs() < 1e-6 && (mean[1] - 0.3).abs() < 1e-6, "{mean:?}");
        assert!((var[0] - (0.9 + 0.6)).abs() < 1e-6 && (var[1] - 0.9).abs() < 1e-6, "{var:?}");
        assert_eq!(values(norm.num_batches_tracked.value_sync()), [1.0]);
    }

    #[test]
    fn frozen_layer_keeps_its_statistics() {
        let device = Device::flex().autodiff();
        let norm = BatchNorm2dConfig::new(2).init(&device).freeze();
        norm.forward(input(&device));
        assert_eq!(values(norm.running_mean.value_sync()), [0.0, 0.0]);
        assert_eq!(values(norm.num_batches_tracked.value_sync()), [0.0]);
    }
}

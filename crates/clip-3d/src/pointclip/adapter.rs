//! PointCLIP's inter-view adapter (`Adapter` in the official `trainers/fewshot.py`): a
//! bottleneck MLP over the concatenated view features that produces a global feature, expands it
//! back into adapted per-view features and blends them with the input.
//!
//! With view features `f_v` (`[B, V, C]`) and fusion weights `alpha_v`:
//!
//! ```text
//! g  = Dropout(ReLU(BN_2(Linear_{VC->C}(Flatten(Dropout(BN_1(alpha_v f_v)))))))
//! a  = ReLU(Linear_{C->VC}(ReLU(Linear_{C->C}(g))))
//! out = ratio * a + (1 - ratio) * Flatten(f)
//! ```
//!
//! `BN_1` is `BatchNormPoint`: one `BatchNorm1d` over the `C` channels shared by all views. The
//! residual uses the unscaled input.

use burn::config::Config;
use burn::module::{Module, Param};
use burn::nn::{Dropout, DropoutConfig, Linear, LinearConfig};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor};
use clip_core::batch_norm::{BatchNorm2d, BatchNorm2dConfig};

/// Configuration of an [`Adapter`] (the official `MODEL.PROJECT.NUM_VIEWS`,
/// `MODEL.BACKBONE.CHANNEL` and `MODEL.ADAPTER.*`).
#[derive(Config, Debug, PartialEq)]
pub struct AdapterConfig {
    /// Views per cloud.
    pub num_views: usize,
    /// Per-view feature size (CLIP's embedding size).
    pub in_features: usize,
    /// Weight of the adapted features in the output (`ADAPTER.RATIO`).
    #[config(default = 0.6)]
    pub ratio: f64,
    /// Initial value of every view's fusion weight (`ADAPTER.INIT`).
    #[config(default = 0.5)]
    pub fusion_init: f64,
    /// Dropout probability of both dropout layers (`ADAPTER.DROPOUT`); off outside training.
    #[config(default = 0.075)]
    pub dropout: f64,
    /// BatchNorm epsilon (PyTorch's default).
    #[config(default = 1e-5)]
    pub batch_norm_eps: f64,
}

impl AdapterConfig {
    /// Checks the sizes and ratios; the error names the field.
    pub fn validate(&self) -> Result<(), String> {
        if self.num_views == 0 || self.in_features == 0 {
            return Err("adapter: num_views and in_features must be positive".into());
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(format!("adapter: dropout {} outside [0, 1)", self.dropout));
        }
        if !self.ratio.is_finite() {
            return Err(format!("adapter: ratio {} is not finite", self.ratio));
        }
        Ok(())
    }

    /// An adapter initialized as the official one (fusion weights at `fusion_init`, PyTorch's
    /// default Linear and BatchNorm initialization up to burn's random streams).
    pub fn init(&self, device: &Device) -> Adapter {
        let (views, channels) = (self.num_views, self.in_features);
        let norm = || BatchNorm2dConfig::new(channels).with_epsilon(self.batch_norm_eps).init(device);
        Adapter {
            fusion_ratio: Param::from_tensor(Tensor::full([views], self.fusion_init, device)),
            view_norm: norm(),
            view_dropout: DropoutConfig::new(self.dropout).init(),
            global_linear: LinearConfig::new(views * channels, channels).init(device),
            global_norm: norm(),
            global_dropout: DropoutConfig::new(self.dropout).init(),
            expand_linear: LinearConfig::new(channels, channels).init(device),
            view_linear: LinearConfig::new(channels, views * channels).init(device),
            num_views: views,
            in_features: channels,
            ratio: self.ratio,
        }
    }
}

/// The inter-view adapter. Field to official key: `fusion_ratio`; `view_norm` =
/// `global_f.0.bn`; `global_linear` = `global_f.3`; `global_norm` = `global_f.4`;
/// `expand_linear` = `view_f.0`; `view_linear` = `view_f.2` (see
/// [`official`](crate::pointclip::official)).
#[derive(Module, Debug)]
pub struct Adapter {
    /// Per-view fusion weights `[V]`, applied before the first BatchNorm.
    pub fusion_ratio: Param<Tensor<1>>,
    /// `BatchNormPoint`: BatchNorm1d over the channels, shared by the views.
    pub view_norm: BatchNorm2d,
    /// Dropout after it (`global_f.1`).
    pub view_dropout: Dropout,
    /// `Linear(V*C -> C)` on the flattened (view-major) features.
    pub global_linear: Linear,
    /// BatchNorm1d on the global feature.
    pub global_norm: BatchNorm2d,
    /// Dropout after the ReLU (`global_f.6`).
    pub global_dropout: Dropout,
    /// `Linear(C -> C)` of `view_f`.
    pub expand_linear: Linear,
    /// `Linear(C -> V*C)` of `view_f`.
    pub view_linear: Linear,
    /// Views per cloud.
    pub num_views: usize,
    /// Per-view feature size.
    pub in_features: usize,
    /// Weight of the adapted features in the output.
    pub ratio: f64,
}

/// The intermediate and final outputs of an [`Adapter`].
#[derive(Debug, Clone)]
pub struct AdapterOutput {
    /// `global_f(...)`: `[B, C]`.
    pub global: Tensor<2>,
    /// `view_f(global)`: `[B, V*C]`.
    pub view: Tensor<2>,
    /// The blend with the input: `[B, V*C]`.
    pub output: Tensor<2>,
}

/// BatchNorm1d on `[N, C]` through the 2-D layer (`[N, C, 1, 1]`: the same statistics, and the
/// same unbiased running variance while training).
fn batch_norm_1d(norm: &BatchNorm2d, x: Tensor<2>) -> Tensor<2> {
    let [rows, channels] = x.dims();
    norm.forward(x.reshape([rows, channels, 1, 1])).reshape([rows, channels])
}

impl Adapter {
    /// Adapted features `[B, V*C]` from per-view features `[B*V, C]` (row `b*V + v`, the
    /// layout of the image encoder's output).
    pub fn forward(&self, features: Tensor<2>) -> Tensor<2> {
        self.forward_parts(features).output
    }

    /// As [`forward`](Self::forward), with the global and view features.
    pub fn forward_parts(&self, features: Tensor<2>) -> AdapterOutput {
        let (views, channels) = (self.num_views, self.in_features);
        let [rows, width] = features.dims();
        assert!(
            width == channels && rows % views == 0,
            "adapter: features [{rows}, {width}] are not [B*{views}, {channels}]"
        );
        let batch = rows / views;
        let residual = features.clone().reshape([batch, views * channels]);
        let scaled = features.reshape([batch, views, channels]) * self.fusion_ratio.val().reshape([1, views, 1]);
        let normed = batch_norm_1d(&self.view_norm, scaled.reshape([batch * views, channels]));
        let flat = self.view_dropout.forward(normed).reshape([batch, views * channels]);
        let global = self.global_linear.forward(flat);
        let global = self.global_dropout.forward(relu(batch_norm_1d(&self.global_norm, global)));
        let view = relu(self.view_linear.forward(relu(self.expand_linear.forward(global.clone()))));
        let output = view.clone() * self.ratio + residual * (1.0 - self.ratio);
        AdapterOutput { global, view, output }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_and_residual() {
        let device = Device::flex();
        let config = AdapterConfig::new(3, 4).with_ratio(0.0);
        assert!(config.validate().is_ok());
        let adapter = config.init(&device);
        let features = Tensor::<2>::random([6, 4], burn::tensor::Distribution::Default, &device);
        let parts = adapter.forward_parts(features.clone());
        assert_eq!(parts.global.dims(), [2, 4]);
        assert_eq!(parts.view.dims(), [2, 12]);
        // ratio 0: the output is the input, flattened view-major.
        let out: Vec<f32> = parts.output.into_data().iter::<f32>().collect();
        let input: Vec<f32> = features.into_data().iter::<f32>().collect();
        assert_eq!(out, input);
        assert_eq!(adapter.fusion_ratio.val().into_data().iter::<f32>().collect::<Vec<_>>(), [0.5; 3]);
    }

    #[test]
    fn bad_configs_are_named() {
        assert!(AdapterConfig::new(0, 4).validate().unwrap_err().contains("num_views"));
        assert!(AdapterConfig::new(2, 4).with_dropout(1.0).validate().unwrap_err().contains("dropout"));
    }
}

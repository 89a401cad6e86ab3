//! The LSeg model: CLIP's image tower and DPT decoder give per-pixel embeddings, CLIP's text
//! tower gives label embeddings, and their scaled cosine similarities are the logits.

use burn::config::Config;
use burn::module::{Module, Param};
use burn::nn::PaddingConfig2d;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::tensor::activation::{leaky_relu, tanh};
use burn::tensor::{Device, Int, Tensor};
use clip_core::l2_normalize;
use clip_core::model::clamp_log_logit_scale;
use clip_core::text::TextTransformer;
use clip_core::vision::VisionTransformer;
use serde::{Deserialize, Serialize};

use crate::lseg::backbone::TimmVit;
use crate::lseg::decoder::{DptDecoder, DptIntermediates, resize_bilinear};

/// The spatial regularization block of the official code (`arch_option` 1 or 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RegularizationKind {
    /// `bottleneck_block` (`arch_option = 1`): `y_l = conv(x_l) + max_l' x_l'`.
    Bottleneck,
    /// `depthwise_block` (`arch_option = 2`): `y_l = conv(x_l)`.
    Depthwise,
}

/// The activation between applications of the regularization block (the official
/// `activation` argument).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RegularizationActivation {
    /// `lrelu`: LeakyReLU with PyTorch's default slope 0.01.
    LeakyRelu,
    /// `tanh`.
    Tanh,
}

/// Configuration of a [`SpatialRegularization`] block.
#[derive(Config, Debug)]
pub struct SpatialRegularizationConfig {
    /// How many times the block is applied (LSeg's `block_depth`, at least 1).
    pub depth: usize,
    /// Negative slope of the LeakyReLU between applications (PyTorch's default).
    #[config(default = 0.01)]
    pub negative_slope: f64,
    /// Bottleneck (with the label maximum) or plain depthwise block.
    #[config(default = "RegularizationKind::Bottleneck")]
    pub kind: RegularizationKind,
    /// Activation between applications.
    #[config(default = "RegularizationActivation::LeakyRelu")]
    pub activation: RegularizationActivation,
}

impl SpatialRegularizationConfig {
    /// Builds the block with burn's default initialization.
    pub fn init(&self, device: &Device) -> SpatialRegularization {
        SpatialRegularization {
            depthwise: Conv2dConfig::new([1, 1], [3, 3])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init(device),
            depth: self.depth,
            negative_slope: self.negative_slope,
            kind: self.kind,
            activation: self.activation,
        }
    }
}

/// LSeg's spatial regularization over the logits `[batch, labels, h, w]`: "bottleneck"
/// `y = conv3x3(x_l) + max_l x_l` or "depthwise" `y = conv3x3(x_l)`, with one 3x3 kernel
/// shared by every label channel (so any label count works), repeated `depth` times with the
/// same weights and the activation between repetitions (none after the last), as the
/// official `head_block`.
#[derive(Module, Debug)]
pub struct SpatialRegularization {
    /// The shared one-channel 3x3 convolution.
    pub depthwise: Conv2d,
    /// Repetitions.
    pub depth: usize,
    /// LeakyReLU slope.
    pub negative_slope: f64,
    /// Bottleneck or depthwise.
    #[module(skip)]
    pub kind: RegularizationKind,
    /// Activation between applications.
    #[module(skip)]
    pub activation: RegularizationActivation,
}

impl SpatialRegularization {
    /// Same shape in and out, `[batch, labels, h, w]`.
    pub fn forward(&self, mut x: Tensor<4>) -> Tensor<4> {
        let [batch, labels, h, w] = x.dims();
        for step in 0..self.depth {
            let max = (self.kind == RegularizationKind::Bottleneck).then(|| x.clone().max_dim(1));
            let conv = self
                .depthwise
                .forward(x.reshape([batch * labels, 1, h, w]))
                .reshape([batch, labels, h, w]);
            x = match max {
                Some(max) => conv + max,
                None => conv,
            };
            if step + 1 < self.depth {
                x = match self.activation {
                    RegularizationActivation::LeakyRelu => leaky_relu(x, self.negative_slope),
                    RegularizationActivation::Tanh => tanh(x),
                };
            }
        }
        x
    }
}

/// LSeg (Li et al., ICLR 2022).
///
/// Parameter paths: `visual.*` (CLIP image tower; its `proj` is unused), `vit.*` (the timm
/// ViT encoder of the official code, with [`LsegBackbone::Timm`](crate::lseg::LsegBackbone)),
/// `text.*` (CLIP text tower including `text.text_projection`; freeze the prefix `text` as the
/// paper does), `decoder.*` (DPT), `regularization.*` (when enabled), `logit_scale` and
/// `clip_logit_scale` (timm backbone only).
#[derive(Module, Debug)]
pub struct Lseg {
    /// CLIP's image tower: the encoder with the CLIP backbone; with the timm backbone it is
    /// unused (as the official `clip_pretrained.visual`) and held for the checkpoint.
    pub visual: VisionTransformer,
    /// The official encoder, a timm ViT (`pretrained.model`), with the timm backbone.
    pub vit: Option<TimmVit>,
    /// CLIP's text tower and projection, the label encoder.
    pub text: TextTransformer,
    /// The DPT decoder and embedding head.
    pub decoder: DptDecoder,
    /// Optional spatial regularization of the logits.
    pub regularization: Option<SpatialRegularization>,
    /// Log of the logit scale, `[1]`.
    pub logit_scale: Param<Tensor<1>>,
    /// CLIP's own log logit scale (`clip_pretrained.logit_scale`) with the timm backbone:
    /// unused by LSeg, held for the checkpoint.
    pub clip_logit_scale: Option<Param<Tensor<1>>>,
    /// The encoder blocks (0-based) feeding the decoder, shallowest first.
    pub hooks: [usize; 4],
}

impl Lseg {
    /// L2-normalized per-pixel embeddings at the decoder's resolution, `[batch, embed_dim,
    /// 8 gh, 8 gw]` for a grid of `gh x gw` patches (half the input size for patch 16;
    /// `16 gh, 16 gw` with [`Resample::PATCH_32`](crate::lseg::Resample::PATCH_32)).
    pub fn decoder_embeddings(&self, images: Tensor<4>) -> Tensor<4> {
        let (hidden, grid) = self.hook_states(images);
        normalize_channels(self.decoder.forward(hidden, grid))
    }

    /// The outputs of the four `hooks` blocks of the encoder, `[batch, 1 + gh*gw, width]`
    /// (class token first), and the patch grid `[gh, gw]`.
    pub fn hook_states(&self, images: Tensor<4>) -> ([Tensor<3>; 4], [usize; 2]) {
        match &self.vit {
            Some(vit) => {
                let last = self.hooks.iter().copied().max().unwrap_or(0);
                let (states, grid) = vit.forward_blocks(images, last);
                (self.hooks.map(|layer| states[layer].clone()), grid)
            }
            None => {
                let features = self.visual.forward_features(images, true);
                (self.hooks.map(|layer| features.hidden_states[layer].clone()), features.grid)
            }
        }
    }

    /// The decoder's intermediate maps for images `[batch, 3, H, W]` (see
    /// [`DptIntermediates`]); `embeddings` are not normalized.
    pub fn decoder_intermediates(&self, images: Tensor<4>) -> DptIntermediates {
        let (hidden, grid) = self.hook_states(images);
        self.decoder.forward_intermediates(hidden, grid)
    }

    /// L2-normalized per-pixel embeddings at the input resolution, `[batch, embed_dim, H, W]`
    /// from images `[batch, 3, H, W]` (the decoder output resized bilinearly, then
    /// renormalized).
    pub fn pixel_embeddings(&self, images: Tensor<4>) -> Tensor<4> {
        let [_, _, h, w] = images.dims();
        normalize_channels(resize_bilinear(self.decoder_embeddings(images), [h, w]))
    }

    /// L2-normalized label embeddings `[labels, embed_dim]` from token ids `[labels, context]`.
    pub fn label_embeddings(&self, tokens: Tensor<2, Int>) -> Tensor<2> {
        l2_normalize(self.text.forward(tokens))
    }

    /// `exp(logit_scale)` as a `[1]` tensor.
    pub fn logit_scale(&self) -> Tensor<1> {
        self.logit_scale.val().exp()
    }

    /// Logits `[batch, labels, H, W]` for images `[batch, 3, H, W]` against any label set,
    /// given as normalized embeddings `[labels, embed_dim]`.
    ///
    /// As in the official code, `exp(logit_scale) <e_pixel, e_label>` is computed at the
    /// decoder's resolution, spatially regularized when enabled, then resized bilinearly
    /// (`align_corners=True`) to the input size.
    pub fn logits(&self, images: Tensor<4>, label_embeds: Tensor<2>) -> Tensor<4> {
        let [_, _, height, width] = images.dims();
        resize_bilinear(self.logits_lowres(images, label_embeds), [height, width])
    }

    /// The logits at the decoder's resolution, after the spatial regularization (the input of
    /// the official `output_conv`), `[batch, labels, h, w]`.
    pub fn logits_lowres(&self, images: Tensor<4>, label_embeds: Tensor<2>) -> Tensor<4> {
        let pixels = self.decoder_embeddings(images);
        let [batch, dim, h, w] = pixels.dims();
        let labels = label_embeds.dims()[0];
        let logits = pixels
            .permute([0, 2, 3, 1])
            .reshape([batch * h * w, dim])
            .matmul(label_embeds.transpose())
            * self.logit_scale().unsqueeze();
        let logits = logits.reshape([batch, h, w, labels]).permute([0, 3, 1, 2]);
        match &self.regularization {
            Some(block) => block.forward(logits),
            None => logits,
        }
    }

    /// The most likely label per pixel, `[batch, H, W]`, for images `[batch, 3, H, W]` and
    /// tokenized label names `[labels, context]`.
    pub fn segment(&self, images: Tensor<4>, label_tokens: Tensor<2, Int>) -> Tensor<3, Int> {
        let labels = self.label_embeddings(label_tokens);
        self.logits(images, labels).argmax(1).squeeze_dim(1)
    }

    /// Clamps the log logit scale to `[0, ln 100]`, as CLIP does after each optimizer step.
    pub fn clamp_logit_scale(mut self) -> Self {
        self.logit_scale = clamp_log_logit_scale(self.logit_scale);
        self
    }
}

/// Divides each pixel of `[batch, channels, h, w]` by the L2 norm over its channels.
fn normalize_channels(x: Tensor<4>) -> Tensor<4> {
    let norm = x.clone().square().sum_dim(1).sqrt().clamp_min(1e-12);
    x / norm
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lseg::config::Readout;
    use crate::lseg::config::tests::tiny_config;
    use burn::tensor::{Distribution, TensorData};

    fn images(batch: usize, side: usize, device: &Device) -> Tensor<4> {
        Tensor::random(
            [batch, 3, side, side],
            Distribution::Normal(0.0, 1.0),
            device,
        )
    }

    fn tokens(rows: &[[i64; 4]], device: &Device) -> Tensor<2, Int> {
        let flat: Vec<i64> = rows.iter().flatten().copied().collect();
        Tensor::from_data(TensorData::new(flat, [rows.len(), 4]), device)
    }

    fn values<const D: usize>(x: Tensor<D>) -> Vec<f32> {
        x.into_data().iter::<f32>().collect()
    }

    #[test]
    fn output_shapes_for_hooks_readouts_and_regularization() {
        let device = Device::flex();
        let settings = [
            (None, Readout::Project, false),
            (Some(vec![3, 3, 3, 3]), Readout::Ignore, false),
            (Some(vec![0, 2, 1, 3]), Readout::Add, true),
        ];
        let labels = tokens(&[[1, 5, 63, 0], [1, 6, 7, 63], [1, 63, 0, 0]], &device);
        for (hooks, readout, regularization) in settings {
            let model = tiny_config()
                .with_hooks(hooks)
                .with_readout(readout)
                .with_spatial_regularization(regularization)
                .with_regularization_depth(2)
                .init(&device)
                .unwrap();
            let x = images(2, 32, &device);
            assert_eq!(model.decoder_embeddings(x.clone()).dims(), [2, 16, 64, 64]);
            let pixels = model.pixel_embeddings(x.clone());
            assert_eq!(pixels.dims(), [2, 16, 32, 32]);
            for norm in values(pixels.square().sum_dim(1).sqrt()) {
                assert!((norm - 1.0).abs() < 1e-4, "pixel embedding norm {norm}");
            }
            let label_embeds = model.label_embeddings(labels.clone());
            assert_eq!(label_embeds.dims(), [3, 16]);
            assert_eq!(model.logits(x.clone(), label_embeds).dims(), [2, 3, 32, 32]);
            let map = model.segment(x, labels.clone());
            assert_eq!(map.dims(), [2, 32, 32]);
            assert!(values(map.float()).iter().all(|&l| (0.0..3.0).contains(&l)));
        }
        // A 48-pixel input (12x12 grid, positional embedding resized) works too.
        let model = tiny_config().init(&device).unwrap();
        let logits = model.logits(images(1, 48, &device), model.label_embeddings(labels));
        assert_eq!(logits.dims(), [1, 3, 48, 48]);
    }

    #[test]
    fn logits_are_scaled_cosines_of_any_label_set() {
        let device = Device::flex();
        let model = tiny_config().init(&device).unwrap();
        let x = images(1, 32, &device);
        let labels = model.label_embeddings(tokens(
            &[[1, 5, 63, 0], [1, 9, 10, 63], [1, 63, 0, 0]],
            &device,
        ));
        let all = model.logits(x.clone(), labels.clone());
        assert_eq!(all.dims(), [1, 3, 32, 32]);
        // Scoring one label alone gives the same map as scoring it among others.
        let alone = model.logits(x.clone(), labels.clone().narrow(0, 1, 1));
        let (max, _) =
            clip_fixtures::abs_diff(&values(all.clone().narrow(1, 1, 1)), &values(alone));
        assert!(max < 1e-5, "label logits depend on the label set: {max}");
        // Every logit is at most exp(logit_scale) = 1 / 0.07 in magnitude (cosine * scale).
        let bound = 1.0 / 0.07 + 1e-3;
        assert!(values(all.clone()).iter().all(|v| v.abs() <= bound));
        // align_corners=True keeps the corner pixel: there the logits are exactly
        // exp(logit_scale) <pixel, label> of the decoder's embeddings.
        let corner = |t: Tensor<4>| t.narrow(2, 0, 1).narrow(3, 0, 1);
        let pixel = corner(model.decoder_embeddings(x)).reshape([1, 16]);
        let expected = values(pixel.matmul(labels.transpose()) / 0.07);
        let (max, _) = clip_fixtures::abs_diff(&values(corner(all)), &expected);
        assert!(max < 1e-4, "corner logits differ by {max}");
    }

    #[test]
    fn spatial_regularization_adds_the_label_maximum() {
        let device = Device::flex();
        let mut block = SpatialRegularizationConfig::new(1).init(&device);
        // Kernel: identity (centre 2), bias 0.5: y = 2 x + 0.5 + max_l x.
        let mut kernel = vec![0.0f32; 9];
        kernel[4] = 2.0;
        block.depthwise.weight = Param::from_tensor(Tensor::from_data(
            TensorData::new(kernel, [1, 1, 3, 3]),
            &device,
        ));
        block.depthwise.bias = Some(Param::from_tensor(Tensor::from_floats([0.5], &device)));
        let x = Tensor::<4>::from_data(
            TensorData::new(vec![1.0f32, -2.0, 3.0, 0.0], [1, 2, 1, 2]),
            &device,
        );
        // Pixel 0: labels (1, 3), max 3; pixel 1: labels (-2, 0), max 0.
        let want = [
            2.0 + 0.5 + 3.0,
            -4.0 + 0.5 + 0.0,
            6.0 + 0.5 + 3.0,
            0.5 + 0.0,
        ];
        let got = values(block.forward(x.clone()));
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-5, "{got:?} vs {want:?}");
        }
        // Depth 2 applies the same block twice with a LeakyReLU in between.
        block.depth = 2;
        let once: Vec<f32> = want
            .iter()
            .map(|&v| if v < 0.0 { 0.01 * v } else { v })
            .collect();
        let max = [once[0].max(once[2]), once[1].max(once[3])];
        let want2 = [
            2.0 * once[0] + 0.5 + max[0],
            2.0 * once[1] + 0.5 + max[1],
            2.0 * once[2] + 0.5 + max[0],
            2.0 * once[3] + 0.5 + max[1],
        ];
        let got = values(block.forward(x));
        for (g, w) in got.iter().zip(want2) {
            assert!((g - w).abs() < 1e-5, "{got:?} vs {want2:?}");
        }
    }

    #[test]
    fn depthwise_regularization_has_no_maximum_and_any_activation() {
        let device = Device::flex();
        let mut block = SpatialRegularizationConfig::new(2)
            .with_kind(RegularizationKind::Depthwise)
            .with_activation(RegularizationActivation::Tanh)
            .init(&device);
        // Kernel: identity times 2, bias 0.5: y = 2 x + 0.5, twice, tanh in between.
        let mut kernel = vec![0.0f32; 9];
        kernel[4] = 2.0;
        block.depthwise.weight = Param::from_tensor(Tensor::from_data(
            TensorData::new(kernel, [1, 1, 3, 3]),
            &device,
        ));
        block.depthwise.bias = Some(Param::from_tensor(Tensor::from_floats([0.5], &device)));
        let input = [1.0f32, -2.0, 3.0, 0.0];
        let x = Tensor::<4>::from_data(TensorData::new(input.to_vec(), [1, 2, 1, 2]), &device);
        let got = values(block.forward(x));
        for (g, x) in got.iter().zip(input) {
            let want = 2.0 * (2.0 * x + 0.5f32).tanh() + 0.5;
            assert!((g - want).abs() < 1e-5, "{got:?}");
        }
    }

    #[test]
    fn clamp_keeps_the_scale_in_range() {
        let device = Device::flex();
        let mut model = tiny_config().init(&device).unwrap();
        model.logit_scale = Param::from_tensor(Tensor::from_floats([7.0], &device));
        let scale = model
            .clamp_logit_scale()
            .logit_scale
            .val()
            .into_scalar::<f32>();
        assert!((scale as f64 - clip_core::model::MAX_LOG_LOGIT_SCALE).abs() < 1e-6);
    }
}

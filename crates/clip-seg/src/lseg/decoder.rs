//! DPT's decoder (Ranftl et al., 2021) as LSeg uses it: four ViT hidden states reassembled
//! into an image-like pyramid, fused coarse-to-fine by RefineNet-style blocks, and a 1x1 head
//! to the text embedding size.

use burn::config::Config;
use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig, ConvTranspose2d, ConvTranspose2dConfig};
use burn::nn::{Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::activation::{gelu, relu};
use burn::tensor::module::interpolate;
use burn::tensor::ops::{InterpolateMode, InterpolateOptions};
use burn::tensor::{Device, Tensor};
use clip_core::batch_norm::{BatchNorm2d, BatchNorm2dConfig};
use serde::{Deserialize, Serialize};

use crate::lseg::config::Readout;

/// Bilinear resize of `[batch, channels, h, w]` to `size` with `align_corners=True`, as DPT's
/// fusion blocks and LSeg's output head do.
pub fn resize_bilinear(x: Tensor<4>, size: [usize; 2]) -> Tensor<4> {
    let [_, _, h, w] = x.dims();
    if [h, w] == size {
        return x;
    }
    let options = InterpolateOptions::new(InterpolateMode::Bilinear)
        .with_align_corners(true)
        .with_output_size(size);
    interpolate(x, options)
}

/// How a reassemble stage resamples its `[gh, gw]` token map (after the 1x1 convolution).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Resample {
    /// `factor`x up: a transposed convolution with kernel = stride = `factor` (with bias).
    Up(usize),
    /// Unchanged.
    Keep,
    /// 0.5x: a 3x3 convolution with stride 2 and padding 1 (with bias).
    Down,
}

impl Resample {
    /// DPT's ViT-L/16 and ViT-B/16 stages (`_make_vit_b16_backbone`): 4x, 2x, 1x, 0.5x.
    pub const PATCH_16: [Resample; 4] = [Resample::Up(4), Resample::Up(2), Resample::Keep, Resample::Down];
    /// lang-seg's ViT-B/32 stages (`_make_vit_b32_backbone`): 8x, 4x, 2x, 1x.
    pub const PATCH_32: [Resample; 4] = [Resample::Up(8), Resample::Up(4), Resample::Up(2), Resample::Keep];
}

/// Configuration of a [`DptDecoder`].
#[derive(Config, Debug)]
pub struct DptDecoderConfig {
    /// Width of the ViT's tokens.
    pub width: usize,
    /// Channels of the four reassembled stages (finest first).
    pub stage_channels: [usize; 4],
    /// Channels of the fused feature maps.
    pub features: usize,
    /// Channels of the output (the text embedding size).
    pub out_channels: usize,
    /// Class-token handling.
    #[config(default = "Readout::Project")]
    pub readout: Readout,
    /// Batch norm inside the residual convolution units.
    #[config(default = true)]
    pub batch_norm: bool,
    /// Resampling of the four stages (finest first).
    #[config(default = "Resample::PATCH_16")]
    pub resampling: [Resample; 4],
    /// Whether the coarsest fusion block also holds a skip unit. It never runs (that block has
    /// no skip input), but the official `LSegNet` builds one (`refinenet4.resConfUnit1`) and
    /// checkpoints it.
    #[config(default = false)]
    pub coarsest_skip_unit: bool,
}

impl DptDecoderConfig {
    /// Builds the decoder with burn's default initialization.
    pub fn init(&self, device: &Device) -> DptDecoder {
        let stage = |index: usize| {
            let channels = self.stage_channels[index];
            let conv = |in_channels, kernel, stride, padding| {
                Conv2dConfig::new([in_channels, channels], [kernel, kernel])
                    .with_stride([stride, stride])
                    .with_padding(PaddingConfig2d::Explicit(
                        padding, padding, padding, padding,
                    ))
            };
            let upsample = |factor: usize| {
                ConvTranspose2dConfig::new([channels, channels], [factor, factor])
                    .with_stride([factor, factor])
                    .init(device)
            };
            ReassembleStage {
                readout_projection: (self.readout == Readout::Project)
                    .then(|| LinearConfig::new(2 * self.width, self.width).init(device)),
                readout: self.readout,
                project: conv(self.width, 1, 1, 0).init(device),
                upsample: match self.resampling[index] {
                    Resample::Up(factor) => Some(upsample(factor)),
                    _ => None,
                },
                downsample: (self.resampling[index] == Resample::Down)
                    .then(|| conv(channels, 3, 2, 1).init(device)),
                to_features: Conv2dConfig::new([channels, self.features], [3, 3])
                    .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                    .with_bias(false)
                    .init(device),
            }
        };
        let fusion = |with_skip: bool| FeatureFusionBlock {
            skip_unit: with_skip.then(|| self.residual_unit(device)),
            refine_unit: self.residual_unit(device),
            out_conv: Conv2dConfig::new([self.features, self.features], [1, 1]).init(device),
        };
        DptDecoder {
            stages: (0..4).map(stage).collect(),
            // Coarsest first: the deepest block has no skip input.
            fusion: vec![fusion(self.coarsest_skip_unit), fusion(true), fusion(true), fusion(true)],
            head: Conv2dConfig::new([self.features, self.out_channels], [1, 1]).init(device),
        }
    }

    fn residual_unit(&self, device: &Device) -> ResidualConvUnit {
        let conv = || {
            Conv2dConfig::new([self.features, self.features], [3, 3])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .with_bias(!self.batch_norm)
                .init(device)
        };
        let norm = || {
            self.batch_norm
                .then(|| BatchNorm2dConfig::new(self.features).init(device))
        };
        ResidualConvUnit {
            conv1: conv(),
            norm1: norm(),
            conv2: conv(),
            norm2: norm(),
        }
    }
}

/// One of DPT's four reassemble operations: readout, tokens to a `[width, gh, gw]` map, 1x1
/// convolution, resampling ([`Resample`]: 8x, 4x, 2x, 1x or 0.5x), then a 3x3 convolution to
/// the fused width (DPT's `layerN_rn`).
#[derive(Module, Debug)]
pub struct ReassembleStage {
    /// `Linear(2w, w)` followed by GELU over `[patch; class]` (readout `project` only).
    pub readout_projection: Option<Linear>,
    /// Class-token handling.
    #[module(skip)]
    pub readout: Readout,
    /// 1x1 convolution, width to stage channels.
    pub project: Conv2d,
    /// Transposed convolution with kernel = stride = the factor ([`Resample::Up`]).
    pub upsample: Option<ConvTranspose2d>,
    /// 3x3 convolution with stride 2 ([`Resample::Down`]).
    pub downsample: Option<Conv2d>,
    /// 3x3 convolution to the fused width, no bias.
    pub to_features: Conv2d,
}

impl ReassembleStage {
    /// `[batch, features, h, w]` from a hidden state `[batch, 1 + gh * gw, width]` (class
    /// token first) over a `grid` of `[gh, gw]` patches.
    pub fn forward(&self, hidden: Tensor<3>, grid: [usize; 2]) -> Tensor<4> {
        self.to_features.forward(self.reassemble(hidden, grid))
    }

    /// The stage's map before `to_features`, `[batch, channels, h, w]` (DPT's `layer_N`, the
    /// output of `forward_vit`).
    pub fn reassemble(&self, hidden: Tensor<3>, grid: [usize; 2]) -> Tensor<4> {
        let [batch, tokens, width] = hidden.dims();
        let class = hidden.clone().narrow(1, 0, 1);
        let patches = hidden.narrow(1, 1, tokens - 1);
        let patches = match (self.readout, &self.readout_projection) {
            (Readout::Project, Some(projection)) => {
                let class = class.expand([batch, tokens - 1, width]);
                gelu(projection.forward(Tensor::cat(vec![patches, class], 2)))
            }
            (Readout::Add, _) => patches + class,
            _ => patches,
        };
        let map = patches
            .swap_dims(1, 2)
            .reshape([batch, width, grid[0], grid[1]]);
        let mut x = self.project.forward(map);
        if let Some(upsample) = &self.upsample {
            x = upsample.forward(x);
        }
        if let Some(downsample) = &self.downsample {
            x = downsample.forward(x);
        }
        x
    }
}

/// RefineNet's residual convolution unit: `x + conv(relu(conv(relu(x))))`, with batch norm
/// after each convolution when configured.
#[derive(Module, Debug)]
pub struct ResidualConvUnit {
    /// First 3x3 convolution.
    pub conv1: Conv2d,
    /// Norm after `conv1` (PyTorch's `BatchNorm2d`).
    pub norm1: Option<BatchNorm2d>,
    /// Second 3x3 convolution.
    pub conv2: Conv2d,
    /// Norm after `conv2`.
    pub norm2: Option<BatchNorm2d>,
}

impl ResidualConvUnit {
    /// Same shape in and out, `[batch, features, h, w]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let mut out = self.conv1.forward(relu(x.clone()));
        if let Some(norm) = &self.norm1 {
            out = norm.forward(out);
        }
        out = self.conv2.forward(relu(out));
        if let Some(norm) = &self.norm2 {
            out = norm.forward(out);
        }
        out + x
    }
}

/// DPT's feature fusion block: `refine(x + unit(skip))`, bilinear upsampling
/// (`align_corners=True`), then a 1x1 convolution.
#[derive(Module, Debug)]
pub struct FeatureFusionBlock {
    /// Applied to the skip input (absent in the coarsest block, which has none, unless
    /// [`DptDecoderConfig::coarsest_skip_unit`] keeps the official code's unused one).
    pub skip_unit: Option<ResidualConvUnit>,
    /// Applied to the sum.
    pub refine_unit: ResidualConvUnit,
    /// 1x1 output convolution.
    pub out_conv: Conv2d,
}

impl FeatureFusionBlock {
    /// Fuses `x` with `skip` (same shape) and resizes to `size`, `[batch, features, ..size]`.
    pub fn forward(&self, x: Tensor<4>, skip: Option<Tensor<4>>, size: [usize; 2]) -> Tensor<4> {
        let x = match (skip, &self.skip_unit) {
            (Some(skip), Some(unit)) => x + unit.forward(skip),
            _ => x,
        };
        self.out_conv
            .forward(resize_bilinear(self.refine_unit.forward(x), size))
    }
}

/// The DPT decoder with LSeg's embedding head.
#[derive(Module, Debug)]
pub struct DptDecoder {
    /// Reassemble operations, finest (4x) first.
    pub stages: Vec<ReassembleStage>,
    /// Fusion blocks, coarsest first (DPT's `refinenet4` .. `refinenet1`).
    pub fusion: Vec<FeatureFusionBlock>,
    /// 1x1 convolution from the fused features to the embedding size (LSeg's `head1`).
    pub head: Conv2d,
}

impl DptDecoder {
    /// Unnormalized per-pixel embeddings `[batch, out_channels, h, w]` from four hidden states
    /// `[batch, 1 + gh * gw, width]` (shallowest first) over a `grid` of patches; `h, w` are
    /// twice the finest stage's size (`8 gh, 8 gw` with [`Resample::PATCH_16`], `16 gh, 16 gw`
    /// with [`Resample::PATCH_32`]).
    ///
    /// Each fusion block upsamples to the size of the next finer stage (2x for even grids, as
    /// in DPT; odd grids, e.g. 7x7 for ViT-B/32 at 224 pixels, work too), the last one 2x.
    pub fn forward(&self, hidden_states: [Tensor<3>; 4], grid: [usize; 2]) -> Tensor<4> {
        self.forward_intermediates(hidden_states, grid).embeddings
    }

    /// As [`forward`](Self::forward), keeping every intermediate map (the tensors the official
    /// `LSegNet.forward` names).
    pub fn forward_intermediates(&self, hidden_states: [Tensor<3>; 4], grid: [usize; 2]) -> DptIntermediates {
        let mut index = 0;
        let layers = hidden_states.map(|hidden| {
            let map = self.stages[index].reassemble(hidden, grid);
            index += 1;
            map
        });
        let layers_rn: [Tensor<4>; 4] = std::array::from_fn(|i| self.stages[i].to_features.forward(layers[i].clone()));
        let size = |map: &Tensor<4>| {
            let [_, _, h, w] = map.dims();
            [h, w]
        };
        let [_, _, h1, w1] = layers_rn[0].dims();
        let path_4 = self.fusion[0].forward(layers_rn[3].clone(), None, size(&layers_rn[2]));
        let path_3 = self.fusion[1].forward(path_4.clone(), Some(layers_rn[2].clone()), size(&layers_rn[1]));
        let path_2 = self.fusion[2].forward(path_3.clone(), Some(layers_rn[1].clone()), size(&layers_rn[0]));
        let path_1 = self.fusion[3].forward(path_2.clone(), Some(layers_rn[0].clone()), [2 * h1, 2 * w1]);
        let embeddings = self.head.forward(path_1.clone());
        DptIntermediates { layers, layers_rn, paths: [path_1, path_2, path_3, path_4], embeddings }
    }
}

/// The intermediate maps of a [`DptDecoder`], named as in the official code (index 0 is
/// `layer_1` / `path_1`, the finest).
#[derive(Debug, Clone)]
pub struct DptIntermediates {
    /// Reassembled stages before `layerN_rn` (`layer_1..4`, the output of `forward_vit`).
    pub layers: [Tensor<4>; 4],
    /// After `layerN_rn`, `[batch, features, ..]` (`layer_1_rn..4`).
    pub layers_rn: [Tensor<4>; 4],
    /// Fusion outputs: `paths[i]` is `path_{i+1}`, `path_4 = refinenet4(layer_4_rn)` the
    /// coarsest, `path_1` the decoder's output before the head.
    pub paths: [Tensor<4>; 4],
    /// `head1(path_1)`: unnormalized pixel embeddings `[batch, out_channels, h, w]`.
    pub embeddings: Tensor<4>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;

    #[test]
    fn bilinear_resize_aligns_corners() {
        let device = Device::flex();
        // align_corners=True maps the corners onto each other: [0, 3] -> [0, 1, 2, 3].
        let x = Tensor::<4>::from_data(TensorData::new(vec![0.0f32, 3.0], [1, 1, 1, 2]), &device);
        let y: Vec<f32> = resize_bilinear(x, [1, 4])
            .into_data()
            .iter::<f32>()
            .collect();
        for (got, want) in y.iter().zip([0.0, 1.0, 2.0, 3.0]) {
            assert!((got - want).abs() < 1e-6, "{y:?}");
        }
    }

    #[test]
    fn stages_resample_four_two_one_half() {
        let device = Device::flex();
        for readout in [Readout::Ignore, Readout::Add, Readout::Project] {
            let decoder = DptDecoderConfig::new(8, [2, 3, 4, 5], 6, 7)
                .with_readout(readout)
                .init(&device);
            let hidden = Tensor::<3>::ones([2, 1 + 6 * 4, 8], &device);
            let sides: Vec<[usize; 4]> = decoder
                .stages
                .iter()
                .map(|stage| stage.forward(hidden.clone(), [6, 4]).dims())
                .collect();
            assert_eq!(
                sides,
                [[2, 6, 24, 16], [2, 6, 12, 8], [2, 6, 6, 4], [2, 6, 3, 2]]
            );
            let out = decoder.forward(
                [hidden.clone(), hidden.clone(), hidden.clone(), hidden],
                [6, 4],
            );
            assert_eq!(out.dims(), [2, 7, 48, 32]);
        }
    }

    #[test]
    fn odd_grids_fuse() {
        let device = Device::flex();
        let decoder = DptDecoderConfig::new(8, [2, 3, 4, 5], 6, 7).init(&device);
        let hidden = Tensor::<3>::ones([1, 1 + 7 * 7, 8], &device);
        let out = decoder.forward(
            [hidden.clone(), hidden.clone(), hidden.clone(), hidden],
            [7, 7],
        );
        assert_eq!(out.dims(), [1, 7, 56, 56]);
    }
}

//! The ESResNeXt body: torchvision's ResNeXt (7x7/2 convolution, BatchNorm, ReLU, 3x3/2 max
//! pool, four stages of bottlenecks whose 3x3 convolution is grouped and strides) with the
//! attention blocks of ESResNet. After stage `i` the output is gated by `att_i` of the stage's
//! input; the pooled features by `att5` of the last map:
//!
//! ```text
//! y_i   = layer_i(x_{i-1}) * sigmoid(BN(conv_point(conv_depth(maxpool_to(y_i)(x_{i-1})))))
//! pool  = avgpool(y_4) * att5(y_4)
//! ```

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Initializer, PaddingConfig2d};
use burn::tensor::activation::{relu, sigmoid};
use burn::tensor::module::{adaptive_avg_pool2d, max_pool2d};
use burn::tensor::ops::MaxPoolOptions;
use burn::tensor::{Device, Tensor};
use clip_core::batch_norm::{BatchNorm2d, BatchNorm2dConfig};

use crate::config::EsResNeXtConfig;

/// Output channels of a bottleneck per plane.
pub const EXPANSION: usize = 4;

/// The official convolution initialization: Kaiming normal, fan-out, ReLU gain.
fn kaiming() -> Initializer {
    Initializer::KaimingNormal { gain: std::f64::consts::SQRT_2, fan_out_only: true }
}

fn conv(from: usize, to: usize, kernel: [usize; 2], stride: usize, groups: usize, bias: bool, device: &Device) -> Conv2d {
    let [kh, kw] = kernel;
    Conv2dConfig::new([from, to], kernel)
        .with_stride([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(kh / 2, kw / 2, kh / 2, kw / 2))
        .with_groups(groups)
        .with_bias(bias)
        .with_initializer(kaiming())
        .init(device)
}

fn norm(channels: usize, device: &Device) -> BatchNorm2d {
    BatchNorm2dConfig::new(channels).init(device)
}

/// `Attention2d` of ESResNet: max pool to the gated map's size, depthwise convolution,
/// pointwise convolution, BatchNorm, sigmoid.
#[derive(Module, Debug)]
pub struct Attention2d {
    /// Depthwise convolution (groups = input channels, with bias).
    pub conv_depth: Conv2d,
    /// Pointwise 1x1 convolution to the gated channels (with bias).
    pub conv_point: Conv2d,
    /// BatchNorm of the gate's logits.
    pub bn: BatchNorm2d,
}

impl Attention2d {
    /// A block from `from` channels to a gate of `to` channels with a depthwise `kernel`.
    pub fn new(from: usize, to: usize, kernel: [usize; 2], device: &Device) -> Self {
        Self {
            conv_depth: conv(from, from, kernel, 1, from, true, device),
            conv_point: conv(from, to, [1, 1], 1, 1, true, device),
            bn: norm(to, device),
        }
    }

    /// The gate `[batch, to, h, w]` of `x` `[batch, from, H, W]` at size `[h, w]`.
    pub fn forward(&self, x: Tensor<4>, size: [usize; 2]) -> Tensor<4> {
        let x = adaptive_max_pool2d(x, size);
        sigmoid(self.bn.forward(self.conv_point.forward(self.conv_depth.forward(x))))
    }
}

/// PyTorch's `adaptive_max_pool2d`: output cell `(i, j)` is the maximum over rows
/// `floor(i H / h)..ceil((i + 1) H / h)` and the same for columns (a plain max pool when the
/// sizes divide).
pub fn adaptive_max_pool2d(x: Tensor<4>, size: [usize; 2]) -> Tensor<4> {
    let [_, _, height, width] = x.dims();
    let [h, w] = size;
    if height == h && width == w {
        return x;
    }
    if height % h == 0 && width % w == 0 {
        let kernel = [height / h, width / w];
        return max_pool2d(
            x,
            MaxPoolOptions { kernel_size: kernel, stride: kernel, padding: [(0, 0); 2], dilation: [1, 1], ceil_mode: false },
        );
    }
    let x = adaptive_max_along(x, 2, h);
    adaptive_max_along(x, 3, w)
}

fn adaptive_max_along(x: Tensor<4>, dim: usize, out: usize) -> Tensor<4> {
    let size = x.dims()[dim];
    if size == out {
        return x;
    }
    let cells: Vec<Tensor<4>> = (0..out)
        .map(|i| {
            let (start, end) = (i * size / out, ((i + 1) * size).div_ceil(out));
            x.clone().narrow(dim, start, end - start).max_dim(dim)
        })
        .collect();
    Tensor::cat(cells, dim)
}

/// A ResNeXt bottleneck: 1x1, grouped 3x3 (strided), 1x1, with a projection shortcut where
/// the shape changes.
#[derive(Module, Debug)]
pub struct Bottleneck {
    /// 1x1 reduction.
    pub conv1: Conv2d,
    /// BatchNorm after `conv1`.
    pub bn1: BatchNorm2d,
    /// Grouped 3x3, carrying the stride.
    pub conv2: Conv2d,
    /// BatchNorm after `conv2`.
    pub bn2: BatchNorm2d,
    /// 1x1 expansion.
    pub conv3: Conv2d,
    /// BatchNorm after `conv3`.
    pub bn3: BatchNorm2d,
    /// Projection shortcut (official `downsample.0`/`.1`).
    pub downsample: Option<Downsample>,
}

/// A strided 1x1 convolution and BatchNorm on the shortcut.
#[derive(Module, Debug)]
pub struct Downsample {
    /// The 1x1 convolution.
    pub conv: Conv2d,
    /// Its BatchNorm.
    pub bn: BatchNorm2d,
}

impl Bottleneck {
    /// `[batch, in, H, W]` to `[batch, 4 * planes, H / stride, W / stride]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let out = relu(self.bn1.forward(self.conv1.forward(x.clone())));
        let out = relu(self.bn2.forward(self.conv2.forward(out)));
        let out = self.bn3.forward(self.conv3.forward(out));
        let identity = match &self.downsample {
            Some(down) => down.bn.forward(down.conv.forward(x)),
            None => x,
        };
        relu(out + identity)
    }
}

/// The ESResNeXt body without its classifier: band-split spectrograms `[batch, bands, F, T]`
/// to pooled features `[batch, feature_width]`.
#[derive(Module, Debug)]
pub struct EsResNeXt {
    /// 7x7/2 stem convolution.
    pub conv1: Conv2d,
    /// Stem BatchNorm.
    pub bn1: BatchNorm2d,
    /// Stage 1.
    pub layer1: Vec<Bottleneck>,
    /// Stage 2.
    pub layer2: Vec<Bottleneck>,
    /// Stage 3.
    pub layer3: Vec<Bottleneck>,
    /// Stage 4.
    pub layer4: Vec<Bottleneck>,
    /// Gates of the four stages and of the pooled features (when attention is on).
    pub att1: Option<Attention2d>,
    /// Gate of stage 2.
    pub att2: Option<Attention2d>,
    /// Gate of stage 3.
    pub att3: Option<Attention2d>,
    /// Gate of stage 4.
    pub att4: Option<Attention2d>,
    /// Gate of the pooled features.
    pub att5: Option<Attention2d>,
}

impl EsResNeXtConfig {
    /// Builds the body with the official initialization (Kaiming-normal convolutions, unit
    /// BatchNorm).
    pub fn init(&self, device: &Device) -> EsResNeXt {
        let mut inplanes = self.stem_width;
        let [layer1, layer2, layer3, layer4] = std::array::from_fn(|stage| {
            let planes = self.planes(stage);
            let inner = self.inner_width(stage);
            let stride = if stage == 0 { 1 } else { 2 };
            (0..self.layers[stage])
                .map(|block| {
                    let stride = if block == 0 { stride } else { 1 };
                    let out = planes * EXPANSION;
                    let downsample = (stride != 1 || inplanes != out).then(|| Downsample {
                        conv: conv(inplanes, out, [1, 1], stride, 1, false, device),
                        bn: norm(out, device),
                    });
                    let bottleneck = Bottleneck {
                        conv1: conv(inplanes, inner, [1, 1], 1, 1, false, device),
                        bn1: norm(inner, device),
                        conv2: conv(inner, inner, [3, 3], stride, self.groups, false, device),
                        bn2: norm(inner, device),
                        conv3: conv(inner, out, [1, 1], 1, 1, false, device),
                        bn3: norm(out, device),
                        downsample,
                    };
                    inplanes = out;
                    bottleneck
                })
                .collect::<Vec<_>>()
        });
        let attention = |index: usize, from: usize, to: usize| {
            self.attention.then(|| Attention2d::new(from, to, self.attention_kernels[index], device))
        };
        let out = |stage: usize| self.planes(stage) * EXPANSION;
        EsResNeXt {
            conv1: Conv2dConfig::new([self.bands, self.stem_width], [7, 7])
                .with_stride([2, 2])
                .with_padding(PaddingConfig2d::Explicit(3, 3, 3, 3))
                .with_bias(false)
                .with_initializer(kaiming())
                .init(device),
            bn1: norm(self.stem_width, device),
            layer1,
            layer2,
            layer3,
            layer4,
            att1: attention(0, self.stem_width, out(0)),
            att2: attention(1, out(0), out(1)),
            att3: attention(2, out(1), out(2)),
            att4: attention(3, out(2), out(3)),
            att5: attention(4, out(3), out(3)),
        }
    }
}

impl EsResNeXt {
    /// The stem: convolution, BatchNorm, ReLU, 3x3/2 max pool (padding 1).
    pub fn stem(&self, x: Tensor<4>) -> Tensor<4> {
        let x = relu(self.bn1.forward(self.conv1.forward(x)));
        max_pool2d(
            x,
            MaxPoolOptions { kernel_size: [3, 3], stride: [2, 2], padding: [(1, 1); 2], dilation: [1, 1], ceil_mode: false },
        )
    }

    /// The gated last feature map `[batch, C, h, w]` (official `_forward_features`).
    pub fn features(&self, x: Tensor<4>) -> Tensor<4> {
        let mut x = self.stem(x);
        let stages = [(&self.layer1, &self.att1), (&self.layer2, &self.att2), (&self.layer3, &self.att3), (&self.layer4, &self.att4)];
        for (stage, gate) in stages {
            let input = x.clone();
            for block in stage {
                x = block.forward(x);
            }
            if let Some(gate) = gate {
                let [_, _, h, w] = x.dims();
                x = x * gate.forward(input, [h, w]);
            }
        }
        x
    }

    /// Average pool gated by `att5` (official `_forward_reduction`): `[batch, C]`.
    pub fn reduce(&self, x: Tensor<4>) -> Tensor<2> {
        let pooled = adaptive_avg_pool2d(x.clone(), [1, 1]);
        let pooled = match &self.att5 {
            Some(gate) => pooled * gate.forward(x, [1, 1]),
            None => pooled,
        };
        pooled.flatten(1, 3)
    }

    /// Pooled features `[batch, C]` of `[batch, bands, F, T]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        self.reduce(self.features(x))
    }
}

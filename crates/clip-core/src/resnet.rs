//! CLIP's ResNet image tower, open_clip's `ModifiedResNet` (RN50, RN101, RN50x4, ...): a
//! three-convolution stem with an average pool, bottleneck stages that stride by average
//! pooling, and attention pooling in place of global average pooling.

use burn::config::Config;
use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Initializer, LinearConfig, PaddingConfig2d};
use burn::tensor::activation::relu;
use burn::tensor::module::avg_pool2d;
use burn::tensor::ops::{AvgPoolOptions, InterpolateMode};
use burn::tensor::{Device, Tensor};

use crate::batch_norm::{BatchNorm2d, BatchNorm2dConfig};
use crate::transformer::MultiHeadAttention;
use crate::vision::resize_positional_embedding;

/// Output channels of a bottleneck block per unit of its width (`planes`).
pub const BOTTLENECK_EXPANSION: usize = 4;

/// Configuration of a [`ModifiedResNet`], as open_clip's `vision_cfg` with a list of `layers`.
#[derive(Config, Debug, PartialEq)]
pub struct ModifiedResNetConfig {
    /// Input image side in pixels (square images); the attention pool's positional embedding
    /// has one position per 32x32 pixels of it, plus the mean token.
    pub image_size: usize,
    /// Bottleneck blocks in each of the four stages (RN50: `[3, 4, 6, 3]`).
    pub layers: [usize; 4],
    /// Stem width; stage `i` has `width * 2^i` planes and `4 * width * 2^i` output channels.
    pub width: usize,
    /// Attention-pool heads (open_clip: `width * 32 / head_width`).
    pub heads: usize,
    /// Output embedding size (the attention pool's output projection).
    pub embed_dim: usize,
}

impl ModifiedResNetConfig {
    /// Channels of the final feature map, which the attention pool attends over.
    pub fn feature_width(&self) -> usize {
        self.width * 32
    }

    /// Builds the tower with open_clip's initialization (PyTorch's default convolutions, the
    /// attention-pool projections drawn with std `feature_width^-0.5`, and the last BatchNorm
    /// scale of every bottleneck at zero, so each block starts as its shortcut).
    pub fn init(&self, device: &Device) -> ModifiedResNet {
        let stem_width = self.width / 2;
        let norm = |channels: usize| BatchNorm2dConfig::new(channels).init(device);
        let mut inplanes = self.width;
        let [layer1, layer2, layer3, layer4] = std::array::from_fn(|index| {
            let planes = self.width << index;
            let stride = if index == 0 { 1 } else { 2 };
            (0..self.layers[index])
                .map(|block| {
                    let stride = if block == 0 { stride } else { 1 };
                    let block = bottleneck(inplanes, planes, stride, has_shortcut(block), device);
                    inplanes = planes * BOTTLENECK_EXPANSION;
                    block
                })
                .collect::<Vec<_>>()
        });
        let features = self.feature_width();
        let grid = self.image_size / 32;
        let std = (features as f64).powf(-0.5);
        // PyTorch's default Linear (its bias too), then open_clip's normal weights.
        let projection = |to: usize| {
            let mut linear = LinearConfig::new(features, to).init(device);
            linear.weight = Initializer::Normal { mean: 0.0, std }.init([features, to], device);
            linear
        };
        ModifiedResNet {
            conv1: conv3x3(3, stem_width, 2, device),
            bn1: norm(stem_width),
            conv2: conv3x3(stem_width, stem_width, 1, device),
            bn2: norm(stem_width),
            conv3: conv3x3(stem_width, self.width, 1, device),
            bn3: norm(self.width),
            layer1,
            layer2,
            layer3,
            layer4,
            attnpool: AttentionPool2d {
                positional_embedding: Initializer::Normal { mean: 0.0, std }
                    .init([grid * grid + 1, features], device),
                attn: MultiHeadAttention {
                    query: projection(features),
                    key: projection(features),
                    value: projection(features),
                    out_proj: projection(self.embed_dim),
                    heads: self.heads,
                },
            },
        }
    }
}

/// Whether block `block` of a stage has a projection shortcut: only the first one does, as it
/// alone strides (stages 2-4) or widens (stage 1, from `width` to `4 * width` channels).
/// The checkpoint layout lists `downsample` keys by the same rule.
pub fn has_shortcut(block: usize) -> bool {
    block == 0
}

/// A bias-free 3x3 convolution with padding 1.
fn conv3x3(from: usize, to: usize, stride: usize, device: &Device) -> Conv2d {
    Conv2dConfig::new([from, to], [3, 3])
        .with_stride([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
        .with_bias(false)
        .init(device)
}

/// A bias-free 1x1 convolution.
fn conv1x1(from: usize, to: usize, device: &Device) -> Conv2d {
    Conv2dConfig::new([from, to], [1, 1]).with_bias(false).init(device)
}

fn bottleneck(inplanes: usize, planes: usize, stride: usize, shortcut: bool, device: &Device) -> Bottleneck {
    let out = planes * BOTTLENECK_EXPANSION;
    let norm = |channels: usize| BatchNorm2dConfig::new(channels).init(device);
    let mut bn3 = norm(out);
    bn3.gamma = Param::from_tensor(Tensor::zeros([out], device));
    Bottleneck {
        conv1: conv1x1(inplanes, planes, device),
        bn1: norm(planes),
        conv2: conv3x3(planes, planes, 1, device),
        bn2: norm(planes),
        conv3: conv1x1(planes, out, device),
        bn3,
        downsample: shortcut.then(|| Downsample {
            conv: conv1x1(inplanes, out, device),
            bn: norm(out),
        }),
        stride,
    }
}

/// Average pooling with a `stride x stride` window (open_clip's `nn.AvgPool2d(stride)`);
/// the identity for stride 1.
fn downsample_by(x: Tensor<4>, stride: usize) -> Tensor<4> {
    if stride > 1 {
        avg_pool2d(x, AvgPoolOptions::new([stride, stride]))
    } else {
        x
    }
}

/// A bottleneck block: 1x1, 3x3 (then an average pool when striding), 1x1, each followed by
/// BatchNorm, ReLU after the residual sum.
#[derive(Module, Debug)]
pub struct Bottleneck {
    /// 1x1 reduction to `planes`.
    pub conv1: Conv2d,
    /// Norm after `conv1`.
    pub bn1: BatchNorm2d,
    /// 3x3 convolution.
    pub conv2: Conv2d,
    /// Norm after `conv2`.
    pub bn2: BatchNorm2d,
    /// 1x1 expansion to `4 * planes`.
    pub conv3: Conv2d,
    /// Norm after `conv3`.
    pub bn3: BatchNorm2d,
    /// Shortcut projection, when the block strides or changes width.
    pub downsample: Option<Downsample>,
    /// Spatial stride (1 or 2), done by average pooling.
    pub stride: usize,
}

impl Bottleneck {
    /// `[batch, inplanes, H, W]` to `[batch, 4 * planes, H / stride, W / stride]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let out = relu(self.bn1.forward(self.conv1.forward(x.clone())));
        let out = relu(self.bn2.forward(self.conv2.forward(out)));
        let out = self.bn3.forward(self.conv3.forward(downsample_by(out, self.stride)));
        let identity = match &self.downsample {
            Some(shortcut) => shortcut.bn.forward(shortcut.conv.forward(downsample_by(x, self.stride))),
            None => x,
        };
        relu(out + identity)
    }
}

/// The shortcut of a striding or widening block: average pool, 1x1 convolution, BatchNorm
/// (open_clip's `downsample.-1`, `.0`, `.1`).
#[derive(Module, Debug)]
pub struct Downsample {
    /// 1x1 projection.
    pub conv: Conv2d,
    /// Norm after it.
    pub bn: BatchNorm2d,
}

/// Attention pooling: the mean of the feature map is prepended as a query token, positional
/// embeddings are added, and multi-head attention over all positions gives the embedding.
#[derive(Module, Debug)]
pub struct AttentionPool2d {
    /// `[1 + grid * grid, feature_width]`, mean token first.
    pub positional_embedding: Param<Tensor<2>>,
    /// `q_proj`, `k_proj`, `v_proj` and `c_proj` (to the embedding size).
    pub attn: MultiHeadAttention,
}

impl AttentionPool2d {
    /// The tokens attended over: `[batch, 1 + H * W, channels]`, mean token first, with the
    /// positional embedding (bicubically resized when the grid differs from the stored one).
    fn tokens(&self, x: Tensor<4>) -> Tensor<3> {
        let [batch, channels, height, width] = x.dims();
        let x = x.reshape([batch, channels, height * width]).swap_dims(1, 2);
        let x = Tensor::cat(vec![x.clone().mean_dim(1), x], 1);
        let positions = resize_positional_embedding(
            self.positional_embedding.val(),
            [height, width],
            InterpolateMode::Bicubic,
        );
        x + positions.unsqueeze()
    }

    /// The pooled embedding `[batch, embed_dim]` of a feature map `[batch, channels, H, W]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let tokens = self.tokens(x);
        let mean = tokens.clone().narrow(1, 0, 1);
        self.attn.forward_cross(mean, tokens).squeeze_dim(1)
    }

    /// Every position's output `[batch, 1 + H * W, embed_dim]`, the pooled one first: each
    /// token also queries the whole map, as in open_clip, whose `forward` keeps only the first.
    pub fn forward_positions(&self, x: Tensor<4>) -> Tensor<3> {
        self.attn.forward(self.tokens(x), false)
    }
}

/// Dense outputs of the ResNet tower, for methods that read them (DepthCLIP, CLIPasso).
#[derive(Debug, Clone)]
pub struct ResNetFeatures {
    /// After the stem and its average pool: `[batch, width, H/4, W/4]`.
    pub stem: Tensor<4>,
    /// After each of the four stages: `[batch, 4 * width * 2^i, H / 2^(i+2), W / 2^(i+2)]`.
    pub stages: [Tensor<4>; 4],
    /// The attention pool's output at every position, pooled token first:
    /// `[batch, 1 + (H/32) * (W/32), embed_dim]`.
    pub positions: Tensor<3>,
}

impl ResNetFeatures {
    /// The pooled, projected image embedding `[batch, embed_dim]`.
    pub fn pooled(&self) -> Tensor<2> {
        self.positions.clone().narrow(1, 0, 1).squeeze_dim(1)
    }
}

/// Applies the blocks of one stage in order.
pub fn run_stage(x: Tensor<4>, stage: &[Bottleneck]) -> Tensor<4> {
    stage.iter().fold(x, |x, block| block.forward(x))
}

/// open_clip's `ModifiedResNet`; parameter names follow its state dict.
#[derive(Module, Debug)]
pub struct ModifiedResNet {
    /// Stem convolution, 3x3 stride 2, to `width / 2`.
    pub conv1: Conv2d,
    /// Norm after `conv1`.
    pub bn1: BatchNorm2d,
    /// Stem convolution, 3x3.
    pub conv2: Conv2d,
    /// Norm after `conv2`.
    pub bn2: BatchNorm2d,
    /// Stem convolution, 3x3, to `width`.
    pub conv3: Conv2d,
    /// Norm after `conv3`.
    pub bn3: BatchNorm2d,
    /// Stage 1 (stride 1).
    pub layer1: Vec<Bottleneck>,
    /// Stage 2 (stride 2).
    pub layer2: Vec<Bottleneck>,
    /// Stage 3 (stride 2).
    pub layer3: Vec<Bottleneck>,
    /// Stage 4 (stride 2).
    pub layer4: Vec<Bottleneck>,
    /// Attention pooling and projection to the embedding.
    pub attnpool: AttentionPool2d,
}

impl ModifiedResNet {
    /// Projected image embeddings `[batch, embed_dim]` from images `[batch, 3, H, W]` (sides
    /// multiples of 32).
    pub fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        self.attnpool.forward(self.trunk(images))
    }

    /// The stem: three convolutions with BatchNorm and ReLU, then a 2x2 average pool.
    pub fn stem(&self, images: Tensor<4>) -> Tensor<4> {
        let x = relu(self.bn1.forward(self.conv1.forward(images)));
        let x = relu(self.bn2.forward(self.conv2.forward(x)));
        let x = relu(self.bn3.forward(self.conv3.forward(x)));
        downsample_by(x, 2)
    }

    /// The four stages, in order.
    pub fn stages(&self) -> [&[Bottleneck]; 4] {
        [&self.layer1, &self.layer2, &self.layer3, &self.layer4]
    }

    fn trunk(&self, images: Tensor<4>) -> Tensor<4> {
        self.stages().into_iter().fold(self.stem(images), run_stage)
    }

    /// Runs the tower and returns the stem's and each stage's feature map and the attention
    /// pool's output at every position.
    pub fn forward_features(&self, images: Tensor<4>) -> ResNetFeatures {
        let stem = self.stem(images);
        let layer1 = run_stage(stem.clone(), &self.layer1);
        let layer2 = run_stage(layer1.clone(), &self.layer2);
        let layer3 = run_stage(layer2.clone(), &self.layer3);
        let layer4 = run_stage(layer3.clone(), &self.layer4);
        ResNetFeatures {
            positions: self.attnpool.forward_positions(layer4.clone()),
            stem,
            stages: [layer1, layer2, layer3, layer4],
        }
    }

    /// Output embedding size.
    pub fn embed_dim(&self) -> usize {
        self.attnpool.attn.out_proj.weight.dims()[1]
    }
}

#[cfg(test)]
mod tests {
    use burn::optim::{GradientsParams, SgdConfig};
    use burn::tensor::{Device, Distribution, Tensor};

    use super::*;

    fn tiny() -> ModifiedResNetConfig {
        ModifiedResNetConfig::new(64, [1, 2, 1, 1], 8, 4, 16)
    }

    fn max_diff<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> f32 {
        (a - b).abs().max().into_scalar::<f32>()
    }

    #[test]
    fn shapes_follow_open_clip() {
        let device = Device::flex();
        let tower = tiny().init(&device);
        // Only the first block of each stage has a shortcut; every block's last norm starts at zero.
        assert!(tower.layer2[0].downsample.is_some() && tower.layer2[1].downsample.is_none());
        assert_eq!(tower.layer2[0].bn3.gamma.val().abs().sum().into_scalar::<f32>(), 0.0);
        let images = Tensor::<4>::random([2, 3, 64, 64], Distribution::Normal(0.0, 1.0), &device);
        let features = tower.forward_features(images);
        assert_eq!(features.stem.dims(), [2, 8, 16, 16]);
        let stages: Vec<[usize; 4]> = features.stages.iter().map(|s| s.dims()).collect();
        assert_eq!(stages, [[2, 32, 16, 16], [2, 64, 8, 8], [2, 128, 4, 4], [2, 256, 2, 2]]);
        assert_eq!(features.positions.dims(), [2, 5, 16]);
    }

    #[test]
    fn pooled_position_is_the_embedding() {
        let device = Device::flex();
        let tower = tiny().init(&device);
        let images = Tensor::<4>::random([2, 3, 64, 64], Distribution::Normal(0.0, 1.0), &device);
        let features = tower.forward_features(images.clone());
        assert!(max_diff(features.pooled(), tower.forward(images)) < 1e-5);
    }

    #[test]
    fn other_input_sizes_resize_the_positional_embedding() {
        let device = Device::flex();
        let tower = tiny().init(&device);
        // 96 x 160 pixels give a 3 x 5 grid where the checkpoint has 2 x 2.
        let images = Tensor::<4>::random([1, 3, 96, 160], Distribution::Normal(0.0, 1.0), &device);
        let features = tower.forward_features(images.clone());
        assert_eq!(features.stages[3].dims(), [1, 256, 3, 5]);
        assert_eq!(features.positions.dims(), [1, 16, 16]);
        assert_eq!(tower.forward(images).dims(), [1, 16]);
    }

    #[test]
    fn training_step_updates_weights_and_batch_statistics() {
        let device = Device::flex().autodiff();
        let tower = tiny().init(&device);
        let before = tower.bn1.running_mean.value().into_data();
        let images = Tensor::<4>::random([2, 3, 64, 64], Distribution::Normal(0.5, 1.0), &device);
        let loss = tower.forward(images).square().mean();
        let grads = GradientsParams::from_grads(loss.backward(), &tower);
        let stem_before = tower.conv1.weight.val().into_data();
        let tower = SgdConfig::new().init().step(0.1, tower, grads);
        assert_ne!(tower.conv1.weight.val().into_data(), stem_before);
        assert_ne!(tower.bn1.running_mean.value().into_data(), before);
        assert_eq!(tower.layer4[0].downsample.as_ref().unwrap().bn.num_batches_tracked.value().into_scalar::<f32>(), 1.0);
    }
}

//! The DepthCLIP model: dense CLIP ResNet features scored against distance prompts.
//!
//! Every step of the official `MonoCLIP.forward` is a public function here, so that each
//! intermediate can be checked against the official code.

use burn::module::{Module, Param};
use burn::nn::conv::Conv2d;
use burn::tensor::activation::{relu, softmax};
use burn::tensor::module::{avg_pool2d, interpolate};
use burn::tensor::ops::{AvgPoolOptions, InterpolateMode, InterpolateOptions};
use burn::tensor::{Device, Int, Tensor, TensorData};
use clip_core::batch_norm::BatchNorm2d;
use clip_core::config::DEFAULT_LOG_LOGIT_SCALE;
use clip_core::resnet::{Bottleneck, ModifiedResNetConfig, run_stage};
use clip_core::text::TextTransformer;
use clip_core::{ClipError, ClipTokenizer, Result, l2_normalize};

use super::config::{DenseClipConfig, DepthClipConfig};

impl DenseClipConfig {
    /// Builds the model with open_clip's initialization of the same parts.
    pub fn init(&self, device: &Device) -> DenseClip {
        DenseClip {
            visual: DenseResNet::init(self.layers, self.width, device),
            text: self.text.init(device),
            logit_scale: Param::from_tensor(Tensor::from_floats([DEFAULT_LOG_LOGIT_SCALE as f32], device)),
        }
    }
}

/// OpenAI's `ModifiedResNet` up to `layer4` (the three-convolution stem with its average pool,
/// then four bottleneck stages): the tower as DepthCLIP's copy of `clip/model.py` runs it, whose
/// `forward` returns after `layer4`. Parameter names follow the OpenAI state dict.
#[derive(Module, Debug)]
pub struct DenseResNet {
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
}

impl DenseResNet {
    /// A tower with `layers[i]` blocks in stage `i` and stem width `width`, initialized as
    /// clip-core's [`ModifiedResNet`](clip_core::resnet::ModifiedResNet) (whose attention pool
    /// is dropped).
    pub fn init(layers: [usize; 4], width: usize, device: &Device) -> Self {
        let features = width * 32;
        // The pool is discarded: any valid size (one 32-pixel cell, 64-wide heads) will do.
        let tower = ModifiedResNetConfig::new(32, layers, width, (features / 64).max(1), features).init(device);
        Self {
            conv1: tower.conv1,
            bn1: tower.bn1,
            conv2: tower.conv2,
            bn2: tower.bn2,
            conv3: tower.conv3,
            bn3: tower.bn3,
            layer1: tower.layer1,
            layer2: tower.layer2,
            layer3: tower.layer3,
            layer4: tower.layer4,
        }
    }

    /// The stem: three convolutions with BatchNorm and ReLU, then a 2x2 average pool:
    /// `[batch, 3, H, W]` to `[batch, width, ceil(H/2)/2, ceil(W/2)/2]` (floors).
    pub fn stem(&self, images: Tensor<4>) -> Tensor<4> {
        let x = relu(self.bn1.forward(self.conv1.forward(images)));
        let x = relu(self.bn2.forward(self.conv2.forward(x)));
        let x = relu(self.bn3.forward(self.conv3.forward(x)));
        avg_pool2d(x, AvgPoolOptions::new([2, 2]))
    }

    /// The feature map after each of the four stages.
    pub fn forward_stages(&self, images: Tensor<4>) -> [Tensor<4>; 4] {
        let layer1 = run_stage(self.stem(images), &self.layer1);
        let layer2 = run_stage(layer1.clone(), &self.layer2);
        let layer3 = run_stage(layer2.clone(), &self.layer3);
        let layer4 = run_stage(layer3.clone(), &self.layer4);
        [layer1, layer2, layer3, layer4]
    }

    /// The `layer4` map `[batch, 32 * width, h, w]` with `h = floor(ceil(H/2) / 16)` (likewise
    /// `w`): 13 x 17 for the official 416 x 544 NYU crop.
    pub fn forward(&self, images: Tensor<4>) -> Tensor<4> {
        let x = self.stem(images);
        [&self.layer1, &self.layer2, &self.layer3, &self.layer4]
            .into_iter()
            .fold(x, |x, stage| run_stage(x, stage))
    }
}

/// The CLIP model DepthCLIP loads (`clip.load('RN50')`): the ResNet tower without its attention
/// pool, the text tower, and the log logit scale (kept so the state dict round-trips; DepthCLIP
/// does not use it).
#[derive(Module, Debug)]
pub struct DenseClip {
    /// The image tower up to `layer4`.
    pub visual: DenseResNet,
    /// The text tower.
    pub text: TextTransformer,
    /// CLIP's log logit scale `[1]`, unused by DepthCLIP.
    pub logit_scale: Param<Tensor<1>>,
}

impl DenseClip {
    /// The dense `layer4` features of preprocessed images.
    pub fn layer4(&self, images: Tensor<4>) -> Tensor<4> {
        self.visual.forward(images)
    }

    /// Projected, unnormalized text embeddings `[batch, embed_dim]` (`encode_text`).
    pub fn encode_text(&self, tokens: Tensor<2, Int>) -> Tensor<2> {
        self.text.forward(tokens)
    }
}

/// The official `zeroshot_classifier`: prompt embeddings `[classes * per_class, dim]` (class
/// major) are L2-normalized, averaged within each class, normalized again, and returned as the
/// columns of `[dim, classes]`.
pub fn zeroshot_text_features(embeddings: Tensor<2>, classes: usize) -> Result<Tensor<2>> {
    let [prompts, dim] = embeddings.dims();
    if classes == 0 || !prompts.is_multiple_of(classes) {
        return Err(ClipError::Shape(format!("{prompts} prompt embeddings do not split into {classes} classes")));
    }
    let per_class = prompts / classes;
    let mean = l2_normalize(embeddings).reshape([classes, per_class, dim]).mean_dim(1).reshape([classes, dim]);
    Ok(l2_normalize(mean).transpose())
}

/// `layer4` `[batch, C, h, w]` as row-major tokens `[batch, h * w, C]`, each L2-normalized over
/// its channels (`encode_image(x).permute(1, 0, 2)`, then `img_f / img_f.norm(dim=-1)`).
pub fn dense_tokens(layer4: Tensor<4>) -> Tensor<3> {
    let [batch, channels, h, w] = layer4.dims();
    let tokens = layer4.reshape([batch, channels, h * w]).swap_dims(1, 2);
    let norm = tokens.clone().square().sum_dim(2).sqrt().clamp_min(1e-12);
    tokens / norm
}

/// The official channel halving `F.interpolate(img_f, scale_factor=0.5)` on `[batch, L, C]`:
/// nearest interpolation over the last axis, which keeps channels `0, 2, 4, ...` (`C / 2` of
/// them, rounded down). The result is not renormalized.
pub fn halve_channels(tokens: Tensor<3>) -> Tensor<3> {
    let [batch, len, channels] = tokens.dims();
    let kept = channels / 2;
    tokens.narrow(2, 0, 2 * kept).reshape([batch, len, kept, 2]).narrow(3, 0, 1).reshape([batch, len, kept])
}

/// Per-position bin logits `[batch, K, h, w]`: `factor * features @ text_features`, positions
/// reshaped row-major to the `h x w` grid, divided by `temperature`.
pub fn depth_logits(
    features: Tensor<3>,
    text_features: Tensor<2>,
    grid: [usize; 2],
    factor: f64,
    temperature: f64,
) -> Tensor<4> {
    let [batch, _, _] = features.dims();
    let bins = text_features.dims()[1];
    let logits = (features * factor).matmul(text_features.unsqueeze());
    logits.swap_dims(1, 2).reshape([batch, bins, grid[0], grid[1]]) / temperature
}

/// Depth as the probability-weighted bin depth: `sum_k probs[:, k] * bins[k]`, `[batch, 1, h, w]`.
pub fn expected_depth(probs: Tensor<4>, bins: Tensor<1>) -> Tensor<4> {
    let k = bins.dims()[0];
    (probs * bins.reshape([1, k, 1, 1])).sum_dim(1)
}

/// Bilinear upsampling with aligned corners (the official evaluation's
/// `F.interpolate(..., mode='bilinear', align_corners=True)`).
pub fn upsample_depth(depth: Tensor<4>, size: [usize; 2]) -> Tensor<4> {
    interpolate(depth, InterpolateOptions::new(InterpolateMode::Bilinear).with_align_corners(true).with_output_size(size))
}

/// Every intermediate of one DepthCLIP forward pass.
#[derive(Debug, Clone)]
pub struct DepthOutput {
    /// The `layer4` map `[batch, C, h, w]`.
    pub layer4: Tensor<4>,
    /// Normalized, channel-halved tokens `[batch, h * w, C / 2]`.
    pub features: Tensor<3>,
    /// Bin logits after the temperature, `[batch, K, h, w]`.
    pub logits: Tensor<4>,
    /// Softmax of the logits over the bins, `[batch, K, h, w]`.
    pub probs: Tensor<4>,
    /// Depth in metres at feature resolution, `[batch, 1, h, w]`.
    pub depth: Tensor<4>,
}

/// DepthCLIP: a frozen CLIP, the text features of its distance prompts, and the bin depths.
#[derive(Debug, Clone)]
pub struct DepthClip {
    /// The CLIP model.
    pub clip: DenseClip,
    /// The method's configuration.
    pub config: DepthClipConfig,
    /// Text features `[embed_dim, K]`, one normalized column per distance word.
    pub text_features: Tensor<2>,
}

impl DepthClip {
    /// Builds the predictor: validates `config` and encodes its prompts with `clip`'s text tower.
    pub fn new(clip: DenseClip, config: DepthClipConfig, tokenizer: &ClipTokenizer) -> Result<Self> {
        config.validate("depthclip")?;
        let context = config.clip.text.context_length;
        if tokenizer.context_length() > context {
            return Err(ClipError::config(
                "depthclip",
                format!("the tokenizer makes {} tokens, the text tower takes {context}", tokenizer.context_length()),
            ));
        }
        let device = clip.logit_scale.val().device();
        let tokens = prompt_tokens(&config, tokenizer, &device)?;
        let text_features = zeroshot_text_features(clip.encode_text(tokens), config.num_bins())?;
        Self::with_text_features(clip, config, text_features)
    }

    /// As [`new`](Self::new) with text features computed elsewhere (`[embed_dim, K]`).
    pub fn with_text_features(clip: DenseClip, config: DepthClipConfig, text_features: Tensor<2>) -> Result<Self> {
        config.validate("depthclip")?;
        let want = [config.clip.embed_dim, config.num_bins()];
        if text_features.dims() != want {
            return Err(ClipError::Shape(format!("text features {:?}, expected {want:?}", text_features.dims())));
        }
        Ok(Self { clip, config, text_features })
    }

    /// The bin depths as a tensor on the model's device.
    pub fn bins(&self) -> Tensor<1> {
        let device = self.text_features.device();
        Tensor::from_data(TensorData::new(self.config.bins.clone(), [self.config.bins.len()]), &device)
    }

    /// The official `MonoCLIP.forward` on preprocessed images `[batch, 3, H, W]`, with every
    /// intermediate. The grid is the `layer4` map's (the official code hard-codes 13 x 17).
    pub fn forward(&self, images: Tensor<4>) -> DepthOutput {
        let layer4 = self.clip.layer4(images);
        let [_, _, h, w] = layer4.dims();
        let features = halve_channels(dense_tokens(layer4.clone()));
        let logits = depth_logits(
            features.clone(),
            self.text_features.clone(),
            [h, w],
            self.config.logit_factor,
            self.config.temperature,
        );
        let probs = softmax(logits.clone(), 1);
        let depth = expected_depth(probs.clone(), self.bins());
        DepthOutput { layer4, features, logits, probs, depth }
    }

    /// Depth `[batch, 1, h, w]` at feature resolution.
    pub fn depth(&self, images: Tensor<4>) -> Tensor<4> {
        self.forward(images).depth
    }

    /// Depth of the horizontally flipped images, flipped back (`eval.py`).
    pub fn depth_flip(&self, images: Tensor<4>) -> Tensor<4> {
        self.depth(images.flip([3])).flip([3])
    }

    /// The official evaluation's prediction `[batch, 1, H', W']` in metres: the depth averaged
    /// with [`depth_flip`](Self::depth_flip) (when `flip_average` is set), upsampled bilinearly
    /// with aligned corners to `output_size` (or the input's size).
    pub fn predict(&self, images: Tensor<4>) -> Tensor<4> {
        let [_, _, height, width] = images.dims();
        let size = self.config.output_size.unwrap_or([height, width]);
        let depth = if self.config.flip_average {
            (self.depth(images.clone()) + self.depth_flip(images)) * 0.5
        } else {
            self.depth(images)
        };
        upsample_depth(depth, size)
    }
}

/// The tokens of every prompt of `config` (see [`DepthClipConfig::prompts`]) as `[P, context]`.
pub fn prompt_tokens(config: &DepthClipConfig, tokenizer: &ClipTokenizer, device: &Device) -> Result<Tensor<2, Int>> {
    Ok(tokenizer.tokenize_batch(&config.prompts()?, device)?)
}

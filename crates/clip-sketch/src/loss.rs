//! CLIPasso's loss (the official `CLIPConvLoss`): a geometric term, the L2 distance between
//! the intermediate activations of CLIP's ResNet image tower on the sketch and on the image
//! (weighted per layer; the paper weighs layer2 and layer3), and a semantic term, the cosine
//! distance of the two final embeddings (weight 0.1), both averaged over random augmentations
//! drawn once per step and applied to the sketch and the image alike.

use burn::config::Config;
use burn::module::Module;
use burn::tensor::{Tensor, TensorData};
use clip_core::ImageTower;
use clip_core::resnet::ResNetFeatures;
use rand::Rng;

use crate::augment::Augmentation;

/// Names of the feature maps [`LossConfig::layer_weights`] weighs, in order.
pub const LAYERS: [&str; 5] = ["stem", "layer1", "layer2", "layer3", "layer4"];

/// Configuration of a [`SketchLoss`].
#[derive(Config, Debug, PartialEq)]
pub struct LossConfig {
    /// Weight of the geometric L2 term at the stem and each stage of the ResNet ([`LAYERS`]);
    /// the paper: layer2 and layer3 at 1.
    #[config(default = "[0.0, 0.0, 1.0, 1.0, 0.0]")]
    pub layer_weights: [f64; 5],
    /// Weight of the semantic term, the cosine distance of the final embeddings.
    #[config(default = 0.1)]
    pub semantic_weight: f64,
    /// Random augmentations per step (the un-augmented pair is always added).
    #[config(default = 4)]
    pub augmentations: usize,
    /// Perspective distortion scale (torchvision's `distortion_scale`).
    #[config(default = 0.5)]
    pub distortion: f64,
    /// Area fraction of the random crop.
    #[config(default = 0.8)]
    pub crop_scale: f64,
}

impl LossConfig {
    /// Checks the values, naming the key under `prefix` (`sketch.`).
    pub fn validate(&self, prefix: &str) -> Result<(), String> {
        if self.layer_weights.iter().any(|w| !(w.is_finite() && *w >= 0.0)) {
            return Err(format!("{prefix}layer_weights = {:?}: weights must be non-negative", self.layer_weights));
        }
        if !(self.semantic_weight.is_finite() && self.semantic_weight >= 0.0) {
            return Err(format!("{prefix}semantic_weight = {} must be non-negative", self.semantic_weight));
        }
        if self.layer_weights.iter().all(|w| *w == 0.0) && self.semantic_weight == 0.0 {
            return Err(format!("{prefix}layer_weights and {prefix}semantic_weight are all zero: nothing to optimize"));
        }
        if !(0.0..1.0).contains(&self.distortion) {
            return Err(format!("{prefix}distortion = {} must be in [0, 1)", self.distortion));
        }
        if !(self.crop_scale > 0.0 && self.crop_scale <= 1.0) {
            return Err(format!("{prefix}crop_scale = {} must be in (0, 1]", self.crop_scale));
        }
        Ok(())
    }

    /// Whether the geometric term reads any layer (it needs a ResNet tower then).
    pub fn geometric(&self) -> bool {
        self.layer_weights.iter().any(|w| *w > 0.0)
    }

    /// The loss over `tower`; an error when the geometric term needs layers a ViT lacks.
    pub fn init(&self, tower: ImageTower, mean: [f32; 3], std: [f32; 3]) -> Result<SketchLoss, String> {
        self.validate("")?;
        if self.geometric() && tower.as_resnet().is_none() {
            return Err(format!(
                "the geometric loss reads the layers of a ResNet image tower, and this CLIP's is a {}: \
                 set every layer weight to 0 to use only the semantic loss",
                tower.architecture()
            ));
        }
        Ok(SketchLoss { config: self.clone(), tower, mean, std })
    }
}

/// The loss of a sketch against an image; see the module documentation.
#[derive(Debug, Clone)]
pub struct SketchLoss {
    config: LossConfig,
    tower: ImageTower,
    mean: [f32; 3],
    std: [f32; 3],
}

/// A loss value and its parts (means over the augmentations).
#[derive(Debug, Clone)]
pub struct LossParts {
    /// The weighted total, differentiable.
    pub total: Tensor<1>,
    /// The weighted geometric term.
    pub geometric: Tensor<1>,
    /// The weighted semantic term.
    pub semantic: Tensor<1>,
}

impl SketchLoss {
    /// The image tower the loss reads.
    pub fn tower(&self) -> &ImageTower {
        &self.tower
    }

    /// CLIP's normalization of images `[batch, 3, H, W]` in `[0, 1]`.
    pub fn normalize(&self, images: Tensor<4>) -> Tensor<4> {
        let device = images.device();
        let mean = Tensor::<1>::from_data(TensorData::new(self.mean.to_vec(), [3]), &device).reshape([1, 3, 1, 1]);
        let std = Tensor::<1>::from_data(TensorData::new(self.std.to_vec(), [3]), &device).reshape([1, 3, 1, 1]);
        (images - mean) / std
    }

    /// Draws this step's augmentations for images of side `size`: the identity, then
    /// [`LossConfig::augmentations`] random ones.
    pub fn draw(&self, size: usize, rng: &mut impl Rng) -> Vec<Augmentation> {
        let mut augmentations = vec![Augmentation::identity(size)];
        for _ in 0..self.config.augmentations {
            augmentations.push(Augmentation::random(size, self.config.distortion as f32, self.config.crop_scale as f32, rng));
        }
        augmentations
    }

    /// The loss of sketches `sketch` against images `image` (both `[batch, 3, H, W]` in
    /// `[0, 1]`), averaged over the batch and `augmentations`: each sketch is compared with its
    /// own image only, so a batch optimizes independent sketches. The images go through the
    /// tower without autodiff (their features are constants).
    pub fn forward(&self, sketch: Tensor<4>, image: Tensor<4>, augmentations: &[Augmentation]) -> LossParts {
        let augment = |images: Tensor<4>| -> Tensor<4> {
            match augmentations.is_empty() {
                true => images,
                false => Tensor::cat(augmentations.iter().map(|a| a.apply(images.clone())).collect(), 0),
            }
        };
        let sketches = self.normalize(augment(sketch));
        let images = self.normalize(augment(image.without_autodiff()));
        let device = sketches.device();
        let reference = self.tower.valid();
        let mut geometric = Tensor::<1>::zeros([1], &device);
        let (a, b) = match (self.tower.as_resnet(), reference.as_resnet()) {
            (Some(resnet), Some(frozen)) if self.config.geometric() => {
                let ours = resnet.forward_features(sketches);
                let theirs = frozen.forward_features(images);
                for ((a, b), weight) in feature_maps(&ours).into_iter().zip(feature_maps(&theirs)).zip(self.config.layer_weights) {
                    if weight > 0.0 {
                        geometric = geometric + (a - b).square().mean().mul_scalar(weight);
                    }
                }
                (ours.pooled(), theirs.pooled())
            }
            _ => (self.tower.forward(sketches), reference.forward(images)),
        };
        let cosine = (a.clone() * b.clone()).sum_dim(1) / (a.square().sum_dim(1).sqrt() * b.square().sum_dim(1).sqrt()).add_scalar(1e-8);
        let semantic = cosine.neg().add_scalar(1.0).mean().mul_scalar(self.config.semantic_weight);
        LossParts { total: geometric.clone() + semantic.clone(), geometric, semantic }
    }
}

/// The stem's and each stage's feature map, in [`LAYERS`] order.
fn feature_maps(features: &ResNetFeatures) -> Vec<Tensor<4>> {
    let mut maps = vec![features.stem.clone()];
    maps.extend(features.stages.iter().cloned());
    maps
}


//! CLIP's image tower: a ViT or a ModifiedResNet, chosen by the model config.

use burn::config::Config;
use burn::module::Module;
use burn::tensor::{Device, Tensor};

use crate::error::ClipError;
use crate::resnet::{ModifiedResNet, ModifiedResNetConfig};
use crate::vision::{VisionTransformer, VisionTransformerConfig};

/// Configuration of an [`ImageTower`].
#[derive(Config, Debug, PartialEq)]
pub enum ImageTowerConfig {
    /// A vision transformer (`ViT-B-32`, ...).
    Vit(VisionTransformerConfig),
    /// A ModifiedResNet (`RN50`, ...).
    ResNet(ModifiedResNetConfig),
}

impl ImageTowerConfig {
    /// Builds the tower with freshly initialized weights.
    pub fn init(&self, device: &Device) -> ImageTower {
        match self {
            Self::Vit(config) => ImageTower::Vit(config.init(device)),
            Self::ResNet(config) => ImageTower::ResNet(config.init(device)),
        }
    }

    /// Input image side in pixels.
    pub fn image_size(&self) -> usize {
        match self {
            Self::Vit(config) => config.image_size,
            Self::ResNet(config) => config.image_size,
        }
    }

    /// Output embedding size.
    pub fn embed_dim(&self) -> usize {
        match self {
            Self::Vit(config) => config.embed_dim,
            Self::ResNet(config) => config.embed_dim,
        }
    }

    /// The ViT configuration, or an error naming `method` (which needs a ViT) for a ResNet.
    pub fn vit(&self, method: &str) -> crate::Result<&VisionTransformerConfig> {
        match self {
            Self::Vit(config) => Ok(config),
            Self::ResNet(_) => Err(needs_vit(method)),
        }
    }

    /// Mutable access to the ViT configuration (see [`vit`](Self::vit)).
    pub fn vit_mut(&mut self, method: &str) -> crate::Result<&mut VisionTransformerConfig> {
        match self {
            Self::Vit(config) => Ok(config),
            Self::ResNet(_) => Err(needs_vit(method)),
        }
    }
}

fn needs_vit(method: &str) -> ClipError {
    ClipError::config(
        "model.name",
        format!("{method} reads ViT patch tokens, but this model has a ResNet image tower; use a ViT model"),
    )
}

/// The image tower of a CLIP model. Parameter paths skip the variant name in checkpoint
/// layouts and `train.freeze`/`train.lr_groups` prefixes (`visual.layer1`, `visual.transformer`).
#[derive(Module, Debug)]
pub enum ImageTower {
    /// A vision transformer.
    Vit(VisionTransformer),
    /// A ModifiedResNet.
    ResNet(ModifiedResNet),
}

impl ImageTower {
    /// Projected image embeddings `[batch, embed_dim]` from images `[batch, 3, H, W]`.
    pub fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        match self {
            Self::Vit(tower) => tower.forward(images),
            Self::ResNet(tower) => tower.forward(images),
        }
    }

    /// Output embedding size.
    pub fn embed_dim(&self) -> usize {
        match self {
            Self::Vit(tower) => tower.proj.dims()[1],
            Self::ResNet(tower) => tower.embed_dim(),
        }
    }

    /// The input side the tower was configured for: its positional grid side times its patch
    /// size (32 pixels per position for a ResNet's attention pool).
    pub fn image_size(&self) -> usize {
        let (positions, stride) = match self {
            Self::Vit(tower) => (tower.positional_embedding.dims()[0], tower.patch_size),
            Self::ResNet(tower) => (tower.attnpool.positional_embedding.dims()[0], 32),
        };
        ((positions - 1) as f64).sqrt().round() as usize * stride
    }

    /// The ViT, if this is one.
    pub fn as_vit(&self) -> Option<&VisionTransformer> {
        match self {
            Self::Vit(tower) => Some(tower),
            Self::ResNet(_) => None,
        }
    }

    /// The ResNet, if this is one.
    pub fn as_resnet(&self) -> Option<&ModifiedResNet> {
        match self {
            Self::ResNet(tower) => Some(tower),
            Self::Vit(_) => None,
        }
    }

    /// The ViT, or an error naming `method` (which needs one) for a ResNet tower.
    pub fn vit(&self, method: &str) -> crate::Result<&VisionTransformer> {
        self.as_vit().ok_or_else(|| needs_vit(method))
    }

    /// The ViT by value (see [`vit`](Self::vit)).
    pub fn into_vit(self, method: &str) -> crate::Result<VisionTransformer> {
        match self {
            Self::Vit(tower) => Ok(tower),
            Self::ResNet(_) => Err(needs_vit(method)),
        }
    }
}

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

    /// The architecture in words (`ViT of width 768 with 12 blocks`), as
    /// [`ImageTower::architecture`] describes a built tower, to compare the two.
    pub fn architecture(&self) -> String {
        match self {
            Self::Vit(config) => vit_architecture(config.width, config.layers),
            Self::ResNet(config) => resnet_architecture(config.width, config.layers),
        }
    }

    /// The ViT configuration, or an error naming `method` (which needs a ViT) for a ResNet.
    pub fn vit(&self, method: &str) -> crate::Result<&VisionTransformerConfig> {
        match self {
            Self::Vit(config) => Ok(config),
            Self::ResNet(_) => Err(needs_vit(method)),
        }
    }

    /// The ViT configuration for a Hugging Face `CLIPModel`, which has no ResNet tower; the
    /// error says to use the open_clip layout.
    pub fn hugging_face_vit(&self) -> crate::Result<&VisionTransformerConfig> {
        match self {
            Self::Vit(config) => Ok(config),
            Self::ResNet(_) => Err(ClipError::config(
                "model.name",
                "a ResNet image tower has no Hugging Face CLIPModel layout; use the open_clip layout",
            )),
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
        format!("{method} needs a ViT image tower (it reads patch tokens), but this model has a ResNet one; use a ViT model"),
    )
}

fn vit_architecture(width: usize, blocks: usize) -> String {
    format!("ViT of width {width} with {blocks} blocks")
}

fn resnet_architecture(width: usize, layers: [usize; 4]) -> String {
    format!("ResNet of width {width} with stages {layers:?}")
}

/// The image tower of a CLIP model. Parameter paths skip the variant name in checkpoint
/// layouts and `train.freeze`/`train.lr_groups` prefixes (`visual.layer1`, `visual.transformer`).
// A model holds one tower; the size difference between the variants costs nothing.
#[allow(clippy::large_enum_variant)]
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

    /// The input side whose grid matches the stored positional embedding: grid side times patch
    /// size (32 pixels per position for a ResNet's attention pool, so a ResNet configured for
    /// 240 pixels gives 224).
    pub fn image_size(&self) -> usize {
        let (positions, stride) = match self {
            Self::Vit(tower) => (tower.positional_embedding.dims()[0], tower.patch_size),
            Self::ResNet(tower) => (tower.attnpool.positional_embedding.dims()[0], 32),
        };
        ((positions - 1) as f64).sqrt().round() as usize * stride
    }

    /// The architecture in words, as [`ImageTowerConfig::architecture`] gives it.
    pub fn architecture(&self) -> String {
        match self {
            Self::Vit(tower) => vit_architecture(tower.conv1.weight.dims()[0], tower.transformer.resblocks.len()),
            Self::ResNet(tower) => {
                let stages = tower.stages().map(<[_]>::len);
                resnet_architecture(tower.conv3.weight.dims()[0], stages)
            }
        }
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

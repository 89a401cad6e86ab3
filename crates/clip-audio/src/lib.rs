//! # clip-audio
//!
//! AudioCLIP (Guzhov et al., 2021, "AudioCLIP: Extending CLIP to Image, Text and Audio"): an
//! ESResNeXt-FBSP audio tower joined to a ResNet CLIP's image and text space and trained with a
//! tri-modal contrastive loss.
//!
//! - [`audio`] decodes WAV/FLAC/MP3/OGG, mixes to mono, resamples and crops or pads a clip,
//!   in the int16 units the model reads.
//! - [`fbsp`] is the trainable Fourier-basis front end (LinearFBSP), framing and band-split
//!   log power.
//! - [`resnext`] is the ESResNeXt body with its attention blocks.
//! - [`model`] holds [`AudioHead`] and [`AudioClip`]; [`config`] their configurations.
//! - [`loss`] is the tri-modal objective with its three clamped logit scales.
//! - [`official`] loads and writes the official checkpoint layout.
//! - [`data`] reads ESC-50, UrbanSound8K and generic audio tables.
//! - [`task`] is the `audioclip` task of the trainer.
//!
//! See `docs/clip-audio.md`.

pub mod audio;
pub mod config;
pub mod data;
pub mod fbsp;
pub mod loss;
pub mod model;
pub mod official;
pub mod resnext;
pub mod task;

pub use audio::{AudioError, AudioOptions, Crop, load_audio};
pub use config::{AudioClipConfig, EsResNeXtConfig, FbspConfig};
pub use loss::{Embeddings, LossTerms, LossWeights, TriModalLoss};
pub use model::{AudioClip, AudioHead, AudioOutput};
pub use task::AudioClipTask;

//! The AudioCLIP model: the audio head ESResNeXt-FBSP ([`AudioHead`]) next to a ResNet CLIP,
//! with three clamped logit scales.
//!
//! ```text
//! a = fc( sum_c ESResNeXt( dB( bands( |FBSP(frames(scale(x_c)))|^2 ) ) ) )      audio embedding
//! L_ai = clamp(exp(s_ai), 1, 100) * a_n i_n^T,  L_at = clamp(exp(s_at), 1, 100) * a_n t_n^T,
//! L_it = clamp(exp(s), 1, 100) * i_n t_n^T                                       (x_n = x / |x|)
//! ```

use burn::module::{Module, Param};
use burn::nn::{Linear, LinearConfig};
use burn::tensor::{Device, Int, Tensor, TensorData};
use clip_core::{Clip, l2_normalize};

use crate::config::{AudioClipConfig, FbspConfig};
use crate::fbsp::{FbspKernels, LinearFbsp, Spectrogram, band_split_db, blackman_harris, frame_signal, scale_int16};
use crate::resnext::EsResNeXt;

/// The smallest and largest logit scale (`clamp(exp(s), 1, 100)`).
pub const LOGIT_SCALE_RANGE: (f32, f32) = (1.0, 100.0);

/// ESResNeXt-FBSP: waveforms in int16 units `[batch, channels, samples]` to audio embeddings.
#[derive(Module, Debug)]
pub struct AudioHead {
    /// The trainable Fourier-basis front end.
    pub fbsp: LinearFbsp,
    /// The analysis window `[win_length]` (a buffer: never trained).
    pub window: Param<Tensor<1>>,
    /// The ResNeXt body with attention.
    pub body: EsResNeXt,
    /// Projection of the pooled features to the embedding (with bias).
    pub fc: Linear,
    /// Framing settings.
    pub sample_rate: usize,
    /// `n_fft`.
    pub n_fft: usize,
    /// Hop between frames.
    pub hop_length: usize,
    /// Frame length.
    pub win_length: usize,
    /// Frequency bands (the body's input channels).
    pub bands: usize,
}

/// The intermediate results of the audio head, for inspection and parity checks.
#[derive(Debug, Clone)]
pub struct AudioOutput {
    /// The band-split log power `[batch, channels, bands, F / bands, frames]`.
    pub spectrogram_db: Tensor<5>,
    /// Pooled body features summed over audio channels `[batch, feature_width]`.
    pub pooled: Tensor<2>,
    /// Audio embeddings `[batch, embed_dim]` (not normalized).
    pub embeds: Tensor<2>,
    /// The FBSP kernels used, for `loss_ttf`.
    pub kernels: FbspKernels,
}

impl AudioHead {
    /// The framing settings as a config.
    pub fn fbsp_config(&self) -> FbspConfig {
        FbspConfig::new()
            .with_sample_rate(self.sample_rate)
            .with_n_fft(self.n_fft)
            .with_hop_length(self.hop_length)
            .with_win_length(self.win_length)
            .with_normalized(self.fbsp.normalized)
    }

    /// The complex spectrogram of waveforms `[batch, channels, samples]` in int16 units
    /// (official `spectrogram(scale(x))`): `[batch * channels, K, frames]` each part.
    pub fn spectrogram(&self, audio: Tensor<3>) -> Spectrogram {
        let [batch, channels, samples] = audio.dims();
        let signal = scale_int16(audio.reshape([batch * channels, samples]));
        // The window is a buffer; the frames carry no gradient (the official `no_grad` block).
        let frames = frame_signal(signal, self.window.val().detach(), &self.fbsp_config()).detach();
        let (re, im, kernels) = self.fbsp.forward(frames);
        Spectrogram { re: re.swap_dims(1, 2), im: im.swap_dims(1, 2), kernels }
    }

    /// The body's input: band-split log power `[batch, channels, bands, F / bands, frames]`.
    pub fn spectrogram_db(&self, audio: Tensor<3>) -> (Tensor<5>, FbspKernels) {
        let batch = audio.dims()[0];
        let spectrogram = self.spectrogram(audio);
        (band_split_db(&spectrogram, batch, self.bands), spectrogram.kernels)
    }

    /// Pooled features of every audio channel, summed over channels: `[batch, features]`.
    /// The channels run through the body as one batch.
    pub fn pooled(&self, spectrogram_db: Tensor<5>) -> Tensor<2> {
        let [batch, channels, bands, height, width] = spectrogram_db.dims();
        let pooled = self.body.forward(spectrogram_db.reshape([batch * channels, bands, height, width]));
        let features = pooled.dims()[1];
        pooled.reshape([batch, channels, features]).sum_dim(1).reshape([batch, features])
    }

    /// Every stage of the head.
    pub fn forward_all(&self, audio: Tensor<3>) -> AudioOutput {
        let (spectrogram_db, kernels) = self.spectrogram_db(audio);
        let pooled = self.pooled(spectrogram_db.clone());
        let embeds = self.fc.forward(pooled.clone());
        AudioOutput { spectrogram_db, pooled, embeds, kernels }
    }

    /// Audio embeddings `[batch, embed_dim]` (not normalized) and the kernels used.
    pub fn forward(&self, audio: Tensor<3>) -> (Tensor<2>, FbspKernels) {
        let (spectrogram_db, kernels) = self.spectrogram_db(audio);
        (self.fc.forward(self.pooled(spectrogram_db)), kernels)
    }

    /// `loss_ttf` of the kernels of the last forward pass.
    pub fn loss_ttf(&self, kernels: &FbspKernels) -> Tensor<1> {
        self.fbsp.loss_ttf(kernels)
    }
}

/// AudioCLIP: a CLIP (`visual`, `text`, `logit_scale`) and an audio head, with the audio-image
/// and audio-text log logit scales.
#[derive(Module, Debug)]
pub struct AudioClip {
    /// The CLIP (ResNet image tower, text tower, image-text logit scale).
    pub clip: Clip,
    /// The audio head.
    pub audio: AudioHead,
    /// Log audio-image logit scale `[1]`.
    pub logit_scale_ai: Param<Tensor<1>>,
    /// Log audio-text logit scale `[1]`.
    pub logit_scale_at: Param<Tensor<1>>,
}

impl AudioClipConfig {
    /// Builds a freshly initialized model; an error names what is wrong with the config.
    pub fn init(&self, device: &Device) -> clip_core::Result<AudioClip> {
        self.validate("AudioClipConfig")?;
        let f = &self.fbsp;
        let window = blackman_harris(f.win_length);
        let audio = AudioHead {
            fbsp: LinearFbsp::init(f.frequencies(), f.normalized, device),
            window: Param::from_tensor(Tensor::from_data(TensorData::new(window, [f.win_length]), device)),
            body: self.audio.init(device),
            fc: LinearConfig::new(self.audio.feature_width(), self.embed_dim()).init(device),
            sample_rate: f.sample_rate,
            n_fft: f.n_fft,
            hop_length: f.hop_length,
            win_length: f.win_length,
            bands: self.audio.bands,
        };
        let scalar = |value: f64| Param::from_tensor(Tensor::from_floats([value as f32], device));
        Ok(AudioClip {
            clip: self.clip.init(device),
            audio,
            logit_scale_ai: scalar(self.init_logit_scale_ai),
            logit_scale_at: scalar(self.init_logit_scale_at),
        })
    }
}

/// `clamp(exp(s), 1, 100)` of a log logit scale `[1]`.
pub fn clamped_scale(log_scale: Tensor<1>) -> Tensor<1> {
    log_scale.exp().clamp(LOGIT_SCALE_RANGE.0, LOGIT_SCALE_RANGE.1)
}

/// Logits between L2-normalized features: `scale * a b^T`.
pub fn scaled_logits(scale: Tensor<1>, a: Tensor<2>, b: Tensor<2>) -> Tensor<2> {
    a.matmul(b.transpose()) * scale.unsqueeze()
}

impl AudioClip {
    /// Audio embeddings `[batch, embed_dim]` of waveforms `[batch, channels, samples]` in int16
    /// units (official `encode_audio`), and the front-end kernels used (for `loss_ttf`).
    pub fn encode_audio(&self, audio: Tensor<3>) -> (Tensor<2>, FbspKernels) {
        self.audio.forward(audio)
    }

    /// Image embeddings `[batch, embed_dim]` (the ResNet's attention pool).
    pub fn encode_image(&self, images: Tensor<4>) -> Tensor<2> {
        self.clip.encode_image(images, false)
    }

    /// Text embeddings `[batch, embed_dim]`.
    pub fn encode_text(&self, tokens: Tensor<2, Int>) -> Tensor<2> {
        self.clip.encode_text(tokens, false)
    }

    /// The clamped audio-image scale `[1]`.
    pub fn scale_ai(&self) -> Tensor<1> {
        clamped_scale(self.logit_scale_ai.val())
    }

    /// The clamped audio-text scale `[1]`.
    pub fn scale_at(&self) -> Tensor<1> {
        clamped_scale(self.logit_scale_at.val())
    }

    /// The clamped image-text scale `[1]` (CLIP's `logit_scale`).
    pub fn scale_it(&self) -> Tensor<1> {
        clamped_scale(self.clip.logit_scale.val())
    }

    /// Audio-image logits `[audio, images]` of embeddings (normalized here).
    pub fn logits_audio_image(&self, audio: Tensor<2>, image: Tensor<2>) -> Tensor<2> {
        scaled_logits(self.scale_ai(), l2_normalize(audio), l2_normalize(image))
    }

    /// Audio-text logits `[audio, texts]` of embeddings (normalized here).
    pub fn logits_audio_text(&self, audio: Tensor<2>, text: Tensor<2>) -> Tensor<2> {
        scaled_logits(self.scale_at(), l2_normalize(audio), l2_normalize(text))
    }

    /// Image-text logits `[images, texts]` of embeddings (normalized here).
    pub fn logits_image_text(&self, image: Tensor<2>, text: Tensor<2>) -> Tensor<2> {
        scaled_logits(self.scale_it(), l2_normalize(image), l2_normalize(text))
    }

    /// The model with the CLIP towers and `logit_scale` frozen (the paper's audio-head stage):
    /// no gradients, and BatchNorm on its running statistics.
    pub fn freeze_clip(mut self) -> Self {
        self.clip = self.clip.freeze();
        self
    }
}

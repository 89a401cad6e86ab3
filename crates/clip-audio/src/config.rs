//! Configuration of AudioCLIP: the Fourier front end ([`FbspConfig`]), the audio body
//! ([`EsResNeXtConfig`]) and the whole model ([`AudioClipConfig`]: both plus the CLIP it joins).
//! The defaults are the paper's (`AudioCLIP-Full-Training.pt`); smaller bodies are data, not code.

use burn::config::Config;
use clip_core::ClipError;
use clip_core::config::ClipConfig;
use clip_core::image_tower::ImageTowerConfig;

/// clip-core's result (not imported as `Result`, which `#[derive(Config)]` uses unqualified).
type ClipResult<T> = clip_core::Result<T>;

/// `ln(100)`: the initial value of the two audio logit scales, as the official code.
pub const LN_100: f64 = 4.605_170_185_988_092;

/// The ResNeXt's input channels: the power spectrogram is split into this many frequency
/// bands, stacked as channels (`conv1.in_channels` of the official code).
pub const OFFICIAL_BANDS: usize = 3;

/// The official attention kernels `(height, width)` of `att1..att5` (padding `k / 2`).
pub const OFFICIAL_ATTENTION_KERNELS: [[usize; 2]; 5] = [[3, 1], [1, 5], [3, 1], [1, 5], [3, 5]];

/// The trainable Fourier-basis front end (LinearFBSP) and its framing: the official settings
/// by default (n_fft 2048, hop 561, window 1654 Blackman-Harris, normalized, one-sided).
#[derive(Config, Debug, PartialEq)]
pub struct FbspConfig {
    /// Sample rate the model reads, in Hz (44.1 kHz in the paper).
    #[config(default = 44100)]
    pub sample_rate: usize,
    /// Length of the zero-padded frame the kernels span (`n_fft`).
    #[config(default = 2048)]
    pub n_fft: usize,
    /// Samples between frames.
    #[config(default = 561)]
    pub hop_length: usize,
    /// Samples of a frame (the Blackman-Harris window length), at most `n_fft`.
    #[config(default = 1654)]
    pub win_length: usize,
    /// Divides the kernels by `sqrt(n_fft)` (and so the `loss_ttf` target is 1, not `sqrt(n_fft)`).
    #[config(default = true)]
    pub normalized: bool,
}

impl FbspConfig {
    /// Output frequencies of the one-sided transform: `n_fft / 2 + 1`.
    pub fn frequencies(&self) -> usize {
        self.n_fft / 2 + 1
    }

    /// Frames of a `samples`-long signal: `1 + ceil((samples - win) / hop)`, 1 when shorter
    /// than a window (`utils.transforms.frame_signal`).
    pub fn frames(&self, samples: usize) -> usize {
        if samples <= self.win_length { 1 } else { 1 + (samples - self.win_length).div_ceil(self.hop_length) }
    }

    /// Checks the settings; `origin` names the error.
    pub fn validate(&self, origin: &str) -> ClipResult<()> {
        let checks = [
            (self.sample_rate > 0, "fbsp.sample_rate must be positive"),
            (self.n_fft >= 2, "fbsp.n_fft must be at least 2"),
            (self.hop_length > 0, "fbsp.hop_length must be positive"),
            (self.win_length > 0 && self.win_length <= self.n_fft, "fbsp.win_length must be in 1..=n_fft"),
        ];
        match checks.iter().find(|(ok, _)| !ok) {
            Some((_, message)) => Err(ClipError::config(origin, *message)),
            None => Ok(()),
        }
    }
}

/// The ESResNeXt body: a torchvision ResNeXt (7x7/2 stem, 3x3/2 max pool, bottleneck stages
/// with grouped 3x3 convolutions) with AudioCLIP's attention blocks `att1..att5`. The default is
/// ResNeXt-50 32x4d; [`EsResNeXtConfig::small`] is a CPU-sized body of the same design.
#[derive(Config, Debug, PartialEq)]
pub struct EsResNeXtConfig {
    /// Bottleneck blocks per stage.
    #[config(default = "[3, 4, 6, 3]")]
    pub layers: [usize; 4],
    /// Stem width; stage `i` has `stem_width * 2^i` planes and `4 *` that many output channels.
    #[config(default = 64)]
    pub stem_width: usize,
    /// Groups of the 3x3 convolutions (cardinality).
    #[config(default = 32)]
    pub groups: usize,
    /// Channels per group at 64 planes (torchvision's `width_per_group`): a block of `planes`
    /// has `floor(planes * width_per_group / 64) * groups` inner channels.
    #[config(default = 4)]
    pub width_per_group: usize,
    /// Whether the attention blocks are built and applied (`apply_attention`).
    #[config(default = true)]
    pub attention: bool,
    /// Depthwise kernels `(height, width)` of `att1..att5`, padded by half their size.
    #[config(default = "OFFICIAL_ATTENTION_KERNELS")]
    pub attention_kernels: [[usize; 2]; 5],
    /// Frequency bands the spectrogram is split into, the body's input channels.
    #[config(default = "OFFICIAL_BANDS")]
    pub bands: usize,
}

impl EsResNeXtConfig {
    /// A small body for CPU runs: one block per stage, stem 16, 4 groups of 4 channels.
    pub fn small() -> Self {
        Self::new().with_layers([1, 1, 1, 1]).with_stem_width(16).with_groups(4).with_width_per_group(16)
    }

    /// Planes of stage `stage` (0-based).
    pub fn planes(&self, stage: usize) -> usize {
        self.stem_width << stage
    }

    /// Inner (grouped) channels of a bottleneck of stage `stage`.
    pub fn inner_width(&self, stage: usize) -> usize {
        self.planes(stage) * self.width_per_group / 64 * self.groups
    }

    /// Channels of the last stage, the pooled feature size (2048 for ResNeXt-50).
    pub fn feature_width(&self) -> usize {
        self.planes(3) * 4
    }

    /// Checks the architecture; `origin` names the error.
    pub fn validate(&self, origin: &str) -> ClipResult<()> {
        let inner_ok = (0..4).all(|s| self.inner_width(s) > 0);
        let checks = [
            (self.layers.iter().all(|&b| b > 0), "audio.layers: every stage needs at least one block"),
            (self.stem_width > 0, "audio.stem_width must be positive"),
            (self.groups > 0, "audio.groups must be positive"),
            (inner_ok, "audio: stem_width * width_per_group / 64 must be at least 1 (a bottleneck needs channels)"),
            (self.bands > 0, "audio.bands must be positive"),
            (self.attention_kernels.iter().flatten().all(|&k| k % 2 == 1), "audio.attention_kernels must be odd"),
        ];
        match checks.iter().find(|(ok, _)| !ok) {
            Some((_, message)) => Err(ClipError::config(origin, *message)),
            None => Ok(()),
        }
    }
}

/// AudioCLIP: an OpenAI ResNet CLIP (image and text towers, `logit_scale`) plus the audio head
/// (front end, body, `fc` to CLIP's embedding) and the two audio logit scales.
#[derive(Config, Debug, PartialEq)]
pub struct AudioClipConfig {
    /// The CLIP: a ModifiedResNet image tower (RN50 in the paper) and OpenAI's text tower.
    pub clip: ClipConfig,
    /// The front end.
    #[config(default = "FbspConfig::new()")]
    pub fbsp: FbspConfig,
    /// The audio body.
    #[config(default = "EsResNeXtConfig::new()")]
    pub audio: EsResNeXtConfig,
    /// Initial log audio-image logit scale (`logit_scale_ai`).
    #[config(default = "LN_100")]
    pub init_logit_scale_ai: f64,
    /// Initial log audio-text logit scale (`logit_scale_at`).
    #[config(default = "LN_100")]
    pub init_logit_scale_at: f64,
}

impl AudioClipConfig {
    /// Joint embedding size.
    pub fn embed_dim(&self) -> usize {
        self.clip.embed_dim
    }

    /// Checks the whole architecture; `origin` names the error.
    pub fn validate(&self, origin: &str) -> ClipResult<()> {
        if !matches!(self.clip.vision, ImageTowerConfig::ResNet(_)) {
            return Err(ClipError::config(origin, "AudioCLIP joins a ResNet CLIP (ModifiedResNet image tower)"));
        }
        self.clip.validate(origin)?;
        self.fbsp.validate(origin)?;
        self.audio.validate(origin)?;
        if self.fbsp.frequencies() < self.audio.bands {
            return Err(ClipError::config(origin, "fbsp.n_fft / 2 + 1 must be at least audio.bands"));
        }
        Ok(())
    }
}

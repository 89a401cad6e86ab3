//! The tri-modal contrastive objective of AudioCLIP.
//!
//! For every pair of modalities present in a batch of `N` matching triples, with the clamped
//! logit matrix `L` of that pair, the symmetric cross-entropy with the diagonal as target:
//!
//! ```text
//! l(L)  = CE(L, arange(N)) + CE(L^T, arange(N))
//! loss  = (w_ai l(L_ai) + w_at l(L_at) + w_it l(L_it)) / k!  +  w_ttf loss_ttf
//! ```
//!
//! where `k` is the number of logit matrices present (the official code divides by `k!`, so by
//! 6 with three matrices and by 1 with one) and `loss_ttf` is the front end's kernel-norm
//! penalty, added whenever audio is in the batch. The official weights are all 1.

use burn::tensor::Tensor;
use clip_core::{ClipLoss, l2_normalize};
use serde::{Deserialize, Serialize};

use crate::fbsp::FbspKernels;
use crate::model::{AudioClip, scaled_logits};

/// Weights of the loss terms (all 1 officially; 0 leaves a term out).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LossWeights {
    /// Audio-text term.
    pub audio_text: f64,
    /// Audio-image term.
    pub audio_image: f64,
    /// Image-text term.
    pub image_text: f64,
    /// Front-end kernel-norm penalty.
    pub ttf: f64,
}

impl Default for LossWeights {
    fn default() -> Self {
        Self { audio_text: 1.0, audio_image: 1.0, image_text: 1.0, ttf: 1.0 }
    }
}

impl LossWeights {
    /// Checks that every weight is finite and non-negative; the error names the key under
    /// `prefix` (`audioclip.loss_weights`).
    pub fn validate(&self, prefix: &str) -> Result<(), String> {
        for (name, value) in
            [("audio_text", self.audio_text), ("audio_image", self.audio_image), ("image_text", self.image_text), ("ttf", self.ttf)]
        {
            if !value.is_finite() || value < 0.0 {
                return Err(format!("{prefix}.{name} must be a finite number >= 0, not {value}"));
            }
        }
        Ok(())
    }
}

/// Embeddings of one batch of matching triples (any of them may be absent), not normalized.
#[derive(Debug, Clone, Default)]
pub struct Embeddings {
    /// Audio embeddings `[N, D]`.
    pub audio: Option<Tensor<2>>,
    /// Image embeddings `[N, D]`.
    pub image: Option<Tensor<2>>,
    /// Text embeddings `[N, D]`.
    pub text: Option<Tensor<2>>,
    /// The front-end kernels of the audio forward pass (for `loss_ttf`).
    pub kernels: Option<FbspKernels>,
}

/// The loss and its parts (each `[1]`), the parts unweighted.
#[derive(Debug, Clone)]
pub struct LossTerms {
    /// The total.
    pub total: Tensor<1>,
    /// `l(L_at)` when audio and text are present and weighted.
    pub audio_text: Option<Tensor<1>>,
    /// `l(L_ai)`.
    pub audio_image: Option<Tensor<1>>,
    /// `l(L_it)`.
    pub image_text: Option<Tensor<1>>,
    /// `loss_ttf` when audio is present.
    pub ttf: Option<Tensor<1>>,
    /// Logit matrices present (`k`).
    pub matrices: usize,
}

/// The tri-modal loss with per-term weights.
#[derive(Debug, Clone, Copy, Default)]
pub struct TriModalLoss {
    /// Term weights.
    pub weights: LossWeights,
}

/// `CE(L) + CE(L^T)` with the diagonal as target, `[1]`.
pub fn symmetric_cross_entropy(logits_scale: Tensor<1>, a: Tensor<2>, b: Tensor<2>) -> Tensor<1> {
    // clip-core's ClipLoss is the mean of the two directions.
    ClipLoss::default().forward(a, b, logits_scale) * 2.0
}

impl TriModalLoss {
    /// The loss of `embeddings` under `model`'s clamped logit scales. `None` when fewer than
    /// two modalities are present (no logit matrix).
    pub fn forward(&self, model: &AudioClip, embeddings: Embeddings) -> Option<LossTerms> {
        let w = self.weights;
        let audio = embeddings.audio.map(l2_normalize);
        let image = embeddings.image.map(l2_normalize);
        let text = embeddings.text.map(l2_normalize);
        let pair = |a: &Option<Tensor<2>>, b: &Option<Tensor<2>>, weight: f64| match (a, b) {
            (Some(a), Some(b)) if weight > 0.0 => Some((a.clone(), b.clone())),
            _ => None,
        };
        let audio_image = pair(&audio, &image, w.audio_image).map(|(a, i)| symmetric_cross_entropy(model.scale_ai(), a, i));
        let audio_text = pair(&audio, &text, w.audio_text).map(|(a, t)| symmetric_cross_entropy(model.scale_at(), a, t));
        let image_text = pair(&image, &text, w.image_text).map(|(i, t)| symmetric_cross_entropy(model.scale_it(), i, t));
        let weighted: Vec<Tensor<1>> = [(&audio_image, w.audio_image), (&audio_text, w.audio_text), (&image_text, w.image_text)]
            .into_iter()
            .filter_map(|(term, weight)| term.clone().map(|t| t * weight))
            .collect();
        let matrices = weighted.len();
        let factorial: usize = (1..=matrices).product();
        let mut total = weighted.into_iter().reduce(|a, b| a + b)? / factorial as f64;
        let ttf = match (&audio, &embeddings.kernels) {
            (Some(_), Some(kernels)) => Some(model.audio.loss_ttf(kernels)),
            _ => None,
        };
        if let Some(ttf) = &ttf
            && w.ttf > 0.0
        {
            total = total + ttf.clone() * w.ttf;
        }
        Some(LossTerms { total, audio_text, audio_image, image_text, ttf, matrices })
    }
}

/// The three logit matrices of normalized features (official `forward`'s logits), each
/// `Some` where both modalities are given: `(audio-image, audio-text, image-text)`.
pub fn logits(
    model: &AudioClip,
    audio: Option<Tensor<2>>,
    image: Option<Tensor<2>>,
    text: Option<Tensor<2>>,
) -> (Option<Tensor<2>>, Option<Tensor<2>>, Option<Tensor<2>>) {
    let (audio, image, text) = (audio.map(l2_normalize), image.map(l2_normalize), text.map(l2_normalize));
    let ai = audio.clone().zip(image.clone()).map(|(a, i)| scaled_logits(model.scale_ai(), a, i));
    let at = audio.zip(text.clone()).map(|(a, t)| scaled_logits(model.scale_at(), a, t));
    let it = image.zip(text).map(|(i, t)| scaled_logits(model.scale_it(), i, t));
    (ai, at, it)
}

//! The Fourier-basis front end of ESResNeXt-FBSP: the waveform is scaled, cut into windowed
//! frames, and each frame is projected onto trainable complex kernels (LinearFBSP), one per
//! output frequency `k`:
//!
//! ```text
//! t_n    = pi * linspace(-1, 1, N)_n + 1e-8                       (N = n_fft)
//! w_k(t) = sinc(fb_k t / (m_k + 1e-8)) ^ m_k                       (complex power of a real)
//! W_k(t) = sqrt(fb_k) * w_k(t) * exp(-i fc_k t)   [/ sqrt(N) when normalized]
//! X[f,k] = sum_n frame_f[n] * W_k(t_n)
//! ```
//!
//! With `m = 0`, `fb = 1`, `fc = k` (the initialization) this is the DFT of the frame up to a
//! phase; training moves the centre frequency `fc`, bandwidth `fb` and window exponent `m` of
//! each kernel. The kernels' norms are pulled towards 1 by [`LinearFbsp::loss_ttf`].

use std::f32::consts::PI;

use burn::module::{Module, Param};
use burn::tensor::{Device, Tensor, TensorData};

use crate::config::FbspConfig;

/// The `eps` of the official LinearFBSP (added to `t` and to `m`).
pub const FBSP_EPS: f32 = 1e-8;

/// The trainable kernels: per output frequency a window exponent `m`, a bandwidth `fb` and a
/// centre frequency `fc` (each `[frequencies]`).
#[derive(Module, Debug)]
pub struct LinearFbsp {
    /// Window exponent, `[K]` (initialized 0).
    pub m: Param<Tensor<1>>,
    /// Bandwidth, `[K]` (initialized 1).
    pub fb: Param<Tensor<1>>,
    /// Centre frequency in cycles per frame, `[K]` (initialized `0..K`).
    pub fc: Param<Tensor<1>>,
    /// Whether the kernels are divided by `sqrt(N)`.
    pub normalized: bool,
}

/// The complex kernels `W`, real and imaginary parts, each `[K, N]`.
#[derive(Debug, Clone)]
pub struct FbspKernels {
    /// Real parts.
    pub re: Tensor<2>,
    /// Imaginary parts.
    pub im: Tensor<2>,
}

impl LinearFbsp {
    /// The official initialization: `m = 0`, `fb = 1`, `fc = 0, 1, ..., K - 1`.
    pub fn init(frequencies: usize, normalized: bool, device: &Device) -> Self {
        let fc: Vec<f32> = (0..frequencies).map(|k| k as f32).collect();
        Self {
            m: Param::from_tensor(Tensor::zeros([frequencies], device)),
            fb: Param::from_tensor(Tensor::ones([frequencies], device)),
            fc: Param::from_tensor(Tensor::from_data(TensorData::new(fc, [frequencies]), device)),
            normalized,
        }
    }

    /// Output frequencies `K`.
    pub fn frequencies(&self) -> usize {
        self.m.dims()[0]
    }

    /// The kernels over `n` input samples (the zero-padded frame length).
    pub fn kernels(&self, n: usize) -> FbspKernels {
        let device = self.m.device();
        let t = Tensor::<2>::from_data(TensorData::new(kernel_time(n), [1, n]), &device);
        let m = self.m.val().unsqueeze_dim::<2>(1);
        let fb = self.fb.val().unsqueeze_dim::<2>(1);
        let fc = self.fc.val().unsqueeze_dim::<2>(1);

        let angle = fc * t.clone();
        let (cos, sin) = (angle.clone().cos(), angle.sin());
        let win = sinc(fb.clone() * t / (m.clone() + FBSP_EPS));
        // LinearFBSP.power(win + 0i, m + 0i): |win|^m with phase m * atan2(0, win), which is
        // m * pi where the real window is negative.
        let magnitude = win.clone().square().sqrt();
        let scaled = magnitude.square().powf(m.clone() * 0.5);
        let phase = win.zeros_like().mask_fill(win.lower_elem(0.0), PI) * m;
        let (wr, wi) = (scaled.clone() * phase.clone().cos(), scaled * phase.sin());
        let scale = fb.sqrt();
        let mut re = scale.clone() * (wr.clone() * cos.clone() + wi.clone() * sin.clone());
        let mut im = scale * (wi * cos - wr * sin);
        if self.normalized {
            let norm = (n as f64).sqrt() as f32;
            re = re / norm;
            im = im / norm;
        }
        FbspKernels { re, im }
    }

    /// Projects zero-padded frames `[batch, frames, N]` onto the kernels: real and imaginary
    /// spectra `[batch, frames, K]`, with the kernels used (for [`loss_ttf`](Self::loss_ttf)).
    pub fn forward(&self, frames: Tensor<3>) -> (Tensor<3>, Tensor<3>, FbspKernels) {
        let n = frames.dims()[2];
        let kernels = self.kernels(n);
        let re = frames.clone().matmul(kernels.re.clone().transpose().unsqueeze());
        let im = frames.matmul(kernels.im.clone().transpose().unsqueeze());
        (re, im, kernels)
    }

    /// The official `loss_ttf`: the mean squared difference between each kernel's L2 norm
    /// (over samples and real/imaginary parts) and its target, 1 when normalized, else
    /// `sqrt(N)`. `[1]`.
    pub fn loss_ttf(&self, kernels: &FbspKernels) -> Tensor<1> {
        let n = kernels.re.dims()[1];
        let target = if self.normalized { 1.0 } else { (n as f64).sqrt() as f32 };
        let norm = (kernels.re.clone().square().sum_dim(1) + kernels.im.clone().square().sum_dim(1)).sqrt();
        (norm - target).square().mean()
    }
}

/// `sin(x) / x`, 1 at 0 (with a gradient free of NaNs there).
pub fn sinc(x: Tensor<2>) -> Tensor<2> {
    let zero = x.clone().equal_elem(0.0);
    let safe = x.mask_fill(zero.clone(), 1.0);
    (safe.clone().sin() / safe).mask_fill(zero, 1.0)
}

/// `pi * linspace(-1, 1, n) + 1e-8` in f32: the grid rounded from f64 (as the fixtures' PyTorch
/// produces it; an f32 recurrence moves the phase of the highest kernels by ~1e-4), then the f32
/// product with pi and sum with 1e-8 of the official code.
pub fn kernel_time(n: usize) -> Vec<f32> {
    if n == 1 {
        return vec![-PI + FBSP_EPS];
    }
    let step = 2.0f64 / (n - 1) as f64;
    (0..n)
        .map(|i| {
            let x = if i == n - 1 { 1.0 } else { -1.0 + step * i as f64 };
            PI * x as f32 + FBSP_EPS
        })
        .collect()
}

/// The periodic Blackman-Harris window of `length` samples (SciPy's `get_window('blackmanharris',
/// length, fftbins=True)`), in f32.
pub fn blackman_harris(length: usize) -> Vec<f32> {
    const A: [f64; 4] = [0.35875, 0.48829, 0.14128, 0.01168];
    (0..length)
        .map(|i| {
            let x = 2.0 * std::f64::consts::PI * i as f64 / length as f64;
            (A[0] - A[1] * x.cos() + A[2] * (2.0 * x).cos() - A[3] * (3.0 * x).cos()) as f32
        })
        .collect()
}

/// The official `scale(x, -32768, 32767, -1, 1)`: int16 units to `[-1, 1]`, asymmetrically
/// (`((x + 32768) * 2) / 65535 - 1`, so digital silence becomes `+1.5e-5`).
pub fn scale_int16(x: Tensor<2>) -> Tensor<2> {
    (x + 32768.0) * 2.0 / 65535.0 - 1.0
}

/// `utils.transforms.frame_signal` followed by the zero padding to `n_fft`: signals `[rows, T]`
/// to windowed frames `[rows, frames, n_fft]`. The signal is zero-padded to
/// `(frames - 1) * hop + win` (half of the padding, rounded down, on the left); each frame is
/// multiplied by `window` (`[win]`) and padded to `n_fft` (`(n_fft - win) / 2` zeros, rounded
/// down, on the left).
pub fn frame_signal(signal: Tensor<2>, window: Tensor<1>, config: &FbspConfig) -> Tensor<3> {
    let [rows, samples] = signal.dims();
    let device = signal.device();
    let (win, hop) = (config.win_length, config.hop_length);
    let frames = config.frames(samples);
    let padded_length = (frames - 1) * hop + win;
    let signal = if padded_length > samples {
        let pad = padded_length - samples;
        let left = pad / 2;
        Tensor::cat(
            vec![Tensor::zeros([rows, left], &device), signal, Tensor::zeros([rows, pad - left], &device)],
            1,
        )
    } else {
        signal
    };
    let pieces: Vec<Tensor<2>> = (0..frames).map(|f| signal.clone().slice([0..rows, f * hop..f * hop + win])).collect();
    let framed = Tensor::stack::<3>(pieces, 1) * window.unsqueeze::<3>();
    let pad = config.n_fft - win;
    if pad == 0 {
        return framed;
    }
    let left = pad / 2;
    Tensor::cat(
        vec![Tensor::zeros([rows, frames, left], &device), framed, Tensor::zeros([rows, frames, pad - left], &device)],
        2,
    )
}

/// What the front end produces for a batch of waveforms.
#[derive(Debug, Clone)]
pub struct Spectrogram {
    /// Real part `[batch * channels, K, frames]`.
    pub re: Tensor<3>,
    /// Imaginary part `[batch * channels, K, frames]`.
    pub im: Tensor<3>,
    /// The kernels used, `[K, N]` each.
    pub kernels: FbspKernels,
}

/// The floor the official code puts under non-positive powers before `log10`.
pub const POWER_FLOOR: f32 = 1e-18;

/// The band-split log power of a spectrogram: the first `bands * floor(K / bands)` frequencies,
/// cut into `bands` bands of consecutive frequencies, power `re^2 + im^2` (non-positive values
/// replaced by 1e-18), in dB: `[batch, channels, bands, K / bands, frames]`.
pub fn band_split_db(spectrogram: &Spectrogram, batch: usize, bands: usize) -> Tensor<5> {
    let [rows, frequencies, frames] = spectrogram.re.dims();
    let per_band = frequencies / bands;
    let kept = per_band * bands;
    let channels = rows / batch.max(1);
    let power = spectrogram.re.clone().slice([0..rows, 0..kept, 0..frames]).square()
        + spectrogram.im.clone().slice([0..rows, 0..kept, 0..frames]).square();
    let power = power.clone().mask_fill(power.lower_equal_elem(0.0), POWER_FLOOR);
    power.log().mul_scalar(10.0 / std::f32::consts::LN_10).reshape([batch, channels, bands, per_band, frames])
}

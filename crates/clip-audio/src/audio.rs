//! Audio files to the model's input: WAV, FLAC, MP3 and OGG/Vorbis decoded with symphonia,
//! mixed down to mono, resampled with rubato to the model's rate, cropped or padded to a fixed
//! length and scaled as the official `utils/datasets/esc50.py` does: float samples in `[-1, 1]`
//! times 32768, i.e. int16 units. Every failure names the file.

use std::fs::File;
use std::path::{Path, PathBuf};

use rubato::audioadapter_buffers::direct::InterleavedSlice;
use rubato::{Fft, FixedSync, Resampler};
use symphonia::core::audio::SampleBuffer;
use symphonia::core::codecs::{CODEC_TYPE_NULL, DecoderOptions};
use symphonia::core::errors::Error as SymphoniaError;
use symphonia::core::formats::FormatOptions;
use symphonia::core::io::MediaSourceStream;
use symphonia::core::meta::MetadataOptions;
use symphonia::core::probe::Hint;

/// The factor from float samples to the int16 units the model reads (`librosa float * 32768`).
pub const INT16_SCALE: f32 = 32768.0;

/// An audio file that could not be read, naming it.
#[derive(Debug, thiserror::Error)]
#[error("{}: {message}", path.display())]
pub struct AudioError {
    /// The file.
    pub path: PathBuf,
    /// What is wrong.
    pub message: String,
}

impl AudioError {
    fn new(path: &Path, message: impl Into<String>) -> Self {
        Self { path: path.to_path_buf(), message: message.into() }
    }
}

/// A decoded clip: mono samples in `[-1, 1]` at `sample_rate`.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    /// Mono samples (the mean of the channels).
    pub samples: Vec<f32>,
    /// Samples per second.
    pub sample_rate: u32,
    /// Channels of the file before the mixdown.
    pub channels: usize,
}

/// Decodes an audio file (format found from its contents, the extension as a hint) and mixes
/// it down to mono. An empty, truncated-to-nothing or corrupt file is an error naming it.
pub fn decode_file(path: &Path) -> Result<Decoded, AudioError> {
    let file = File::open(path).map_err(|e| AudioError::new(path, e.to_string()))?;
    let length = file.metadata().map(|m| m.len()).unwrap_or(0);
    if length == 0 {
        return Err(AudioError::new(path, "empty file"));
    }
    let stream = MediaSourceStream::new(Box::new(file), Default::default());
    let mut hint = Hint::new();
    if let Some(extension) = path.extension().and_then(|e| e.to_str()) {
        hint.with_extension(extension);
    }
    let probed = symphonia::default::get_probe()
        .format(&hint, stream, &FormatOptions::default(), &MetadataOptions::default())
        .map_err(|e| AudioError::new(path, format!("not a readable audio file (WAV, FLAC, MP3, OGG): {e}")))?;
    let mut format = probed.format;
    let track = format
        .tracks()
        .iter()
        .find(|t| t.codec_params.codec != CODEC_TYPE_NULL)
        .ok_or_else(|| AudioError::new(path, "no audio track"))?;
    let track_id = track.id;
    let mut decoder = symphonia::default::get_codecs()
        .make(&track.codec_params, &DecoderOptions::default())
        .map_err(|e| AudioError::new(path, format!("unsupported codec: {e}")))?;
    let mut sample_rate = track.codec_params.sample_rate;
    let mut channels = track.codec_params.channels.map(|c| c.count()).unwrap_or(0);
    let mut mono = Vec::new();
    let mut decode_errors = 0usize;
    loop {
        let packet = match format.next_packet() {
            Ok(packet) => packet,
            Err(SymphoniaError::IoError(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(SymphoniaError::ResetRequired) => break,
            Err(e) => return Err(AudioError::new(path, format!("corrupt audio data: {e}"))),
        };
        if packet.track_id() != track_id {
            continue;
        }
        let buffer = match decoder.decode(&packet) {
            Ok(buffer) => buffer,
            // A damaged packet is skipped, as symphonia recommends; a file of only those fails below.
            Err(SymphoniaError::DecodeError(_)) => {
                decode_errors += 1;
                continue;
            }
            Err(e) => return Err(AudioError::new(path, format!("corrupt audio data: {e}"))),
        };
        let spec = *buffer.spec();
        sample_rate = Some(spec.rate);
        channels = spec.channels.count();
        if buffer.frames() == 0 || channels == 0 {
            continue;
        }
        let mut interleaved = SampleBuffer::<f32>::new(buffer.capacity() as u64, spec);
        interleaved.copy_interleaved_ref(buffer);
        let scale = 1.0 / channels as f32;
        mono.extend(interleaved.samples().chunks_exact(channels).map(|frame| frame.iter().sum::<f32>() * scale));
    }
    if mono.is_empty() {
        let why = if decode_errors > 0 { format!("no decodable audio ({decode_errors} corrupt packets)") } else { "no audio samples".into() };
        return Err(AudioError::new(path, why));
    }
    let sample_rate = sample_rate.filter(|&r| r > 0).ok_or_else(|| AudioError::new(path, "no sample rate"))?;
    if mono.iter().any(|s| !s.is_finite()) {
        return Err(AudioError::new(path, "non-finite samples"));
    }
    Ok(Decoded { samples: mono, sample_rate, channels })
}

/// Resamples mono `samples` from `from` Hz to `to` Hz with rubato's FFT resampler (band-limited;
/// the output has `round(len * to / from)` samples, its delay removed). `origin` names errors.
pub fn resample(samples: &[f32], from: u32, to: u32, origin: &Path) -> Result<Vec<f32>, AudioError> {
    if from == to || samples.is_empty() {
        return Ok(samples.to_vec());
    }
    let mut resampler = Fft::<f32>::new(from as usize, to as usize, 1024, 1, FixedSync::Both)
        .map_err(|e| AudioError::new(origin, format!("resampling {from} Hz to {to} Hz: {e}")))?;
    let input = InterleavedSlice::new(samples, 1, samples.len())
        .map_err(|e| AudioError::new(origin, format!("resampling: {e}")))?;
    let output = resampler
        .process_all(&input, samples.len(), None)
        .map_err(|e| AudioError::new(origin, format!("resampling {from} Hz to {to} Hz: {e}")))?;
    let mut out = output.take_data();
    let expected = (samples.len() as f64 * to as f64 / from as f64).round() as usize;
    out.resize(expected, 0.0);
    Ok(out)
}

/// Where a longer clip is cut and a shorter one placed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Crop {
    /// Centred (the official evaluation: `left = round((len - out) / 2)`).
    Center,
    /// At a position in `[0, 1)` of the free range (training: a random draw).
    At(f64),
}

/// Crops or pads `samples` to `length`. Padding repeats the edge samples, as the official
/// `RandomPadding` (the first sample on the left, the last on the right).
pub fn crop_or_pad(samples: &[f32], length: usize, crop: Crop) -> Vec<f32> {
    let n = samples.len();
    let offset = |free: usize| match crop {
        Crop::Center => (0.5 * free as f64).round() as usize,
        Crop::At(position) => ((position.clamp(0.0, 1.0) * free as f64) as usize).min(free),
    };
    if n >= length {
        let left = offset(n - length);
        return samples[left..left + length].to_vec();
    }
    let left = offset(length - n);
    let (first, last) = (samples.first().copied().unwrap_or(0.0), samples.last().copied().unwrap_or(0.0));
    let mut out = vec![first; left];
    out.extend_from_slice(samples);
    out.resize(length, last);
    out
}

/// How a file becomes model input.
#[derive(Debug, Clone, PartialEq)]
pub struct AudioOptions {
    /// The model's sample rate.
    pub sample_rate: u32,
    /// Samples of a clip (`sample_rate * seconds`; 5 s for ESC-50).
    pub samples: usize,
}

impl AudioOptions {
    /// Clips of `seconds` at `sample_rate`.
    pub fn new(sample_rate: u32, seconds: f64) -> Self {
        Self { sample_rate, samples: (sample_rate as f64 * seconds).round() as usize }
    }
}

/// Reads `path` as model input: decoded, mono, resampled, cropped or padded to
/// `options.samples`, in int16 units (`[-32768, 32767]`).
pub fn load_audio(path: &Path, options: &AudioOptions, crop: Crop) -> Result<Vec<f32>, AudioError> {
    let decoded = decode_file(path)?;
    let resampled = resample(&decoded.samples, decoded.sample_rate, options.sample_rate, path)?;
    let mut clip = crop_or_pad(&resampled, options.samples, crop);
    for sample in &mut clip {
        *sample *= INT16_SCALE;
    }
    Ok(clip)
}

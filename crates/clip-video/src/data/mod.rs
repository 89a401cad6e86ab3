//! Video data: videos as frame folders or video files, uniform frame sampling, and datasets.
//!
//! - [`VideoSource`]: a folder of frame images (sorted by file name) or a video file decoded
//!   by the `ffmpeg` command-line tools ([`Ffmpeg`]).
//! - [`FrameSampler`]: `frames` frames per clip, one per equal segment of the video (the
//!   middle frame for evaluation, a random one for training).
//! - [`load_clip`] and [`stack_videos`]: one clip as CLIP-transformed frames, and clips batched
//!   into `[batch, frames, 3, H, W]`; [`ClipAugment`]: one training crop and color decision per
//!   clip.
//! - [`VideoTable`]: (video, captions, label) samples from MSR-VTT's annotation JSON, a
//!   caption table, or a labelled table or class folders (Kinetics, UCF101).
//! - [`MovingShapesConfig`]: the generated moving-shapes set (`datasets/moving-shapes`), any size.

mod augment;
mod ffmpeg;
mod moving_shapes;
mod sampler;
mod table;

use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor, TensorData};
use clip_core::preprocess::{EvalTransform, ImageTensorData, PreprocessError, load_image};
use image::RgbImage;
use rand::Rng;

pub use augment::{ClipAugment, ClipAugmentConfig};
pub use ffmpeg::{FFMPEG_ENV, FFPROBE_ENV, Ffmpeg};
pub use moving_shapes::{MovingShapesConfig, SHAPE_COLORS, article};
pub use sampler::FrameSampler;
pub use table::{VideoSample, VideoTable};

/// Extensions (lower case) of the frame images of a frame folder.
const FRAME_EXTENSIONS: &[&str] = &[
    "png", "jpg", "jpeg", "bmp", "gif", "webp", "tif", "tiff", "ppm", "pgm", "pnm",
];

/// A problem with video data, naming the file (and the table line where there is one).
#[derive(Debug, thiserror::Error)]
pub enum VideoDataError {
    /// A table, annotation file or dataset folder is missing or malformed.
    #[error("{path}{}: {message}", line.map(|l| format!(":{l}")).unwrap_or_default())]
    Table {
        /// The file or folder.
        path: PathBuf,
        /// 1-based line, when the problem is in one line.
        line: Option<usize>,
        /// What is wrong.
        message: String,
    },
    /// A video file or frame folder is missing, empty or cannot be decoded.
    #[error("video {path}: {message}")]
    Video {
        /// The video file or frame folder.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The `ffmpeg` or `ffprobe` program is not installed (or not where it was said to be).
    #[error(
        "video {video}: cannot decode it without {program}, which was not found; install ffmpeg \
         (e.g. `apt install ffmpeg`) or name the programs in {FFMPEG_ENV} and {FFPROBE_ENV}"
    )]
    FfmpegMissing {
        /// The program that was not found.
        program: PathBuf,
        /// The video it was to decode.
        video: PathBuf,
    },
    /// A video of a table could not be loaded.
    #[error("{table}{}: {error}", if *line > 0 { format!(":{line}") } else { String::new() })]
    Sample {
        /// The table (or annotation file, or dataset folder) the video was listed in.
        table: PathBuf,
        /// The video's 1-based line in the table (0 where it has none).
        line: usize,
        /// What went wrong (shown in the message, so not also a `source`).
        error: Box<VideoDataError>,
    },
    /// A sampler setting or a batch is invalid.
    #[error("{message}")]
    Invalid {
        /// What is wrong.
        message: String,
    },
}

impl VideoDataError {
    fn table(path: &Path, line: Option<usize>, message: impl Into<String>) -> Self {
        Self::Table {
            path: path.to_path_buf(),
            line,
            message: message.into(),
        }
    }

    fn video(path: &Path, message: impl Into<String>) -> Self {
        Self::Video {
            path: path.to_path_buf(),
            message: message.into(),
        }
    }
}

/// Where a video's frames come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VideoSource {
    /// A folder of frame images (any format clip-core's `load_image` reads), in file-name order.
    Frames(PathBuf),
    /// A video file (mp4, avi, webm, mkv, ...) decoded with `ffmpeg`.
    File(PathBuf),
}

impl VideoSource {
    /// A folder is a frame folder, a file a video file; fails when `path` does not exist.
    pub fn from_path(path: &Path) -> Result<Self, VideoDataError> {
        if path.is_dir() {
            Ok(Self::Frames(path.to_path_buf()))
        } else if path.is_file() {
            Ok(Self::File(path.to_path_buf()))
        } else {
            Err(VideoDataError::video(path, "no such video file or frame folder"))
        }
    }

    /// The folder or file.
    pub fn path(&self) -> &Path {
        match self {
            Self::Frames(path) | Self::File(path) => path,
        }
    }

    /// The number of frames: frame images in the folder, or the video's frames as counted by
    /// `ffprobe` (the programs of [`Ffmpeg::from_env`]). Fails on an empty video.
    pub fn frame_count(&self) -> Result<usize, VideoDataError> {
        match self {
            Self::Frames(dir) => Ok(frame_files(dir)?.len()),
            Self::File(file) => Ffmpeg::from_env().frame_count(file),
        }
    }

    /// The frames `sampler` picks, as RGB images in time order.
    fn frames(&self, sampler: &FrameSampler, rng: &mut impl Rng) -> Result<Vec<RgbImage>, VideoDataError> {
        match self {
            Self::Frames(dir) => {
                let files = frame_files(dir)?;
                let indices = sampler.indices(files.len(), rng);
                let mut frames: Vec<RgbImage> = Vec::with_capacity(indices.len());
                for (position, &index) in indices.iter().enumerate() {
                    // Indices never decrease, so a repeated frame is the previous one.
                    if position > 0 && indices[position - 1] == index {
                        frames.push(frames[position - 1].clone());
                        continue;
                    }
                    let file = &files[index];
                    let frame = load_image(file).map_err(|e| {
                        let reason = match e {
                            PreprocessError::Io { error, .. } => error.to_string(),
                            PreprocessError::Decode { message, .. } => format!("cannot decode: {message}"),
                            other => other.to_string(),
                        };
                        VideoDataError::video(dir, format!("frame {}: {reason}", file.display()))
                    })?;
                    frames.push(frame);
                }
                Ok(frames)
            }
            Self::File(file) => {
                let tools = Ffmpeg::from_env();
                let indices = sampler.indices(tools.frame_count(file)?, rng);
                tools.frames(file, &indices)
            }
        }
    }
}

/// The frame images of a frame folder, sorted by file name; fails when there are none.
fn frame_files(dir: &Path) -> Result<Vec<PathBuf>, VideoDataError> {
    let entries = std::fs::read_dir(dir).map_err(|e| VideoDataError::video(dir, e.to_string()))?;
    let mut files = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| VideoDataError::video(dir, e.to_string()))?.path();
        let is_frame = path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| FRAME_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()));
        if is_frame && path.is_file() {
            files.push(path);
        }
    }
    if files.is_empty() {
        return Err(VideoDataError::video(dir, "the frame folder holds no frame images"));
    }
    files.sort();
    Ok(files)
}

/// Samples `sampler.frames` frames of a video and applies CLIP's evaluation transform to each:
/// `frames` images of `[3, S, S]` values, in time order.
pub fn load_clip(
    source: &VideoSource,
    sampler: &FrameSampler,
    transform: &EvalTransform,
    rng: &mut impl Rng,
) -> Result<Vec<ImageTensorData>, VideoDataError> {
    if sampler.frames == 0 {
        return Err(VideoDataError::Invalid {
            message: "the frame sampler takes 0 frames per clip".into(),
        });
    }
    let frames = source.frames(sampler, rng)?;
    frames
        .iter()
        .map(|frame| {
            transform
                .apply(frame)
                .map_err(|e| VideoDataError::video(source.path(), e.to_string()))
        })
        .collect()
}

/// Stacks clips of one length and frame size into a `[batch, frames, 3, H, W]` tensor.
pub fn stack_videos(videos: &[Vec<ImageTensorData>], device: &Device) -> Result<Tensor<5>, VideoDataError> {
    let invalid = |message: String| VideoDataError::Invalid { message };
    let Some(first) = videos.first().and_then(|v| v.first()) else {
        return Err(invalid(
            "cannot stack an empty list of videos, or videos without frames".into(),
        ));
    };
    let frames = videos[0].len();
    for (index, video) in videos.iter().enumerate() {
        if video.len() != frames {
            return Err(invalid(format!(
                "videos of a batch must have one length: video {index} has {} frames, the first {frames}",
                video.len()
            )));
        }
        if let Some((frame, image)) = video.iter().enumerate().find(|(_, i)| i.shape != first.shape) {
            return Err(invalid(format!(
                "frames of a batch must share one size: frame {frame} of video {index} is {:?}, the first is {:?}",
                image.shape, first.shape
            )));
        }
    }
    let [c, h, w] = first.shape;
    let values: Vec<f32> = videos.iter().flatten().flat_map(|i| i.values.iter().copied()).collect();
    Ok(Tensor::from_data(
        TensorData::new(values, [videos.len(), frames, c, h, w]),
        device,
    ))
}

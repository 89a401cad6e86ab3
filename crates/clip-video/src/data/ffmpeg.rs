//! Video files decoded by the `ffmpeg` command-line tools (an optional install): `ffprobe`
//! counts the frames, one `ffmpeg` call decodes only the sampled ones.

use std::ffi::OsString;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use image::RgbImage;

use super::VideoDataError;

/// Environment variable naming the `ffmpeg` program (default `ffmpeg`, found on `PATH`).
pub const FFMPEG_ENV: &str = "CLIPFORGE_FFMPEG";
/// Environment variable naming the `ffprobe` program (default: `ffprobe` beside the program
/// named by [`FFMPEG_ENV`], or `ffprobe` on `PATH`).
pub const FFPROBE_ENV: &str = "CLIPFORGE_FFPROBE";

/// The `ffmpeg` and `ffprobe` programs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ffmpeg {
    /// The `ffmpeg` program.
    pub ffmpeg: PathBuf,
    /// The `ffprobe` program.
    pub ffprobe: PathBuf,
}

impl Ffmpeg {
    /// The programs named by [`FFMPEG_ENV`] and [`FFPROBE_ENV`], else those on `PATH`.
    pub fn from_env() -> Self {
        Self::from_vars(std::env::var_os(FFMPEG_ENV), std::env::var_os(FFPROBE_ENV))
    }

    /// The programs given the values of [`FFMPEG_ENV`] and [`FFPROBE_ENV`].
    fn from_vars(ffmpeg: Option<OsString>, ffprobe: Option<OsString>) -> Self {
        let ffmpeg = ffmpeg.map(PathBuf::from);
        let ffprobe = ffprobe
            .map(PathBuf::from)
            .unwrap_or_else(|| match ffmpeg.as_deref().and_then(Path::parent) {
                Some(folder) if !folder.as_os_str().is_empty() => folder.join("ffprobe"),
                _ => PathBuf::from("ffprobe"),
            });
        Self {
            ffmpeg: ffmpeg.unwrap_or_else(|| PathBuf::from("ffmpeg")),
            ffprobe,
        }
    }

    /// The number of frames (packets) of the first video stream.
    pub fn frame_count(&self, video: &Path) -> Result<usize, VideoDataError> {
        let output = run(
            &self.ffprobe,
            video,
            Command::new(&self.ffprobe)
                .args(["-v", "error", "-select_streams", "v:0", "-count_packets"])
                .args(["-show_entries", "stream=nb_read_packets"])
                .args(["-of", "default=noprint_wrappers=1:nokey=1"])
                .arg(input(video)),
        )?;
        let text = String::from_utf8_lossy(&output.stdout);
        let text = text.trim();
        if text.is_empty() {
            return Err(video_error(video, "no video stream"));
        }
        match text.parse::<usize>() {
            Ok(0) => Err(video_error(video, "the video has no frames")),
            Ok(count) => Ok(count),
            Err(_) => Err(video_error(
                video,
                format!("ffprobe printed {text:?}, not a frame count"),
            )),
        }
    }

    /// Decodes the frames at `indices` (0-based, any order, repeats allowed) as RGB images, in
    /// the order of `indices`. ffmpeg decodes the video up to the last requested frame and
    /// sends back each distinct requested frame once.
    pub fn frames(&self, video: &Path, indices: &[usize]) -> Result<Vec<RgbImage>, VideoDataError> {
        let mut wanted = indices.to_vec();
        wanted.sort_unstable();
        wanted.dedup();
        if wanted.is_empty() {
            return Ok(Vec::new());
        }
        let select: Vec<String> = wanted.iter().map(|i| format!("eq(n,{i})")).collect();
        let output = run(
            &self.ffmpeg,
            video,
            Command::new(&self.ffmpeg)
                .args(["-v", "error", "-nostdin", "-i"])
                .arg(input(video))
                .args(["-map", "0:v:0", "-vf"])
                .arg(format!("select='{}'", select.join("+")))
                // One output frame per selected frame: no duplication to a constant rate.
                .args(["-vsync", "0", "-frames:v"])
                // Stops decoding after the last selected frame.
                .arg(wanted.len().to_string())
                .args(["-f", "image2pipe", "-c:v", "ppm", "-pix_fmt", "rgb24", "-"]),
        )?;
        let decoded = split_ppm(&output.stdout).map_err(|m| video_error(video, format!("ffmpeg output: {m}")))?;
        if decoded.len() != wanted.len() {
            return Err(video_error(
                video,
                format!(
                    "ffmpeg decoded {} of the {} requested frames (frames {wanted:?})",
                    decoded.len(),
                    wanted.len()
                ),
            ));
        }
        Ok(indices
            .iter()
            .map(|i| decoded[wanted.binary_search(i).expect("every index is in `wanted`")].clone())
            .collect())
    }
}

/// The video as a program argument: a relative path gets a leading `./`, so that a name
/// starting with `-` is not taken for an option.
fn input(video: &Path) -> PathBuf {
    if video.is_relative() {
        Path::new(".").join(video)
    } else {
        video.to_path_buf()
    }
}

fn video_error(video: &Path, message: impl Into<String>) -> VideoDataError {
    VideoDataError::Video {
        path: video.to_path_buf(),
        message: message.into(),
    }
}

/// Runs `command` (the program `program`) on `video`, failing with its standard error.
fn run(program: &Path, video: &Path, command: &mut Command) -> Result<Output, VideoDataError> {
    let output = command.output().map_err(|e| match e.kind() {
        ErrorKind::NotFound => VideoDataError::FfmpegMissing {
            program: program.to_path_buf(),
            video: video.to_path_buf(),
        },
        _ => video_error(video, format!("cannot run {}: {e}", program.display())),
    })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(video_error(
            video,
            format!("{} failed ({}): {}", program.display(), output.status, stderr.trim()),
        ));
    }
    Ok(output)
}

/// Splits concatenated binary PPM images (`P6`, maxval 255) into RGB images.
fn split_ppm(mut bytes: &[u8]) -> Result<Vec<RgbImage>, String> {
    let mut images = Vec::new();
    while !bytes.is_empty() {
        let (width, height, data) = ppm_header(bytes)?;
        let size = width as usize * height as usize * 3;
        if data.len() < size {
            return Err(format!("a {width}x{height} frame is cut short"));
        }
        let image = RgbImage::from_raw(width, height, data[..size].to_vec()).ok_or("a frame has no pixels")?;
        images.push(image);
        bytes = &data[size..];
    }
    Ok(images)
}

/// Width, height and the bytes after the header of a binary PPM: `P6`, then width, height and
/// maxval as decimal numbers separated by whitespace, then one whitespace byte.
fn ppm_header(bytes: &[u8]) -> Result<(u32, u32, &[u8]), String> {
    let rest = bytes.strip_prefix(b"P6").ok_or("expected a binary PPM frame (P6)")?;
    let mut rest = rest;
    let mut numbers = [0u32; 3];
    for number in &mut numbers {
        let start = rest
            .iter()
            .position(|b| !b.is_ascii_whitespace())
            .ok_or("a PPM header is cut short")?;
        rest = &rest[start..];
        let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        *number = std::str::from_utf8(&rest[..digits])
            .ok()
            .and_then(|d| d.parse().ok())
            .ok_or("a PPM header has a malformed number")?;
        rest = &rest[digits..];
    }
    let [width, height, maxval] = numbers;
    if maxval != 255 {
        return Err(format!("a frame has {maxval} levels per channel, not 255"));
    }
    match rest.split_first() {
        Some((b, data)) if b.is_ascii_whitespace() => Ok((width, height, data)),
        _ => Err("a PPM header is cut short".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ppm_stream_splits_into_frames() {
        let mut stream = b"P6\n2 1\n255\n".to_vec();
        stream.extend([1, 2, 3, 4, 5, 6]);
        stream.extend(b"P6 1  1\t255\n");
        stream.extend([7, 8, 9]);
        let frames = split_ppm(&stream).unwrap();
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[0].dimensions(), (2, 1));
        assert_eq!(frames[0].get_pixel(1, 0).0, [4, 5, 6]);
        assert_eq!(frames[1].get_pixel(0, 0).0, [7, 8, 9]);

        assert!(
            split_ppm(&stream[..stream.len() - 1])
                .unwrap_err()
                .contains("cut short")
        );
        assert!(
            split_ppm(b"P6\n1 1\n65535\n\0\0\0\0\0\0")
                .unwrap_err()
                .contains("65535 levels")
        );
        assert!(split_ppm(b"P5\n1 1\n255\n\0").unwrap_err().contains("P6"));
    }

    #[test]
    fn ffprobe_defaults_beside_ffmpeg() {
        let tools = |ffmpeg: Option<&str>, ffprobe: Option<&str>| {
            let tools = Ffmpeg::from_vars(ffmpeg.map(Into::into), ffprobe.map(Into::into));
            (tools.ffmpeg.display().to_string(), tools.ffprobe.display().to_string())
        };
        assert_eq!(tools(None, None), ("ffmpeg".into(), "ffprobe".into()));
        assert_eq!(
            tools(Some("/opt/ff/ffmpeg"), None),
            ("/opt/ff/ffmpeg".into(), "/opt/ff/ffprobe".into())
        );
        assert_eq!(tools(Some("ffmpeg7"), None), ("ffmpeg7".into(), "ffprobe".into()));
        assert_eq!(
            tools(Some("/a/ffmpeg"), Some("/b/probe")),
            ("/a/ffmpeg".into(), "/b/probe".into())
        );
    }

    #[test]
    fn missing_programs_are_named() {
        let tools = Ffmpeg {
            ffmpeg: "/nonexistent/ffmpeg".into(),
            ffprobe: "/nonexistent/ffprobe".into(),
        };
        let err = tools.frame_count(Path::new("clip.mp4")).unwrap_err();
        assert!(matches!(err, VideoDataError::FfmpegMissing { .. }), "{err}");
        let message = err.to_string();
        assert!(
            message.contains("/nonexistent/ffprobe") && message.contains("clip.mp4"),
            "{message}"
        );
        assert!(message.contains("apt install ffmpeg"), "{message}");
        let err = tools.frames(Path::new("clip.mp4"), &[0]).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/ffmpeg"), "{err}");
    }
}

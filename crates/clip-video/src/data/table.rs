//! Lists of videos with their captions or labels: MSR-VTT's annotation JSON, caption tables,
//! and labelled tables or class folders (Kinetics, UCF101).

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use clip_core::preprocess::{EvalTransform, ImageTensorData};
use clip_core::table::read_columns;
use rand::Rng;
use serde::Deserialize;

use super::{FrameSampler, VideoDataError, VideoSource, load_clip};

/// Video file extensions (lower case) looked for in MSR-VTT's video folder and class folders.
const VIDEO_EXTENSIONS: &[&str] = &[
    "mp4", "avi", "webm", "mkv", "mov", "m4v", "mpg", "mpeg", "flv", "wmv", "ogv", "3gp", "ts",
];

/// One video with its captions and label.
#[derive(Debug, Clone, PartialEq)]
pub struct VideoSample {
    /// The video file or frame folder.
    pub source: PathBuf,
    /// Its captions (empty for labelled data); training draws one per step, evaluation uses
    /// the first.
    pub captions: Vec<String>,
    /// Its class, for labelled data.
    pub label: Option<String>,
    /// 1-based line of its (first) row in the table (a header is line 1); 0 for MSR-VTT's
    /// JSON and class folders.
    pub line: usize,
}

/// Videos read into memory (frames are read when a clip is loaded).
#[derive(Debug, Clone, PartialEq)]
pub struct VideoTable {
    /// The table, annotation file or dataset folder the videos came from.
    pub path: PathBuf,
    /// The videos.
    pub videos: Vec<VideoSample>,
}

/// MSR-VTT's annotation file (`train_val_videodatainfo.json`, `test_videodatainfo.json`,
/// CLIP4Clip's `MSRVTT_data.json`); other fields are ignored.
#[derive(Deserialize)]
struct MsrVtt {
    videos: Vec<MsrVttVideo>,
    sentences: Vec<MsrVttSentence>,
}

#[derive(Deserialize)]
struct MsrVttVideo {
    video_id: String,
}

#[derive(Deserialize)]
struct MsrVttSentence {
    video_id: String,
    caption: String,
}

impl VideoTable {
    /// Reads MSR-VTT's annotation JSON (`{"videos": [{"video_id": "video0", ...}, ...],
    /// "sentences": [{"video_id": "video0", "caption": "...", ...}, ...]}`): every video of
    /// `videos`, in order, with all its sentences as captions. A video is the frame folder
    /// `<videos_dir>/<video_id>/` or else the file `<videos_dir>/<video_id>.mp4` (or another
    /// video extension). Fails on a video that has no folder or file, a video without
    /// sentences, a repeated video id, or a sentence of an unknown video.
    pub fn read_msrvtt(json: &Path, videos_dir: &Path) -> Result<Self, VideoDataError> {
        let error = |message: String| VideoDataError::table(json, None, message);
        let text = std::fs::read_to_string(json).map_err(|e| error(e.to_string()))?;
        let data: MsrVtt = serde_json::from_str(&text).map_err(|e| error(format!("not MSR-VTT annotations: {e}")))?;
        let mut index_of = HashMap::new();
        let mut videos = Vec::with_capacity(data.videos.len());
        for (index, video) in data.videos.iter().enumerate() {
            let id = &video.video_id;
            if index_of.insert(id.as_str(), index).is_some() {
                return Err(error(format!("videos[{index}]: video_id {id:?} is listed twice")));
            }
            let source = find_video(videos_dir, id).ok_or_else(|| {
                error(format!(
                    "videos[{index}]: video {id:?} has neither a frame folder {} nor a video file {}",
                    videos_dir.join(id).display(),
                    videos_dir.join(format!("{id}.mp4")).display()
                ))
            })?;
            videos.push(VideoSample {
                source,
                captions: Vec::new(),
                label: None,
                line: 0,
            });
        }
        for (index, sentence) in data.sentences.into_iter().enumerate() {
            let video = index_of.get(sentence.video_id.as_str()).ok_or_else(|| {
                error(format!(
                    "sentences[{index}]: video_id {:?} is not among the videos",
                    sentence.video_id
                ))
            })?;
            videos[*video].captions.push(sentence.caption);
        }
        if let Some(index) = videos.iter().position(|v| v.captions.is_empty()) {
            return Err(error(format!(
                "videos[{index}]: video {:?} has no sentences",
                data.videos[index].video_id
            )));
        }
        Self::new(json, videos)
    }

    /// Reads a `.tsv` (tab-separated) or other (comma-separated) table with a header
    /// row naming the columns `video` and `caption`, one row per caption; rows of one video are
    /// grouped (in the order of their first row). Video paths are relative to the table's folder.
    pub fn read_captions(path: &Path) -> Result<Self, VideoDataError> {
        let folder = path.parent().unwrap_or(Path::new("."));
        let mut videos: Vec<VideoSample> = Vec::new();
        let mut index_of: HashMap<String, usize> = HashMap::new();
        read_rows(path, ["video", "caption"], |line, [video, caption]| {
            match index_of.get(&video) {
                Some(&index) => videos[index].captions.push(caption),
                None => {
                    index_of.insert(video.clone(), videos.len());
                    videos.push(VideoSample {
                        source: folder.join(video),
                        captions: vec![caption],
                        label: None,
                        line,
                    });
                }
            }
        })?;
        Self::new(path, videos)
    }

    /// Reads labelled videos from either
    /// - a `.tsv` (tab-separated) or other (comma-separated) table with a header row
    ///   naming the columns `video` and `label` (Kinetics-style), video paths relative to the
    ///   table's folder; or
    /// - a folder with one subfolder per class, each holding that class's videos as video
    ///   files or frame folders (UCF101-style); the class is the subfolder's name. Other files
    ///   (and hidden ones) are skipped; classes and videos are sorted by name.
    pub fn read_labelled(path: &Path) -> Result<Self, VideoDataError> {
        if path.is_dir() {
            return Self::read_class_folders(path);
        }
        let folder = path.parent().unwrap_or(Path::new("."));
        let mut videos = Vec::new();
        read_rows(path, ["video", "label"], |line, [video, label]| {
            videos.push(VideoSample {
                source: folder.join(video),
                captions: Vec::new(),
                label: Some(label),
                line,
            });
        })?;
        Self::new(path, videos)
    }

    fn read_class_folders(root: &Path) -> Result<Self, VideoDataError> {
        let mut videos = Vec::new();
        for class_dir in sorted_entries(root)?.into_iter().filter(|p| p.is_dir()) {
            let class = file_name(&class_dir);
            let class_videos: Vec<PathBuf> = sorted_entries(&class_dir)?
                .into_iter()
                .filter(|p| p.is_dir() || has_video_extension(p))
                .collect();
            if class_videos.is_empty() {
                return Err(VideoDataError::table(
                    &class_dir,
                    None,
                    "the class folder holds no video files or frame folders",
                ));
            }
            videos.extend(class_videos.into_iter().map(|source| VideoSample {
                source,
                captions: Vec::new(),
                label: Some(class.clone()),
                line: 0,
            }));
        }
        Self::new(root, videos)
    }

    fn new(path: &Path, videos: Vec<VideoSample>) -> Result<Self, VideoDataError> {
        if videos.is_empty() {
            return Err(VideoDataError::table(path, None, "no videos"));
        }
        Ok(Self {
            path: path.to_path_buf(),
            videos,
        })
    }

    /// The distinct labels, sorted.
    pub fn labels(&self) -> Vec<String> {
        let labels: BTreeSet<&String> = self.videos.iter().filter_map(|v| v.label.as_ref()).collect();
        labels.into_iter().cloned().collect()
    }

    /// Splits off a seeded random `fraction` of the videos (at least one, and leaving at least
    /// one when there are two or more) as a second table; both keep the original order.
    pub fn split(self, fraction: f64, seed: u64) -> (Self, Self) {
        let (kept, held_out) = clip_core::split_rows(self.videos.len(), fraction, seed);
        let pick = |rows: Vec<usize>| Self {
            path: self.path.clone(),
            videos: rows.into_iter().map(|r| self.videos[r].clone()).collect(),
        };
        (pick(kept), pick(held_out))
    }

    /// [`load_clip`] of video `index`; errors name this table and the video's line.
    pub fn load_clip(
        &self,
        index: usize,
        sampler: &FrameSampler,
        transform: &EvalTransform,
        rng: &mut impl Rng,
    ) -> Result<Vec<ImageTensorData>, VideoDataError> {
        let Some(video) = self.videos.get(index) else {
            return Err(VideoDataError::Invalid {
                message: format!(
                    "video {index} of {}, which has {} videos",
                    self.path.display(),
                    self.videos.len()
                ),
            });
        };
        VideoSource::from_path(&video.source)
            .and_then(|source| load_clip(&source, sampler, transform, rng))
            .map_err(|error| VideoDataError::Sample {
                table: self.path.clone(),
                line: video.line,
                error: Box::new(error),
            })
    }
}

/// Calls `row` with the line and the values of `columns` of every row of the table at `path`.
fn read_rows<const N: usize>(
    path: &Path,
    columns: [&str; N],
    mut row: impl FnMut(usize, [String; N]),
) -> Result<(), VideoDataError> {
    let rows = read_columns(path, &columns).map_err(|e| VideoDataError::table(&e.path, e.line, e.message))?;
    for (line, values) in rows {
        row(line, values.try_into().expect("one value per column"));
    }
    Ok(())
}

/// The frame folder `<dir>/<id>/`, else the first existing `<dir>/<id>.<video extension>`.
fn find_video(dir: &Path, id: &str) -> Option<PathBuf> {
    let folder = dir.join(id);
    if folder.is_dir() {
        return Some(folder);
    }
    VIDEO_EXTENSIONS
        .iter()
        .map(|extension| dir.join(format!("{id}.{extension}")))
        .find(|file| file.is_file())
}

fn has_video_extension(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| VIDEO_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The entries of a folder, hidden ones (`.name`) left out, sorted by name.
fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>, VideoDataError> {
    let entries = std::fs::read_dir(dir).map_err(|e| VideoDataError::table(dir, None, e.to_string()))?;
    let mut paths = Vec::new();
    for entry in entries {
        let path = entry
            .map_err(|e| VideoDataError::table(dir, None, e.to_string()))?
            .path();
        if !file_name(&path).starts_with('.') {
            paths.push(path);
        }
    }
    paths.sort();
    Ok(paths)
}

//! COCO-format detection data: datasets (COCO/LVIS JSON, MDETR/GLIP-style captions with
//! `tokens_positive` spans), base/novel category splits, network-ready samples, proposal files
//! and grounding prompts.
//!
//! In memory, boxes are `[x1, y1, x2, y2]` ([`BoxXyxy`]) and caption spans are byte ranges of the
//! caption (so `&caption[span]` is the phrase); on disk, boxes are COCO's `[x, y, w, h]` and spans
//! count characters, as Python writes them.

use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use clip_core::preprocess::{
    ImageTensorData, Normalize, OPENAI_MEAN, OPENAI_STD, load_image, resize_bicubic,
};
use serde::{Deserialize, Serialize};

use crate::boxes::BoxXyxy;

/// Why detection data cannot be read or written; names the file and the offending entry.
#[derive(Debug, thiserror::Error)]
pub enum DetectionDataError {
    /// A file could not be read or written.
    #[error("{path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error (shown in the message, so not also a `source`).
        error: std::io::Error,
    },
    /// A JSON file is not valid JSON or lacks a field.
    #[error("{path}: {message}")]
    Json {
        /// The file.
        path: PathBuf,
        /// The parser's message (with line and column).
        message: String,
    },
    /// One annotation cannot be used.
    #[error("{path}: annotation {id}: {message}")]
    Annotation {
        /// The annotation file.
        path: PathBuf,
        /// The annotation's `id`.
        id: u64,
        /// What is wrong.
        message: String,
    },
    /// One image entry, or its file, cannot be used.
    #[error("{path}: image {id}: {message}")]
    Image {
        /// The annotation file (or the image file, when decoding it failed).
        path: PathBuf,
        /// The image's `id`.
        id: u64,
        /// What is wrong.
        message: String,
    },
    /// The categories are malformed, or a requested category does not exist.
    #[error("{path}: {message}")]
    Category {
        /// The annotation file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// One entry of a proposals file cannot be used.
    #[error("{path}: proposal {index}: {message}")]
    Proposal {
        /// The proposals file.
        path: PathBuf,
        /// 0-based position in the file's array.
        index: usize,
        /// What is wrong.
        message: String,
    },
}

/// A detection category.
#[derive(Debug, Clone, PartialEq)]
pub struct Category {
    /// The dataset's category id.
    pub id: u64,
    /// The category name.
    pub name: String,
    /// LVIS frequency group: `"r"` (rare), `"c"` (common) or `"f"` (frequent).
    pub frequency: Option<String>,
}

/// One annotated box.
#[derive(Debug, Clone, PartialEq)]
pub struct Annotation {
    /// The dataset's annotation id.
    pub id: u64,
    /// Index into [`CocoDataset::categories`].
    pub category: usize,
    /// `[x1, y1, x2, y2]` in the image's original pixels.
    pub bbox: BoxXyxy,
    /// A crowd region (ignored by training and matched as COCO by evaluation).
    pub iscrowd: bool,
    /// Byte ranges of the image's caption that name this box; empty for plain detection data.
    pub tokens_positive: Vec<Range<usize>>,
}

/// One image and its annotations.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageRecord {
    /// The dataset's image id.
    pub id: u64,
    /// The image file.
    pub file: PathBuf,
    /// Width in pixels, as the annotation file says.
    pub width: u32,
    /// Height in pixels, as the annotation file says.
    pub height: u32,
    /// The image's boxes.
    pub annotations: Vec<Annotation>,
    /// A caption whose phrases the annotations' `tokens_positive` point into.
    pub caption: Option<String>,
}

/// A COCO-format detection dataset.
#[derive(Debug, Clone, PartialEq)]
pub struct CocoDataset {
    /// The annotation file it was read from.
    pub path: PathBuf,
    /// The folder image file names are relative to.
    pub images_dir: PathBuf,
    /// Images in file order.
    pub images: Vec<ImageRecord>,
    /// Categories in file order; annotations refer to them by index.
    pub categories: Vec<Category>,
}

#[derive(Debug, Serialize, Deserialize)]
struct CocoFile {
    images: Vec<CocoImage>,
    #[serde(default)]
    annotations: Vec<CocoAnnotation>,
    categories: Vec<CocoCategory>,
}

#[derive(Debug, Serialize, Deserialize)]
struct CocoImage {
    id: u64,
    file_name: String,
    width: u32,
    height: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    caption: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct CocoAnnotation {
    id: u64,
    image_id: u64,
    category_id: u64,
    bbox: Vec<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    area: Option<f64>,
    #[serde(default)]
    iscrowd: Flag,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    tokens_positive: Vec<[usize; 2]>,
}

/// COCO writes `iscrowd` as 0/1; some tools write booleans.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(untagged)]
enum Flag {
    Int(u8),
    Bool(bool),
}

impl Default for Flag {
    fn default() -> Self {
        Flag::Int(0)
    }
}

impl Flag {
    fn is_set(self) -> bool {
        match self {
            Flag::Int(v) => v != 0,
            Flag::Bool(v) => v,
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct CocoCategory {
    id: u64,
    name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    frequency: Option<String>,
}

/// A COCO results-format entry (`category_id` is ignored for proposals).
#[derive(Debug, Deserialize)]
struct CocoResult {
    image_id: u64,
    bbox: Vec<f64>,
    score: f32,
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, DetectionDataError> {
    let bytes = std::fs::read(path).map_err(|error| DetectionDataError::Io {
        path: path.to_path_buf(),
        error,
    })?;
    serde_json::from_slice(&bytes).map_err(|e| DetectionDataError::Json {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// COCO's `[x, y, w, h]` as `[x1, y1, x2, y2]`, or why it is malformed.
fn xywh_to_xyxy(bbox: &[f64]) -> Result<BoxXyxy, String> {
    let &[x, y, w, h] = bbox else {
        return Err(format!(
            "bbox must have 4 numbers [x, y, w, h], found {}",
            bbox.len()
        ));
    };
    if bbox.iter().any(|v| !v.is_finite()) {
        return Err(format!("bbox {bbox:?} is not finite"));
    }
    if w < 0.0 || h < 0.0 {
        return Err(format!("bbox {bbox:?} has a negative width or height"));
    }
    Ok([x as f32, y as f32, (x + w) as f32, (y + h) as f32])
}

fn xyxy_to_xywh(b: &BoxXyxy) -> Vec<f64> {
    let [x1, y1, x2, y2] = b.map(f64::from);
    vec![x1, y1, x2 - x1, y2 - y1]
}

/// Character span `[start, end)` of `text` as a byte range, or `None` when out of bounds.
fn chars_to_bytes(text: &str, [start, end]: [usize; 2]) -> Option<Range<usize>> {
    let byte_at = |c: usize| {
        text.char_indices()
            .map(|(b, _)| b)
            .chain(std::iter::once(text.len()))
            .nth(c)
    };
    (start <= end).then_some(())?;
    Some(byte_at(start)?..byte_at(end)?)
}

fn bytes_to_chars(text: &str, span: &Range<usize>) -> [usize; 2] {
    let count = |b: usize| text[..b.min(text.len())].chars().count();
    [count(span.start), count(span.end)]
}

impl CocoDataset {
    /// Reads a COCO/LVIS annotation file; image `file_name`s are relative to `images_dir`. Every
    /// image file must exist; boxes, category ids, image ids and caption spans are validated.
    pub fn read(json: &Path, images_dir: &Path) -> Result<Self, DetectionDataError> {
        let file: CocoFile = read_json(json)?;
        let category_error = |message: String| DetectionDataError::Category {
            path: json.to_path_buf(),
            message,
        };
        let mut category_index = HashMap::new();
        let mut categories = Vec::with_capacity(file.categories.len());
        for (i, c) in file.categories.into_iter().enumerate() {
            if category_index.insert(c.id, i).is_some() {
                return Err(category_error(format!(
                    "category id {} appears twice",
                    c.id
                )));
            }
            if let Some(f) = c
                .frequency
                .as_deref()
                .filter(|f| !matches!(*f, "r" | "c" | "f"))
            {
                return Err(category_error(format!(
                    "category {} ('{}'): frequency must be \"r\", \"c\" or \"f\", found \"{f}\"",
                    c.id, c.name
                )));
            }
            categories.push(Category {
                id: c.id,
                name: c.name,
                frequency: c.frequency,
            });
        }
        let mut image_index = HashMap::new();
        let mut images = Vec::with_capacity(file.images.len());
        for (i, image) in file.images.into_iter().enumerate() {
            let image_error = |message: String| DetectionDataError::Image {
                path: json.to_path_buf(),
                id: image.id,
                message,
            };
            if image_index.insert(image.id, i).is_some() {
                return Err(image_error("the image id appears twice".into()));
            }
            if image.width == 0 || image.height == 0 {
                return Err(image_error(format!(
                    "size {}x{} is empty",
                    image.width, image.height
                )));
            }
            let path = images_dir.join(&image.file_name);
            if !path.is_file() {
                return Err(image_error(format!(
                    "image file {} does not exist",
                    path.display()
                )));
            }
            images.push(ImageRecord {
                id: image.id,
                file: path,
                width: image.width,
                height: image.height,
                annotations: Vec::new(),
                caption: image.caption,
            });
        }
        for a in file.annotations {
            let error = |message: String| DetectionDataError::Annotation {
                path: json.to_path_buf(),
                id: a.id,
                message,
            };
            let bbox = xywh_to_xyxy(&a.bbox).map_err(error)?;
            let &category = category_index
                .get(&a.category_id)
                .ok_or_else(|| error(format!("unknown category_id {}", a.category_id)))?;
            let &image = image_index
                .get(&a.image_id)
                .ok_or_else(|| error(format!("unknown image_id {}", a.image_id)))?;
            let record = &mut images[image];
            let tokens_positive = a
                .tokens_positive
                .iter()
                .map(|&span| {
                    let caption = record.caption.as_deref().ok_or_else(|| {
                        error(format!(
                            "tokens_positive given but image {} has no caption",
                            record.id
                        ))
                    })?;
                    chars_to_bytes(caption, span).ok_or_else(|| {
                        error(format!(
                            "tokens_positive {span:?} is not a span of the {}-character caption",
                            caption.chars().count()
                        ))
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            record.annotations.push(Annotation {
                id: a.id,
                category,
                bbox,
                iscrowd: a.iscrowd.is_set(),
                tokens_positive,
            });
        }
        Ok(Self {
            path: json.to_path_buf(),
            images_dir: images_dir.to_path_buf(),
            images,
            categories,
        })
    }

    /// Writes the dataset as COCO JSON to `path` atomically (a temporary file, then a rename).
    /// Image files under [`Self::images_dir`] are written relative to it, others as full paths.
    pub fn write(&self, path: &Path) -> Result<(), DetectionDataError> {
        let images = self
            .images
            .iter()
            .map(|r| CocoImage {
                id: r.id,
                file_name: r
                    .file
                    .strip_prefix(&self.images_dir)
                    .unwrap_or(&r.file)
                    .to_string_lossy()
                    .into_owned(),
                width: r.width,
                height: r.height,
                caption: r.caption.clone(),
            })
            .collect();
        let annotations = self
            .images
            .iter()
            .flat_map(|r| {
                r.annotations.iter().map(move |a| CocoAnnotation {
                    id: a.id,
                    image_id: r.id,
                    category_id: self.categories[a.category].id,
                    bbox: xyxy_to_xywh(&a.bbox),
                    area: Some(f64::from(crate::boxes::area(&a.bbox))),
                    iscrowd: Flag::Int(u8::from(a.iscrowd)),
                    tokens_positive: a
                        .tokens_positive
                        .iter()
                        .map(|span| bytes_to_chars(r.caption.as_deref().unwrap_or(""), span))
                        .collect(),
                })
            })
            .collect();
        let categories = self
            .categories
            .iter()
            .map(|c| CocoCategory {
                id: c.id,
                name: c.name.clone(),
                frequency: c.frequency.clone(),
            })
            .collect();
        let file = CocoFile {
            images,
            annotations,
            categories,
        };
        let bytes = serde_json::to_vec(&file).map_err(|e| DetectionDataError::Json {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        clip_core::weights::write_atomically(path, &bytes).map_err(|e| DetectionDataError::Io {
            path: path.to_path_buf(),
            error: std::io::Error::other(e.to_string()),
        })
    }

    /// Splits off a seeded random `fraction` of the images (see [`clip_core::split_rows`]) as
    /// `(kept, held_out)`; both keep the file order and all categories.
    pub fn split(self, fraction: f64, seed: u64) -> (Self, Self) {
        let (kept, held_out) = clip_core::split_rows(self.images.len(), fraction, seed);
        let part = |rows: Vec<usize>| Self {
            path: self.path.clone(),
            images_dir: self.images_dir.clone(),
            images: rows.into_iter().map(|r| self.images[r].clone()).collect(),
            categories: self.categories.clone(),
        };
        (part(kept), part(held_out))
    }
}

/// Base (seen in training) and novel (held out) categories, as indices into the categories.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CategorySplit {
    /// Categories trained on, in category order.
    pub base: Vec<usize>,
    /// Held-out categories, in category order.
    pub novel: Vec<usize>,
}

impl CategorySplit {
    /// `novel` named explicitly, every other category base. Unknown names are an error.
    pub fn from_names(
        categories: &[Category],
        novel: &[String],
    ) -> Result<Self, DetectionDataError> {
        if let Some(unknown) = novel
            .iter()
            .find(|n| !categories.iter().any(|c| &c.name == *n))
        {
            let known: Vec<&str> = categories.iter().map(|c| c.name.as_str()).collect();
            return Err(DetectionDataError::Category {
                path: PathBuf::from("<novel categories>"),
                message: format!("unknown category '{unknown}' (known: {known:?})"),
            });
        }
        let (novel, base) =
            (0..categories.len()).partition(|&i| novel.contains(&categories[i].name));
        Ok(Self { base, novel })
    }

    /// LVIS's open-vocabulary split: rare (`frequency == "r"`) categories are novel.
    pub fn lvis_rare(categories: &[Category]) -> Self {
        let (novel, base) =
            (0..categories.len()).partition(|&i| categories[i].frequency.as_deref() == Some("r"));
        Self { base, novel }
    }
}

/// One image ready for a detector.
#[derive(Debug, Clone, PartialEq)]
pub struct DetectionSample {
    /// `[3, S, S]` CLIP-normalized pixels: the image resized (squashed) to `S x S`.
    pub image: ImageTensorData,
    /// Non-crowd boxes scaled to `S x S` pixels.
    pub boxes: Vec<BoxXyxy>,
    /// Category index of each box.
    pub labels: Vec<usize>,
    /// Caption byte ranges naming each box (empty without a caption).
    pub spans: Vec<Vec<Range<usize>>>,
}

/// Loads `record`'s image resized to `image_size x image_size` (bicubic, as CLIP's transforms)
/// and CLIP-normalized, with its non-crowd boxes scaled alike; with `flip`, image and boxes
/// mirrored horizontally (the caller draws the augmentation).
/// The file must be an image of the record's size.
pub fn load_detection_sample(
    record: &ImageRecord,
    image_size: usize,
    flip: bool,
) -> Result<DetectionSample, DetectionDataError> {
    let error = |message: String| DetectionDataError::Image {
        path: record.file.clone(),
        id: record.id,
        message,
    };
    if image_size == 0 {
        return Err(error("the image size must be positive".into()));
    }
    let image = load_image(&record.file).map_err(|e| error(e.to_string()))?;
    if image.dimensions() != (record.width, record.height) {
        return Err(error(format!(
            "the file is {}x{} but the annotations say {}x{}",
            image.width(),
            image.height(),
            record.width,
            record.height
        )));
    }
    let side = image_size as u32;
    let mut resized = if image.dimensions() == (side, side) {
        image
    } else {
        resize_bicubic(&image, side, side)
    };
    if flip {
        image::imageops::flip_horizontal_in_place(&mut resized);
    }
    let s = image_size as f32;
    let (sx, sy) = (s / record.width as f32, s / record.height as f32);
    let kept: Vec<&Annotation> = record.annotations.iter().filter(|a| !a.iscrowd).collect();
    let boxes = kept
        .iter()
        .map(|a| {
            let [x1, y1, x2, y2] = a.bbox;
            let (x1, x2) = (x1 * sx, x2 * sx);
            let (x1, x2) = if flip { (s - x2, s - x1) } else { (x1, x2) };
            [x1, y1 * sy, x2, y2 * sy]
        })
        .collect();
    Ok(DetectionSample {
        image: Normalize::new(OPENAI_MEAN, OPENAI_STD).apply(&resized),
        boxes,
        labels: kept.iter().map(|a| a.category).collect(),
        spans: kept.iter().map(|a| a.tokens_positive.clone()).collect(),
    })
}

/// Proposals from a COCO results-format file (`[{"image_id", "bbox": [x, y, w, h], "score"}]`):
/// per image of `dataset.images`, `[x1, y1, x2, y2]` boxes in original pixels by descending
/// score. Entries of images not in `dataset` are skipped (one file may serve several splits).
pub fn read_proposals(
    path: &Path,
    dataset: &CocoDataset,
) -> Result<Vec<Vec<BoxXyxy>>, DetectionDataError> {
    let entries: Vec<CocoResult> = read_json(path)?;
    let index: HashMap<u64, usize> = dataset
        .images
        .iter()
        .enumerate()
        .map(|(i, r)| (r.id, i))
        .collect();
    let mut scored: Vec<Vec<(f32, BoxXyxy)>> = vec![Vec::new(); dataset.images.len()];
    for (i, entry) in entries.iter().enumerate() {
        let bbox = xywh_to_xyxy(&entry.bbox).map_err(|message| DetectionDataError::Proposal {
            path: path.to_path_buf(),
            index: i,
            message,
        })?;
        if let Some(&image) = index.get(&entry.image_id) {
            scored[image].push((entry.score, bbox));
        }
    }
    Ok(scored
        .into_iter()
        .map(|mut boxes| {
            boxes.sort_by(|a, b| b.0.total_cmp(&a.0));
            boxes.into_iter().map(|(_, b)| b).collect()
        })
        .collect())
}

/// What separates category names in GLIP's prompts: `DATASETS.SEPARATION_TOKENS` of every
/// official GLIP config (`configs/pretrain/*.yaml`; `defaults.py` has `" "`, which no shipped
/// config keeps), in training and in evaluation alike.
pub const PROMPT_SEPARATOR: &str = ". ";

/// A category name as GLIP writes it into a prompt (`clean_name` of the official
/// `od_to_grounding.py`): a parenthesized part removed (`"bow_(weapon)"` → `"bow"`, from the
/// first `(` to the last `)` as its greedy regex does), underscores made spaces. The official
/// code then merges double spaces once and keeps leading and trailing spaces; here runs of
/// whitespace are collapsed and trimmed, which changes no token (CLIP's tokenizer collapses
/// and trims whitespace itself) but keeps each span on the name's words.
pub fn clean_name(name: &str) -> String {
    let mut name = name.to_string();
    if let (Some(open), Some(close)) = (name.find('('), name.rfind(')'))
        && open < close
    {
        name.replace_range(open..=close, "");
    }
    name.replace('_', " ").split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A detection prompt listing category names as GLIP's official code does
/// (`create_queries_and_maps` of `engine/inference.py`, `generate_senetence_given_labels` of
/// `od_to_grounding.py`): the [`clean_name`]s joined by [`PROMPT_SEPARATOR`], none after the
/// last, `"circle. square. traffic light"`; and the byte range of each (cleaned) name in it.
pub fn grounding_prompt(names: &[String]) -> (String, Vec<Range<usize>>) {
    let mut text = String::new();
    let mut spans = Vec::with_capacity(names.len());
    for (i, name) in names.iter().enumerate() {
        if i > 0 {
            text.push_str(PROMPT_SEPARATOR);
        }
        let start = text.len();
        text.push_str(&clean_name(name));
        spans.push(start..text.len());
    }
    (text, spans)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn box_formats_by_hand() {
        assert_eq!(
            xywh_to_xyxy(&[1.0, 2.0, 3.0, 4.0]),
            Ok([1.0, 2.0, 4.0, 6.0])
        );
        assert_eq!(
            xyxy_to_xywh(&[1.0, 2.0, 4.0, 6.0]),
            vec![1.0, 2.0, 3.0, 4.0]
        );
        assert!(
            xywh_to_xyxy(&[1.0, 2.0, 3.0])
                .unwrap_err()
                .contains("found 3")
        );
        assert!(
            xywh_to_xyxy(&[1.0, 2.0, -3.0, 4.0])
                .unwrap_err()
                .contains("negative")
        );
    }

    #[test]
    fn character_spans_become_byte_ranges_and_back() {
        // 'é' is 2 bytes: characters [2, 5) of "né red" are " re", bytes 3..6.
        let text = "né red";
        assert_eq!(chars_to_bytes(text, [2, 5]), Some(3..6));
        assert_eq!(&text[3..6], " re");
        assert_eq!(bytes_to_chars(text, &(3..6)), [2, 5]);
        assert_eq!(chars_to_bytes(text, [0, 6]), Some(0..7));
        assert_eq!(chars_to_bytes(text, [0, 7]), None);
        assert_eq!(chars_to_bytes(text, [3, 2]), None);
    }

    #[test]
    fn grounding_prompt_spans_name_each_category() {
        let names: Vec<String> = ["circle", "square", "traffic light"]
            .map(String::from)
            .to_vec();
        let (text, spans) = grounding_prompt(&names);
        assert_eq!(text, "circle. square. traffic light");
        assert_eq!(spans, vec![0..6, 8..14, 16..29]);
        for (span, name) in spans.iter().zip(&names) {
            assert_eq!(&text[span.clone()], name);
        }
        assert_eq!(grounding_prompt(&[]), (String::new(), vec![]));
        // LVIS-style names are cleaned as GLIP does; the spans cover the cleaned names.
        let lvis: Vec<String> = ["bow_(weapon)", "traffic_light", "a (b) c (d)"].map(String::from).to_vec();
        let (text, spans) = grounding_prompt(&lvis);
        assert_eq!(text, "bow. traffic light. a");
        let named: Vec<&str> = spans.iter().map(|s| &text[s.clone()]).collect();
        assert_eq!(named, ["bow", "traffic light", "a"]);
    }

    #[test]
    fn names_are_cleaned_as_the_official_clean_name() {
        for (raw, clean) in [
            ("person", "person"),
            ("bow_(weapon)", "bow"),
            ("(x) y_z", "y z"),
            ("a_(b)_c", "a c"),
            ("no (close", "no (close"),
            ("close) then (open", "close) then (open"),
            ("  padded__name ", "padded name"),
        ] {
            assert_eq!(clean_name(raw), clean, "{raw:?}");
        }
    }
}

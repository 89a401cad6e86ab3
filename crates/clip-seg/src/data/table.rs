//! Lists of (image, mask, caption) samples: from a TSV/CSV table, from an image folder and a
//! mask folder (ADE20K, COCO-Stuff), or from a PASCAL VOC image-set list.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use clip_core::table::read_columns;

use super::SegmentationDataError;

/// Image file extensions looked for next to a mask.
const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png", "bmp", "webp", "tif", "tiff"];

/// One image with its label mask.
#[derive(Debug, Clone, PartialEq)]
pub struct SegmentationSample {
    /// The image file.
    pub image: PathBuf,
    /// The mask PNG (label indices).
    pub mask: PathBuf,
    /// The caption, when the table has a caption column.
    pub caption: Option<String>,
    /// 1-based line in the table or list (a CSV header is line 1); 0 for folders.
    pub line: usize,
}

/// Column names of a segmentation table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentationColumns<'a> {
    /// Image path column.
    pub image: &'a str,
    /// Mask path column.
    pub mask: &'a str,
    /// Caption column, if captions are read.
    pub caption: Option<&'a str>,
}

impl Default for SegmentationColumns<'_> {
    /// `image`, `mask` and `caption`.
    fn default() -> Self {
        Self {
            image: "image",
            mask: "mask",
            caption: Some("caption"),
        }
    }
}

/// Segmentation samples read into memory (images and masks are read lazily).
#[derive(Debug, Clone, PartialEq)]
pub struct SegmentationTable {
    /// The table, list file, or mask folder the samples came from.
    pub path: PathBuf,
    /// The samples.
    pub samples: Vec<SegmentationSample>,
}

impl SegmentationTable {
    /// Reads a `.tsv` (tab-separated) or other (comma-separated) table with a header
    /// row naming `columns`; paths are relative to the table's folder.
    pub fn read(path: &Path, columns: &SegmentationColumns) -> Result<Self, SegmentationDataError> {
        let mut names = vec![columns.image, columns.mask];
        names.extend(columns.caption);
        let rows = read_columns(path, &names).map_err(|e| SegmentationDataError::table(&e.path, e.line, e.message))?;
        let folder = path.parent().unwrap_or(Path::new("."));
        let samples = rows
            .into_iter()
            .map(|(line, mut values)| SegmentationSample {
                caption: (values.len() == 3).then(|| values.remove(2)),
                mask: folder.join(&values[1]),
                image: folder.join(&values[0]),
                line,
            })
            .collect();
        Self::new(path, samples)
    }

    /// Pairs every `*.png` mask in `masks_dir` with the image of the same name (any image
    /// extension) in `images_dir`: ADE20K's `images/` + `annotations/`, COCO-Stuff's
    /// `images/` + `annotations/`, PASCAL VOC's `JPEGImages/` + `SegmentationClass/` (where
    /// only the segmented images have masks). Samples are sorted by mask name.
    pub fn from_folders(images_dir: &Path, masks_dir: &Path) -> Result<Self, SegmentationDataError> {
        let images = images_by_stem(images_dir)?;
        let mut masks: Vec<PathBuf> = read_dir(masks_dir)?
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e.eq_ignore_ascii_case("png")))
            .collect();
        masks.sort();
        let samples = masks
            .into_iter()
            .map(|mask| {
                let image = stem(&mask).and_then(|s| images.get(&s)).cloned().ok_or_else(|| {
                    SegmentationDataError::sample(
                        &mask,
                        0,
                        format!("no image of the same name in {}", images_dir.display()),
                    )
                })?;
                Ok(SegmentationSample {
                    image,
                    mask,
                    caption: None,
                    line: 0,
                })
            })
            .collect::<Result<_, _>>()?;
        Self::new(masks_dir, samples)
    }

    /// The samples named in an image-set list (one image name without extension per line, as
    /// PASCAL VOC's `ImageSets/Segmentation/train.txt`): the image of that name in
    /// `images_dir` and the mask `<name>.png` in `masks_dir`.
    pub fn from_list(images_dir: &Path, masks_dir: &Path, list: &Path) -> Result<Self, SegmentationDataError> {
        let text =
            std::fs::read_to_string(list).map_err(|e| SegmentationDataError::table(list, None, e.to_string()))?;
        let images = images_by_stem(images_dir)?;
        let mut samples = Vec::new();
        for (index, name) in text.lines().enumerate() {
            let (line, name) = (index + 1, name.trim());
            if name.is_empty() {
                continue;
            }
            let missing = |what: &str, path: &Path| {
                SegmentationDataError::table(list, Some(line), format!("{what} {} does not exist", path.display()))
            };
            let image = images
                .get(name)
                .cloned()
                .ok_or_else(|| missing("image", &images_dir.join(format!("{name}.*"))))?;
            let mask = masks_dir.join(format!("{name}.png"));
            if !mask.is_file() {
                return Err(missing("mask", &mask));
            }
            samples.push(SegmentationSample {
                image,
                mask,
                caption: None,
                line,
            });
        }
        Self::new(list, samples)
    }

    fn new(path: &Path, samples: Vec<SegmentationSample>) -> Result<Self, SegmentationDataError> {
        if samples.is_empty() {
            return Err(SegmentationDataError::table(path, None, "no samples"));
        }
        Ok(Self {
            path: path.to_path_buf(),
            samples,
        })
    }

    /// Splits off a seeded random `fraction` of the samples (at least one, and leaving at
    /// least one when there are two or more) as a second table; both keep the original order.
    pub fn split(self, fraction: f64, seed: u64) -> (Self, Self) {
        let (kept, held_out) = clip_core::split_rows(self.samples.len(), fraction, seed);
        let pick = |rows: Vec<usize>| Self {
            path: self.path.clone(),
            samples: rows.into_iter().map(|r| self.samples[r].clone()).collect(),
        };
        (pick(kept), pick(held_out))
    }
}

fn read_dir(dir: &Path) -> Result<Vec<PathBuf>, SegmentationDataError> {
    let entries = std::fs::read_dir(dir).map_err(|e| SegmentationDataError::table(dir, None, e.to_string()))?;
    Ok(entries.filter_map(|e| e.ok().map(|e| e.path())).collect())
}

fn stem(path: &Path) -> Option<String> {
    path.file_stem().map(|s| s.to_string_lossy().into_owned())
}

/// Image files of a folder by name without extension (the alphabetically first extension
/// wins where two share a name).
fn images_by_stem(dir: &Path) -> Result<HashMap<String, PathBuf>, SegmentationDataError> {
    let mut files = read_dir(dir)?;
    files.sort();
    let mut images = HashMap::new();
    for file in files {
        let is_image = file
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()));
        if let (true, Some(name)) = (is_image, stem(&file)) {
            images.entry(name).or_insert(file);
        }
    }
    Ok(images)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh scratch folder with empty `images` and `masks` folders, removed when dropped.
    fn folder(name: &str) -> tempfile::TempDir {
        let dir = tempfile::Builder::new().prefix(&format!("clip-seg-table-{name}-")).tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("images")).unwrap();
        std::fs::create_dir_all(dir.path().join("masks")).unwrap();
        dir
    }

    #[test]
    fn folders_and_lists_pair_by_name() {
        let tmp = folder("pairs");
        let dir = tmp.path();
        for name in ["b.jpg", "a.jpg", "c.jpg"] {
            std::fs::write(dir.join("images").join(name), b"").unwrap();
        }
        for name in ["b.png", "a.png"] {
            std::fs::write(dir.join("masks").join(name), b"").unwrap();
        }
        let table = SegmentationTable::from_folders(&dir.join("images"), &dir.join("masks")).unwrap();
        let images: Vec<_> = table
            .samples
            .iter()
            .map(|s| s.image.file_name().unwrap().to_owned())
            .collect();
        assert_eq!(images, ["a.jpg", "b.jpg"]);

        std::fs::write(dir.join("train.txt"), "b\n\nc\n").unwrap();
        let err =
            SegmentationTable::from_list(&dir.join("images"), &dir.join("masks"), &dir.join("train.txt")).unwrap_err();
        assert!(err.to_string().contains("train.txt:3: mask"), "{err}");
        assert!(err.to_string().contains("c.png"), "{err}");
        std::fs::write(dir.join("train.txt"), "b\n").unwrap();
        let table =
            SegmentationTable::from_list(&dir.join("images"), &dir.join("masks"), &dir.join("train.txt")).unwrap();
        assert_eq!(table.samples[0].mask, dir.join("masks/b.png"));
        assert_eq!(table.samples[0].line, 1);

        std::fs::write(dir.join("masks/d.png"), b"").unwrap();
        let err = SegmentationTable::from_folders(&dir.join("images"), &dir.join("masks")).unwrap_err();
        assert!(err.to_string().contains("d.png: no image of the same name"), "{err}");
    }

    #[test]
    fn table_columns_and_split() {
        let tmp = folder("tsv");
        let dir = tmp.path();
        let rows: String = (0..10)
            .map(|i| format!("images/{i}.png\tmasks/{i}.png\tcap {i}\n"))
            .collect();
        std::fs::write(dir.join("t.tsv"), format!("image\tmask\tcaption\n{rows}")).unwrap();
        let table = SegmentationTable::read(&dir.join("t.tsv"), &SegmentationColumns::default()).unwrap();
        assert_eq!(table.samples[3].mask, dir.join("masks/3.png"));
        assert_eq!(table.samples[3].caption.as_deref(), Some("cap 3"));
        assert_eq!(table.samples[3].line, 5);

        let (train, val) = table.clone().split(0.3, 7);
        assert_eq!((train.samples.len(), val.samples.len()), (7, 3));
        assert!(val.samples.iter().all(|s| !train.samples.contains(s)));
        assert_eq!(table.clone().split(0.3, 7), (train, val));

        let columns = SegmentationColumns {
            mask: "label",
            ..SegmentationColumns::default()
        };
        let err = SegmentationTable::read(&dir.join("t.tsv"), &columns).unwrap_err();
        assert!(err.to_string().contains("t.tsv:1: no column \"label\""), "{err}");
    }
}

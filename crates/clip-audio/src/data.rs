//! Audio datasets as one table type, [`AudioTable`]: rows of an audio file, a caption, an
//! optional image and a class label, read from
//!
//! - a generic table (`.tsv`, or `.csv`) with the columns `audio` and `caption` and optionally
//!   `image` and `label` (paths relative to the table's folder; a missing caption is the label);
//! - ESC-50 (`<root>/meta/esc50.csv`: `filename,fold,target,category,...`, clips in
//!   `<root>/audio/`), five folds;
//! - UrbanSound8K (`<root>/metadata/UrbanSound8K.csv`: `slice_file_name,...,fold,classID,class`,
//!   clips in `<root>/audio/fold<N>/`), ten folds.
//!
//! The folds give the standard cross-validation: [`AudioTable::split_fold`] holds one out.
//! Class names of the two benchmarks have underscores replaced by spaces (`dog`, `car horn`).

use std::path::{Path, PathBuf};

use clip_task::Splittable;

use crate::audio::AudioError;

/// One sample.
#[derive(Debug, Clone, PartialEq)]
pub struct AudioRow {
    /// The audio file.
    pub audio: PathBuf,
    /// Its caption (the text the audio is paired with in training).
    pub caption: String,
    /// An image paired with it, if any.
    pub image: Option<PathBuf>,
    /// Its class name, if any (zero-shot evaluation needs it).
    pub label: Option<String>,
    /// Cross-validation fold (ESC-50: 1..=5; UrbanSound8K: 1..=10).
    pub fold: Option<usize>,
    /// 1-based line of the table.
    pub line: usize,
}

/// A table of audio samples and the file it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct AudioTable {
    /// The table file.
    pub path: PathBuf,
    /// Its rows.
    pub rows: Vec<AudioRow>,
}

/// Which layout a dataset is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DatasetFormat {
    /// A generic table file.
    Table,
    /// The ESC-50 folder.
    Esc50,
    /// The UrbanSound8K folder.
    Urbansound8k,
}

impl DatasetFormat {
    /// Folds of the benchmark's cross-validation (`None` for a plain table).
    pub fn folds(self) -> Option<usize> {
        match self {
            Self::Table => None,
            Self::Esc50 => Some(5),
            Self::Urbansound8k => Some(10),
        }
    }
}

fn table_error(path: &Path, line: usize, message: impl Into<String>) -> AudioError {
    let location = if line > 0 { format!("{}:{line}", path.display()) } else { path.display().to_string() };
    AudioError { path: PathBuf::from(location), message: message.into() }
}

/// Records of a delimited file with their 1-based lines.
type Records = Vec<(usize, Vec<String>)>;

/// Reads a delimited file: the header's columns and the records with their 1-based lines.
fn records(path: &Path, delimiter: u8) -> Result<(Vec<String>, Records), AudioError> {
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .flexible(true)
        .from_path(path)
        .map_err(|e| table_error(path, 0, e.to_string()))?;
    let header: Vec<String> =
        reader.headers().map_err(|e| table_error(path, 1, e.to_string()))?.iter().map(|h| h.trim().to_string()).collect();
    let mut rows = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|e| {
            let line = e.position().map(|p| p.line() as usize).unwrap_or(0);
            table_error(path, line, e.to_string())
        })?;
        let line = record.position().map(|p| p.line() as usize).unwrap_or(0);
        if record.iter().all(|f| f.trim().is_empty()) {
            continue;
        }
        rows.push((line, record.iter().map(|f| f.trim().to_string()).collect()));
    }
    Ok((header, rows))
}

fn column(header: &[String], name: &str, path: &Path, what: &str) -> Result<usize, AudioError> {
    header
        .iter()
        .position(|c| c == name)
        .ok_or_else(|| table_error(path, 1, format!("no `{name}` column ({what})")))
}

fn field<'a>(fields: &'a [String], index: usize, name: &str, path: &Path, line: usize) -> Result<&'a str, AudioError> {
    fields
        .get(index)
        .map(String::as_str)
        .filter(|f| !f.is_empty())
        .ok_or_else(|| table_error(path, line, format!("the `{name}` field is empty or missing")))
}

/// A benchmark class name as a caption: underscores to spaces.
pub fn readable_label(label: &str) -> String {
    label.replace('_', " ")
}

impl AudioTable {
    /// Reads data in `format`: a table file, or the root folder of ESC-50 or UrbanSound8K.
    pub fn read_format(path: &Path, format: DatasetFormat) -> Result<Self, AudioError> {
        match format {
            DatasetFormat::Table => Self::read(path),
            DatasetFormat::Esc50 => Self::esc50(path),
            DatasetFormat::Urbansound8k => Self::urbansound8k(path),
        }
    }

    /// Reads a generic table (`.csv` comma-separated, anything else tab-separated) with the
    /// columns `audio`, `caption` (or `label`, which then is the caption), and optionally
    /// `image`, `label` and `fold`. Errors name the file and line.
    pub fn read(path: &Path) -> Result<Self, AudioError> {
        let delimiter = if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("csv")) { b',' } else { b'\t' };
        let (header, records) = records(path, delimiter)?;
        let what = "an audio table has the columns audio, caption and optionally image, label, fold";
        let audio = column(&header, "audio", path, what)?;
        let caption = header.iter().position(|c| c == "caption");
        let label = header.iter().position(|c| c == "label");
        let image = header.iter().position(|c| c == "image");
        let fold = header.iter().position(|c| c == "fold");
        if caption.is_none() && label.is_none() {
            return Err(table_error(path, 1, format!("no `caption` or `label` column ({what})")));
        }
        let folder = path.parent().unwrap_or(Path::new(""));
        let mut rows = Vec::with_capacity(records.len());
        for (line, fields) in records {
            let label = label.map(|i| field(&fields, i, "label", path, line).map(str::to_string)).transpose()?;
            let caption = match caption {
                Some(i) => field(&fields, i, "caption", path, line)?.to_string(),
                None => label.clone().unwrap_or_default(),
            };
            let fold = fold
                .map(|i| {
                    let text = field(&fields, i, "fold", path, line)?;
                    text.parse::<usize>().map_err(|_| table_error(path, line, format!("fold {text:?} is not a number")))
                })
                .transpose()?;
            rows.push(AudioRow {
                audio: folder.join(field(&fields, audio, "audio", path, line)?),
                caption,
                image: image.map(|i| field(&fields, i, "image", path, line).map(|p| folder.join(p))).transpose()?,
                label,
                fold,
                line,
            });
        }
        Self::checked(path, rows)
    }

    /// Reads ESC-50 from its root folder (`meta/esc50.csv`, `audio/`).
    pub fn esc50(root: &Path) -> Result<Self, AudioError> {
        let path = root.join("meta").join("esc50.csv");
        let (header, records) = records(&path, b',')?;
        let what = "ESC-50's meta/esc50.csv has filename,fold,target,category,...";
        let (file, fold, category) =
            (column(&header, "filename", &path, what)?, column(&header, "fold", &path, what)?, column(&header, "category", &path, what)?);
        Self::benchmark(&path, records, |fields, line| {
            let name = field(fields, file, "filename", &path, line)?;
            let fold = parse_fold(field(fields, fold, "fold", &path, line)?, 5, &path, line)?;
            let label = readable_label(field(fields, category, "category", &path, line)?);
            Ok((root.join("audio").join(name), fold, label))
        })
    }

    /// Reads UrbanSound8K from its root folder (`metadata/UrbanSound8K.csv`, `audio/foldN/`).
    pub fn urbansound8k(root: &Path) -> Result<Self, AudioError> {
        let path = root.join("metadata").join("UrbanSound8K.csv");
        let (header, records) = records(&path, b',')?;
        let what = "UrbanSound8K's metadata/UrbanSound8K.csv has slice_file_name,...,fold,classID,class";
        let (file, fold, class) = (
            column(&header, "slice_file_name", &path, what)?,
            column(&header, "fold", &path, what)?,
            column(&header, "class", &path, what)?,
        );
        Self::benchmark(&path, records, |fields, line| {
            let name = field(fields, file, "slice_file_name", &path, line)?;
            let fold = parse_fold(field(fields, fold, "fold", &path, line)?, 10, &path, line)?;
            let label = readable_label(field(fields, class, "class", &path, line)?);
            Ok((root.join("audio").join(format!("fold{fold}")).join(name), fold, label))
        })
    }

    fn benchmark(
        path: &Path,
        records: Records,
        row: impl Fn(&[String], usize) -> Result<(PathBuf, usize, String), AudioError>,
    ) -> Result<Self, AudioError> {
        let rows = records
            .into_iter()
            .map(|(line, fields)| {
                let (audio, fold, label) = row(&fields, line)?;
                Ok(AudioRow { audio, caption: label.clone(), image: None, label: Some(label), fold: Some(fold), line })
            })
            .collect::<Result<Vec<_>, AudioError>>()?;
        Self::checked(path, rows)
    }

    fn checked(path: &Path, rows: Vec<AudioRow>) -> Result<Self, AudioError> {
        if rows.is_empty() {
            return Err(table_error(path, 0, "no rows"));
        }
        let with_images = rows.iter().filter(|r| r.image.is_some()).count();
        if with_images != 0 && with_images != rows.len() {
            return Err(table_error(path, 0, format!("{with_images} of {} rows have an image: give all or none", rows.len())));
        }
        Ok(Self { path: path.to_path_buf(), rows })
    }

    /// Whether the rows carry images.
    pub fn has_images(&self) -> bool {
        self.rows.first().is_some_and(|r| r.image.is_some())
    }

    /// The sorted distinct labels.
    pub fn labels(&self) -> Vec<String> {
        let mut labels: Vec<String> = self.rows.iter().filter_map(|r| r.label.clone()).collect();
        labels.sort();
        labels.dedup();
        labels
    }

    /// `(training, held out)`: the rows of every fold but `fold`, and those of `fold`. An error
    /// when a row has no fold or either side is empty.
    pub fn split_fold(self, fold: usize) -> Result<(Self, Self), AudioError> {
        if let Some(row) = self.rows.iter().find(|r| r.fold.is_none()) {
            return Err(table_error(&self.path, row.line, "no fold: a fold split needs a fold on every row"));
        }
        let (held, kept): (Vec<AudioRow>, Vec<AudioRow>) = self.rows.into_iter().partition(|r| r.fold == Some(fold));
        if held.is_empty() || kept.is_empty() {
            return Err(table_error(&self.path, 0, format!("fold {fold} leaves an empty side ({} held out, {} kept)", held.len(), kept.len())));
        }
        Ok((Self { path: self.path.clone(), rows: kept }, Self { path: self.path, rows: held }))
    }
}

fn parse_fold(text: &str, folds: usize, path: &Path, line: usize) -> Result<usize, AudioError> {
    match text.parse::<usize>() {
        Ok(fold) if (1..=folds).contains(&fold) => Ok(fold),
        _ => Err(table_error(path, line, format!("fold {text:?} is not in 1..={folds}"))),
    }
}

impl Splittable for AudioTable {
    fn rows(&self) -> usize {
        self.rows.len()
    }

    fn split_off(self, fraction: f64, seed: u64) -> (Self, Self) {
        let (kept, held) = clip_core::split::split_rows(self.rows.len(), fraction, seed);
        let pick = |indices: Vec<usize>| indices.into_iter().map(|i| self.rows[i].clone()).collect();
        let (kept, val) = (pick(kept), pick(held));
        (Self { path: self.path.clone(), rows: kept }, Self { path: self.path, rows: val })
    }
}

//! Label names and how raw mask values map to label indices.

use std::path::Path;

use super::SegmentationDataError;

/// The labels of a dataset and how its mask values are read.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelSet {
    /// Label names; a mask value `k` (after `reduce_zero_label`) is `names[k]`.
    pub names: Vec<String>,
    /// Mask value of unlabelled pixels, skipped by losses and metrics (255 in ADE20K, VOC and
    /// COCO-Stuff).
    pub ignore_index: i64,
    /// ADE20K's convention: mask value 0 ("other") becomes the ignore index and every other
    /// value `k` becomes `k - 1`.
    pub reduce_zero_label: bool,
}

impl LabelSet {
    /// Labels `names`, ignore index 255, no zero-label reduction.
    pub fn new(names: Vec<String>) -> Self {
        Self {
            names,
            ignore_index: 255,
            reduce_zero_label: false,
        }
    }

    /// Reads label names: a text file with one name per line (blank lines at the end ignored),
    /// or a `.csv` file with a `Name` column (ADE20K's `objectInfo150.csv`, whose names list
    /// synonyms separated by `;`: the first is taken). Ignore index 255, no reduction.
    pub fn read(path: &Path) -> Result<Self, SegmentationDataError> {
        let names = if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("csv")) {
            read_csv_names(path)?
        } else {
            read_text_names(path)?
        };
        if names.is_empty() {
            return Err(SegmentationDataError::table(path, None, "no label names"));
        }
        Ok(Self::new(names))
    }

    /// Number of labels.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Whether there are no labels.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Raw mask values as label indices: `reduce_zero_label` applied, the ignore index kept;
    /// the error names the first value that is not a label.
    pub(super) fn to_labels(&self, raw: &[u16]) -> Result<Vec<i64>, String> {
        let count = self.names.len() as i64;
        let mut labels = Vec::with_capacity(raw.len());
        for &value in raw {
            let value = i64::from(value);
            let label = if value == self.ignore_index {
                value
            } else if self.reduce_zero_label {
                if value == 0 { self.ignore_index } else { value - 1 }
            } else {
                value
            };
            if label != self.ignore_index && label >= count {
                let reduced = if self.reduce_zero_label {
                    " (after reduce_zero_label, label value - 1)"
                } else {
                    ""
                };
                return Err(format!(
                    "mask value {value} is not a label: there are {count} labels{reduced} and the ignore index is {}",
                    self.ignore_index
                ));
            }
            labels.push(label);
        }
        Ok(labels)
    }
}

fn read_text_names(path: &Path) -> Result<Vec<String>, SegmentationDataError> {
    let text = std::fs::read_to_string(path).map_err(|e| SegmentationDataError::table(path, None, e.to_string()))?;
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    let used = lines.iter().rposition(|l| !l.is_empty()).map_or(0, |last| last + 1);
    lines[..used]
        .iter()
        .enumerate()
        .map(|(index, name)| {
            if name.is_empty() {
                Err(SegmentationDataError::table(path, Some(index + 1), "empty label name"))
            } else {
                Ok(name.to_string())
            }
        })
        .collect()
}

fn read_csv_names(path: &Path) -> Result<Vec<String>, SegmentationDataError> {
    let error = |line: Option<usize>, message: String| SegmentationDataError::table(path, line, message);
    let mut reader = csv::Reader::from_path(path).map_err(|e| error(None, e.to_string()))?;
    let headers = reader.headers().map_err(|e| error(Some(1), e.to_string()))?.clone();
    let column = headers
        .iter()
        .position(|h| h.trim().eq_ignore_ascii_case("name"))
        .ok_or_else(|| error(Some(1), "no \"Name\" column".into()))?;
    let mut names = Vec::new();
    for (index, record) in reader.records().enumerate() {
        let line = index + 2;
        let record = record.map_err(|e| error(Some(line), e.to_string()))?;
        let name = record
            .get(column)
            .and_then(|n| n.split(';').next())
            .map(str::trim)
            .unwrap_or_default();
        if name.is_empty() {
            return Err(error(Some(line), "empty label name".into()));
        }
        names.push(name.to_string());
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_file(dir: &std::path::Path, name: &str, text: &str) -> std::path::PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn text_and_ade_csv_label_files() {
        let dir = tempfile::Builder::new().prefix("clip-seg-labels-").tempdir().unwrap();
        let labels = LabelSet::read(&temp_file(dir.path(), "labels.txt", "background\ncat\n\n")).unwrap();
        assert_eq!(labels.names, ["background", "cat"]);
        let csv = "Idx,Ratio,Train,Val,Name\n1,0.1576,11664,1172,wall\n2,0.1072,6046,612,building;edifice\n";
        assert_eq!(
            LabelSet::read(&temp_file(dir.path(), "objectInfo150.csv", csv)).unwrap().names,
            ["wall", "building"]
        );
        let err = LabelSet::read(&temp_file(dir.path(), "gap.txt", "a\n\nb\n")).unwrap_err();
        assert!(err.to_string().ends_with("gap.txt:2: empty label name"), "{err}");
    }

    #[test]
    fn reduce_zero_label_and_range() {
        let mut labels = LabelSet::new(vec!["a".into(), "b".into()]);
        assert_eq!(labels.to_labels(&[0, 1, 255]).unwrap(), [0, 1, 255]);
        assert!(labels.to_labels(&[2]).unwrap_err().contains("mask value 2"));
        labels.reduce_zero_label = true;
        // 0 -> ignore, 1 -> 0, 2 -> 1, 255 stays ignored.
        assert_eq!(labels.to_labels(&[0, 1, 2, 255]).unwrap(), [255, 0, 1, 255]);
        assert!(labels.to_labels(&[3]).is_err());
    }
}

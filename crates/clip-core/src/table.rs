//! Tables with a header row, read as open_clip's `pd.read_csv(sep=...)` reads them: `.tsv`
//! files are tab-separated, any other file is comma-separated, and both decode CSV quoting (a
//! field that starts with `"` runs to its closing quote, `""` inside it being one quote).

use std::path::{Path, PathBuf};

/// A problem with a table file, at a 1-based line where there is one (the header is line 1).
#[derive(Debug, thiserror::Error)]
#[error("{}{}: {message}", path.display(), line.map(|l| format!(":{l}")).unwrap_or_default())]
pub struct TableError {
    /// The table file.
    pub path: PathBuf,
    /// The line, when the problem has one.
    pub line: Option<usize>,
    /// What is wrong.
    pub message: String,
}

/// One row: its line in the file and its values of the requested columns, in their order.
pub type TableRow = (usize, Vec<String>);

/// Reads the values of `columns` from every row of the table at `path`. The header must name
/// every column; values are trimmed and must not be empty.
pub fn read_columns(path: &Path, columns: &[&str]) -> Result<Vec<TableRow>, TableError> {
    let error = |line: Option<usize>, message: String| TableError {
        path: path.to_path_buf(),
        line,
        message,
    };
    let tsv = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("tsv"));
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(if tsv { b'\t' } else { b',' })
        .from_path(path)
        .map_err(|e| error(None, e.to_string()))?;
    let headers = reader.headers().map_err(|e| error(Some(1), e.to_string()))?.clone();
    let positions = columns
        .iter()
        .map(|name| {
            headers.iter().position(|h| h.trim() == *name).ok_or_else(|| {
                let found: Vec<&str> = headers.iter().collect();
                error(Some(1), format!("no column {name:?} (columns: {})", found.join(", ")))
            })
        })
        .collect::<Result<Vec<usize>, _>>()?;
    let mut rows = Vec::new();
    for (index, record) in reader.records().enumerate() {
        let line = index + 2;
        let record = record.map_err(|e| error(Some(line), e.to_string()))?;
        let values = positions
            .iter()
            .zip(columns)
            .map(|(&position, name)| match record.get(position).map(str::trim) {
                Some(value) if !value.is_empty() => Ok(value.to_string()),
                _ => Err(error(Some(line), format!("empty {name}"))),
            })
            .collect::<Result<Vec<String>, _>>()?;
        rows.push((line, values));
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scratch directory for one test, removed when dropped.
    fn scratch() -> tempfile::TempDir {
        tempfile::Builder::new().prefix("clip-core-table-").tempdir().unwrap()
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn columns_in_the_asked_order_with_lines() {
        let dir = scratch();
        let path = write(dir.path(), "a.tsv", "title\tfilepath\textra\n\"he said \"\"hi\"\"\" \t 1.png\tx\ncat\t2.png\ty\n");
        let rows = read_columns(&path, &["filepath", "title"]).unwrap();
        assert_eq!(rows, [(2, vec!["1.png".to_string(), "he said \"hi\"".to_string()]), (3, vec!["2.png".into(), "cat".into()])]);
        let path = write(dir.path(), "b.csv", "filepath,title\n1.png,\"a dog, running\"\n");
        assert_eq!(read_columns(&path, &["title"]).unwrap(), [(2, vec!["a dog, running".to_string()])]);
    }

    #[test]
    fn errors_name_the_file_line_and_column() {
        let dir = scratch();
        let path = write(dir.path(), "c.csv", "filepath,title\n1.png,a dog\n2.png,\n");
        let error = read_columns(&path, &["filepath", "caption"]).unwrap_err().to_string();
        assert!(error.ends_with("c.csv:1: no column \"caption\" (columns: filepath, title)"), "{error}");
        let error = read_columns(&path, &["filepath", "title"]).unwrap_err().to_string();
        assert!(error.ends_with("c.csv:3: empty title"), "{error}");
        let error = read_columns(&path.with_extension("missing"), &["title"]).unwrap_err();
        assert_eq!(error.line, None);
    }
}

//! Reading and writing checkpoint files as plain named f32 tensors.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use burn_store::pytorch::PytorchReader;
use burn_store::{ModuleStore, SafetensorsStore, bridge};
use safetensors::tensor::{Dtype, TensorView};

use crate::error::{ClipError, Result};

/// A tensor read from a checkpoint, converted to f32, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct RawTensor {
    /// Extents, outermost first.
    pub shape: Vec<usize>,
    /// Values in row-major order.
    pub values: Vec<f32>,
}

impl RawTensor {
    /// The transpose of a 2-D tensor.
    pub fn transposed(&self) -> RawTensor {
        let [rows, cols] = [self.shape[0], self.shape[1]];
        let mut values = vec![0.0; self.values.len()];
        for r in 0..rows {
            for c in 0..cols {
                values[c * rows + r] = self.values[r * cols + c];
            }
        }
        RawTensor {
            shape: vec![cols, rows],
            values,
        }
    }

    /// Chunk `index` of `count` equal chunks along the first dimension.
    pub fn chunk(&self, index: usize, count: usize) -> RawTensor {
        let rows = self.shape[0] / count;
        let row_len: usize = self.shape[1..].iter().product();
        let start = index * rows * row_len;
        let mut shape = self.shape.clone();
        shape[0] = rows;
        RawTensor {
            shape,
            values: self.values[start..start + rows * row_len].to_vec(),
        }
    }

    /// Concatenation along the first dimension.
    pub fn concat(parts: &[RawTensor]) -> RawTensor {
        let mut shape = parts[0].shape.clone();
        shape[0] = parts.iter().map(|p| p.shape[0]).sum();
        RawTensor {
            shape,
            values: parts.iter().flat_map(|p| p.values.iter().copied()).collect(),
        }
    }
}

/// All tensors of a checkpoint by their key, with the file they came from.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    /// The file read.
    pub path: PathBuf,
    /// Tensors by key.
    pub tensors: BTreeMap<String, RawTensor>,
}

impl Checkpoint {
    /// Reads a `.safetensors` file or a PyTorch `.pt`/`.pth`/`.bin` state dict (also one nested
    /// under `state_dict`, as open_clip's training checkpoints are). A `module.` prefix left by
    /// DistributedDataParallel is removed.
    pub fn read(path: &Path) -> Result<Self> {
        if !path.is_file() {
            return Err(ClipError::io(
                path,
                std::io::Error::new(std::io::ErrorKind::NotFound, "checkpoint file not found"),
            ));
        }
        let is_safetensors = path.extension().is_some_and(|ext| ext == "safetensors");
        let tensors = if is_safetensors {
            read_safetensors(path)?
        } else {
            read_pytorch(path)?
        };
        let tensors = tensors
            .into_iter()
            .map(|(key, tensor)| match key.strip_prefix("module.") {
                Some(stripped) => (stripped.to_string(), tensor),
                None => (key, tensor),
            })
            .collect();
        Ok(Self {
            path: path.to_path_buf(),
            tensors,
        })
    }

    /// Writes the tensors as f32 safetensors, through a temporary file renamed into place.
    pub fn write_safetensors(tensors: &BTreeMap<String, RawTensor>, path: &Path) -> Result<()> {
        Self::write_safetensors_with_integers(tensors, &BTreeSet::new(), path)
    }

    /// As [`write_safetensors`](Self::write_safetensors), with `metadata` entries added to
    /// the file's `__metadata__` (readers that do not know them ignore them).
    pub fn write_safetensors_with_metadata(
        tensors: &BTreeMap<String, RawTensor>,
        metadata: &[(String, String)],
        path: &Path,
    ) -> Result<()> {
        Self::write(tensors, &BTreeSet::new(), metadata, path)
    }

    /// The `__metadata__` of a safetensors file (empty for other files and files without it).
    pub fn read_metadata(path: &Path) -> Result<BTreeMap<String, String>> {
        use std::io::Read;
        if path.extension().is_none_or(|ext| ext != "safetensors") {
            return Ok(BTreeMap::new());
        }
        let mut file = std::fs::File::open(path).map_err(|e| ClipError::io(path, e))?;
        let mut length = [0u8; 8];
        file.read_exact(&mut length).map_err(|e| ClipError::io(path, e))?;
        let mut header = vec![0u8; u64::from_le_bytes(length).min(100_000_000) as usize];
        file.read_exact(&mut header).map_err(|e| ClipError::io(path, e))?;
        let header: serde_json::Value = serde_json::from_slice(&header)
            .map_err(|e| ClipError::checkpoint(path, format!("safetensors header: {e}")))?;
        Ok(header["__metadata__"]
            .as_object()
            .map(|entries| {
                entries
                    .iter()
                    .filter_map(|(key, value)| Some((key.clone(), value.as_str()?.to_string())))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// As [`write_safetensors`](Self::write_safetensors), writing the tensors named in
    /// `integers` (counters such as BatchNorm's `num_batches_tracked`) as int64.
    pub fn write_safetensors_with_integers(
        tensors: &BTreeMap<String, RawTensor>,
        integers: &BTreeSet<String>,
        path: &Path,
    ) -> Result<()> {
        Self::write(tensors, integers, &[], path)
    }

    fn write(
        tensors: &BTreeMap<String, RawTensor>,
        integers: &BTreeSet<String>,
        metadata: &[(String, String)],
        path: &Path,
    ) -> Result<()> {
        let bytes: Vec<(String, Dtype, Vec<u8>, Vec<usize>)> = tensors
            .iter()
            .map(|(key, t)| {
                let (dtype, bytes) = if integers.contains(key) {
                    (Dtype::I64, t.values.iter().flat_map(|&v| (v as i64).to_le_bytes()).collect())
                } else {
                    (Dtype::F32, t.values.iter().flat_map(|v| v.to_le_bytes()).collect())
                };
                (key.clone(), dtype, bytes, t.shape.clone())
            })
            .collect();
        let views = bytes
            .iter()
            .map(|(key, dtype, bytes, shape)| {
                TensorView::new(*dtype, shape.clone(), bytes)
                    .map(|view| (key.clone(), view))
                    .map_err(|e| ClipError::checkpoint(path, format!("{key}: {e}")))
            })
            .collect::<Result<Vec<_>>>()?;
        let mut entries = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
        entries.extend(metadata.iter().cloned());
        let metadata = Some(entries);
        let serialized = safetensors::serialize(views, metadata)
            .map_err(|e| ClipError::checkpoint(path, e.to_string()))?;
        write_atomically(path, &serialized)
    }
}

/// Writes `bytes` to a temporary file beside `path`, then renames it over `path`.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| ClipError::io(parent, e))?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, bytes).map_err(|e| ClipError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| ClipError::io(path, e))
}

fn to_raw(path: &Path, key: &str, tensor: burn_store::burn_pack::Tensor) -> Result<RawTensor> {
    let data = bridge::into_data(tensor).map_err(|e| ClipError::checkpoint(path, format!("{key}: {e}")))?;
    let shape = data.shape().to_vec();
    let values = data
        .try_into_vec_as::<f32>()
        .map_err(|e| ClipError::checkpoint(path, format!("{key}: cannot read as f32: {e:?}")))?;
    Ok(RawTensor { shape, values })
}

fn read_safetensors(path: &Path) -> Result<BTreeMap<String, RawTensor>> {
    let mut store = SafetensorsStore::from_file(path);
    let tensors = store
        .get_all_tensors()
        .map_err(|e| ClipError::checkpoint(path, e.to_string()))?
        .clone();
    tensors
        .into_iter()
        .map(|(key, tensor)| to_raw(path, &key, tensor).map(|raw| (key, raw)))
        .collect()
}

fn read_pytorch(path: &Path) -> Result<BTreeMap<String, RawTensor>> {
    let reader = PytorchReader::new(path).map_err(|e| ClipError::checkpoint(path, e.to_string()))?;
    let reader = if reader.keys().iter().any(|k| k.starts_with("state_dict.")) {
        PytorchReader::with_top_level_key(path, "state_dict")
            .map_err(|e| ClipError::checkpoint(path, e.to_string()))?
    } else {
        reader
    };
    reader
        .into_tensors()
        .into_iter()
        .map(|(key, tensor)| to_raw(path, &key, bridge::from_pytorch(tensor)).map(|raw| (key, raw)))
        .collect()
}

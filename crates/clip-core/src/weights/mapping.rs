//! A checkpoint layout as a table from checkpoint keys to our parameter paths, applied in
//! both directions: import (checkpoint -> model) and export (model -> checkpoint).

use std::collections::{BTreeMap, BTreeSet};

use burn::module::Module;
use burn::tensor::TensorData;
use burn_store::{ModuleSnapshot, bridge};

use super::checkpoint::{Checkpoint, RawTensor};
use crate::error::{ClipError, Result};
use crate::vision::resize_positional_embedding;

/// How a checkpoint tensor becomes one of our parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Transform {
    /// Same layout.
    Identity,
    /// A PyTorch `Linear` weight `[out, in]` becomes our `[in, out]`.
    Transpose,
    /// Chunk `index` of `count` along the first dimension (fused q/k/v), then the same
    /// treatment as the inner transform for Linear weights when `transpose` is set.
    Chunk {
        /// Which chunk.
        index: usize,
        /// How many chunks.
        count: usize,
        /// Whether the chunk is a Linear weight to transpose.
        transpose: bool,
    },
    /// A ViT positional embedding: resized bicubically when the checkpoint's grid differs.
    PositionalEmbedding,
    /// A scalar (shape `[]`) stored by us as `[1]`, like the logit scale.
    Scalar,
    /// An integer counter (int64 shape `[]`, BatchNorm's `num_batches_tracked`) stored by us
    /// as an f32 `[1]`; written back as int64. Zero when the checkpoint lacks it, as PyTorch
    /// does (torchvision's `FrozenBatchNorm2d`, which open_clip's frozen towers use, has none).
    Count,
}

/// One row of a layout table.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Key in the checkpoint.
    pub checkpoint: String,
    /// Our parameter path (burn module path).
    pub ours: String,
    /// Conversion from the checkpoint's layout to ours.
    pub transform: Transform,
}

impl Entry {
    /// A table row.
    pub fn new(checkpoint: impl Into<String>, ours: impl Into<String>, transform: Transform) -> Self {
        Self {
            checkpoint: checkpoint.into(),
            ours: ours.into(),
            transform,
        }
    }
}

/// A complete layout: the table plus checkpoint keys that carry no weights and are skipped.
#[derive(Debug, Clone)]
pub struct Layout {
    /// Rows, in order.
    pub entries: Vec<Entry>,
    /// Keys to ignore when present (buffers such as `position_ids`).
    pub ignored: Vec<String>,
}

impl Layout {
    /// The same table with `checkpoint` prepended to every checkpoint key (and ignored key) and
    /// `ours` to every parameter path: CLIP's layout inside a method's model (`clip.`).
    pub fn prefixed(self, checkpoint: &str, ours: &str) -> Layout {
        Layout {
            entries: self
                .entries
                .into_iter()
                .map(|e| Entry::new(format!("{checkpoint}{}", e.checkpoint), format!("{ours}{}", e.ours), e.transform))
                .collect(),
            ignored: self.ignored.into_iter().map(|key| format!("{checkpoint}{key}")).collect(),
        }
    }

    /// Checkpoint keys that hold integers ([`Transform::Count`]), to be written as int64.
    pub fn integer_keys(&self) -> BTreeSet<String> {
        self.entries
            .iter()
            .filter(|entry| entry.transform == Transform::Count)
            .map(|entry| entry.checkpoint.clone())
            .collect()
    }
}

/// The checkpoint-layout shape a parameter of `our_shape` has under `transform`.
fn checkpoint_shape(transform: Transform, our_shape: &[usize]) -> Vec<usize> {
    match transform {
        Transform::Identity | Transform::PositionalEmbedding => our_shape.to_vec(),
        Transform::Transpose => vec![our_shape[1], our_shape[0]],
        Transform::Chunk {
            count, transpose, ..
        } => {
            let mut shape: Vec<usize> = if transpose {
                vec![our_shape[1], our_shape[0]]
            } else {
                our_shape.to_vec()
            };
            shape[0] *= count;
            shape
        }
        Transform::Scalar | Transform::Count => Vec::new(),
    }
}

/// Loads `checkpoint` into `model` (any module: CLIP, GroupViT, ...) through `layout`. Our
/// parameter paths leave out enum variants (`visual.conv1.weight`, whichever tower `visual`
/// is). Every model parameter must be covered,
/// every checkpoint tensor used (or ignored by the layout) and every shape must agree; the
/// error names the checkpoint key and both shapes.
pub fn import<M: Module>(model: M, checkpoint: &Checkpoint, layout: &Layout) -> Result<M> {
    let path = &checkpoint.path;
    let expected: BTreeMap<String, Vec<usize>> = model
        .collect(None, None, true)
        .into_iter()
        .map(|t| (t.name, t.shape.to_vec()))
        .collect();
    let mut used = BTreeSet::new();
    let zero_count = RawTensor { shape: Vec::new(), values: vec![0.0] };
    let mut tensors = Vec::with_capacity(layout.entries.len());
    for entry in &layout.entries {
        let our_shape = expected.get(&entry.ours).ok_or_else(|| {
            ClipError::checkpoint(path, format!("internal: no model parameter '{}'", entry.ours))
        })?;
        let want = checkpoint_shape(entry.transform, our_shape);
        let raw = match checkpoint.tensors.get(&entry.checkpoint) {
            Some(raw) => raw,
            None if entry.transform == Transform::Count => &zero_count,
            None => {
                return Err(ClipError::MissingKey {
                    path: path.clone(),
                    key: entry.checkpoint.clone(),
                    expected: want,
                });
            }
        };
        used.insert(entry.checkpoint.as_str());
        let converted = match entry.transform {
            Transform::PositionalEmbedding if is_resizable_positional_embedding(raw, our_shape) => {
                resize_raw_positional_embedding(raw, our_shape)
            }
            _ if raw.shape != want => {
                return Err(ClipError::ShapeMismatch {
                    path: path.clone(),
                    key: entry.checkpoint.clone(),
                    expected: want,
                    found: raw.shape.clone(),
                });
            }
            transform => to_ours(raw, transform, our_shape),
        };
        tensors.push(bridge::from_data(
            TensorData::new(converted.values, converted.shape),
            entry.ours.clone(),
            None,
        ));
    }
    let unexpected: Vec<String> = checkpoint
        .tensors
        .keys()
        .filter(|key| !used.contains(key.as_str()) && !layout.ignored.contains(key))
        .cloned()
        .collect();
    if !unexpected.is_empty() {
        return Err(ClipError::UnexpectedKeys {
            path: path.clone(),
            keys: unexpected,
        });
    }
    let covered: BTreeSet<&str> = layout.entries.iter().map(|e| e.ours.as_str()).collect();
    if let Some(uncovered) = expected.keys().find(|k| !covered.contains(k.as_str())) {
        return Err(ClipError::checkpoint(
            path,
            format!("internal: layout does not cover model parameter '{uncovered}'"),
        ));
    }
    let mut model = model;
    let result = model.apply(tensors, None, None, true);
    if let Some(error) = result.errors.first() {
        return Err(ClipError::checkpoint(path, error.to_string()));
    }
    Ok(model)
}

/// The parameters of `model` (any module) in the checkpoint layout of `layout`.
pub fn export<M: Module>(model: &M, layout: &Layout) -> Result<BTreeMap<String, RawTensor>> {
    let ours: BTreeMap<String, RawTensor> = model
        .collect(None, None, true)
        .into_iter()
        .map(|t| {
            let name = t.name.clone();
            let data = bridge::into_data(t)
                .map_err(|e| ClipError::checkpoint("<model>", format!("{name}: {e}")))?;
            let shape = data.shape().to_vec();
            let values = data
                .try_into_vec_as::<f32>()
                .map_err(|e| ClipError::checkpoint("<model>", format!("{name}: {e:?}")))?;
            Ok((name, RawTensor { shape, values }))
        })
        .collect::<Result<_>>()?;
    let mut chunks: BTreeMap<String, Vec<(usize, RawTensor)>> = BTreeMap::new();
    let mut out = BTreeMap::new();
    if let Some(uncovered) = ours.keys().find(|name| !layout.entries.iter().any(|e| &e.ours == *name)) {
        return Err(ClipError::checkpoint("<model>", format!("the layout writes no key for parameter '{uncovered}'")));
    }
    for entry in &layout.entries {
        let ours = ours.get(&entry.ours).ok_or_else(|| {
            ClipError::checkpoint("<model>", format!("'{}' has no model parameter '{}'", entry.checkpoint, entry.ours))
        })?;
        match entry.transform {
            Transform::Identity | Transform::PositionalEmbedding => {
                out.insert(entry.checkpoint.clone(), ours.clone());
            }
            Transform::Transpose => {
                out.insert(entry.checkpoint.clone(), ours.transposed());
            }
            Transform::Scalar | Transform::Count => {
                let scalar = RawTensor {
                    shape: Vec::new(),
                    values: ours.values.clone(),
                };
                out.insert(entry.checkpoint.clone(), scalar);
            }
            Transform::Chunk {
                index, transpose, ..
            } => {
                let part = if transpose { ours.transposed() } else { ours.clone() };
                chunks.entry(entry.checkpoint.clone()).or_default().push((index, part));
            }
        }
    }
    for (key, mut parts) in chunks {
        parts.sort_by_key(|(index, _)| *index);
        let parts: Vec<RawTensor> = parts.into_iter().map(|(_, part)| part).collect();
        out.insert(key, RawTensor::concat(&parts));
    }
    Ok(out)
}

fn to_ours(raw: &RawTensor, transform: Transform, our_shape: &[usize]) -> RawTensor {
    match transform {
        Transform::Identity | Transform::PositionalEmbedding => raw.clone(),
        Transform::Transpose => raw.transposed(),
        Transform::Chunk {
            index,
            count,
            transpose,
        } => {
            let chunk = raw.chunk(index, count);
            if transpose { chunk.transposed() } else { chunk }
        }
        Transform::Scalar | Transform::Count => RawTensor {
            shape: our_shape.to_vec(),
            values: raw.values.clone(),
        },
    }
}

/// Whether `raw` is a `[1 + g*g, width]` ViT positional embedding of the model's width.
fn is_resizable_positional_embedding(raw: &RawTensor, our_shape: &[usize]) -> bool {
    let is_square = |n: usize| {
        let side = (n as f64).sqrt().round() as usize;
        side * side == n
    };
    raw.shape.len() == 2 && raw.shape[1] == our_shape[1] && raw.shape[0] > 1 && is_square(raw.shape[0] - 1)
}

/// Resizes a checkpoint's `[1 + g*g, width]` positional embedding to the model's grid.
fn resize_raw_positional_embedding(raw: &RawTensor, our_shape: &[usize]) -> RawTensor {
    if raw.shape == our_shape {
        return raw.clone();
    }
    let device = burn::tensor::Device::flex();
    let tensor = burn::tensor::Tensor::<2>::from_data(
        TensorData::new(raw.values.clone(), raw.shape.clone()),
        &device,
    );
    let grid = ((our_shape[0] - 1) as f64).sqrt().round() as usize;
    let resized = resize_positional_embedding(
        tensor,
        [grid, grid],
        burn::tensor::ops::InterpolateMode::Bicubic,
    );
    let data = resized.into_data();
    RawTensor {
        shape: data.shape().to_vec(),
        values: data.iter::<f32>().collect(),
    }
}

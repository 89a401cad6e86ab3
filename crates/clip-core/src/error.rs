//! The crate-wide error type.

use std::path::PathBuf;

/// Everything that can go wrong in `clip-core`; each variant names the file, key or field.
#[derive(Debug, thiserror::Error)]
pub enum ClipError {
    /// A file could not be read or written.
    #[error("{path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying I/O error (shown in the message, so not also a `source`).
        error: std::io::Error,
    },
    /// A model configuration is malformed or names something unsupported.
    #[error("model config {origin}: {message}")]
    Config {
        /// Where the configuration came from (a file or a built-in name).
        origin: String,
        /// What is wrong.
        message: String,
    },
    /// A checkpoint could not be parsed.
    #[error("checkpoint {path}: {message}")]
    Checkpoint {
        /// The checkpoint file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A checkpoint lacks a tensor the model needs.
    #[error("checkpoint {path}: missing key '{key}' (the model expects shape {expected:?})")]
    MissingKey {
        /// The checkpoint file.
        path: PathBuf,
        /// The checkpoint key that is absent.
        key: String,
        /// The shape the model expects.
        expected: Vec<usize>,
    },
    /// A checkpoint holds tensors the model has no place for.
    #[error("checkpoint {path}: unexpected keys {keys:?}")]
    UnexpectedKeys {
        /// The checkpoint file.
        path: PathBuf,
        /// The keys that were not used.
        keys: Vec<String>,
    },
    /// A checkpoint tensor has the wrong shape.
    #[error(
        "checkpoint {path}: key '{key}' has shape {found:?} but the model expects {expected:?}"
    )]
    ShapeMismatch {
        /// The checkpoint file.
        path: PathBuf,
        /// The checkpoint key.
        key: String,
        /// The shape the model expects.
        expected: Vec<usize>,
        /// The shape found in the checkpoint.
        found: Vec<usize>,
    },
    /// Tensors passed to a function do not have compatible shapes.
    #[error("shape error: {0}")]
    Shape(String),
    /// A tokenizer failure.
    #[error(transparent)]
    Tokenizer(#[from] crate::tokenizer::TokenizerError),
    /// An image could not be loaded or transformed.
    #[error(transparent)]
    Preprocess(#[from] crate::preprocess::PreprocessError),
}

/// Shorthand for results in this crate.
pub type Result<T> = std::result::Result<T, ClipError>;

impl ClipError {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, error: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            error,
        }
    }

    /// A configuration error from `origin`.
    pub fn config(origin: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Config {
            origin: origin.into(),
            message: message.into(),
        }
    }

    /// A checkpoint parse error in `path`.
    pub fn checkpoint(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Self::Checkpoint {
            path: path.into(),
            message: message.into(),
        }
    }
}

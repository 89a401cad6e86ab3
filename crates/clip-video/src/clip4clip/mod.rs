//! CLIP4Clip (Luo et al., 2022): video-text retrieval from per-frame CLIP embeddings, with the
//! paper's four similarity calculators, its symmetric InfoNCE objective and the dual-softmax
//! re-scoring used at inference by its follow-ups.

pub mod config;
pub mod cross;
pub mod dual_softmax;
pub mod model;
pub mod objective;
pub mod official;
pub mod seq_lstm;
pub mod temporal;

pub use config::{Clip4ClipConfig, SimilarityHeader};
pub use cross::{CrossEncoder, CrossEncoderConfig};
pub use dual_softmax::dual_softmax;
pub use model::Clip4Clip;
pub use objective::{Clip4ClipObjective, VideoTextBatch};
pub use seq_lstm::{SeqLstm, SeqLstmConfig};
pub use temporal::{TemporalTransformer, TemporalTransformerConfig};

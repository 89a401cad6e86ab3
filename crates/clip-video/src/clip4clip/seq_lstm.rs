//! CLIP4Clip's `seqLSTM` similarity calculator: one LSTM layer over the frame embeddings with a
//! residual connection.

use burn::config::Config;
use burn::module::{Module, Param};
use burn::nn::{Initializer, Lstm, LstmConfig};
use burn::tensor::{Device, Tensor};
use clip_core::text::TextTransformer;

use crate::clip4clip::temporal::{INIT_STD, copy_rows};

/// Configuration of a [`SeqLstm`].
#[derive(Config, Debug)]
pub struct SeqLstmConfig {
    /// Width of the frame embeddings (input and hidden size).
    pub width: usize,
    /// Rows of the (unused) frame position embeddings the official layout carries.
    pub positions: usize,
}

impl SeqLstmConfig {
    /// Builds the module: PyTorch's LSTM initialization (uniform in `±1/√width`), position
    /// embeddings from CLIP's text tower when it is as wide (the official initialization),
    /// else `N(0, 0.02)`.
    pub fn init(&self, text: &TextTransformer, device: &Device) -> SeqLstm {
        let bound = 1.0 / (self.width as f64).sqrt();
        let lstm = LstmConfig::new(self.width, self.width, true)
            .with_initializer(Initializer::Uniform { min: -bound, max: bound })
            .init(device);
        let [context, text_width] = text.positional_embedding.dims();
        let frame_position_embeddings = if text_width == self.width && context >= self.positions {
            copy_rows(&text.positional_embedding, self.positions)
        } else {
            Initializer::Normal { mean: 0.0, std: INIT_STD }.init([self.positions, self.width], device)
        };
        SeqLstm { frame_position_embeddings, lstm }
    }
}

/// `x + LSTM(x)` over frame embeddings `x` `[batch, T, width]` (official keys `lstm_visual.*`,
/// gates in PyTorch's order i, f, g, o).
///
/// The official code runs the LSTM on packed sequences of each video's real frames; an LSTM is
/// causal, so its output at a real frame does not depend on the padding after it, and the
/// padded positions are masked out of the mean that follows: running it over all frames gives
/// the same video embedding.
#[derive(Module, Debug)]
pub struct SeqLstm {
    /// `[positions, width]`: created and saved by the official code for `seqLSTM` but not used by
    /// its forward pass; kept so official checkpoints load and save back unchanged.
    pub frame_position_embeddings: Param<Tensor<2>>,
    /// One unidirectional, batch-first LSTM layer.
    pub lstm: Lstm,
}

impl SeqLstm {
    /// `[batch, T, width]` in and out.
    pub fn forward(&self, frames: Tensor<3>) -> Tensor<3> {
        frames.clone() + self.lstm.forward(frames, None).0
    }
}

//! The training interface every method implements: a batch in, a loss and named metrics out.
//! The trainer (`clip-train`) drives any [`Objective`] without knowing what model it trains.

use burn::module::Module;
use burn::tensor::Tensor;

/// What one forward pass of an objective produces.
#[derive(Debug, Clone)]
pub struct StepOutput {
    /// The scalar loss to minimize, `[1]`.
    pub loss: Tensor<1>,
    /// Extra scalars to log (accuracy, logit scale, ...), by name.
    pub metrics: Vec<(&'static str, f64)>,
}

/// A training objective over a model and a batch type.
pub trait Objective {
    /// The module the trainer optimizes.
    type Model: Module;
    /// One batch, already on the training device.
    type Batch;

    /// The loss (and metrics) of `batch` under `model`; an error when the batch does not fit
    /// the model.
    fn forward(&self, model: &Self::Model, batch: Self::Batch) -> crate::Result<StepOutput>;

    /// Called after every optimizer update (CLIP clamps its logit scale here).
    fn after_update(&self, model: Self::Model) -> Self::Model {
        model
    }
}

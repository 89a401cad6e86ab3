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

    /// The objective as a loss over per-sample features, when it is one (contrastive losses,
    /// whose negatives are the other samples of the batch). The trainer's `train.accum_freq`
    /// (open_clip's feature-caching gradient accumulation) needs it; `None` (the default)
    /// refuses it.
    fn feature_loss(&self) -> Option<&dyn FeatureLoss<Self::Model, Self::Batch>> {
        None
    }
}

/// An objective whose loss is a function of per-sample features (`[batch, dim]` each, one
/// tensor per kind: image and text embeddings for CLIP) of a whole batch, plus parameters the
/// loss uses directly (CLIP's logit scale). With it, a large batch can be processed as
/// micro-batches whose features are computed without gradient, then recomputed one
/// micro-batch at a time with gradient and spliced among the cached ones (open_clip's
/// `accum_freq`), so that the loss and its negatives span the whole batch.
pub trait FeatureLoss<M, B> {
    /// The features of `batch` under `model`, in batch order along dimension 0.
    fn features(&self, model: &M, batch: &B) -> crate::Result<Vec<Tensor<2>>>;

    /// The loss of the features of a whole batch (the micro-batches' features concatenated
    /// along dimension 0). Parameters the loss uses directly, not through the features, take
    /// part in the gradient only when `direct` is true: the trainer sets it for one of the
    /// micro-batches, so that each parameter's gradient is counted once.
    fn loss(&self, model: &M, features: Vec<Tensor<2>>, direct: bool) -> crate::Result<StepOutput>;
}

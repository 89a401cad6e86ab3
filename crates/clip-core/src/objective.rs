//! The training interface every method implements: a batch in, a loss and named metrics out.
//! The trainer (`clip-train`) drives any [`Objective`] without knowing what model it trains.

use burn::module::Module;
use burn::tensor::{Device, FloatDType, Tensor};

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

    /// `batch` with the inputs the model reads in `dtype`, for mixed precision: the trainer
    /// runs a copy of the model in `dtype` (bf16, f16) while its master parameters stay f32,
    /// and the objective computes its loss in the device's default float type (f32) from the
    /// model's outputs ([`crate::loss::in_default_float`]). `None` (the default): the
    /// objective does not support it, and the trainer refuses mixed precision for it.
    fn cast_inputs(&self, batch: Self::Batch, dtype: FloatDType) -> Option<Self::Batch> {
        let _ = (batch, dtype);
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

    /// `batch` cut into one consecutive shard per device, shard `i` moved to `devices[i]`, for a
    /// data-parallel step; shards differ in size by one sample at most (the first ones are the
    /// larger), and a batch with fewer samples than devices is an error. Shard `i`'s features
    /// are rows `offset_i..offset_i + len_i` of the whole batch's, in order.
    fn shard(&self, batch: &B, devices: &[Device]) -> crate::Result<Vec<B>>;

    /// open_clip's `local_loss`: the loss of one rank's rows only, its `local` features against
    /// the `gathered` features of every rank (concatenated in rank order, the local ones at
    /// row `offset`), computed on the local features' device with `model`'s parameters there.
    /// The losses of all ranks weighted by their share of the global batch must sum to
    /// [`FeatureLoss::loss`] of the gathered features, and so must their gradients.
    fn local_loss(&self, model: &M, local: Vec<Tensor<2>>, gathered: Vec<Tensor<2>>, offset: usize) -> crate::Result<StepOutput>;
}

//! Data parallelism over the devices of one machine (`run.devices`), with the contrastive loss
//! over the global batch.
//!
//! burn 0.22.1's own multi-device machinery is burn-train's `ExecutionStrategy` (its `Learner`
//! runs a `TrainStep` per device on a forked model, moves every device's gradients to the main
//! device with `GradientsParams::to_device` and sums them with a `GradientsAccumulator`, or
//! all-reduces them on CUDA in its DDP strategy). Every device's loss there is its own shard's
//! loss, which a contrastive loss cannot be: its negatives are the whole batch. So this step
//! uses the same pieces — `Module::fork` for the replicas, `to_device` and
//! `GradientsAccumulator` for the gradients — around a loss over gathered features:
//!
//! 1. the batch is cut into one shard per device (`FeatureLoss::shard`); device `r` computes its
//!    shard's features on its replica (the master model itself on the first device);
//! 2. the features are gathered with gradient: moved to one device and concatenated
//!    (`clip_core::loss::all_gather`); burn's autodiff records `to_device` and sends the
//!    gradient back to the source device, so this is open_clip's `gather_with_grad`;
//! 3. the loss: the global loss over the gathered features on the first device, or with
//!    `train.local_loss` each device's loss of its own rows against the features gathered to
//!    it (open_clip's `local_loss`), weighted by its share of the batch and summed on the
//!    first device: the same value and gradient as the global loss;
//! 4. one backward pass reaches every replica's parameters; each replica's gradients are moved
//!    to the first device and summed (the replicas' parts of one gradient, so a sum, where
//!    DDP averages the copies of a gradient it computed on every device).
//!
//! The result equals one device on the global batch, up to float rounding (the tests check
//! InfoNCE and SigLIP, with and without `local_loss`, to 1e-5 relative). One thread drives all
//! devices; GPU backends queue their kernels asynchronously, so the devices overlap.

use anyhow::Context;
use burn::module::Module;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::{Device, Tensor};
use clip_core::loss::all_gather;
use clip_core::{Objective, StepOutput};

use crate::precision::Precision;
use crate::trainer::scaled;

/// The loss, metrics and gradients (on the first device, for `model`'s parameters) of
/// `batch` split across `devices` (autodiff devices, the first holding `model`), as above;
/// the passes run under `precision`, the backward pass on the loss times `loss_factor`. A
/// non-finite loss comes back without a backward pass (and without gradients).
pub fn parallel_gradients<O: Objective>(
    objective: &O,
    model: &O::Model,
    batch: O::Batch,
    devices: &[Device],
    precision: Precision,
    local_loss: bool,
    loss_factor: f32,
) -> anyhow::Result<(f64, Vec<(&'static str, f64)>, GradientsParams)> {
    let features = objective
        .feature_loss()
        .context("data parallelism needs an objective whose loss is computed from the batch's features")?;
    let master = devices.first().context("no device to train on")?;
    let shards = features.shard(&batch, devices)?;
    let replicas: Vec<O::Model> = devices
        .iter()
        .enumerate()
        .map(|(rank, device)| if rank == 0 { model.clone() } else { model.clone().fork(device) })
        .collect();
    let computes: Vec<_> = replicas.iter().map(|replica| precision.compute(replica)).collect();
    let local = shards
        .iter()
        .zip(&computes)
        .map(|(shard, compute)| features.features(compute, shard))
        .collect::<clip_core::Result<Vec<Vec<Tensor<2>>>>>()?;
    let kinds = local[0].len();
    anyhow::ensure!(local.iter().all(|f| f.len() == kinds), "the devices gave different numbers of feature tensors");
    // Every kind of feature of every device, gathered in device order onto `device`.
    let gather = |device: &Device| -> Vec<Tensor<2>> {
        (0..kinds).map(|kind| all_gather(local.iter().map(|f| f[kind].clone()).collect(), device)).collect()
    };
    let output = if local_loss {
        let rows: Vec<usize> = local.iter().map(|f| f[0].dims()[0]).collect();
        let total: usize = rows.iter().sum();
        let (mut offset, mut sum, mut metrics) = (0, None, Vec::new());
        for (rank, device) in devices.iter().enumerate() {
            let output = features.local_loss(&computes[rank], local[rank].clone(), gather(device), offset)?;
            let weighted = output.loss.mul_scalar(rows[rank] as f64 / total as f64).to_device(master);
            sum = Some(match sum {
                None => weighted,
                Some(sum) => sum + weighted,
            });
            if rank == 0 {
                metrics = output.metrics;
            }
            offset += rows[rank];
        }
        StepOutput { loss: sum.context("no device to train on")?, metrics }
    } else {
        features.loss(&computes[0], gather(master), true)?
    };
    let loss_value = f64::from(output.loss.clone().into_scalar::<f32>());
    if !loss_value.is_finite() {
        return Ok((loss_value, output.metrics, GradientsParams::new()));
    }
    drop(computes);
    let mut grads = scaled(output.loss, loss_factor).backward();
    let mut accumulator = GradientsAccumulator::<O::Model>::new();
    for (rank, replica) in replicas.iter().enumerate() {
        let part = GradientsParams::from_module(&mut grads, replica);
        accumulator.accumulate(model, if rank == 0 { part } else { part.to_device(master, model) });
    }
    Ok((loss_value, output.metrics, accumulator.grads()))
}

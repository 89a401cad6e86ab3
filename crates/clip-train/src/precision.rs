//! Mixed precision (`run.precision = "bf16"` or `"f16"`): the parameters and the AdamW moments
//! stay in f32 (the master copy); every step runs the forward and backward passes on a copy of
//! the model cast to the half type, a cast that burn's autodiff records, so the gradients come
//! back to the f32 parameters in f32; the optimizer then steps in f32. The objective casts its
//! inputs (`Objective::cast_inputs`) and computes its loss in f32. f16, whose gradients
//! underflow, adds dynamic loss scaling (PyTorch's `GradScaler`). burn 0.22 has no autocast or
//! per-operation dtype policy: a device has one default float type for the tensors created on
//! it, which is what the pure modes (`"pure-bf16"`, `"pure-f16"`) configure.

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::{Device, FloatDType, Tensor};
use serde::{Deserialize, Serialize};

/// How a run computes, from `run.precision`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    /// Every tensor in the device's default float type: f32 (`"f32"`), or bf16/f16 throughout
    /// when the device was configured with it (`"pure-bf16"`, `"pure-f16"`).
    Uniform,
    /// f32 master parameters, optimizer state and loss; forward and backward passes in this
    /// type (`"bf16"`, `"f16"`).
    Mixed(FloatDType),
}

impl Precision {
    /// The precision `run.precision = name` asks for, and the default float type its devices
    /// must be configured with (`None`: the backend's f32).
    pub fn parse(name: &str) -> Result<(Self, Option<FloatDType>), String> {
        match name {
            "f32" => Ok((Self::Uniform, None)),
            "bf16" => Ok((Self::Mixed(FloatDType::BF16), None)),
            "f16" => Ok((Self::Mixed(FloatDType::F16), None)),
            "pure-bf16" => Ok((Self::Uniform, Some(FloatDType::BF16))),
            "pure-f16" => Ok((Self::Uniform, Some(FloatDType::F16))),
            other => Err(format!(
                "run.precision = {other:?}: use \"f32\", \"bf16\" or \"f16\" (mixed precision), \"pure-bf16\" or \"pure-f16\""
            )),
        }
    }

    /// The type the half-precision passes compute in, when mixed.
    pub fn compute_dtype(&self) -> Option<FloatDType> {
        match self {
            Self::Uniform => None,
            Self::Mixed(dtype) => Some(*dtype),
        }
    }

    /// Whether the run scales its loss against gradient underflow (mixed f16).
    pub fn scales_loss(&self) -> bool {
        *self == Self::Mixed(FloatDType::F16)
    }
}

/// The model a training pass computes with: the master itself, or its half-precision copy.
pub enum Compute<'a, M> {
    /// The master parameters (f32, or a pure half type).
    Master(&'a M),
    /// A copy cast to the compute type, its parameters recorded as casts of the master's.
    Cast(M),
}

impl<M> std::ops::Deref for Compute<'_, M> {
    type Target = M;

    fn deref(&self) -> &M {
        match self {
            Self::Master(model) => model,
            Self::Cast(model) => model,
        }
    }
}

impl Precision {
    /// The model to compute with under this precision: `model` itself, or (mixed) a copy of it
    /// whose float parameters are cast to the compute type. Autodiff records the casts, so the
    /// gradients of a pass through the copy land on `model`'s parameters, in their own type.
    /// Make a new copy for every backward pass: a pass consumes the graph of its casts.
    pub fn compute<'a, M: Module>(&self, model: &'a M) -> Compute<'a, M> {
        match self.compute_dtype() {
            None => Compute::Master(model),
            Some(dtype) => Compute::Cast(model.clone().map(&mut CastParams { dtype })),
        }
    }
}

/// Casts every float parameter to `dtype`, keeping its id (and so its gradient's place).
struct CastParams {
    dtype: FloatDType,
}

impl ModuleMapper for CastParams {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let dtype = self.dtype;
        param.map(|tensor| tensor.cast(dtype))
    }
}

/// Checks that `device` computes in `dtype` (storage, conversion and arithmetic).
pub fn check_support(device: &Device, dtype: FloatDType, precision: &str) -> anyhow::Result<()> {
    anyhow::ensure!(device.supports_dtype(dtype), "run.precision = {precision:?} is not supported by the {device:?} backend");
    Ok(())
}

/// Dynamic loss scaling for mixed f16, as PyTorch's `GradScaler` with its defaults: the loss is
/// multiplied by the scale before the backward pass and the gradients divided by it after; a
/// step whose gradients overflow is skipped and halves the scale, 2000 steps without overflow
/// double it. Saved with every checkpoint, so a resumed run scales as the uninterrupted one.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LossScale {
    /// The current factor.
    pub scale: f32,
    /// Steps since the last overflow or growth.
    pub good_steps: usize,
}

impl Default for LossScale {
    fn default() -> Self {
        Self { scale: 65536.0, good_steps: 0 }
    }
}

impl LossScale {
    /// Steps without overflow after which the scale doubles.
    pub const GROWTH_INTERVAL: usize = 2000;

    /// Records a step's outcome: gradients finite (`true`, the step was taken) or not.
    pub fn update(&mut self, finite: bool) {
        if finite {
            self.good_steps += 1;
            if self.good_steps == Self::GROWTH_INTERVAL {
                self.scale *= 2.0;
                self.good_steps = 0;
            }
        } else {
            self.scale *= 0.5;
            self.good_steps = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_loss_scale_halves_on_overflow_and_doubles_after_a_run_of_good_steps() {
        let mut scale = LossScale::default();
        scale.update(false);
        assert_eq!(scale.scale, 32768.0);
        for _ in 0..LossScale::GROWTH_INTERVAL - 1 {
            scale.update(true);
        }
        assert_eq!(scale.scale, 32768.0);
        scale.update(true);
        assert_eq!((scale.scale, scale.good_steps), (65536.0, 0));
    }

    #[test]
    fn precisions_parse_to_mixed_or_uniform_with_the_device_type() {
        assert_eq!(Precision::parse("bf16").unwrap(), (Precision::Mixed(FloatDType::BF16), None));
        assert_eq!(Precision::parse("pure-f16").unwrap(), (Precision::Uniform, Some(FloatDType::F16)));
        assert!(Precision::parse("fp8").unwrap_err().contains("run.precision"));
    }
}

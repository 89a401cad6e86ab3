//! LSeg's training objective: per-pixel cross-entropy over the dataset's label set.

use burn::tensor::{Int, Tensor};
use clip_core::{Objective, StepOutput};

use crate::lseg::loss::pixel_cross_entropy;
use crate::lseg::model::Lseg;

/// Images, their label masks and the dataset's tokenized label names.
#[derive(Debug, Clone)]
pub struct LsegBatch {
    /// `[batch, 3, H, W]` preprocessed images.
    pub(crate) images: Tensor<4>,
    /// `[batch, H, W]` label index per pixel, or the ignore index.
    pub(crate) masks: Tensor<3, Int>,
    /// `[labels, context]` tokenized label names (index `i` is label `i` of the masks).
    pub(crate) label_tokens: Tensor<2, Int>,
}

impl LsegBatch {
    /// Images `[batch, 3, H, W]`, their masks `[batch, H, W]` and the tokenized label names
    /// `[labels, context]`; an error when the images and masks disagree in count or size.
    pub fn new(images: Tensor<4>, masks: Tensor<3, Int>, label_tokens: Tensor<2, Int>) -> clip_core::Result<Self> {
        let [count, _, height, width] = images.dims();
        if masks.dims() != [count, height, width] {
            return Err(clip_core::ClipError::Shape(format!(
                "LsegBatch: masks {:?} for images {:?}",
                masks.dims(),
                images.dims()
            )));
        }
        Ok(Self { images, masks, label_tokens })
    }
}

/// [`pixel_cross_entropy`] of [`Lseg::logits`] against the masks; logs the pixel accuracy
/// over non-ignored pixels (0 when there are none) and the logit scale. Clamps the log logit
/// scale to `[0, ln 100]` after each update.
#[derive(Debug, Clone)]
pub struct LsegObjective {
    /// Mask value of pixels that carry no label (255 in ADE20K and Pascal VOC masks).
    pub ignore_index: i64,
}

impl Objective for LsegObjective {
    type Model = Lseg;
    type Batch = LsegBatch;

    fn forward(&self, model: &Lseg, batch: LsegBatch) -> clip_core::Result<StepOutput> {
        let labels = model.label_embeddings(batch.label_tokens);
        let logits = model.logits(batch.images, labels);
        let accuracy = pixel_accuracy(
            logits.clone().detach(),
            batch.masks.clone(),
            self.ignore_index,
        );
        let loss = pixel_cross_entropy(logits, batch.masks, self.ignore_index)?;
        let scale = model.logit_scale().into_scalar::<f32>() as f64;
        Ok(StepOutput {
            loss,
            metrics: vec![("pixel_accuracy", accuracy), ("logit_scale", scale)],
        })
    }

    fn after_update(&self, model: Lseg) -> Lseg {
        model.clamp_logit_scale()
    }
}

/// Share of the pixels not marked `ignore_index` in `targets` `[batch, H, W]` whose argmax
/// over the labels of `logits` `[batch, labels, H, W]` is their target; 0 when none is kept.
fn pixel_accuracy(logits: Tensor<4>, targets: Tensor<3, Int>, ignore_index: i64) -> f64 {
    let keep = targets.clone().not_equal_elem(ignore_index);
    let predicted: Tensor<3, Int> = logits.argmax(1).squeeze_dim(1);
    let correct = predicted
        .equal(targets)
        .bool_and(keep.clone())
        .int()
        .sum()
        .into_scalar::<i64>();
    let kept = keep.int().sum().into_scalar::<i64>();
    if kept > 0 {
        correct as f64 / kept as f64
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lseg::config::tests::tiny_config;
    use burn::module::{Module, ModuleVisitor, Param, ParamGroup};
    use burn::optim::{AdamWConfig, GradientsParams};
    use burn::tensor::{Device, Distribution, TensorData};

    #[test]
    fn pixel_accuracy_matches_hand_count() {
        let device = Device::flex();
        // Argmax per pixel: 1, 0, 1, 0; targets 1, 1, ignored, 0 -> 2 of 3 kept pixels right.
        let logits = Tensor::<4>::from_data(
            TensorData::new(
                vec![0.0f32, 2.0, 0.0, 1.0, 1.0, 0.0, 1.0, 0.0],
                [1, 2, 1, 4],
            ),
            &device,
        );
        let targets =
            Tensor::<3, Int>::from_data(TensorData::new(vec![1i64, 1, 255, 0], [1, 1, 4]), &device);
        assert!((pixel_accuracy(logits.clone(), targets, 255) - 2.0 / 3.0).abs() < 1e-12);
        let none =
            Tensor::<3, Int>::from_data(TensorData::new(vec![255i64; 4], [1, 1, 4]), &device);
        assert_eq!(pixel_accuracy(logits, none, 255), 0.0);
    }

    /// Every float parameter under `prefix`, flattened in visiting order.
    fn params_under(model: &Lseg, prefix: &str) -> Vec<f32> {
        struct Collect<'a> {
            prefix: &'a str,
            path: Vec<String>,
            values: Vec<f32>,
        }
        impl ModuleVisitor for Collect<'_> {
            fn enter_module(&mut self, name: &str, _: &str) {
                self.path.push(name.to_string());
            }
            fn exit_module(&mut self, _: &str, _: &str) {
                self.path.pop();
            }
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
                if self.path.first().map(String::as_str) == Some(self.prefix) {
                    self.values.extend(param.val().into_data().iter::<f32>());
                }
            }
        }
        let mut visitor = Collect {
            prefix,
            path: Vec::new(),
            values: Vec::new(),
        };
        model.visit(&mut visitor);
        visitor.values
    }

    #[test]
    fn adamw_lowers_the_loss_with_the_text_tower_frozen() {
        let device = Device::flex().autodiff();
        device.seed(7);
        let model = tiny_config().init(&device).unwrap();
        let model = model.freeze_group(ParamGroup::from_regex(r"^text(\.|$)").unwrap());
        let text_before = params_under(&model, "text");
        assert!(!text_before.is_empty());
        let images = Tensor::<4>::random([2, 3, 32, 32], Distribution::Normal(0.0, 1.0), &device);
        // Left half label 0, right half label 1, a 4-pixel ignored border at the top.
        let masks: Vec<i64> = (0..2 * 32 * 32)
            .map(|i| {
                let (row, col) = ((i / 32) % 32, i % 32);
                if row < 4 {
                    255
                } else if col < 16 {
                    0
                } else {
                    1
                }
            })
            .collect();
        let batch = LsegBatch {
            images,
            masks: Tensor::from_data(TensorData::new(masks, [2, 32, 32]), &device),
            label_tokens: Tensor::from_data(
                TensorData::new(vec![1i64, 5, 63, 0, 1, 9, 10, 63], [2, 4]),
                &device,
            ),
        };
        let objective = LsegObjective { ignore_index: 255 };
        let mut optimizer = AdamWConfig::new().init();
        let mut model = model;
        let mut losses = Vec::new();
        for _ in 0..8 {
            let output = objective.forward(&model, batch.clone()).unwrap();
            let accuracy = output
                .metrics
                .iter()
                .find(|(name, _)| *name == "pixel_accuracy")
                .unwrap()
                .1;
            assert!((0.0..=1.0).contains(&accuracy));
            losses.push(output.loss.clone().into_scalar::<f32>());
            let grads = GradientsParams::from_grads(output.loss.backward(), &model);
            model = objective.after_update(optimizer.step(1e-3, model, grads));
        }
        eprintln!("losses: {losses:?}");
        assert!(losses.iter().all(|l| l.is_finite()));
        assert!(losses[7] < 0.5 * losses[0], "loss did not fall: {losses:?}");
        assert_eq!(
            params_under(&model, "text"),
            text_before,
            "the frozen text tower changed"
        );
        // A label name never seen in training is scored next to the trained ones.
        let unseen = Tensor::from_data(
            TensorData::new(vec![1i64, 5, 63, 0, 1, 9, 10, 63, 1, 20, 21, 63], [3, 4]),
            &device,
        );
        let logits = model.logits(batch.images, model.label_embeddings(unseen));
        assert_eq!(logits.dims(), [2, 3, 32, 32]);
        assert!(logits.into_data().iter::<f32>().all(f32::is_finite));
    }
}

//! The learning-rate schedule: linear warm-up, then cosine decay to zero or a constant rate
//! (open_clip's `cosine_lr` and `const_lr`), as a pure function of the step so that resuming
//! needs nothing but the step; parameter groups (`train.lr_groups`) follow it scaled to their
//! own peak rate; layer-wise decay (`train.layer_decay`) gives each layer group of the CLIP
//! towers a rate decayed geometrically from the head down.

use burn::module::{Module, ParamGroup};
use burn::optim::lr_scheduler::module_lr_scheduler::{ModuleLearningRate, ModuleLrScheduler};

use crate::config::TrainSection;
use crate::params::{prefix_group, tower_groups};

/// Learning rate at `step` (0-based) of `total` steps.
pub fn learning_rate(base: f64, step: usize, warmup: usize, total: usize, cosine: bool) -> f64 {
    if step < warmup {
        return base * (step + 1) as f64 / warmup as f64;
    }
    if !cosine {
        return base;
    }
    let decay_steps = total.saturating_sub(warmup).max(1) as f64;
    let progress = (step - warmup) as f64 / decay_steps;
    0.5 * (1.0 + (std::f64::consts::PI * progress).cos()) * base
}

/// Each parameter's learning rate: `train.lr`'s schedule, and for the parameters of each
/// `train.lr_groups` entry the same schedule scaled to that entry's peak.
pub struct LrPolicy {
    base: f64,
    groups: Vec<(ParamGroup, f64)>,
}

impl LrPolicy {
    /// The policy of `train` for `model`; a group prefix that names no parameter is an error.
    pub fn new<M: Module>(model: &M, train: &TrainSection) -> anyhow::Result<Self> {
        let mut groups = Vec::new();
        if train.layer_decay < 1.0 {
            // Layer-wise decay: group i of a tower's G groups (stem first, head last) trains at
            // lr * layer_decay^(G - 1 - i).
            let towers: Vec<Vec<Vec<String>>> = ["visual", "text"].iter().map(|t| tower_groups(model, t)).filter(|g| !g.is_empty()).collect();
            anyhow::ensure!(!towers.is_empty(), "train.layer_decay: the model has no CLIP tower under `visual` or `text`");
            for tower in towers {
                let count = tower.len();
                for (i, prefixes) in tower.into_iter().enumerate() {
                    let peak = train.lr * train.layer_decay.powi((count - 1 - i) as i32);
                    groups.push((prefix_group(model, &prefixes, "train.layer_decay")?, peak));
                }
            }
        }
        for (i, g) in train.lr_groups.iter().enumerate() {
            groups.push((prefix_group(model, &g.prefixes, &format!("train.lr_groups[{i}].prefixes"))?, g.lr));
        }
        Ok(Self { base: train.lr, groups })
    }

    /// The rates when the base schedule is at `lr`.
    pub fn at(&self, lr: f64) -> ModuleLearningRate {
        let scale = lr / self.base;
        self.groups
            .iter()
            .fold(ModuleLrScheduler::new(lr), |policy, (group, peak)| policy.with_group(group.clone(), peak * scale))
            .step()
    }
}

#[cfg(test)]
mod tests {
    use burn::module::Param;
    use burn::optim::{GradientsParams, SgdConfig};
    use burn::tensor::{Device, Tensor};

    use super::*;
    use crate::config::LrGroup;
    use crate::params::tests::{TwoLayers, two_layers};

    #[test]
    fn warms_up_linearly_then_follows_a_half_cosine() {
        assert_eq!(learning_rate(1.0, 0, 4, 104, true), 0.25);
        assert_eq!(learning_rate(1.0, 3, 4, 104, true), 1.0);
        assert_eq!(learning_rate(1.0, 4, 4, 104, true), 1.0);
        assert!((learning_rate(1.0, 54, 4, 104, true) - 0.5).abs() < 1e-12);
        assert!(learning_rate(1.0, 103, 4, 104, true) < 1e-3);
        assert_eq!(learning_rate(2.0, 50, 4, 104, false), 2.0);
    }

    /// How far one plain SGD step with unit gradients moves `param`: its learning rate.
    fn moved(before: &Param<Tensor<2>>, after: &Param<Tensor<2>>) -> f32 {
        (before.val() - after.val()).abs().max().into_scalar::<f32>()
    }

    #[test]
    fn groups_train_at_their_own_scaled_rate() {
        let device = Device::flex().autodiff();
        let model = two_layers(&device);
        let train = TrainSection {
            lr: 0.1,
            lr_groups: vec![LrGroup {
                prefixes: vec!["backbone".into()],
                lr: 0.001,
            }],
            ..TrainSection::default()
        };
        let policy = LrPolicy::new(&model, &train).unwrap();
        let loss = model.backbone.weight.val().sum() + model.head.weight.val().sum();
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let mut optimizer = SgdConfig::new().init();
        // Halfway down the schedule, both rates are halved.
        let stepped: TwoLayers = optimizer.step(policy.at(0.05), model.clone(), grads);
        assert!((moved(&model.head.weight, &stepped.head.weight) - 0.05).abs() < 1e-6);
        assert!((moved(&model.backbone.weight, &stepped.backbone.weight) - 0.0005).abs() < 1e-7);
    }

    #[test]
    fn a_group_naming_no_parameter_is_an_error() {
        let model = two_layers(&Device::flex());
        let train = TrainSection {
            lr_groups: vec![LrGroup {
                prefixes: vec!["clip".into()],
                lr: 1e-7,
            }],
            ..TrainSection::default()
        };
        let error = LrPolicy::new(&model, &train).err().unwrap().to_string();
        assert!(error.starts_with("train.lr_groups[0].prefixes: \"clip\" names no parameter"), "{error}");
    }

    #[test]
    fn layer_decay_scales_each_tower_group_from_the_head_down() {
        let device = Device::flex().autodiff();
        let json = r#"{"embed_dim": 8, "vision_cfg": {"image_size": 8, "layers": 2, "width": 16, "patch_size": 4,
            "head_width": 8}, "text_cfg": {"context_length": 4, "width": 8, "heads": 1, "layers": 1}}"#;
        let model = clip_core::ClipConfig::from_open_clip_json(json, "tiny").unwrap().init(&device);
        let train = TrainSection { lr: 0.1, layer_decay: 0.5, ..TrainSection::default() };
        let policy = LrPolicy::new(&model, &train).unwrap();
        let clip_core::ImageTower::Vit(v) = &model.visual else { panic!("a ViT") };
        let loss = v.proj.val().sum()
            + v.transformer.resblocks[1].mlp.c_fc.weight.val().sum()
            + v.transformer.resblocks[0].mlp.c_fc.weight.val().sum()
            + v.positional_embedding.val().sum()
            + model.text.text_projection.val().sum()
            + model.text.positional_embedding.val().sum();
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let stepped: clip_core::Clip = SgdConfig::new().init().step(policy.at(0.1), model.clone(), grads);
        let clip_core::ImageTower::Vit(after) = &stepped.visual else { panic!("a ViT") };
        // Groups of the ViT: stem, block 0, block 1 (+ ln_post), proj: rates 0.1 * 0.5^(3, 2, 1, 0).
        let rates = [
            moved(&v.proj, &after.proj),
            moved(&v.transformer.resblocks[1].mlp.c_fc.weight, &after.transformer.resblocks[1].mlp.c_fc.weight),
            moved(&v.transformer.resblocks[0].mlp.c_fc.weight, &after.transformer.resblocks[0].mlp.c_fc.weight),
            moved(&v.positional_embedding, &after.positional_embedding),
        ];
        for (got, want) in rates.iter().zip([0.1, 0.05, 0.025, 0.0125]) {
            assert!((got - want).abs() < 1e-6, "{rates:?}");
        }
        // The text tower: stem, block 0 (+ ln_final), projection.
        assert!((moved(&model.text.text_projection, &stepped.text.text_projection) - 0.1).abs() < 1e-6);
        assert!((moved(&model.text.positional_embedding, &stepped.text.positional_embedding) - 0.025).abs() < 1e-6);
        let error = LrPolicy::new(&two_layers(&device), &train).err().unwrap().to_string();
        assert!(error.contains("train.layer_decay"), "{error}");
    }
}

//! Parameters named by path prefixes, as `train.freeze` and `train.lr_groups` take them:
//! `visual` is every parameter of the image tower, `visual.transformer.resblocks.0` one block.
//! Paths leave out enum variants (the image tower's `Vit`/`ResNet`), as checkpoint layouts do.

use burn::module::{Flag, Module, ModuleVisitor, Param, ParamGroup, ParamId};
use burn::tensor::Tensor;

/// The parameters under any of `prefixes`. Each prefix must name at least one parameter of
/// `model`, so that a typo is an error rather than a silent no-op; `key` (the config key)
/// heads the error.
pub fn prefix_group<M: Module>(model: &M, prefixes: &[String], key: &str) -> anyhow::Result<ParamGroup> {
    let Paths { parameters, flags, .. } = Paths::of(model);
    for prefix in prefixes {
        if !parameters.iter().any(|(path, _)| under(path, prefix)) {
            let mut top: Vec<&str> = parameters.iter().map(|(p, _)| p.split('.').next().unwrap_or(p)).collect();
            top.dedup();
            anyhow::bail!("{key}: {prefix:?} names no parameter of the model (its top-level names: {})", top.join(", "));
        }
    }
    // The group holds the parameters and the training flags (BatchNorm's, dropout's) under the
    // prefixes, so that freezing a tower also stops its BatchNorm statistics.
    let ids = parameters
        .into_iter()
        .chain(flags)
        .filter(|(path, _)| prefixes.iter().any(|prefix| under(path, prefix)))
        .map(|(_, id)| id)
        .collect();
    Ok(ParamGroup::from_ids(ids))
}

/// `model` with the parameters under `prefixes` (`train.freeze`) frozen.
pub fn freeze<M: Module>(model: M, prefixes: &[String]) -> anyhow::Result<M> {
    if prefixes.is_empty() {
        return Ok(model);
    }
    let group = prefix_group(&model, prefixes, "train.freeze")?;
    Ok(model.freeze_group(group))
}

/// The float parameters of at most `max_rank` dimensions: with `max_rank` 1, the gains,
/// biases, 1-D embeddings and scalars (the logit scale) that open_clip trains without weight
/// decay, whatever their names.
pub fn rank_group<M: Module>(model: &M, max_rank: usize) -> ParamGroup {
    struct Ranked {
        max_rank: usize,
        ids: Vec<ParamId>,
    }
    impl ModuleVisitor for Ranked {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if D <= self.max_rank {
                self.ids.push(param.id);
            }
        }
    }
    let mut ranked = Ranked { max_rank, ids: Vec::new() };
    model.visit(&mut ranked);
    ParamGroup::from_ids(ranked.ids)
}

fn under(path: &str, prefix: &str) -> bool {
    path.strip_prefix(prefix).is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
}

/// Paths (enum variants left out) and ids of a model's float parameters and training flags,
/// in module order.
#[derive(Default)]
struct Paths {
    stack: Vec<Option<String>>,
    parameters: Vec<(String, ParamId)>,
    flags: Vec<(String, ParamId)>,
}

impl Paths {
    fn of<M: Module>(model: &M) -> Self {
        let mut paths = Self::default();
        model.visit(&mut paths);
        paths
    }

    fn path(&self) -> String {
        let path: Vec<&str> = self.stack.iter().flatten().map(String::as_str).collect();
        path.join(".")
    }
}

impl ModuleVisitor for Paths {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.stack.push((!container_type.starts_with("Enum:")).then(|| name.to_string()));
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.stack.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.parameters.push((self.path(), param.id));
    }
    fn visit_flag(&mut self, flag: &Param<Flag>) {
        self.flags.push((self.path(), flag.id));
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use burn::nn::{Linear, LinearConfig};
    use burn::tensor::Device;

    use super::*;

    /// Two linear layers, `backbone` and `head`.
    #[derive(Module, Debug)]
    pub(crate) struct TwoLayers {
        pub backbone: Linear,
        pub head: Linear,
    }

    pub(crate) fn two_layers(device: &Device) -> TwoLayers {
        TwoLayers {
            backbone: LinearConfig::new(2, 2).init(device),
            head: LinearConfig::new(2, 1).init(device),
        }
    }

    fn parameter_paths<M: Module>(model: &M) -> Vec<String> {
        Paths::of(model).parameters.into_iter().map(|(path, _)| path).collect()
    }

    #[test]
    fn paths_name_every_parameter() {
        let paths = parameter_paths(&two_layers(&Device::flex()));
        assert_eq!(paths, ["backbone.weight", "backbone.bias", "head.weight", "head.bias"]);
    }

    #[test]
    fn paths_leave_out_the_image_tower_variant() {
        let json = r#"{"embed_dim": 8, "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 4,
            "head_width": 32}, "text_cfg": {"width": 8, "heads": 1, "layers": 1, "context_length": 4}}"#;
        let model = clip_core::ClipConfig::from_open_clip_json(json, "tiny").unwrap().init(&Device::flex());
        let paths = parameter_paths(&model);
        assert!(paths.iter().any(|p| p == "visual.layer1.0.conv1.weight"), "{paths:?}");
        assert!(!paths.iter().any(|p| p.contains("ResNet")), "{paths:?}");
    }

    #[test]
    fn prefixes_match_whole_path_segments_and_typos_are_errors() {
        let model = two_layers(&Device::flex());
        assert!(under("backbone.weight", "backbone") && under("backbone.weight", "backbone.weight"));
        assert!(!under("backbone.weight", "back") && !under("backbone.weight", "backbone.w"));
        let error = prefix_group(&model, &["head".into(), "heads".into()], "train.freeze").unwrap_err().to_string();
        assert!(error.contains("train.freeze: \"heads\" names no parameter") && error.contains("backbone, head"), "{error}");
    }

    #[test]
    fn freeze_stops_only_the_named_parameters() {
        let device = Device::flex().autodiff();
        let model = freeze(two_layers(&device), &["backbone".into()]).unwrap();
        assert!(!model.backbone.weight.is_require_grad() && !model.backbone.bias.as_ref().unwrap().is_require_grad());
        assert!(model.head.weight.is_require_grad());
    }
}

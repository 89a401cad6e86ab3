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

/// open_clip's `lock_image(unlocked_groups)`: the image tower (the parameters under
/// `visual`) frozen but for its last `unlocked` groups. A ViT's groups are the stem (patch
/// embedding, class token, positional embedding, `ln_pre`), each residual block (the last one
/// with `ln_post`) and the projection; a ModifiedResNet's are the stem, `layer1`..`layer4` and
/// the attention pool. BatchNorm statistics of frozen groups stay as they are.
pub fn lock_image<M: Module>(model: M, unlocked: usize) -> anyhow::Result<M> {
    let prefixes = locked_image_prefixes(&model, unlocked)?;
    if prefixes.is_empty() {
        return Ok(model);
    }
    let group = prefix_group(&model, &prefixes, "train.lock_image")?;
    Ok(model.freeze_group(group))
}

/// The parameter path prefixes `lock_image` freezes, in module order.
pub fn locked_image_prefixes<M: Module>(model: &M, unlocked: usize) -> anyhow::Result<Vec<String>> {
    let groups = tower_groups(model, "visual");
    anyhow::ensure!(!groups.is_empty(), "train.lock_image: the model has no image tower under `visual`");
    let locked = groups.len().saturating_sub(unlocked);
    Ok(groups.into_iter().take(locked).flatten().collect())
}

/// The layer groups of the CLIP tower under `tower` (`visual`, `text`), first to last, as
/// parameter path prefixes (open_clip's `lock_image` / `lock_text` grouping): the stem
/// (embeddings, `ln_pre`), each residual block or ResNet stage (the last with the final norm,
/// `ln_post` / `ln_final`), and the head (projection or attention pool). Empty when the model
/// has no parameter under `tower`.
pub fn tower_groups<M: Module>(model: &M, tower: &str) -> Vec<Vec<String>> {
    let Paths { parameters, .. } = Paths::of(model);
    let mut groups: std::collections::BTreeMap<(u8, usize), Vec<String>> = std::collections::BTreeMap::new();
    let mut final_norm = None;
    let start = format!("{tower}.");
    for (path, _) in &parameters {
        let Some(rest) = path.strip_prefix(&start) else { continue };
        let parts: Vec<&str> = rest.split('.').collect();
        let (key, prefix) = match parts.as_slice() {
            ["transformer", "resblocks", n, ..] => ((1, n.parse().unwrap_or(0)), format!("{tower}.transformer.resblocks.{n}")),
            [layer, ..] if layer.len() == 6 && layer.starts_with("layer") => ((1, layer[5..].parse().unwrap_or(0)), format!("{tower}.{layer}")),
            [head @ ("proj" | "attnpool" | "text_projection"), ..] => ((2, 0), format!("{tower}.{head}")),
            [norm @ ("ln_post" | "ln_final"), ..] => {
                final_norm = Some(format!("{tower}.{norm}"));
                continue;
            }
            [first, ..] => ((0, 0), format!("{tower}.{first}")),
            [] => continue,
        };
        let group = groups.entry(key).or_default();
        if !group.contains(&prefix) {
            group.push(prefix);
        }
    }
    if let Some(norm) = final_norm {
        match groups.range_mut((1, 0)..(2, 0)).next_back() {
            Some((_, last)) => last.push(norm),
            None => groups.entry((2, 0)).or_default().push(norm),
        }
    }
    groups.into_values().collect()
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

    #[test]
    fn lock_image_freezes_all_but_the_last_groups_of_the_tower() {
        let device = Device::flex().autodiff();
        let vit = r#"{"embed_dim": 8, "vision_cfg": {"image_size": 8, "layers": 3, "width": 16, "patch_size": 4,
            "head_width": 8}, "text_cfg": {"context_length": 4, "width": 8, "heads": 1, "layers": 1}}"#;
        let model = clip_core::ClipConfig::from_open_clip_json(vit, "tiny").unwrap().init(&device);
        let stem = ["visual.conv1", "visual.class_embedding", "visual.positional_embedding", "visual.ln_pre"];
        let block = |n: usize| format!("visual.transformer.resblocks.{n}");
        let mut all: Vec<String> = stem.iter().map(|s| s.to_string()).collect();
        all.extend([block(0), block(1), block(2), "visual.ln_post".into(), "visual.proj".into()]);
        assert_eq!(locked_image_prefixes(&model, 0).unwrap(), all);
        assert_eq!(locked_image_prefixes(&model, 1).unwrap(), all[..all.len() - 1]);
        assert_eq!(locked_image_prefixes(&model, 2).unwrap(), all[..all.len() - 3], "the last block goes with ln_post");
        assert!(locked_image_prefixes(&model, 9).unwrap().is_empty());

        let locked = lock_image(model, 2).unwrap();
        let clip_core::ImageTower::Vit(visual) = &locked.visual else { panic!("a ViT") };
        assert!(!visual.conv1.weight.is_require_grad() && !visual.class_embedding.is_require_grad());
        assert!(!visual.transformer.resblocks[1].mlp.c_fc.weight.is_require_grad());
        assert!(visual.transformer.resblocks[2].mlp.c_fc.weight.is_require_grad() && visual.proj.is_require_grad());
        assert!(locked.text.token_embedding.weight.is_require_grad() && locked.logit_scale.is_require_grad());

        let resnet = r#"{"embed_dim": 8, "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 4,
            "head_width": 32}, "text_cfg": {"width": 8, "heads": 1, "layers": 1, "context_length": 4}}"#;
        let model = clip_core::ClipConfig::from_open_clip_json(resnet, "tiny").unwrap().init(&device);
        let prefixes = locked_image_prefixes(&model, 2).unwrap();
        assert!(prefixes.contains(&"visual.layer3".to_string()) && prefixes.contains(&"visual.conv1".to_string()), "{prefixes:?}");
        assert!(!prefixes.iter().any(|p| p == "visual.layer4" || p == "visual.attnpool"), "{prefixes:?}");
        assert!(locked_image_prefixes(&two_layers(&device), 1).unwrap_err().to_string().contains("no image tower"));
    }
}

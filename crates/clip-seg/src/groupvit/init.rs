//! GroupViT's initialization as Hugging Face's `GroupViTPreTrainedModel._init_weights` draws it
//! (NVlabs' is the same at the sizes that matter): linear and convolution weights `N(0, 0.02)`
//! with zero biases, except in the attention and MLP blocks of each tower, which take CLIP's
//! depth-scaled standard deviations. Embeddings, group tokens and position embeddings are drawn
//! `N(0, 0.02)` where they are built.

use burn::module::{ModuleMapper, Param};
use burn::tensor::{Distribution, Tensor};

use super::config::GroupVitConfig;

/// Standard deviation of plain linear layers, the patch embedding and the projection heads
/// (`initializer_range`).
const LINEAR_STD: f64 = 0.02;

/// The depth-scaled standard deviations of one tower's attention and MLP blocks.
#[derive(Debug, Clone, Copy)]
struct BlockStds {
    /// Attention query, key and value, and the MLP's second layer: `width^-0.5 (2 layers)^-0.5`.
    in_proj: f64,
    /// Attention output: `width^-0.5`.
    out_proj: f64,
    /// The MLP's first layer: `(2 width)^-0.5`.
    fc: f64,
}

impl BlockStds {
    fn new(width: usize, layers: usize) -> Self {
        let (width, layers) = (width as f64, layers as f64);
        Self {
            in_proj: width.powf(-0.5) * (2.0 * layers).powf(-0.5),
            out_proj: width.powf(-0.5),
            fc: (2.0 * width).powf(-0.5),
        }
    }
}

/// Redraws every linear and convolution weight of a freshly built model and zeroes its biases.
pub(crate) struct OfficialInit {
    vision: BlockStds,
    text: BlockStds,
    /// `(field, type of the struct holding it)` from the model down to the current parameter.
    path: Vec<(String, String)>,
}

impl OfficialInit {
    pub(crate) fn new(config: &GroupVitConfig) -> Self {
        Self {
            vision: BlockStds::new(config.vision.hidden_size, config.vision.depths.iter().sum()),
            text: BlockStds::new(config.text.hidden_size, config.text.num_hidden_layers),
            path: Vec::new(),
        }
    }

    /// The standard deviation of the weight at the current path, which sits in a linear layer
    /// or convolution.
    fn weight_std(&self) -> f64 {
        let tower = match self.path.first().map(|(field, _)| field.as_str()) {
            Some("vision") => self.vision,
            Some("text") => self.text,
            _ => return LINEAR_STD,
        };
        // The layer's own field name and the type of the block that holds it.
        let Some((layer, holder)) = self.path.len().checked_sub(2).map(|i| &self.path[i]) else {
            return LINEAR_STD;
        };
        match (holder.as_str(), layer.as_str()) {
            ("Struct:MultiHeadAttention", "query" | "key" | "value") => tower.in_proj,
            ("Struct:MultiHeadAttention", "out_proj") => tower.out_proj,
            ("Struct:Mlp", "c_fc") => tower.fc,
            ("Struct:Mlp", "c_proj") => tower.in_proj,
            _ => LINEAR_STD,
        }
    }
}

impl ModuleMapper for OfficialInit {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path.push((name.to_owned(), container_type.to_owned()));
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let Some((field, holder)) = self.path.last() else { return param };
        if !matches!(holder.as_str(), "Struct:Linear" | "Struct:Conv2d") {
            return param;
        }
        match field.as_str() {
            "weight" => {
                let std = self.weight_std();
                param.map(|w| Tensor::random(w.shape(), Distribution::Normal(0.0, std), &w.device()))
            }
            "bias" => param.map(|b| b.zeros_like()),
            _ => param,
        }
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::Device;

    use super::*;
    use crate::groupvit::objective::tests::tiny_config;

    /// Sample standard deviation of a tensor's values.
    fn std_of<const D: usize>(t: Tensor<D>) -> f64 {
        let values: Vec<f32> = t.into_data().try_to_vec::<f32>().unwrap();
        let n = values.len() as f64;
        let mean = values.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
        (values.iter().map(|&v| (f64::from(v) - mean).powi(2)).sum::<f64>() / n).sqrt()
    }

    #[test]
    fn weights_take_transformers_standard_deviations() {
        let config = tiny_config();
        let model = config.init(&Device::flex()).unwrap();
        let (width, layers) = (config.vision.hidden_size as f64, config.vision.depths.iter().sum::<usize>() as f64);
        let block = &model.vision.stages[0].layers.resblocks[0];
        let within = |actual: f64, expected: f64| (actual / expected - 1.0).abs() < 0.1;
        let query = std_of(block.attn.query.weight.val());
        assert!(within(query, width.powf(-0.5) * (2.0 * layers).powf(-0.5)), "query std {query}");
        let out = std_of(block.attn.out_proj.weight.val());
        assert!(within(out, width.powf(-0.5)), "out_proj std {out}");
        let fc = std_of(block.mlp.c_fc.weight.val());
        assert!(within(fc, (2.0 * width).powf(-0.5)), "c_fc std {fc}");
        let downsample = model.vision.stages[0].downsample.as_ref().unwrap();
        let assign = std_of(downsample.assign.q_proj.weight.val());
        assert!(within(assign, 0.02), "assign q_proj std {assign}");
        let text_layers = config.text.num_hidden_layers as f64;
        let text_width = config.text.hidden_size as f64;
        let text_mlp = std_of(model.text.transformer.resblocks[0].mlp.c_proj.weight.val());
        assert!(within(text_mlp, text_width.powf(-0.5) * (2.0 * text_layers).powf(-0.5)), "text c_proj std {text_mlp}");
        let head = std_of(model.visual_projection.fc1.weight.val());
        assert!(within(head, 0.02), "projection std {head}");
        let bias: f32 = model.visual_projection.fc1.bias.as_ref().unwrap().val().abs().max().into_scalar();
        assert_eq!(bias, 0.0);
    }
}

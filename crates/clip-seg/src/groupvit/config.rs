//! GroupViT configuration, read from and written as Hugging Face's `GroupViTConfig` JSON.

use std::path::Path;

use burn::config::Config;
use burn::module::Module;
use burn::tensor::Device;
use clip_core::ClipError;
use clip_core::transformer::Activation;
use serde_json::{Value, json};

use super::init::OfficialInit;
use super::model::GroupVit;

/// The image tower (Hugging Face's `GroupViTVisionConfig`).
#[derive(Config, Debug, PartialEq)]
pub struct GroupVitVisionConfig {
    /// Input image side in pixels (square images).
    pub image_size: usize,
    /// Patch side in pixels.
    pub patch_size: usize,
    /// Input channels.
    #[config(default = 3)]
    pub num_channels: usize,
    /// Residual stream width.
    pub hidden_size: usize,
    /// MLP hidden size of the transformer layers and the pre-assign cross-attention.
    pub intermediate_size: usize,
    /// Transformer layers of each stage.
    pub depths: Vec<usize>,
    /// Learnable group tokens of each stage (0: a stage without grouping block).
    pub num_group_tokens: Vec<usize>,
    /// Segments each stage's grouping block outputs.
    pub num_output_groups: Vec<usize>,
    /// Attention heads.
    pub num_attention_heads: usize,
    /// MLP non-linearity.
    #[config(default = "Activation::Gelu")]
    pub hidden_act: Activation,
    /// Layer-norm epsilon.
    #[config(default = 1e-5)]
    pub layer_norm_eps: f64,
    /// Added to the per-group assignment count before normalizing.
    #[config(default = 1.0)]
    pub assign_eps: f64,
    /// Hidden sizes of the grouping block's token-mixing and channel MLPs, as multiples of
    /// `hidden_size`.
    #[config(default = "[0.5, 4.0]")]
    pub assign_mlp_ratio: [f64; 2],
}

/// The text tower (Hugging Face's `GroupViTTextConfig`, CLIP's causal transformer).
#[derive(Config, Debug, PartialEq)]
pub struct GroupVitTextConfig {
    /// Vocabulary size.
    #[config(default = 49408)]
    pub vocab_size: usize,
    /// Residual stream width.
    pub hidden_size: usize,
    /// MLP hidden size.
    pub intermediate_size: usize,
    /// Transformer layers.
    pub num_hidden_layers: usize,
    /// Attention heads.
    pub num_attention_heads: usize,
    /// Context length (positional embeddings).
    #[config(default = 77)]
    pub max_position_embeddings: usize,
    /// MLP non-linearity.
    #[config(default = "Activation::QuickGelu")]
    pub hidden_act: Activation,
    /// Layer-norm epsilon.
    #[config(default = 1e-5)]
    pub layer_norm_eps: f64,
}

/// A GroupViT model (Hugging Face's `GroupViTConfig`).
#[derive(Config, Debug, PartialEq)]
pub struct GroupVitConfig {
    /// The text tower.
    pub text: GroupVitTextConfig,
    /// The image tower.
    pub vision: GroupVitVisionConfig,
    /// Joint embedding size.
    pub projection_dim: usize,
    /// Hidden size of the projection heads (Linear, BatchNorm1d, ReLU, Linear).
    pub projection_intermediate_dim: usize,
    /// Initial log logit scale.
    #[config(default = 2.6592)]
    pub logit_scale_init_value: f64,
}

/// Reads `object[key]`, or `default` when absent or null; errors name `section.key`.
fn field<T: serde::de::DeserializeOwned>(
    object: &Value,
    section: &str,
    key: &str,
    default: T,
    origin: &str,
) -> clip_core::Result<T> {
    match object.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(value) => serde_json::from_value(value.clone())
            .map_err(|e| ClipError::config(origin, format!("{section}{key} = {value}: {e}"))),
    }
}

fn activation(
    object: &Value,
    section: &str,
    default: Activation,
    origin: &str,
) -> clip_core::Result<Activation> {
    let name: String = field(
        object,
        section,
        "hidden_act",
        default.hf_name().to_string(),
        origin,
    )?;
    Activation::from_hf_name(&name, origin, &format!("{section}hidden_act"))
}

impl GroupVitConfig {
    /// Parses a Hugging Face `GroupViTConfig` (`config.json`). Absent keys take transformers'
    /// defaults (those of `nvidia/groupvit-gcc-yfcc`); `origin` names the source in errors.
    pub fn from_hf_json(value: &Value, origin: &str) -> clip_core::Result<Self> {
        if !value.is_object() {
            return Err(ClipError::config(origin, "not a JSON object"));
        }
        let empty = json!({});
        let t = value
            .get("text_config")
            .filter(|v| !v.is_null())
            .unwrap_or(&empty);
        let v = value
            .get("vision_config")
            .filter(|v| !v.is_null())
            .unwrap_or(&empty);
        let (ts, vs) = ("text_config.", "vision_config.");
        let text = GroupVitTextConfig {
            vocab_size: field(t, ts, "vocab_size", 49408, origin)?,
            hidden_size: field(t, ts, "hidden_size", 256, origin)?,
            intermediate_size: field(t, ts, "intermediate_size", 1024, origin)?,
            num_hidden_layers: field(t, ts, "num_hidden_layers", 12, origin)?,
            num_attention_heads: field(t, ts, "num_attention_heads", 4, origin)?,
            max_position_embeddings: field(t, ts, "max_position_embeddings", 77, origin)?,
            hidden_act: activation(t, ts, Activation::QuickGelu, origin)?,
            layer_norm_eps: field(t, ts, "layer_norm_eps", 1e-5, origin)?,
        };
        let ratio: Value = field(v, vs, "assign_mlp_ratio", json!([0.5, 4.0]), origin)?;
        let assign_mlp_ratio = match &ratio {
            Value::Number(n) => n.as_f64().map(|r| [r, r]),
            Value::Array(items) if items.len() == 2 => match (items[0].as_f64(), items[1].as_f64())
            {
                (Some(a), Some(b)) => Some([a, b]),
                _ => None,
            },
            _ => None,
        }
        .ok_or_else(|| {
            ClipError::config(
                origin,
                format!("{vs}assign_mlp_ratio = {ratio}: expected a number or two numbers"),
            )
        })?;
        let vision = GroupVitVisionConfig {
            image_size: field(v, vs, "image_size", 224, origin)?,
            patch_size: field(v, vs, "patch_size", 16, origin)?,
            num_channels: field(v, vs, "num_channels", 3, origin)?,
            hidden_size: field(v, vs, "hidden_size", 384, origin)?,
            intermediate_size: field(v, vs, "intermediate_size", 1536, origin)?,
            depths: field(v, vs, "depths", vec![6, 3, 3], origin)?,
            num_group_tokens: field(v, vs, "num_group_tokens", vec![64, 8, 0], origin)?,
            num_output_groups: field(v, vs, "num_output_groups", vec![64, 8, 8], origin)?,
            num_attention_heads: field(v, vs, "num_attention_heads", 6, origin)?,
            hidden_act: activation(v, vs, Activation::Gelu, origin)?,
            layer_norm_eps: field(v, vs, "layer_norm_eps", 1e-5, origin)?,
            assign_eps: field(v, vs, "assign_eps", 1.0, origin)?,
            assign_mlp_ratio,
        };
        let config = Self {
            text,
            vision,
            projection_dim: field(value, "", "projection_dim", 256, origin)?,
            projection_intermediate_dim: field(
                value,
                "",
                "projection_intermediate_dim",
                4096,
                origin,
            )?,
            logit_scale_init_value: field(value, "", "logit_scale_init_value", 2.6592, origin)?,
        };
        config.validate(origin)?;
        Ok(config)
    }

    /// Reads a Hugging Face `config.json`.
    pub fn from_file(path: &Path) -> clip_core::Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| ClipError::io(path, e))?;
        let origin = path.display().to_string();
        let value: Value =
            serde_json::from_str(&text).map_err(|e| ClipError::config(&origin, e.to_string()))?;
        Self::from_hf_json(&value, &origin)
    }

    /// This configuration as a Hugging Face `config.json` (loadable by
    /// `transformers.GroupViTModel.from_pretrained`).
    pub fn to_hf_json(&self) -> Value {
        let (t, v) = (&self.text, &self.vision);
        json!({
            "architectures": ["GroupViTModel"],
            "model_type": "groupvit",
            "projection_dim": self.projection_dim,
            "projection_intermediate_dim": self.projection_intermediate_dim,
            "logit_scale_init_value": self.logit_scale_init_value,
            "text_config": {
                "model_type": "groupvit_text_model",
                "vocab_size": t.vocab_size,
                "hidden_size": t.hidden_size,
                "intermediate_size": t.intermediate_size,
                "num_hidden_layers": t.num_hidden_layers,
                "num_attention_heads": t.num_attention_heads,
                "max_position_embeddings": t.max_position_embeddings,
                "hidden_act": t.hidden_act.hf_name(),
                "layer_norm_eps": t.layer_norm_eps,
                "bos_token_id": 49406,
                "eos_token_id": 49407,
                "pad_token_id": 1,
            },
            "vision_config": {
                "model_type": "groupvit_vision_model",
                "image_size": v.image_size,
                "patch_size": v.patch_size,
                "num_channels": v.num_channels,
                "hidden_size": v.hidden_size,
                "intermediate_size": v.intermediate_size,
                "num_hidden_layers": v.depths.iter().sum::<usize>(),
                "depths": v.depths,
                "num_group_tokens": v.num_group_tokens,
                "num_output_groups": v.num_output_groups,
                "num_attention_heads": v.num_attention_heads,
                "hidden_act": v.hidden_act.hf_name(),
                "layer_norm_eps": v.layer_norm_eps,
                "assign_eps": v.assign_eps,
                "assign_mlp_ratio": v.assign_mlp_ratio,
            },
        })
    }

    /// Checks that the sizes fit together; errors name the field.
    pub fn validate(&self, origin: &str) -> clip_core::Result<()> {
        let err = |message: String| Err(ClipError::config(origin, message));
        let (t, v) = (&self.text, &self.vision);
        if t.hidden_size == 0
            || t.num_attention_heads == 0
            || t.hidden_size % t.num_attention_heads != 0
        {
            return err(format!(
                "text_config.hidden_size = {} must be a positive multiple of num_attention_heads = {}",
                t.hidden_size, t.num_attention_heads
            ));
        }
        if v.hidden_size == 0
            || v.num_attention_heads == 0
            || v.hidden_size % v.num_attention_heads != 0
        {
            return err(format!(
                "vision_config.hidden_size = {} must be a positive multiple of num_attention_heads = {}",
                v.hidden_size, v.num_attention_heads
            ));
        }
        if v.patch_size == 0 || v.image_size % v.patch_size != 0 {
            return err(format!(
                "vision_config.image_size = {} is not a multiple of patch_size = {}",
                v.image_size, v.patch_size
            ));
        }
        let stages = v.depths.len();
        if stages == 0 || v.num_group_tokens.len() != stages || v.num_output_groups.len() != stages
        {
            return err(format!(
                "vision_config: depths {:?}, num_group_tokens {:?} and num_output_groups {:?} must be \
                 non-empty and equally long",
                v.depths, v.num_group_tokens, v.num_output_groups
            ));
        }
        for i in 1..stages {
            // The group projector mixes the previous stage's group tokens into this stage's.
            if v.num_group_tokens[i] > 0 && v.num_group_tokens[i - 1] != v.num_output_groups[i - 1]
            {
                return err(format!(
                    "vision_config: stage {i} projects the previous stage's {} group tokens but \
                     num_output_groups[{}] = {}",
                    v.num_group_tokens[i - 1],
                    i - 1,
                    v.num_output_groups[i - 1]
                ));
            }
        }
        if v.num_group_tokens
            .iter()
            .zip(&v.num_output_groups)
            .any(|(&g, &o)| g > 0 && o == 0)
        {
            return err("vision_config.num_output_groups: a stage with group tokens needs at least one output group".into());
        }
        if !v.num_group_tokens.iter().any(|&g| g > 0) {
            return err(
                "vision_config.num_group_tokens: at least one stage needs group tokens".into(),
            );
        }
        Ok(())
    }

    /// Input image side in pixels.
    pub fn image_size(&self) -> usize {
        self.vision.image_size
    }

    /// Text context length in tokens.
    pub fn context_length(&self) -> usize {
        self.text.max_position_embeddings
    }

    /// Builds the model with freshly initialized weights, drawn as Hugging Face's GroupViT draws
    /// them (see `init.rs`).
    pub fn init(&self, device: &Device) -> clip_core::Result<GroupVit> {
        self.validate("GroupViT config")?;
        Ok(GroupVit::new(self, device).map(&mut OfficialInit::new(self)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shipped(name: &str) -> GroupVitConfig {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../configs/models")
            .join(name);
        GroupVitConfig::from_file(&path).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn shipped_configs_parse_and_round_trip_through_hf_json() {
        for name in ["groupvit-tiny-shapes.json", "groupvit-tiny-colors.json", "groupvit-gcc-yfcc.json"] {
            let config = shipped(name);
            assert_eq!(
                GroupVitConfig::from_hf_json(&config.to_hf_json(), name).unwrap(),
                config
            );
        }
    }

    #[test]
    fn an_empty_config_takes_the_published_gcc_yfcc_sizes() {
        let defaults = GroupVitConfig::from_hf_json(&json!({}), "defaults").unwrap();
        assert_eq!(defaults, shipped("groupvit-gcc-yfcc.json"));
    }

    #[test]
    fn bad_fields_are_named() {
        let bad = json!({"vision_config": {"depths": [1, 1], "num_group_tokens": [4, 0, 0]}});
        let message = GroupVitConfig::from_hf_json(&bad, "bad.json")
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("bad.json") && message.contains("num_group_tokens"),
            "{message}"
        );
        let bad = json!({"text_config": {"hidden_act": "relu"}});
        let message = GroupVitConfig::from_hf_json(&bad, "bad.json")
            .unwrap_err()
            .to_string();
        assert!(message.contains("text_config.hidden_act"), "{message}");
        let bad = json!({"vision_config": {"hidden_size": "wide"}});
        let message = GroupVitConfig::from_hf_json(&bad, "bad.json")
            .unwrap_err()
            .to_string();
        assert!(message.contains("vision_config.hidden_size"), "{message}");
    }
}

//! The CLIP a run starts from: a run's checkpoint folder, a Hugging Face `CLIPModel` folder, an
//! open_clip / OpenAI checkpoint file, or a fresh initialization of a named architecture.

use std::path::Path;

use burn::module::Module;
use burn::tensor::Device;
use clip_core::{Clip, ClipConfig, ClipTokenizer, weights};

use crate::config::RunContext;

/// Whether `weights` is a Hugging Face folder (a folder that is not a run checkpoint).
fn is_hugging_face(weights: &Path) -> bool {
    weights.is_dir() && !weights.join("model.bpk").is_file()
}

/// The architecture of the CLIP that `name` and `weights` describe (a Hugging Face folder
/// brings its own `config.json`).
pub fn clip_config(name: &str, weights: Option<&Path>) -> anyhow::Result<ClipConfig> {
    match weights.filter(|w| is_hugging_face(w)) {
        Some(dir) => {
            let (config, _) = weights::hugging_face_files(dir)?;
            let json = std::fs::read_to_string(&config).map_err(|e| anyhow::anyhow!("{}: {e}", config.display()))?;
            Ok(ClipConfig::from_hf_json(&json, &config.display().to_string())?)
        }
        None => Ok(ClipConfig::from_name_or_path(name)?),
    }
}

/// A CLIP from `weights`: a run's checkpoint folder (`model.bpk`, architecture `name`), a
/// Hugging Face `CLIPModel` directory (which brings its own `config.json`), or an open_clip /
/// OpenAI checkpoint file (architecture `name`); freshly initialized when `weights` is `None`.
pub fn load_model(name: &str, weights: Option<&Path>, device: &Device) -> anyhow::Result<(Clip, ClipConfig)> {
    let Some(weights) = weights else {
        let config = ClipConfig::from_name_or_path(name)?;
        return Ok((config.init(device), config));
    };
    let run_checkpoint = weights.join("model.bpk");
    if run_checkpoint.is_file() {
        let config = ClipConfig::from_name_or_path(name)?;
        let model = config
            .init(device)
            .try_load_file(&run_checkpoint)
            .map_err(|e| anyhow::anyhow!("{}: {e}", run_checkpoint.display()))?;
        Ok((model, config))
    } else if weights.is_dir() {
        Ok(weights::load_hugging_face(weights, device)?)
    } else {
        let config = ClipConfig::from_name_or_path(name)?;
        Ok((weights::load_clip(weights, &config, device)?, config))
    }
}

/// The CLIP of a run's `[model]` section.
pub fn load_run_model(run: &RunContext, device: &Device) -> anyhow::Result<(Clip, ClipConfig)> {
    load_model(&run.model.name, run.model.weights.as_deref(), device)
}

/// The tokenizer of a CLIP whose text tower reads `config`'s context length.
pub fn tokenizer_of(config: &ClipConfig) -> anyhow::Result<ClipTokenizer> {
    Ok(ClipTokenizer::new().with_context_length(config.text.context_length)?)
}

/// Checks that `model.name` (or the Hugging Face folder of `model.weights`) is a CLIP
/// architecture, for [`crate::Task::validate`].
pub fn check_clip_model(run: &RunContext) -> Result<(), String> {
    clip_config(&run.model.name, run.model.weights.as_deref()).map(drop).map_err(|e| format!("model.name: {e:#}"))
}

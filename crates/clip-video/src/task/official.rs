//! Official CLIP4Clip and ActionCLIP checkpoints in runs: `video.official_checkpoint` starts a
//! run (or an evaluation) from one, and `clipforge export-official` writes a run's model in the
//! official layout.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use clip_core::ClipConfig;
use clip_core::weights::{Checkpoint, RawTensor, openai_config};

/// The safetensors metadata key under which `export-official` records the CLIP architecture:
/// head counts and the activation are not in the weights, and toy models need not follow
/// OpenAI's `width / 64` heads and QuickGELU. The official code ignores it.
const CLIP_CONFIG_METADATA: &str = "clipforge.clip_config";

/// Metadata keys under which `export-official` records head counts the weights do not show:
/// `heads` (CLIP4Clip's `seqTransf`, ActionCLIP's `Transf`), `cross_heads` (`tightTransf`) and
/// `cls_heads` (`Transf_cls`). Official files have none: their counts follow the official code.
pub const HEADS_METADATA: [&str; 3] = ["clipforge.heads", "clipforge.cross_heads", "clipforge.cls_heads"];

/// Metadata key of the position rows a run trained before `export-official` padded its
/// position tables with zeros: longer clips would read untrained positions.
const TRAINED_POSITIONS_METADATA: &str = "clipforge.trained_positions";

/// The name of the command.
pub const EXPORT_OFFICIAL: &str = "export-official";

/// `clipforge export-official` arguments (after the run that holds the model).
#[derive(Debug, Clone, clap::Args)]
pub struct ExportOfficialArgs {
    /// The file to write (safetensors with the official code's keys).
    #[arg(long)]
    pub output: PathBuf,
}

/// The `export-official` command's definition.
pub fn export_official_command() -> clap::Command {
    use clap::Args;
    ExportOfficialArgs::augment_args(clap::Command::new(EXPORT_OFFICIAL).about(
        "Write a CLIP4Clip or ActionCLIP model with the official code's checkpoint keys (safetensors, f32), \
         loadable by the official code and by `video.official_checkpoint`",
    ))
}

/// The output file of `export-official`'s `args`.
pub fn export_path(args: &clap::ArgMatches) -> anyhow::Result<PathBuf> {
    use clap::FromArgMatches;
    Ok(ExportOfficialArgs::from_arg_matches(args)?.output)
}

/// An official checkpoint read for a run, with the CLIP architecture inside it.
#[derive(Debug, Clone)]
pub struct OfficialCheckpoint {
    /// The tensors.
    pub checkpoint: Arc<Checkpoint>,
    /// The CLIP architecture under `prefix` (OpenAI's `build_model`), or as recorded by
    /// `export-official`.
    pub clip: ClipConfig,
    /// Head counts recorded by `export-official` ([`HEADS_METADATA`] without the prefix).
    pub heads: BTreeMap<String, usize>,
    /// Position rows trained before `export-official` padded them (none for official files).
    pub trained_positions: Option<usize>,
}

impl OfficialCheckpoint {
    /// Reads `path` (the official `.bin`/`.pt`, or safetensors with the official keys) and the
    /// CLIP architecture under `prefix`; errors name `video.official_checkpoint` and the file.
    pub fn read(path: &Path, prefix: &str) -> anyhow::Result<Self> {
        let context = || format!("video.official_checkpoint = {}", path.display());
        let checkpoint = Checkpoint::read(path).with_context(context)?;
        let mut metadata = Checkpoint::read_metadata(path).with_context(context)?;
        let mut heads = BTreeMap::new();
        for key in HEADS_METADATA {
            if let Some(value) = metadata.remove(key) {
                let count = value.parse().with_context(|| format!("{}: metadata {key} = {value:?}", path.display()))?;
                heads.insert(key.trim_start_matches("clipforge.").to_string(), count);
            }
        }
        let trained_positions = match metadata.remove(TRAINED_POSITIONS_METADATA) {
            Some(value) => Some(value.parse().with_context(|| format!("{}: metadata {TRAINED_POSITIONS_METADATA} = {value:?}", path.display()))?),
            None => None,
        };
        let recorded = metadata.remove(CLIP_CONFIG_METADATA);
        let clip = match recorded {
            Some(json) => serde_json::from_str(&json).with_context(|| format!("{}: metadata {CLIP_CONFIG_METADATA}", path.display()))?,
            None => openai_config(&checkpoint.tensors, prefix, &path.display().to_string()).with_context(context)?,
        };
        Ok(Self { checkpoint: Arc::new(checkpoint), clip, heads, trained_positions })
    }

    /// An error naming `video.frames` when clips of `frames` frames need more than the
    /// position rows the exported model trained (`extra` rows besides the frames: the cross
    /// encoder's text token).
    pub fn check_frames(&self, frames: usize, extra: usize) -> anyhow::Result<()> {
        match self.trained_positions {
            Some(rows) if frames + extra > rows => anyhow::bail!(
                "video.frames = {frames}, but video.official_checkpoint = {} was trained with position embeddings for {} frames \
                 (export-official padded the rest with zeros)",
                self.checkpoint.path.display(),
                rows - extra
            ),
            _ => Ok(()),
        }
    }
}

/// Writes `tensors` (a model in an official layout) to `path` as safetensors, recording `clip`
/// and the head counts `heads` (keys of [`HEADS_METADATA`]) in the metadata. Position tables
/// among `positions` with fewer rows than the text context get zero rows up to it, the shape
/// the official code builds (the rows past the longest clip are never read).
pub fn write_official(
    mut tensors: BTreeMap<String, RawTensor>,
    clip: &ClipConfig,
    heads: &[(&str, usize)],
    positions: &[&str],
    path: &Path,
) -> anyhow::Result<()> {
    let rows = clip.text.context_length;
    let trained = positions.iter().filter_map(|key| tensors.get(*key)).filter_map(|t| t.shape.first().copied()).min();
    for key in positions {
        if let Some(table) = tensors.get_mut(*key).filter(|t| t.shape.len() == 2 && t.shape[0] < rows) {
            table.values.resize(rows * table.shape[1], 0.0);
            table.shape[0] = rows;
        }
    }
    let mut metadata = vec![(CLIP_CONFIG_METADATA.to_string(), serde_json::to_string(clip)?)];
    metadata.extend(heads.iter().map(|(key, count)| (key.to_string(), count.to_string())));
    metadata.extend(trained.map(|rows| (TRAINED_POSITIONS_METADATA.to_string(), rows.to_string())));
    Checkpoint::write_safetensors_with_metadata(&tensors, &metadata, path).with_context(|| format!("writing {}", path.display()))?;
    println!("wrote {} (official checkpoint keys)", path.display());
    Ok(())
}

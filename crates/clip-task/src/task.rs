//! The interface through which a method supplies everything a run needs: its config section,
//! its model, its training batches, its objective, its evaluation report and its inference
//! commands. The trainer (`clip-train`) drives any [`Task`] without knowing the method.

use burn::module::Module;
use burn::tensor::Device;
use clip_core::{Clip, Objective};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::config::RunContext;
use crate::data::BatchSource;

/// The module a task trains.
pub type TaskModel<T> = <<T as Task>::Objective as Objective>::Model;
/// The batches the task's objective takes.
pub type TaskBatch<T> = <<T as Task>::Objective as Objective>::Batch;
/// The batches the task's data source loads.
pub type LoadedBatchOf<T> = <<T as Task>::Source as BatchSource>::Batch;

/// One method's whole task.
///
/// The trainer calls, in order: [`Task::validate`] (when the config is loaded),
/// [`Task::new`], [`Task::model`], [`Task::train_source`], then for every batch
/// [`Task::to_batch`] and the objective, and at the end [`Task::evaluate`]. Inference
/// commands ([`Task::commands`]) get the model of a run's checkpoint.
pub trait Task: Sized {
    /// The task's config section (`[segmentation]`), typed; unknown keys are refused with
    /// `#[serde(deny_unknown_fields)]`. `()` for a task without one.
    type Section: Serialize + DeserializeOwned + Clone;
    /// The objective the model trains under.
    type Objective: Objective;
    /// Where the training batches come from.
    type Source: BatchSource;

    /// The key of the section in the run config (`"segmentation"`), `None` without one.
    const SECTION: Option<&'static str>;

    /// Checks values serde cannot (ranges, choices, files that must exist), naming the key
    /// (`segmentation.scale = ...`). The trainer adds the config file's name.
    fn validate(section: &Self::Section, run: &RunContext) -> Result<(), String>;

    /// The task of a validated section; reads nothing large (inference builds tasks too).
    fn new(section: Self::Section, run: RunContext) -> anyhow::Result<Self>;

    /// The run this task belongs to.
    fn run(&self) -> &RunContext;

    /// The model as training starts: `model.weights` loaded into it, or freshly initialized.
    /// The trainer loads a run checkpoint into this model when resuming or running inference,
    /// so everything inference needs must be inside it.
    fn model(&self, device: &Device) -> anyhow::Result<TaskModel<Self>>;

    /// Reads the training data and prepares what its batches need (teacher embeddings,
    /// label prompts), given the model about to be trained.
    fn train_source(&mut self, model: &TaskModel<Self>, device: &Device) -> anyhow::Result<Self::Source>;

    /// The objective's batch of a loaded batch, on `device`.
    fn to_batch(&self, batch: LoadedBatchOf<Self>, device: &Device) -> anyhow::Result<TaskBatch<Self>>;

    /// The objective.
    fn objective(&self) -> Self::Objective;

    /// The evaluation report of a trained model (without autodiff) on the validation data,
    /// `None` when the run has none. Metrics are top-level numbers (or arrays of numbers).
    fn evaluate(&self, model: &TaskModel<Self>, device: &Device) -> anyhow::Result<Option<serde_json::Value>>;

    /// The CLIP inside a trained model, for the commands that take any CLIP (`zero-shot`,
    /// `embed`, `export`); an error for models without one.
    fn clip(&self, model: TaskModel<Self>, device: &Device) -> anyhow::Result<Clip> {
        let _ = (model, device);
        anyhow::bail!("a train.objective = {:?} model holds no CLIP", self.run().objective)
    }

    /// `clipforge zero-shot` for files that are not images (audio, ...): for each file, the
    /// indices of `labels` with their probabilities, best first; `None` when the task ranks
    /// images only (the command then uses [`Task::clip`]).
    fn rank_files(&self, model: TaskModel<Self>, labels: &[String], files: &[std::path::PathBuf], device: &Device) -> anyhow::Result<Option<Vec<Vec<(usize, f32)>>>> {
        let _ = (model, labels, files, device);
        Ok(None)
    }

    /// The inference commands the task offers (`segment`, `detect`, ...), as clap commands;
    /// the trainer adds the arguments that locate the model (`MODEL`, `--checkpoint`, `--set`).
    fn commands() -> Vec<clap::Command> {
        Vec::new()
    }

    /// Runs the inference command `name` of [`Task::commands`] with `model`.
    fn run_command(&self, name: &str, args: &clap::ArgMatches, model: TaskModel<Self>, device: &Device) -> anyhow::Result<()> {
        let _ = (args, model, device);
        anyhow::bail!("train.objective = {:?} has no `{name}` command", self.run().objective)
    }
}

/// A model of `T` with the parameters of a run checkpoint folder (`step-N/model.bpk`).
pub fn load_checkpoint<M: Module>(model: M, checkpoint: &std::path::Path) -> anyhow::Result<M> {
    let file = checkpoint.join("model.bpk");
    anyhow::ensure!(file.is_file(), "{}: no model.bpk (not a run checkpoint folder)", checkpoint.display());
    model.try_load_file(&file).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))
}

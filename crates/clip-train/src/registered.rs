//! What the trainer can do with a registered task without knowing its type: parse and
//! validate its section, train it, and run its inference commands.

use std::marker::PhantomData;
use std::path::Path;

use burn::tensor::Device;
use clip_core::{Clip, ClipConfig};
use clip_task::clip_model::clip_config;
use clip_task::task::load_checkpoint;
use clip_task::{RunContext, Task, TaskModel};
use serde_json::Value;

use crate::config::TrainSection;
use crate::trainer::{Execution, Summary, train_task_with};

/// A task behind the registry.
pub trait RegisteredTask: Sync {
    /// The key of the task's config section.
    fn section(&self) -> Option<&'static str>;

    /// Parses and validates the task's section (`None` when the config has none).
    fn validate(&self, section: Option<&Value>, run: &RunContext) -> Result<(), String>;

    /// Trains the task on the devices and in the precision of `execution` as `train` says.
    fn train(&self, section: Option<&Value>, run: RunContext, train: &TrainSection, execution: &Execution, resume: bool) -> anyhow::Result<Summary>;

    /// The evaluation report of the model of `checkpoint` (a run checkpoint folder), or of the
    /// model the config describes without one.
    fn evaluate(&self, section: Option<&Value>, run: RunContext, checkpoint: Option<&Path>, device: &Device) -> anyhow::Result<Option<Value>>;

    /// The CLIP inside the model of `checkpoint` (see [`Task::clip`]) and its architecture.
    fn clip(&self, section: Option<&Value>, run: RunContext, checkpoint: Option<&Path>, device: &Device) -> anyhow::Result<(Clip, ClipConfig)>;

    /// [`Task::rank_files`] with the model of `checkpoint`.
    #[allow(clippy::too_many_arguments)]
    fn rank_files(
        &self,
        section: Option<&Value>,
        run: RunContext,
        checkpoint: Option<&Path>,
        labels: &[String],
        files: &[std::path::PathBuf],
        device: &Device,
    ) -> anyhow::Result<Option<Vec<Vec<(usize, f32)>>>>;

    /// The task's inference commands.
    fn commands(&self) -> Vec<clap::Command>;

    /// Runs inference command `name` with the model of `checkpoint` (a run checkpoint
    /// folder), or the model the config describes without one.
    fn run_command(
        &self,
        name: &str,
        args: &clap::ArgMatches,
        section: Option<&Value>,
        run: RunContext,
        checkpoint: Option<&Path>,
        device: &Device,
    ) -> anyhow::Result<()>;
}

/// The registry entry of task `T`.
pub struct Entry<T>(PhantomData<fn() -> T>);

impl<T> Entry<T> {
    /// The entry.
    pub const NEW: Self = Self(PhantomData);
}

/// The section of `T` in `value`; a missing section takes every key's default.
fn parse<T: Task>(value: Option<&Value>, objective: &str) -> Result<T::Section, String> {
    let Some(key) = T::SECTION else {
        return serde_json::from_value(Value::Null).map_err(|e| e.to_string());
    };
    match value {
        Some(value) => serde_json::from_value(value.clone()).map_err(|e| format!("[{key}]: {e}")),
        None => serde_json::from_value(serde_json::json!({}))
            .map_err(|e| format!("train.objective = {objective:?} needs a [{key}] section: {e}")),
    }
}

/// The task of `section` and `run`, and its model with the parameters of `checkpoint`.
fn task_and_model<T: Task>(section: Option<&Value>, run: RunContext, checkpoint: Option<&Path>, device: &Device) -> anyhow::Result<(T, TaskModel<T>)> {
    let section = parse::<T>(section, &run.objective).map_err(anyhow::Error::msg)?;
    let task = T::new(section, run)?;
    let model = task.model(device)?;
    let model = match checkpoint {
        Some(dir) => load_checkpoint(model, dir)?,
        None => model,
    };
    Ok((task, model))
}

impl<T: Task> RegisteredTask for Entry<T> {
    fn section(&self) -> Option<&'static str> {
        T::SECTION
    }

    fn validate(&self, section: Option<&Value>, run: &RunContext) -> Result<(), String> {
        T::validate(&parse::<T>(section, &run.objective)?, run)
    }

    fn train(&self, section: Option<&Value>, run: RunContext, train: &TrainSection, execution: &Execution, resume: bool) -> anyhow::Result<Summary> {
        let section = parse::<T>(section, &run.objective).map_err(anyhow::Error::msg)?;
        let output = run.output.clone();
        train_task_with(T::new(section, run)?, train, execution, &output, resume)
    }

    fn evaluate(&self, section: Option<&Value>, run: RunContext, checkpoint: Option<&Path>, device: &Device) -> anyhow::Result<Option<Value>> {
        let (task, model) = task_and_model::<T>(section, run, checkpoint, device)?;
        task.evaluate(&model, device)
    }

    fn clip(&self, section: Option<&Value>, run: RunContext, checkpoint: Option<&Path>, device: &Device) -> anyhow::Result<(Clip, ClipConfig)> {
        let (name, weights) = (run.model.name.clone(), run.model.weights.clone());
        let (task, model) = task_and_model::<T>(section, run, checkpoint, device)?;
        let clip = task.clip(model, device)?;
        Ok((clip, clip_config(&name, weights.as_deref())?))
    }

    fn rank_files(
        &self,
        section: Option<&Value>,
        run: RunContext,
        checkpoint: Option<&Path>,
        labels: &[String],
        files: &[std::path::PathBuf],
        device: &Device,
    ) -> anyhow::Result<Option<Vec<Vec<(usize, f32)>>>> {
        let (task, model) = task_and_model::<T>(section, run, checkpoint, device)?;
        task.rank_files(model, labels, files, device)
    }

    fn commands(&self) -> Vec<clap::Command> {
        T::commands()
    }

    fn run_command(
        &self,
        name: &str,
        args: &clap::ArgMatches,
        section: Option<&Value>,
        run: RunContext,
        checkpoint: Option<&Path>,
        device: &Device,
    ) -> anyhow::Result<()> {
        let (task, model) = task_and_model::<T>(section, run, checkpoint, device)?;
        task.run_command(name, args, model, device)
    }
}

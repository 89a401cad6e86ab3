//! The tasks `train.objective` can name: one line per task. This is the only place the
//! trainer names a method; everything else reaches a task through [`RegisteredTask`].

use clip_3d::DepthClipTask;
use clip_3d::task::pointclip::PointClipTask;
use clip_audio::AudioClipTask;
use clip_det::{GlipTask, VildTask};
use clip_seg::{GroupVitTask, LsegTask};
use clip_sketch::ClipassoTask;
use clip_task::contrastive::ContrastiveTask;
use clip_task::distillation::DistillationTask;
use clip_task::supervised::SupervisedTask;
use clip_video::{ActionClipTask, Clip4ClipTask};

use crate::config::RunConfig;
use crate::registered::{Entry, RegisteredTask};

/// Every task, by the `train.objective` that selects it.
pub const TASKS: &[(&str, &dyn RegisteredTask)] = &[
    ("contrastive", &Entry::<ContrastiveTask>::NEW),
    ("supervised", &Entry::<SupervisedTask>::NEW),
    ("distillation", &Entry::<DistillationTask>::NEW),
    ("lseg", &Entry::<LsegTask>::NEW),
    ("groupvit", &Entry::<GroupVitTask>::NEW),
    ("clip4clip", &Entry::<Clip4ClipTask>::NEW),
    ("actionclip", &Entry::<ActionClipTask>::NEW),
    ("vild", &Entry::<VildTask>::NEW),
    ("glip", &Entry::<GlipTask>::NEW),
    ("pointclip", &Entry::<PointClipTask>::NEW),
    ("depthclip", &Entry::<DepthClipTask>::NEW),
    ("audioclip", &Entry::<AudioClipTask>::NEW),
    ("clipasso", &Entry::<ClipassoTask>::NEW),
];

/// The task `objective` names, or an error listing them all.
pub fn task(objective: &str) -> Result<&'static dyn RegisteredTask, String> {
    TASKS.iter().find(|(name, _)| *name == objective).map(|(_, task)| *task).ok_or_else(|| {
        let names: Vec<String> = TASKS.iter().map(|(name, _)| format!("{name:?}")).collect();
        format!("train.objective = {objective:?}: use one of {}", names.join(", "))
    })
}

/// Checks the task's section of `config` (and that no other task's section is there).
pub fn validate(config: &RunConfig) -> Result<(), String> {
    let task = task(&config.train.objective)?;
    for key in config.sections.keys() {
        if task.section() == Some(key.as_str()) {
            continue;
        }
        let users: Vec<&str> = TASKS.iter().filter(|(_, t)| t.section() == Some(key.as_str())).map(|(name, _)| *name).collect();
        return Err(if users.is_empty() {
            format!("unknown key {key:?}: a run config has [run], [model], [data], [train], [eval] and the section of its task")
        } else {
            format!("[{key}] is read by train.objective {}, not by {:?}", users.join(" or "), config.train.objective)
        });
    }
    task.validate(config.sections.get(task.section().unwrap_or_default()), &config.context(&config.run.output))
}

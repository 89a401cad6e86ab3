//! The worked example of `docs/adding-a-method.md`, compiled and trained: a task written
//! outside the method crates, trained by the public training loop.

use burn::module::Module;
use burn::nn::{Linear, LinearConfig, loss::CrossEntropyLossConfig};
use burn::tensor::{Device, Int, Tensor, TensorData};
use clip_core::preprocess::stack_images;
use clip_core::{ImageTower, Objective, StepOutput, l2_normalize};
use clip_task::clip_model::{check_clip_model, clip_config, load_run_model, tokenizer_of};
use clip_task::eval::{class_indices, class_names};
use clip_task::pairs::{Batcher, PairBatch, PairTable};
use clip_task::{RunContext, Task};
use serde::{Deserialize, Serialize};

#[derive(Module, Debug)]
pub struct Probe {
    pub visual: ImageTower,
    pub head: Linear,
}

pub struct ProbeBatch {
    images: Tensor<4>,
    labels: Tensor<1, Int>,
}

pub struct ProbeObjective;

impl Objective for ProbeObjective {
    type Model = Probe;
    type Batch = ProbeBatch;

    fn forward(&self, model: &Probe, batch: ProbeBatch) -> clip_core::Result<StepOutput> {
        let features = l2_normalize(model.visual.forward(batch.images)).detach();
        let logits = model.head.forward(features);
        let loss = CrossEntropyLossConfig::new().init(&logits.device()).forward(logits, batch.labels);
        Ok(StepOutput { loss, metrics: vec![] })
    }
}

/// `[probe]`
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProbeSection {
    pub classes: Vec<String>,
}

pub struct ProbeTask {
    section: ProbeSection,
    run: RunContext,
    /// The training table and the class names, once `train_source` read them.
    train: Option<(PairTable, Vec<String>)>,
}

impl Task for ProbeTask {
    type Section = ProbeSection;
    type Objective = ProbeObjective;
    type Source = Batcher;
    const SECTION: Option<&'static str> = Some("probe");

    fn validate(section: &ProbeSection, run: &RunContext) -> Result<(), String> {
        if run.data.label_column.is_none() {
            return Err("train.objective = \"probe\" needs data.label_column".into());
        }
        if section.classes.len() == 1 {
            return Err("probe.classes: give two classes or more (or none: the table's labels)".into());
        }
        check_clip_model(run)
    }

    fn new(section: ProbeSection, run: RunContext) -> anyhow::Result<Self> {
        Ok(Self { section, run, train: None })
    }

    fn run(&self) -> &RunContext {
        &self.run
    }

    fn model(&self, device: &Device) -> anyhow::Result<Probe> {
        let (clip, config) = load_run_model(&self.run, device)?;
        let classes = self.classes()?.len();
        Ok(Probe { visual: clip.visual.no_grad(), head: LinearConfig::new(config.embed_dim, classes).init(device) })
    }

    fn train_source(&mut self, _model: &Probe, _device: &Device) -> anyhow::Result<Batcher> {
        let (train, _) = self.run.tables()?;
        self.train = Some((train.clone(), self.classes()?));
        let config = clip_config(&self.run.model.name, self.run.model.weights.as_deref())?;
        Batcher::for_training(&self.run, train, &tokenizer_of(&config)?, config.vision.image_size())
    }

    fn to_batch(&self, batch: PairBatch, device: &Device) -> anyhow::Result<ProbeBatch> {
        let (table, classes) = self.train.as_ref().expect("train_source runs first");
        let labels = class_indices(table, &batch.rows, classes)?;
        Ok(ProbeBatch {
            images: stack_images(&batch.images, device)?,
            labels: Tensor::from_data(TensorData::new(labels, [batch.rows.len()]), device),
        })
    }

    fn objective(&self) -> ProbeObjective {
        ProbeObjective
    }

    fn evaluate(&self, _model: &Probe, _device: &Device) -> anyhow::Result<Option<serde_json::Value>> {
        Ok(None) // a real task reports accuracy and chance_top1 on the validation table
    }
}

impl ProbeTask {
    fn classes(&self) -> anyhow::Result<Vec<String>> {
        if !self.section.classes.is_empty() {
            return Ok(self.section.classes.clone());
        }
        class_names(&self.run.eval, &self.run.tables()?.0)
    }
}

#[test]
fn a_task_written_outside_the_trainer_trains() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut data = clip_task::DataSection::new(root.join("datasets/digits/train.tsv"));
    data.label_column = Some("label".into());
    let dir = tempfile::Builder::new().prefix("clipforge-probe-").tempdir().unwrap();
    let output = dir.path().join("run");
    let model = clip_task::ModelSection::named(root.join("configs/models/tiny-digits.json").to_str().unwrap());
    let run = RunContext::new(model, data, &output);
    ProbeTask::validate(&ProbeSection::default(), &run).unwrap();
    let task = ProbeTask::new(ProbeSection::default(), run).unwrap();
    let train = clip_train::config::TrainSection { batch_size: 32, max_steps: 3, ..Default::default() };
    let summary = clip_train::trainer::train_task(task, &train, &Device::flex(), &output, false).unwrap();
    assert_eq!(summary.steps, 3);
    assert!(summary.final_loss.is_finite());
}

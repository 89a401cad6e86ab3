//! The `contrastive` task: CLIP trained on image-caption pairs with InfoNCE (open_clip's
//! `ClipLoss`) or SigLIP's pairwise sigmoid loss; evaluated by zero-shot classification and
//! retrieval.

use burn::tensor::{Device, Int, Tensor, TensorData};
use clip_core::preprocess::stack_images;
use clip_core::{Clip, ClipConfig, ClipLoss, ClipTokenizer, Objective, SigLipLoss, StepOutput};
use serde::{Deserialize, Serialize};

use crate::clip_model::{check_clip_model, clip_config, load_run_model, tokenizer_of};
use crate::config::RunContext;
use crate::eval::evaluate;
use crate::pairs::{Batcher, PairBatch, PairTable};
use crate::task::Task;

/// Images and the token ids of their captions.
#[derive(Debug, Clone)]
pub struct ContrastiveBatch {
    /// `[batch, 3, H, W]`.
    pub(crate) images: Tensor<4>,
    /// `[batch, context_length]`.
    pub(crate) tokens: Tensor<2, Int>,
}

/// Which contrastive loss.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ContrastiveLoss {
    /// Symmetric InfoNCE (CLIP).
    #[default]
    InfoNce,
    /// Pairwise sigmoid loss with the model's learnable logit bias (SigLIP).
    SigLip,
}

impl ContrastiveBatch {
    /// A batch of images `[batch, 3, H, W]` and the token ids of their captions
    /// `[batch, context_length]`; an error when the counts differ.
    pub fn new(images: Tensor<4>, tokens: Tensor<2, Int>) -> clip_core::Result<Self> {
        let (count, texts) = (images.dims()[0], tokens.dims()[0]);
        if count != texts {
            return Err(clip_core::ClipError::Shape(format!("ContrastiveBatch: {count} images but {texts} captions")));
        }
        Ok(Self { images, tokens })
    }
}

/// A contrastive loss over normalized image and text embeddings, scaled by the model's
/// learnable logit scale (clamped to `[0, ln 100]` after every update). The SigLIP loss needs
/// a model with a logit bias.
#[derive(Debug, Clone, Default)]
pub struct ContrastiveObjective {
    /// The loss.
    pub loss: ContrastiveLoss,
}

impl Objective for ContrastiveObjective {
    type Model = Clip;
    type Batch = ContrastiveBatch;

    fn forward(&self, model: &Clip, batch: ContrastiveBatch) -> clip_core::Result<StepOutput> {
        let image = model.encode_image(batch.images, true);
        let text = model.encode_text(batch.tokens, true);
        let scale = model.logit_scale();
        let logit_scale = f64::from(scale.clone().into_scalar::<f32>());
        let loss = match (self.loss, &model.logit_bias) {
            (ContrastiveLoss::SigLip, Some(bias)) => SigLipLoss::default().forward(image, text, scale, bias.val()),
            (ContrastiveLoss::SigLip, None) => {
                return Err(clip_core::ClipError::config("model", "the SigLIP loss needs a logit bias (init_logit_bias)"));
            }
            (ContrastiveLoss::InfoNce, _) => ClipLoss::default().forward(image, text, scale),
        };
        Ok(StepOutput {
            loss,
            metrics: vec![("logit_scale", logit_scale)],
        })
    }

    fn after_update(&self, model: Clip) -> Clip {
        model.clamp_logit_scale()
    }
}

/// `[contrastive]`: the loss of the `contrastive` task.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ContrastiveSection {
    /// `infonce` (open_clip's ClipLoss) or `siglip` (needs a model config with
    /// `init_logit_bias`).
    pub loss: String,
}

impl Default for ContrastiveSection {
    fn default() -> Self {
        Self { loss: "infonce".into() }
    }
}

/// CLIP trained contrastively on an image-caption table (`data.train`), evaluated on the
/// validation table: zero-shot top-1/top-5 where it has labels, retrieval recall@1/5/10.
pub struct ContrastiveTask {
    section: ContrastiveSection,
    run: RunContext,
    config: ClipConfig,
    tokenizer: ClipTokenizer,
    val: Option<PairTable>,
}

impl Task for ContrastiveTask {
    type Section = ContrastiveSection;
    type Objective = ContrastiveObjective;
    type Source = Batcher;

    const SECTION: Option<&'static str> = Some("contrastive");

    fn validate(section: &ContrastiveSection, run: &RunContext) -> Result<(), String> {
        if !["infonce", "siglip"].contains(&section.loss.as_str()) {
            return Err(format!("contrastive.loss = {:?}: use \"infonce\" or \"siglip\"", section.loss));
        }
        check_clip_model(run)?;
        let config = clip_config(&run.model.name, run.model.weights.as_deref()).map_err(|e| format!("model.name: {e:#}"))?;
        if section.loss == "siglip" && config.init_logit_bias.is_none() {
            return Err(format!(
                "contrastive.loss = \"siglip\" needs a model with a logit bias: set \"init_logit_bias\" in the model \
                 config {} (open_clip's SigLIP configs use -10, with init_logit_scale ln 10)",
                run.model.name
            ));
        }
        Ok(())
    }

    fn new(section: ContrastiveSection, run: RunContext) -> anyhow::Result<Self> {
        let config = clip_config(&run.model.name, run.model.weights.as_deref())?;
        let tokenizer = tokenizer_of(&config)?;
        Ok(Self { section, run, config, tokenizer, val: None })
    }

    fn run(&self) -> &RunContext {
        &self.run
    }

    fn model(&self, device: &Device) -> anyhow::Result<Clip> {
        Ok(load_run_model(&self.run, device)?.0)
    }

    fn train_source(&mut self, _model: &Clip, _device: &Device) -> anyhow::Result<Batcher> {
        let (train, val) = self.run.tables()?;
        self.val = val;
        Batcher::for_training(&self.run, train, &self.tokenizer, self.config.vision.image_size())
    }

    fn to_batch(&self, batch: PairBatch, device: &Device) -> anyhow::Result<ContrastiveBatch> {
        let rows = batch.rows.len();
        let tokens = Tensor::from_data(TensorData::new(batch.tokens, [rows, self.tokenizer.context_length()]), device);
        Ok(ContrastiveBatch::new(stack_images(&batch.images, device)?, tokens)?)
    }

    fn objective(&self) -> ContrastiveObjective {
        let loss = if self.section.loss == "siglip" { ContrastiveLoss::SigLip } else { ContrastiveLoss::InfoNce };
        ContrastiveObjective { loss }
    }

    fn evaluate(&self, model: &Clip, device: &Device) -> anyhow::Result<Option<serde_json::Value>> {
        let Some(val) = self.run.val_table(self.val.as_ref())? else { return Ok(None) };
        let batcher = Batcher::for_eval(&self.run, val, &self.tokenizer, self.config.vision.image_size());
        let report = evaluate(model, &batcher, &self.tokenizer, &self.run.eval, device)?;
        Ok(Some(serde_json::to_value(report)?))
    }

    fn clip(&self, model: Clip, _device: &Device) -> anyhow::Result<Clip> {
        Ok(model)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Distribution, Int};

    #[test]
    fn a_batch_that_does_not_fit_is_an_error_not_a_panic() {
        let device = Device::flex();
        let json = r#"{"embed_dim": 8, "vision_cfg": {"image_size": 8, "layers": 1, "width": 16, "patch_size": 4,
            "head_width": 8}, "text_cfg": {"context_length": 8, "width": 16, "heads": 2, "layers": 1}}"#;
        let model = ClipConfig::from_open_clip_json(json, "test").unwrap().init(&device);
        let images = Tensor::<4>::random([2, 3, 8, 8], Distribution::Normal(0.0, 1.0), &device);
        let error = ContrastiveBatch::new(images.clone(), Tensor::<2, Int>::zeros([3, 8], &device)).unwrap_err().to_string();
        assert!(error.contains("2 images but 3 captions"), "{error}");
        let siglip = ContrastiveObjective { loss: ContrastiveLoss::SigLip };
        let fitting = ContrastiveBatch::new(images, Tensor::<2, Int>::zeros([2, 8], &device)).unwrap();
        let error = siglip.forward(&model, fitting).unwrap_err().to_string();
        assert!(error.contains("logit bias"), "{error}");
    }
}

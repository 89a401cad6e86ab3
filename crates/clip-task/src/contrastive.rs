//! The `contrastive` task: CLIP trained on image-caption pairs with InfoNCE (open_clip's
//! `ClipLoss`) or SigLIP's pairwise sigmoid loss; evaluated by zero-shot classification and
//! retrieval.

use burn::tensor::{Device, FloatDType, Int, Tensor, TensorData};
use clip_core::loss::in_default_float;
use clip_core::preprocess::stack_images;
use clip_core::{Clip, ClipConfig, ClipLoss, ClipTokenizer, FeatureLoss, ImageTower, ImageTowerConfig, Objective, SigLipLoss, StepOutput, l2_normalize};
use rand::seq::SliceRandom;

use crate::data::sample_rng;
use serde::{Deserialize, Serialize};

use crate::clip_model::{check_clip_model, clip_config, load_run_model, tokenizer_of};
use crate::config::RunContext;
use crate::eval::evaluate;
use crate::pairs::{Batcher, PairBatch, PairTable};
use crate::shards::{ShardBatcher, is_shard_spec};
use crate::task::Task;

/// Images and the token ids of their captions.
#[derive(Debug, Clone)]
pub struct ContrastiveBatch {
    /// `[batch, 3, H, W]`.
    pub(crate) images: Tensor<4>,
    /// `[batch, context_length]`.
    pub(crate) tokens: Tensor<2, Int>,
    /// The batch's training step, which seeds patch dropout.
    pub(crate) step: usize,
    /// Position of the first sample in the step's whole batch (a data-parallel shard's start),
    /// so that patch dropout draws the same patches for a sample on any device.
    pub(crate) offset: usize,
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
        Ok(Self { images, tokens, step: 0, offset: 0 })
    }

    /// The batch with the training step it was loaded for (seeding patch dropout, so that a
    /// resumed run and both passes of `train.accum_freq` drop the same patches).
    pub fn with_step(mut self, step: usize) -> Self {
        self.step = step;
        self
    }
}

/// A contrastive loss over normalized image and text embeddings, scaled by the model's
/// learnable logit scale (clamped to `[0, ln 100]` after every update). The SigLIP loss needs
/// a model with a logit bias.
#[derive(Debug, Clone, Default)]
pub struct ContrastiveObjective {
    /// The loss.
    pub loss: ContrastiveLoss,
    /// Fraction of a ViT's patch tokens dropped in training (FLIP; 0: none).
    pub patch_dropout: f64,
    /// The run's seed, with the batch's step seeding which patches are dropped.
    pub seed: u64,
}

impl Objective for ContrastiveObjective {
    type Model = Clip;
    type Batch = ContrastiveBatch;

    fn forward(&self, model: &Clip, batch: ContrastiveBatch) -> clip_core::Result<StepOutput> {
        let features = self.features_of(model, batch)?;
        self.loss_of(model, features, true)
    }

    fn after_update(&self, model: Clip) -> Clip {
        model.clamp_logit_scale()
    }

    fn feature_loss(&self) -> Option<&dyn FeatureLoss<Clip, ContrastiveBatch>> {
        Some(self)
    }

    fn cast_inputs(&self, mut batch: ContrastiveBatch, dtype: FloatDType) -> Option<ContrastiveBatch> {
        batch.images = batch.images.cast(dtype);
        Some(batch)
    }
}

impl ContrastiveObjective {
    /// Normalized image and text embeddings of `batch`, patch dropout applied.
    fn features_of(&self, model: &Clip, batch: ContrastiveBatch) -> clip_core::Result<Vec<Tensor<2>>> {
        let image = if self.patch_dropout > 0.0 {
            let ImageTower::Vit(vit) = &model.visual else {
                return Err(clip_core::ClipError::config("contrastive.patch_dropout", "patch dropout needs a ViT image tower"));
            };
            let [count, _, height, width] = batch.images.dims();
            let patches = (height / vit.patch_size) * (width / vit.patch_size);
            let keep = ((patches as f64 * (1.0 - self.patch_dropout)) as usize).max(1);
            let mut kept = Vec::with_capacity(count * keep);
            for sample in 0..count {
                let mut rng = sample_rng(self.seed ^ 0x5041_5443_4844_524f, batch.step, batch.offset + sample);
                let mut order: Vec<i64> = (0..patches as i64).collect();
                order.shuffle(&mut rng);
                let mut chosen = order[..keep].to_vec();
                chosen.sort_unstable();
                kept.extend(chosen);
            }
            let kept = Tensor::<2, Int>::from_data(TensorData::new(kept, [count, keep]), &batch.images.device());
            l2_normalize(vit.forward_kept_patches(batch.images, kept))
        } else {
            model.encode_image(batch.images, true)
        };
        Ok(vec![image, model.encode_text(batch.tokens, true)])
    }

    /// The loss of normalized `[image, text]` embeddings; the logit scale (and bias) without
    /// gradient unless `direct`.
    fn loss_of(&self, model: &Clip, features: Vec<Tensor<2>>, direct: bool) -> clip_core::Result<StepOutput> {
        let [image, text] = pair(features)?;
        self.gathered_loss(model, [image.clone(), text.clone()], [image, text], 0, direct)
    }

    /// The loss of the `local` `[image, text]` embeddings against the `gathered` ones (the local
    /// rows starting at `offset`), computed in the device's default float type (f32 under
    /// mixed precision).
    fn gathered_loss(&self, model: &Clip, local: [Tensor<2>; 2], gathered: [Tensor<2>; 2], offset: usize, direct: bool) -> clip_core::Result<StepOutput> {
        let [image, text] = local.map(in_default_float);
        let [all_image, all_text] = gathered.map(in_default_float);
        let detach_unless_direct = |t: Tensor<1>| in_default_float(if direct { t } else { t.detach() });
        let scale = detach_unless_direct(model.logit_scale());
        let logit_scale = f64::from(scale.clone().into_scalar::<f32>());
        let loss = match (self.loss, &model.logit_bias) {
            (ContrastiveLoss::SigLip, Some(bias)) => SigLipLoss { offset }.forward_gathered(image, all_text, scale, detach_unless_direct(bias.val())),
            (ContrastiveLoss::SigLip, None) => {
                return Err(clip_core::ClipError::config("model", "the SigLIP loss needs a logit bias (init_logit_bias)"));
            }
            (ContrastiveLoss::InfoNce, _) => ClipLoss { offset }.forward_gathered(image, text, all_image, all_text, scale),
        };
        Ok(StepOutput {
            loss,
            metrics: vec![("logit_scale", logit_scale)],
        })
    }
}

/// The `[image, text]` features of a contrastive loss, as many images as texts.
fn pair(features: Vec<Tensor<2>>) -> clip_core::Result<[Tensor<2>; 2]> {
    let [image, text]: [Tensor<2>; 2] = features
        .try_into()
        .map_err(|f: Vec<_>| clip_core::ClipError::Shape(format!("the contrastive loss takes 2 feature tensors, not {}", f.len())))?;
    let (count, texts) = (image.dims()[0], text.dims()[0]);
    if count != texts {
        return Err(clip_core::ClipError::Shape(format!("contrastive loss: {count} image features but {texts} text features")));
    }
    Ok([image, text])
}

/// Image and text embeddings (normalized) are the features; the loss over the concatenated
/// features of all micro-batches is the loss of the whole batch.
impl FeatureLoss<Clip, ContrastiveBatch> for ContrastiveObjective {
    fn features(&self, model: &Clip, batch: &ContrastiveBatch) -> clip_core::Result<Vec<Tensor<2>>> {
        self.features_of(model, batch.clone())
    }

    fn loss(&self, model: &Clip, features: Vec<Tensor<2>>, direct: bool) -> clip_core::Result<StepOutput> {
        self.loss_of(model, features, direct)
    }

    fn shard(&self, batch: &ContrastiveBatch, devices: &[Device]) -> clip_core::Result<Vec<ContrastiveBatch>> {
        let count = batch.images.dims()[0];
        let parts = devices.len();
        if parts == 0 || count < parts {
            return Err(clip_core::ClipError::Shape(format!("a batch of {count} samples cannot be split across {parts} devices")));
        }
        let mut start = 0;
        Ok(devices
            .iter()
            .enumerate()
            .map(|(i, device)| {
                let len = count / parts + usize::from(i < count % parts);
                let shard = ContrastiveBatch {
                    images: batch.images.clone().narrow(0, start, len).to_device(device),
                    tokens: batch.tokens.clone().narrow(0, start, len).to_device(device),
                    step: batch.step,
                    offset: batch.offset + start,
                };
                start += len;
                shard
            })
            .collect())
    }

    fn local_loss(&self, model: &Clip, local: Vec<Tensor<2>>, gathered: Vec<Tensor<2>>, offset: usize) -> clip_core::Result<StepOutput> {
        self.gathered_loss(model, pair(local)?, pair(gathered)?, offset, true)
    }
}

/// `[contrastive]`: the loss of the `contrastive` task.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ContrastiveSection {
    /// `infonce` (open_clip's ClipLoss) or `siglip` (needs a model config with
    /// `init_logit_bias`).
    pub loss: String,
    /// Fraction of the ViT's patch tokens dropped at random in training (FLIP; open_clip's
    /// `patch_dropout`), in `[0, 1)`; evaluation and inference keep every patch.
    pub patch_dropout: f64,
}

impl Default for ContrastiveSection {
    fn default() -> Self {
        Self { loss: "infonce".into(), patch_dropout: 0.0 }
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
        if !(0.0..1.0).contains(&section.patch_dropout) {
            return Err(format!("contrastive.patch_dropout = {} must be in [0, 1)", section.patch_dropout));
        }
        if section.patch_dropout > 0.0 && !matches!(config.vision, ImageTowerConfig::Vit(_)) {
            return Err(format!("contrastive.patch_dropout needs a ViT image tower; {} has a ResNet", run.model.name));
        }
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
        let image_size = self.config.vision.image_size();
        if is_shard_spec(&self.run.data.train) {
            self.val = self.run.data.val.as_ref().map(|val| PairTable::read(val, &self.run.data)).transpose()?;
            return Ok(Batcher::from_shards(ShardBatcher::for_training(&self.run, &self.tokenizer, image_size)?));
        }
        let (train, val) = self.run.tables()?;
        self.val = val;
        Batcher::for_training(&self.run, train, &self.tokenizer, image_size)
    }

    fn to_batch(&self, batch: PairBatch, device: &Device) -> anyhow::Result<ContrastiveBatch> {
        let rows = batch.rows.len();
        let tokens = Tensor::from_data(TensorData::new(batch.tokens, [rows, self.tokenizer.context_length()]), device);
        Ok(ContrastiveBatch::new(stack_images(&batch.images, device)?, tokens)?.with_step(batch.step))
    }

    fn objective(&self) -> ContrastiveObjective {
        let loss = if self.section.loss == "siglip" { ContrastiveLoss::SigLip } else { ContrastiveLoss::InfoNce };
        ContrastiveObjective { loss, patch_dropout: self.section.patch_dropout, seed: self.run.seed }
    }

    fn evaluate(&self, model: &Clip, device: &Device) -> anyhow::Result<Option<serde_json::Value>> {
        let val = match (&self.val, &self.run.data.val) {
            (None, Some(val)) if is_shard_spec(&self.run.data.train) => Some(PairTable::read(val, &self.run.data)?),
            _ if is_shard_spec(&self.run.data.train) => self.val.clone(),
            _ => self.run.val_table(self.val.as_ref())?,
        };
        let Some(val) = val else { return Ok(None) };
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
        let siglip = ContrastiveObjective { loss: ContrastiveLoss::SigLip, ..Default::default() };
        let fitting = ContrastiveBatch::new(images, Tensor::<2, Int>::zeros([2, 8], &device)).unwrap();
        let error = siglip.forward(&model, fitting).unwrap_err().to_string();
        assert!(error.contains("logit bias"), "{error}");
    }

    #[test]
    fn patch_dropout_keeps_a_seeded_subset_of_patches_in_training_only() {
        let device = Device::flex();
        let json = r#"{"embed_dim": 8, "vision_cfg": {"image_size": 16, "layers": 1, "width": 16, "patch_size": 4,
            "head_width": 8}, "text_cfg": {"context_length": 8, "width": 16, "heads": 2, "layers": 1}}"#;
        let model = ClipConfig::from_open_clip_json(json, "test").unwrap().init(&device);
        let ImageTower::Vit(vit) = &model.visual else { panic!("a ViT") };
        let images = Tensor::<4>::random([3, 3, 16, 16], Distribution::Normal(0.0, 1.0), &device);
        // Keeping every patch is the plain forward pass.
        let all = Tensor::<2, Int>::from_data(TensorData::new((0..3).flat_map(|_| 0..16i64).collect::<Vec<_>>(), [3, 16]), &device);
        let diff = (vit.forward_kept_patches(images.clone(), all) - vit.forward(images.clone())).abs().max().into_scalar::<f32>();
        assert!(diff < 1e-5, "{diff}");

        let tokens = Tensor::<2, Int>::random([3, 8], Distribution::Uniform(0.0, 400.0), &device);
        let batch = |step| ContrastiveBatch::new(images.clone(), tokens.clone()).unwrap().with_step(step);
        let image_features = |objective: &ContrastiveObjective, step| objective.features_of(&model, batch(step)).unwrap().remove(0);
        let dropping = ContrastiveObjective { patch_dropout: 0.5, seed: 1, ..Default::default() };
        let plain = ContrastiveObjective::default();
        let gap = |a: Tensor<2>, b: Tensor<2>| (a - b).abs().max().into_scalar::<f32>();
        assert!(gap(image_features(&plain, 0), model.encode_image(images.clone(), true)) < 1e-6);
        assert!(gap(image_features(&dropping, 0), image_features(&plain, 0)) > 1e-3, "patches were dropped");
        assert_eq!(gap(image_features(&dropping, 4), image_features(&dropping, 4)), 0.0, "seeded by the step");
        assert!(gap(image_features(&dropping, 4), image_features(&dropping, 5)) > 1e-4, "another step, other patches");
    }
}

//! ViLD (Gu et al., "Open-vocabulary Object Detection via Vision and Language Knowledge
//! Distillation", ICLR 2022) on the [`Detector`]: region features are projected into CLIP's
//! embedding space and classified by cosine similarity with class text embeddings and a
//! learnable background embedding (ViLD-text), while region embeddings of proposals are pulled
//! towards CLIP's image embeddings of the same crops (ViLD-image). Any list of class names can be
//! detected at test time.

use std::sync::Mutex;

use burn::config::Config;
use burn::module::{Module, Param};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::activation::softmax;
use burn::tensor::{Device, Distribution, Int, Tensor};
use clip_core::text::TextTransformer;
use clip_core::{Clip, ClipTokenizer, Objective, StepOutput, class_text_embeddings, l2_normalize};
use rand::SeedableRng;
use rand::rngs::StdRng;

use crate::boxes::{BoxXyxy, DetectOptions, Prediction, clip_boxes, select_predictions};
use crate::detector::{
    Detector, DetectorConfig, boxes_tensor, int_tensor, roi_box_coder, smooth_l1_sum, to_boxes,
    to_vec,
};
use crate::roi_align::roi_align;

/// Smooth-L1 `beta` of the box regression (torchvision's box head: 1/9).
const BOX_BETA: f32 = 1.0 / 9.0;

/// ViLD's hyper-parameters and loss weights.
#[derive(Config, Debug)]
pub struct VildConfig {
    /// The underlying two-stage detector.
    pub detector: DetectorConfig,
    /// Softmax temperature of the cosine-similarity logits.
    #[config(default = 0.01)]
    pub temperature: f32,
    /// Weight of the ViLD-text cross-entropy.
    #[config(default = 1.0)]
    pub text_weight: f32,
    /// Weight of the ViLD-image L1 distillation.
    #[config(default = 0.5)]
    pub image_weight: f32,
    /// Weight of the RPN loss.
    #[config(default = 1.0)]
    pub rpn_weight: f32,
    /// Weight of the box-regression loss.
    #[config(default = 1.0)]
    pub box_weight: f32,
}

impl VildConfig {
    /// ViLD on a copy of `clip`'s image tower, with fresh RPN, box head, projection and
    /// background embedding; an error when the tower is not a ViT (the detector reads its
    /// patch tokens).
    pub fn init_with_clip(&self, clip: &Clip, device: &Device) -> clip_core::Result<Vild> {
        let embed_dim = clip.visual.embed_dim();
        let std = 1.0 / (embed_dim as f64).sqrt();
        Ok(Vild {
            detector: self.detector.init_with_visual(clip.visual.vit("ViLD")?.clone(), device),
            projection: LinearConfig::new(self.detector.hidden, embed_dim).init(device),
            background: Param::from_tensor(Tensor::random(
                [embed_dim],
                Distribution::Normal(0.0, std),
                device,
            )),
            temperature: self.temperature,
            text: clip.text.clone().no_grad(),
        })
    }
}

/// The ViLD detector.
#[derive(Module, Debug)]
pub struct Vild {
    /// Backbone, RPN and box head.
    pub detector: Detector,
    /// Region features `[R, hidden]` → CLIP embedding `[R, D]`.
    pub projection: Linear,
    /// Learnable background embedding `[D]` (normalized before use).
    pub background: Param<Tensor<1>>,
    /// Softmax temperature of the logits.
    pub temperature: f32,
    /// CLIP's text tower (frozen), which embeds category names: saved with the detector so
    /// that inference classifies with the text embeddings training used.
    pub text: TextTransformer,
}

impl Vild {
    /// Normalized CLIP text embeddings `[names, D]` of `names`, averaged over `templates`.
    pub fn class_embeddings(&self, tokenizer: &ClipTokenizer, names: &[String], templates: &[String], device: &Device) -> clip_core::Result<Tensor<2>> {
        class_text_embeddings(|tokens| l2_normalize(self.text.forward(tokens)), tokenizer, names, templates, device)
    }

    /// L2-normalized region embeddings `[R, D]` from region features `[R, hidden]`.
    pub fn region_embeddings(&self, features: Tensor<2>) -> Tensor<2> {
        l2_normalize(self.projection.forward(features))
    }

    /// Logits `[R, 1 + C]`: cosine similarity of normalized `embeddings` `[R, D]` with the
    /// normalized background embedding (column 0) and `class_embeddings` `[C, D]` (normalized),
    /// divided by the temperature.
    pub fn logits(&self, embeddings: Tensor<2>, class_embeddings: Tensor<2>) -> Tensor<2> {
        let background = l2_normalize(self.background.val().unsqueeze_dim(0));
        let classes = Tensor::cat(vec![background, class_embeddings], 0);
        embeddings.matmul(classes.transpose()) / self.temperature
    }

    /// Detections per image of `images` `[B, 3, H, W]` among the classes of
    /// `class_embeddings` `[C, D]` (normalized): the RPN's proposals, then
    /// [`Self::detect_in_proposals`].
    pub fn detect(
        &self,
        images: Tensor<4>,
        class_embeddings: Tensor<2>,
        options: &DetectOptions,
    ) -> Vec<Vec<Prediction>> {
        let [_, _, height, width] = images.dims();
        let features = self.detector.feature_map(images);
        let rpn = self.detector.rpn(features.clone(), [height, width]);
        let proposals = self.detector.proposals(&rpn, [height, width]);
        self.classify_proposals(features, [height, width], &proposals, class_embeddings, options)
    }

    /// Detections among given `proposals` per image (input pixels, e.g. precomputed ones):
    /// region embeddings, class-agnostic box refinement (clipped to the image), softmax over
    /// background and classes, background dropped, then [`select_predictions`].
    pub fn detect_in_proposals(
        &self,
        images: Tensor<4>,
        proposals: &[Vec<BoxXyxy>],
        class_embeddings: Tensor<2>,
        options: &DetectOptions,
    ) -> Vec<Vec<Prediction>> {
        let [_, _, height, width] = images.dims();
        let features = self.detector.feature_map(images);
        self.classify_proposals(features, [height, width], proposals, class_embeddings, options)
    }

    fn classify_proposals(
        &self,
        features: Tensor<4>,
        [height, width]: [usize; 2],
        proposals: &[Vec<BoxXyxy>],
        class_embeddings: Tensor<2>,
        options: &DetectOptions,
    ) -> Vec<Vec<Prediction>> {
        let [classes, _] = class_embeddings.dims();
        let device = features.device();
        let flat: Vec<BoxXyxy> = proposals.iter().flatten().copied().collect();
        if flat.is_empty() {
            return vec![Vec::new(); proposals.len()];
        }
        let regions = self.detector.regions(features, proposals);
        let logits = self.logits(self.region_embeddings(regions.features), class_embeddings);
        let scores = to_vec(softmax(logits, 1).narrow(1, 1, classes));
        let boxes = roi_box_coder().decode(boxes_tensor(&flat, &device), regions.deltas);
        let boxes = to_boxes(clip_boxes(boxes, width as f32, height as f32));
        let mut start = 0;
        proposals
            .iter()
            .map(|image_proposals| {
                let end = start + image_proposals.len();
                let predictions = select_predictions(
                    &boxes[start..end],
                    &scores[start * classes..end * classes],
                    classes,
                    options,
                );
                start = end;
                predictions
            })
            .collect()
    }
}

/// One ViLD training batch.
#[derive(Debug, Clone)]
pub struct VildBatch {
    /// `[B, 3, S, S]` CLIP-normalized images.
    pub(crate) images: Tensor<4>,
    /// Ground-truth boxes per image, input pixels.
    pub(crate) boxes: Vec<Vec<BoxXyxy>>,
    /// Per image and box, the class index into `class_embeddings` (base classes only).
    pub(crate) labels: Vec<Vec<usize>>,
    /// Normalized text embeddings of the training classes `[C, D]`.
    pub(crate) class_embeddings: Tensor<2>,
    /// Boxes per image (usually proposals) whose CLIP embeddings are distilled.
    pub(crate) distill_boxes: Vec<Vec<BoxXyxy>>,
    /// CLIP embeddings of `distill_boxes` in order, `[sum of distill_boxes, D]` normalized
    /// (see [`crop_embeddings`]); `None` turns ViLD-image off.
    pub(crate) distill_targets: Option<Tensor<2>>,
    /// Precomputed proposals per image (input pixels) the box head trains on instead of the
    /// RPN's (the RPN is trained all the same); `None`: the RPN's.
    pub(crate) proposals: Option<Vec<Vec<BoxXyxy>>>,
}

impl VildBatch {
    /// A batch: images `[B, 3, S, S]`; per image its boxes (input pixels) and their class
    /// indices into `class_embeddings` `[C, D]`; per image the boxes whose CLIP embeddings
    /// `distill_targets` `[sum, D]` are distilled (`None`: ViLD-image off); per image the
    /// proposals the box head trains on (`None`: the RPN's). An error names any disagreement
    /// between the parts.
    pub fn new(
        images: Tensor<4>,
        boxes: Vec<Vec<BoxXyxy>>,
        labels: Vec<Vec<usize>>,
        class_embeddings: Tensor<2>,
        distill_boxes: Vec<Vec<BoxXyxy>>,
        distill_targets: Option<Tensor<2>>,
        proposals: Option<Vec<Vec<BoxXyxy>>>,
    ) -> clip_core::Result<Self> {
        let batch = Self { images, boxes, labels, class_embeddings, distill_boxes, distill_targets, proposals };
        check_batch(&batch, batch.images.dims()[0], batch.class_embeddings.dims()[0])?;
        Ok(batch)
    }
}

/// ViLD's loss: `rpn_weight * rpn + box_weight * box + text_weight * text + image_weight *
/// image`, where `box` is smooth-L1 (β = 1/9) of the foreground regions' deltas summed and
/// divided by the sampled regions, `text` the cross-entropy of [`Vild::logits`] over
/// background and the batch's classes on the sampled regions, and `image` the L1 distance
/// (summed over dimensions, averaged over boxes) between the region embeddings of
/// `distill_boxes` and `distill_targets`. Metrics: `rpn`, `box`, `text`, `image` and
/// `accuracy` (share of sampled regions whose argmax is their class, background included).
#[derive(Debug)]
pub struct VildObjective {
    config: VildConfig,
    /// Anchor and region sampling.
    rng: Mutex<StdRng>,
}

impl VildObjective {
    /// The objective of `config`; `seed` drives anchor and region sampling.
    pub fn new(config: &VildConfig, seed: u64) -> Self {
        Self {
            config: config.clone(),
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
        }
    }
}

impl Objective for VildObjective {
    type Model = Vild;
    type Batch = VildBatch;

    /// # Panics
    /// If the batch is inconsistent (label and box counts, class indices, distillation target
    /// rows): a bug in the caller that builds batches.
    fn forward(&self, model: &Vild, batch: VildBatch) -> clip_core::Result<StepOutput> {
        let [images, _, height, width] = batch.images.dims();
        let [classes, _] = batch.class_embeddings.dims();
        check_batch(&batch, images, classes)?;
        let device = batch.images.device();
        let detector = &model.detector;
        let features = detector.feature_map(batch.images);
        let rpn = detector.rpn(features.clone(), [height, width]);
        let proposals = match &batch.proposals {
            Some(given) => given.clone(),
            None => detector.proposals(&rpn, [height, width]),
        };
        let (rpn_loss, samples) = {
            let mut rng = self
                .rng
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let rpn_loss = detector.rpn_loss(&rpn, &batch.boxes, &mut *rng);
            let samples = detector.sample_rois(&proposals, &batch.boxes, &mut *rng, &device);
            (rpn_loss, samples)
        };
        let mut targets = Vec::new();
        let mut foreground = Vec::new();
        for (matched, labels) in samples.matched.iter().zip(&batch.labels) {
            for m in matched {
                if let Some(g) = m {
                    foreground.push(targets.len() as i64);
                    targets.push(labels[*g] as i64 + 1);
                } else {
                    targets.push(0);
                }
            }
        }
        let sampled = targets.len();
        let (box_loss, text_loss, accuracy) = if sampled == 0 {
            let zero = features.clone().sum() * 0.0;
            (zero.clone(), zero, 0.0)
        } else {
            let regions = detector.regions(features.clone(), &samples.rois);
            let box_loss = if foreground.is_empty() {
                regions.deltas.clone().sum() * 0.0
            } else {
                let rows = int_tensor(foreground, &device);
                smooth_l1_sum(
                    regions.deltas.select(0, rows.clone()),
                    samples.targets.select(0, rows),
                    BOX_BETA,
                ) / sampled as f32
            };
            let logits = model.logits(
                model.region_embeddings(regions.features),
                batch.class_embeddings.clone(),
            );
            let targets = int_tensor(targets, &device);
            let accuracy = argmax_accuracy(logits.clone().detach(), targets.clone());
            let text_loss = CrossEntropyLossConfig::new()
                .init(&device)
                .forward(logits, targets);
            (box_loss, text_loss, accuracy)
        };
        let distilled: usize = batch.distill_boxes.iter().map(Vec::len).sum();
        let image_loss = match batch.distill_targets {
            Some(targets) if distilled > 0 => {
                let regions = detector.regions(features, &batch.distill_boxes);
                (model.region_embeddings(regions.features) - targets.detach())
                    .abs()
                    .sum_dim(1)
                    .mean()
            }
            _ => features.sum() * 0.0,
        };
        let config = &self.config;
        let scalar = |t: &Tensor<1>| t.clone().into_scalar::<f32>() as f64;
        let metrics = vec![
            ("rpn", scalar(&rpn_loss)),
            ("box", scalar(&box_loss)),
            ("text", scalar(&text_loss)),
            ("image", scalar(&image_loss)),
            ("accuracy", accuracy),
        ];
        let loss = rpn_loss * config.rpn_weight
            + box_loss * config.box_weight
            + text_loss * config.text_weight
            + image_loss * config.image_weight;
        Ok(StepOutput { loss, metrics })
    }
}

/// Panics with a clear message when `batch` does not describe `images` images and `classes`
/// classes consistently.
fn check_batch(batch: &VildBatch, images: usize, classes: usize) -> clip_core::Result<()> {
    let error = |message: String| Err(clip_core::ClipError::Shape(format!("VildBatch: {message}")));
    if !(batch.boxes.len() == images && batch.labels.len() == images && batch.distill_boxes.len() == images) {
        return error(format!(
            "{images} images but {} box lists, {} label lists, {} distill box lists",
            batch.boxes.len(),
            batch.labels.len(),
            batch.distill_boxes.len()
        ));
    }
    for (i, (boxes, labels)) in batch.boxes.iter().zip(&batch.labels).enumerate() {
        if boxes.len() != labels.len() {
            return error(format!("image {i} has {} boxes but {} labels", boxes.len(), labels.len()));
        }
        if let Some(label) = labels.iter().find(|&&l| l >= classes) {
            return error(format!("image {i} has label {label} but only {classes} class embeddings"));
        }
    }
    if let Some(proposals) = batch.proposals.as_ref().filter(|p| p.len() != images) {
        return error(format!("{images} images but {} proposal lists", proposals.len()));
    }
    if let Some(targets) = &batch.distill_targets {
        let distilled: usize = batch.distill_boxes.iter().map(Vec::len).sum();
        if targets.dims()[0] != distilled {
            return error(format!("{} distillation targets for {distilled} distill boxes", targets.dims()[0]));
        }
    }
    Ok(())
}

/// Share of rows of `logits` `[R, K]` whose argmax is their target; `R > 0`.
fn argmax_accuracy(logits: Tensor<2>, targets: Tensor<1, Int>) -> f64 {
    let [rows, _] = logits.dims();
    let predicted: Tensor<1, Int> = logits.argmax(1).squeeze_dim(1);
    let correct = predicted.equal(targets).int().sum().into_scalar::<i64>();
    correct as f64 / rows as f64
}

/// ViLD's CLIP targets for `boxes` (per image, input pixels) of `images` `[B, 3, S, S]`
/// (CLIP-normalized): the normalized image embeddings of the 1x and 1.5x crops (see
/// [`crop_embeddings_at`]) summed and normalized again; `[R_total, D]`.
pub fn crop_embeddings(clip: &Clip, images: Tensor<4>, boxes: &[Vec<BoxXyxy>]) -> Tensor<2> {
    let one = crop_embeddings_at(clip, images.clone(), boxes, 1.0);
    let wider = crop_embeddings_at(clip, images, boxes, 1.5);
    l2_normalize(one + wider)
}

/// Normalized CLIP image embeddings `[R_total, D]` of `boxes` scaled by `scale` about their
/// centres, each cropped from `images` with RoIAlign (bilinear, adaptive sampling) to CLIP's
/// input size; parts outside the image read as zero (the mean colour after normalization).
pub fn crop_embeddings_at(
    clip: &Clip,
    images: Tensor<4>,
    boxes: &[Vec<BoxXyxy>],
    scale: f32,
) -> Tensor<2> {
    let device = images.device();
    let count: usize = boxes.iter().map(Vec::len).sum();
    if count == 0 {
        return Tensor::zeros([0, clip.visual.embed_dim()], &device);
    }
    let size = clip.visual.image_size();
    let scaled: Vec<Vec<BoxXyxy>> = boxes
        .iter()
        .map(|image_boxes| {
            image_boxes
                .iter()
                .map(|&[x1, y1, x2, y2]| {
                    let (cx, cy) = ((x1 + x2) / 2.0, (y1 + y2) / 2.0);
                    let (hw, hh) = ((x2 - x1) * scale / 2.0, (y2 - y1) * scale / 2.0);
                    [cx - hw, cy - hh, cx + hw, cy + hh]
                })
                .collect()
        })
        .collect();
    let crops = roi_align(images, &scaled, 1.0, [size, size], 0);
    clip.encode_image(crops, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detector::tests::{tiny_clip, tiny_detector_config};
    use burn::optim::{AdamWConfig, GradientsParams};
    use burn::tensor::TensorData;

    #[test]
    fn a_batch_whose_parts_disagree_is_an_error() {
        let device = Device::flex();
        let images = Tensor::<4>::zeros([2, 3, 8, 8], &device);
        let classes = Tensor::<2>::zeros([3, 4], &device);
        let one_box = vec![[0.0, 0.0, 4.0, 4.0]];
        let batch = |boxes: Vec<Vec<BoxXyxy>>, labels: Vec<Vec<usize>>| {
            VildBatch::new(images.clone(), boxes, labels, classes.clone(), vec![vec![]; 2], None, None)
        };
        assert!(batch(vec![one_box.clone(), vec![]], vec![vec![2], vec![]]).is_ok());
        let error = batch(vec![one_box.clone()], vec![vec![2]]).unwrap_err().to_string();
        assert!(error.contains("2 images but 1 box lists"), "{error}");
        let error = batch(vec![one_box.clone(), vec![]], vec![vec![3], vec![]]).unwrap_err().to_string();
        assert!(error.contains("label 3 but only 3 class embeddings"), "{error}");
        let error = batch(vec![one_box, vec![]], vec![vec![], vec![]]).unwrap_err().to_string();
        assert!(error.contains("image 0 has 1 boxes but 0 labels"), "{error}");
    }

    fn tiny_config() -> VildConfig {
        VildConfig::new(tiny_detector_config())
    }

    /// Unit vectors of dimension 16 along `axes` (rows).
    fn unit_rows(axes: &[usize], device: &Device) -> Tensor<2> {
        let mut values = vec![0.0f32; axes.len() * 16];
        for (row, &axis) in axes.iter().enumerate() {
            values[row * 16 + axis] = 1.0;
        }
        Tensor::from_data(TensorData::new(values, [axes.len(), 16]), device)
    }

    /// One 32-pixel image with two boxes of classes 0 and 1 (of 3) and two distilled boxes.
    fn tiny_batch(clip: &Clip, device: &Device) -> VildBatch {
        let images = Tensor::<4>::random([1, 3, 32, 32], Distribution::Normal(0.0, 1.0), device);
        let distill_boxes = vec![vec![[0.0, 0.0, 16.0, 16.0], [8.0, 8.0, 32.0, 24.0]]];
        let distill_targets = crop_embeddings(clip, images.clone(), &distill_boxes);
        VildBatch {
            images,
            boxes: vec![vec![[2.0, 2.0, 14.0, 14.0], [16.0, 12.0, 30.0, 30.0]]],
            labels: vec![vec![0, 1]],
            class_embeddings: unit_rows(&[1, 2, 3], device),
            distill_boxes,
            distill_targets: Some(distill_targets),
            proposals: None,
        }
    }

    #[test]
    fn text_logits_and_loss_match_hand_values() {
        let device = Device::flex();
        let clip = tiny_clip().init(&device);
        let mut vild = tiny_config().init_with_clip(&clip, &device).unwrap();
        // Background along axis 0 (scaled: it is normalized before use), classes along 1, 2.
        let mut background = vec![0.0f32; 16];
        background[0] = 3.0;
        vild.background = Param::from_tensor(Tensor::from_floats(background.as_slice(), &device));
        // A region halfway between the background and class 0 ...
        let s = std::f32::consts::FRAC_1_SQRT_2;
        let mut region = vec![0.0f32; 16];
        region[0] = s;
        region[1] = s;
        let embeddings = Tensor::<2>::from_data(TensorData::new(region, [1, 16]), &device);
        let logits = vild.logits(embeddings, unit_rows(&[1, 2], &device));
        let values = to_vec(logits.clone());
        let expected = [s / 0.01, s / 0.01, 0.0];
        for (a, b) in values.iter().zip(expected) {
            assert!((a - b).abs() < 1e-3, "{values:?}");
        }
        // ... labelled class 0 (column 1): -ln softmax = ln(e^a + e^a + 1) - a.
        let a = (s / 0.01) as f64;
        let hand = (2.0 * a.exp() + 1.0).ln() - a;
        let loss = CrossEntropyLossConfig::new()
            .init(&device)
            .forward(logits, int_tensor(vec![1], &device))
            .into_scalar::<f32>() as f64;
        assert!((loss - hand).abs() < 1e-4, "{loss} vs {hand}");
    }

    #[test]
    fn vild_loss_is_finite_and_falls_under_adamw() {
        let device = Device::flex().autodiff();
        device.seed(11);
        let clip = tiny_clip().init(&device);
        let batch = tiny_batch(&clip, &device);
        let config = tiny_config();
        let mut model = config.init_with_clip(&clip, &device).unwrap();
        let objective = VildObjective::new(&config, 5);
        let mut optimizer = AdamWConfig::new().init();
        let mut losses = Vec::new();
        for _ in 0..10 {
            let output = objective.forward(&model, batch.clone()).unwrap();
            let names: Vec<&str> = output.metrics.iter().map(|(name, _)| *name).collect();
            assert_eq!(names, ["rpn", "box", "text", "image", "accuracy"]);
            assert!(output.metrics.iter().all(|(_, v)| v.is_finite()));
            losses.push(output.loss.clone().into_scalar::<f32>());
            let grads = GradientsParams::from_grads(output.loss.backward(), &model);
            model = optimizer.step(1e-3, model, grads);
        }
        eprintln!("ViLD losses: {losses:?}");
        assert!(losses.iter().all(|l| l.is_finite()));
        assert!(losses[9] < losses[0], "ViLD loss did not fall: {losses:?}");
    }

    #[test]
    fn detect_returns_bounded_predictions_of_known_classes() {
        let device = Device::flex();
        let clip = tiny_clip().init(&device);
        let vild = tiny_config().init_with_clip(&clip, &device).unwrap();
        let images = Tensor::<4>::random([2, 3, 32, 32], Distribution::Normal(0.0, 1.0), &device);
        let options = DetectOptions {
            score_threshold: 0.0,
            nms_iou: 0.5,
            max_per_image: 5,
        };
        let predictions = vild.detect(images, unit_rows(&[1, 2, 3], &device), &options);
        assert_eq!(predictions.len(), 2);
        for image in &predictions {
            assert!(!image.is_empty() && image.len() <= 5);
            for p in image {
                assert!(p.category < 3 && (0.0..=1.0).contains(&p.score));
                assert!(p.bbox.iter().all(|v| (0.0..=32.0).contains(v)), "{p:?}");
            }
            assert!(image.windows(2).all(|w| w[0].score >= w[1].score));
        }
    }

    #[test]
    fn given_proposals_replace_the_rpn_in_training_and_detection() {
        let device = Device::flex();
        let clip = tiny_clip().init(&device);
        let vild = tiny_config().init_with_clip(&clip, &device).unwrap();
        let mut batch = tiny_batch(&clip, &device);
        let proposals = vec![vec![[1.0, 1.0, 15.0, 15.0], [17.0, 13.0, 29.0, 31.0], [0.0, 16.0, 10.0, 30.0]]];
        batch.proposals = Some(proposals.clone());
        let objective = VildObjective::new(&tiny_config(), 0);
        let output = objective.forward(&vild, batch.clone()).unwrap();
        assert!(output.loss.into_scalar::<f32>().is_finite());
        let options = DetectOptions { score_threshold: 0.0, nms_iou: 1.0, max_per_image: 100 };
        let predictions = vild.detect_in_proposals(batch.images, &proposals, unit_rows(&[1, 2, 3], &device), &options);
        // Every proposal yields one scored box per class (no NMS at IoU 1, no threshold).
        assert_eq!(predictions.len(), 1);
        assert_eq!(predictions[0].len(), 3 * 3);
    }

    #[test]
    fn whole_image_crop_at_1x_is_the_image_embedding() {
        let device = Device::flex();
        let clip = tiny_clip().init(&device);
        let images = Tensor::<4>::random([2, 3, 32, 32], Distribution::Normal(0.0, 1.0), &device);
        let whole = vec![vec![[0.0, 0.0, 32.0, 32.0]]; 2];
        let crops = to_vec(crop_embeddings_at(&clip, images.clone(), &whole, 1.0));
        let direct = to_vec(clip.encode_image(images.clone(), true));
        assert_eq!(crops.len(), direct.len());
        for (a, b) in crops.iter().zip(&direct) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
        let both = crop_embeddings(&clip, images, &whole);
        assert_eq!(both.dims(), [2, 16]);
        let norms = to_vec(both.powf_scalar(2.0).sum_dim(1));
        assert!(norms.iter().all(|n| (n - 1.0).abs() < 1e-5), "{norms:?}");
    }
}

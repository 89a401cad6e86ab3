//! GLIP's training objective: anchors matched to ground-truth boxes by IoU, a sigmoid focal
//! loss on the anchor-word alignment against each matched box's phrase tokens, and a GIoU loss
//! on the decoded boxes of positive anchors.

use std::ops::Range;

use burn::tensor::activation::{relu, sigmoid};
use burn::tensor::{Int, Tensor, TensorData};
use clip_core::{ClipError, Objective, StepOutput};

use crate::boxes::{self, BoxCoder, BoxXyxy};
use crate::glip::model::{Glip, GlipConfig, anchor_tensor};

/// Images, their prompts and their ground-truth boxes with the tokens each box grounds.
#[derive(Debug, Clone)]
pub struct GlipBatch {
    /// `[batch, 3, H, W]` preprocessed images.
    pub(crate) images: Tensor<4>,
    /// `[batch, words]` prompt token ids (one prompt per image, see `GroundingPrompt::tokens`).
    pub(crate) tokens: Tensor<2, Int>,
    /// Per image, ground-truth boxes in input pixels.
    pub(crate) boxes: Vec<Vec<BoxXyxy>>,
    /// Per image, per box, the token positions of its phrase in that image's prompt (for a
    /// category prompt, `GroundingPrompt::phrase_tokens` of the box's category).
    pub(crate) positive_tokens: Vec<Vec<Vec<Range<usize>>>>,
}

impl GlipBatch {
    /// A batch: images `[B, 3, H, W]`, one prompt's token ids per image `[B, words]`, per image
    /// its boxes (input pixels) and per box the token spans of its phrase in that image's
    /// prompt. An error names any disagreement in counts; spans outside the prompt's words are
    /// found (and named) by the objective, which knows the words.
    pub fn new(
        images: Tensor<4>,
        tokens: Tensor<2, Int>,
        boxes: Vec<Vec<BoxXyxy>>,
        positive_tokens: Vec<Vec<Vec<Range<usize>>>>,
    ) -> clip_core::Result<Self> {
        let (count, prompts) = (images.dims()[0], tokens.dims()[0]);
        if prompts != count || boxes.len() != count || positive_tokens.len() != count {
            return Err(ClipError::Shape(format!(
                "GlipBatch: {count} images, {prompts} prompts, {} box lists, {} positive-token lists",
                boxes.len(),
                positive_tokens.len()
            )));
        }
        if let Some(image) = (0..count).find(|&i| boxes[i].len() != positive_tokens[i].len()) {
            return Err(ClipError::Shape(format!(
                "GlipBatch image {image}: {} boxes but {} positive-token lists",
                boxes[image].len(),
                positive_tokens[image].len()
            )));
        }
        Ok(Self { images, tokens, boxes, positive_tokens })
    }
}

/// What an anchor is trained as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Assignment {
    /// IoU with every box below `bg_iou`: all words are negatives.
    Background,
    /// Best IoU in `[bg_iou, fg_iou)`: no loss.
    Ignored,
    /// Matched to this ground-truth box: its phrase's words are positives.
    Object(usize),
}

/// Assigns each anchor: [`Assignment::Object`] of its best box when their IoU is at least
/// `fg_iou`, [`Assignment::Background`] below `bg_iou`, [`Assignment::Ignored`] in between;
/// then each box's best anchor (the first of highest IoU, if that IoU is positive) is matched
/// to it, so every box has a positive anchor.
pub fn assign_anchors(
    anchors: &[BoxXyxy],
    ground_truth: &[BoxXyxy],
    fg_iou: f32,
    bg_iou: f32,
) -> Vec<Assignment> {
    let mut assignment: Vec<Assignment> = boxes::match_boxes(anchors, ground_truth)
        .into_iter()
        .map(|best| match best {
            Some((g, iou)) if iou >= fg_iou => Assignment::Object(g),
            Some((_, iou)) if iou >= bg_iou => Assignment::Ignored,
            _ => Assignment::Background,
        })
        .collect();
    for (g, gt) in ground_truth.iter().enumerate() {
        let best = anchors
            .iter()
            .enumerate()
            .map(|(a, anchor)| (a, boxes::iou(anchor, gt)))
            .fold(None, |best: Option<(usize, f32)>, (a, iou)| match best {
                Some((_, b)) if b >= iou => best,
                _ => Some((a, iou)),
            });
        if let Some((a, iou)) = best
            && iou > 0.0
        {
            assignment[a] = Assignment::Object(g);
        }
    }
    assignment
}

/// Sum over elements of `weights * focal(logits, targets)`, the sigmoid focal loss of Lin et
/// al. (2017): `alpha_t (1 - p_t)^gamma BCE(logits, targets)` with `p = sigmoid(logits)`,
/// computed stably from the logits. All inputs `[rows, cols]`; `[1]`.
pub fn sigmoid_focal_loss(
    logits: Tensor<2>,
    targets: Tensor<2>,
    weights: Tensor<2>,
    alpha: f32,
    gamma: f32,
) -> Tensor<1> {
    let p = sigmoid(logits.clone());
    // BCE with logits: max(x, 0) - x t + ln(1 + exp(-|x|)).
    let bce = relu(logits.clone()) - logits.clone() * targets.clone()
        + (logits.abs().neg().exp() + 1.0).log();
    let negatives = targets.clone().neg() + 1.0;
    let p_t = p.clone() * targets.clone() + (p.neg() + 1.0) * negatives.clone();
    let modulation = (p_t.neg() + 1.0).powf_scalar(gamma);
    let alpha_t = targets * alpha + negatives * (1.0 - alpha);
    (bce * modulation * alpha_t * weights).sum()
}

/// GLIP's loss: focal alignment loss over non-ignored anchors and text words, summed and
/// divided by the number of positive anchors (at least 1), plus `box_weight` times the mean
/// GIoU loss of positive anchors' decoded boxes. Metrics: `grounding` and `box` (unweighted).
#[derive(Debug, Clone)]
pub struct GlipObjective {
    fg_iou: f32,
    bg_iou: f32,
    focal_alpha: f32,
    focal_gamma: f32,
    box_weight: f32,
    coder: BoxCoder,
}

impl GlipObjective {
    /// The objective with `config`'s matching thresholds and loss weights.
    pub fn new(config: &GlipConfig) -> Self {
        Self {
            fg_iou: config.fg_iou,
            bg_iou: config.bg_iou,
            focal_alpha: config.focal_alpha,
            focal_gamma: config.focal_gamma,
            box_weight: config.box_weight,
            coder: BoxCoder::default(),
        }
    }
}

impl Objective for GlipObjective {
    type Model = Glip;
    type Batch = GlipBatch;

    /// # Panics
    /// If `boxes` or `positive_tokens` do not have one entry per image and per box, or a
    /// positive token is not a text word of the prompt (a batch-building bug).
    fn forward(&self, model: &Glip, batch: GlipBatch) -> clip_core::Result<StepOutput> {
        let output = model.forward(batch.images, batch.tokens);
        let [images, anchors, words] = output.alignment.dims();
        let device = output.alignment.device();
        if !(batch.boxes.len() == images && batch.positive_tokens.len() == images) {
            return Err(ClipError::Shape(format!(
                "GlipBatch: {images} images but {} box lists and {} positive-token lists",
                batch.boxes.len(),
                batch.positive_tokens.len()
            )));
        }
        let mut targets = vec![0.0f32; images * anchors * words];
        let mut weights = vec![0.0f32; images * anchors * words];
        let mut positive_rows = Vec::new();
        let mut positive_anchors = Vec::new();
        let mut matched = Vec::new();
        for (image, (gt, tokens)) in batch.boxes.iter().zip(&batch.positive_tokens).enumerate() {
            if gt.len() != tokens.len() {
                return Err(ClipError::Shape(format!(
                    "GlipBatch image {image}: {} boxes but {} positive-token lists",
                    gt.len(),
                    tokens.len()
                )));
            }
            let text_words = &output.text_words[image * words..(image + 1) * words];
            for (anchor, assignment) in
                assign_anchors(&output.anchors, gt, self.fg_iou, self.bg_iou)
                    .into_iter()
                    .enumerate()
            {
                let row = (image * anchors + anchor) * words;
                if assignment == Assignment::Ignored {
                    continue;
                }
                for (w, &text) in text_words.iter().enumerate() {
                    weights[row + w] = if text { 1.0 } else { 0.0 };
                }
                if let Assignment::Object(g) = assignment {
                    for w in tokens[g].iter().flat_map(|span| span.clone()) {
                        if !(w < words && text_words[w]) {
                            return Err(ClipError::Shape(format!(
                                "GlipBatch image {image} box {g}: token {w} is not a text word of its \
                                 prompt ({words} positions)"
                            )));
                        }
                        targets[row + w] = 1.0;
                    }
                    positive_rows.push((image * anchors + anchor) as i64);
                    positive_anchors.push(anchor as i64);
                    matched.extend_from_slice(&gt[g]);
                }
            }
        }
        let positives = positive_rows.len();
        let grid = |values: Vec<f32>| {
            Tensor::<2>::from_data(TensorData::new(values, [images * anchors, words]), &device)
        };
        let grounding = sigmoid_focal_loss(
            output.alignment.reshape([images * anchors, words]),
            grid(targets),
            grid(weights),
            self.focal_alpha,
            self.focal_gamma,
        ) / positives.max(1) as f32;
        let box_loss = if positives == 0 {
            output.deltas.sum() * 0.0
        } else {
            let index = |rows: Vec<i64>| {
                Tensor::<1, Int>::from_data(TensorData::new(rows, [positives]), &device)
            };
            let deltas = output
                .deltas
                .reshape([images * anchors, 4])
                .select(0, index(positive_rows));
            let reference =
                anchor_tensor(&output.anchors, &device).select(0, index(positive_anchors));
            let target = Tensor::<2>::from_data(TensorData::new(matched, [positives, 4]), &device);
            boxes::giou_loss(self.coder.decode(reference, deltas), target)
        };
        let metrics = vec![
            ("grounding", grounding.clone().into_scalar::<f32>() as f64),
            ("box", box_loss.clone().into_scalar::<f32>() as f64),
        ];
        Ok(StepOutput {
            loss: grounding + box_loss * self.box_weight,
            metrics,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::glip::model::tests::{tiny_clip, tiny_config, tiny_tokens};
    use burn::optim::{AdamWConfig, GradientsParams};
    use burn::tensor::{Device, Distribution};

    #[test]
    fn anchors_are_assigned_by_iou_and_every_box_gets_its_best_anchor() {
        let anchors = [
            [0.0, 0.0, 10.0, 10.0],   // IoU 1 with box 0
            [0.0, 0.0, 10.0, 5.0],    // IoU 0.5 with box 0
            [0.0, 0.0, 10.0, 4.5],    // IoU 0.45 with box 0: ignored
            [20.0, 20.0, 30.0, 30.0], // IoU 0.25 with box 1, its best: positive anyway
            [50.0, 50.0, 60.0, 60.0], // no overlap
        ];
        let ground_truth = [[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 40.0, 40.0]];
        assert_eq!(
            assign_anchors(&anchors, &ground_truth, 0.5, 0.4),
            [
                Assignment::Object(0),
                Assignment::Object(0),
                Assignment::Ignored,
                Assignment::Object(1),
                Assignment::Background,
            ]
        );
        assert_eq!(
            assign_anchors(&anchors, &[], 0.5, 0.4),
            [Assignment::Background; 5]
        );
    }

    #[test]
    fn focal_loss_matches_hand_computation() {
        let device = Device::flex();
        let tensor = |v: Vec<f32>| Tensor::<2>::from_data(TensorData::new(v, [1, 3]), &device);
        // x = 0, t = 1: 0.25 * 0.5^2 * ln 2. x = ln 3 (p = 0.75), t = 0: 0.75 * 0.75^2 * ln 4.
        // The third element has weight 0.
        let loss = sigmoid_focal_loss(
            tensor(vec![0.0, 3.0f32.ln(), 5.0]),
            tensor(vec![1.0, 0.0, 0.0]),
            tensor(vec![1.0, 1.0, 0.0]),
            0.25,
            2.0,
        )
        .into_scalar::<f32>();
        let expected = 0.25 * 0.25 * 2.0f32.ln() + 0.75 * 0.5625 * 4.0f32.ln();
        assert!((loss - expected).abs() < 1e-6, "{loss} vs {expected}");
    }

    #[test]
    fn adamw_steps_lower_the_loss_on_a_fixed_batch() {
        let device = Device::flex().autodiff();
        device.seed(5);
        let config = tiny_config();
        let mut model = config.init_with_clip(&tiny_clip(&device), &device).unwrap();
        let tokens: Vec<i64> = [tiny_tokens(), tiny_tokens()].concat();
        let batch = GlipBatch {
            images: Tensor::<4>::random([2, 3, 32, 32], Distribution::Normal(0.0, 1.0), &device),
            tokens: Tensor::from_data(TensorData::new(tokens, [2, 8]), &device),
            boxes: vec![
                vec![[4.0, 4.0, 20.0, 20.0]],
                vec![[10.0, 12.0, 28.0, 30.0], [0.0, 0.0, 9.0, 7.0]],
            ],
            positive_tokens: vec![vec![vec![1..2]], vec![vec![3..4], vec![1..2, 3..4]]],
        };
        let objective = GlipObjective::new(&config);
        let mut optimizer = AdamWConfig::new().init();
        let mut losses = Vec::new();
        for _ in 0..10 {
            let output = objective.forward(&model, batch.clone()).unwrap();
            let metric = |name: &str| output.metrics.iter().find(|(n, _)| *n == name).unwrap().1;
            assert!(metric("grounding").is_finite() && metric("box").is_finite());
            assert!((0.0..=2.0).contains(&metric("box")));
            losses.push(output.loss.clone().into_scalar::<f32>());
            let grads = GradientsParams::from_grads(output.loss.backward(), &model);
            model = objective.after_update(optimizer.step(3e-3, model, grads));
        }
        eprintln!("losses: {losses:?}");
        assert!(losses.iter().all(|l| l.is_finite()));
        assert!(losses[9] < 0.5 * losses[0], "loss did not fall: {losses:?}");
    }

    #[test]
    fn images_without_boxes_give_a_finite_background_only_loss() {
        let device = Device::flex().autodiff();
        device.seed(6);
        let config = tiny_config();
        let model = config.init_with_clip(&tiny_clip(&device), &device).unwrap();
        let batch = GlipBatch {
            images: Tensor::<4>::random([1, 3, 32, 32], Distribution::Normal(0.0, 1.0), &device),
            tokens: Tensor::from_data(TensorData::new(tiny_tokens(), [1, 8]), &device),
            boxes: vec![vec![]],
            positive_tokens: vec![vec![]],
        };
        let output = GlipObjective::new(&config).forward(&model, batch).unwrap();
        let loss = output.loss.clone().into_scalar::<f32>();
        assert!(loss.is_finite() && loss > 0.0, "{loss}");
        assert_eq!(output.metrics[1], ("box", 0.0));
        // Gradients flow to the alignment bias even without positives.
        let grads = output.loss.backward();
        assert!(model.alignment_bias.grad(&grads).is_some());
    }
}

//! A two-stage detector (Faster R-CNN, Ren et al., 2015) on a CLIP ViT: the patch tokens form a
//! single feature map (stride = patch size), a region proposal network scores and refines
//! anchors, and a box head pools each region with RoIAlign into a feature vector and
//! class-agnostic box deltas. Classification is left to the method on top (ViLD).

use burn::config::Config;
use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::activation::relu;
use burn::tensor::{Device, IndexingUpdateOp, Int, Tensor, TensorData};
use clip_core::vision::VisionTransformer;
use rand::Rng;
use rand::seq::SliceRandom;

use crate::boxes::{BoxCoder, BoxXyxy, anchors, clip_boxes, iou, match_boxes, nms};
use crate::roi_align::roi_align;

/// Smooth-L1 `beta` of both the RPN and the box head (torchvision's Faster R-CNN: 1/9).
const SMOOTH_L1_BETA: f32 = 1.0 / 9.0;

/// Proposals narrower or shorter than this (pixels) are dropped.
const MIN_PROPOSAL_SIZE: f32 = 1e-3;

/// Hyper-parameters of [`Detector`]; defaults follow torchvision's Faster R-CNN, with anchor
/// sizes for small inputs.
#[derive(Config, Debug)]
pub struct DetectorConfig {
    /// Anchor sides in input pixels (each anchor has area `size²`).
    #[config(default = "vec![8.0, 16.0, 32.0]")]
    pub anchor_sizes: Vec<f32>,
    /// Anchor aspect ratios `height / width`.
    #[config(default = "vec![0.5, 1.0, 2.0]")]
    pub anchor_ratios: Vec<f32>,
    /// Width of the box head's two fully connected layers (the region feature size).
    #[config(default = 256)]
    pub hidden: usize,
    /// RoIAlign output side.
    #[config(default = 7)]
    pub roi_size: usize,
    /// Anchors sampled per image for the RPN loss.
    #[config(default = 256)]
    pub rpn_batch: usize,
    /// Largest share of positives among the sampled anchors.
    #[config(default = 0.5)]
    pub rpn_positive_fraction: f32,
    /// Anchors with IoU at least this with a ground-truth box are positive.
    #[config(default = 0.7)]
    pub rpn_fg_iou: f32,
    /// Anchors whose best IoU is below this are negative.
    #[config(default = 0.3)]
    pub rpn_bg_iou: f32,
    /// Highest-scored anchors kept per image before NMS.
    #[config(default = 1000)]
    pub pre_nms: usize,
    /// Proposals kept per image after NMS.
    #[config(default = 100)]
    pub post_nms: usize,
    /// IoU threshold of the proposal NMS.
    #[config(default = 0.7)]
    pub rpn_nms_iou: f32,
    /// Regions sampled per image to train the box head.
    #[config(default = 128)]
    pub rois_per_image: usize,
    /// Largest share of foreground among the sampled regions.
    #[config(default = 0.25)]
    pub roi_positive_fraction: f32,
    /// Regions with IoU at least this with a ground-truth box are foreground, the rest
    /// background.
    #[config(default = 0.5)]
    pub roi_fg_iou: f32,
}

impl DetectorConfig {
    /// A detector on `visual` (kept as is, e.g. CLIP's pre-trained image tower) with fresh RPN
    /// and box head.
    pub fn init_with_visual(&self, visual: VisionTransformer, device: &Device) -> Detector {
        let width = visual.conv1.weight.dims()[0];
        let per_cell = self.anchor_sizes.len() * self.anchor_ratios.len();
        let rpn = Rpn {
            conv: Conv2dConfig::new([width, width], [3, 3])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init(device),
            objectness: Conv2dConfig::new([width, per_cell], [1, 1]).init(device),
            deltas: Conv2dConfig::new([width, 4 * per_cell], [1, 1]).init(device),
        };
        let pooled = width * self.roi_size * self.roi_size;
        let box_head = BoxHead {
            fc1: LinearConfig::new(pooled, self.hidden).init(device),
            fc2: LinearConfig::new(self.hidden, self.hidden).init(device),
            deltas: LinearConfig::new(self.hidden, 4).init(device),
        };
        Detector {
            backbone: visual,
            rpn,
            box_head,
            config: self.clone(),
        }
    }
}

/// The region proposal network head: a 3×3 conv + ReLU, then per anchor a 1×1 objectness
/// logit and 1×1 box deltas.
#[derive(Module, Debug)]
pub struct Rpn {
    /// `[width, width, 3, 3]`.
    pub conv: Conv2d,
    /// `[anchors per cell, width, 1, 1]`.
    pub objectness: Conv2d,
    /// `[4 * anchors per cell, width, 1, 1]`, deltas of one anchor contiguous.
    pub deltas: Conv2d,
}

/// The box head: RoIAlign features → two Linear + ReLU → region features, and a Linear to
/// class-agnostic box deltas.
#[derive(Module, Debug)]
pub struct BoxHead {
    /// `width * roi² → hidden`.
    pub fc1: Linear,
    /// `hidden → hidden`.
    pub fc2: Linear,
    /// `hidden → 4`.
    pub deltas: Linear,
}

/// Faster R-CNN on a ViT backbone.
#[derive(Module, Debug)]
pub struct Detector {
    /// CLIP's image tower; its patch tokens are the feature map.
    pub backbone: VisionTransformer,
    /// Region proposal network.
    pub rpn: Rpn,
    /// Region feature and box regression head.
    pub box_head: BoxHead,
    /// Hyper-parameters (not saved with the weights).
    #[module(skip)]
    pub config: DetectorConfig,
}

/// RPN outputs of a batch; anchors are ordered as [`anchors`]: cells row-major, then sizes ×
/// ratios.
#[derive(Debug, Clone)]
pub struct RpnOutput {
    /// Objectness logits `[B, N]`.
    pub objectness: Tensor<2>,
    /// Box deltas relative to the anchors `[B, N, 4]`.
    pub deltas: Tensor<3>,
    /// The `N` anchors, in input pixels.
    pub anchors: Vec<BoxXyxy>,
}

/// Box head outputs for a list of regions.
#[derive(Debug, Clone)]
pub struct Regions {
    /// Region features `[R, hidden]`.
    pub features: Tensor<2>,
    /// Class-agnostic deltas w.r.t. the regions `[R, 4]` (see [`roi_box_coder`]).
    pub deltas: Tensor<2>,
}

/// Regions sampled to train the box head.
#[derive(Debug, Clone)]
pub struct RoiSamples {
    /// Per image, the sampled regions (proposals and ground-truth boxes).
    pub rois: Vec<Vec<BoxXyxy>>,
    /// Per image and region, the matched ground-truth box index, `None` for background.
    pub matched: Vec<Vec<Option<usize>>>,
    /// Regression targets `[R_total, 4]` ([`roi_box_coder`] deltas of the matched box; zero
    /// for background), regions in image order.
    pub targets: Tensor<2>,
}

/// The box coder of the box head (torchvision's weights `(10, 10, 5, 5)`).
pub fn roi_box_coder() -> BoxCoder {
    BoxCoder {
        weights: [10.0, 10.0, 5.0, 5.0],
        ..BoxCoder::default()
    }
}

impl Detector {
    /// ViT patch tokens as a map `[B, width, H / patch, W / patch]` from images `[B, 3, H, W]`.
    pub fn feature_map(&self, images: Tensor<4>) -> Tensor<4> {
        let features = self.backbone.forward_features(images, false);
        let [batch, _, width] = features.patch_tokens.dims();
        let [gh, gw] = features.grid;
        features
            .patch_tokens
            .swap_dims(1, 2)
            .reshape([batch, width, gh, gw])
    }

    /// RPN objectness and deltas for every anchor of `features` (from [`Self::feature_map`])
    /// of inputs of `image_size = [height, width]`; anchors are laid out with stride
    /// `width / grid width` (the patch size), as torchvision derives it.
    pub fn rpn(&self, features: Tensor<4>, image_size: [usize; 2]) -> RpnOutput {
        let [batch, _, gh, gw] = features.dims();
        let stride = image_size[1] as f32 / gw as f32;
        let per_cell = self.config.anchor_sizes.len() * self.config.anchor_ratios.len();
        let x = relu(self.rpn.conv.forward(features));
        let objectness = self
            .rpn
            .objectness
            .forward(x.clone())
            .permute([0, 2, 3, 1])
            .reshape([batch, gh * gw * per_cell]);
        let deltas = self.rpn.deltas.forward(x).permute([0, 2, 3, 1]).reshape([
            batch,
            gh * gw * per_cell,
            4,
        ]);
        RpnOutput {
            objectness,
            deltas,
            anchors: anchors(
                [gh, gw],
                stride,
                &self.config.anchor_sizes,
                &self.config.anchor_ratios,
            ),
        }
    }

    /// The RPN loss (torchvision's): per image, anchors with IoU ≥ `rpn_fg_iou` with a
    /// ground-truth box, and the best anchors of every box, are positive, those below
    /// `rpn_bg_iou` negative; `rpn_batch` anchors are sampled with at most
    /// `rpn_positive_fraction` positives. Binary cross-entropy on their objectness plus
    /// smooth-L1 (β = 1/9, summed) on the positives' deltas, both divided by the number of
    /// sampled anchors; `[1]`. Zero when nothing is sampled.
    ///
    /// # Panics
    /// If `gt` does not hold one list per image (a caller bug).
    pub fn rpn_loss(&self, rpn: &RpnOutput, gt: &[Vec<BoxXyxy>], rng: &mut impl Rng) -> Tensor<1> {
        let [batch, count] = rpn.objectness.dims();
        assert_eq!(
            gt.len(),
            batch,
            "rpn_loss: {} box lists for {batch} images",
            gt.len()
        );
        let device = rpn.objectness.device();
        let config = &self.config;
        let mut sampled = Vec::new();
        let mut labels = Vec::new();
        let (mut positive, mut positive_anchors, mut positive_gt) =
            (Vec::new(), Vec::new(), Vec::new());
        for (b, boxes) in gt.iter().enumerate() {
            let (label, matched) =
                label_anchors(&rpn.anchors, boxes, config.rpn_fg_iou, config.rpn_bg_iou);
            let mut pos: Vec<usize> = (0..count).filter(|&i| label[i] == Some(true)).collect();
            let mut neg: Vec<usize> = (0..count).filter(|&i| label[i] == Some(false)).collect();
            pos.shuffle(rng);
            neg.shuffle(rng);
            let max_pos = (config.rpn_batch as f32 * config.rpn_positive_fraction) as usize;
            pos.truncate(max_pos);
            neg.truncate(config.rpn_batch.saturating_sub(pos.len()));
            for &i in &pos {
                sampled.push((b * count + i) as i64);
                labels.push(1.0f32);
                positive.push((b * count + i) as i64);
                positive_anchors.push(rpn.anchors[i]);
                positive_gt.push(boxes[matched[i]]);
            }
            for &i in &neg {
                sampled.push((b * count + i) as i64);
                labels.push(0.0);
            }
        }
        let logits = rpn.objectness.clone().reshape([batch * count]);
        if sampled.is_empty() {
            return logits.sum() * 0.0;
        }
        let total = sampled.len() as f32;
        let logits = logits.select(0, int_tensor(sampled, &device));
        let labels = Tensor::<1>::from_data(TensorData::new(labels, [total as usize]), &device);
        let objectness = bce_with_logits(logits, labels).sum() / total;
        if positive.is_empty() {
            return objectness;
        }
        let deltas = rpn
            .deltas
            .clone()
            .reshape([batch * count, 4])
            .select(0, int_tensor(positive, &device));
        let targets = BoxCoder::default().encode(
            boxes_tensor(&positive_anchors, &device),
            boxes_tensor(&positive_gt, &device),
        );
        objectness + smooth_l1_sum(deltas, targets, SMOOTH_L1_BETA) / total
    }

    /// Proposals per image, by descending objectness, without gradient: every anchor decoded
    /// and clipped to `image_size = [height, width]`, the `pre_nms` best kept, tiny boxes
    /// dropped, NMS at `rpn_nms_iou`, then at most `post_nms`.
    pub fn proposals(&self, rpn: &RpnOutput, image_size: [usize; 2]) -> Vec<Vec<BoxXyxy>> {
        let [batch, count] = rpn.objectness.dims();
        let device = rpn.objectness.device();
        let anchors = boxes_tensor(&rpn.anchors, &device);
        let scores = to_vec(rpn.objectness.clone().detach().reshape([batch * count]));
        (0..batch)
            .map(|b| {
                let deltas = rpn
                    .deltas
                    .clone()
                    .detach()
                    .narrow(0, b, 1)
                    .reshape([count, 4]);
                let decoded = BoxCoder::default().decode(anchors.clone(), deltas);
                let decoded = clip_boxes(decoded, image_size[1] as f32, image_size[0] as f32);
                let decoded = to_boxes(decoded);
                let scores = &scores[b * count..(b + 1) * count];
                let mut order: Vec<usize> = (0..count).collect();
                order.sort_by(|&i, &j| scores[j].total_cmp(&scores[i]));
                order.truncate(self.config.pre_nms);
                order.retain(|&i| {
                    let [x1, y1, x2, y2] = decoded[i];
                    x2 - x1 >= MIN_PROPOSAL_SIZE && y2 - y1 >= MIN_PROPOSAL_SIZE
                });
                let candidates: Vec<BoxXyxy> = order.iter().map(|&i| decoded[i]).collect();
                let candidate_scores: Vec<f32> = order.iter().map(|&i| scores[i]).collect();
                let mut kept = nms(&candidates, &candidate_scores, self.config.rpn_nms_iou);
                kept.truncate(self.config.post_nms);
                kept.into_iter().map(|k| candidates[k]).collect()
            })
            .collect()
    }

    /// Training regions per image (torchvision's box-head sampling): the proposals plus the
    /// ground-truth boxes, foreground when their best IoU with a ground-truth box is at least
    /// `roi_fg_iou`, background otherwise; `rois_per_image` sampled with at most
    /// `roi_positive_fraction` foreground.
    ///
    /// # Panics
    /// If `proposals` and `gt` differ in length (a caller bug).
    pub fn sample_rois(
        &self,
        proposals: &[Vec<BoxXyxy>],
        gt: &[Vec<BoxXyxy>],
        rng: &mut impl Rng,
        device: &Device,
    ) -> RoiSamples {
        assert_eq!(
            proposals.len(),
            gt.len(),
            "sample_rois: {} proposal lists for {} box lists",
            proposals.len(),
            gt.len()
        );
        let config = &self.config;
        let (mut rois, mut matched) = (Vec::new(), Vec::new());
        let (mut fg_rois, mut fg_gt) = (Vec::new(), Vec::new());
        let mut fg_rows = Vec::new();
        let mut row = 0;
        for (image_proposals, boxes) in proposals.iter().zip(gt) {
            let candidates: Vec<BoxXyxy> = image_proposals.iter().chain(boxes).copied().collect();
            let best: Vec<Option<usize>> = match_boxes(&candidates, boxes)
                .into_iter()
                .map(|m| m.filter(|&(_, v)| v >= config.roi_fg_iou).map(|(g, _)| g))
                .collect();
            let mut fg: Vec<usize> = (0..candidates.len())
                .filter(|&i| best[i].is_some())
                .collect();
            let mut bg: Vec<usize> = (0..candidates.len())
                .filter(|&i| best[i].is_none())
                .collect();
            fg.shuffle(rng);
            bg.shuffle(rng);
            fg.truncate((config.rois_per_image as f32 * config.roi_positive_fraction) as usize);
            bg.truncate(config.rois_per_image.saturating_sub(fg.len()));
            let chosen: Vec<usize> = fg.into_iter().chain(bg).collect();
            for &i in &chosen {
                if let Some(g) = best[i] {
                    fg_rows.push(row as i64);
                    fg_rois.push(candidates[i]);
                    fg_gt.push(boxes[g]);
                }
                row += 1;
            }
            rois.push(chosen.iter().map(|&i| candidates[i]).collect());
            matched.push(chosen.iter().map(|&i| best[i]).collect());
        }
        let mut targets = Tensor::<2>::zeros([row, 4], device);
        if !fg_rows.is_empty() {
            let encoded = roi_box_coder()
                .encode(boxes_tensor(&fg_rois, device), boxes_tensor(&fg_gt, device));
            targets = targets.select_assign(
                0,
                int_tensor(fg_rows, device),
                encoded,
                IndexingUpdateOp::Assign,
            );
        }
        RoiSamples {
            rois,
            matched,
            targets,
        }
    }

    /// Region features and deltas of `rois` (per image, input pixels) on `features` from
    /// [`Self::feature_map`]: RoIAlign to `roi_size²` (2 samples per bin side), flatten, two
    /// Linear + ReLU, and the delta Linear.
    pub fn regions(&self, features: Tensor<4>, rois: &[Vec<BoxXyxy>]) -> Regions {
        let scale = 1.0 / self.backbone.patch_size as f32;
        let size = self.config.roi_size;
        let pooled = roi_align(features, rois, scale, [size, size], 2);
        let [count, channels, _, _] = pooled.dims();
        let x = pooled.reshape([count, channels * size * size]);
        let x = relu(self.box_head.fc1.forward(x));
        let x = relu(self.box_head.fc2.forward(x));
        Regions {
            deltas: self.box_head.deltas.forward(x.clone()),
            features: x,
        }
    }
}

/// Per anchor, `Some(true)` positive, `Some(false)` negative or `None` ignored, and the index
/// of its best ground-truth box (0 without any). Besides the IoU thresholds, the anchors of
/// highest IoU with each ground-truth box are positive (Faster R-CNN's low-quality matches).
fn label_anchors(
    anchors: &[BoxXyxy],
    gt: &[BoxXyxy],
    fg: f32,
    bg: f32,
) -> (Vec<Option<bool>>, Vec<usize>) {
    if gt.is_empty() {
        return (vec![Some(false); anchors.len()], vec![0; anchors.len()]);
    }
    let ious: Vec<Vec<f32>> = anchors
        .iter()
        .map(|a| gt.iter().map(|g| iou(a, g)).collect())
        .collect();
    let mut labels = Vec::with_capacity(anchors.len());
    let mut matched = Vec::with_capacity(anchors.len());
    for row in &ious {
        let (g, v) =
            row.iter()
                .copied()
                .enumerate()
                .fold((0, f32::NEG_INFINITY), |best, (g, v)| {
                    if v > best.1 { (g, v) } else { best }
                });
        matched.push(g);
        labels.push(if v >= fg {
            Some(true)
        } else if v < bg {
            Some(false)
        } else {
            None
        });
    }
    for g in 0..gt.len() {
        let best = ious.iter().map(|row| row[g]).fold(0.0f32, f32::max);
        if best > 0.0 {
            for (a, row) in ious.iter().enumerate() {
                if row[g] == best {
                    labels[a] = Some(true);
                }
            }
        }
    }
    (labels, matched)
}

/// Elementwise binary cross-entropy of `logits` against `targets` in `[0, 1]`, computed stably
/// as `max(x, 0) - x t + ln(1 + e^{-|x|})`.
pub fn bce_with_logits<const D: usize>(logits: Tensor<D>, targets: Tensor<D>) -> Tensor<D> {
    logits.clone().clamp_min(0.0) - logits.clone() * targets
        + (logits.abs().neg().exp() + 1.0).log()
}

/// Smooth-L1 (Huber with `beta`) of `pred` against `target`, summed over all elements; `[1]`.
pub fn smooth_l1_sum(pred: Tensor<2>, target: Tensor<2>, beta: f32) -> Tensor<1> {
    let diff = (pred - target).abs();
    let small = diff.clone().lower_elem(beta);
    let quadratic = diff.clone().powf_scalar(2.0) * (0.5 / beta);
    let linear = diff - 0.5 * beta;
    linear.mask_where(small, quadratic).sum()
}

/// `[N, 4]` tensor of boxes.
pub(crate) fn boxes_tensor(boxes: &[BoxXyxy], device: &Device) -> Tensor<2> {
    let values: Vec<f32> = boxes.iter().flatten().copied().collect();
    Tensor::from_data(TensorData::new(values, [boxes.len(), 4]), device)
}

/// Boxes of an `[N, 4]` tensor.
pub(crate) fn to_boxes(boxes: Tensor<2>) -> Vec<BoxXyxy> {
    to_vec(boxes)
        .chunks(4)
        .map(|c| [c[0], c[1], c[2], c[3]])
        .collect()
}

/// The values of a float tensor, row-major.
pub(crate) fn to_vec<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().iter::<f32>().collect()
}

/// A `[N]` index tensor.
pub(crate) fn int_tensor(values: Vec<i64>, device: &Device) -> Tensor<1, Int> {
    let n = values.len();
    Tensor::from_data(TensorData::new(values, [n]), device)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use burn::optim::{AdamWConfig, GradientsParams};
    use burn::tensor::Distribution;
    use clip_core::ClipConfig;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    /// A tiny CLIP: 32-pixel images, 8-pixel patches (4x4 grid), width 32, 2 blocks; embed 16.
    pub(crate) fn tiny_clip() -> ClipConfig {
        let json = r#"{"embed_dim": 16,
            "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8,
                           "head_width": 16, "mlp_ratio": 2.0},
            "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 2,
                         "layers": 1, "mlp_ratio": 2.0}}"#;
        ClipConfig::from_open_clip_json(json, "tiny").unwrap()
    }

    /// Small detector settings for 32-pixel inputs.
    pub(crate) fn tiny_detector_config() -> DetectorConfig {
        DetectorConfig::new()
            .with_anchor_sizes(vec![8.0, 16.0])
            .with_anchor_ratios(vec![1.0])
            .with_hidden(32)
            .with_roi_size(2)
            .with_rpn_batch(16)
            .with_rois_per_image(8)
            .with_post_nms(10)
    }

    fn tiny_detector(device: &Device) -> Detector {
        tiny_detector_config().init_with_visual(tiny_clip().vision.vit("test").unwrap().init(device), device)
    }

    #[test]
    fn shapes_follow_the_patch_grid_and_anchors() {
        let device = Device::flex();
        let detector = tiny_detector(&device);
        let images = Tensor::<4>::random([2, 3, 32, 32], Distribution::Normal(0.0, 1.0), &device);
        let features = detector.feature_map(images);
        assert_eq!(features.dims(), [2, 32, 4, 4]);
        let rpn = detector.rpn(features.clone(), [32, 32]);
        assert_eq!(rpn.anchors.len(), 4 * 4 * 2);
        assert_eq!(rpn.objectness.dims(), [2, 32]);
        assert_eq!(rpn.deltas.dims(), [2, 32, 4]);
        // Cell (0, 1), second size (16): centred at (12, 4).
        assert_eq!(rpn.anchors[3], [4.0, -4.0, 20.0, 12.0]);
        let rois = vec![
            vec![[0.0, 0.0, 16.0, 16.0]],
            vec![[4.0, 4.0, 30.0, 20.0], [0.0, 0.0, 32.0, 32.0]],
        ];
        let regions = detector.regions(features, &rois);
        assert_eq!(regions.features.dims(), [3, 32]);
        assert_eq!(regions.deltas.dims(), [3, 4]);
    }

    #[test]
    fn proposals_are_decoded_sorted_clipped_and_suppressed() {
        let device = Device::flex();
        let mut detector = tiny_detector(&device);
        detector.config.post_nms = 2;
        // Zero deltas: proposals are the anchors. Anchor 1 overlaps anchor 0 (IoU 0.81 > 0.7),
        // anchor 2 crosses the border and is clipped, anchor 3 scores lowest and is cut.
        let anchors = vec![
            [0.0, 0.0, 10.0, 10.0],
            [0.0, 0.0, 10.0, 9.0],
            [20.0, 20.0, 40.0, 40.0],
            [0.0, 20.0, 5.0, 30.0],
        ];
        let rpn = RpnOutput {
            objectness: Tensor::from_data(
                TensorData::new(vec![1.0f32, 2.0, 0.5, -1.0], [1, 4]),
                &device,
            ),
            deltas: Tensor::zeros([1, 4, 4], &device),
            anchors,
        };
        let proposals = detector.proposals(&rpn, [32, 32]);
        assert_eq!(
            proposals,
            vec![vec![[0.0, 0.0, 10.0, 9.0], [20.0, 20.0, 32.0, 32.0]]]
        );
    }

    #[test]
    fn rpn_loss_is_finite_and_falls_under_adamw() {
        let device = Device::flex().autodiff();
        device.seed(3);
        let mut detector = tiny_detector(&device);
        let images = Tensor::<4>::random([1, 3, 32, 32], Distribution::Normal(0.0, 1.0), &device);
        let gt = vec![vec![[4.0, 4.0, 20.0, 20.0]]];
        let mut optimizer = AdamWConfig::new().init();
        let mut losses = Vec::new();
        for step in 0..6 {
            let mut rng = StdRng::seed_from_u64(step);
            let rpn = detector.rpn(detector.feature_map(images.clone()), [32, 32]);
            let loss = detector.rpn_loss(&rpn, &gt, &mut rng);
            losses.push(loss.clone().into_scalar::<f32>());
            let grads = GradientsParams::from_grads(loss.backward(), &detector);
            detector = optimizer.step(1e-3, detector, grads);
        }
        eprintln!("rpn losses: {losses:?}");
        assert!(losses.iter().all(|l| l.is_finite()));
        assert!(losses[5] < losses[0], "RPN loss did not fall: {losses:?}");
    }

    #[test]
    fn anchors_are_labelled_with_low_quality_matches() {
        let anchors = [
            [0.0, 0.0, 10.0, 10.0],
            [0.0, 0.0, 2.0, 2.0],
            [50.0, 50.0, 60.0, 60.0],
        ];
        // IoUs with the box: 0.5 (ignored by thresholds, but the best anchor: positive),
        // 0.08 (negative), 0 (negative).
        let (labels, matched) = label_anchors(&anchors, &[[0.0, 0.0, 10.0, 5.0]], 0.7, 0.3);
        assert_eq!(labels, vec![Some(true), Some(false), Some(false)]);
        assert_eq!(matched, vec![0, 0, 0]);
        let (labels, _) = label_anchors(&anchors, &[], 0.7, 0.3);
        assert_eq!(labels, vec![Some(false); 3]);
    }

    #[test]
    fn rois_are_sampled_with_ground_truth_and_targets() {
        let device = Device::flex();
        let detector = tiny_detector(&device);
        let proposals = vec![vec![
            [0.0, 0.0, 10.0, 10.0],
            [20.0, 20.0, 30.0, 30.0],
            [1.0, 0.0, 11.0, 10.0],
        ]];
        let gt = vec![vec![[0.0, 0.0, 10.0, 10.0]]];
        let samples = detector.sample_rois(&proposals, &gt, &mut StdRng::seed_from_u64(0), &device);
        // 4 candidates (3 proposals + the box); fg: the box twice and the shifted proposal
        // (IoU 9/11), capped at 8 * 0.25 = 2; bg: one.
        assert_eq!(samples.rois[0].len(), 3);
        let fg: Vec<usize> = (0..3)
            .filter(|&i| samples.matched[0][i].is_some())
            .collect();
        assert_eq!(fg.len(), 2);
        assert_eq!(samples.targets.dims(), [3, 4]);
        let targets = to_vec(samples.targets);
        for (i, roi) in samples.rois[0].iter().enumerate() {
            let t = &targets[4 * i..4 * i + 4];
            if samples.matched[0][i].is_none() {
                assert_eq!(roi, &[20.0, 20.0, 30.0, 30.0]);
                assert_eq!(t, [0.0; 4]);
            } else {
                // dx = 10 * (5 - cx) / 10 with cx = 6 for the shifted box, 0 otherwise.
                let dx = if roi[0] == 1.0 { -1.0 } else { 0.0 };
                assert!(
                    (t[0] - dx).abs() < 1e-5 && t[1..].iter().all(|v| v.abs() < 1e-6),
                    "{t:?}"
                );
            }
        }
    }

    #[test]
    fn losses_match_hand_values() {
        let device = Device::flex();
        let logits = Tensor::<1>::from_floats([0.0, 2.0, -3.0], &device);
        let targets = Tensor::<1>::from_floats([1.0, 0.0, 0.0], &device);
        let bce = to_vec(bce_with_logits(logits, targets));
        let expected = [
            2f32.ln(),
            2.0 + (-2f32).exp().ln_1p(),
            3f32.exp().ln_1p() - 3.0,
        ];
        for (a, b) in bce.iter().zip(expected) {
            assert!((a - b).abs() < 1e-5, "{bce:?}");
        }
        let pred = Tensor::<2>::from_floats([[0.05, 1.0]], &device);
        let target = Tensor::<2>::zeros([1, 2], &device);
        let loss = smooth_l1_sum(pred, target, 0.1).into_scalar::<f32>();
        // 0.5 * 0.05² / 0.1 + (1 - 0.05).
        assert!((loss - (0.0125 + 0.95)).abs() < 1e-6, "{loss}");
    }
}

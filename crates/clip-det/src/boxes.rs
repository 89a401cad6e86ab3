//! Axis-aligned boxes `[x1, y1, x2, y2]` in pixels: area, IoU, the GIoU loss, Faster R-CNN box
//! encoding, clipping, (class-wise) non-maximum suppression, anchors and proposal matching.
//!
//! Conventions follow torchvision: widths are `x2 - x1` (no `+1`), NMS suppresses boxes whose
//! IoU with a kept box is strictly greater than the threshold.

use burn::tensor::Tensor;

/// A box `[x1, y1, x2, y2]` in pixels.
pub type BoxXyxy = [f32; 4];

/// Area of a box; zero when it is empty or inverted.
pub fn area(b: &BoxXyxy) -> f32 {
    (b[2] - b[0]).max(0.0) * (b[3] - b[1]).max(0.0)
}

/// Intersection over union of two boxes; zero when the union is empty.
pub fn iou(a: &BoxXyxy, b: &BoxXyxy) -> f32 {
    let w = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let h = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = w * h;
    let union = area(a) + area(b) - inter;
    if union > 0.0 { inter / union } else { 0.0 }
}

/// The four coordinate columns of `[N, 4]` boxes, each `[N, 1]`.
fn columns(boxes: Tensor<2>) -> [Tensor<2>; 4] {
    [0, 1, 2, 3].map(|i| boxes.clone().narrow(1, i, 1))
}

/// Pairwise IoU of `a: [N, 4]` and `b: [M, 4]`: `[N, M]`. Empty unions give zero.
pub fn iou_tensor(a: Tensor<2>, b: Tensor<2>) -> Tensor<2> {
    let [n, _] = a.dims();
    let [m, _] = b.dims();
    let [ax1, ay1, ax2, ay2] = columns(a).map(|c| c.expand([n, m]));
    let [bx1, by1, bx2, by2] = columns(b).map(|c| c.transpose().expand([n, m]));
    let area_a =
        (ax2.clone() - ax1.clone()).clamp_min(0.0) * (ay2.clone() - ay1.clone()).clamp_min(0.0);
    let area_b =
        (bx2.clone() - bx1.clone()).clamp_min(0.0) * (by2.clone() - by1.clone()).clamp_min(0.0);
    let w = (ax2.min_pair(bx2) - ax1.max_pair(bx1)).clamp_min(0.0);
    let h = (ay2.min_pair(by2) - ay1.max_pair(by1)).clamp_min(0.0);
    let inter = w * h;
    let union = area_a + area_b - inter.clone();
    let valid = union.clone().greater_elem(0.0);
    let safe_union = union.clone().mask_fill(valid.clone().bool_not(), 1.0);
    (inter / safe_union).mask_fill(valid.bool_not(), 0.0)
}

/// Mean over rows of `1 - GIoU(pred_i, target_i)` for `[N, 4]` boxes (Rezatofighi et al., 2019),
/// differentiable in `pred`; `[1]`. As torchvision's `generalized_box_iou_loss`, unions and
/// enclosing areas get `1e-7` added before dividing. Zero when there are no rows.
pub fn giou_loss(pred: Tensor<2>, target: Tensor<2>) -> Tensor<1> {
    const EPS: f32 = 1e-7;
    let [n, _] = pred.dims();
    if n == 0 {
        return pred.sum() * 0.0;
    }
    let [px1, py1, px2, py2] = columns(pred);
    let [tx1, ty1, tx2, ty2] = columns(target);
    let area_p = (px2.clone() - px1.clone()) * (py2.clone() - py1.clone());
    let area_t = (tx2.clone() - tx1.clone()) * (ty2.clone() - ty1.clone());
    let w = (px2.clone().min_pair(tx2.clone()) - px1.clone().max_pair(tx1.clone())).clamp_min(0.0);
    let h = (py2.clone().min_pair(ty2.clone()) - py1.clone().max_pair(ty1.clone())).clamp_min(0.0);
    let inter = w * h;
    let union = area_p + area_t - inter.clone();
    let iou = inter / (union.clone() + EPS);
    let cw = px2.max_pair(tx2) - px1.min_pair(tx1);
    let ch = py2.max_pair(ty2) - py1.min_pair(ty1);
    let enclosing = cw * ch;
    let giou = iou - (enclosing.clone() - union) / (enclosing + EPS);
    (giou.neg() + 1.0).mean()
}

/// Faster R-CNN's box parameterization: `dx = wx (gx - rx) / rw`, `dy = wy (gy - ry) / rh`,
/// `dw = ww ln(gw / rw)`, `dh = wh ln(gh / rh)` of centers and sizes of a reference box `r` and a
/// target `g`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BoxCoder {
    /// `(wx, wy, ww, wh)`.
    pub weights: [f32; 4],
    /// Upper clamp of decoded `dw / ww` and `dh / wh`, so `exp` cannot overflow.
    pub max_log_scale: f32,
}

impl Default for BoxCoder {
    /// Weights `(1, 1, 1, 1)`, `max_log_scale = ln(1000 / 16)` as torchvision.
    fn default() -> Self {
        Self {
            weights: [1.0; 4],
            max_log_scale: (1000.0f32 / 16.0).ln(),
        }
    }
}

/// Centers and sizes `(cx, cy, w, h)` of `[N, 4]` boxes, each `[N, 1]`.
fn center_size(boxes: Tensor<2>) -> [Tensor<2>; 4] {
    let [x1, y1, x2, y2] = columns(boxes);
    let w = x2 - x1.clone();
    let h = y2 - y1.clone();
    [x1 + w.clone() * 0.5, y1 + h.clone() * 0.5, w, h]
}

impl BoxCoder {
    /// Deltas `[N, 4]` that take `reference: [N, 4]` onto `targets: [N, 4]`.
    pub fn encode(&self, reference: Tensor<2>, targets: Tensor<2>) -> Tensor<2> {
        let [wx, wy, ww, wh] = self.weights;
        let [rx, ry, rw, rh] = center_size(reference);
        let [gx, gy, gw, gh] = center_size(targets);
        let dx = (gx - rx) / rw.clone() * wx;
        let dy = (gy - ry) / rh.clone() * wy;
        let dw = (gw / rw).log() * ww;
        let dh = (gh / rh).log() * wh;
        Tensor::cat(vec![dx, dy, dw, dh], 1)
    }

    /// Boxes `[N, 4]` obtained by applying `deltas: [N, 4]` to `reference: [N, 4]`.
    pub fn decode(&self, reference: Tensor<2>, deltas: Tensor<2>) -> Tensor<2> {
        let [wx, wy, ww, wh] = self.weights;
        let [rx, ry, rw, rh] = center_size(reference);
        let [dx, dy, dw, dh] = columns(deltas);
        let cx = dx / wx * rw.clone() + rx;
        let cy = dy / wy * rh.clone() + ry;
        let w = (dw / ww).clamp_max(self.max_log_scale).exp() * rw;
        let h = (dh / wh).clamp_max(self.max_log_scale).exp() * rh;
        let half_w = w * 0.5;
        let half_h = h * 0.5;
        Tensor::cat(
            vec![
                cx.clone() - half_w.clone(),
                cy.clone() - half_h.clone(),
                cx + half_w,
                cy + half_h,
            ],
            1,
        )
    }
}

/// `[N, 4]` boxes clamped into the image `[0, width] x [0, height]`.
pub fn clip_boxes(boxes: Tensor<2>, width: f32, height: f32) -> Tensor<2> {
    let [x1, y1, x2, y2] = columns(boxes);
    let x = |c: Tensor<2>| c.clamp(0.0, width);
    let y = |c: Tensor<2>| c.clamp(0.0, height);
    Tensor::cat(vec![x(x1), y(y1), x(x2), y(y2)], 1)
}

/// Indices sorted by descending score; ties keep index order.
fn by_descending_score(scores: &[f32]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    order
}

/// Greedy non-maximum suppression: indices of the kept boxes by descending score. A box is
/// dropped when its IoU with an already kept box exceeds `iou_threshold`.
pub fn nms(boxes: &[BoxXyxy], scores: &[f32], iou_threshold: f32) -> Vec<usize> {
    batched_nms(boxes, scores, &vec![0; boxes.len()], iou_threshold)
}

/// [`nms`] within each class: boxes of different `classes` never suppress each other. Kept
/// indices by descending score.
///
/// # Panics
/// If `scores` or `classes` differ in length from `boxes` (a caller bug).
pub fn batched_nms(
    boxes: &[BoxXyxy],
    scores: &[f32],
    classes: &[usize],
    iou_threshold: f32,
) -> Vec<usize> {
    assert!(
        scores.len() == boxes.len() && classes.len() == boxes.len(),
        "batched_nms: {} boxes, {} scores, {} classes",
        boxes.len(),
        scores.len(),
        classes.len()
    );
    let mut kept: Vec<usize> = Vec::new();
    for i in by_descending_score(scores) {
        let suppressed = kept
            .iter()
            .any(|&k| classes[k] == classes[i] && iou(&boxes[k], &boxes[i]) > iou_threshold);
        if !suppressed {
            kept.push(i);
        }
    }
    kept
}

/// Anchors of a feature map with `grid = [rows, cols]` cells of `stride` pixels: for each cell in
/// row-major order, for each size, for each ratio (`height / width`), a box of area `size^2`
/// centered at `((col + 0.5) stride, (row + 0.5) stride)`. `rows * cols * sizes * ratios` boxes.
pub fn anchors(grid: [usize; 2], stride: f32, sizes: &[f32], ratios: &[f32]) -> Vec<BoxXyxy> {
    let shapes: Vec<(f32, f32)> = sizes
        .iter()
        .flat_map(|&size| {
            ratios
                .iter()
                .map(move |&ratio| (size / ratio.sqrt(), size * ratio.sqrt()))
        })
        .collect();
    let [rows, cols] = grid;
    let mut out = Vec::with_capacity(rows * cols * shapes.len());
    for row in 0..rows {
        for col in 0..cols {
            let cx = (col as f32 + 0.5) * stride;
            let cy = (row as f32 + 0.5) * stride;
            for &(w, h) in &shapes {
                out.push([cx - w / 2.0, cy - h / 2.0, cx + w / 2.0, cy + h / 2.0]);
            }
        }
    }
    out
}

/// For each proposal, the ground-truth box of highest IoU (first on ties) and that IoU; `None`
/// for every proposal when there is no ground truth.
pub fn match_boxes(proposals: &[BoxXyxy], ground_truth: &[BoxXyxy]) -> Vec<Option<(usize, f32)>> {
    proposals
        .iter()
        .map(|p| {
            ground_truth
                .iter()
                .enumerate()
                .map(|(g, b)| (g, iou(p, b)))
                .fold(None, |best: Option<(usize, f32)>, (g, v)| match best {
                    Some((_, bv)) if bv >= v => best,
                    _ => Some((g, v)),
                })
        })
        .collect()
}

/// One detected box: its category (an index into the class list the detector was given) and
/// score.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Prediction {
    /// `[x1, y1, x2, y2]` in pixels of the network input.
    pub bbox: BoxXyxy,
    /// Category index.
    pub category: usize,
    /// Score in `[0, 1]`.
    pub score: f32,
}

/// Post-processing of per-class box scores into [`Prediction`]s (see [`select_predictions`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DetectOptions {
    /// Scores at or below this are dropped (default 0.05).
    pub score_threshold: f32,
    /// IoU above which class-wise NMS suppresses a box (default 0.5).
    pub nms_iou: f32,
    /// At most this many predictions per image, the highest scored (default 100).
    pub max_per_image: usize,
}

impl Default for DetectOptions {
    fn default() -> Self {
        Self {
            score_threshold: 0.05,
            nms_iou: 0.5,
            max_per_image: 100,
        }
    }
}

/// Predictions of one image from `boxes: [N]` and their row-major `[N, categories]` `scores`:
/// every (box, category) pair scoring above `options.score_threshold`, then class-wise NMS, then
/// the `options.max_per_image` highest scores, by descending score.
///
/// # Panics
/// If `scores.len() != boxes.len() * categories` (a caller bug).
pub fn select_predictions(
    boxes: &[BoxXyxy],
    scores: &[f32],
    categories: usize,
    options: &DetectOptions,
) -> Vec<Prediction> {
    assert_eq!(
        scores.len(),
        boxes.len() * categories,
        "select_predictions: {} scores for {} boxes x {categories} categories",
        scores.len(),
        boxes.len()
    );
    let candidates: Vec<Prediction> = boxes
        .iter()
        .enumerate()
        .flat_map(|(i, bbox)| {
            (0..categories).filter_map(move |c| {
                let score = scores[i * categories + c];
                (score > options.score_threshold).then_some(Prediction {
                    bbox: *bbox,
                    category: c,
                    score,
                })
            })
        })
        .collect();
    let kept = batched_nms(
        &candidates.iter().map(|p| p.bbox).collect::<Vec<_>>(),
        &candidates.iter().map(|p| p.score).collect::<Vec<_>>(),
        &candidates.iter().map(|p| p.category).collect::<Vec<_>>(),
        options.nms_iou,
    );
    kept.into_iter()
        .take(options.max_per_image)
        .map(|i| candidates[i])
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, TensorData, Tolerance};

    fn tensor(rows: &[BoxXyxy], device: &Device) -> Tensor<2> {
        let values: Vec<f32> = rows.iter().flatten().copied().collect();
        Tensor::from_data(TensorData::new(values, [rows.len(), 4]), device)
    }

    fn values(t: Tensor<2>) -> Vec<f32> {
        t.into_data().try_to_vec::<f32>().unwrap()
    }

    fn close(a: &[f32], b: &[f32], tol: f32) {
        assert_eq!(a.len(), b.len(), "{a:?} vs {b:?}");
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() <= tol, "{a:?} vs {b:?}");
        }
    }

    #[test]
    fn area_and_iou_by_hand() {
        assert_eq!(area(&[0.0, 0.0, 2.0, 3.0]), 6.0);
        assert_eq!(area(&[2.0, 0.0, 1.0, 3.0]), 0.0);
        // [0,0,2,2] and [1,1,3,3]: intersection 1x1 = 1, union 4 + 4 - 1 = 7.
        assert!((iou(&[0.0, 0.0, 2.0, 2.0], &[1.0, 1.0, 3.0, 3.0]) - 1.0 / 7.0).abs() < 1e-7);
        // [0,0,4,2] contains [1,0,3,2]: intersection 4, union 8.
        assert_eq!(iou(&[0.0, 0.0, 4.0, 2.0], &[1.0, 0.0, 3.0, 2.0]), 0.5);
        assert_eq!(iou(&[0.0, 0.0, 1.0, 1.0], &[2.0, 2.0, 3.0, 3.0]), 0.0);
        assert_eq!(iou(&[1.0, 1.0, 1.0, 1.0], &[1.0, 1.0, 1.0, 1.0]), 0.0);
    }

    #[test]
    fn iou_tensor_matches_scalar_iou() {
        let device = Device::flex();
        let a = [[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 4.0, 2.0]];
        let b = [
            [1.0, 1.0, 3.0, 3.0],
            [1.0, 0.0, 3.0, 2.0],
            [5.0, 5.0, 5.0, 5.0],
        ];
        let got = values(iou_tensor(tensor(&a, &device), tensor(&b, &device)));
        let expected: Vec<f32> = a
            .iter()
            .flat_map(|x| b.iter().map(move |y| iou(x, y)))
            .collect();
        close(&got, &expected, 1e-6);
        // By hand, row-major over (a, b): [0,0,2,2] vs [1,1,3,3] 1/7; vs [1,0,3,2] 2 / (4+4-2);
        // vs the empty box 0. [0,0,4,2] vs [1,1,3,3]: 2 / (8+4-2); vs [1,0,3,2]: 4 / 8.
        close(&got, &[1.0 / 7.0, 1.0 / 3.0, 0.0, 0.2, 0.5, 0.0], 1e-6);
    }

    #[test]
    fn giou_loss_by_hand() {
        let device = Device::flex();
        // Identical boxes: GIoU 1, loss 0.
        // [0,0,1,1] vs [2,0,3,1]: IoU 0, union 2, enclosing [0,0,3,1] area 3, GIoU = -1/3,
        // loss 4/3. Mean of the two rows: 2/3.
        let pred = tensor(&[[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 1.0, 1.0]], &device);
        let target = tensor(&[[0.0, 0.0, 2.0, 2.0], [2.0, 0.0, 3.0, 1.0]], &device);
        giou_loss(pred, target)
            .into_data()
            .assert_approx_eq::<f32>(&TensorData::from([2.0f32 / 3.0]), Tolerance::absolute(1e-5));
    }

    #[test]
    fn giou_loss_has_gradients() {
        let device = Device::flex().autodiff();
        let pred = tensor(&[[0.0, 0.0, 1.0, 1.0]], &device).require_grad();
        let target = tensor(&[[0.5, 0.0, 1.5, 1.0]], &device);
        let grads = giou_loss(pred.clone(), target).backward();
        let grad = values(pred.grad(&grads).unwrap());
        // Moving x2 right grows the overlap: the loss falls.
        assert!(grad[2] < 0.0, "{grad:?}");
        let empty = Tensor::<2>::zeros([0, 4], &device);
        let loss = giou_loss(empty.clone(), empty);
        close(&loss.into_data().try_to_vec::<f32>().unwrap(), &[0.0], 0.0);
    }

    #[test]
    fn box_coder_by_hand_and_round_trip() {
        let device = Device::flex();
        let coder = BoxCoder {
            weights: [10.0, 10.0, 5.0, 5.0],
            ..BoxCoder::default()
        };
        // Reference [0,0,10,20]: center (5,10), size 10x20. Target [5,0,25,20]: center (15,10),
        // size 20x20. dx = 10 (15-5)/10 = 10, dy = 0, dw = 5 ln 2, dh = 0.
        let reference = tensor(&[[0.0, 0.0, 10.0, 20.0], [3.0, 4.0, 7.0, 12.0]], &device);
        let targets = tensor(&[[5.0, 0.0, 25.0, 20.0], [1.0, 5.0, 9.5, 8.0]], &device);
        let deltas = coder.encode(reference.clone(), targets.clone());
        close(
            &values(deltas.clone())[..4],
            &[10.0, 0.0, 5.0 * 2f32.ln(), 0.0],
            1e-5,
        );
        let decoded = coder.decode(reference, deltas);
        close(&values(decoded), &values(targets), 1e-4);
    }

    #[test]
    fn decode_clamps_the_log_scale() {
        let device = Device::flex();
        let coder = BoxCoder::default();
        let decoded = coder.decode(
            tensor(&[[0.0, 0.0, 1.0, 1.0]], &device),
            tensor(&[[0.0, 0.0, 100.0, 0.0]], &device),
        );
        // Width exp(ln(1000/16)) * 1 = 62.5 around center 0.5.
        close(
            &values(decoded),
            &[0.5 - 31.25, 0.0, 0.5 + 31.25, 1.0],
            1e-3,
        );
    }

    #[test]
    fn clip_boxes_clamps_into_the_image() {
        let device = Device::flex();
        let clipped = clip_boxes(tensor(&[[-3.0, 2.0, 50.0, 40.0]], &device), 32.0, 24.0);
        close(&values(clipped), &[0.0, 2.0, 32.0, 24.0], 0.0);
    }

    #[test]
    fn nms_keeps_the_best_of_overlapping_boxes() {
        let boxes = [
            [0.0, 0.0, 10.0, 10.0],
            [1.0, 0.0, 11.0, 10.0], // IoU with box 0: 90 / 110 = 0.818
            [20.0, 20.0, 30.0, 30.0],
            [5.0, 0.0, 15.0, 10.0], // IoU with box 0: 50 / 150 = 1/3, with box 1: 60 / 140 = 0.43
        ];
        let scores = [0.9, 0.95, 0.5, 0.6];
        // Box 1 first; box 0 (0.818) and box 3 (0.43) suppressed at 0.4, box 2 kept.
        assert_eq!(nms(&boxes, &scores, 0.4), vec![1, 2]);
        // At 0.5 box 3 survives: kept order by score 1, 3, 2.
        assert_eq!(nms(&boxes, &scores, 0.5), vec![1, 3, 2]);
        // The threshold is strict: an IoU equal to it does not suppress.
        let half = [[0.0, 0.0, 4.0, 2.0], [1.0, 0.0, 3.0, 2.0]];
        assert_eq!(nms(&half, &[1.0, 0.5], 0.5), vec![0, 1]);
        assert!(nms(&[], &[], 0.5).is_empty());
    }

    #[test]
    fn batched_nms_only_suppresses_within_a_class() {
        let boxes = [
            [0.0, 0.0, 10.0, 10.0],
            [1.0, 0.0, 11.0, 10.0],
            [0.0, 0.0, 10.0, 10.0],
        ];
        let scores = [0.9, 0.8, 0.7];
        // Box 1 overlaps box 0 in class 0 and goes; box 2 is class 1 and stays.
        assert_eq!(batched_nms(&boxes, &scores, &[0, 0, 1], 0.5), vec![0, 2]);
        assert_eq!(batched_nms(&boxes, &scores, &[0, 1, 2], 0.5), vec![0, 1, 2]);
    }

    #[test]
    fn anchor_layout() {
        let a = anchors([2, 3], 8.0, &[4.0, 8.0], &[0.25, 1.0]);
        assert_eq!(a.len(), 2 * 3 * 2 * 2);
        // Cell (row 0, col 0), size 4, ratio 1/4: w = 4 / 0.5 = 8, h = 4 * 0.5 = 2 around (4, 4).
        close(&a[0], &[0.0, 3.0, 8.0, 5.0], 1e-6);
        // Same cell, size 4, ratio 1: 4x4.
        close(&a[1], &[2.0, 2.0, 6.0, 6.0], 1e-6);
        // Same cell, size 8, ratio 1: 8x8.
        close(&a[3], &[0.0, 0.0, 8.0, 8.0], 1e-6);
        // Next cell is (row 0, col 1): center (12, 4).
        close(&a[5], &[10.0, 2.0, 14.0, 6.0], 1e-6);
        // Cell (row 1, col 0) starts at 3 cells * 4 anchors: center (4, 12).
        close(&a[12 + 1], &[2.0, 10.0, 6.0, 14.0], 1e-6);
        // Every anchor has area size^2: per cell sizes 4, 4, 8, 8.
        for (i, b) in a.iter().enumerate() {
            let size = if i % 4 < 2 { 4.0 } else { 8.0 };
            assert!((area(b) - size * size).abs() < 1e-4, "anchor {i}: {b:?}");
        }
    }

    #[test]
    fn match_boxes_picks_the_best_ground_truth() {
        let gt = [[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 4.0, 2.0]];
        let proposals = [[1.0, 0.0, 3.0, 2.0], [10.0, 10.0, 11.0, 11.0]];
        let matches = match_boxes(&proposals, &gt);
        // [1,0,3,2] vs gt 0: 2 / 6 = 1/3, vs gt 1: 4 / 8 = 1/2.
        assert_eq!(matches[0], Some((1, 0.5)));
        assert_eq!(matches[1], Some((0, 0.0)));
        assert_eq!(match_boxes(&proposals, &[]), vec![None, None]);
    }

    #[test]
    fn select_predictions_thresholds_suppresses_and_truncates() {
        let boxes = [
            [0.0, 0.0, 10.0, 10.0],
            [1.0, 0.0, 11.0, 10.0],
            [20.0, 20.0, 30.0, 30.0],
        ];
        // Rows are boxes, columns the 2 categories.
        let scores = [0.9, 0.3, 0.8, 0.04, 0.05, 0.7];
        let options = DetectOptions::default();
        let got = select_predictions(&boxes, &scores, 2, &options);
        // (1, c0) 0.8 is suppressed by (0, c0) 0.9 (IoU 0.818); (1, c1) 0.04 and (2, c0) 0.05
        // are not above the threshold; (0, c1) 0.3 is another class and stays.
        let expected = vec![
            Prediction {
                bbox: boxes[0],
                category: 0,
                score: 0.9,
            },
            Prediction {
                bbox: boxes[2],
                category: 1,
                score: 0.7,
            },
            Prediction {
                bbox: boxes[0],
                category: 1,
                score: 0.3,
            },
        ];
        assert_eq!(got, expected);
        let top2 = DetectOptions {
            max_per_image: 2,
            ..options
        };
        assert_eq!(
            select_predictions(&boxes, &scores, 2, &top2),
            expected[..2].to_vec()
        );
        let no_nms = DetectOptions {
            nms_iou: 1.0,
            ..options
        };
        assert_eq!(select_predictions(&boxes, &scores, 2, &no_nms).len(), 4);
        assert!(select_predictions(&[], &[], 2, &options).is_empty());
    }
}

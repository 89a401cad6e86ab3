//! COCO-style box average precision, computed as pycocotools' `COCOeval` (bbox, all areas):
//! per image and category the detections are matched greedily by descending score to the
//! unmatched ground truth of highest IoU; precision is interpolated at 101 recall points and
//! averaged over IoU thresholds 0.50:0.05:0.95.
//!
//! Crowd ground truth is matched as COCO: its IoU with a detection is the overlap over the
//! detection's area, it can absorb any number of detections, and detections matched to it (and
//! the crowd boxes themselves) count neither as true nor as false positives.

use std::collections::BTreeMap;

use crate::boxes::BoxXyxy;

/// COCO's `maxDets`: detections kept per image and category, the highest scored.
pub const MAX_DETECTIONS: usize = 100;
/// Number of IoU thresholds: 0.50, 0.55, ..., 0.95.
const THRESHOLDS: usize = 10;
/// Number of recall points: 0.00, 0.01, ..., 1.00.
const RECALL_POINTS: usize = 101;

/// One predicted box.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Detection {
    /// Index of the image.
    pub image: usize,
    /// Category index.
    pub category: usize,
    /// `[x1, y1, x2, y2]`, in the same pixels as the ground truth.
    pub bbox: BoxXyxy,
    /// Confidence; higher is matched first.
    pub score: f32,
}

/// One ground-truth box.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GroundTruthBox {
    /// Index of the image.
    pub image: usize,
    /// Category index.
    pub category: usize,
    /// `[x1, y1, x2, y2]`.
    pub bbox: BoxXyxy,
    /// A crowd region (see the module documentation).
    pub iscrowd: bool,
}

/// Average precision over the evaluated categories that have (non-crowd) ground truth; `NaN`
/// when none has.
#[derive(Debug, Clone, PartialEq)]
pub struct ApReport {
    /// AP averaged over IoU thresholds 0.50:0.05:0.95 (COCO's headline AP).
    pub ap: f64,
    /// AP at IoU 0.50.
    pub ap50: f64,
    /// AP at IoU 0.75.
    pub ap75: f64,
    /// AP (0.50:0.95) of each evaluated category, `None` without ground truth.
    pub per_category: Vec<(usize, Option<f64>)>,
}

impl ApReport {
    /// Mean AP (0.50:0.95) over `categories` that have ground truth (e.g. the novel categories);
    /// `None` when none of them has.
    pub fn mean_over(&self, categories: &[usize]) -> Option<f64> {
        mean(
            self.per_category
                .iter()
                .filter(|(c, _)| categories.contains(c))
                .filter_map(|&(_, ap)| ap),
        )
    }
}

fn mean(values: impl Iterator<Item = f64>) -> Option<f64> {
    let (sum, n) = values.fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    (n > 0).then(|| sum / n as f64)
}

/// Element `i` of numpy's `np.linspace(start, stop, num)`, bit for bit: COCO's thresholds and
/// recall points come from it, and `i / 100` differs from `np.linspace(0, 1, 101)[i]` in the
/// last bit for ten of the points, enough to flip a recall that lands exactly on one.
fn linspace(start: f64, stop: f64, num: usize, i: usize) -> f64 {
    if i + 1 == num {
        stop
    } else {
        i as f64 * ((stop - start) / (num - 1) as f64) + start
    }
}

/// IoU threshold `t` of COCO's `np.linspace(0.5, 0.95, 10)`.
fn threshold(t: usize) -> f64 {
    linspace(0.5, 0.95, THRESHOLDS, t)
}

/// Overlap of a detection with a ground-truth box, in double precision as pycocotools'
/// `bbIou`; for crowd boxes, the intersection over the detection's area.
fn overlap(detection: &BoxXyxy, gt: &GroundTruthBox) -> f64 {
    let [dx1, dy1, dx2, dy2] = detection.map(f64::from);
    let [gx1, gy1, gx2, gy2] = gt.bbox.map(f64::from);
    let w = dx2.min(gx2) - dx1.max(gx1);
    let h = dy2.min(gy2) - dy1.max(gy1);
    if w <= 0.0 || h <= 0.0 {
        return 0.0;
    }
    let intersection = w * h;
    let detection_area = (dx2 - dx1) * (dy2 - dy1);
    let union = if gt.iscrowd {
        detection_area
    } else {
        detection_area + (gx2 - gx1) * (gy2 - gy1) - intersection
    };
    intersection / union
}

/// What a detection counts as at one IoU threshold.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Outcome {
    TruePositive,
    FalsePositive,
    /// Matched to a crowd box.
    Ignored,
}

/// COCO's `evaluateImg` for one image and category: `detections` by descending score (at most
/// [`MAX_DETECTIONS`]), outcome of each at each threshold.
fn match_image(
    detections: &[&Detection],
    ground_truth: &[&GroundTruthBox],
) -> Vec<[Outcome; THRESHOLDS]> {
    // Non-crowd ground truth first, so a crowd box is only taken when no regular box matches.
    let mut gts: Vec<&GroundTruthBox> = ground_truth.to_vec();
    gts.sort_by_key(|g| g.iscrowd);
    let ious: Vec<Vec<f64>> = detections
        .iter()
        .map(|d| gts.iter().map(|g| overlap(&d.bbox, g)).collect())
        .collect();
    let mut outcomes = vec![[Outcome::FalsePositive; THRESHOLDS]; detections.len()];
    for t in 0..THRESHOLDS {
        let mut taken = vec![false; gts.len()];
        for (d, outcome) in outcomes.iter_mut().enumerate() {
            let mut best = threshold(t).min(1.0 - 1e-10);
            let mut matched: Option<usize> = None;
            for (g, gt) in gts.iter().enumerate() {
                if taken[g] && !gt.iscrowd {
                    continue;
                }
                if matched.is_some_and(|m| !gts[m].iscrowd) && gt.iscrowd {
                    break;
                }
                if ious[d][g] < best {
                    continue;
                }
                best = ious[d][g];
                matched = Some(g);
            }
            if let Some(m) = matched {
                taken[m] = true;
                outcome[t] = if gts[m].iscrowd {
                    Outcome::Ignored
                } else {
                    Outcome::TruePositive
                };
            }
        }
    }
    outcomes
}

/// Precision interpolated at 101 recall points and averaged (COCO's `accumulate`), from the
/// outcomes ordered by descending score and the number of non-crowd ground-truth boxes.
fn interpolated_ap(outcomes: &[Outcome], positives: usize) -> f64 {
    let mut tp = 0.0f64;
    let mut fp = 0.0f64;
    let mut recall = Vec::new();
    let mut precision = Vec::new();
    for outcome in outcomes {
        match outcome {
            Outcome::TruePositive => tp += 1.0,
            Outcome::FalsePositive => fp += 1.0,
            Outcome::Ignored => continue,
        }
        recall.push(tp / positives as f64);
        precision.push(tp / (tp + fp + f64::EPSILON));
    }
    for i in (1..precision.len()).rev() {
        precision[i - 1] = precision[i - 1].max(precision[i]);
    }
    let total: f64 = (0..RECALL_POINTS)
        .map(|r| {
            let point = linspace(0.0, 1.0, RECALL_POINTS, r);
            let first = recall.partition_point(|&x| x < point);
            precision.get(first).copied().unwrap_or(0.0)
        })
        .sum();
    total / RECALL_POINTS as f64
}

/// COCO AP of `detections` against `ground_truth` over `categories` (category indices; other
/// detections and boxes are ignored). At most [`MAX_DETECTIONS`] detections per image and
/// category count, the highest scored.
pub fn coco_ap(
    detections: &[Detection],
    ground_truth: &[GroundTruthBox],
    categories: &[usize],
) -> ApReport {
    // (category, image) -> (detections, ground truth); images in index order as COCO.
    type Cell<'a> = (Vec<&'a Detection>, Vec<&'a GroundTruthBox>);
    let mut cells: BTreeMap<(usize, usize), Cell> = BTreeMap::new();
    for d in detections
        .iter()
        .filter(|d| categories.contains(&d.category))
    {
        cells.entry((d.category, d.image)).or_default().0.push(d);
    }
    for g in ground_truth
        .iter()
        .filter(|g| categories.contains(&g.category))
    {
        cells.entry((g.category, g.image)).or_default().1.push(g);
    }
    let mut per_threshold: Vec<(usize, Option<[f64; THRESHOLDS]>)> =
        Vec::with_capacity(categories.len());
    for &category in categories {
        let mut scored: Vec<(f32, [Outcome; THRESHOLDS])> = Vec::new();
        let mut positives = 0;
        for (_, (dets, gts)) in cells.range((category, 0)..=(category, usize::MAX)) {
            let mut dets = dets.clone();
            dets.sort_by(|a, b| b.score.total_cmp(&a.score));
            dets.truncate(MAX_DETECTIONS);
            positives += gts.iter().filter(|g| !g.iscrowd).count();
            let outcomes = match_image(&dets, gts);
            scored.extend(dets.iter().map(|d| d.score).zip(outcomes));
        }
        if positives == 0 {
            per_threshold.push((category, None));
            continue;
        }
        scored.sort_by(|a, b| b.0.total_cmp(&a.0));
        let aps = std::array::from_fn(|t| {
            let outcomes: Vec<Outcome> = scored.iter().map(|(_, o)| o[t]).collect();
            interpolated_ap(&outcomes, positives)
        });
        per_threshold.push((category, Some(aps)));
    }
    let over_categories = |f: &dyn Fn(&[f64; THRESHOLDS]) -> f64| {
        mean(
            per_threshold
                .iter()
                .filter_map(|(_, aps)| aps.as_ref().map(f)),
        )
        .unwrap_or(f64::NAN)
    };
    let average = |aps: &[f64; THRESHOLDS]| aps.iter().sum::<f64>() / THRESHOLDS as f64;
    ApReport {
        ap: over_categories(&average),
        ap50: over_categories(&|aps| aps[0]),
        ap75: over_categories(&|aps| aps[5]),
        per_category: per_threshold
            .iter()
            .map(|(c, aps)| (*c, aps.as_ref().map(average)))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn det(image: usize, category: usize, bbox: BoxXyxy, score: f32) -> Detection {
        Detection {
            image,
            category,
            bbox,
            score,
        }
    }

    fn gt(image: usize, category: usize, bbox: BoxXyxy) -> GroundTruthBox {
        GroundTruthBox {
            image,
            category,
            bbox,
            iscrowd: false,
        }
    }

    const A: BoxXyxy = [0.0, 0.0, 10.0, 10.0];
    const FAR: BoxXyxy = [50.0, 50.0, 60.0, 60.0];

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-9, "{a} vs {b}");
    }

    #[test]
    fn perfect_detection_is_one() {
        let report = coco_ap(&[det(0, 0, A, 0.9)], &[gt(0, 0, A)], &[0]);
        close(report.ap, 1.0);
        close(report.ap50, 1.0);
        close(report.ap75, 1.0);
        assert_eq!(report.per_category.len(), 1);
        close(report.per_category[0].1.unwrap(), 1.0);
    }

    #[test]
    fn a_false_positive_only_costs_when_it_ranks_first() {
        // TP then FP: recall [1, 1], precision [1, 1/2]; every recall point reaches the first
        // entry, precision 1: AP 1.
        let gts = [gt(0, 0, A)];
        let report = coco_ap(&[det(0, 0, A, 0.9), det(0, 0, FAR, 0.1)], &gts, &[0]);
        close(report.ap, 1.0);
        // FP then TP: recall [0, 1], precision [0, 1/2], made monotone [1/2, 1/2]. Recall point 0
        // reads entry 0, every other point entry 1: AP 1/2 (up to COCO's 1e-16 epsilon).
        let report = coco_ap(&[det(0, 0, A, 0.1), det(0, 0, FAR, 0.9)], &gts, &[0]);
        close(report.ap, 0.5);
    }

    #[test]
    fn iou_decides_the_thresholds_a_box_counts_at() {
        // [0,0,10,5.8] against [0,0,10,10]: IoU 0.58, a hit at 0.50 and 0.55 only: AP 2/10.
        let report = coco_ap(
            &[det(0, 0, [0.0, 0.0, 10.0, 5.8], 0.9)],
            &[gt(0, 0, A)],
            &[0],
        );
        close(report.ap, 0.2);
        close(report.ap50, 1.0);
        close(report.ap75, 0.0);
    }

    #[test]
    fn missed_ground_truth_caps_recall() {
        // One of two boxes found: recall 1/2 with precision 1; recall points 0.00..0.50 (51 of
        // 101) read precision 1, the rest 0.
        let report = coco_ap(&[det(0, 0, A, 0.9)], &[gt(0, 0, A), gt(1, 0, A)], &[0]);
        close(report.ap, 51.0 / 101.0);
    }

    #[test]
    fn matching_is_greedy_by_score_and_one_to_one() {
        // Both detections overlap the single box; the higher scored one takes it, the other is a
        // false positive ranked second: AP 1. Swapping which box is exact changes nothing at
        // IoU 0.5 but the 0.58 box (ranked first) then misses at 0.6 and above, where the exact
        // box, ranked second, is the hit: precision 1/2 there. AP = (2 * 1 + 8 * 0.5) / 10.
        let near = [0.0, 0.0, 10.0, 5.8];
        let gts = [gt(0, 0, A)];
        close(
            coco_ap(&[det(0, 0, A, 0.9), det(0, 0, near, 0.8)], &gts, &[0]).ap,
            1.0,
        );
        close(
            coco_ap(&[det(0, 0, near, 0.9), det(0, 0, A, 0.8)], &gts, &[0]).ap,
            0.6,
        );
    }

    #[test]
    fn detections_matched_to_crowds_are_ignored() {
        let crowd = GroundTruthBox {
            iscrowd: true,
            ..gt(0, 0, [0.0, 0.0, 20.0, 20.0])
        };
        let inside = [0.0, 0.0, 5.0, 5.0];
        let b = [30.0, 30.0, 40.0, 40.0];
        // The detection inside the crowd (overlap over its own area: 1) is ignored although it
        // ranks first: AP 1. Two of them: both ignored, a crowd absorbs any number.
        let dets = [
            det(0, 0, inside, 0.9),
            det(0, 0, inside, 0.85),
            det(0, 0, b, 0.5),
        ];
        let report = coco_ap(&dets, &[crowd, gt(0, 0, b)], &[0]);
        close(report.ap, 1.0);
        // As a regular box it would be a false positive ranked first (IoU 25/400): AP 1/2 as
        // above, and its own box would be missed: recall caps at 1/2 too. Precision at recall
        // 1/2 is 1/2 (entries FP, TP): 51 of 101 points read 1/2.
        let regular = gt(0, 0, [0.0, 0.0, 20.0, 20.0]);
        let report = coco_ap(&dets[1..], &[regular, gt(0, 0, b)], &[0]);
        close(report.ap, 0.5 * 51.0 / 101.0);
        // Only crowd ground truth: nothing to find.
        assert_eq!(coco_ap(&dets, &[crowd], &[0]).per_category, vec![(0, None)]);
    }

    #[test]
    fn only_the_top_detections_per_image_count() {
        // 100 higher-scored false positives push the hit out of the top 100: AP 0.
        let mut dets: Vec<Detection> = (0..MAX_DETECTIONS)
            .map(|i| det(0, 0, FAR, 0.5 + i as f32 * 1e-3))
            .collect();
        dets.push(det(0, 0, A, 0.1));
        close(coco_ap(&dets, &[gt(0, 0, A)], &[0]).ap, 0.0);
        // With one false positive fewer it counts, ranked last: precision 1/100 for every point.
        close(coco_ap(&dets[1..], &[gt(0, 0, A)], &[0]).ap, 0.01);
    }

    #[test]
    fn categories_without_ground_truth_are_left_out() {
        // Category 0 perfect, 1 entirely missed, 2 has no ground truth (its detection is not a
        // penalty), 3 is not evaluated.
        let dets = [det(0, 0, A, 0.9), det(0, 2, A, 0.9), det(0, 3, FAR, 0.9)];
        let gts = [gt(0, 0, A), gt(0, 1, A), gt(0, 3, A)];
        let report = coco_ap(&dets, &gts, &[0, 1, 2]);
        let categories: Vec<usize> = report.per_category.iter().map(|(c, _)| *c).collect();
        assert_eq!(categories, vec![0, 1, 2]);
        close(report.per_category[0].1.unwrap(), 1.0);
        close(report.per_category[1].1.unwrap(), 0.0);
        assert_eq!(report.per_category[2].1, None);
        close(report.ap, 0.5);
        close(report.mean_over(&[0, 2]).unwrap(), 1.0);
        close(report.mean_over(&[1]).unwrap(), 0.0);
        assert_eq!(report.mean_over(&[2]), None);
        assert!(coco_ap(&dets, &[], &[0]).ap.is_nan());
    }

    #[test]
    fn categories_and_images_are_matched_separately() {
        // The right box in the wrong image or with the wrong category is no hit.
        let gts = [gt(0, 0, A)];
        close(coco_ap(&[det(1, 0, A, 0.9)], &gts, &[0]).ap, 0.0);
        close(coco_ap(&[det(0, 1, A, 0.9)], &gts, &[0, 1]).ap, 0.0);
    }
}

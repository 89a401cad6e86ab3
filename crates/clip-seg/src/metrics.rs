//! Segmentation metrics from a confusion matrix: pixel accuracy, per-class IoU and mIoU, as
//! mmsegmentation's `IoUMetric` defines them:
//!
//! - pixels whose target is the ignore index are dropped;
//! - IoU of class `c` = |pred = c and target = c| / (|pred = c| + |target = c| - |both|);
//! - mIoU = mean of the IoUs of the classes present in the prediction or the target (NaN
//!   IoUs skipped, as numpy's `nanmean`);
//! - pixel accuracy ("aAcc") = correctly labelled pixels / pixels with a valid target.

/// Pixel counts by (target class, predicted class), accumulated over any number of images.
///
/// Values outside `0..num_classes` (other than the ignore index) are kept in an extra "outside"
/// row and column: an out-of-range prediction counts towards its target's area but matches
/// nothing; an out-of-range target counts towards its prediction's area (as in mmsegmentation,
/// whose histograms only drop out-of-range values from their own side).
#[derive(Debug, Clone, PartialEq)]
pub struct ConfusionMatrix {
    num_classes: usize,
    /// Row-major `[target][prediction]` counts over `num_classes + 1` rows and columns.
    counts: Vec<u64>,
}

impl ConfusionMatrix {
    /// An empty matrix over classes `0..num_classes`.
    pub fn new(num_classes: usize) -> Self {
        let side = num_classes + 1;
        Self {
            num_classes,
            counts: vec![0; side * side],
        }
    }

    /// Number of classes.
    pub fn num_classes(&self) -> usize {
        self.num_classes
    }

    /// Pixels whose target is `target` and prediction `prediction` (both in `0..num_classes`).
    pub fn count(&self, target: usize, prediction: usize) -> u64 {
        self.counts[target * (self.num_classes + 1) + prediction]
    }

    /// Adds one image's (or batch's) pixels; pixels whose target is `ignore_index` are skipped.
    ///
    /// # Panics
    /// When the two slices differ in length (a caller bug, not a data problem).
    pub fn update(&mut self, predictions: &[i64], targets: &[i64], ignore_index: i64) {
        assert_eq!(
            predictions.len(),
            targets.len(),
            "predictions and targets differ in length"
        );
        let n = self.num_classes;
        let bin = |v: i64| usize::try_from(v).ok().filter(|&v| v < n).unwrap_or(n);
        for (&prediction, &target) in predictions.iter().zip(targets) {
            if target != ignore_index {
                self.counts[bin(target) * (n + 1) + bin(prediction)] += 1;
            }
        }
    }

    /// Adds the counts of another matrix over the same classes (e.g. from another worker).
    ///
    /// # Panics
    /// When the class counts differ.
    pub fn merge(&mut self, other: &ConfusionMatrix) {
        assert_eq!(
            self.num_classes, other.num_classes,
            "merging confusion matrices of different sizes"
        );
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
    }

    /// Pixels with target `class` (any prediction).
    fn target_area(&self, class: usize) -> u64 {
        let side = self.num_classes + 1;
        self.counts[class * side..(class + 1) * side].iter().sum()
    }

    /// Pixels predicted as `class` (any non-ignored target).
    fn prediction_area(&self, class: usize) -> u64 {
        let side = self.num_classes + 1;
        (0..side).map(|t| self.counts[t * side + class]).sum()
    }

    /// Correctly labelled pixels over pixels with a target in `0..num_classes`; `None` before
    /// any such pixel was seen.
    pub fn pixel_accuracy(&self) -> Option<f64> {
        let correct: u64 = (0..self.num_classes).map(|c| self.count(c, c)).sum();
        let total: u64 = (0..self.num_classes).map(|c| self.target_area(c)).sum();
        (total > 0).then(|| correct as f64 / total as f64)
    }

    /// Intersection over union per class; `None` for a class absent from both the predictions
    /// and the targets.
    pub fn iou(&self) -> Vec<Option<f64>> {
        (0..self.num_classes)
            .map(|c| {
                let intersection = self.count(c, c);
                let union = self.prediction_area(c) + self.target_area(c) - intersection;
                (union > 0).then(|| intersection as f64 / union as f64)
            })
            .collect()
    }

    /// The chance level: mIoU and pixel accuracy of labelling every pixel with the most
    /// frequent target class (the classes present are those with target pixels); `None`
    /// before any pixel was seen.
    pub fn majority_baseline(&self) -> Option<(f64, f64)> {
        let areas: Vec<u64> = (0..self.num_classes).map(|c| self.target_area(c)).collect();
        let total: u64 = areas.iter().sum();
        let largest = areas.iter().copied().max()?;
        let present = areas.iter().filter(|&&a| a > 0).count();
        (total > 0).then(|| {
            let accuracy = largest as f64 / total as f64;
            (accuracy / present as f64, accuracy)
        })
    }

    /// Mean IoU over the classes present (those with an IoU); `None` when none is.
    pub fn mean_iou(&self) -> Option<f64> {
        let present: Vec<f64> = self.iou().into_iter().flatten().collect();
        (!present.is_empty()).then(|| present.iter().sum::<f64>() / present.len() as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IGNORE: i64 = 255;

    /// Three classes, eight pixels (one ignored):
    /// target     0 0 0 1 1 2 255 0
    /// prediction 0 0 1 1 2 2   0 0
    fn example() -> ConfusionMatrix {
        let mut m = ConfusionMatrix::new(3);
        m.update(&[0, 0, 1, 1, 2, 2, 0, 0], &[0, 0, 0, 1, 1, 2, IGNORE, 0], IGNORE);
        m
    }

    #[test]
    fn majority_baseline_labels_everything_with_the_largest_class() {
        // Targets: class 0 four pixels, class 1 two, class 2 one (and one ignored).
        let (mean_iou, accuracy) = example().majority_baseline().unwrap();
        assert!((accuracy - 4.0 / 7.0).abs() < 1e-12);
        assert!((mean_iou - 4.0 / 7.0 / 3.0).abs() < 1e-12);
        assert_eq!(ConfusionMatrix::new(2).majority_baseline(), None);
    }

    #[test]
    fn hand_computed_metrics() {
        let m = example();
        // Seven valid pixels; correct: positions 0, 1, 3, 5, 7 -> 5/7.
        assert!((m.pixel_accuracy().unwrap() - 5.0 / 7.0).abs() < 1e-12);
        let iou = m.iou();
        // Class 0: intersection 3 (positions 0, 1, 7); predicted 3, target 4 -> union 3 + 4 - 3 = 4.
        assert!((iou[0].unwrap() - 3.0 / 4.0).abs() < 1e-12);
        // Class 1: intersection 1 (position 3); predicted 2 (2, 3), target 2 (3, 4) -> union 3.
        assert!((iou[1].unwrap() - 1.0 / 3.0).abs() < 1e-12);
        // Class 2: intersection 1 (position 5); predicted 2 (4, 5), target 1 -> union 2.
        assert!((iou[2].unwrap() - 1.0 / 2.0).abs() < 1e-12);
        // mIoU = (3/4 + 1/3 + 1/2) / 3 = 19/36.
        assert!((m.mean_iou().unwrap() - 19.0 / 36.0).abs() < 1e-12);
    }

    #[test]
    fn absent_classes_are_left_out_of_the_mean() {
        let mut m = ConfusionMatrix::new(4);
        // target 0 0 1 1, prediction 0 1 1 1; class 2 and 3 never appear.
        m.update(&[0, 1, 1, 1], &[0, 0, 1, 1], IGNORE);
        // Class 0: 1 / (1 + 2 - 1) = 1/2; class 1: 2 / (3 + 2 - 2) = 2/3.
        assert_eq!(m.iou()[2], None);
        assert_eq!(m.iou()[3], None);
        // mIoU = (1/2 + 2/3) / 2 = 7/12.
        assert!((m.mean_iou().unwrap() - 7.0 / 12.0).abs() < 1e-12);
    }

    #[test]
    fn a_predicted_but_absent_class_has_iou_zero() {
        let mut m = ConfusionMatrix::new(2);
        // Everything is class 0 but one pixel is predicted as 1: class 1 IoU = 0 / (1 + 0 - 0) = 0.
        m.update(&[0, 1], &[0, 0], IGNORE);
        assert_eq!(m.iou(), vec![Some(0.5), Some(0.0)]);
        // Out-of-range predictions match nothing: class 0 gains a target pixel, no prediction.
        m.update(&[7], &[0], IGNORE);
        // Class 0: intersection 1, predicted 1, target 3 -> 1/3.
        assert!((m.iou()[0].unwrap() - 1.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn merging_equals_updating_once() {
        let mut a = ConfusionMatrix::new(3);
        a.update(&[0, 0, 1, 1], &[0, 0, 0, 1], IGNORE);
        let mut b = ConfusionMatrix::new(3);
        b.update(&[2, 2, 0, 0], &[1, 2, IGNORE, 0], IGNORE);
        a.merge(&b);
        assert_eq!(a, example());
        assert_eq!(ConfusionMatrix::new(3).mean_iou(), None);
        assert_eq!(ConfusionMatrix::new(3).pixel_accuracy(), None);
    }
}

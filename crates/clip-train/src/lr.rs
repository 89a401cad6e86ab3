//! The learning-rate schedule: linear warm-up, then cosine decay to zero or a constant rate
//! (open_clip's `cosine_lr` and `const_lr`), as a pure function of the step so that resuming
//! needs nothing but the step.

/// Learning rate at `step` (0-based) of `total` steps.
pub fn learning_rate(base: f64, step: usize, warmup: usize, total: usize, cosine: bool) -> f64 {
    if step < warmup {
        return base * (step + 1) as f64 / warmup as f64;
    }
    if !cosine {
        return base;
    }
    let decay_steps = total.saturating_sub(warmup).max(1) as f64;
    let progress = (step - warmup) as f64 / decay_steps;
    0.5 * (1.0 + (std::f64::consts::PI * progress).cos()) * base
}

#[cfg(test)]
mod tests {
    use super::learning_rate;

    #[test]
    fn warms_up_linearly_then_follows_a_half_cosine() {
        assert_eq!(learning_rate(1.0, 0, 4, 104, true), 0.25);
        assert_eq!(learning_rate(1.0, 3, 4, 104, true), 1.0);
        assert_eq!(learning_rate(1.0, 4, 4, 104, true), 1.0);
        assert!((learning_rate(1.0, 54, 4, 104, true) - 0.5).abs() < 1e-12);
        assert!(learning_rate(1.0, 103, 4, 104, true) < 1e-3);
        assert_eq!(learning_rate(2.0, 50, 4, 104, false), 2.0);
    }
}

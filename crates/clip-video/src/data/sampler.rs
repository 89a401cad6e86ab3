//! Uniform (segment-based) frame sampling, as in TSN, CLIP4Clip and ActionCLIP.

use rand::Rng;

/// Picks `frames` frame indices from a video: the video is split into `frames` equal
/// segments, and each segment contributes one frame, its middle frame for evaluation and a
/// random one for training.
///
/// Segment `i` of a video of `total` frames spans `[i * total / frames, (i + 1) * total / frames)`;
/// its middle frame is `floor((i + 1/2) * total / frames)`. A video shorter than `frames`
/// has segments of less than one frame, so frames repeat: the indices are uniformly spaced
/// with repetition (3 frames sampled 6 times are `0, 0, 1, 1, 2, 2`), in training too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameSampler {
    /// Frames per clip.
    pub frames: usize,
    /// Random frame within each segment (training) instead of the middle one (evaluation).
    pub train: bool,
}

impl Default for FrameSampler {
    /// 12 frames, evaluation sampling (CLIP4Clip's MSR-VTT setting).
    fn default() -> Self {
        Self {
            frames: 12,
            train: false,
        }
    }
}

impl FrameSampler {
    /// Evaluation sampling of `frames` frames.
    pub fn eval(frames: usize) -> Self {
        Self { frames, train: false }
    }

    /// Training sampling of `frames` frames.
    pub fn train(frames: usize) -> Self {
        Self { frames, train: true }
    }

    /// `frames` indices in `0..total`, non-decreasing; empty when `total` or `frames` is 0.
    /// `rng` is only drawn from in training mode.
    pub fn indices(&self, total: usize, rng: &mut impl Rng) -> Vec<usize> {
        if total == 0 {
            return Vec::new();
        }
        let frames = self.frames;
        (0..frames)
            .map(|i| {
                let start = i * total / frames;
                let end = (i + 1) * total / frames;
                if self.train && end > start + 1 {
                    rng.random_range(start..end)
                } else {
                    (2 * i + 1) * total / (2 * frames)
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    fn eval(frames: usize, total: usize) -> Vec<usize> {
        FrameSampler::eval(frames).indices(total, &mut StdRng::seed_from_u64(0))
    }

    #[test]
    fn eval_takes_segment_middles() {
        // 24 frames in 12 segments of 2: middles floor(2i + 1) = 1, 3, ..., 23.
        assert_eq!(eval(12, 24), (0..12).map(|i| 2 * i + 1).collect::<Vec<_>>());
        // 10 frames in 4 segments of 2.5: floor(1.25), floor(3.75), floor(6.25), floor(8.75).
        assert_eq!(eval(4, 10), [1, 3, 6, 8]);
        // 8 frames in 8 segments: every frame once.
        assert_eq!(eval(8, 8), [0, 1, 2, 3, 4, 5, 6, 7]);
        // 100 frames in 3 segments of 33.3: floor(16.7), floor(50), floor(83.3).
        assert_eq!(eval(3, 100), [16, 50, 83]);
        assert_eq!(eval(1, 7), [3]);
    }

    #[test]
    fn short_videos_repeat_frames() {
        // 3 frames, 6 samples: floor(3 (2i + 1) / 12) = floor(0.25), floor(0.75), floor(1.25), ...
        assert_eq!(eval(6, 3), [0, 0, 1, 1, 2, 2]);
        // 5 frames, 8 samples: floor(5 (2i + 1) / 16) = 0, 0, 1, 2, 2, 3, 4, 4.
        assert_eq!(eval(8, 5), [0, 0, 1, 2, 2, 3, 4, 4]);
        assert_eq!(eval(4, 1), [0, 0, 0, 0]);
        let mut rng = StdRng::seed_from_u64(3);
        assert_eq!(FrameSampler::train(8).indices(5, &mut rng), eval(8, 5));
    }

    #[test]
    fn empty_inputs_give_no_indices() {
        assert!(eval(12, 0).is_empty());
        assert!(eval(0, 10).is_empty());
    }

    #[test]
    fn train_draws_within_each_segment() {
        let sampler = FrameSampler::train(4);
        let mut rng = StdRng::seed_from_u64(7);
        let mut seen = [[false; 3]; 4];
        for _ in 0..200 {
            // 12 frames in 4 segments: [0, 3), [3, 6), [6, 9), [9, 12).
            let indices = sampler.indices(12, &mut rng);
            assert_eq!(indices.len(), 4);
            for (segment, &index) in indices.iter().enumerate() {
                assert!((3 * segment..3 * segment + 3).contains(&index), "{indices:?}");
                seen[segment][index - 3 * segment] = true;
            }
        }
        assert!(
            seen.iter().all(|s| s.iter().all(|&v| v)),
            "every frame of every segment is drawn"
        );
        let first = sampler.indices(12, &mut StdRng::seed_from_u64(1));
        assert_eq!(sampler.indices(12, &mut StdRng::seed_from_u64(1)), first, "seeded");
    }
}

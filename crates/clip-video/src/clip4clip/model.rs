//! The CLIP4Clip model: CLIP per frame, a similarity calculator over the frames.

use burn::module::Module;
use burn::tensor::{Int, Tensor};
use clip_core::{Clip, l2_normalize};

use crate::clip4clip::config::SimilarityHeader;
use crate::clip4clip::cross::CrossEncoder;
use crate::clip4clip::seq_lstm::SeqLstm;
use crate::clip4clip::temporal::TemporalTransformer;

/// CLIP4Clip: CLIP encodes every sampled frame and the caption; the similarity calculator turns
/// the frame embeddings into a text-video score.
#[derive(Module, Debug)]
pub struct Clip4Clip {
    /// The CLIP model (frames through its image tower, captions through its text tower); its
    /// logit scale scales the loose-type similarities.
    pub clip: Clip,
    /// `seqLSTM`: one LSTM layer over the frames.
    pub lstm: Option<SeqLstm>,
    /// `seqTransf`: the temporal transformer.
    pub temporal: Option<TemporalTransformer>,
    /// `tightTransf`: the cross encoder.
    pub cross: Option<CrossEncoder>,
    /// The similarity calculator in use.
    #[module(skip)]
    pub similarity: SimilarityHeader,
}

impl Clip4Clip {
    /// Unnormalized per-frame CLIP image embeddings `[B, T, D]` of videos `[B, T, 3, H, W]`
    /// (CLIP-normalized frames).
    pub fn frame_features(&self, videos: Tensor<5>) -> Tensor<3> {
        let [batch, frames, channels, height, width] = videos.dims();
        let images = videos.reshape([batch * frames, channels, height, width]);
        let features = self.clip.encode_image(images, false);
        let dim = features.dims()[1];
        features.reshape([batch, frames, dim])
    }

    /// Unnormalized caption embeddings `[N, D]` from token ids `[N, context]`.
    pub fn text_features(&self, tokens: Tensor<2, Int>) -> Tensor<2> {
        self.clip.encode_text(tokens, false)
    }

    /// L2-normalized caption embeddings `[N, D]`.
    pub fn text_embeddings(&self, tokens: Tensor<2, Int>) -> Tensor<2> {
        l2_normalize(self.text_features(tokens))
    }

    /// L2-normalized video embeddings `[B, D]` from frame features `[B, T, D]`: the temporal
    /// module (identity for `meanP`; `x + LSTM(x)` for `seqLSTM`; `x + blocks(x + P)` for
    /// `seqTransf`, padded frames hidden from attention), then each frame L2-normalized, the
    /// mean over the real frames, L2-normalized again. `mask` `[B, T]` is 1 for real frames and
    /// 0 for padding (`None`: all frames are real); a video without real frames counts one, as
    /// the official code. `tightTransf` has no video embedding of its own: it returns the
    /// `meanP` pooling, which its pair scores do not use.
    pub fn pool_frames(&self, frames: Tensor<3>, mask: Option<Tensor<2>>) -> Tensor<2> {
        let frames = match (&self.lstm, &self.temporal) {
            (Some(lstm), _) => lstm.forward(frames),
            (None, Some(temporal)) => temporal.forward(frames, mask.clone()),
            (None, None) => frames,
        };
        let [batch, count, dim] = frames.dims();
        let frames = l2_normalize(frames.reshape([batch * count, dim])).reshape([batch, count, dim]);
        let pooled = match mask {
            Some(mask) => {
                let weights = mask.reshape([batch, count, 1]);
                let counts = weights.clone().sum_dim(1).reshape([batch, 1]);
                let counts = counts.clone().mask_fill(counts.equal_elem(0.0), 1.0);
                (frames * weights).sum_dim(1).reshape([batch, dim]) / counts
            }
            None => frames.mean_dim(1).reshape([batch, dim]),
        };
        l2_normalize(pooled)
    }

    /// L2-normalized video embeddings `[B, D]` of videos `[B, T, 3, H, W]` with all frames real
    /// (see [`pool_frames`](Self::pool_frames)).
    pub fn video_embeddings(&self, videos: Tensor<5>) -> Tensor<2> {
        self.pool_frames(self.frame_features(videos), None)
    }

    /// `exp(logit_scale)` of the CLIP model, `[1]`.
    pub fn logit_scale(&self) -> Tensor<1> {
        self.clip.logit_scale()
    }

    /// Clamps CLIP's log logit scale to `[0, ln 100]`.
    pub fn clamp_logit_scale(mut self) -> Self {
        self.clip = self.clip.clamp_logit_scale();
        self
    }

    /// Similarity logits `[N, B]` between caption features `[N, D]` and frame features
    /// `[B, T, D]` (both unnormalized, from [`text_features`](Self::text_features) and
    /// [`frame_features`](Self::frame_features)): `logit_scale * cos(text, video)` for the
    /// loose types, the cross encoder's score of every pair for `tightTransf`. `mask` `[B, T]`
    /// marks the real frames (see [`pool_frames`](Self::pool_frames)). Lets evaluation encode
    /// each caption and video once and score them in blocks.
    pub fn similarity_from_features(&self, text: Tensor<2>, frames: Tensor<3>, mask: Option<Tensor<2>>) -> Tensor<2> {
        match &self.cross {
            Some(cross) => {
                let [texts, dim] = text.dims();
                let [videos, count, _] = frames.dims();
                let text = text
                    .unsqueeze_dim::<3>(1)
                    .expand([texts, videos, dim])
                    .reshape([texts * videos, dim]);
                let frames = frames
                    .unsqueeze_dim::<4>(0)
                    .expand([texts, videos, count, dim])
                    .reshape([texts * videos, count, dim]);
                let mask = mask.map(|m| m.unsqueeze_dim::<3>(0).expand([texts, videos, count]).reshape([texts * videos, count]));
                cross.forward(text, frames, mask).reshape([texts, videos])
            }
            None => {
                let videos = self.pool_frames(frames, mask);
                l2_normalize(text).matmul(videos.transpose()) * self.logit_scale().unsqueeze()
            }
        }
    }

    /// Similarity logits `[N, B]` of captions `[N, context]` against videos
    /// `[B, T, 3, H, W]` (see [`similarity_from_features`](Self::similarity_from_features)).
    pub fn similarity(&self, tokens: Tensor<2, Int>, videos: Tensor<5>, mask: Option<Tensor<2>>) -> Tensor<2> {
        self.similarity_from_features(self.text_features(tokens), self.frame_features(videos), mask)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::clip4clip::config::tests::tiny_config;
    use burn::module::Param;
    use burn::tensor::{Device, Distribution, TensorData};
    use clip_fixtures::abs_diff;

    const ALL: [SimilarityHeader; 4] = [
        SimilarityHeader::MeanP,
        SimilarityHeader::SeqLstm,
        SimilarityHeader::SeqTransf,
        SimilarityHeader::TightTransf,
    ];

    pub(crate) fn videos(batch: usize, device: &Device) -> Tensor<5> {
        Tensor::random([batch, 4, 3, 16, 16], Distribution::Normal(0.0, 1.0), device)
    }

    pub(crate) fn tokens(rows: usize, device: &Device) -> Tensor<2, Int> {
        let ids: Vec<i64> = (0..rows)
            .flat_map(|i| [1, 2 + i as i64, 10 + i as i64, 63, 0, 0])
            .collect();
        Tensor::from_data(TensorData::new(ids, [rows, 6]), device)
    }

    fn values<const D: usize>(x: Tensor<D>) -> Vec<f32> {
        x.into_data().iter::<f32>().collect()
    }

    #[test]
    fn every_header_gives_text_by_video_logits() {
        let device = Device::flex();
        device.seed(1);
        for header in ALL {
            let model = tiny_config(header).init(&device).unwrap();
            assert_eq!(model.video_embeddings(videos(2, &device)).dims(), [2, 32], "{header:?}");
            assert_eq!(model.text_embeddings(tokens(3, &device)).dims(), [3, 32]);
            let sim = model.similarity(tokens(3, &device), videos(2, &device), None);
            assert_eq!(sim.dims(), [3, 2], "{header:?}");
            assert!(values(sim).iter().all(|v| v.is_finite()), "{header:?}");
        }
    }

    #[test]
    fn mean_p_is_the_mean_of_normalized_frames() {
        let device = Device::flex();
        device.seed(2);
        let model = tiny_config(SimilarityHeader::MeanP).init(&device).unwrap();
        let clips = videos(2, &device);
        let frames = model.clip.encode_image(clips.clone().reshape([8, 3, 16, 16]), true);
        let expected = l2_normalize(frames.reshape([2, 4, 32]).mean_dim(1).reshape([2, 32]));
        let (max, _) = abs_diff(&values(model.video_embeddings(clips)), &values(expected));
        assert!(max < 1e-6, "max abs diff {max}");
    }

    #[test]
    fn frame_order_matters_only_to_sequential_headers() {
        let device = Device::flex();
        device.seed(3);
        let clips = videos(2, &device);
        let reversed = clips.clone().flip([1]);
        for header in [
            SimilarityHeader::MeanP,
            SimilarityHeader::SeqLstm,
            SimilarityHeader::SeqTransf,
        ] {
            let mut model = tiny_config(header).init(&device).unwrap();
            if let Some(temporal) = model.temporal.as_mut() {
                // Unit-scale positions, so that order changes the output well above rounding.
                temporal.frame_position_embeddings =
                    Param::from_tensor(Tensor::random([4, 32], Distribution::Normal(0.0, 1.0), &device));
            }
            let (max, _) = abs_diff(
                &values(model.video_embeddings(clips.clone())),
                &values(model.video_embeddings(reversed.clone())),
            );
            eprintln!("{header:?}: max change {max}");
            if header == SimilarityHeader::MeanP {
                assert!(max < 1e-6, "meanP depends on frame order: {max}");
            } else {
                assert!(max > 1e-4, "{header:?} ignores frame order: {max}");
            }
        }
    }

    #[test]
    fn tight_scores_are_per_pair() {
        let device = Device::flex();
        device.seed(4);
        let model = tiny_config(SimilarityHeader::TightTransf).init(&device).unwrap();
        let clips = videos(2, &device);
        let all = model.similarity(tokens(3, &device), clips.clone(), None);
        // Scoring one caption against one video alone gives the same entry.
        let one = model.similarity(tokens(3, &device).narrow(0, 2, 1), clips.narrow(0, 1, 1), None);
        let (max, _) = abs_diff(&values(all.narrow(0, 2, 1).narrow(1, 1, 1)), &values(one));
        assert!(max < 1e-5, "max abs diff {max}");
    }

    #[test]
    fn seq_transf_starts_from_the_text_tower() {
        let device = Device::flex();
        let model = tiny_config(SimilarityHeader::SeqTransf).init(&device).unwrap();
        let temporal = model.temporal.as_ref().unwrap();
        let text = &model.clip.text.transformer.resblocks[0].attn.query.weight;
        let copy = &temporal.transformer.resblocks[0].attn.query.weight;
        assert_eq!(values(text.val()), values(copy.val()));
        assert_ne!(text.id, copy.id, "the copy must be a parameter of its own");
        let positions = model.clip.text.positional_embedding.val().narrow(0, 0, 4);
        assert_eq!(values(positions), values(temporal.frame_position_embeddings.val()));
        let fresh = tiny_config(SimilarityHeader::SeqTransf)
            .with_init_from_text(false)
            .init(&device)
            .unwrap();
        let fresh_copy = &fresh.temporal.as_ref().unwrap().transformer.resblocks[0]
            .attn
            .query
            .weight;
        assert_ne!(
            values(fresh.clip.text.transformer.resblocks[0].attn.query.weight.val()),
            values(fresh_copy.val())
        );
    }
}

//! The PointCLIP model: CLIP's image tower on the depth maps of every view, its text tower on one
//! prompt per class, the per-view similarities summed (zero-shot) or the views fused by the
//! inter-view adapter first (few-shot).
//!
//! Zero-shot (`PointCLIP_ZS.model_inference`), with `f_v` the image embedding of view `v` and `t`
//! the text embedding of a class:
//!
//! ```text
//! F = [f_1/|f_1|, ..., f_V/|f_V|]          T = [t, ..., t] / (sqrt(V) |t|)
//! logits = exp(s) F . T = exp(s) / sqrt(V) * sum_v cos(f_v, t)
//! ```
//!
//! Few-shot (`PointCLIP_Model.forward`): `F = A(f) / |A(f)|` with `A` the adapter, normalized over
//! the whole `V*C` vector. The view weights `w_v` of the official post-hoc search scale each
//! view's block of `F`: `logits_w = exp(s) (w (.) F) . T`.

use burn::config::Config;
use burn::module::Module;
use burn::tensor::{Device, Int, Tensor, TensorData};
use clip_core::{Clip, ClipConfig, ClipTokenizer, l2_normalize};

use crate::pointclip::adapter::{Adapter, AdapterConfig, AdapterOutput};
use crate::pointclip::projection::ProjectionConfig;

/// The official zero-shot prompt (`CUSTOM_TEMPLATES` of `trainers/zeroshot.py`).
pub const ZERO_SHOT_TEMPLATE: &str = "point cloud depth map of a {}.";
/// The official few-shot prompt (`CUSTOM_TEMPLATES` of `trainers/fewshot.py`).
pub const FEW_SHOT_TEMPLATE: &str = "point cloud of a big {}.";

/// ModelNet40's class names in label order (`shape_names.txt`, as `search_weights.py` lists
/// them).
pub const MODELNET40_CLASSES: [&str; 40] = [
    "airplane", "bathtub", "bed", "bench", "bookshelf", "bottle", "bowl", "car", "chair", "cone", "cup", "curtain",
    "desk", "door", "dresser", "flower_pot", "glass_box", "guitar", "keyboard", "lamp", "laptop", "mantel", "monitor",
    "night_stand", "person", "piano", "plant", "radio", "range_hood", "sink", "sofa", "stairs", "stool", "table",
    "tent", "toilet", "tv_stand", "vase", "wardrobe", "xbox",
];

/// One prompt per class: `template` with `{}` replaced by the class name, underscores turned
/// into spaces (`temp.format(c.replace('_', ' '))`).
pub fn prompts<S: AsRef<str>>(template: &str, classnames: &[S]) -> Vec<String> {
    classnames.iter().map(|c| template.replacen("{}", &c.as_ref().replace('_', " "), 1)).collect()
}

/// Configuration of a [`PointClip`] model.
#[derive(Config, Debug, PartialEq)]
pub struct PointClipConfig {
    /// The CLIP model.
    pub clip: ClipConfig,
    /// The multi-view projection.
    pub projection: ProjectionConfig,
    /// The inter-view adapter of the few-shot model; `None` for zero-shot.
    #[config(default = "None")]
    pub adapter: Option<AdapterConfig>,
}

impl PointClipConfig {
    /// The official zero-shot PointCLIP on `clip`: 6 views at 128 upsampled to 224, no adapter.
    pub fn zero_shot(clip: ClipConfig) -> Self {
        Self::new(clip, ProjectionConfig::zero_shot())
    }

    /// The official few-shot PointCLIP on `clip`: 10 views at 224 and an adapter with the
    /// official ratio 0.6, fusion init 0.5 and dropout 0.075.
    pub fn few_shot(clip: ClipConfig) -> Self {
        let projection = ProjectionConfig::few_shot();
        let adapter = AdapterConfig::new(projection.num_views(), clip.embed_dim);
        Self::new(clip, projection).with_adapter(Some(adapter))
    }

    /// Checks that the parts fit together; the error names what does not.
    pub fn validate(&self) -> Result<(), String> {
        self.projection.validate()?;
        if self.projection.output_size() != self.clip.vision.image_size() {
            return Err(format!(
                "projection: images of side {} but CLIP's image tower takes {}",
                self.projection.output_size(),
                self.clip.vision.image_size()
            ));
        }
        if let Some(adapter) = &self.adapter {
            adapter.validate()?;
            if adapter.num_views != self.projection.num_views() || adapter.in_features != self.clip.embed_dim {
                return Err(format!(
                    "adapter: {} views of {} features, but the projection has {} views and CLIP embeds to {}",
                    adapter.num_views,
                    adapter.in_features,
                    self.projection.num_views(),
                    self.clip.embed_dim
                ));
            }
        }
        Ok(())
    }

    /// Builds the model with fresh weights.
    pub fn init(&self, device: &Device) -> Result<PointClip, String> {
        self.validate()?;
        Ok(PointClip {
            clip: self.clip.init(device),
            adapter: self.adapter.as_ref().map(|a| a.init(device)),
            projection: self.projection.clone(),
        })
    }
}

/// PointCLIP: zero-shot without an adapter, few-shot with one.
#[derive(Module, Debug)]
pub struct PointClip {
    /// CLIP (frozen in the official training).
    pub clip: Clip,
    /// The inter-view adapter (few-shot).
    pub adapter: Option<Adapter>,
    /// The multi-view projection.
    #[module(skip)]
    pub projection: ProjectionConfig,
}

/// Every intermediate of a [`PointClip`] forward pass.
#[derive(Debug, Clone)]
pub struct PointClipOutput {
    /// The images fed to CLIP, `[B*V, 3, S, S]`.
    pub images: Tensor<4>,
    /// CLIP image embeddings per view, `[B*V, C]`, not normalized.
    pub view_features: Tensor<2>,
    /// The adapter's outputs (few-shot).
    pub adapter: Option<AdapterOutput>,
    /// The normalized cloud features `[B, V*C]`.
    pub image_features: Tensor<2>,
    /// The normalized, view-repeated text features `[K, V*C]`.
    pub text_features: Tensor<2>,
    /// `[B, K]` logits.
    pub logits: Tensor<2>,
}

impl PointClip {
    /// Views per cloud.
    pub fn num_views(&self) -> usize {
        self.projection.num_views()
    }

    /// The images CLIP sees, `[B*V, 3, S, S]`, of clouds `[B, N, 3]`.
    pub fn images(&self, points: Tensor<3>) -> Tensor<4> {
        self.projection.images(points)
    }

    /// CLIP image embeddings of every view, `[B*V, C]`, not normalized (`clip_model.visual`).
    pub fn view_features(&self, images: Tensor<4>) -> Tensor<2> {
        self.clip.encode_image(images, false)
    }

    /// The cloud features `[B, V*C]` from view features `[B*V, C]`: zero-shot, each view
    /// L2-normalized and the views concatenated; few-shot, the adapter's output L2-normalized
    /// as one vector. The second value holds the adapter's outputs (few-shot).
    pub fn image_features(&self, view_features: Tensor<2>) -> (Tensor<2>, Option<AdapterOutput>) {
        let [rows, channels] = view_features.dims();
        let views = self.num_views();
        match &self.adapter {
            Some(adapter) => {
                let parts = adapter.forward_parts(view_features);
                (l2_normalize(parts.output.clone()), Some(parts))
            }
            None => (l2_normalize(view_features).reshape([rows / views, views * channels]), None),
        }
    }

    /// Unnormalized text embeddings `[K, C]` of tokenized prompts `[K, context]`.
    pub fn text_embeddings(&self, tokens: Tensor<2, Int>) -> Tensor<2> {
        self.clip.encode_text(tokens, false)
    }

    /// Text embeddings `[K, C]` repeated once per view and L2-normalized over the whole
    /// `[K, V*C]` vector (`Textual_Encoder` then `text_feat / text_feat.norm()`).
    pub fn text_features(&self, text_embeddings: Tensor<2>) -> Tensor<2> {
        l2_normalize(text_embeddings.repeat_dim(1, self.num_views()))
    }

    /// Tokenized prompts `[K, context]` of `classnames` with `template` (see [`prompts`]).
    pub fn tokenize<S: AsRef<str>>(
        tokenizer: &ClipTokenizer,
        template: &str,
        classnames: &[S],
        device: &Device,
    ) -> clip_core::Result<Tensor<2, Int>> {
        Ok(tokenizer.tokenize_batch(&prompts(template, classnames), device)?)
    }

    /// `exp(logit_scale) * image_features @ text_features^T`, `[B, K]`.
    pub fn logits(&self, image_features: Tensor<2>, text_features: Tensor<2>) -> Tensor<2> {
        image_features.matmul(text_features.transpose()) * self.clip.logit_scale().unsqueeze()
    }

    /// As [`logits`](Self::logits) with each view's block of the image features scaled by its
    /// weight (`view_weights` `[V]`, the official view-weight search).
    pub fn weighted_logits(&self, image_features: Tensor<2>, text_features: Tensor<2>, view_weights: Tensor<1>) -> Tensor<2> {
        let weighted = weight_views(image_features, view_weights);
        self.logits(weighted, text_features)
    }

    /// The whole forward pass: logits `[B, K]` of clouds `[B, N, 3]` against the class text
    /// features `[K, V*C]` (see [`text_features`](Self::text_features)).
    pub fn forward(&self, points: Tensor<3>, text_features: Tensor<2>) -> Tensor<2> {
        self.forward_parts(points, text_features).logits
    }

    /// As [`forward`](Self::forward), keeping every intermediate.
    pub fn forward_parts(&self, points: Tensor<3>, text_features: Tensor<2>) -> PointClipOutput {
        let images = self.images(points);
        let view_features = self.view_features(images.clone());
        let (image_features, adapter) = self.image_features(view_features.clone());
        let logits = self.logits(image_features.clone(), text_features.clone());
        PointClipOutput { images, view_features, adapter, image_features, text_features, logits }
    }
}

/// Image features `[B, V*C]` with view `v`'s block scaled by `view_weights[v]` (`[V]`).
pub fn weight_views(image_features: Tensor<2>, view_weights: Tensor<1>) -> Tensor<2> {
    let [batch, width] = image_features.dims();
    let [views] = view_weights.dims();
    assert!(width % views == 0, "view weights: {views} views do not divide features of width {width}");
    let channels = width / views;
    (image_features.reshape([batch, views, channels]) * view_weights.reshape([1, views, 1])).reshape([batch, width])
}

/// The grid the official view-weight search tries for every view:
/// `[(i + 1) * range / time for i in range(time)]` (`SEARCH.TIME`, `SEARCH.RANGE`).
pub fn view_weight_grid(time: usize, range: f64) -> Vec<f32> {
    (0..time).map(|i| ((i + 1) as f64 * range / time as f64) as f32).collect()
}

/// The result of [`search_view_weights`].
#[derive(Debug, Clone, PartialEq)]
pub struct ViewWeightSearch {
    /// Top-1 accuracy in percent with all weights 1 (the official "before search").
    pub accuracy_before: f64,
    /// The best weights found (the first in the search order among equals).
    pub weights: Vec<f32>,
    /// Their top-1 accuracy in percent.
    pub accuracy: f64,
}

/// The official post-hoc view-weight search (`search_weights_zs`/`_fs`): every combination of
/// `grid` values for the `V` views (`grid.len()^V` of them, in the official nesting order),
/// keeping the first with the best top-1 accuracy of
/// `exp(logit_scale) (w (.) image_features) . text_features` on `labels`. `image_features`
/// `[N, V*C]` and `text_features` `[K, V*C]` as [`PointClip::image_features`] and
/// [`PointClip::text_features`] give them. The logit scale does not change the ranking and is
/// left out.
pub fn search_view_weights(image_features: Tensor<2>, text_features: Tensor<2>, labels: &[usize], views: usize, grid: &[f32]) -> ViewWeightSearch {
    let [samples, width] = image_features.dims();
    let [classes, _] = text_features.dims();
    assert_eq!(labels.len(), samples, "view-weight search: {} labels for {samples} samples", labels.len());
    assert!(views > 0 && width % views == 0, "view-weight search: {views} views do not divide width {width}");
    let channels = width / views;
    // Per-view similarities [V, N, K].
    let image = image_features.reshape([samples, views, channels]).swap_dims(0, 1);
    let text = text_features.reshape([classes, views, channels]).swap_dims(0, 1).swap_dims(1, 2);
    let per_view: Vec<f32> = image.matmul(text).into_data().iter::<f32>().collect();
    let accuracy = |weights: &[f32]| {
        let mut correct = 0usize;
        let mut scores = vec![0.0f32; classes];
        for (n, &label) in labels.iter().enumerate() {
            scores.iter_mut().for_each(|s| *s = 0.0);
            for (v, &w) in weights.iter().enumerate() {
                let row = &per_view[(v * samples + n) * classes..][..classes];
                scores.iter_mut().zip(row).for_each(|(s, x)| *s += w * x);
            }
            let best = scores.iter().enumerate().fold(0, |best, (k, s)| if *s > scores[best] { k } else { best });
            correct += usize::from(best == label);
        }
        100.0 * correct as f64 / samples.max(1) as f64
    };
    let accuracy_before = accuracy(&vec![1.0; views]);
    let mut best = ViewWeightSearch { accuracy_before, weights: vec![], accuracy: 0.0 };
    if grid.is_empty() {
        return best;
    }
    let mut digits = vec![0usize; views];
    loop {
        let weights: Vec<f32> = digits.iter().map(|&d| grid[d]).collect();
        let acc = accuracy(&weights);
        if acc > best.accuracy || best.weights.is_empty() {
            best.accuracy = acc;
            best.weights = weights;
        }
        // The last view varies fastest, as the innermost official loop.
        let mut position = views;
        loop {
            if position == 0 {
                return best;
            }
            position -= 1;
            digits[position] += 1;
            if digits[position] < grid.len() {
                break;
            }
            digits[position] = 0;
        }
    }
}

/// The label smoothing of the official few-shot loss (`smooth_loss`, from DGCNN).
pub const SMOOTH_LOSS_EPS: f64 = 0.2;

/// The official few-shot training loss `smooth_loss(pred, gold)`: cross-entropy of `logits`
/// `[B, K]` against labels `[B]` smoothed to `1 - eps` on the label and `eps / (K - 1)` on every
/// other class ([`SMOOTH_LOSS_EPS`]), averaged over the batch; `[1]`.
pub fn smooth_loss(logits: Tensor<2>, labels: Tensor<1, Int>) -> Tensor<1> {
    let [_, classes] = logits.dims();
    let one_hot: Tensor<2> = labels.one_hot::<2>(classes).float();
    let eps = SMOOTH_LOSS_EPS;
    let off = eps / (classes.max(2) - 1) as f64;
    let targets = one_hot.clone() * (1.0 - eps) + (one_hot.neg() + 1.0) * off;
    let log_probs = burn::tensor::activation::log_softmax(logits, 1);
    (targets * log_probs).sum_dim(1).mean().neg()
}

/// Clouds `[B, N, 3]` as a tensor from point lists of equal length.
pub fn clouds_tensor(clouds: &[Vec<[f32; 3]>], device: &Device) -> Result<Tensor<3>, String> {
    let count = clouds.first().map_or(0, Vec::len);
    if let Some((i, cloud)) = clouds.iter().enumerate().find(|(_, c)| c.len() != count) {
        return Err(format!("cloud {i} has {} points, cloud 0 has {count}", cloud.len()));
    }
    let values: Vec<f32> = clouds.iter().flatten().flatten().copied().collect();
    Ok(Tensor::from_data(TensorData::new(values, [clouds.len(), count, 3]), device))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompts_replace_underscores() {
        assert_eq!(
            prompts(ZERO_SHOT_TEMPLATE, &["night_stand", "airplane"]),
            ["point cloud depth map of a night stand.", "point cloud depth map of a airplane."]
        );
        assert_eq!(prompts(FEW_SHOT_TEMPLATE, &MODELNET40_CLASSES[15..16]), ["point cloud of a big flower pot."]);
    }

    #[test]
    fn the_grid_is_the_official_one() {
        assert_eq!(view_weight_grid(4, 1.0), [0.25, 0.5, 0.75, 1.0]);
    }

    #[test]
    fn the_search_finds_the_informative_view() {
        let device = Device::flex();
        // Two views of 2 channels, two classes. View 0 is right for both samples, view 1 wrong
        // and louder: with equal weights the samples are misclassified.
        let image = Tensor::<2>::from_data(TensorData::new(vec![1.0f32, 0.0, 0.0, 2.0, 0.0, 1.0, 2.0, 0.0], [2, 4]), &device);
        let text = Tensor::<2>::from_data(TensorData::new(vec![1.0f32, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 1.0], [2, 4]), &device);
        let found = search_view_weights(image, text, &[0, 1], 2, &view_weight_grid(4, 1.0));
        assert_eq!(found.accuracy_before, 0.0);
        assert_eq!(found.accuracy, 100.0);
        // The first combination reaching 100%: view 0 at 0.75 beats view 1 at 0.25 (0.75 > 0.5).
        assert_eq!(found.weights, [0.75, 0.25]);
    }

    #[test]
    fn the_smooth_loss_is_the_official_one() {
        let device = Device::flex();
        let logits = Tensor::<2>::from_data(TensorData::new(vec![2.0f32, 0.0, -1.0, 0.5, 0.5, 0.5], [2, 3]), &device);
        let labels = Tensor::<1, Int>::from_data(TensorData::new(vec![0i64, 2], [2]), &device);
        let loss: f32 = smooth_loss(logits, labels).into_scalar();
        let log_softmax = |row: [f64; 3]| {
            let z = row.iter().map(|x| x.exp()).sum::<f64>().ln();
            row.map(|x| x - z)
        };
        let (a, b) = (log_softmax([2.0, 0.0, -1.0]), log_softmax([0.5; 3]));
        let expected = -((0.8 * a[0] + 0.1 * a[1] + 0.1 * a[2]) + (0.1 * b[0] + 0.1 * b[1] + 0.8 * b[2])) / 2.0;
        assert!((f64::from(loss) - expected).abs() < 1e-6, "{loss} vs {expected}");
    }

    #[test]
    fn view_weights_scale_blocks() {
        let device = Device::flex();
        let features = Tensor::<2>::ones([1, 6], &device);
        let weighted = weight_views(features, Tensor::from_floats([1.0, 2.0, 3.0], &device));
        assert_eq!(weighted.into_data().iter::<f32>().collect::<Vec<_>>(), [1.0, 1.0, 2.0, 2.0, 3.0, 3.0]);
    }

    #[test]
    fn clouds_of_unequal_length_are_refused() {
        let device = Device::flex();
        assert!(clouds_tensor(&[vec![[0.0; 3]; 2], vec![[0.0; 3]; 3]], &device).unwrap_err().contains("cloud 1"));
        assert_eq!(clouds_tensor(&[vec![[0.0; 3]; 2], vec![[1.0; 3]; 2]], &device).unwrap().dims(), [2, 2, 3]);
    }
}

//! DepthCLIP's steps on hand-computed values, the predictor on a tiny random model, the
//! configuration's checks and the official state dict's key table (round trip and the errors
//! for missing, unexpected and mis-shaped keys).

use burn::tensor::activation::softmax;
use burn::tensor::{Device, Distribution, Tensor, TensorData};
use clip_3d::depthclip::config::{PAPER_BINS, PAPER_DEPTH_CLASSES, format_template};
use clip_3d::depthclip::model::{
    dense_tokens, depth_logits, expected_depth, halve_channels, upsample_depth, zeroshot_text_features,
};
use clip_3d::depthclip::official::{
    attention_pool_keys, config_from_tensors, export_official, import_official, load_official, save_official,
};
use clip_3d::depthclip::{DenseClip, DenseClipConfig, DepthClip, DepthClipConfig};
use clip_core::text::TextTransformerConfig;
use clip_core::transformer::Activation;
use clip_core::weights::{Checkpoint, RawTensor};
use clip_core::{ClipError, ClipTokenizer};

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().iter::<f32>().collect()
}

fn close(got: &[f32], want: &[f32], tol: f32) -> bool {
    got.len() == want.len() && got.iter().zip(want).all(|(a, b)| (a - b).abs() <= tol)
}

fn max_diff<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> f32 {
    (a - b).abs().max().into_scalar::<f32>()
}

/// A ResNet of one block per stage and width 8 (256 layer4 channels, halved to the 128-wide
/// embedding), a one-layer text tower of width 16.
fn tiny_clip() -> DenseClipConfig {
    let text = TextTransformerConfig::new(77, 49408, 16, 1, 2, 64, 128).with_activation(Activation::QuickGelu);
    DenseClipConfig::new([1, 1, 1, 1], 8, 128, text)
}

fn tiny(device: &Device) -> (DenseClip, DepthClipConfig) {
    (tiny_clip().init(device), DepthClipConfig::new(tiny_clip()))
}

fn checkpoint(tensors: std::collections::BTreeMap<String, RawTensor>) -> Checkpoint {
    Checkpoint { path: "tiny.safetensors".into(), tensors }
}

#[test]
fn halving_keeps_the_even_channels_as_nearest_interpolation_does() {
    let device = Device::flex();
    let x = Tensor::<3>::from_data(TensorData::new((0..12).map(|v| v as f32).collect::<Vec<_>>(), [1, 2, 6]), &device);
    assert_eq!(values(halve_channels(x)), [0., 2., 4., 6., 8., 10.]);
    // An odd count: F.interpolate(scale_factor=0.5) gives floor(5 / 2) = 2 channels, 0 and 2.
    let odd = Tensor::<3>::from_data(TensorData::new(vec![5., 6., 7., 8., 9.], [1, 1, 5]), &device);
    assert_eq!(values(halve_channels(odd)), [5., 7.]);
}

#[test]
fn dense_tokens_are_row_major_and_unit_length() {
    let device = Device::flex();
    // Two channels on a 1 x 2 grid: position 0 is (3, 4), position 1 is (0, 2).
    let map = Tensor::<4>::from_data(TensorData::new(vec![3., 0., 4., 2.], [1, 2, 1, 2]), &device);
    assert!(close(&values(dense_tokens(map)), &[0.6, 0.8, 0.0, 1.0], 1e-6));
}

#[test]
fn text_features_ensemble_templates_as_zeroshot_classifier() {
    let device = Device::flex();
    // Two classes of two templates each: class 0 from (3, 4) and (0, 5), class 1 from (1, 0) twice.
    let embeds = Tensor::<2>::from_data(TensorData::new(vec![3., 4., 0., 5., 1., 0., 2., 0.], [4, 2]), &device);
    let features = zeroshot_text_features(embeds, 2).unwrap();
    assert_eq!(features.dims(), [2, 2], "columns are classes");
    // Class 0: mean of (0.6, 0.8) and (0, 1) is (0.3, 0.9), normalized (1, 3) / sqrt(10).
    let s = 10f32.sqrt();
    assert!(close(&values(features), &[1.0 / s, 1.0, 3.0 / s, 0.0], 1e-6));
    assert!(zeroshot_text_features(Tensor::<2>::zeros([5, 2], &device), 2).is_err());
}

#[test]
fn logits_probabilities_and_depth_follow_the_official_formula() {
    let device = Device::flex();
    // One image, a 1 x 2 grid, 2-d features, 3 bins.
    let features = Tensor::<3>::from_data(TensorData::new(vec![0.1, 0.0, 0.0, 0.2], [1, 2, 2]), &device);
    let text = Tensor::<2>::from_data(TensorData::new(vec![1.0, 0.0, 0.5, 0.0, 1.0, 0.5], [2, 3]), &device);
    let logits = depth_logits(features, text, [1, 2], 100.0, 0.1);
    assert_eq!(logits.dims(), [1, 3, 1, 2]);
    // Position 0: 1000 * (0.1, 0, 0.05); position 1: 1000 * (0, 0.2, 0.1); laid out bin-major.
    assert!(close(&values(logits.clone()), &[100.0, 0.0, 0.0, 200.0, 50.0, 100.0], 1e-4));
    let probs = softmax(Tensor::<4>::from_data(TensorData::new(vec![0.0, 1.0, 0.0, 1.0], [1, 2, 1, 2]), &device), 1);
    let bins = Tensor::<1>::from_floats([1.0, 3.0], &device);
    let depth = expected_depth(probs, bins);
    // Both positions have equal logits over the two bins (0, 0 and 1, 1): p = (0.5, 0.5), depth 2.
    assert!(close(&values(depth), &[2.0, 2.0], 1e-6));
    let probs = Tensor::<4>::from_data(TensorData::new(vec![0.25, 1.0, 0.75, 0.0], [1, 2, 1, 2]), &device);
    let depth = expected_depth(probs, Tensor::<1>::from_floats([1.0, 3.0], &device));
    assert!(close(&values(depth), &[2.5, 1.0], 1e-6));
}

#[test]
fn upsampling_aligns_corners() {
    let device = Device::flex();
    let depth = Tensor::<4>::from_data(TensorData::new(vec![1.0, 3.0], [1, 1, 1, 2]), &device);
    // align_corners=True: the ends keep the corner values, the middle is linear between them.
    assert!(close(&values(upsample_depth(depth, [2, 5])), &[1.0, 1.5, 2.0, 2.5, 3.0, 1.0, 1.5, 2.0, 2.5, 3.0], 1e-6));
}

#[test]
fn predictor_runs_end_to_end_on_a_tiny_model() {
    let device = Device::flex();
    let (clip, config) = tiny(&device);
    let model = DepthClip::new(clip, config.clone(), &ClipTokenizer::new()).unwrap();
    assert_eq!(model.text_features.dims(), [128, 7]);
    let norms = values(model.text_features.clone().square().sum_dim(0).sqrt());
    assert!(norms.iter().all(|n| (n - 1.0).abs() < 1e-5), "unit columns: {norms:?}");

    let images = Tensor::<4>::random([2, 3, 96, 128], Distribution::Normal(0.0, 1.0), &device);
    let out = model.forward(images.clone());
    // 96 x 128 pixels: a 3 x 4 layer4 grid of 256 channels.
    assert_eq!(out.layer4.dims(), [2, 256, 3, 4]);
    assert_eq!(out.features.dims(), [2, 12, 128]);
    assert_eq!(out.logits.dims(), [2, 7, 3, 4]);
    let sums = values(out.probs.clone().sum_dim(1));
    assert!(sums.iter().all(|s| (s - 1.0).abs() < 1e-5));
    let depth = values(out.depth.clone());
    assert!(depth.iter().all(|d| (1.0..=3.0).contains(d)), "within the bins: {depth:?}");

    // predict = the flip-averaged depth upsampled to the input size.
    let flip = model.depth_flip(images.clone());
    let want = upsample_depth((out.depth.clone() + flip) * 0.5, [96, 128]);
    assert!(max_diff(model.predict(images.clone()), want) < 1e-6);
    let mut single = model.clone();
    single.config = single.config.with_flip_average(false).with_output_size(Some([10, 20]));
    assert!(max_diff(single.predict(images), upsample_depth(out.depth, [10, 20])) < 1e-6);
}

#[test]
fn identical_prompts_give_the_mean_bin() {
    let device = Device::flex();
    let (clip, config) = tiny(&device);
    let column = Tensor::<2>::random([128, 1], Distribution::Normal(0.0, 1.0), &device);
    let model = DepthClip::with_text_features(clip, config, column.repeat_dim(1, 7)).unwrap();
    let images = Tensor::<4>::random([1, 3, 64, 64], Distribution::Normal(0.0, 1.0), &device);
    let mean = PAPER_BINS.iter().sum::<f32>() / 7.0;
    assert!(values(model.depth(images)).iter().all(|d| (d - mean).abs() < 1e-5));
}

#[test]
fn paper_configuration_and_prompts() {
    let config = DepthClipConfig::paper();
    assert_eq!(config.bins, PAPER_BINS);
    assert_eq!(config.temperature, 0.1);
    assert_eq!(config.clip.feature_width(), 2048);
    config.validate("paper").unwrap();
    let prompts = config.prompts().unwrap();
    assert_eq!(prompts.len(), 7);
    assert_eq!(prompts[0], "This object is giant");
    assert_eq!(prompts[3], format!("This object is {}", PAPER_DEPTH_CLASSES[3]));
    // Several templates: distance word major, then template.
    let two = config.with_templates(vec!["a {} that is {}".into(), "{1}: {0}".into()]);
    let prompts = two.prompts().unwrap();
    assert_eq!(&prompts[..2], ["a object that is giant", "giant: object"]);
}

#[test]
fn templates_format_as_python() {
    assert_eq!(format_template("{{x}} {} {}", "a", "b").unwrap(), "{x} a b");
    assert_eq!(format_template("{1} {0}", "a", "b").unwrap(), "b a");
    assert!(format_template("{} {} {}", "a", "b").is_err());
    assert!(format_template("{} {", "a", "b").is_err());
    assert!(format_template("{name}", "a", "b").is_err());
}

#[test]
fn invalid_configurations_are_refused() {
    let base = DepthClipConfig::new(tiny_clip());
    base.validate("tiny").unwrap();
    let cases = [
        (base.clone().with_bins(vec![1.0, 2.0]), "bins"),
        (base.clone().with_obj_classes(vec!["object".into(), "thing".into()]), "object words"),
        (base.clone().with_templates(vec!["{} {} {}".into()]), "template"),
        (base.clone().with_temperature(0.0), "temperature"),
        (base.clone().with_depth_classes(vec![]), "depth_classes"),
    ];
    for (config, word) in cases {
        let error = config.validate("tiny").unwrap_err().to_string();
        assert!(error.contains(word), "{error}");
    }
    let mut narrow = tiny_clip();
    narrow.embed_dim = 64;
    narrow.text.embed_dim = 64;
    let error = DepthClipConfig::new(narrow).validate("tiny").unwrap_err().to_string();
    assert!(error.contains("halving"), "{error}");
}

#[test]
fn official_state_dict_round_trips_and_gives_the_architecture() {
    let device = Device::flex();
    let (clip, config) = tiny(&device);
    let tensors = export_official(&clip, &config.clip).unwrap();
    assert!(tensors.contains_key("visual.layer1.0.downsample.0.weight"));
    assert!(tensors.contains_key("transformer.resblocks.0.attn.in_proj_weight"));
    assert!(tensors.contains_key("logit_scale"));
    assert!(!tensors.keys().any(|k| k.starts_with("visual.attnpool.")));
    assert_eq!(config_from_tensors(&tensors, Some(2), "tiny").unwrap(), tiny_clip());
    // OpenAI's rule without an explicit head count: width / 64, at least 1.
    assert_eq!(config_from_tensors(&tensors, None, "tiny").unwrap().text.heads, 1);

    // OpenAI's files hold the attention pool, which is ignored.
    let mut with_pool = tensors.clone();
    for key in attention_pool_keys() {
        with_pool.insert(key, RawTensor { shape: vec![1], values: vec![0.0] });
    }
    let loaded = import_official(&checkpoint(with_pool), &tiny_clip(), &device).unwrap();
    assert_eq!(export_official(&loaded, &tiny_clip()).unwrap(), tensors);

    let dir = tempfile::Builder::new().prefix("depthclip-tiny-").tempdir().unwrap();
    let file = dir.path().join("tiny.safetensors");
    save_official(&clip, &config.clip, &file).unwrap();
    let read = load_official(&file, Some(2), &device);
    let (reloaded, reconfig) = read.unwrap();
    assert_eq!(reconfig, tiny_clip());
    let images = Tensor::<4>::random([1, 3, 64, 64], Distribution::Normal(0.0, 1.0), &device);
    assert_eq!(max_diff(reloaded.layer4(images.clone()), clip.layer4(images)), 0.0);
}

#[test]
fn bad_state_dicts_name_the_key() {
    let device = Device::flex();
    let (clip, config) = tiny(&device);
    let tensors = export_official(&clip, &config.clip).unwrap();

    let mut missing = tensors.clone();
    missing.remove("visual.layer3.0.bn2.running_var");
    match import_official(&checkpoint(missing), &tiny_clip(), &device) {
        Err(ClipError::MissingKey { key, expected, .. }) => {
            assert_eq!(key, "visual.layer3.0.bn2.running_var");
            assert_eq!(expected, [32]);
        }
        other => panic!("expected a missing key, got {:?}", other.map(|_| ())),
    }

    let mut unexpected = tensors.clone();
    unexpected.insert("adapter.fc.0.weight".into(), RawTensor { shape: vec![2, 2], values: vec![0.0; 4] });
    match import_official(&checkpoint(unexpected), &tiny_clip(), &device) {
        Err(ClipError::UnexpectedKeys { keys, .. }) => assert_eq!(keys, ["adapter.fc.0.weight"]),
        other => panic!("expected an unexpected key, got {:?}", other.map(|_| ())),
    }

    let mut misshaped = tensors.clone();
    misshaped.insert("visual.layer2.0.conv1.weight".into(), RawTensor { shape: vec![16, 32, 1, 2], values: vec![0.0; 1024] });
    match import_official(&checkpoint(misshaped), &tiny_clip(), &device) {
        Err(ClipError::ShapeMismatch { key, expected, found, .. }) => {
            assert_eq!(key, "visual.layer2.0.conv1.weight");
            assert_eq!((expected, found), (vec![16, 32, 1, 1], vec![16, 32, 1, 2]));
        }
        other => panic!("expected a shape mismatch, got {:?}", other.map(|_| ())),
    }

    let mut vit = tensors;
    vit.insert("visual.proj".into(), RawTensor { shape: vec![1], values: vec![0.0] });
    let error = config_from_tensors(&vit, None, "vit").unwrap_err().to_string();
    assert!(error.contains("ViT"), "{error}");
}

#[test]
fn official_nyu_protocol_end_to_end() {
    use clip_3d::depthclip::io::{DepthMap, NYU_TEST_CROP, nyu_test_input};
    use clip_3d::depthclip::{EvalOptions, MetricsMean, depth_metrics};
    let device = Device::flex();
    let (clip, config) = tiny(&device);
    let model = DepthClip::new(clip, config.with_output_size(Some([416, 544])), &ClipTokenizer::new()).unwrap();
    // A 640 x 480 frame and a ground truth of 2 m with a 40-pixel border without depth.
    let rgb = image::RgbImage::from_fn(640, 480, |x, y| image::Rgb([(x % 251) as u8, (y % 241) as u8, 128]));
    let mut truth = DepthMap::filled(640, 480, 2.0);
    for y in 0..480 {
        for x in 0..640 {
            if !(40..600).contains(&x) || !(40..440).contains(&y) {
                truth.set(x, y, 0.0);
            }
        }
    }
    let input = nyu_test_input(&rgb, &device).unwrap().unsqueeze::<4>();
    let pred = DepthMap::from_batch(model.predict(input)).remove(0);
    assert_eq!((pred.width, pred.height), (544, 416));
    let framed = pred.place_in(640, 480, NYU_TEST_CROP.left, NYU_TEST_CROP.top);
    let metrics = depth_metrics(&framed, &truth, &EvalOptions::depthclip_nyu()).unwrap();
    // Counted: the crop (rows 45..471, columns 46..601) within the measured area (rows 40..440,
    // columns 40..600) within the pasted prediction (rows 56..472, columns 60..604).
    assert_eq!(metrics.pixels, (440 - 56) * (600 - 60));
    // Every prediction lies within the bins (1..3 m), so it is at most 1 m from the 2 m truth; a
    // prediction with all its weight on the 1 m bin comes out a few ulps below 1 m in f32.
    let slack = 1e-6;
    assert!(
        metrics.abs_rel <= 0.5 + slack && metrics.rmse <= 1.0 + slack && metrics.abs_diff <= 1.0 + slack,
        "{metrics:?}"
    );
    let mut mean = MetricsMean::new();
    mean.add(&metrics);
    assert_eq!(mean.mean().unwrap(), metrics);
}

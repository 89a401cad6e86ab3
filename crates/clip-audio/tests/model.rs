//! The model on tiny shapes: the front end against a direct DFT, gradients reaching the
//! trainable FBSP parameters, the tri-modal loss's k! and clamps, freezing, and the official
//! layout's round trip and key errors.

use std::collections::BTreeMap;

use burn::module::Param;
use burn::tensor::{Device, Int, Tensor, TensorData};
use clip_audio::config::{AudioClipConfig, EsResNeXtConfig, FbspConfig};
use clip_audio::fbsp::{LinearFbsp, blackman_harris, kernel_time};
use clip_audio::loss::{Embeddings, LossWeights, TriModalLoss};
use clip_audio::model::AudioClip;
use clip_audio::official::{EMPTY_FBSP_BIAS, export_official, import_official, official_config};
use clip_core::config::ClipConfig;
use clip_core::image_tower::ImageTowerConfig;
use clip_core::resnet::ModifiedResNetConfig;
use clip_core::text::TextTransformerConfig;
use clip_core::weights::{Checkpoint, RawTensor};
use clip_core::ClipError;

fn tiny_config() -> AudioClipConfig {
    let vision = ModifiedResNetConfig::new(32, [1, 1, 1, 1], 8, 2, 16);
    let text = TextTransformerConfig::new(8, 100, 16, 1, 2, 32, 16);
    let clip = ClipConfig::new(16, ImageTowerConfig::ResNet(vision), text);
    let fbsp = FbspConfig::new().with_sample_rate(8000).with_n_fft(64).with_hop_length(16).with_win_length(48);
    let body = EsResNeXtConfig::small().with_stem_width(8).with_groups(2).with_width_per_group(16);
    AudioClipConfig::new(clip).with_fbsp(fbsp).with_audio(body)
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().iter::<f32>().collect()
}

#[test]
fn initial_kernels_are_a_dft_up_to_phase() {
    let device = Device::flex();
    let n = 32;
    let fbsp = LinearFbsp::init(n / 2 + 1, true, &device);
    let kernels = fbsp.kernels(n);
    let (re, im) = (values(kernels.re), values(kernels.im));
    let t = kernel_time(n);
    // m = 0 makes the window 1: W_k(t) = exp(-i k t) / sqrt(N).
    for k in 0..=n / 2 {
        for (i, &ti) in t.iter().enumerate() {
            let angle = k as f32 * ti;
            let scale = (n as f32).sqrt();
            assert!((re[k * n + i] - angle.cos() / scale).abs() < 1e-5);
            assert!((im[k * n + i] + angle.sin() / scale).abs() < 1e-5);
        }
    }
    // Every kernel has norm 1: loss_ttf is 0 at initialization.
    let loss = fbsp.loss_ttf(&fbsp.kernels(n));
    assert!(values(loss)[0].abs() < 1e-9);
    // SciPy's periodic Blackman-Harris: 6e-5 at the ends, 1 in the middle.
    let window = blackman_harris(8);
    assert!((window[0] - 6.0e-5).abs() < 1e-6 && (window[4] - 1.0).abs() < 1e-6, "{window:?}");
}

#[test]
fn gradients_reach_the_front_end_and_every_tower() {
    let device = Device::flex().autodiff();
    // Scales inside the clamp (exp(ln 100) sits on its edge, where the gradient stops).
    let config = tiny_config().with_init_logit_scale_at(2.3).with_init_logit_scale_ai(2.3);
    let model = config.init(&device).unwrap();
    let audio = Tensor::<3>::random([4, 1, 400], burn::tensor::Distribution::Uniform(-8000.0, 8000.0), &device);
    let images = Tensor::<4>::random([4, 3, 32, 32], burn::tensor::Distribution::Default, &device);
    let tokens = Tensor::<2, Int>::from_data(TensorData::new((0..32).map(|i| (i % 7 + 1) as i64).collect::<Vec<_>>(), [4, 8]), &device);
    let out = model.audio.forward_all(audio.clone());
    assert_eq!(out.spectrogram_db.dims(), [4, 1, 3, 33 / 3, config.fbsp.frames(400)]);
    let (embeds, kernels) = model.encode_audio(audio);
    let embeddings = Embeddings {
        audio: Some(embeds),
        image: Some(model.encode_image(images)),
        text: Some(model.encode_text(tokens)),
        kernels: Some(kernels),
    };
    let terms = TriModalLoss::default().forward(&model, embeddings).unwrap();
    assert_eq!(terms.matrices, 3);
    let grads = terms.total.backward();
    for (name, param) in [("fbsp.fc", &model.audio.fbsp.fc), ("fbsp.fb", &model.audio.fbsp.fb), ("fbsp.m", &model.audio.fbsp.m), ("logit_scale_at", &model.logit_scale_at)] {
        let grad = param.val().grad(&grads).unwrap_or_else(|| panic!("no gradient for {name}"));
        assert!(values(grad).iter().any(|g| *g != 0.0 && g.is_finite()), "{name}: zero or non-finite gradient");
    }
    assert!(model.clip.text.token_embedding.weight.val().grad(&grads).is_some(), "text tower");
    assert!(model.audio.fc.weight.val().grad(&grads).is_some(), "audio fc");
}

#[test]
fn the_loss_divides_by_k_factorial_and_clamps_the_scales() {
    let device = Device::flex();
    let mut model = tiny_config().init(&device).unwrap();
    // exp(10) is clamped to 100 and exp(-3) to 1.
    model.logit_scale_at = Param::from_tensor(Tensor::from_floats([10.0], &device));
    model.logit_scale_ai = Param::from_tensor(Tensor::from_floats([-3.0], &device));
    assert_eq!(values(model.scale_at()), vec![100.0]);
    assert_eq!(values(model.scale_ai()), vec![1.0]);
    let random = |seed: u64| {
        let data: Vec<f32> = (0..48).map(|i| (((i as u64 * 7919 + seed * 104_729) % 97) as f32 / 48.0) - 1.0).collect();
        Tensor::<2>::from_data(TensorData::new(data, [3, 16]), &device)
    };
    let embeddings = Embeddings { audio: Some(random(1)), image: Some(random(2)), text: Some(random(3)), kernels: None };
    let loss = TriModalLoss::default();
    let all = loss.forward(&model, embeddings.clone()).unwrap();
    let parts = [&all.audio_image, &all.audio_text, &all.image_text].map(|t| values(t.clone().unwrap())[0]);
    let total = values(all.total)[0];
    assert!((total - parts.iter().sum::<f32>() / 6.0).abs() < 1e-5, "{total} vs {parts:?}");
    // Weights scale the terms; a zero weight drops the matrix (k = 2, divided by 2).
    let weighted = TriModalLoss { weights: LossWeights { audio_image: 0.0, image_text: 2.0, ..LossWeights::default() } };
    let two = weighted.forward(&model, embeddings.clone()).unwrap();
    assert_eq!(two.matrices, 2);
    assert!((values(two.total)[0] - (parts[1] + 2.0 * parts[2]) / 2.0).abs() < 1e-5);
    // One modality: no loss.
    assert!(loss.forward(&model, Embeddings { audio: embeddings.audio, ..Embeddings::default() }).is_none());
}

#[test]
fn freezing_clip_leaves_the_audio_head_trainable() {
    let device = Device::flex().autodiff();
    let model = tiny_config().init(&device).unwrap().freeze_clip();
    assert!(!model.clip.text.token_embedding.weight.val().is_require_grad());
    assert!(!model.clip.logit_scale.val().is_require_grad());
    assert!(model.audio.fbsp.fc.val().is_require_grad());
    assert!(model.logit_scale_at.val().is_require_grad());
}

fn roundtrip_checkpoint(model: &AudioClip, config: &AudioClipConfig) -> Checkpoint {
    Checkpoint { path: "tiny.safetensors".into(), tensors: export_official(model, config).unwrap() }
}

#[test]
fn the_official_layout_round_trips_and_names_bad_keys() {
    let device = Device::flex();
    let config = tiny_config();
    let model = config.init(&device).unwrap();
    let checkpoint = roundtrip_checkpoint(&model, &config);
    assert_eq!(checkpoint.tensors[EMPTY_FBSP_BIAS].shape, vec![0]);
    assert!(checkpoint.tensors.contains_key("audio.att5.conv_depth.weight"));
    assert!(checkpoint.tensors.contains_key("visual.attnpool.q_proj.weight"));
    // The architecture is read back off the keys; the front end's hop comes from the caller.
    let read = official_config(&checkpoint, Some(2), config.fbsp.clone()).unwrap();
    assert_eq!(read.audio, config.audio);
    assert_eq!(read.embed_dim(), 16);
    let loaded = import_official(&checkpoint, &read, &device).unwrap();
    let again: BTreeMap<String, RawTensor> = export_official(&loaded, &read).unwrap();
    assert_eq!(again, checkpoint.tensors);

    // Missing, unexpected and mis-shaped keys are errors naming the key.
    let mut missing = checkpoint.clone();
    missing.tensors.remove("audio.fbsp.fc");
    match import_official(&missing, &config, &device) {
        Err(ClipError::MissingKey { key, .. }) => assert_eq!(key, "audio.fbsp.fc"),
        other => panic!("expected a missing key, got {:?}", other.map(|_| ())),
    }
    let mut extra = checkpoint.clone();
    extra.tensors.insert("audio.att6.bn.weight".into(), RawTensor { shape: vec![1], values: vec![1.0] });
    let error = import_official(&extra, &config, &device).map(|_| ()).unwrap_err().to_string();
    assert!(error.contains("audio.att6.bn.weight"), "{error}");
    let mut shaped = checkpoint.clone();
    shaped.tensors.insert("audio.fc.weight".into(), RawTensor { shape: vec![3, 3], values: vec![0.0; 9] });
    let error = import_official(&shaped, &config, &device).map(|_| ()).unwrap_err().to_string();
    assert!(error.contains("audio.fc.weight") && error.contains("[3, 3]"), "{error}");
    let mut bias = checkpoint;
    bias.tensors.insert(EMPTY_FBSP_BIAS.into(), RawTensor { shape: vec![33, 2], values: vec![0.0; 66] });
    let error = import_official(&bias, &config, &device).map(|_| ()).unwrap_err().to_string();
    assert!(error.contains(EMPTY_FBSP_BIAS), "{error}");
}

#[test]
fn a_saved_checkpoint_reads_back_exactly() {
    let device = Device::flex();
    let config = tiny_config();
    let model = config.init(&device).unwrap();
    let dir = tempfile::Builder::new().prefix("clip-audio-official-").tempdir().unwrap();
    let path = dir.path().join("official.safetensors");
    clip_audio::official::save_official(&model, &config, &path).unwrap();
    let read = Checkpoint::read(&path).unwrap();
    assert_eq!(read.tensors, export_official(&model, &config).unwrap());
}

#[test]
fn bad_configs_are_errors() {
    let device = Device::flex();
    let config = tiny_config().with_fbsp(FbspConfig::new().with_n_fft(64).with_win_length(100));
    let error = config.init(&device).map(|_| ()).unwrap_err().to_string();
    assert!(error.contains("win_length"), "{error}");
    let config = tiny_config().with_audio(EsResNeXtConfig::small().with_layers([1, 0, 1, 1]));
    assert!(config.init(&device).is_err());
}

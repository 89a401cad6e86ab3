//! The loss and the optimization on a tiny random ResNet CLIP.

use burn::tensor::{Device, Distribution, Tensor};
use clip_core::ClipConfig;
use clip_core::preprocess::{OPENAI_MEAN, OPENAI_STD};
use clip_sketch::loss::LossConfig;
use clip_sketch::sketcher::SketcherConfig;
use rand::SeedableRng;

fn tiny_resnet() -> ClipConfig {
    let json = r#"{"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 8, "head_width": 8},
        "text_cfg": {"context_length": 8, "width": 16, "heads": 2, "layers": 1}}"#;
    ClipConfig::from_open_clip_json(json, "test").unwrap()
}

#[test]
fn the_loss_vanishes_for_the_image_itself_and_grows_with_the_difference() {
    let device = Device::flex();
    let loss = LossConfig::new().init(tiny_resnet().vision.init(&device), OPENAI_MEAN, OPENAI_STD).unwrap();
    let image = Tensor::<4>::random([2, 3, 32, 32], Distribution::Uniform(0.0, 1.0), &device);
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let augmentations = loss.draw(32, &mut rng);
    assert_eq!(augmentations.len(), 5);
    let same = loss.forward(image.clone(), image.clone(), &augmentations).total.into_scalar::<f32>();
    assert!(same.abs() < 1e-5, "{same}");
    let blank = Tensor::<4>::ones([2, 3, 32, 32], &device);
    let parts = loss.forward(blank, image, &augmentations);
    assert!(parts.geometric.into_scalar::<f32>() > 0.0 && parts.semantic.into_scalar::<f32>() > 0.0);
}

#[test]
fn a_vit_needs_the_semantic_loss_alone() {
    let device = Device::flex();
    let json = r#"{"embed_dim": 16, "vision_cfg": {"image_size": 16, "layers": 1, "width": 16, "patch_size": 8, "head_width": 8},
        "text_cfg": {"context_length": 8, "width": 16, "heads": 2, "layers": 1}}"#;
    let vit = ClipConfig::from_open_clip_json(json, "test").unwrap().vision.init(&device);
    let error = LossConfig::new().init(vit.clone(), OPENAI_MEAN, OPENAI_STD).unwrap_err();
    assert!(error.contains("ResNet"), "{error}");
    assert!(LossConfig::new().with_layer_weights([0.0; 5]).init(vit, OPENAI_MEAN, OPENAI_STD).is_ok());
}

#[test]
fn sketching_moves_the_strokes_and_records_the_frames() {
    let device = Device::flex();
    let config = SketcherConfig::new(32).with_strokes(4).with_width(2.0).with_iterations(6).with_seeds(vec![0, 1]).with_frame_every(2);
    let sketcher = config.init(tiny_resnet().vision.init(&device)).unwrap();
    let images = Tensor::<4>::random([2, 3, 32, 32], Distribution::Normal(0.0, 1.0), &device);
    let mut steps = 0;
    let sketches = sketcher.sketch_batch(images, &mut || steps += 1).unwrap();
    assert_eq!(steps, 12, "six iterations for each of two seeds");
    assert_eq!(sketches.len(), 2);
    for sketch in &sketches {
        assert_eq!(sketch.strokes.len(), 4);
        assert_eq!(sketch.frames.len(), 4, "the start and every second of six iterations");
        assert!(sketch.loss.is_finite());
        assert!(sketch.ink.iter().any(|v| *v > 0.1), "the strokes draw");
        assert_ne!(sketch.frames[0], sketch.frames[3], "the strokes moved");
    }
    assert!(SketcherConfig::new(32).with_strokes(0).validate("sketch.").unwrap_err().contains("sketch.strokes"));
}

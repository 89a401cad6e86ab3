//! Segmentation data end to end: the generated `datasets/shapes` set through both transforms,
//! and the errors for bad samples, each naming its file.

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use clip_core::preprocess::stack_images;
use clip_seg::data::{
    LabelSet, SegmentationColumns, SegmentationSample, SegmentationTable, SegmentationTransformConfig, load_sample,
    stack_masks,
};
use clip_seg::nouns::NounPrompts;
use rand::SeedableRng;
use rand::rngs::StdRng;

fn shapes() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../datasets/shapes")
}

#[test]
fn shapes_dataset_loads_through_both_transforms() {
    let labels = LabelSet::read(&shapes().join("labels.txt")).unwrap();
    assert_eq!(labels.names, ["background", "circle", "square", "triangle"]);
    let table = SegmentationTable::read(&shapes().join("train.tsv"), &SegmentationColumns::default()).unwrap();
    assert_eq!(table.samples.len(), 192);
    let config = SegmentationTransformConfig::new()
        .with_image_size(24)
        .with_scale((0.5, 2.0));
    let mut rng = StdRng::seed_from_u64(0);
    let device = Device::flex();
    for transform in [config.init_train().unwrap(), config.init_eval().unwrap()] {
        let loaded: Vec<_> = table.samples[..4]
            .iter()
            .map(|s| load_sample(s, &labels, &transform, &mut rng).unwrap())
            .collect();
        for (image, mask) in &loaded {
            assert_eq!(image.shape, [3, 24, 24]);
            assert_eq!((mask.height, mask.width), (24, 24));
            assert!(
                mask.values
                    .iter()
                    .all(|&v| (0..4).contains(&v) || v == labels.ignore_index)
            );
        }
        // The eval transform keeps the whole image, so every pixel has a label.
        if !transform.is_train() {
            assert!(loaded.iter().all(|(_, m)| m.values.iter().all(|&v| v < 4)));
        }
        let images: Vec<_> = loaded.iter().map(|(i, _)| i.clone()).collect();
        let masks: Vec<_> = loaded.into_iter().map(|(_, m)| m).collect();
        assert_eq!(stack_images(&images, &device).unwrap().dims(), [4, 3, 24, 24]);
        assert_eq!(stack_masks(&masks, &device).unwrap().dims(), [4, 24, 24]);
    }
    // Every caption yields nouns among the label names.
    let prompts = NounPrompts {
        vocabulary: Some(labels.names.clone()),
        ..NounPrompts::default()
    };
    for sample in &table.samples {
        let nouns = prompts.nouns(sample.caption.as_deref().unwrap());
        assert!(
            nouns.len() >= 2 && nouns.contains(&"background".to_string()),
            "{nouns:?}"
        );
    }
}

/// A folder with a 4x3 image, and a sample pairing it with a mask written by `mask`. The
/// folder is removed when the returned `TempDir` is dropped.
fn sample_with_mask(name: &str, mask: impl FnOnce(&Path)) -> (tempfile::TempDir, SegmentationSample) {
    let dir = tempfile::Builder::new().prefix(&format!("clip-seg-data-{name}-")).tempdir().unwrap();
    let image = dir.path().join("image.png");
    image::RgbImage::new(4, 3).save(&image).unwrap();
    let mask_path = dir.path().join("mask.png");
    mask(&mask_path);
    let sample = SegmentationSample {
        image,
        mask: mask_path,
        caption: None,
        line: 7,
    };
    (dir, sample)
}

fn load_error(sample: &SegmentationSample) -> String {
    let labels = LabelSet::new(vec!["a".into(), "b".into()]);
    let transform = SegmentationTransformConfig::new()
        .with_image_size(4)
        .init_eval()
        .unwrap();
    load_sample(sample, &labels, &transform, &mut StdRng::seed_from_u64(0))
        .unwrap_err()
        .to_string()
}

#[test]
fn mask_of_the_wrong_size_names_both_files() {
    let (_dir, sample) = sample_with_mask("size", |p| image::GrayImage::new(3, 3).save(p).unwrap());
    let err = load_error(&sample);
    assert!(err.contains("mask.png: the mask is 3x3 but its image"), "{err}");
    assert!(
        err.contains("image.png is 4x3") && err.contains("table line 7"),
        "{err}"
    );
}

#[test]
fn label_out_of_range_names_the_mask_value_and_count() {
    let (_dir, sample) = sample_with_mask("range", |p| {
        image::GrayImage::from_pixel(4, 3, image::Luma([2])).save(p).unwrap()
    });
    let err = load_error(&sample);
    assert!(
        err.contains("mask.png: mask value 2 is not a label: there are 2 labels"),
        "{err}"
    );
}

#[test]
fn corrupt_mask_names_the_file() {
    let (_dir, sample) = sample_with_mask("corrupt", |p| std::fs::write(p, b"\x89PNG but not really").unwrap());
    let err = load_error(&sample);
    assert!(err.contains("mask.png: cannot decode the mask PNG"), "{err}");
}

#[test]
fn missing_column_names_the_table() {
    let dir = tempfile::Builder::new().prefix("clip-seg-data-columns-").tempdir().unwrap();
    let table = dir.path().join("train.csv");
    std::fs::write(&table, "image,caption\na.jpg,a cat\n").unwrap();
    let err = SegmentationTable::read(&table, &SegmentationColumns::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("train.csv:1: no column \"mask\" (columns: image, caption)"),
        "{err}"
    );
}

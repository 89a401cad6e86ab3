//! COCO datasets on tiny JSON files and images written into a temporary folder.

use std::path::{Path, PathBuf};

use clip_core::preprocess::{OPENAI_MEAN, OPENAI_STD};
use clip_det::data::{
    CategorySplit, CocoDataset, DetectionDataError, load_detection_sample, read_proposals,
};
use image::{Rgb, RgbImage};

/// A fresh scratch directory with an empty `images` folder, removed when dropped.
fn scratch(name: &str) -> tempfile::TempDir {
    let dir = tempfile::Builder::new().prefix(&format!("clip-det-data-{name}-")).tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("images")).unwrap();
    dir
}

/// A 4x2 image: left half red, right half blue.
fn write_image(path: &Path) {
    let image = RgbImage::from_fn(4, 2, |x, _| {
        if x < 2 {
            Rgb([255, 0, 0])
        } else {
            Rgb([0, 0, 255])
        }
    });
    image.save(path).unwrap();
}

const CATEGORIES: &str = r#"[{"id": 3, "name": "circle", "frequency": "f"},
    {"id": 7, "name": "star", "frequency": "r"}, {"id": 9, "name": "square"}]"#;

fn write_json(dir: &Path, annotations: &str) -> PathBuf {
    let json = format!(
        r#"{{"images": [{{"id": 10, "file_name": "a.png", "width": 4, "height": 2, "caption": "a red circle and a blue star"}},
            {{"id": 11, "file_name": "b.png", "width": 4, "height": 2}}],
           "annotations": {annotations}, "categories": {CATEGORIES}}}"#
    );
    let path = dir.join("train.json");
    std::fs::write(&path, json).unwrap();
    path
}

const ANNOTATIONS: &str = r#"[
    {"id": 1, "image_id": 10, "category_id": 7, "bbox": [0, 0, 2, 1], "iscrowd": 0, "tokens_positive": [[19, 28]]},
    {"id": 2, "image_id": 10, "category_id": 3, "bbox": [1, 0.5, 3, 1.5], "tokens_positive": [[2, 12]]},
    {"id": 3, "image_id": 10, "category_id": 9, "bbox": [0, 0, 4, 2], "iscrowd": 1},
    {"id": 4, "image_id": 11, "category_id": 9, "bbox": [2, 0, 1, 1]}]"#;

fn dataset(name: &str) -> (tempfile::TempDir, CocoDataset) {
    let tmp = scratch(name);
    let dir = tmp.path();
    write_image(&dir.join("images/a.png"));
    write_image(&dir.join("images/b.png"));
    let json = write_json(dir, ANNOTATIONS);
    let dataset = CocoDataset::read(&json, &dir.join("images")).unwrap();
    (tmp, dataset)
}

#[test]
fn reads_images_annotations_categories_and_captions() {
    let (dir, data) = dataset("read");
    assert_eq!(data.categories.len(), 3);
    assert_eq!(data.categories[1].name, "star");
    assert_eq!(data.categories[1].frequency.as_deref(), Some("r"));
    assert_eq!(data.categories[2].frequency, None);
    let a = &data.images[0];
    assert_eq!((a.id, a.width, a.height), (10, 4, 2));
    assert_eq!(a.file, dir.path().join("images/a.png"));
    assert_eq!(a.annotations.len(), 3);
    // category_id 7 is the second category; [x, y, w, h] = [1, 0.5, 3, 1.5] is [1, 0.5, 4, 2].
    assert_eq!(a.annotations[0].category, 1);
    assert_eq!(a.annotations[1].bbox, [1.0, 0.5, 4.0, 2.0]);
    assert!(a.annotations[2].iscrowd && !a.annotations[0].iscrowd);
    let caption = a.caption.as_deref().unwrap();
    assert_eq!(
        &caption[a.annotations[0].tokens_positive[0].clone()],
        "blue star"
    );
    assert_eq!(
        &caption[a.annotations[1].tokens_positive[0].clone()],
        "red circle"
    );
    assert_eq!(data.images[1].caption, None);
    assert!(data.images[1].annotations[0].tokens_positive.is_empty());
}

#[test]
fn write_then_read_gives_the_same_dataset() {
    let (dir, data) = dataset("write");
    let out = dir.path().join("out/copy.json");
    data.write(&out).unwrap();
    let back = CocoDataset::read(&out, &dir.path().join("images")).unwrap();
    assert_eq!(back.images, data.images);
    assert_eq!(back.categories, data.categories);
    assert!(!dir.path().join("out/copy.json.tmp").exists());
}

fn read_error(name: &str, annotations: &str) -> String {
    let tmp = scratch(name);
    let dir = tmp.path();
    write_image(&dir.join("images/a.png"));
    write_image(&dir.join("images/b.png"));
    let json = write_json(dir, annotations);
    let error = CocoDataset::read(&json, &dir.join("images"))
        .unwrap_err()
        .to_string();
    assert!(error.contains("train.json"), "{error}");
    error
}

#[test]
fn malformed_annotations_are_named() {
    let bad_length = read_error(
        "length",
        r#"[{"id": 5, "image_id": 10, "category_id": 3, "bbox": [0, 0, 1]}]"#,
    );
    assert!(
        bad_length.contains("annotation 5") && bad_length.contains("4 numbers"),
        "{bad_length}"
    );
    let negative = read_error(
        "negative",
        r#"[{"id": 6, "image_id": 10, "category_id": 3, "bbox": [0, 0, -1, 1]}]"#,
    );
    assert!(
        negative.contains("annotation 6") && negative.contains("negative"),
        "{negative}"
    );
    let category = read_error(
        "category",
        r#"[{"id": 7, "image_id": 10, "category_id": 4, "bbox": [0, 0, 1, 1]}]"#,
    );
    assert!(
        category.contains("annotation 7") && category.contains("category_id 4"),
        "{category}"
    );
    let image = read_error(
        "image-id",
        r#"[{"id": 8, "image_id": 12, "category_id": 3, "bbox": [0, 0, 1, 1]}]"#,
    );
    assert!(
        image.contains("annotation 8") && image.contains("image_id 12"),
        "{image}"
    );
    let span = read_error(
        "span",
        r#"[{"id": 9, "image_id": 10, "category_id": 3, "bbox": [0, 0, 1, 1], "tokens_positive": [[20, 40]]}]"#,
    );
    assert!(
        span.contains("annotation 9") && span.contains("tokens_positive"),
        "{span}"
    );
    let field = read_error(
        "field",
        r#"[{"id": 9, "image_id": 10, "bbox": [0, 0, 1, 1]}]"#,
    );
    assert!(field.contains("category_id"), "{field}");
}

#[test]
fn missing_and_corrupt_images_are_named() {
    let tmp = scratch("missing");
    let dir = tmp.path();
    write_image(&dir.join("images/a.png"));
    let json = write_json(dir, "[]");
    let error = CocoDataset::read(&json, &dir.join("images")).unwrap_err();
    assert!(
        matches!(error, DetectionDataError::Image { id: 11, .. }),
        "{error}"
    );
    assert!(error.to_string().contains("b.png"), "{error}");

    std::fs::write(dir.join("images/b.png"), b"not a png").unwrap();
    let data = CocoDataset::read(&json, &dir.join("images")).unwrap();
    let error = load_detection_sample(&data.images[1], 4, false)
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("b.png") && error.contains("image 11"),
        "{error}"
    );
}

#[test]
fn samples_are_squashed_normalized_and_flipped() {
    let (_dir, data) = dataset("sample");
    let record = &data.images[0];
    let sample = load_detection_sample(record, 8, false).unwrap();
    assert_eq!(sample.image.shape, [3, 8, 8]);
    // Scale x by 8/4 = 2, y by 8/2 = 4; the crowd box is dropped.
    assert_eq!(
        sample.boxes,
        vec![[0.0, 0.0, 4.0, 4.0], [2.0, 2.0, 8.0, 8.0]]
    );
    assert_eq!(sample.labels, vec![1, 0]);
    assert_eq!(sample.spans, vec![vec![19..28], vec![2..12]]);
    // Pixel (row 0, col 0) is pure red: channel 0 is (1 - mean) / std, channel 2 is -mean / std.
    let red = (1.0 - OPENAI_MEAN[0]) / OPENAI_STD[0];
    assert!((sample.image.values[0] - red).abs() < 1e-5);
    let blue_at_left = sample.image.values[2 * 64];
    assert!((blue_at_left + OPENAI_MEAN[2] / OPENAI_STD[2]).abs() < 1e-5);

    // A flipped sample mirrors boxes (x -> 8 - x) and pixels (blue on the left).
    let flipped = load_detection_sample(record, 8, true).unwrap();
    assert_eq!(flipped.boxes, vec![[4.0, 0.0, 8.0, 4.0], [0.0, 2.0, 6.0, 8.0]]);
    assert!((flipped.image.values[2 * 64] - (1.0 - OPENAI_MEAN[2]) / OPENAI_STD[2]).abs() < 1e-5);
}

#[test]
fn splits_by_name_and_by_frequency() {
    let (_dir, data) = dataset("split");
    let split = CategorySplit::from_names(&data.categories, &["star".to_string()]).unwrap();
    assert_eq!((split.base, split.novel), (vec![0, 2], vec![1]));
    let rare = CategorySplit::lvis_rare(&data.categories);
    assert_eq!((rare.base, rare.novel), (vec![0, 2], vec![1]));
    let error = CategorySplit::from_names(&data.categories, &["hexagon".to_string()]).unwrap_err();
    assert!(error.to_string().contains("hexagon"), "{error}");
}

#[test]
fn dataset_split_partitions_images_reproducibly() {
    let (_dir, data) = dataset("partition");
    let (a, b) = data.clone().split(0.5, 3);
    assert_eq!((a.images.len(), b.images.len()), (1, 1));
    let mut ids: Vec<u64> = a.images.iter().chain(&b.images).map(|r| r.id).collect();
    ids.sort();
    assert_eq!(ids, vec![10, 11]);
    assert_eq!(data.clone().split(0.5, 3), (a, b));
    // Even a fraction of 1 keeps one image for training.
    let (kept, held_out) = data.split(1.0, 0);
    assert_eq!((kept.images.len(), held_out.images.len()), (1, 1));
}

#[test]
fn proposals_are_grouped_per_image_by_score() {
    let (dir, data) = dataset("proposals");
    let path = dir.path().join("proposals.json");
    std::fs::write(
        &path,
        r#"[{"image_id": 11, "bbox": [0, 0, 1, 1], "score": 0.2},
            {"image_id": 10, "bbox": [1, 1, 2, 1], "score": 0.3},
            {"image_id": 99, "bbox": [0, 0, 1, 1], "score": 0.9},
            {"image_id": 11, "bbox": [1, 0, 2, 2], "score": 0.8, "category_id": 1}]"#,
    )
    .unwrap();
    let proposals = read_proposals(&path, &data).unwrap();
    assert_eq!(
        proposals,
        vec![
            vec![[1.0, 1.0, 3.0, 2.0]],
            vec![[1.0, 0.0, 3.0, 2.0], [0.0, 0.0, 1.0, 1.0]]
        ]
    );
    std::fs::write(&path, r#"[{"image_id": 11, "bbox": [0, 0, 1, 1], "score": 0.2}, {"image_id": 11, "bbox": [0, 0], "score": 0.2}]"#)
        .unwrap();
    let error = read_proposals(&path, &data).unwrap_err().to_string();
    assert!(
        error.contains("proposals.json") && error.contains("proposal 1"),
        "{error}"
    );
}

#[test]
fn the_generated_det_shapes_dataset_reads() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../datasets/det-shapes");
    let train = CocoDataset::read(&root.join("train.json"), &root.join("images")).unwrap();
    let val = CocoDataset::read(&root.join("val.json"), &root.join("images")).unwrap();
    assert_eq!((train.images.len(), val.images.len()), (192, 64));
    let names: Vec<&str> = train.categories.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["circle", "square", "triangle", "star"]);
    assert_eq!(CategorySplit::lvis_rare(&train.categories).novel, vec![3]);
    for record in train.images.iter().chain(&val.images) {
        let caption = record.caption.as_deref().unwrap();
        assert!((1..=3).contains(&record.annotations.len()));
        for a in &record.annotations {
            // Each box's phrase is "<color> <category name>".
            let phrase = &caption[a.tokens_positive[0].clone()];
            assert!(phrase.ends_with(&train.categories[a.category].name), "{caption}: {phrase}");
            assert!(a.bbox[0] >= 0.0 && a.bbox[2] <= 64.0 && a.bbox[1] >= 0.0 && a.bbox[3] <= 64.0);
        }
    }
    let proposals = read_proposals(&root.join("proposals.json"), &val).unwrap();
    assert!(proposals.iter().all(|p| p.len() == 20));
    let sample = load_detection_sample(&val.images[0], 32, true).unwrap();
    assert_eq!(sample.image.shape, [3, 32, 32]);
}

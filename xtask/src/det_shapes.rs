//! Generates `datasets/det-shapes`, a tiny open-vocabulary detection set in COCO format: 64x64
//! images of one to three barely overlapping shapes (circle, square, triangle, star) in distinct
//! named colors on a plain background, captions with `tokens_positive` spans, and RPN-like
//! proposals. Seeded, so every run writes the same files.

use std::path::Path;

use anyhow::Context;
use clip_video::data::{SHAPE_COLORS, article};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

use crate::shapes::Shape;

const SIZE: u32 = 64;
const TRAIN: usize = 192;
const VAL: usize = 64;
const SEED: u64 = 20_261_207;
/// Category ids 1..=4 (the shape labels), names and LVIS-style frequencies; `star` is rare.
const CATEGORIES: [(&str, &str); 4] = [
    ("circle", "f"),
    ("square", "f"),
    ("triangle", "c"),
    ("star", "r"),
];
const PROPOSALS_PER_IMAGE: usize = 20;
const JITTERED_PER_BOX: usize = 3;

/// One generated image: pixels, `[x, y, w, h]` tight boxes with their labels, the caption and
/// each shape's character span in it.
struct Sample {
    image: image::RgbImage,
    boxes: Vec<[u32; 4]>,
    labels: Vec<u8>,
    caption: String,
    spans: Vec<[usize; 2]>,
}

pub fn generate(out: &Path) -> anyhow::Result<()> {
    let images_dir = out.join("images");
    std::fs::create_dir_all(&images_dir)
        .with_context(|| format!("creating {}", images_dir.display()))?;
    let mut rng = StdRng::seed_from_u64(SEED);
    let categories: Vec<Value> = CATEGORIES
        .iter()
        .enumerate()
        .map(|(i, (name, frequency))| json!({"id": i + 1, "name": name, "frequency": frequency}))
        .collect();
    let mut splits = [(Vec::new(), Vec::new()), (Vec::new(), Vec::new())];
    let mut proposals = Vec::new();
    let mut annotation_id = 1;
    for index in 0..TRAIN + VAL {
        let sample = sample(&mut rng);
        let name = format!("{index:04}.png");
        let path = images_dir.join(&name);
        sample
            .image
            .save(&path)
            .with_context(|| format!("writing {}", path.display()))?;
        let image_id = index + 1;
        let (images, annotations) = &mut splits[usize::from(index >= TRAIN)];
        images.push(json!({
            "id": image_id, "file_name": name, "width": SIZE, "height": SIZE, "caption": sample.caption
        }));
        for ((bbox, label), span) in sample.boxes.iter().zip(&sample.labels).zip(&sample.spans) {
            annotations.push(json!({
                "id": annotation_id, "image_id": image_id, "category_id": label, "bbox": bbox,
                "area": bbox[2] * bbox[3], "iscrowd": 0, "tokens_positive": [span]
            }));
            annotation_id += 1;
        }
        proposals.extend(image_proposals(&sample.boxes, &mut rng).into_iter().map(
            |(bbox, score)| {
                let bbox = bbox.map(|v| (f64::from(v) * 10.0).round() / 10.0);
                let score = (f64::from(score) * 100.0).round() / 100.0;
                json!({"image_id": image_id, "category_id": 1, "bbox": bbox, "score": score})
            },
        ));
    }
    let [
        (train_images, train_annotations),
        (val_images, val_annotations),
    ] = splits;
    for (file, images, annotations) in [
        ("train.json", train_images, train_annotations),
        ("val.json", val_images, val_annotations),
    ] {
        let coco = json!({"images": images, "annotations": annotations, "categories": categories});
        write(&out.join(file), &serde_json::to_string(&coco)?)?;
    }
    write(
        &out.join("proposals.json"),
        &serde_json::to_string(&proposals)?,
    )?;
    write(&out.join("README.md"), README)?;
    println!(
        "wrote {TRAIN} training and {VAL} validation images to {}",
        out.display()
    );
    Ok(())
}

/// One image whose shapes each keep at least 20 visible pixels and overlap the others' boxes
/// by at most 10% IoU.
fn sample(rng: &mut StdRng) -> Sample {
    'retry: loop {
        let count = rng.random_range(1..=3);
        let mut colors: Vec<usize> = (0..SHAPE_COLORS.len()).collect();
        colors.shuffle(rng);
        let mut shapes: Vec<Shape> = Vec::new();
        for &color in &colors[..count] {
            let radius = rng.random_range(6.0..14.0f32);
            let extent = radius + 1.0;
            let shape = Shape {
                label: rng.random_range(1..=4),
                centre: (
                    rng.random_range(extent..SIZE as f32 - extent),
                    rng.random_range(extent..SIZE as f32 - extent),
                ),
                radius,
                color,
            };
            let square = |s: &Shape| {
                [
                    s.centre.0 - s.radius,
                    s.centre.1 - s.radius,
                    s.centre.0 + s.radius,
                    s.centre.1 + s.radius,
                ]
            };
            if shapes
                .iter()
                .any(|s| iou(&square(s), &square(&shape)) > 0.1)
            {
                continue 'retry;
            }
            shapes.push(shape);
        }
        // Topmost shape per pixel; tight boxes of the visible pixels.
        let owner = |x: u32, y: u32| shapes.iter().rposition(|s| s.contains(x, y));
        let mut bounds = vec![[u32::MAX, u32::MAX, 0, 0]; shapes.len()];
        let mut pixels = vec![0usize; shapes.len()];
        let background = if rng.random_bool(0.5) {
            [40u8; 3]
        } else {
            [200u8; 3]
        };
        let mut image = image::RgbImage::from_pixel(SIZE, SIZE, image::Rgb(background));
        for y in 0..SIZE {
            for x in 0..SIZE {
                if let Some(i) = owner(x, y) {
                    image.put_pixel(x, y, image::Rgb(SHAPE_COLORS[shapes[i].color].1));
                    let b = &mut bounds[i];
                    *b = [b[0].min(x), b[1].min(y), b[2].max(x + 1), b[3].max(y + 1)];
                    pixels[i] += 1;
                }
            }
        }
        if pixels.iter().any(|&p| p < 20) {
            continue;
        }
        let (caption, spans) = caption(&shapes);
        return Sample {
            image,
            boxes: bounds
                .iter()
                .map(|b| [b[0], b[1], b[2] - b[0], b[3] - b[1]])
                .collect(),
            labels: shapes.iter().map(|s| s.label).collect(),
            caption,
            spans,
        };
    }
}

fn iou(a: &[f32; 4], b: &[f32; 4]) -> f32 {
    let w = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let h = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let area = |r: &[f32; 4]| (r[2] - r[0]) * (r[3] - r[1]);
    w * h / (area(a) + area(b) - w * h)
}

/// "a red circle", "a red circle and a blue star", "a red circle, a blue star and a green
/// square", with the character span of each "color name" phrase.
fn caption(shapes: &[Shape]) -> (String, Vec<[usize; 2]>) {
    let mut text = String::new();
    let mut spans = Vec::new();
    for (i, shape) in shapes.iter().enumerate() {
        if i > 0 {
            text.push_str(if i + 1 == shapes.len() { " and " } else { ", " });
        }
        let color = SHAPE_COLORS[shape.color].0;
        text.push_str(article(color));
        text.push(' ');
        let start = text.len();
        text.push_str(color);
        text.push(' ');
        text.push_str(CATEGORIES[usize::from(shape.label) - 1].0);
        spans.push([start, text.len()]);
    }
    (text, spans)
}

/// About [`PROPOSALS_PER_IMAGE`] `[x, y, w, h]` boxes with scores, as an RPN would give:
/// [`JITTERED_PER_BOX`] jittered copies of each ground-truth box (scores 0.6..1) and random
/// boxes (scores 0..0.5), clipped to the image (written rounded to 0.1 pixel and 0.01).
fn image_proposals(boxes: &[[u32; 4]], rng: &mut StdRng) -> Vec<([f32; 4], f32)> {
    let size = SIZE as f32;
    let to_xywh = |[x1, y1, x2, y2]: [f32; 4]| {
        let [x1, y1, x2, y2] = [x1, y1, x2, y2].map(|v| v.clamp(0.0, size));
        [x1, y1, (x2 - x1).max(1.0), (y2 - y1).max(1.0)]
    };
    let mut out = Vec::with_capacity(PROPOSALS_PER_IMAGE);
    for b in boxes {
        let [x, y, w, h] = b.map(|v| v as f32);
        for _ in 0..JITTERED_PER_BOX {
            let mut jitter = |extent: f32| rng.random_range(-0.15..0.15f32) * extent;
            let corners = [
                x + jitter(w),
                y + jitter(h),
                x + w + jitter(w),
                y + h + jitter(h),
            ];
            out.push((to_xywh(corners), rng.random_range(0.6..1.0f32)));
        }
    }
    while out.len() < PROPOSALS_PER_IMAGE {
        let (w, h) = (
            rng.random_range(6.0..40.0f32),
            rng.random_range(6.0..40.0f32),
        );
        let (x, y) = (
            rng.random_range(0.0..size - w),
            rng.random_range(0.0..size - h),
        );
        out.push((to_xywh([x, y, x + w, y + h]), rng.random_range(0.0..0.5f32)));
    }
    out
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

const README: &str = "# det-shapes

A tiny generated open-vocabulary detection dataset in COCO format, for tests and smoke runs of
clip-det (regenerate with `cargo xtask det-shapes`; the generator is seeded, so the files are
identical).

- `images/NNNN.png`: 64x64 RGB; a plain dark or light grey background and one to three filled
  shapes (circle, square, upward triangle, five-pointed star), each in a different one of six
  named colors (red, green, blue, yellow, purple, orange). Shapes' squares overlap by at most
  10% IoU; every shape keeps at least 20 visible pixels.
- `train.json` (images 0000-0191) and `val.json` (images 0192-0255): COCO detection files.
  `bbox` is the tight `[x, y, w, h]` box of the shape's visible pixels. Categories (ids 1-4)
  carry LVIS-style frequencies: circle `f`, square `f`, triangle `c`, star `r`; star is the
  novel category of the open-vocabulary configs (its annotations are present in `train.json`;
  training drops them through the base/novel split). Every image has a `caption` naming its
  shapes in drawing order (\"a red circle and a blue star\"), and every annotation has
  `tokens_positive`: the character span `[start, end)` of its \"color name\" phrase.
- `proposals.json`: COCO results format (`image_id`, `bbox` as `[x, y, w, h]`, `score`,
  `category_id` always 1) for all images: per image, three jittered copies of each
  ground-truth box (corners moved by up to 15% of the box size, scores 0.6-1.0) and random
  boxes (scores 0.0-0.5), 20 in all when there are at most six shapes' worth of jitter.
";

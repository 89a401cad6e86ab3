//! `coco_ap` against pycocotools' `COCOeval` itself: random scenes (jittered, duplicated and
//! spurious detections, crowd boxes, tied scores, an image over the 100-detection cap, IoUs
//! that land exactly on a threshold, a category whose recall lands exactly on the recall
//! points) are written as COCO JSON, scored by both, and the figures compared.
//!
//! pycocotools is a Python package that `.ci/run` installs; outside CI, a machine without it
//! skips the comparison.

use std::path::Path;
use std::process::Command;

use clip_det::boxes::BoxXyxy;
use clip_det::eval::{Detection, GroundTruthBox, coco_ap};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

const IMAGES: usize = 12;
/// Category 3 has ground truth but no detections, category 4 detections but no ground truth.
const CATEGORIES: usize = 5;
/// Category 1 gets exactly this many regular boxes, so recall moves in steps of 1/100 and
/// lands exactly on COCO's recall points.
const HUNDRED_BOX_CATEGORY: usize = 1;

struct Scene {
    ground_truth: Vec<GroundTruthBox>,
    detections: Vec<Detection>,
}

fn random_box(rng: &mut StdRng) -> BoxXyxy {
    let x = rng.random_range(0.0..200.0f32);
    let y = rng.random_range(0.0..200.0f32);
    [
        x,
        y,
        x + rng.random_range(4.0..60.0f32),
        y + rng.random_range(4.0..60.0f32),
    ]
}

/// A detection near `b`: each side moved by up to `spread` of the box size.
fn jittered(rng: &mut StdRng, b: &BoxXyxy, spread: f32) -> BoxXyxy {
    let (w, h) = (b[2] - b[0], b[3] - b[1]);
    let mut shift = |size: f32| rng.random_range(-spread..=spread) * size;
    let x1 = b[0] + shift(w);
    let y1 = b[1] + shift(h);
    let x2 = (b[2] + shift(w)).max(x1 + 1.0);
    let y2 = (b[3] + shift(h)).max(y1 + 1.0);
    [x1, y1, x2, y2]
}

/// A score; one in four is rounded to a tenth, so scores tie within and across images.
fn score(rng: &mut StdRng) -> f32 {
    let s = rng.random_range(0.01..1.0f32);
    if rng.random_bool(0.25) {
        (s * 10.0).round() / 10.0
    } else {
        s
    }
}

fn scene(seed: u64) -> Scene {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut ground_truth = Vec::new();
    let mut detections = Vec::new();
    for _ in 0..100 {
        let image = rng.random_range(0..IMAGES);
        ground_truth.push(GroundTruthBox {
            image,
            category: HUNDRED_BOX_CATEGORY,
            bbox: random_box(&mut rng),
            iscrowd: false,
        });
    }
    for image in 0..IMAGES {
        for category in [0, 2, 3] {
            for _ in 0..rng.random_range(0..4) {
                ground_truth.push(GroundTruthBox {
                    image,
                    category,
                    bbox: random_box(&mut rng),
                    iscrowd: rng.random_bool(0.1),
                });
            }
        }
    }
    // Detections of the ground truth (some missed, some twice) and spurious ones.
    for g in &ground_truth {
        if g.category == 3 {
            continue;
        }
        for _ in 0..[0, 1, 1, 1, 2][rng.random_range(0..5)] {
            let spread = rng.random_range(0.0..0.3f32);
            detections.push(Detection {
                image: g.image,
                category: g.category,
                bbox: jittered(&mut rng, &g.bbox, spread),
                score: score(&mut rng),
            });
        }
    }
    for image in 0..IMAGES {
        for category in [0, 1, 2, 4] {
            for _ in 0..rng.random_range(0..3) {
                detections.push(Detection {
                    image,
                    category,
                    bbox: random_box(&mut rng),
                    score: score(&mut rng),
                });
            }
        }
    }
    // Over the 100-detection cap in one image and category.
    let target = random_box(&mut rng);
    ground_truth.push(GroundTruthBox {
        image: 0,
        category: 0,
        bbox: target,
        iscrowd: false,
    });
    for _ in 0..130 {
        detections.push(Detection {
            image: 0,
            category: 0,
            bbox: jittered(&mut rng, &target, 0.4),
            score: score(&mut rng),
        });
    }
    // IoUs of exactly 0.5, 0.75 and 0.85 with a 10x10 box.
    let exact = [0.0, 0.0, 10.0, 10.0];
    ground_truth.push(GroundTruthBox {
        image: 1,
        category: 2,
        bbox: exact,
        iscrowd: false,
    });
    for (bottom, s) in [(5.0, 0.9), (7.5, 0.8), (8.5, 0.7)] {
        detections.push(Detection {
            image: 1,
            category: 2,
            bbox: [0.0, 0.0, 10.0, bottom],
            score: s,
        });
    }
    Scene {
        ground_truth,
        detections,
    }
}

/// `[x, y, w, h]` in double precision, so that `x + w` gives back `x2` exactly.
fn xywh(b: &BoxXyxy) -> [f64; 4] {
    let [x1, y1, x2, y2] = b.map(f64::from);
    [x1, y1, x2 - x1, y2 - y1]
}

fn write_coco(scene: &Scene, dir: &Path) {
    let images: Vec<Value> = (0..IMAGES)
        .map(|i| json!({"id": i + 1, "file_name": format!("{i}.png"), "width": 300, "height": 300}))
        .collect();
    let categories: Vec<Value> = (0..CATEGORIES)
        .map(|c| json!({"id": c + 1, "name": format!("category {c}")}))
        .collect();
    let annotations: Vec<Value> = scene
        .ground_truth
        .iter()
        .enumerate()
        .map(|(id, g)| {
            let bbox = xywh(&g.bbox);
            json!({"id": id + 1, "image_id": g.image + 1, "category_id": g.category + 1,
                   "bbox": bbox, "area": bbox[2] * bbox[3], "iscrowd": u8::from(g.iscrowd)})
        })
        .collect();
    let results: Vec<Value> = scene
        .detections
        .iter()
        .map(|d| {
            json!({"image_id": d.image + 1, "category_id": d.category + 1,
                   "bbox": xywh(&d.bbox), "score": f64::from(d.score)})
        })
        .collect();
    let ground_truth = json!({"images": images, "categories": categories, "annotations": annotations});
    std::fs::write(dir.join("gt.json"), ground_truth.to_string()).unwrap();
    std::fs::write(dir.join("dt.json"), Value::from(results).to_string()).unwrap();
}

/// pycocotools' figures for the scene in `dir`: `[AP, AP50, AP75]` and each category's AP
/// (`None` where COCOeval leaves it at -1); `None` outside CI when pycocotools is missing.
fn pycocotools(dir: &Path) -> Option<([f64; 3], Vec<Option<f64>>)> {
    let script = r#"
import contextlib, io, json, sys
import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
with contextlib.redirect_stdout(io.StringIO()):
    gt = COCO(sys.argv[1] + "/gt.json")
    dt = gt.loadRes(sys.argv[1] + "/dt.json")
    e = COCOeval(gt, dt, "bbox")
    e.evaluate(); e.accumulate(); e.summarize()
per_category = []
for k in range(len(e.params.catIds)):
    p = e.eval["precision"][:, :, k, 0, -1]
    per_category.append(float(np.mean(p[p > -1])) if (p > -1).any() else None)
print(json.dumps({"stats": [float(s) for s in e.stats[:3]], "per_category": per_category}))
"#;
    let in_ci = std::env::var_os("CI").is_some();
    let result = Command::new("python3").args(["-c", script]).arg(dir).output();
    let out = match result {
        Ok(out) => out,
        Err(e) if !in_ci => {
            eprintln!("python3 not available ({e}); pycocotools comparison skipped");
            return None;
        }
        Err(e) => panic!("python3: {e}"),
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        if !in_ci && stderr.contains("No module named 'pycocotools'") {
            eprintln!("pycocotools is not installed (pip install pycocotools); comparison skipped");
            return None;
        }
        panic!("pycocotools failed: {stderr}");
    }
    let figures: Value = serde_json::from_slice(&out.stdout).unwrap();
    let stats: Vec<f64> = serde_json::from_value(figures["stats"].clone()).unwrap();
    let per_category = serde_json::from_value(figures["per_category"].clone()).unwrap();
    Some(([stats[0], stats[1], stats[2]], per_category))
}

fn assert_close(ours: f64, theirs: f64, what: &str, seed: u64) {
    assert!(
        (ours - theirs).abs() < 1e-9,
        "scene {seed}, {what}: ours {ours}, pycocotools {theirs}"
    );
}

#[test]
fn coco_ap_matches_pycocotools() {
    let tmp = tempfile::Builder::new().prefix("clip-det-pycocotools-").tempdir().unwrap();
    let dir = tmp.path();
    for seed in 0..4 {
        let scene = scene(seed);
        write_coco(&scene, dir);
        let Some((stats, per_category)) = pycocotools(dir) else {
            return;
        };
        let categories: Vec<usize> = (0..CATEGORIES).collect();
        let report = coco_ap(&scene.detections, &scene.ground_truth, &categories);
        assert_close(report.ap, stats[0], "AP", seed);
        assert_close(report.ap50, stats[1], "AP50", seed);
        assert_close(report.ap75, stats[2], "AP75", seed);
        assert_eq!(per_category.len(), CATEGORIES);
        for ((category, ours), theirs) in report.per_category.iter().zip(&per_category) {
            match (ours, theirs) {
                (Some(a), Some(b)) => assert_close(*a, *b, &format!("category {category}"), seed),
                _ => assert_eq!(ours, theirs, "scene {seed}, category {category}"),
            }
        }
        // The scene exercises what it claims: no detections for 3, no ground truth for 4.
        assert!(per_category[3] == Some(0.0) && per_category[4].is_none());
    }
}

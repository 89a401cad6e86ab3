//! Generates `datasets/moving-shapes`, a tiny video set: clips of 8 frames (32x32 PNG) of one
//! shape (circle, square, triangle) in a named color moving left, right, up or down over a
//! static noisy background, with captions ("a red circle moving to the left"), direction
//! labels ("moving left"), a train/val split, and the same clips as MSR-VTT-style annotations.
//! Seeded, so every run writes the same files.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const SIZE: u32 = 32;
const FRAMES: usize = 8;
const TRAIN: usize = 96;
const VAL: usize = 32;
const SEED: u64 = 20_261_123;
const SHAPES: [&str; 3] = ["circle", "square", "triangle"];
/// Direction name and unit step (x, y); image y grows downwards.
const DIRECTIONS: [(&str, (f32, f32)); 4] = [
    ("left", (-1.0, 0.0)),
    ("right", (1.0, 0.0)),
    ("up", (0.0, -1.0)),
    ("down", (0.0, 1.0)),
];
const COLORS: [(&str, [u8; 3]); 6] = [
    ("red", [220, 40, 40]),
    ("green", [40, 190, 60]),
    ("blue", [40, 70, 230]),
    ("yellow", [230, 210, 40]),
    ("purple", [150, 60, 200]),
    ("orange", [240, 140, 30]),
];

/// One clip: shape index, color index, direction index, half-size, first centre and step per
/// frame in pixels, and whether the background is dark.
struct Clip {
    shape: usize,
    color: usize,
    direction: usize,
    radius: f32,
    start: (f32, f32),
    speed: f32,
    dark: bool,
}

impl Clip {
    /// A random clip moving in `direction`, the shape wholly inside every frame.
    fn random(direction: usize, rng: &mut StdRng) -> Self {
        let radius = rng.random_range(4.0..7.0f32);
        let speed = rng.random_range(1.5..2.5f32);
        let travel = speed * (FRAMES - 1) as f32;
        let (dx, dy) = DIRECTIONS[direction].1;
        let mut coordinate = |step: f32| {
            let (low, high) = (radius, SIZE as f32 - radius);
            match step {
                s if s > 0.0 => rng.random_range(low..=high - travel),
                s if s < 0.0 => rng.random_range(low + travel..=high),
                _ => rng.random_range(low..=high),
            }
        };
        let start = (coordinate(dx), coordinate(dy));
        Self {
            shape: rng.random_range(0..SHAPES.len()),
            color: rng.random_range(0..COLORS.len()),
            direction,
            radius,
            start,
            speed,
            dark: rng.random_bool(0.5),
        }
    }

    /// Whether the pixel centre `(x + 0.5, y + 0.5)` is inside the shape in frame `frame`.
    fn contains(&self, frame: usize, x: u32, y: u32) -> bool {
        let (dx, dy) = DIRECTIONS[self.direction].1;
        let shift = self.speed * frame as f32;
        let centre = (self.start.0 + dx * shift, self.start.1 + dy * shift);
        let (px, py) = (x as f32 + 0.5 - centre.0, y as f32 + 0.5 - centre.1);
        let r = self.radius;
        match self.shape {
            0 => px * px + py * py <= r * r,
            1 => px.abs() <= r && py.abs() <= r,
            // Pointing up: apex (0, -r), base from (-r, r) to (r, r).
            _ => py <= r && px.abs() <= (py + r) / 2.0,
        }
    }

    /// The frames: the shape drawn over a background that stays still (a base color, a gentle
    /// gradient and fixed pixel noise), with a little fresh noise on the shape in every frame.
    fn frames(&self, rng: &mut StdRng) -> Vec<image::RgbImage> {
        let base: [f32; 3] = std::array::from_fn(|_| {
            if self.dark {
                rng.random_range(20.0..60.0)
            } else {
                rng.random_range(180.0..220.0)
            }
        });
        let slope = (rng.random_range(-1.0..1.0f32), rng.random_range(-1.0..1.0f32));
        let background = image::RgbImage::from_fn(SIZE, SIZE, |x, y| {
            let ramp = slope.0 * x as f32 + slope.1 * y as f32;
            image::Rgb(base.map(|b| (b + ramp + rng.random_range(-3.0..=3.0f32)).clamp(0.0, 255.0) as u8))
        });
        let color = COLORS[self.color].1.map(f32::from);
        (0..FRAMES)
            .map(|frame| {
                let mut image = background.clone();
                for (x, y, pixel) in image.enumerate_pixels_mut() {
                    if self.contains(frame, x, y) {
                        pixel.0 = color.map(|c| (c + rng.random_range(-2.0..=2.0f32)).clamp(0.0, 255.0) as u8);
                    }
                }
                image
            })
            .collect()
    }

    /// Two captions: "a red circle moving to the left" and "a red circle going left on a dark
    /// background".
    fn captions(&self) -> [String; 2] {
        let color = COLORS[self.color].0;
        let article = if color.starts_with(['a', 'e', 'i', 'o', 'u']) {
            "an"
        } else {
            "a"
        };
        let thing = format!("{article} {color} {}", SHAPES[self.shape]);
        let direction = DIRECTIONS[self.direction].0;
        let towards = match direction {
            "left" | "right" => format!("to the {direction}"),
            _ => direction.to_string(),
        };
        let background = if self.dark { "dark" } else { "light" };
        [
            format!("{thing} moving {towards}"),
            format!("{thing} going {direction} on a {background} background"),
        ]
    }

    fn label(&self) -> String {
        format!("moving {}", DIRECTIONS[self.direction].0)
    }
}

pub fn generate(out: &Path) -> anyhow::Result<()> {
    let clips_dir = out.join("clips");
    if clips_dir.exists() {
        std::fs::remove_dir_all(&clips_dir).with_context(|| format!("removing {}", clips_dir.display()))?;
    }
    let mut rng = StdRng::seed_from_u64(SEED);
    let mut captions = [String::new(), String::new(), String::new()];
    let mut labels = [String::new(), String::new(), String::new()];
    for table in captions.iter_mut() {
        table.push_str("video\tcaption\n");
    }
    for table in labels.iter_mut() {
        table.push_str("video\tlabel\n");
    }
    let (mut json_videos, mut json_sentences) = (Vec::new(), Vec::new());
    for index in 0..TRAIN + VAL {
        // Directions take turns, so both splits are balanced.
        let clip = Clip::random(index % DIRECTIONS.len(), &mut rng);
        let id = format!("{index:04}");
        let dir = clips_dir.join(&id);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        for (frame, image) in clip.frames(&mut rng).iter().enumerate() {
            let path = dir.join(format!("{frame:02}.png"));
            image
                .save(&path)
                .with_context(|| format!("writing {}", path.display()))?;
        }
        let split = if index < TRAIN { 1 } else { 2 };
        let video = format!("clips/{id}");
        for caption in clip.captions() {
            for table in [0, split] {
                writeln!(captions[table], "{video}\t{caption}")?;
            }
            json_sentences.push(serde_json::json!({
                "video_id": id,
                "caption": caption,
                "sen_id": json_sentences.len(),
            }));
        }
        for table in [0, split] {
            writeln!(labels[table], "{video}\t{}", clip.label())?;
        }
        json_videos.push(serde_json::json!({
            "video_id": id,
            "id": index,
            "split": if index < TRAIN { "train" } else { "validate" },
        }));
    }
    for (prefix, table) in ["", "train_", "val_"].into_iter().enumerate() {
        write(&out.join(format!("{table}captions.tsv")), &captions[prefix])?;
        write(&out.join(format!("{table}labels.tsv")), &labels[prefix])?;
    }
    let json = serde_json::json!({ "videos": json_videos, "sentences": json_sentences });
    write(&out.join("msrvtt.json"), &(serde_json::to_string_pretty(&json)? + "\n"))?;
    write(&out.join("README.md"), README)?;
    println!("wrote {TRAIN} training and {VAL} validation clips to {}", out.display());
    Ok(())
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

const README: &str = "# moving-shapes

A tiny generated video dataset for tests and smoke runs of clip-video
(regenerate with `cargo xtask videos`; the generator is seeded, so the files are identical).

- `clips/NNNN/00.png` ... `07.png`: 128 clips as frame folders, 8 frames of 32x32 RGB each.
  One filled shape (circle, square or upward triangle) in one of six named colors (red, green,
  blue, yellow, purple, orange), 4 to 7 pixels in half-size, moves 1.5 to 2.5 pixels per frame
  left, right, up or down, staying wholly inside the frame, over a still background (dark or
  light, a gentle gradient and fixed pixel noise); the shape gets a little fresh noise in every
  frame. Directions take turns (clip `i` moves in direction `i mod 4`: left, right, up, down).
- `captions.tsv`: columns `video`, `caption`, two captions per clip, e.g.
  \"a red circle moving to the left\" and \"a red circle going left on a dark background\".
- `labels.tsv`: columns `video`, `label`, one of \"moving left\", \"moving right\",
  \"moving up\", \"moving down\".
- `train_captions.tsv`, `train_labels.tsv`: clips 0000 to 0095 (96 clips, 24 per direction);
  `val_captions.tsv`, `val_labels.tsv`: clips 0096 to 0127 (32 clips, 8 per direction).
- `msrvtt.json`: the same clips and captions as MSR-VTT annotations (`videos` with
  `video_id` \"0000\"..., `split` \"train\" or \"validate\"; `sentences` with `video_id`,
  `caption`, `sen_id`); the videos folder is `clips/`.

Paths in the tables are relative to this folder.
";

//! [`MovingShapesConfig`]: a generated video set of shapes moving left, right, up or down
//! (`datasets/moving-shapes` is its default; `cargo xtask videos` writes it), with captions
//! ("a red circle moving to the left"), direction labels ("moving left"), a train/val split and
//! the same clips as MSR-VTT annotations. Seeded, so a config always writes the same files.
//!
//! A clip's direction can only be told from the order of its frames: a shape moving right
//! passes through the positions of one moving left, in the opposite order, and the start is
//! drawn so that both directions cover the same positions. A model that averages its frames
//! (meanP) can tell the axis of motion at best; one that reads the order can tell the direction.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use burn::config::Config;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const SHAPES: [&str; 3] = ["circle", "square", "triangle"];
/// Direction name and unit step (x, y); image y grows downwards.
const DIRECTIONS: [(&str, (f32, f32)); 4] = [
    ("left", (-1.0, 0.0)),
    ("right", (1.0, 0.0)),
    ("up", (0.0, -1.0)),
    ("down", (0.0, 1.0)),
];
/// The named colours of the generated shape sets: the moving shapes here, and `cargo xtask shapes`
/// and `det-shapes`, whose captions name them too.
pub const SHAPE_COLORS: [(&str, [u8; 3]); 6] = [
    ("red", [220, 40, 40]),
    ("green", [40, 190, 60]),
    ("blue", [40, 70, 230]),
    ("yellow", [230, 210, 40]),
    ("purple", [150, 60, 200]),
    ("orange", [240, 140, 30]),
];

/// The indefinite article before `word` in the generated captions: "an" before a vowel ("an
/// orange circle"), "a" otherwise.
pub fn article(word: &str) -> &'static str {
    if word.starts_with(['a', 'e', 'i', 'o', 'u']) { "an" } else { "a" }
}

/// Size and seed of a generated moving-shapes set.
#[derive(Config, Debug)]
pub struct MovingShapesConfig {
    /// Training clips (the first ones; directions take turns, so keep it a multiple of 4).
    #[config(default = 96)]
    pub train: usize,
    /// Validation clips, after the training ones.
    #[config(default = 32)]
    pub val: usize,
    /// Frames per clip.
    #[config(default = 8)]
    pub frames: usize,
    /// Width and height of a frame in pixels.
    #[config(default = 32)]
    pub size: u32,
    /// Seed of every random draw.
    #[config(default = 20_261_123)]
    pub seed: u64,
    /// Shapes on plain black instead of a noisy, shaded background (captions say "black"): an
    /// easier set, where a tiny model learns the motion in a few hundred steps.
    #[config(default = false)]
    pub plain: bool,
}

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
    fn random(direction: usize, size: u32, frames: usize, rng: &mut StdRng) -> Self {
        let radius = rng.random_range(4.0..7.0f32);
        let speed = rng.random_range(1.5..2.5f32);
        let travel = speed * (frames - 1) as f32;
        let (dx, dy) = DIRECTIONS[direction].1;
        let mut coordinate = |step: f32| {
            let (low, high) = (radius, size as f32 - radius);
            match step {
                s if s > 0.0 => rng.random_range(low..=high - travel),
                s if s < 0.0 => rng.random_range(low + travel..=high),
                _ => rng.random_range(low..=high),
            }
        };
        let start = (coordinate(dx), coordinate(dy));
        Self {
            shape: rng.random_range(0..SHAPES.len()),
            color: rng.random_range(0..SHAPE_COLORS.len()),
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
    fn frames(&self, size: u32, frames: usize, plain: bool, rng: &mut StdRng) -> Vec<image::RgbImage> {
        let base: [f32; 3] = std::array::from_fn(|_| {
            if self.dark {
                rng.random_range(20.0..60.0)
            } else {
                rng.random_range(180.0..220.0)
            }
        });
        let slope = (rng.random_range(-1.0..1.0f32), rng.random_range(-1.0..1.0f32));
        let background = image::RgbImage::from_fn(size, size, |x, y| {
            let ramp = slope.0 * x as f32 + slope.1 * y as f32;
            image::Rgb(base.map(|b| (b + ramp + rng.random_range(-3.0..=3.0f32)).clamp(0.0, 255.0) as u8))
        });
        // The draws above happen either way, so that `plain` changes nothing else.
        let background = if plain { image::RgbImage::new(size, size) } else { background };
        let color = SHAPE_COLORS[self.color].1.map(f32::from);
        (0..frames)
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
    fn captions(&self, plain: bool) -> [String; 2] {
        let color = SHAPE_COLORS[self.color].0;
        let thing = format!("{} {color} {}", article(color), SHAPES[self.shape]);
        let direction = DIRECTIONS[self.direction].0;
        let towards = match direction {
            "left" | "right" => format!("to the {direction}"),
            _ => direction.to_string(),
        };
        let background = match (plain, self.dark) {
            (true, _) => "black",
            (false, true) => "dark",
            (false, false) => "light",
        };
        [
            format!("{thing} moving {towards}"),
            format!("{thing} going {direction} on a {background} background"),
        ]
    }

    fn label(&self) -> String {
        format!("moving {}", DIRECTIONS[self.direction].0)
    }
}

impl MovingShapesConfig {
    /// Writes the set into `out` (replacing its `clips/` folder): frame folders, caption and
    /// label tables (all, train and val), `msrvtt.json` and a README.
    pub fn generate(&self, out: &Path) -> anyhow::Result<()> {
        let shortest = 14.0 + 2.5 * (self.frames.max(1) - 1) as f32;
        if self.frames < 2 || (self.size as f32) < shortest {
            anyhow::bail!(
                "moving shapes: {} frames of {} px leave no room to move (at least 2 frames and {shortest} px)",
                self.frames,
                self.size
            );
        }
        let clips_dir = out.join("clips");
        if clips_dir.exists() {
            std::fs::remove_dir_all(&clips_dir).with_context(|| format!("removing {}", clips_dir.display()))?;
        }
        let mut rng = StdRng::seed_from_u64(self.seed);
        let mut captions = [String::new(), String::new(), String::new()];
        let mut labels = [String::new(), String::new(), String::new()];
        for table in captions.iter_mut() {
            table.push_str("video\tcaption\n");
        }
        for table in labels.iter_mut() {
            table.push_str("video\tlabel\n");
        }
        let (mut json_videos, mut json_sentences) = (Vec::new(), Vec::new());
        for index in 0..self.train + self.val {
            // Directions take turns, so both splits are balanced.
            let clip = Clip::random(index % DIRECTIONS.len(), self.size, self.frames, &mut rng);
            let id = format!("{index:04}");
            let dir = clips_dir.join(&id);
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            for (frame, image) in clip.frames(self.size, self.frames, self.plain, &mut rng).iter().enumerate() {
                let path = dir.join(format!("{frame:02}.png"));
                image.save(&path).with_context(|| format!("writing {}", path.display()))?;
            }
            let train = index < self.train;
            let split = if train { 1 } else { 2 };
            let video = format!("clips/{id}");
            for caption in clip.captions(self.plain) {
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
                "split": if train { "train" } else { "validate" },
            }));
        }
        for (prefix, table) in ["", "train_", "val_"].into_iter().enumerate() {
            write(&out.join(format!("{table}captions.tsv")), &captions[prefix])?;
            write(&out.join(format!("{table}labels.tsv")), &labels[prefix])?;
        }
        let json = serde_json::json!({ "videos": json_videos, "sentences": json_sentences });
        write(&out.join("msrvtt.json"), &(serde_json::to_string_pretty(&json)? + "\n"))?;
        write(&out.join("README.md"), &self.readme())
    }

    /// The dataset's README.
    fn readme(&self) -> String {
        let (train, val, frames, size) = (self.train, self.val, self.frames, self.size);
        let total = train + val;
        let last_frame = format!("{:02}", frames - 1);
        let per = |n: usize| n / DIRECTIONS.len();
        let (train_last, val_first, val_last) =
            (format!("{:04}", train.saturating_sub(1)), format!("{train:04}"), format!("{:04}", total.saturating_sub(1)));
        format!(
            "# moving-shapes

A tiny generated video dataset for tests and smoke runs of clip-video
(regenerate with `cargo xtask videos`; the generator is seeded, so the files are identical).

- `clips/NNNN/00.png` ... `{last_frame}.png`: {total} clips as frame folders, {frames} frames of {size}x{size} RGB each.
  One filled shape (circle, square or upward triangle) in one of six named colors (red, green,
  blue, yellow, purple, orange), 4 to 7 pixels in half-size, moves 1.5 to 2.5 pixels per frame
  left, right, up or down, staying wholly inside the frame, over a still background (dark or
  light, a gentle gradient and fixed pixel noise); the shape gets a little fresh noise in every
  frame. Directions take turns (clip `i` moves in direction `i mod 4`: left, right, up, down).
- `captions.tsv`: columns `video`, `caption`, two captions per clip, e.g.
  \"a red circle moving to the left\" and \"a red circle going left on a dark background\".
- `labels.tsv`: columns `video`, `label`, one of \"moving left\", \"moving right\",
  \"moving up\", \"moving down\".
- `train_captions.tsv`, `train_labels.tsv`: clips 0000 to {train_last} ({train} clips, {} per direction);
  `val_captions.tsv`, `val_labels.tsv`: clips {val_first} to {val_last} ({val} clips, {} per direction).
- `msrvtt.json`: the same clips and captions as MSR-VTT annotations (`videos` with
  `video_id` \"0000\"..., `split` \"train\" or \"validate\"; `sentences` with `video_id`,
  `caption`, `sen_id`); the videos folder is `clips/`.

Paths in the tables are relative to this folder.
",
            per(train),
            per(val)
        )
    }
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_balanced_splits_and_refuses_frames_without_room() {
        let tmp = tempfile::Builder::new().prefix("clip-video-moving-shapes-").tempdir().unwrap();
        let dir = tmp.path().join("moving-shapes");
        MovingShapesConfig::new().with_train(8).with_val(4).with_frames(3).with_plain(true).generate(&dir).unwrap();
        let labels = std::fs::read_to_string(dir.join("train_labels.tsv")).unwrap();
        let rows: Vec<&str> = labels.lines().skip(1).collect();
        assert_eq!(rows.len(), 8);
        for direction in ["left", "right", "up", "down"] {
            assert_eq!(rows.iter().filter(|r| r.ends_with(&format!("moving {direction}"))).count(), 2, "{labels}");
        }
        assert_eq!(std::fs::read_to_string(dir.join("val_labels.tsv")).unwrap().lines().count(), 5);
        assert_eq!(std::fs::read_dir(dir.join("clips/0011")).unwrap().count(), 3);
        let captions = std::fs::read_to_string(dir.join("captions.tsv")).unwrap();
        assert!(captions.contains("on a black background"), "{captions}");
        let _ = std::fs::remove_dir_all(&dir);

        let error = MovingShapesConfig::new().with_size(16).generate(&dir).unwrap_err().to_string();
        assert!(error.contains("8 frames of 16 px"), "{error}");
        assert!(!dir.exists());
    }
}

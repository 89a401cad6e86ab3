//! Generates the tiny segmentation sets: 32x32 images of filled shapes (circle, square,
//! triangle) in named colors on a noisy dark or light background, their label masks (L8 PNG) and
//! captions naming them ("a red circle and a blue square on a dark background"). Seeded, so
//! every run writes the same files.
//!
//! - `datasets/shapes`: one to three shapes per image, masks labelled by shape (0 background,
//!   1 circle, 2 square, 3 triangle).
//! - `datasets/shapes-colors`: one larger shape per image, masks labelled by color
//!   (0 background, 1 red ... 6 orange), with the color names as the caption nouns (GroupViT's
//!   multi-label loss).

use std::fmt::Write as _;
use std::ops::{Range, RangeInclusive};
use std::path::Path;

use anyhow::Context;
use clip_video::data::{SHAPE_COLORS, article};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const SIZE: u32 = 32;
const TRAIN: usize = 192;
const VAL: usize = 64;
const SHAPE_NAMES: [&str; 4] = ["background", "circle", "square", "triangle"];

/// What a mask's label says of a shape pixel.
#[derive(Clone, Copy)]
enum LabelBy {
    /// 1 circle, 2 square, 3 triangle.
    Shape,
    /// 1 + the index of the color in `SHAPE_COLORS`.
    Color,
}

/// One generated segmentation set.
struct ShapeSet {
    /// Shapes per image.
    count: RangeInclusive<usize>,
    /// Half-size of each shape, in pixels.
    radius: Range<f32>,
    labels: LabelBy,
    seed: u64,
    readme: &'static str,
}

/// `datasets/shapes`.
const SHAPES: ShapeSet = ShapeSet {
    count: 1..=3,
    radius: 4.0..9.0,
    labels: LabelBy::Shape,
    seed: 20_261_124,
    readme: SHAPES_README,
};

/// `datasets/shapes-colors`.
const SHAPES_COLORS: ShapeSet = ShapeSet {
    count: 1..=1,
    radius: 7.0..11.0,
    labels: LabelBy::Color,
    seed: 20_261_202,
    readme: SHAPES_COLORS_README,
};

/// One shape: label 1..=3 (4, a five-pointed star, only in `det-shapes`), centre, half-size,
/// color index.
pub(crate) struct Shape {
    pub(crate) label: u8,
    pub(crate) centre: (f32, f32),
    pub(crate) radius: f32,
    pub(crate) color: usize,
}

impl Shape {
    /// Whether the pixel centre `(x + 0.5, y + 0.5)` is inside.
    pub(crate) fn contains(&self, x: u32, y: u32) -> bool {
        let (px, py) = (x as f32 + 0.5 - self.centre.0, y as f32 + 0.5 - self.centre.1);
        let r = self.radius;
        match self.label {
            1 => px * px + py * py <= r * r,
            2 => px.abs() <= r && py.abs() <= r,
            4 => in_star(px, py, r),
            // Pointing up: apex (0, -r), base from (-r, r) to (r, r); |px| <= (py + r) / 2.
            _ => py <= r && px.abs() <= (py + r) / 2.0,
        }
    }
}

/// Whether `(px, py)` (relative to the centre) is inside the upward five-pointed star with outer
/// radius `r` and inner radius `0.45 r` (even-odd rule over its ten vertices).
fn in_star(px: f32, py: f32, r: f32) -> bool {
    let vertex = |i: usize| {
        let radius = if i.is_multiple_of(2) { r } else { 0.45 * r };
        let angle = -std::f32::consts::FRAC_PI_2 + i as f32 * std::f32::consts::PI / 5.0;
        (radius * angle.cos(), radius * angle.sin())
    };
    let mut inside = false;
    for i in 0..10 {
        let (ax, ay) = vertex(i);
        let (bx, by) = vertex((i + 1) % 10);
        if (ay > py) != (by > py) && px < ax + (py - ay) / (by - ay) * (bx - ax) {
            inside = !inside;
        }
    }
    inside
}

/// Writes `shapes` and `shapes-colors` under `datasets`.
pub fn generate(datasets: &Path) -> anyhow::Result<()> {
    SHAPES.generate(&datasets.join("shapes"))?;
    SHAPES_COLORS.generate(&datasets.join("shapes-colors"))
}

impl ShapeSet {
    fn generate(&self, out: &Path) -> anyhow::Result<()> {
        for dir in ["images", "masks"] {
            let dir = out.join(dir);
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let mut rng = StdRng::seed_from_u64(self.seed);
        let header = "image\tmask\tcaption\n";
        let (mut train, mut val) = (String::from(header), String::from(header));
        for index in 0..TRAIN + VAL {
            let (image, mask, caption) = self.sample(&mut rng);
            let name = format!("{index:04}.png");
            let image_path = out.join("images").join(&name);
            image
                .save(&image_path)
                .with_context(|| format!("writing {}", image_path.display()))?;
            let mask_path = out.join("masks").join(&name);
            mask.save(&mask_path)
                .with_context(|| format!("writing {}", mask_path.display()))?;
            let table = if index < TRAIN { &mut train } else { &mut val };
            writeln!(table, "images/{name}\tmasks/{name}\t{caption}")?;
        }
        write(&out.join("train.tsv"), &train)?;
        write(&out.join("val.tsv"), &val)?;
        let colors = SHAPE_COLORS.map(|(name, _)| name);
        let labels = match self.labels {
            LabelBy::Shape => SHAPE_NAMES.to_vec(),
            LabelBy::Color => [&["background"][..], &colors].concat(),
        };
        write(&out.join("labels.txt"), &(labels.join("\n") + "\n"))?;
        if let LabelBy::Color = self.labels {
            write(&out.join("nouns.txt"), &(colors.join("\n") + "\n"))?;
        }
        write(&out.join("README.md"), self.readme)?;
        println!(
            "wrote {TRAIN} training and {VAL} validation samples to {}",
            out.display()
        );
        Ok(())
    }

    /// One image, its mask and its caption; every shape keeps at least 12 visible pixels.
    fn sample(&self, rng: &mut StdRng) -> (image::RgbImage, image::GrayImage, String) {
        loop {
            let count = rng.random_range(self.count.clone());
            let shapes: Vec<Shape> = (0..count)
                .map(|_| {
                    let radius = rng.random_range(self.radius.clone());
                    Shape {
                        label: rng.random_range(1..=3),
                        centre: (
                            rng.random_range(radius..SIZE as f32 - radius),
                            rng.random_range(radius..SIZE as f32 - radius),
                        ),
                        radius,
                        color: rng.random_range(0..SHAPE_COLORS.len()),
                    }
                })
                .collect();
            let dark = rng.random_bool(0.5);
            let base: [f32; 3] = std::array::from_fn(|_| {
                if dark {
                    rng.random_range(20.0..60.0)
                } else {
                    rng.random_range(180.0..220.0)
                }
            });
            let slope = (rng.random_range(-1.0..1.0f32), rng.random_range(-1.0..1.0f32));
            // Topmost shape per pixel (later shapes are drawn over earlier ones).
            let owner = |x: u32, y: u32| shapes.iter().rposition(|s| s.contains(x, y));
            let visible = (0..shapes.len()).all(|i| {
                (0..SIZE * SIZE)
                    .filter(|p| owner(p % SIZE, p / SIZE) == Some(i))
                    .count()
                    >= 12
            });
            if !visible {
                continue;
            }
            let mut image = image::RgbImage::new(SIZE, SIZE);
            let mut mask = image::GrayImage::new(SIZE, SIZE);
            for y in 0..SIZE {
                for x in 0..SIZE {
                    let (color, noise, label) = match owner(x, y) {
                        Some(i) => {
                            let label = match self.labels {
                                LabelBy::Shape => shapes[i].label,
                                LabelBy::Color => 1 + shapes[i].color as u8,
                            };
                            (SHAPE_COLORS[shapes[i].color].1.map(f32::from), 10.0, label)
                        }
                        None => {
                            let ramp = slope.0 * x as f32 + slope.1 * y as f32;
                            (base.map(|b| b + ramp), 18.0, 0)
                        }
                    };
                    let pixel = color.map(|c| (c + rng.random_range(-noise..=noise)).clamp(0.0, 255.0) as u8);
                    image.put_pixel(x, y, image::Rgb(pixel));
                    mask.put_pixel(x, y, image::Luma([label]));
                }
            }
            return (image, mask, caption(&shapes, dark));
        }
    }
}

/// "a red circle on a dark background", "a red circle and a blue square on ...",
/// "a red circle, a blue square and a green triangle on ...".
fn caption(shapes: &[Shape], dark: bool) -> String {
    let names: Vec<String> = shapes
        .iter()
        .map(|s| {
            let color = SHAPE_COLORS[s.color].0;
            format!("{} {color} {}", article(color), SHAPE_NAMES[s.label as usize])
        })
        .collect();
    let listed = match names.split_last() {
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} and {last}", rest.join(", ")),
        None => String::new(),
    };
    format!("{listed} on a {} background", if dark { "dark" } else { "light" })
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

const SHAPES_README: &str = "# shapes

A tiny generated segmentation dataset for tests and smoke runs of clip-seg
(regenerate with `cargo xtask shapes`; the generator is seeded, so the files are identical).

- `images/NNNN.png`: 32x32 RGB; a dark or light background with a gentle gradient and
  pixel noise, and one to three filled shapes (circle, square, upward triangle) in one of six
  named colors (red, green, blue, yellow, purple, orange), later shapes drawn over earlier
  ones; every shape keeps at least 12 visible pixels.
- `masks/NNNN.png`: 8-bit grayscale label indices, 0 background, 1 circle, 2 square,
  3 triangle (no ignored pixels, no `reduce_zero_label`).
- `labels.txt`: the four label names, one per line, in index order.
- `train.tsv` (192 rows) and `val.tsv` (64 rows): columns `image`, `mask`, `caption`, paths
  relative to this folder; captions name each shape with its color and the background, e.g.
  \"a red circle and a blue square on a dark background\".
";

const SHAPES_COLORS_README: &str = "# shapes-colors

A tiny generated segmentation dataset on which GroupViT trained from scratch segments clearly
above chance (the end-to-end test; regenerate with `cargo xtask shapes`, seeded, so the files
are identical). Made like `datasets/shapes`, but with one larger shape per image and masks
labelled by color, the word GroupViT's multi-label loss can tie to pixels.

- `images/NNNN.png`: 32x32 RGB; a dark or light background with a gentle gradient and
  pixel noise, and one filled shape (circle, square, upward triangle) of half-size 7 to 11
  pixels in one of six named colors.
- `masks/NNNN.png`: 8-bit grayscale label indices, 0 background, 1 red, 2 green, 3 blue,
  4 yellow, 5 purple, 6 orange.
- `labels.txt`: the seven label names, one per line, in index order.
- `nouns.txt`: the six color names, the nouns GroupViT's multi-label loss takes from captions.
- `train.tsv` (192 rows) and `val.tsv` (64 rows): columns `image`, `mask`, `caption`, paths
  relative to this folder, e.g. \"a red circle on a dark background\".
";

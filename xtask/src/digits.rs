//! Turns the UCI handwritten digits (8x8 grey levels 0..16 and a label per row) into an
//! image-caption dataset: one PNG per digit, captions from varied templates, a seeded
//! 80/20 train/val split, in open_clip's CSV layout (`filepath`, `title`).

use std::io::{BufRead, BufReader, Write};
use std::path::Path;

use anyhow::{Context, bail};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

const NAMES: [&str; 10] = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"];

/// Caption templates; `{w}` is the digit's name, `{d}` its numeral.
const TEMPLATES: [&str; 8] = [
    "a photo of the number {w}",
    "handwritten {d}",
    "a handwritten {w}",
    "the digit {d}",
    "a scan of a handwritten digit {w}",
    "the number {d} written by hand",
    "a blurry {w}",
    "a low resolution image of the digit {w}",
];

/// Fraction of the digits held out for validation.
const VAL_FRACTION: f64 = 0.2;
const SEED: u64 = 20_261_123;

pub fn convert(asset: &Path, out: &Path) -> anyhow::Result<()> {
    let file = std::fs::File::open(asset).with_context(|| format!("opening {}", asset.display()))?;
    let reader = BufReader::new(flate2::read::GzDecoder::new(file));
    let mut digits = Vec::new();
    for (row, line) in reader.lines().enumerate() {
        let line = line.with_context(|| format!("{}: line {}", asset.display(), row + 1))?;
        let values: Vec<u8> = line
            .split(',')
            .map(|v| v.trim().parse::<f64>().map(|x| x as u8))
            .collect::<Result<_, _>>()
            .with_context(|| format!("{}: line {} is not 65 numbers", asset.display(), row + 1))?;
        if values.len() != 65 || values[64] > 9 || values[..64].iter().any(|&v| v > 16) {
            bail!("{}: line {}: expected 64 grey levels 0..16 and a label 0..9", asset.display(), row + 1);
        }
        digits.push(values);
    }
    let images = out.join("images");
    std::fs::create_dir_all(&images).with_context(|| format!("creating {}", images.display()))?;

    let mut rng = rand::rngs::StdRng::seed_from_u64(SEED);
    let mut order: Vec<usize> = (0..digits.len()).collect();
    order.shuffle(&mut rng);
    let val_count = (digits.len() as f64 * VAL_FRACTION).round() as usize;

    let mut train = String::from("filepath\ttitle\tlabel\n");
    let mut val = train.clone();
    for (position, &index) in order.iter().enumerate() {
        let values = &digits[index];
        let label = values[64] as usize;
        let pixels: Vec<u8> = values[..64].iter().map(|&v| (u32::from(v) * 255 / 16) as u8).collect();
        let name = format!("{index:04}.png");
        image::GrayImage::from_raw(8, 8, pixels)
            .context("8x8 pixels")?
            .save(images.join(&name))
            .with_context(|| format!("writing {name}"))?;
        let template = TEMPLATES[rng.random_range(0..TEMPLATES.len())];
        let caption = template.replace("{w}", NAMES[label]).replace("{d}", &label.to_string());
        let row = format!("images/{name}\t{caption}\t{}\n", NAMES[label]);
        if position < val_count { val.push_str(&row) } else { train.push_str(&row) }
    }
    write(&out.join("train.tsv"), &train)?;
    write(&out.join("val.tsv"), &val)?;
    write(&out.join("classes.txt"), &(NAMES.join("\n") + "\n"))?;
    println!(
        "wrote {} training and {val_count} validation digits to {}",
        digits.len() - val_count,
        out.display()
    );
    Ok(())
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    let mut file = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    file.write_all(text.as_bytes()).with_context(|| format!("writing {}", path.display()))
}

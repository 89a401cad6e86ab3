//! Detections drawn on images: 2-pixel rectangles in a colour per category name, labelled
//! `"name 0.87"` in a built-in 5x7 bitmap font, and PNG files written atomically.

use std::path::{Path, PathBuf};

use image::{Rgb, RgbImage};

use crate::boxes::BoxXyxy;

/// A PNG could not be encoded or written; names the file.
#[derive(Debug, thiserror::Error)]
#[error("cannot write {path}: {message}")]
pub struct DrawError {
    /// The output file.
    pub path: PathBuf,
    /// What went wrong.
    pub message: String,
}

/// Rectangle line width in pixels.
const LINE: i64 = 2;
/// Glyph size in pixels.
const GLYPH_W: i64 = 5;
const GLYPH_H: i64 = 7;
/// Horizontal advance per character and the label's padding around the text.
const ADVANCE: i64 = GLYPH_W + 1;
const PAD: i64 = 1;

/// Colours assigned to category names.
const PALETTE: [[u8; 3]; 10] = [
    [230, 25, 75],
    [60, 180, 75],
    [255, 225, 25],
    [0, 130, 200],
    [245, 130, 48],
    [145, 30, 180],
    [70, 240, 240],
    [240, 50, 230],
    [210, 245, 60],
    [250, 190, 190],
];

/// The colour of a category name: a palette entry chosen by a (stable, FNV-1a) hash of it.
pub fn category_color(name: &str) -> Rgb<u8> {
    let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    Rgb(PALETTE[(hash % PALETTE.len() as u64) as usize])
}

/// Rows of a 5x7 glyph, bit 4 the leftmost pixel. Letters are lower case (upper case is drawn
/// as lower case); characters without a glyph are drawn as `?`.
fn glyph(c: char) -> [u8; 7] {
    match c.to_ascii_lowercase() {
        '0' => [
            0b01110, 0b10001, 0b10011, 0b10101, 0b11001, 0b10001, 0b01110,
        ],
        '1' => [
            0b00100, 0b01100, 0b00100, 0b00100, 0b00100, 0b00100, 0b01110,
        ],
        '2' => [
            0b01110, 0b10001, 0b00001, 0b00010, 0b00100, 0b01000, 0b11111,
        ],
        '3' => [
            0b11111, 0b00010, 0b00100, 0b00010, 0b00001, 0b10001, 0b01110,
        ],
        '4' => [
            0b00010, 0b00110, 0b01010, 0b10010, 0b11111, 0b00010, 0b00010,
        ],
        '5' => [
            0b11111, 0b10000, 0b11110, 0b00001, 0b00001, 0b10001, 0b01110,
        ],
        '6' => [
            0b00110, 0b01000, 0b10000, 0b11110, 0b10001, 0b10001, 0b01110,
        ],
        '7' => [
            0b11111, 0b00001, 0b00010, 0b00100, 0b01000, 0b01000, 0b01000,
        ],
        '8' => [
            0b01110, 0b10001, 0b10001, 0b01110, 0b10001, 0b10001, 0b01110,
        ],
        '9' => [
            0b01110, 0b10001, 0b10001, 0b01111, 0b00001, 0b00010, 0b01100,
        ],
        'a' => [
            0b00000, 0b00000, 0b01110, 0b00001, 0b01111, 0b10001, 0b01111,
        ],
        'b' => [
            0b10000, 0b10000, 0b10110, 0b11001, 0b10001, 0b10001, 0b11110,
        ],
        'c' => [
            0b00000, 0b00000, 0b01110, 0b10000, 0b10000, 0b10001, 0b01110,
        ],
        'd' => [
            0b00001, 0b00001, 0b01101, 0b10011, 0b10001, 0b10001, 0b01111,
        ],
        'e' => [
            0b00000, 0b00000, 0b01110, 0b10001, 0b11111, 0b10000, 0b01110,
        ],
        'f' => [
            0b00110, 0b01001, 0b01000, 0b11100, 0b01000, 0b01000, 0b01000,
        ],
        'g' => [
            0b00000, 0b01111, 0b10001, 0b10001, 0b01111, 0b00001, 0b01110,
        ],
        'h' => [
            0b10000, 0b10000, 0b10110, 0b11001, 0b10001, 0b10001, 0b10001,
        ],
        'i' => [
            0b00100, 0b00000, 0b01100, 0b00100, 0b00100, 0b00100, 0b01110,
        ],
        'j' => [
            0b00010, 0b00000, 0b00110, 0b00010, 0b00010, 0b10010, 0b01100,
        ],
        'k' => [
            0b10000, 0b10000, 0b10010, 0b10100, 0b11000, 0b10100, 0b10010,
        ],
        'l' => [
            0b01100, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0b01110,
        ],
        'm' => [
            0b00000, 0b00000, 0b11010, 0b10101, 0b10101, 0b10001, 0b10001,
        ],
        'n' => [
            0b00000, 0b00000, 0b10110, 0b11001, 0b10001, 0b10001, 0b10001,
        ],
        'o' => [
            0b00000, 0b00000, 0b01110, 0b10001, 0b10001, 0b10001, 0b01110,
        ],
        'p' => [
            0b00000, 0b00000, 0b11110, 0b10001, 0b11110, 0b10000, 0b10000,
        ],
        'q' => [
            0b00000, 0b00000, 0b01101, 0b10011, 0b01111, 0b00001, 0b00001,
        ],
        'r' => [
            0b00000, 0b00000, 0b10110, 0b11001, 0b10000, 0b10000, 0b10000,
        ],
        's' => [
            0b00000, 0b00000, 0b01110, 0b10000, 0b01110, 0b00001, 0b11110,
        ],
        't' => [
            0b01000, 0b01000, 0b11100, 0b01000, 0b01000, 0b01001, 0b00110,
        ],
        'u' => [
            0b00000, 0b00000, 0b10001, 0b10001, 0b10001, 0b10011, 0b01101,
        ],
        'v' => [
            0b00000, 0b00000, 0b10001, 0b10001, 0b10001, 0b01010, 0b00100,
        ],
        'w' => [
            0b00000, 0b00000, 0b10001, 0b10001, 0b10101, 0b10101, 0b01010,
        ],
        'x' => [
            0b00000, 0b00000, 0b10001, 0b01010, 0b00100, 0b01010, 0b10001,
        ],
        'y' => [
            0b00000, 0b00000, 0b10001, 0b10001, 0b01111, 0b00001, 0b01110,
        ],
        'z' => [
            0b00000, 0b00000, 0b11111, 0b00010, 0b00100, 0b01000, 0b11111,
        ],
        '.' => [
            0b00000, 0b00000, 0b00000, 0b00000, 0b00000, 0b01100, 0b01100,
        ],
        '-' => [
            0b00000, 0b00000, 0b00000, 0b11111, 0b00000, 0b00000, 0b00000,
        ],
        '_' => [
            0b00000, 0b00000, 0b00000, 0b00000, 0b00000, 0b00000, 0b11111,
        ],
        ' ' => [0; 7],
        _ => [
            0b01110, 0b10001, 0b00001, 0b00010, 0b00100, 0b00000, 0b00100,
        ],
    }
}

/// Sets a pixel when it lies inside the image.
fn put(image: &mut RgbImage, x: i64, y: i64, color: Rgb<u8>) {
    if x >= 0 && y >= 0 && x < i64::from(image.width()) && y < i64::from(image.height()) {
        image.put_pixel(x as u32, y as u32, color);
    }
}

fn fill(image: &mut RgbImage, [x1, y1, x2, y2]: [i64; 4], color: Rgb<u8>) {
    for y in y1..y2 {
        for x in x1..x2 {
            put(image, x, y, color);
        }
    }
}

/// Label size in pixels: width and height including padding.
fn label_size(text: &str) -> (i64, i64) {
    let chars = text.chars().count() as i64;
    (chars * ADVANCE - 1 + 2 * PAD, GLYPH_H + 2 * PAD)
}

/// Draws `text` on a filled background of `color` with its top-left corner at `(x, y)`.
fn draw_label(image: &mut RgbImage, x: i64, y: i64, text: &str, color: Rgb<u8>) {
    let (w, h) = label_size(text);
    fill(image, [x, y, x + w, y + h], color);
    let luminance =
        0.299 * f32::from(color[0]) + 0.587 * f32::from(color[1]) + 0.114 * f32::from(color[2]);
    let ink = if luminance < 128.0 {
        Rgb([255; 3])
    } else {
        Rgb([0; 3])
    };
    for (i, c) in text.chars().enumerate() {
        let left = x + PAD + i as i64 * ADVANCE;
        for (row, bits) in glyph(c).iter().enumerate() {
            for col in 0..GLYPH_W {
                if bits >> (GLYPH_W - 1 - col) & 1 == 1 {
                    put(image, left + col, y + PAD + row as i64, ink);
                }
            }
        }
    }
}

/// A copy of `image` with each `(box, name, score)` drawn: a 2-pixel rectangle in
/// [`category_color`] of `name` just inside the box (in the image's pixels), and the label
/// `"name 0.87"` above the box, or inside it where there is no room above, shifted left where
/// it would leave the image on the right.
pub fn draw_detections(image: &RgbImage, detections: &[(BoxXyxy, String, f32)]) -> RgbImage {
    let mut out = image.clone();
    let (width, height) = (i64::from(image.width()), i64::from(image.height()));
    for (bbox, name, score) in detections {
        let color = category_color(name);
        let x1 = bbox[0].floor() as i64;
        let y1 = bbox[1].floor() as i64;
        let x2 = bbox[2].ceil() as i64;
        let y2 = bbox[3].ceil() as i64;
        if x2 <= x1 || y2 <= y1 {
            continue;
        }
        fill(&mut out, [x1, y1, x2, (y1 + LINE).min(y2)], color);
        fill(&mut out, [x1, (y2 - LINE).max(y1), x2, y2], color);
        fill(&mut out, [x1, y1, (x1 + LINE).min(x2), y2], color);
        fill(&mut out, [(x2 - LINE).max(x1), y1, x2, y2], color);
        let text = format!("{name} {score:.2}");
        let (w, h) = label_size(&text);
        let top = y1.clamp(0, height);
        let y = if top >= h {
            top - h
        } else {
            top.min(height - h).max(0)
        };
        let x = x1.min(width - w).max(0);
        draw_label(&mut out, x, y, &text, color);
    }
    out
}

/// Encodes `image` as PNG and writes it to `path` atomically (a temporary file, then a
/// rename), creating the parent folder.
pub fn save_png(image: &RgbImage, path: &Path) -> Result<(), DrawError> {
    let error = |message: String| DrawError {
        path: path.to_path_buf(),
        message,
    };
    let mut bytes = Vec::new();
    image
        .write_to(
            &mut std::io::Cursor::new(&mut bytes),
            image::ImageFormat::Png,
        )
        .map_err(|e| error(e.to_string()))?;
    clip_core::weights::write_atomically(path, &bytes).map_err(|e| error(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BLACK: Rgb<u8> = Rgb([0, 0, 0]);

    #[test]
    fn rectangles_are_two_pixels_in_the_category_colour() {
        let image = RgbImage::new(96, 64);
        let out = draw_detections(&image, &[([10.0, 20.0, 40.0, 50.0], "circle".into(), 0.87)]);
        let color = category_color("circle");
        for (x, y) in [
            (10, 35),
            (11, 35),
            (39, 35),
            (38, 35),
            (25, 49),
            (25, 48),
            (10, 49),
            (39, 20),
        ] {
            assert_eq!(*out.get_pixel(x, y), color, "({x}, {y})");
        }
        for (x, y) in [(12, 35), (37, 35), (25, 47), (9, 35), (40, 35), (25, 50)] {
            assert_eq!(*out.get_pixel(x, y), BLACK, "({x}, {y})");
        }
        // The label "circle 0.87" (11 characters: 11 * 6 - 1 + 2 = 67 x 9 pixels) sits above the
        // box, from row 11 to 19, on the category colour, with some ink.
        let label: Vec<Rgb<u8>> = (11..20)
            .flat_map(|y| (10..77).map(move |x| (x, y)))
            .map(|(x, y)| *out.get_pixel(x, y))
            .collect();
        assert!(
            label
                .iter()
                .all(|&p| p == color || p == Rgb([0; 3]) || p == Rgb([255; 3]))
        );
        assert!(label.iter().filter(|&&p| p != color).count() > 20);
        assert_eq!(*out.get_pixel(10, 10), BLACK);
        assert_eq!(*out.get_pixel(77, 15), BLACK);
    }

    #[test]
    fn labels_stay_inside_the_image() {
        // A box touching the top edge and reaching the right border: no room above, so the
        // label goes inside the box at row 0, shifted left to end at the right border.
        let image = RgbImage::new(80, 40);
        let out = draw_detections(&image, &[([50.0, 0.0, 80.0, 30.0], "square".into(), 0.5)]);
        let color = category_color("square");
        // "square 0.50": 67 x 9 pixels, from x = 80 - 67 = 13, rows 0..9.
        for (x, y) in [(13, 0), (79, 8), (13, 8)] {
            assert_eq!(*out.get_pixel(x, y), color, "({x}, {y})");
        }
        assert_eq!(*out.get_pixel(12, 4), BLACK);
        let ink = (0..9)
            .flat_map(|y| (13..80).map(move |x| (x, y)))
            .filter(|&(x, y)| *out.get_pixel(x, y) != color)
            .count();
        assert!(ink > 20, "{ink}");
    }

    #[test]
    fn glyphs_are_distinct() {
        let chars: Vec<char> = ('a'..='z')
            .chain('0'..='9')
            .chain(['.', '-', '_', ' '])
            .collect();
        for (i, a) in chars.iter().enumerate() {
            for b in &chars[i + 1..] {
                assert_ne!(glyph(*a), glyph(*b), "{a} and {b}");
            }
        }
        assert_eq!(glyph('A'), glyph('a'));
        assert_eq!(glyph('%'), glyph('?'));
    }

    #[test]
    fn save_png_writes_atomically() {
        let dir = tempfile::Builder::new().prefix("clip-det-draw-").tempdir().unwrap();
        let path = dir.path().join("sub/out.png");
        let image = RgbImage::from_fn(3, 2, |x, y| Rgb([x as u8 * 80, y as u8 * 100, 7]));
        save_png(&image, &path).unwrap();
        assert_eq!(image::open(&path).unwrap().to_rgb8(), image);
        assert!(!dir.path().join("sub/out.png.tmp").exists());
    }
}

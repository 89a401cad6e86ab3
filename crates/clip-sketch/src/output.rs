//! Writing sketches: the strokes as SVG, the rendered canvas as PNG, and the optimization as
//! an animated GIF.

use std::path::Path;

use anyhow::Context;
use image::codecs::gif::{GifEncoder, Repeat};
use image::{Delay, Frame, GrayImage, Rgba, RgbaImage};

use crate::sketcher::Sketch;
use crate::strokes::svg;

/// The grey level of ink coverage `ink` in `[0, 1]` with ink of grey `ink_value`.
fn grey(ink: f32, ink_value: f32) -> u8 {
    let background = 1.0 - ink_value;
    ((background + ink.clamp(0.0, 1.0) * (ink_value - background)) * 255.0).round() as u8
}

/// The canvas of side `size` (ink coverage, row-major) as a grey image, `scale` times larger
/// (nearest neighbour).
fn canvas_image(ink: &[f32], size: usize, ink_value: f32, scale: u32) -> GrayImage {
    let side = size as u32 * scale;
    GrayImage::from_fn(side, side, |x, y| image::Luma([grey(ink[(y / scale) as usize * size + (x / scale) as usize], ink_value)]))
}

/// What [`write_sketch`] draws with.
#[derive(Debug, Clone, Copy)]
pub struct Style {
    /// Canvas side in pixels.
    pub size: usize,
    /// Stroke width in canvas pixels.
    pub width: f32,
    /// Stroke opacity.
    pub opacity: f32,
    /// Ink grey level (0 black, 1 white).
    pub ink: f32,
    /// The PNG and GIF are this many times the canvas (nearest neighbour).
    pub scale: u32,
}

/// Writes `<stem>.svg`, `<stem>.png` and, when the sketch recorded frames, `<stem>.gif`
/// (100 ms a frame, looping) into `dir`.
pub fn write_sketch(dir: &Path, stem: &str, sketch: &Sketch, style: Style) -> anyhow::Result<()> {
    let (color, background) = if style.ink >= 0.5 { ("white", "black") } else { ("black", "white") };
    let svg_path = dir.join(format!("{stem}.svg"));
    std::fs::write(&svg_path, svg(&sketch.strokes, style.size, style.width, style.opacity, color, background))
        .with_context(|| format!("writing {}", svg_path.display()))?;
    let png_path = dir.join(format!("{stem}.png"));
    canvas_image(&sketch.ink, style.size, style.ink, style.scale)
        .save(&png_path)
        .with_context(|| format!("writing {}", png_path.display()))?;
    if !sketch.frames.is_empty() {
        write_gif(&dir.join(format!("{stem}.gif")), &sketch.frames, style)?;
    }
    Ok(())
}

/// Writes `frames` (ink coverage of each recorded iteration) as a looping animated GIF.
pub fn write_gif(path: &Path, frames: &[Vec<f32>], style: Style) -> anyhow::Result<()> {
    let file = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut encoder = GifEncoder::new(std::io::BufWriter::new(file));
    encoder.set_repeat(Repeat::Infinite).with_context(|| format!("writing {}", path.display()))?;
    let frames = frames.iter().map(|ink| {
        let grey = canvas_image(ink, style.size, style.ink, style.scale);
        let rgba = RgbaImage::from_fn(grey.width(), grey.height(), |x, y| {
            let v = grey.get_pixel(x, y).0[0];
            Rgba([v, v, v, 255])
        });
        Frame::from_parts(rgba, 0, 0, Delay::from_numer_denom_ms(100, 1))
    });
    encoder.encode_frames(frames).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

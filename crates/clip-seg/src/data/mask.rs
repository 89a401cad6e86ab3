//! Decoding label masks: PNGs whose pixel values are label indices, either grayscale (8 or
//! 16 bits, as ADE20K and COCO-Stuff store them) or palette-indexed (PASCAL VOC). The palette
//! index is the label, so palettes are not expanded to colors (the `image` crate would).

use std::io::BufReader;
use std::path::Path;

use png::{BitDepth, ColorType, Transformations};

/// A mask's raw pixel values, row-major.
#[derive(Debug)]
pub(super) struct RawMask {
    pub width: u32,
    pub height: u32,
    pub values: Vec<u16>,
}

/// Reads a mask PNG; the error message does not repeat the path (the caller adds it).
pub(super) fn read_mask_png(path: &Path) -> Result<RawMask, String> {
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut decoder = png::Decoder::new(BufReader::new(file));
    decoder.set_transformations(Transformations::IDENTITY);
    let corrupt = |e: png::DecodingError| format!("cannot decode the mask PNG: {e}");
    let mut reader = decoder.read_info().map_err(corrupt)?;
    let size = reader
        .output_buffer_size()
        .ok_or_else(|| "the mask is too large to decode".to_string())?;
    let mut buffer = vec![0; size];
    let info = reader.next_frame(&mut buffer).map_err(corrupt)?;
    if !matches!(info.color_type, ColorType::Grayscale | ColorType::Indexed) {
        return Err(format!(
            "the mask is a {:?} PNG; masks must hold label indices (grayscale or palette PNG), so \
             convert color-coded masks to indices first",
            info.color_type
        ));
    }
    let bits = match info.bit_depth {
        BitDepth::One => 1,
        BitDepth::Two => 2,
        BitDepth::Four => 4,
        BitDepth::Eight => 8,
        BitDepth::Sixteen => 16,
    };
    let mut values = Vec::with_capacity((info.width * info.height) as usize);
    for row in buffer[..info.buffer_size()].chunks(info.line_size) {
        for x in 0..info.width as usize {
            let value = match bits {
                16 => u16::from_be_bytes([row[2 * x], row[2 * x + 1]]),
                8 => u16::from(row[x]),
                _ => {
                    let bit = x * bits;
                    let shift = 8 - bits - bit % 8;
                    u16::from((row[bit / 8] >> shift) & ((1 << bits) - 1))
                }
            };
            values.push(value);
        }
    }
    Ok(RawMask {
        width: info.width,
        height: info.height,
        values,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_png(path: &Path, width: u32, height: u32, color: ColorType, depth: BitDepth, data: &[u8]) {
        let file = std::fs::File::create(path).unwrap();
        let mut encoder = png::Encoder::new(std::io::BufWriter::new(file), width, height);
        encoder.set_color(color);
        encoder.set_depth(depth);
        if color == ColorType::Indexed {
            // A palette whose colors differ from the indices: red, green, blue, white.
            encoder.set_palette(vec![255, 0, 0, 0, 255, 0, 0, 0, 255, 255, 255, 255]);
        }
        encoder.write_header().unwrap().write_image_data(data).unwrap();
    }

    #[test]
    fn palette_pngs_give_indices_not_colors() {
        let tmp = tempfile::Builder::new().prefix("clip-seg-mask-").tempdir().unwrap();
        let dir = tmp.path();
        // 8-bit palette, 3x1: indices 2, 0, 3.
        let path = dir.join("indexed8.png");
        write_png(&path, 3, 1, ColorType::Indexed, BitDepth::Eight, &[2, 0, 3]);
        assert_eq!(read_mask_png(&path).unwrap().values, [2, 0, 3]);
        // 2-bit palette, 5x1: indices 1 2 3 0 | 1, packed 0b01_10_11_00, 0b01_000000.
        let path = dir.join("indexed2.png");
        write_png(
            &path,
            5,
            1,
            ColorType::Indexed,
            BitDepth::Two,
            &[0b0110_1100, 0b0100_0000],
        );
        assert_eq!(read_mask_png(&path).unwrap().values, [1, 2, 3, 0, 1]);
        // 16-bit grayscale, 2x1: 300 and 7, big-endian.
        let path = dir.join("gray16.png");
        write_png(&path, 2, 1, ColorType::Grayscale, BitDepth::Sixteen, &[1, 44, 0, 7]);
        assert_eq!(read_mask_png(&path).unwrap().values, [300, 7]);
        // RGB is refused.
        let path = dir.join("rgb.png");
        write_png(&path, 1, 1, ColorType::Rgb, BitDepth::Eight, &[1, 2, 3]);
        assert!(read_mask_png(&path).unwrap_err().contains("label indices"));
    }
}

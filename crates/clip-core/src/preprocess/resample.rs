//! PIL's bicubic resampling of 8-bit images, reproduced operation for operation so that our
//! preprocessing gives open_clip's pixels exactly (neither the `image` crate nor
//! `fast_image_resize` rounds as PIL does, which moves pixels by up to five grey levels).
//!
//! PIL resamples in two separable passes, horizontal then vertical, each storing 8-bit
//! results. Kernel weights are Keys' cubic with `a = -0.5`, stretched by the scale factor
//! when shrinking (antialiasing), normalized to sum to one and converted to fixed point with
//! 22 fractional bits.

use image::RgbImage;

/// Fractional bits of PIL's fixed-point weights (`32 - 8 - 2`).
const PRECISION_BITS: u32 = 22;

/// Keys' cubic convolution kernel with `a = -0.5` (PIL's `BICUBIC`), support 2.
fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// The weights of one resampling pass: for each output index, the first input index and the
/// fixed-point weights of the inputs from there on.
struct Kernel {
    starts: Vec<usize>,
    weights: Vec<Vec<i32>>,
}

impl Kernel {
    /// PIL's `precompute_coeffs` and `normalize_coeffs_8bpc` for `out_size` outputs covering
    /// `[in0, in1)` of an input of `in_size`.
    fn new(in_size: usize, in0: f64, in1: f64, out_size: usize) -> Self {
        let scale = (in1 - in0) / out_size as f64;
        let filter_scale = scale.max(1.0);
        let support = 2.0 * filter_scale;
        let mut starts = Vec::with_capacity(out_size);
        let mut weights = Vec::with_capacity(out_size);
        for out in 0..out_size {
            let center = in0 + (out as f64 + 0.5) * scale;
            // C's `(int)` truncates toward zero, then the range is clamped to the image.
            let min = ((center - support + 0.5).trunc() as i64).max(0) as usize;
            let max = ((center + support + 0.5).trunc() as i64).min(in_size as i64) as usize;
            let raw: Vec<f64> = (min..max)
                .map(|x| bicubic((x as f64 - center + 0.5) / filter_scale))
                .collect();
            let total: f64 = raw.iter().sum();
            let fixed = raw
                .iter()
                .map(|&w| {
                    let w = if total != 0.0 { w / total } else { w };
                    let scaled = w * f64::from(1u32 << PRECISION_BITS);
                    if w < 0.0 { (scaled - 0.5).trunc() as i32 } else { (scaled + 0.5).trunc() as i32 }
                })
                .collect();
            starts.push(min);
            weights.push(fixed);
        }
        Self { starts, weights }
    }

    /// First and one-past-last input index any output reads.
    fn span(&self) -> (usize, usize) {
        let first = self.starts.first().copied().unwrap_or(0);
        let last = self
            .starts
            .iter()
            .zip(&self.weights)
            .map(|(start, w)| start + w.len())
            .max()
            .unwrap_or(first);
        (first, last)
    }
}

/// Rounds a fixed-point sum (which includes the half-unit offset) to 8 bits, clamped.
fn clip8(sum: i64) -> u8 {
    (sum >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Resizes `image` to `width` x `height` with PIL's `Image.resize(..., BICUBIC)`.
pub fn resize_bicubic(image: &RgbImage, width: u32, height: u32) -> RgbImage {
    let (in_width, in_height) = (image.width() as usize, image.height() as usize);
    let (out_width, out_height) = (width as usize, height as usize);
    let horizontal = Kernel::new(in_width, 0.0, in_width as f64, out_width);
    let vertical = Kernel::new(in_height, 0.0, in_height as f64, out_height);
    let src = image.as_raw();
    let half = 1i64 << (PRECISION_BITS - 1);

    // Horizontal pass over the rows the vertical pass will read (PIL skips it when the
    // width does not change).
    let (first_row, last_row) = if out_height == in_height { (0, in_height) } else { vertical.span() };
    let rows = last_row - first_row;
    let (temp, temp_width) = if out_width == in_width {
        (src[first_row * in_width * 3..last_row * in_width * 3].to_vec(), in_width)
    } else {
        let mut temp = vec![0u8; rows * out_width * 3];
        for row in 0..rows {
            let line = &src[(first_row + row) * in_width * 3..][..in_width * 3];
            for (x, (start, weights)) in horizontal.starts.iter().zip(&horizontal.weights).enumerate() {
                for c in 0..3 {
                    let sum = weights
                        .iter()
                        .enumerate()
                        .fold(half, |acc, (i, &w)| acc + i64::from(line[(start + i) * 3 + c]) * i64::from(w));
                    temp[(row * out_width + x) * 3 + c] = clip8(sum);
                }
            }
        }
        (temp, out_width)
    };
    if out_height == in_height {
        return RgbImage::from_raw(width, height, temp).expect("buffer sized for the output");
    }

    let mut out = vec![0u8; out_height * temp_width * 3];
    for (y, (start, weights)) in vertical.starts.iter().zip(&vertical.weights).enumerate() {
        let start = start - first_row;
        for i in 0..temp_width * 3 {
            let sum = weights
                .iter()
                .enumerate()
                .fold(half, |acc, (k, &w)| acc + i64::from(temp[(start + k) * temp_width * 3 + i]) * i64::from(w));
            out[y * temp_width * 3 + i] = clip8(sum);
        }
    }
    RgbImage::from_raw(width, height, out).expect("buffer sized for the output")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_weights_sum_to_one_in_fixed_point() {
        for (input, output) in [(512, 224), (224, 224), (8, 20), (1000, 3)] {
            let kernel = Kernel::new(input, 0.0, input as f64, output);
            for weights in &kernel.weights {
                let sum: i64 = weights.iter().map(|&w| i64::from(w)).sum();
                assert!((sum - (1 << PRECISION_BITS)).abs() <= weights.len() as i64, "{input}->{output}: {sum}");
            }
        }
    }

    #[test]
    fn constant_images_stay_constant() {
        let image = RgbImage::from_pixel(37, 23, image::Rgb([12, 200, 255]));
        for (w, h) in [(10, 10), (80, 50), (37, 5)] {
            let out = resize_bicubic(&image, w, h);
            assert!(out.pixels().all(|p| p.0 == [12, 200, 255]), "{w}x{h}");
        }
    }

    #[test]
    fn same_size_is_identity() {
        let image = RgbImage::from_fn(9, 7, |x, y| image::Rgb([(x * 20) as u8, (y * 30) as u8, 7]));
        assert_eq!(resize_bicubic(&image, 9, 7), image);
    }
}

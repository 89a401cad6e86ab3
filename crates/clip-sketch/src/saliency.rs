//! CLIPasso's saliency-guided initialization: a relevancy map of CLIP for the image times an
//! XDoG edge map, turned into a distribution by a softmax with temperature 0.3, from which the
//! strokes' start points are drawn without replacement.
//!
//! Two relevancy maps, chosen by the image tower ([`Relevancy`]):
//! - a **ViT** gets the paper's: Chefer et al.'s gradient-weighted attention relevancy
//!   ([`attention_relevancy`]). Per block, with `A` the attention probabilities
//!   `[heads, tokens, tokens]` and `G = dS/dA` the gradient of the image-text logit `S`,
//!   `cam = mean_heads max(G * A, 0)`; from `R = I`, each block in order sets
//!   `R = R + cam R`; the class token's row of `R` over the patches, on the patch grid,
//!   upsampled bilinearly to the image and scaled to `[0, 1]`, is the map.
//! - a **ResNet** has no attention maps: it gets gradient x input,
//!   `|sum_c (x - b)_c * d|E(x)| / dx_c|`, the attribution of the image embedding's magnitude
//!   to the pixels that differ from the blank canvas `b`, smoothed by a 3 x 3 box filter
//!   ([`relevancy`]).

use burn::module::Module;
use burn::tensor::module::interpolate;
use burn::tensor::ops::{InterpolateMode, InterpolateOptions};
use burn::tensor::{Device, Tensor, TensorData};
use clip_core::vision::VisionTransformer;
use clip_core::{ImageTower, l2_normalize};
use rand::Rng;

/// Which relevancy map the saliency initialization uses.
#[derive(Debug, Clone)]
pub enum Relevancy {
    /// Gradient x input of the image embedding's magnitude against the blank canvas
    /// ([`relevancy`]): any image tower.
    GradientInput,
    /// Chefer et al.'s attention relevancy ([`attention_relevancy`]) of a ViT tower for the
    /// image-text logit with this target `[embed_dim]`: the text's L2-normalized embedding
    /// times CLIP's logit scale.
    Attention(Tensor<1>),
}

/// A single-channel map `[height][width]`, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Map {
    /// Side lengths.
    pub width: usize,
    /// Rows.
    pub height: usize,
    /// Values, row-major.
    pub values: Vec<f32>,
}

impl Map {
    /// The map scaled to `[0, 1]` (a constant map becomes all zeros).
    pub fn normalized(&self) -> Map {
        let (lo, hi) = self.values.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        let range = hi - lo;
        let values = self.values.iter().map(|&v| if range > 0.0 { (v - lo) / range } else { 0.0 }).collect();
        Map { values, ..self.clone() }
    }
}

/// Gradient x input relevancy of `tower` (a ResNet or a ViT) for `image` `[1, 3, H, W]` (normalized as CLIP's
/// input) against the blank `background` `[1, 3, H, W]` (same normalization): a `H x W` map.
pub fn relevancy(tower: &ImageTower, image: Tensor<4>, background: Tensor<4>) -> Map {
    let device = image.device();
    let [_, _, height, width] = image.dims();
    let autodiff = device.clone().autodiff();
    let input = image.clone().autodiff().require_grad();
    let embedding = tower.clone().to_device(&autodiff).freeze().forward(input.clone());
    let magnitude = embedding.square().sum().sqrt();
    let grads = magnitude.backward();
    let gradient = input.grad(&grads).map(Tensor::without_autodiff).unwrap_or_else(|| Tensor::zeros([1, 3, height, width], &device));
    let attribution = (image - background).mul(gradient).sum_dim(1).abs();
    let values: Vec<f32> = attribution.into_data().iter::<f32>().collect();
    box_blur(&Map { width, height, values })
}

/// Chefer et al.'s relevancy of the class token to the patches, `[batch, tokens - 1]`, from
/// every block's attention probabilities and their gradients (each `[batch, heads, tokens,
/// tokens]`, without autodiff, in block order): `cam = mean_heads max(G * A, 0)`, `R = I`,
/// then `R = R + cam R` block after block; the result is row 0 of `R` without its first column.
/// `None` without any block.
pub fn chefer_relevancy(probabilities: &[Tensor<4>], gradients: &[Tensor<4>]) -> Option<Tensor<2>> {
    let [batch, _, tokens, _] = probabilities.first()?.dims();
    let device = probabilities[0].device();
    let mut r = Tensor::<2>::eye(tokens, &device).unsqueeze_dim::<3>(0).repeat_dim(0, batch);
    for (a, g) in probabilities.iter().zip(gradients) {
        let cam = g.clone().mul(a.clone()).clamp_min(0.0).mean_dim(1).squeeze_dim::<3>(1);
        r = r.clone() + cam.matmul(r);
    }
    Some(r.narrow(1, 0, 1).narrow(2, 1, tokens - 1).reshape([batch, tokens - 1]))
}

/// Chefer et al.'s attention relevancy of the ViT `tower` for `image` `[1, 3, H, W]`
/// (normalized as CLIP's input) and the image-text logit `S = <E(x) / |E(x)|, target>`
/// (`target` `[embed_dim]`: a text embedding, L2-normalized and times CLIP's logit scale):
/// [`chefer_relevancy`] over every block, reshaped to the patch grid, upsampled bilinearly to
/// `H x W` (half-pixel centers, as PyTorch's `align_corners=False`) and scaled to `[0, 1]`
/// (all zeros for a tower without blocks).
pub fn attention_relevancy(tower: &VisionTransformer, image: Tensor<4>, target: Tensor<1>) -> Map {
    let device = image.device();
    let [_, _, height, width] = image.dims();
    let patch = tower.patch_size;
    let grid = [height / patch, width / patch];
    let empty = Map { width, height, values: vec![0.0; width * height] };
    if tower.transformer.resblocks.is_empty() {
        return empty;
    }
    let autodiff = device.clone().autodiff();
    let (embedding, maps) = tower.clone().to_device(&autodiff).freeze().forward_with_attention(image.autodiff());
    let target = target.to_device(&device).unsqueeze_dim::<2>(0);
    let score = l2_normalize(embedding).mul(target.autodiff()).sum();
    let gradients = maps.gradients(&score.backward());
    let probabilities: Vec<Tensor<4>> = maps.probabilities.into_iter().map(Tensor::without_autodiff).collect();
    let Some(rows) = chefer_relevancy(&probabilities, &gradients) else { return empty };
    let options = InterpolateOptions::new(InterpolateMode::Bilinear).with_align_corners(false).with_output_size([height, width]);
    let upsampled = interpolate(rows.reshape([1, 1, grid[0], grid[1]]), options);
    let values: Vec<f32> = upsampled.into_data().iter::<f32>().collect();
    Map { width, height, values }.normalized()
}

/// A 3 x 3 box filter (edges averaged over the pixels inside).
fn box_blur(map: &Map) -> Map {
    let (w, h) = (map.width, map.height);
    let mut values = vec![0.0; w * h];
    for y in 0..h {
        for x in 0..w {
            let (mut sum, mut n) = (0.0, 0.0);
            for yy in y.saturating_sub(1)..=(y + 1).min(h - 1) {
                for xx in x.saturating_sub(1)..=(x + 1).min(w - 1) {
                    sum += map.values[yy * w + xx];
                    n += 1.0;
                }
            }
            values[y * w + x] = sum / n;
        }
    }
    Map { width: w, height: h, values }
}

/// Separable Gaussian blur of `sigma` pixels (edges clamped).
fn gaussian_blur(map: &Map, sigma: f32) -> Map {
    let radius = (3.0 * sigma).ceil() as isize;
    let kernel: Vec<f32> = (-radius..=radius).map(|i| (-(i * i) as f32 / (2.0 * sigma * sigma)).exp()).collect();
    let total: f32 = kernel.iter().sum();
    let kernel: Vec<f32> = kernel.iter().map(|k| k / total).collect();
    let (w, h) = (map.width as isize, map.height as isize);
    let pass = |values: &[f32], horizontal: bool| -> Vec<f32> {
        let mut out = vec![0.0; values.len()];
        for y in 0..h {
            for x in 0..w {
                let mut sum = 0.0;
                for (j, k) in kernel.iter().enumerate() {
                    let offset = j as isize - radius;
                    let (xx, yy) = if horizontal { ((x + offset).clamp(0, w - 1), y) } else { (x, (y + offset).clamp(0, h - 1)) };
                    sum += k * values[(yy * w + xx) as usize];
                }
                out[(y * w + x) as usize] = sum;
            }
        }
        out
    };
    let values = pass(&pass(&map.values, true), false);
    Map { values, ..map.clone() }
}

/// Parameters of the XDoG edge detector (Winnemoeller et al., 2012), as CLIPasso's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Xdog {
    /// Scale of the narrow Gaussian, in pixels.
    pub sigma: f32,
    /// Ratio of the wide Gaussian's scale to the narrow one's.
    pub k: f32,
    /// Weight of the wide Gaussian.
    pub gamma: f32,
    /// Threshold.
    pub epsilon: f32,
    /// Sharpness of the soft threshold.
    pub phi: f32,
}

impl Default for Xdog {
    fn default() -> Self {
        Self { sigma: 0.5, k: 10.0, gamma: 0.98, epsilon: -0.1, phi: 200.0 }
    }
}

impl Xdog {
    /// The binary edge map (1 on edges) of `gray` in `[0, 1]`.
    pub fn edges(&self, gray: &Map) -> Map {
        let narrow = gaussian_blur(gray, self.sigma);
        let wide = gaussian_blur(gray, self.sigma * self.k);
        let values = narrow
            .values
            .iter()
            .zip(&wide.values)
            .map(|(a, b)| {
                let d = a - self.gamma * b;
                let e = if d >= self.epsilon { 1.0 } else { 1.0 + (self.phi * (d - self.epsilon)).tanh() };
                // Dark lines of the XDoG image are the edges.
                if e < 0.5 { 1.0 } else { 0.0 }
            })
            .collect();
        Map { values, ..gray.clone() }
    }
}

/// The start-point distribution: `relevancy` (scaled to `[0, 1]`) times `edges`, softmax with
/// `temperature` over the positive entries (zero elsewhere). Where the product vanishes
/// everywhere (no edge where CLIP looks), the relevancy alone is used.
pub fn start_distribution(relevancy: &Map, edges: &Map, temperature: f32) -> Vec<f32> {
    let relevancy = relevancy.normalized();
    let mut product: Vec<f32> = relevancy.values.iter().zip(&edges.values).map(|(r, e)| r * e).collect();
    if product.iter().all(|v| *v <= 0.0) {
        product = relevancy.values.clone();
    }
    if product.iter().all(|v| *v <= 0.0) {
        return vec![1.0 / product.len() as f32; product.len()];
    }
    let top = product.iter().cloned().fold(0.0f32, f32::max);
    let mut weights: Vec<f32> = product.iter().map(|&v| if v > 0.0 { ((v - top) / temperature).exp() } else { 0.0 }).collect();
    let total: f32 = weights.iter().sum();
    weights.iter_mut().for_each(|w| *w /= total);
    weights
}

/// `count` distinct pixels drawn from `distribution` (`width` per row), as canvas positions in
/// `[0, 1]` (pixel centers); when fewer pixels have weight, the rest are drawn uniformly.
pub fn sample_starts(distribution: &[f32], width: usize, count: usize, rng: &mut impl Rng) -> Vec<[f32; 2]> {
    let height = distribution.len() / width.max(1);
    let mut weights = distribution.to_vec();
    let mut starts = Vec::with_capacity(count);
    for _ in 0..count {
        let total: f32 = weights.iter().sum();
        let index = if total > 0.0 {
            let mut target = rng.random_range(0.0..total);
            let mut chosen = weights.len() - 1;
            for (i, w) in weights.iter().enumerate() {
                if target < *w {
                    chosen = i;
                    break;
                }
                target -= w;
            }
            chosen
        } else {
            rng.random_range(0..weights.len())
        };
        weights[index] = 0.0;
        let (x, y) = (index % width, index / width);
        starts.push([(x as f32 + 0.5) / width as f32, (y as f32 + 0.5) / height.max(1) as f32]);
    }
    starts
}

/// The mean over channels of a CLIP input `[1, 3, H, W]` scaled back to `[0, 1]` with
/// `mean` and `std`: the grey image XDoG reads.
pub fn gray_of(image: &Tensor<4>, mean: [f32; 3], std: [f32; 3]) -> Map {
    let [_, _, height, width] = image.dims();
    let values: Vec<f32> = image.clone().into_data().iter::<f32>().collect();
    let plane = height * width;
    let gray = (0..plane).map(|i| (0..3).map(|c| values[c * plane + i] * std[c] + mean[c]).sum::<f32>() / 3.0).collect();
    Map { width, height, values: gray }
}

/// An image of constant grey `value` in `[0, 1]`, `[1, 3, H, W]`, normalized with `mean`, `std`.
pub fn blank(value: f32, size: [usize; 2], mean: [f32; 3], std: [f32; 3], device: &Device) -> Tensor<4> {
    let [h, w] = size;
    let values: Vec<f32> = (0..3).flat_map(|c| std::iter::repeat_n((value - mean[c]) / std[c], h * w)).collect();
    Tensor::from_data(TensorData::new(values, [1, 3, h, w]), device)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn xdog_finds_the_edges_of_a_square() {
        let mut values = vec![1.0; 32 * 32];
        for y in 10..22 {
            for x in 10..22 {
                values[y * 32 + x] = 0.0;
            }
        }
        let edges = Xdog::default().edges(&Map { width: 32, height: 32, values });
        assert!(edges.values[16 * 32 + 10] > 0.0 || edges.values[16 * 32 + 9] > 0.0 || edges.values[16 * 32 + 11] > 0.0);
        assert_eq!(edges.values[2 * 32 + 2], 0.0, "flat background has no edge");
    }

    #[test]
    fn starts_follow_the_distribution_and_never_repeat() {
        let mut relevancy = Map { width: 8, height: 8, values: vec![0.0; 64] };
        for i in [9, 10, 11, 12] {
            relevancy.values[i] = 1.0;
        }
        let edges = Map { width: 8, height: 8, values: vec![1.0; 64] };
        let distribution = start_distribution(&relevancy, &edges, 0.3);
        assert!((distribution.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        let mut rng = rand::rngs::StdRng::seed_from_u64(0);
        let starts = sample_starts(&distribution, 8, 4, &mut rng);
        let mut pixels: Vec<usize> = starts.iter().map(|p| (p[1] * 8.0) as usize * 8 + (p[0] * 8.0) as usize).collect();
        pixels.sort();
        assert_eq!(pixels, [9, 10, 11, 12]);
    }
}

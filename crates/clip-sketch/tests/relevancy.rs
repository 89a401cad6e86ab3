//! The ViT attention relevancy (Chefer et al.) of the saliency initialization, on tiny ViTs:
//! the recursion and the upsampled map against a reference written out with loops, and the map
//! following the content of the image.

use burn::module::{Module, Param};
use burn::tensor::{Device, Distribution, Tensor};
use clip_core::l2_normalize;
use clip_core::vision::{VisionTransformer, VisionTransformerConfig};
use clip_sketch::saliency::{Map, Relevancy, attention_relevancy, chefer_relevancy};
use clip_sketch::sketcher::SketcherConfig;

/// 16 x 16 pixels in 4 x 4 patches (a 4 x 4 grid, 17 tokens), width 16, 2 heads, embeddings of 8.
fn tiny_vit(layers: usize, seed: u64, device: &Device) -> VisionTransformer {
    device.seed(seed);
    VisionTransformerConfig::new(16, 4, 16, layers, 2, 32, 8).init(device)
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().iter::<f32>().collect()
}

/// Every block's attention probabilities and the gradients of the logit `<E / |E|, target>`
/// with respect to them, `[heads, 17, 17]` each, as plain vectors.
fn probabilities_and_gradients(vit: &VisionTransformer, image: Tensor<4>, target: Tensor<1>) -> (Vec<Tensor<4>>, Vec<Tensor<4>>) {
    let autodiff = image.device().autodiff();
    let (embedding, maps) = vit.clone().to_device(&autodiff).freeze().forward_with_attention(image.autodiff());
    let score = l2_normalize(embedding).mul(target.unsqueeze_dim::<2>(0).autodiff()).sum();
    let gradients = maps.gradients(&score.backward());
    (maps.probabilities.into_iter().map(Tensor::without_autodiff).collect(), gradients)
}

/// The class token's relevancy to the 16 patches, written out: `R = I`, then per block
/// `R[i][j] += sum_k cam[i][k] R[k][j]` with `cam[i][k] = mean_h max(G A, 0)`, in f64.
fn reference_rows(probabilities: &[Tensor<4>], gradients: &[Tensor<4>]) -> Vec<f64> {
    let (n, heads) = (17, 2);
    let mut r: Vec<Vec<f64>> = (0..n).map(|i| (0..n).map(|j| if i == j { 1.0 } else { 0.0 }).collect()).collect();
    for (a, g) in probabilities.iter().zip(gradients) {
        let (a, g) = (values(a.clone()), values(g.clone()));
        let mut cam = vec![vec![0.0f64; n]; n];
        for (i, row) in cam.iter_mut().enumerate() {
            for (k, c) in row.iter_mut().enumerate() {
                for h in 0..heads {
                    let at = (h * n + i) * n + k;
                    *c += f64::from(g[at] * a[at]).max(0.0) / heads as f64;
                }
            }
        }
        let mut next = r.clone();
        for i in 0..n {
            for j in 0..n {
                next[i][j] += (0..n).map(|k| cam[i][k] * r[k][j]).sum::<f64>();
            }
        }
        r = next;
    }
    r[0][1..].to_vec()
}

/// `grid` (4 x 4, row-major) upsampled bilinearly to 16 x 16 with half-pixel centers (PyTorch's
/// `align_corners=False`), then scaled to `[0, 1]`.
fn reference_map(grid: &[f64]) -> Vec<f64> {
    let source = |out: usize| {
        let x = ((out as f64 + 0.5) * 4.0 / 16.0 - 0.5).max(0.0);
        let lo = x.floor() as usize;
        (lo, (lo + 1).min(3), x - lo as f64)
    };
    let mut map = Vec::with_capacity(256);
    for y in 0..16 {
        let (y0, y1, wy) = source(y);
        for x in 0..16 {
            let (x0, x1, wx) = source(x);
            let at = |r: usize, c: usize| grid[r * 4 + c];
            let top = at(y0, x0) * (1.0 - wx) + at(y0, x1) * wx;
            let bottom = at(y1, x0) * (1.0 - wx) + at(y1, x1) * wx;
            map.push(top * (1.0 - wy) + bottom * wy);
        }
    }
    let (lo, hi) = map.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
    map.iter().map(|v| (v - lo) / (hi - lo)).collect()
}

#[test]
fn the_recursion_and_the_map_match_a_reference_written_out() {
    let device = Device::flex();
    for layers in [1, 2] {
        let vit = tiny_vit(layers, 11, &device);
        let image = Tensor::<4>::random([1, 3, 16, 16], Distribution::Normal(0.0, 1.0), &device);
        let target = Tensor::<1>::random([8], Distribution::Normal(0.0, 3.0), &device);
        let (probabilities, gradients) = probabilities_and_gradients(&vit, image.clone(), target.clone());
        let reference = reference_rows(&probabilities, &gradients);
        let largest = reference.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let smallest = reference.iter().fold(f64::INFINITY, |m, v| m.min(*v));
        assert!(largest > 1e-3 && largest > 2.0 * smallest, "the reference is flat, so the check would be empty: {reference:?}");
        let rows = values(chefer_relevancy(&probabilities, &gradients).unwrap());
        assert_eq!(rows.len(), 16);
        let error = rows.iter().zip(&reference).map(|(r, e)| (f64::from(*r) - e).abs()).fold(0.0, f64::max) / largest;
        eprintln!("{layers} block(s): recursion vs reference, largest error {error:.2e} of the largest relevancy");
        assert!(error < 1e-5, "{layers} block(s): {rows:?} vs {reference:?}");

        let map = attention_relevancy(&vit, image, target);
        assert_eq!((map.width, map.height), (16, 16));
        let expected = reference_map(&reference);
        let error = map.values.iter().zip(&expected).map(|(m, e)| (f64::from(*m) - e).abs()).fold(0.0, f64::max);
        eprintln!("{layers} block(s): upsampled map vs reference, largest error {error:.2e}");
        assert!(error < 1e-4, "{layers} block(s): the upsampled map differs from the reference by {error}");
    }
}

/// A 16 x 16 image (CLIP-normalized, so 0 is the mean grey) blank but for random content in the
/// 8 x 8 quadrant at pixel row `top`, column `left`.
fn with_object(content: &[f32], top: usize, left: usize, device: &Device) -> Tensor<4> {
    let mut pixels = vec![0.0f32; 3 * 256];
    for c in 0..3 {
        for y in 0..8 {
            for x in 0..8 {
                pixels[c * 256 + (top + y) * 16 + left + x] = content[(c * 8 + y) * 8 + x];
            }
        }
    }
    Tensor::<1>::from_floats(pixels.as_slice(), device).reshape([1, 3, 16, 16])
}

/// Mean of the 8 x 8 quadrant of `map` at (`top`, `left`).
fn quadrant_mean(map: &Map, top: usize, left: usize) -> f32 {
    (top..top + 8).flat_map(|y| (left..left + 8).map(move |x| (y, x))).map(|(y, x)| map.values[y * 16 + x]).sum::<f32>() / 64.0
}

/// A ViT without positional embedding treats the patches as a set: where the content sits is
/// then the only thing that tells the patches apart.
fn without_positions(mut vit: VisionTransformer, device: &Device) -> VisionTransformer {
    vit.positional_embedding = Param::from_tensor(Tensor::zeros(vit.positional_embedding.dims(), device));
    vit
}

#[test]
fn the_map_lies_on_the_content() {
    let device = Device::flex();
    device.seed(5);
    let content = values(Tensor::<1>::random([3 * 64], Distribution::Normal(0.0, 1.0), &device));

    // One block, no positional embedding, no value bias: a blank patch enters the block as the
    // zero token (the patch embedding has no bias, the layer norms start with zero shifts), so
    // its value is zero, so is the gradient of the logit with respect to attending to it, and
    // its relevancy is exactly zero; the content's patches get the positive part of G * A.
    let mut vit = without_positions(tiny_vit(1, 5, &device), &device);
    let value = &mut vit.transformer.resblocks[0].attn.value;
    value.bias = Some(Param::from_tensor(Tensor::zeros([16], &device)));
    // The target is the direction in which the content moves the embedding, as a caption of
    // the object would be: the content raises the logit.
    let embed = |image: Tensor<4>| l2_normalize(vit.forward(image)).reshape([8]);
    let object = with_object(&content, 0, 8, &device);
    let target = (embed(object.clone()) - embed(Tensor::zeros([1, 3, 16, 16], &device))).mul_scalar(30.0);
    let map = attention_relevancy(&vit, object, target);
    let means = [quadrant_mean(&map, 0, 0), quadrant_mean(&map, 0, 8), quadrant_mean(&map, 8, 0), quadrant_mean(&map, 8, 8)];
    eprintln!("content top right: quadrant means (top left, top right, bottom left, bottom right) {means:?}");
    for (i, mean) in means.iter().enumerate().filter(|(i, _)| *i != 1) {
        assert!(means[1] > 2.0 * mean, "the content's quadrant (top right) is not the most relevant: quadrant {i} {means:?}");
    }
    // Pixels interpolated from blank patches alone.
    let far: Vec<f32> = (12..16).flat_map(|y| (0..4).map(move |x| (y, x))).map(|(y, x)| map.values[y * 16 + x]).collect();
    assert!(far.iter().all(|v| *v == 0.0), "blank patches far from the content have relevancy: {far:?}");

    // Two blocks with random weights: the same content moved from the top right to the bottom
    // left moves its relevancy with it, patch for patch, and every blank patch has one value.
    let vit = without_positions(tiny_vit(2, 6, &device), &device);
    let target = Tensor::<1>::random([8], Distribution::Normal(0.0, 10.0), &device);
    let grid_relevancy = |image: Tensor<4>| {
        let (probabilities, gradients) = probabilities_and_gradients(&vit, image, target.clone());
        values(chefer_relevancy(&probabilities, &gradients).unwrap())
    };
    let top_right = grid_relevancy(with_object(&content, 0, 8, &device));
    let bottom_left = grid_relevancy(with_object(&content, 8, 0, &device));
    let largest = top_right.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let (blank, object) = (top_right[15], top_right[2]);
    assert!((object - blank).abs() > 1e-3 * largest, "content and blank patches have the same relevancy: {top_right:?}");
    for row in 0..4 {
        for col in 0..4 {
            let before = top_right[row * 4 + col];
            let in_object = row < 2 && col >= 2;
            let moved = if in_object { bottom_left[(row + 2) * 4 + col - 2] } else { blank };
            assert!((before - moved).abs() <= 1e-5 * largest, "patch ({row}, {col}): {before} before the move, {moved} after");
        }
    }
    for row in 2..4 {
        for col in 2..4 {
            assert!((bottom_left[row * 4 + col] - blank).abs() <= 1e-5 * largest, "blank patch ({row}, {col}) after the move");
        }
    }
}

#[test]
fn the_attention_relevancy_needs_a_vit() {
    let device = Device::flex();
    let json = r#"{"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 8, "head_width": 8},
        "text_cfg": {"context_length": 8, "width": 16, "heads": 2, "layers": 1}}"#;
    let resnet = clip_core::ClipConfig::from_open_clip_json(json, "test").unwrap().vision.init(&device);
    let target = Tensor::<1>::ones([16], &device);
    let error = SketcherConfig::new(32).init(resnet).unwrap().with_relevancy(Relevancy::Attention(target)).unwrap_err();
    assert!(error.contains("ViT"), "{error}");

    // A ViT sketcher draws its start points from the attention relevancy times the edges.
    let vit = clip_core::ImageTower::Vit(tiny_vit(2, 3, &device));
    let target = Tensor::<1>::random([8], Distribution::Normal(0.0, 3.0), &device);
    let config = SketcherConfig::new(16).with_strokes(3).with_iterations(2).with_seeds(vec![0]).with_loss(clip_sketch::loss::LossConfig::new().with_layer_weights([0.0; 5]));
    let sketcher = config.init(vit.clone()).unwrap().with_relevancy(Relevancy::Attention(target.clone())).unwrap();
    let image = with_object(&values(Tensor::<1>::random([3 * 64], Distribution::Normal(0.0, 1.0), &device)), 0, 8, &device);
    let relevant = attention_relevancy(vit.as_vit().unwrap(), image.clone(), target);
    let gray = clip_sketch::saliency::gray_of(&image, clip_core::preprocess::OPENAI_MEAN, clip_core::preprocess::OPENAI_STD);
    let expected = clip_sketch::saliency::start_distribution(&relevant, &clip_sketch::saliency::Xdog::default().edges(&gray), 0.3);
    assert_eq!(sketcher.start_distribution(&image), expected);
    let sketch = sketcher.sketch(image, &mut || {}).unwrap();
    assert_eq!(sketch.strokes.len(), 3);
    assert!(sketch.loss.is_finite());
}

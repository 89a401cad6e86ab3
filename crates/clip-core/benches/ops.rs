//! Single burn ops at the shapes the CLIP towers run them, timed one by one, so that a gap in
//! `throughput` can be traced to the op (and the backend) that causes it: a matrix product, exact
//! GELU (burn's op, and clip-core's split over the cores), layer norm, fused attention and one
//! AdamW step. `xtask/bench_ops.py` times PyTorch's
//! same ops; `cargo xtask bench --ops` prints both side by side. Lines read
//! `op <name> <shape>: <microseconds> us`.

use std::time::Instant;

use burn::module::{Module, Param};
use burn::nn::LayerNormConfig;
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::activation::gelu;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Device, Distribution, Tensor};
use clip_core::transformer::Activation;

/// The allocator and setting `clipforge` uses (see `throughput.rs`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// One trainable matrix, for timing the optimizer alone.
#[derive(Module, Debug)]
struct Weights {
    weight: Param<Tensor<2>>,
}

fn iterations() -> usize {
    std::env::var("CLIP_BENCH_ITERS").ok().and_then(|v| v.parse().ok()).unwrap_or(20)
}

/// Median microseconds of `iterations()` runs of `f` after two warm-up runs.
fn median_micros(mut f: impl FnMut()) -> f64 {
    f();
    f();
    let mut micros: Vec<f64> = (0..iterations().max(1))
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    micros.sort_by(f64::total_cmp);
    micros[micros.len() / 2]
}

fn report(name: &str, shape: &[usize], micros: f64) {
    let shape: Vec<String> = shape.iter().map(usize::to_string).collect();
    println!("op {name} [{}]: {micros:.1} us", shape.join(","));
}

fn random<const D: usize>(shape: [usize; D], device: &Device) -> Tensor<D> {
    Tensor::random(shape, Distribution::Normal(0.0, 1.0), device)
}

fn main() {
    // SAFETY: `mi_option_set` only stores an option value (15 is `mi_option_purge_delay`).
    unsafe { libmimalloc_sys::mi_option_set(15, -1) };
    let device = Device::default();
    println!("device {device:?}, {} timed iterations", iterations());

    // ViT-B-32 at batch 32 (1600 tokens of width 768) and the quickstart model at batch 32
    // (544 tokens of width 64, MLP width 256).
    for [rows, width, hidden] in [[1600, 768, 3072], [544, 64, 256]] {
        let x = random([rows, width], &device);
        let w = random([width, hidden], &device);
        report("matmul", &[rows, width, hidden], median_micros(|| {
            let _ = x.clone().matmul(w.clone()).into_data();
        }));
        let h = random([rows, hidden], &device);
        report("gelu", &[rows, hidden], median_micros(|| {
            let _ = gelu(h.clone()).into_data();
        }));
        report("gelu_all_cores", &[rows, hidden], median_micros(|| {
            let _ = Activation::Gelu.forward(h.clone()).into_data();
        }));
        let norm = LayerNormConfig::new(width).init(&device);
        report("layer_norm", &[rows, width], median_micros(|| {
            let _ = norm.forward(x.clone()).into_data();
        }));
    }

    for [batch, heads, tokens, head_dim] in [[32, 12, 50, 64], [32, 2, 17, 32]] {
        let q = random([batch, heads, tokens, head_dim], &device);
        let options = AttentionModuleOptions { scale: None, softcap: None, is_causal: false };
        report("attention", &[batch, heads, tokens, head_dim], median_micros(|| {
            let _ = attention(q.clone(), q.clone(), q.clone(), None, None, options).into_data();
        }));
    }

    // One AdamW step on the token embedding of both models (49408 tokens) and a ViT-B-32 MLP.
    let train_device = device.clone().autodiff();
    for [rows, cols] in [[49408, 64], [49408, 512], [768, 3072]] {
        let mut weights = Weights { weight: Param::from_tensor(random([rows, cols], &train_device)) };
        let mut optimizer = AdamWConfig::new().with_weight_decay(0.2).init();
        let grad = random([rows, cols], &device);
        report("adamw_step", &[rows, cols], median_micros(|| {
            let mut grads = GradientsParams::new();
            grads.register(weights.weight.id, grad.clone());
            weights = optimizer.step(1e-5, weights.clone(), grads);
            let _ = weights.weight.val().slice([0..1, 0..1]).into_data();
        }));
    }
}

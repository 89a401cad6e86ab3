//! Throughput of ViT-B-32 and RN50: image and text encoding at batch 1, 8 and 32, and one
//! training step (forward, InfoNCE, backward, AdamW) at batch 32. Run with `cargo bench -p
//! clip-core` (or `cargo xtask bench`, which also runs open_clip's same measurement); the device
//! is burn's default (`flex` on CPU unless `BURN_DEVICE` names another compiled-in backend:
//! `BURN_DEVICE=wgpu cargo bench -p clip-core --features wgpu --bench throughput`, or `cuda`;
//! `cargo xtask bench --device wgpu|cuda` does this). Every timed run ends with its results
//! read back to the host (encoding) or a device-wide sync (training), so GPU work is counted.
//! Everything runs in f32.
//! `CLIP_BENCH_MODEL` picks other architectures (comma-separated names or open_clip JSON
//! configs), `CLIP_BENCH_BATCHES` the encode batches, `CLIP_BENCH_TRAIN_BATCH` the training
//! batch and `CLIP_BENCH_ITERS` the timed repeats. `xtask/bench_open_clip.py` prints the same
//! lines for open_clip.

use std::time::Instant;

use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::{Device, Distribution, Int, Tensor, TensorData};
use clip_core::{ClipConfig, ClipLoss};

/// The allocator and setting `clipforge` uses (`clip_train::allocator`), so the figures are the
/// ones users see: mimalloc, keeping freed memory (option 15 is `mi_option_purge_delay`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn iterations() -> usize {
    std::env::var("CLIP_BENCH_ITERS").ok().and_then(|v| v.parse().ok()).unwrap_or(3)
}

/// Token ids shaped like real captions: SOT, a few words, EOT, zero padding.
fn captions(batch: usize, context: usize, device: &Device) -> Tensor<2, Int> {
    let mut ids = vec![0i64; batch * context];
    for (row, chunk) in ids.chunks_mut(context).enumerate() {
        let len = (5 + row % 12).min(context - 1);
        chunk[0] = 49406;
        for (i, id) in chunk.iter_mut().enumerate().take(len).skip(1) {
            *id = 320 + ((row * 31 + i * 7) % 4000) as i64;
        }
        chunk[len] = 49407;
    }
    Tensor::from_data(TensorData::new(ids, [batch, context]), device)
}

/// Runs `f` twice to warm up, then `iterations()` times, returning items per second of the
/// median run (robust to a busy machine's stalls; `bench_open_clip.py` measures alike).
fn items_per_second(items: usize, mut f: impl FnMut()) -> f64 {
    f();
    f();
    let mut seconds: Vec<f64> = (0..iterations().max(1))
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed().as_secs_f64()
        })
        .collect();
    seconds.sort_by(f64::total_cmp);
    items as f64 / seconds[seconds.len() / 2]
}

fn main() {
    // SAFETY: `mi_option_set` only stores an option value.
    unsafe { libmimalloc_sys::mi_option_set(15, -1) };
    let names = std::env::var("CLIP_BENCH_MODEL").unwrap_or_else(|_| "ViT-B-32,RN50".into());
    for name in names.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        bench(name);
    }
}

/// A comma-separated list of batch sizes from the environment variable `key`.
fn batches(key: &str, default: &str) -> Vec<usize> {
    let list = std::env::var(key).unwrap_or_else(|_| default.into());
    list.split(',').map(|b| b.trim().parse().unwrap_or_else(|_| panic!("{key}: {b:?} is not a batch size"))).collect()
}

fn bench(name: &str) {
    let config = ClipConfig::from_name_or_path(name).unwrap_or_else(|e| panic!("CLIP_BENCH_MODEL {name}: {e}"));
    let device = Device::default();
    println!("model {name}, device {device:?}, {} timed iterations", iterations());
    let model = config.init(&device);
    let size = config.vision.image_size();
    let context = config.text.context_length;

    for batch in batches("CLIP_BENCH_BATCHES", "1,8,32") {
        let images = Tensor::<4>::random([batch, 3, size, size], Distribution::Normal(0.0, 1.0), &device);
        let rate = items_per_second(batch, || {
            let _ = model.encode_image(images.clone(), true).into_data();
        });
        println!("encode_image  batch {batch:>3}: {rate:8.2} images/s");
        let tokens = captions(batch, context, &device);
        let rate = items_per_second(batch, || {
            let _ = model.encode_text(tokens.clone(), true).into_data();
        });
        println!("encode_text   batch {batch:>3}: {rate:8.2} texts/s");
    }

    let batch = batches("CLIP_BENCH_TRAIN_BATCH", "32")[0];
    let train_device = device.clone().autodiff();
    let mut model = config.init(&train_device);
    let mut optimizer = AdamWConfig::new().with_weight_decay(0.2).init();
    let images = Tensor::<4>::random([batch, 3, size, size], Distribution::Normal(0.0, 1.0), &train_device);
    let tokens = captions(batch, context, &train_device);
    let rate = items_per_second(batch, || {
        let image = model.encode_image(images.clone(), true);
        let text = model.encode_text(tokens.clone(), true);
        let loss = ClipLoss::default().forward(image, text, model.logit_scale());
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optimizer.step(1e-5, model.clone(), grads).clamp_logit_scale();
        // Reading one parameter back waits only for the work it depends on; on a GPU backend
        // the other parameters' AdamW updates may still be queued (burn's fusion runs them on
        // its own thread), so wait for the whole device before the clock stops.
        let _ = model.logit_scale.val().into_data();
        train_device.sync().expect("the training step failed on the device");
    });
    println!("train step    batch {batch:>3}: {rate:8.2} samples/s (forward + backward + AdamW)");
}

//! Seconds per CLIPasso iteration on the CPU (`cargo xtask sketch-bench`, or
//! `cargo bench -p clip-sketch --bench sketch_step [-- ITERATIONS]`): one image at 224 x 224
//! pixels, 16 strokes, the paper's loss (layer2 + layer3 + 0.1 x semantic, 4 augmentations plus
//! the un-augmented pair), for RN50 (random weights) and the tiny digits ResNet, and the
//! rasterizer alone (forward and backward).

use std::path::Path;
use std::time::Instant;

use burn::tensor::{Device, Distribution, Tensor};
use clip_core::ClipConfig;
use clip_sketch::raster::RasterConfig;
use clip_sketch::sketcher::SketcherConfig;

fn main() {
    let iterations: usize = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(5);
    let device = Device::flex();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let size = 224;

    // The rasterizer alone: 16 strokes, forward and backward.
    let raster = RasterConfig::new(size).init().expect("a valid rasterizer");
    let autodiff = device.clone().autodiff();
    let mut seconds = Vec::new();
    for _ in 0..iterations {
        let points = Tensor::<3>::random([16, 4, 2], Distribution::Uniform(0.2, 0.8), &autodiff).require_grad();
        let started = Instant::now();
        let ink = raster.render(points.clone(), 1.5, 1.0);
        let grads = ink.sum().backward();
        let _ = points.grad(&grads);
        seconds.push(started.elapsed().as_secs_f64());
    }
    report("rasterizer (16 strokes, 2x2 samples), forward + backward", size, &seconds);

    for (name, model) in [("RN50 (random weights)", "RN50".to_string()), ("tiny digits ResNet", root.join("configs/models/tiny-digits-rn.json").display().to_string())] {
        let config = match ClipConfig::from_name_or_path(&model) {
            Ok(config) => config,
            Err(error) => {
                eprintln!("{name}: {error}");
                continue;
            }
        };
        let tower = config.vision.init(&device);
        let sketcher = SketcherConfig::new(size)
            .with_iterations(1)
            .with_seeds(vec![0])
            .init(tower)
            .expect("a valid sketcher");
        let image = Tensor::<4>::random([1, 3, size, size], Distribution::Normal(0.0, 1.0), &device);
        let mut seconds = Vec::new();
        for _ in 0..iterations {
            let started = Instant::now();
            let mut steps = 0;
            sketcher.sketch(image.clone(), &mut || steps += 1).expect("a sketch");
            seconds.push(started.elapsed().as_secs_f64());
        }
        report(&format!("{name}: one iteration (with saliency and final loss)"), size, &seconds);
        let sketcher = SketcherConfig::new(size).with_iterations(1 + iterations).with_seeds(vec![0]).init(config.vision.init(&device)).expect("a valid sketcher");
        let started = Instant::now();
        sketcher.sketch(image.clone(), &mut || {}).expect("a sketch");
        let long = started.elapsed().as_secs_f64();
        let one = seconds.iter().cloned().fold(f64::INFINITY, f64::min);
        println!("{name}: {:.3} s per iteration at {size} px ({} more iterations cost {:.3} s)", (long - one) / iterations as f64, iterations, long - one);
    }
}

fn report(what: &str, size: usize, seconds: &[f64]) {
    let best = seconds.iter().cloned().fold(f64::INFINITY, f64::min);
    let mean = seconds.iter().sum::<f64>() / seconds.len().max(1) as f64;
    println!("{what} at {size} px: best {best:.3} s, mean {mean:.3} s over {} runs", seconds.len());
}

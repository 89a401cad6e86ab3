//! `cargo xtask data-bench [SAMPLES] [WORKERS]`: how fast the shard loader feeds training.
//! Writes SAMPLES (default 512) synthetic photographs as 320x256 JPEGs into webdataset shards
//! of 128, then measures, at 224 px with the training transform (random resized crop):
//! - one worker reading the shards and decoding every sample (samples/s per worker);
//! - the training loader (`ShardBatcher`: shard readers + batch decoding on WORKERS threads,
//!   default the machine's cores) delivering batches of 64, as the trainer draws them.
//!
//! Compare samples/s with a training step's rate (`cargo xtask bench`, or a run's
//! `samples_per_second`): the loader starves the model when it is lower.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use clip_core::ClipTokenizer;
use clip_core::preprocess::{TrainTransformConfig, decode_image};
use clip_task::DataSection;
use clip_task::data::sample_rng;
use clip_task::pairs::{Pair, PairTable, Transform};
use clip_task::shards::{ShardBatcher, StreamConfig, read_shard, shard_pattern, write_shards};
use image::codecs::jpeg::JpegEncoder;
use rand::{Rng, SeedableRng};

/// Runs the benchmark with the command line's arguments.
pub fn run(args: &[String]) -> anyhow::Result<()> {
    let samples: usize = args.first().map(|a| a.parse()).transpose().context("SAMPLES must be a number")?.unwrap_or(512);
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let workers: usize = args.get(1).map(|a| a.parse()).transpose().context("WORKERS must be a number")?.unwrap_or(cores);
    anyhow::ensure!(samples >= 64 && workers >= 1, "give SAMPLES >= 64 and WORKERS >= 1");
    let dir = std::env::temp_dir().join(format!("clipforge-data-bench-{}", std::process::id()));
    let result = bench(&dir, samples, workers);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn bench(dir: &Path, samples: usize, workers: usize) -> anyhow::Result<()> {
    let images = dir.join("images");
    std::fs::create_dir_all(&images)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let mut pairs = Vec::with_capacity(samples);
    let mut bytes_total = 0;
    for i in 0..samples {
        // A smooth scene with noise: JPEG sizes close to web photographs (~20-40 kB).
        let (fx, fy, phase) = (rng.random_range(0.01..0.05), rng.random_range(0.01..0.05), rng.random_range(0.0..6.0));
        let image = image::RgbImage::from_fn(320, 256, |x, y| {
            let wave = |k: f64| (((x as f64 * fx * k + y as f64 * fy + phase).sin() + 1.0) * 100.0) as u8;
            let noise: u8 = rng.random_range(0..40);
            image::Rgb([wave(1.0).saturating_add(noise), wave(1.7).saturating_add(noise), wave(0.6).saturating_add(noise)])
        });
        let path = images.join(format!("{i:06}.jpg"));
        let mut encoded = Vec::new();
        JpegEncoder::new_with_quality(&mut encoded, 90).encode_image(&image)?;
        bytes_total += encoded.len();
        std::fs::write(&path, encoded)?;
        pairs.push(Pair { image: path, caption: format!("a synthetic photograph number {i}"), label: None, line: i + 2 });
    }
    let shards = write_shards(&PairTable { path: dir.join("bench.tsv"), pairs }, &dir.join("shards"), 128)?;
    println!(
        "{samples} JPEGs of 320x256 ({:.1} kB each on average) in {} shards; training transform to 224 px",
        bytes_total as f64 / samples as f64 / 1000.0,
        shards.len()
    );
    let transform = TrainTransformConfig::new().with_image_size(224).init()?;

    // One worker: read, decode, crop and resize, normalize.
    let started = Instant::now();
    let mut done = 0;
    for shard in &shards {
        let mut failed = None;
        read_shard(&Arc::new(shard.clone()), &mut |sample| {
            let Some((member, bytes)) = &sample.image else {
                failed = Some(format!("{}: sample {} has no image", shard.display(), sample.key));
                return false;
            };
            let decoded = decode_image(bytes, Path::new(member)).map_err(|e| e.to_string());
            match decoded.and_then(|image| transform.apply(&image, &mut sample_rng(0, 0, done)).map_err(|e| e.to_string())) {
                Ok(_) => {
                    done += 1;
                    true
                }
                Err(e) => {
                    failed = Some(e);
                    false
                }
            }
        });
        if let Some(error) = failed {
            anyhow::bail!(error);
        }
    }
    let per_worker = done as f64 / started.elapsed().as_secs_f64();
    println!("one worker:  {per_worker:8.1} samples/s decoded per worker");

    // The training loader, batches of 64 in stream order.
    let data = DataSection { workers, shuffle_buffer: 256, ..DataSection::new(shard_pattern(&dir.join("shards"), shards.len())) };
    let config = StreamConfig::new(&data, 0)?;
    let batcher = ShardBatcher::new(config, data.train.clone(), ClipTokenizer::new(), Transform::Train(transform), &data);
    let batches = samples / 64;
    let started = Instant::now();
    for step in 0..batches {
        let indices: Vec<usize> = (step * 64..step * 64 + 64).collect();
        let batch = batcher.batch(&indices, step)?;
        anyhow::ensure!(batch.images.len() == 64, "batch {step}: {} images", batch.images.len());
    }
    let rate = (batches * 64) as f64 / started.elapsed().as_secs_f64();
    println!(
        "{workers} workers: {rate:8.1} samples/s delivered in batches of 64 ({:.1} per worker; {} cores here)",
        rate / workers as f64,
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    );
    Ok(())
}

//! The optimization: strokes initialized from the saliency map, their control points moved by
//! Adam under the CLIPasso loss for a number of iterations, from several seeds, keeping the
//! sketch of lowest final loss.

use burn::config::Config;
use burn::module::Module;
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::Tensor;
use clip_core::ImageTower;
use clip_core::preprocess::{OPENAI_MEAN, OPENAI_STD};
use rand::SeedableRng;
use rand::rngs::StdRng;

use crate::loss::{LossConfig, SketchLoss};
use crate::raster::{RasterConfig, Rasterizer};
use crate::saliency::{Relevancy, Xdog, attention_relevancy, blank, gray_of, relevancy, sample_starts, start_distribution};
use crate::strokes::Strokes;

/// Configuration of a [`Sketcher`]; the defaults are the paper's.
#[derive(Config, Debug, PartialEq)]
pub struct SketcherConfig {
    /// Canvas side in pixels: the image tower's input size.
    pub size: usize,
    /// Strokes per sketch.
    #[config(default = 16)]
    pub strokes: usize,
    /// Stroke width in canvas pixels.
    #[config(default = 1.5)]
    pub width: f64,
    /// Stroke opacity.
    #[config(default = 1.0)]
    pub opacity: f64,
    /// Optimization steps per seed.
    #[config(default = 2000)]
    pub iterations: usize,
    /// Adam's learning rate in canvas pixels (the official code optimizes pixel coordinates
    /// with lr 1.0; the control points here are in `[0, 1]`, so the step is `lr / size`).
    #[config(default = 1.0)]
    pub lr: f64,
    /// The seeds, each an independent initialization and optimization; the lowest final loss
    /// wins.
    #[config(default = "vec![0, 1, 2]")]
    pub seeds: Vec<u64>,
    /// Softmax temperature of the start-point distribution.
    #[config(default = 0.3)]
    pub temperature: f64,
    /// Largest step between successive control points of a new stroke, in canvas units.
    #[config(default = 0.05)]
    pub radius: f64,
    /// Ink grey level: 0 draws black on white (the paper), 1 white on black.
    #[config(default = 0.0)]
    pub ink: f64,
    /// Record a frame for the animation every this many iterations (0: none).
    #[config(default = 0)]
    pub frame_every: usize,
    /// Samples per pixel along each axis.
    #[config(default = 2)]
    pub supersample: usize,
    /// Points each stroke's curve is sampled at.
    #[config(default = 32)]
    pub points_per_stroke: usize,
    /// Width of the coverage ramp at a stroke's edge, in pixels.
    #[config(default = 1.0)]
    pub softness: f64,
    /// The loss.
    #[config(default = "LossConfig::new()")]
    pub loss: LossConfig,
}

impl SketcherConfig {
    /// Checks the values, naming the key under `prefix` (`sketch.`).
    pub fn validate(&self, prefix: &str) -> Result<(), String> {
        if self.strokes == 0 {
            return Err(format!("{prefix}strokes must be at least 1"));
        }
        if !(self.width.is_finite() && self.width > 0.0) {
            return Err(format!("{prefix}width = {} must be positive", self.width));
        }
        if !(self.opacity > 0.0 && self.opacity <= 1.0) {
            return Err(format!("{prefix}opacity = {} must be in (0, 1]", self.opacity));
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(format!("{prefix}lr = {} must be positive", self.lr));
        }
        if self.seeds.is_empty() {
            return Err(format!("{prefix}seeds: give at least one seed"));
        }
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            return Err(format!("{prefix}temperature = {} must be positive", self.temperature));
        }
        if !(self.radius.is_finite() && self.radius >= 0.0) {
            return Err(format!("{prefix}radius = {} must be non-negative", self.radius));
        }
        if !(0.0..=1.0).contains(&self.ink) {
            return Err(format!("{prefix}ink = {} must be in [0, 1]", self.ink));
        }
        self.raster().validate(prefix)?;
        self.loss.validate(prefix)
    }

    fn raster(&self) -> RasterConfig {
        RasterConfig::new(self.size)
            .with_supersample(self.supersample)
            .with_points_per_stroke(self.points_per_stroke)
            .with_softness(self.softness)
    }

    /// The sketcher over `tower` (CLIP's image tower, on any device; the optimization runs on
    /// its autodiff device), starting from the gradient x input relevancy (see
    /// [`Sketcher::with_relevancy`]); an error naming the bad value.
    pub fn init(&self, tower: ImageTower) -> Result<Sketcher, String> {
        self.validate("")?;
        let raster = self.raster().init()?;
        let loss = self.loss.init(tower, OPENAI_MEAN, OPENAI_STD)?;
        Ok(Sketcher { config: self.clone(), raster, loss, relevancy: Relevancy::GradientInput })
    }
}

/// A finished sketch.
#[derive(Debug, Clone)]
pub struct Sketch {
    /// Control points `[strokes][4][2]` in canvas units.
    pub strokes: Vec<[[f32; 2]; 4]>,
    /// The final loss (the un-augmented pair).
    pub loss: f64,
    /// The seed it came from.
    pub seed: u64,
    /// Ink coverage `[size * size]` of the recorded iterations (for the animation), the first
    /// at initialization.
    pub frames: Vec<Vec<f32>>,
    /// Ink coverage `[size * size]` of the result.
    pub ink: Vec<f32>,
}

/// Draws images as sketches; see the module documentation.
#[derive(Debug, Clone)]
pub struct Sketcher {
    config: SketcherConfig,
    raster: Rasterizer,
    loss: SketchLoss,
    relevancy: Relevancy,
}

impl Sketcher {
    /// The sketcher with `relevancy` for the saliency initialization; an error when it is the
    /// attention relevancy and the tower is no ViT.
    pub fn with_relevancy(mut self, relevancy: Relevancy) -> Result<Self, String> {
        if matches!(relevancy, Relevancy::Attention(_)) && self.loss.tower().as_vit().is_none() {
            return Err(format!("the attention relevancy reads a ViT's attention maps, and this tower is a {}", self.loss.tower().architecture()));
        }
        self.relevancy = relevancy;
        Ok(self)
    }

    /// The configuration.
    pub fn config(&self) -> &SketcherConfig {
        &self.config
    }

    /// The rasterizer.
    pub fn rasterizer(&self) -> &Rasterizer {
        &self.raster
    }

    /// The start-point distribution of `image` `[1, 3, size, size]` (CLIP-normalized):
    /// relevancy times XDoG edges, softmax with the temperature; `size * size` weights.
    pub fn start_distribution(&self, image: &Tensor<4>) -> Vec<f32> {
        let device = image.device();
        let size = self.config.size;
        let relevant = match (&self.relevancy, self.loss.tower().as_vit()) {
            (Relevancy::Attention(target), Some(vit)) => attention_relevancy(vit, image.clone(), target.clone()),
            _ => {
                let background = blank(1.0 - self.config.ink as f32, [size, size], OPENAI_MEAN, OPENAI_STD, &device);
                relevancy(self.loss.tower(), image.clone(), background)
            }
        };
        let edges = Xdog::default().edges(&gray_of(image, OPENAI_MEAN, OPENAI_STD));
        start_distribution(&relevant, &edges, self.config.temperature as f32)
    }

    /// The sketch of `image` `[1, 3, size, size]` (CLIP-normalized, as the evaluation
    /// transform gives it), over every seed; `on_step` is called after every iteration.
    pub fn sketch(&self, image: Tensor<4>, on_step: &mut dyn FnMut()) -> anyhow::Result<Sketch> {
        self.sketch_batch(image, on_step)?.pop().ok_or_else(|| anyhow::anyhow!("no sketch"))
    }

    /// Sketches of `images` `[batch, 3, size, size]` (CLIP-normalized), optimized together
    /// (one CLIP forward a step for the batch) but each against its own image, from its own
    /// saliency, keeping for each the seed of lowest final loss. `on_step` is called after
    /// every iteration.
    pub fn sketch_batch(&self, images: Tensor<4>, on_step: &mut dyn FnMut()) -> anyhow::Result<Vec<Sketch>> {
        let [batch, channels, h, w] = images.dims();
        let size = self.config.size;
        anyhow::ensure!(channels == 3 && h == size && w == size, "the images are {channels} x {h} x {w}, the canvas 3 x {size} x {size}");
        let distributions: Vec<Vec<f32>> = (0..batch).map(|i| self.start_distribution(&images.clone().narrow(0, i, 1))).collect();
        let mut best: Vec<Option<Sketch>> = vec![None; batch];
        for &seed in &self.config.seeds {
            let sketches = self.sketch_seed(images.clone(), &distributions, seed, on_step)?;
            for (best, sketch) in best.iter_mut().zip(sketches) {
                if best.as_ref().is_none_or(|b| sketch.loss < b.loss) {
                    *best = Some(sketch);
                }
            }
        }
        best.into_iter().map(|b| b.ok_or_else(|| anyhow::anyhow!("no seed"))).collect()
    }

    /// Images in `[0, 1]` from their CLIP-normalized form.
    fn unnormalized(image: Tensor<4>) -> Tensor<4> {
        let device = image.device();
        let mean = Tensor::<1>::from_floats(OPENAI_MEAN, &device).reshape([1, 3, 1, 1]);
        let std = Tensor::<1>::from_floats(OPENAI_STD, &device).reshape([1, 3, 1, 1]);
        image * std + mean
    }

    /// Canvases `[batch, 3, size, size]` in `[0, 1]` of ink coverage `[batch, size, size]`.
    pub fn canvas(&self, ink: Tensor<3>) -> Tensor<4> {
        let [batch, _, _] = ink.dims();
        let size = self.config.size;
        let ink_value = self.config.ink as f32;
        let background = 1.0 - ink_value;
        ink.mul_scalar(ink_value - background).add_scalar(background).reshape([batch, 1, size, size]).repeat_dim(1, 3)
    }

    /// One seed's optimization of a batch.
    fn sketch_seed(&self, images: Tensor<4>, distributions: &[Vec<f32>], seed: u64, on_step: &mut dyn FnMut()) -> anyhow::Result<Vec<Sketch>> {
        let config = &self.config;
        let [batch, _, _, _] = images.dims();
        let (size, count) = (config.size, config.strokes);
        let autodiff = images.device().autodiff();
        let mut rng = StdRng::seed_from_u64(seed);
        let starts: Vec<[f32; 2]> = distributions.iter().flat_map(|d| sample_starts(d, size, count, &mut rng)).collect();
        let mut strokes = Strokes::scattered(&starts, config.radius as f32, &mut rng, &autodiff);
        let tower = self.loss.tower().clone().to_device(&autodiff).freeze();
        let loss = config.loss.init(tower, OPENAI_MEAN, OPENAI_STD).map_err(anyhow::Error::msg)?;
        let target = Self::unnormalized(images);
        let mut optimizer = AdamConfig::new().init();
        let lr = config.lr / size as f64;
        let (width, opacity) = (config.width as f32, config.opacity as f32);
        let shape = [batch, count, 4, 2];
        let render = |strokes: &Strokes| self.raster.render_batch(strokes.points.val().without_autodiff().reshape(shape), width, opacity);
        let mut frames: Vec<Vec<Vec<f32>>> = vec![Vec::new(); batch];
        let mut record = |ink: Tensor<3>| {
            let values: Vec<f32> = ink.into_data().iter::<f32>().collect();
            for (frames, image) in frames.iter_mut().zip(values.chunks_exact(size * size)) {
                frames.push(image.to_vec());
            }
        };
        if config.frame_every > 0 {
            record(render(&strokes));
        }
        for iteration in 0..config.iterations {
            let augmentations = loss.draw(size, &mut rng);
            let ink = self.raster.render_batch(strokes.points.val().reshape(shape), width, opacity);
            let parts = loss.forward(self.canvas(ink), target.clone(), &augmentations);
            let value = parts.total.clone().into_scalar::<f32>();
            anyhow::ensure!(value.is_finite(), "the sketch loss is {value} at iteration {iteration} (seed {seed})");
            let grads = GradientsParams::from_grads(parts.total.backward(), &strokes);
            strokes = optimizer.step(lr, strokes, grads);
            if config.frame_every > 0 && (iteration + 1) % config.frame_every == 0 {
                record(render(&strokes));
            }
            on_step();
        }
        let values = strokes.values();
        let ink = render(&strokes);
        let canvases = self.canvas(ink.clone());
        let inks: Vec<f32> = ink.into_data().iter::<f32>().collect();
        let mut sketches = Vec::with_capacity(batch);
        for (i, frames) in frames.into_iter().enumerate() {
            let range = i..i + 1;
            let final_loss = self.loss.forward(canvases.clone().slice([range.clone()]), target.clone().slice([range]), &[]).total.into_scalar::<f32>();
            sketches.push(Sketch {
                strokes: values[i * count..(i + 1) * count].to_vec(),
                loss: f64::from(final_loss),
                seed,
                frames,
                ink: inks[i * size * size..(i + 1) * size * size].to_vec(),
            });
        }
        Ok(sketches)
    }
}

//! `clipforge`: train, evaluate and use CLIP models from the command line.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use clip_core::preprocess::{EvalTransformConfig, stack_images};
use clip_core::{ClipTokenizer, ZeroShotClassifier, imagenet_templates, weights};
use clip_train::config::RunConfig;
use clip_train::embeddings_file::{read_lines, write_embeddings};
use clip_train::{detect, eval, segment, trainer};

#[derive(Parser)]
#[command(name = "clipforge", version, about = "Train, fine-tune and use CLIP models")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a model as a run config describes.
    Train {
        /// The run config (TOML).
        config: PathBuf,
        /// Output directory (overrides run.output).
        #[arg(long)]
        output: Option<PathBuf>,
        /// Continue from the newest checkpoint in the output directory.
        #[arg(long)]
        resume: bool,
        /// Override a config key, e.g. `--set train.lr=1e-4` (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
    },
    /// Validate a run config without running it.
    Check {
        /// The run config (TOML).
        config: PathBuf,
        /// Override a config key (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
    },
    /// Evaluate a trained model (zero-shot and retrieval) on the config's validation table.
    Eval {
        /// The run config (TOML).
        config: PathBuf,
        /// A run's checkpoint folder, or open_clip / Hugging Face weights.
        #[arg(long)]
        weights: PathBuf,
        /// Override a config key (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
    },
    /// Rank labels for images with a pretrained model.
    ZeroShot {
        /// Named architecture or JSON config (ignored for Hugging Face directories).
        #[arg(long, default_value = "ViT-B-32")]
        model: String,
        /// open_clip / OpenAI checkpoint, Hugging Face directory, or a run's checkpoint folder.
        #[arg(long)]
        weights: PathBuf,
        /// Comma-separated class names.
        #[arg(long)]
        labels: String,
        /// Images to classify.
        #[arg(required = true)]
        images: Vec<PathBuf>,
        /// How many labels to print per image.
        #[arg(long, default_value_t = 5)]
        top: usize,
    },
    /// Write normalized embeddings of images or texts to a .safetensors or .npy file.
    Embed {
        /// Named architecture or JSON config (ignored for Hugging Face directories).
        #[arg(long, default_value = "ViT-B-32")]
        model: String,
        /// open_clip / OpenAI checkpoint, Hugging Face directory, or a run's checkpoint folder.
        #[arg(long)]
        weights: PathBuf,
        /// Images to embed.
        #[arg(long, num_args = 1.., conflicts_with = "texts")]
        images: Vec<PathBuf>,
        /// A text file with one text per line to embed.
        #[arg(long)]
        texts: Option<PathBuf>,
        /// Items per forward pass.
        #[arg(long, default_value_t = 64)]
        batch_size: usize,
        /// Output file: `.safetensors` (key `embeddings`) or `.npy`, `[items, embed_dim]`.
        #[arg(long)]
        output: PathBuf,
    },
    /// Segment images into any label set with a GroupViT or LSeg model; writes a color-coded
    /// label map (`<image>.labels.png`), an overlay (`<image>.overlay.png`) and `legend.json`.
    Segment {
        /// A run config (TOML) with `train.objective` `groupvit` or `lseg` (its `model.weights`
        /// or random weights), or a run's output folder (its newest checkpoint).
        model: PathBuf,
        /// A run checkpoint folder (`<output>/checkpoints/step-N`) to load instead.
        #[arg(long)]
        checkpoint: Option<PathBuf>,
        /// Comma-separated label names (default: the config's `segmentation.labels` file).
        #[arg(long)]
        labels: Option<String>,
        /// Images to segment.
        #[arg(required = true)]
        images: Vec<PathBuf>,
        /// Output folder.
        #[arg(long, default_value = "segmented")]
        output: PathBuf,
        /// Opacity of the label colors in the overlay.
        #[arg(long, default_value_t = 0.5)]
        alpha: f32,
        /// Override a config key (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
    },
    /// Detect any list of categories in images with a ViLD or GLIP model; draws the boxes with
    /// their labels (`<image>.detections.png`) and writes `detections.json`.
    Detect {
        /// A run config (TOML) with `train.objective` `vild` or `glip` (its `model.weights` or
        /// random weights), or a run's output folder (its newest checkpoint).
        model: PathBuf,
        /// A run checkpoint folder (`<output>/checkpoints/step-N`) to load instead.
        #[arg(long)]
        checkpoint: Option<PathBuf>,
        /// Comma-separated category names (default: the categories of the config's `data.train`).
        #[arg(long)]
        labels: Option<String>,
        /// Images to detect in.
        #[arg(required = true)]
        images: Vec<PathBuf>,
        /// Output folder.
        #[arg(long, default_value = "detected")]
        output: PathBuf,
        /// Lowest score drawn (default: the config's `detection.score_threshold`).
        #[arg(long)]
        threshold: Option<f32>,
        /// Override a config key (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
    },
    /// Pseudo-label caption data with a trained ViLD or GLIP teacher: boxes for the category
    /// names (or `--phrases`) found in each image's caption, written as a COCO JSON with
    /// `tokens_positive` phrase spans (grounding data for GLIP).
    PseudoLabel {
        /// The teacher: a run config (TOML) or a run's output folder.
        model: PathBuf,
        /// A run checkpoint folder of the teacher to load instead.
        #[arg(long)]
        checkpoint: Option<PathBuf>,
        /// COCO JSON of the images to label; each image needs a `caption`.
        #[arg(long)]
        data: PathBuf,
        /// Folder of its images (default: the JSON's folder).
        #[arg(long)]
        images: Option<PathBuf>,
        /// Comma-separated phrases to look for (default: the JSON's category names).
        #[arg(long)]
        phrases: Option<String>,
        /// Lowest teacher score kept as a pseudo-label.
        #[arg(long, default_value_t = 0.5)]
        threshold: f32,
        /// Output COCO JSON.
        #[arg(long)]
        output: PathBuf,
        /// Override a config key (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
    },
    /// Write a model in open_clip or Hugging Face layout.
    Export {
        /// Named architecture or JSON config of the model.
        #[arg(long)]
        model: String,
        /// A run's checkpoint folder, or weights in any supported layout.
        #[arg(long)]
        weights: PathBuf,
        /// `open_clip` (a .safetensors file) or `hf` (a directory).
        #[arg(long, default_value = "open_clip")]
        format: String,
        /// Output file (open_clip) or directory (hf).
        #[arg(long)]
        output: PathBuf,
    },
}

fn main() {
    if let Err(error) = run(Cli::parse()) {
        eprintln!("error: {error:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Train { config: path, output, resume, overrides } => {
            let config = RunConfig::load(&path, &overrides)?;
            let output = output.unwrap_or_else(|| config.run.output.clone());
            let summary = trainer::train(&config, &output, resume)?;
            println!("{}", serde_json::to_string_pretty(&summary)?);
            println!("summary written to {}", output.join("summary.json").display());
        }
        Command::Check { config: path, overrides } => {
            RunConfig::load(&path, &overrides)?;
            println!("{}: ok", path.display());
        }
        Command::Eval { config: path, weights, overrides } => {
            let config = RunConfig::load(&path, &overrides)?;
            let val = config.tables()?.1.context("neither data.val nor data.val_fraction is set: nothing to evaluate")?;
            let device = trainer::select_device(&config.run.device)?;
            let (model, clip) = trainer::load_model(&config.model.name, Some(&weights), &device)?;
            let tokenizer = ClipTokenizer::new().with_context_length(clip.text.context_length)?;
            let batcher = trainer::eval_batcher(&config, val, &tokenizer, clip.vision.image_size());
            let report = eval::evaluate(&model, &batcher, &tokenizer, &config.eval, &device)?;
            println!("{}", serde_json::to_string_pretty(&report)?);
        }
        Command::ZeroShot { model, weights, labels, images, top } => {
            let device = burn::tensor::Device::default();
            let (model, clip) = trainer::load_model(&model, Some(&weights), &device)?;
            let labels: Vec<&str> = labels.split(',').map(str::trim).filter(|l| !l.is_empty()).collect();
            anyhow::ensure!(!labels.is_empty(), "--labels: give at least one class name");
            let tokenizer = ClipTokenizer::new().with_context_length(clip.text.context_length)?;
            let classifier = ZeroShotClassifier::build(&model, &tokenizer, &labels, &imagenet_templates(), &device)?;
            let transform = EvalTransformConfig::new().with_image_size(clip.vision.image_size()).init();
            let pixels = images.iter().map(|p| transform.load(p)).collect::<Result<Vec<_>, _>>()?;
            let embeddings = model.encode_image(stack_images(&pixels, &device)?, true);
            for (image, ranked) in images.iter().zip(classifier.top_k(embeddings, top)) {
                println!("{}", image.display());
                for prediction in ranked {
                    println!("  {:>6.2}%  {}", 100.0 * prediction.probability, labels[prediction.class]);
                }
            }
        }
        Command::Embed { model, weights, images, texts, batch_size, output } => {
            let device = burn::tensor::Device::default();
            let (model, clip) = trainer::load_model(&model, Some(&weights), &device)?;
            let batch_size = batch_size.max(1);
            let mut chunks = Vec::new();
            if let Some(texts) = texts {
                let texts = read_lines(&texts)?;
                anyhow::ensure!(!texts.is_empty(), "--texts: the file has no text");
                let tokenizer = ClipTokenizer::new().with_context_length(clip.text.context_length)?;
                for chunk in texts.chunks(batch_size) {
                    chunks.push(model.encode_text(tokenizer.tokenize_batch(chunk, &device)?, true));
                }
            } else {
                anyhow::ensure!(!images.is_empty(), "give --images or --texts");
                let transform = EvalTransformConfig::new().with_image_size(clip.vision.image_size()).init();
                for chunk in images.chunks(batch_size) {
                    let pixels = chunk.iter().map(|p| transform.load(p)).collect::<Result<Vec<_>, _>>()?;
                    chunks.push(model.encode_image(stack_images(&pixels, &device)?, true));
                }
            }
            let embeddings = burn::tensor::Tensor::cat(chunks, 0);
            let [rows, dim] = embeddings.dims();
            let values: Vec<f32> = embeddings.into_data().iter::<f32>().collect();
            write_embeddings(&output, values, [rows, dim])?;
            println!("wrote {rows} embeddings of size {dim} to {}", output.display());
        }
        Command::Segment { model, checkpoint, labels, images, output, alpha, overrides } => {
            segment::run(&model, checkpoint, labels.as_deref(), &images, &output, alpha, &overrides)?;
        }
        Command::Detect { model, checkpoint, labels, images, output, threshold, overrides } => {
            detect::run(&model, checkpoint, labels.as_deref(), &images, &output, threshold, &overrides)?;
        }
        Command::PseudoLabel { model, checkpoint, data, images, phrases, threshold, output, overrides } => {
            let request = detect::PseudoLabelRequest { data, images_dir: images, phrases, threshold, output };
            detect::pseudo_label(&model, checkpoint, &request, &overrides)?;
        }
        Command::Export { model, weights, format, output } => {
            let device = burn::tensor::Device::flex();
            let (model, clip) = trainer::load_model(&model, Some(&weights), &device)?;
            match format.as_str() {
                "open_clip" => weights::save_open_clip(&model, &clip, &output)?,
                "hf" => weights::save_hugging_face(&model, &clip, &output)?,
                other => anyhow::bail!("--format {other:?}: use \"open_clip\" or \"hf\""),
            }
            println!("wrote {}", output.display());
        }
    }
    Ok(())
}

//! `clipforge`: train, evaluate and use CLIP models from the command line.

use std::path::PathBuf;

use anyhow::Context;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use clip_core::preprocess::{EvalTransformConfig, stack_images};
use clip_core::{ClipTokenizer, ZeroShotClassifier, imagenet_templates, weights};
use clip_task::embeddings_file::{read_lines, write_embeddings};
use clip_train::config::RunConfig;
use clip_train::{registry, runs, trainer};

/// mimalloc, keeping freed tensor buffers for reuse (see [`clip_train::allocator`]).
#[global_allocator]
static ALLOCATOR: clip_train::allocator::MiMalloc = clip_train::allocator::MiMalloc;

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
    /// Evaluate a model as its run's task does (zero-shot and retrieval for contrastive runs,
    /// mIoU, AP, recall, ... for the methods) on the config's validation data.
    Eval {
        /// A run config (TOML), or a run's output folder (its newest checkpoint).
        config: PathBuf,
        /// Weights to evaluate in place of `model.weights`: what `model.weights` takes (open_clip /
        /// Hugging Face weights, a contrastive run's checkpoint folder); for a run checkpoint of
        /// the config's own task, use `--checkpoint`.
        #[arg(long)]
        weights: Option<PathBuf>,
        /// A run checkpoint folder (`<output>/checkpoints/step-N`) of the config's task.
        #[arg(long)]
        checkpoint: Option<PathBuf>,
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
        /// Images to classify, or other files the run's task ranks (audio for an AudioCLIP run).
        #[arg(required = true)]
        images: Vec<PathBuf>,
        /// How many labels to print per image.
        #[arg(long, default_value_t = 5)]
        top: usize,
        /// The backend to compute on: `flex` (the CPU), or `wgpu` or `cuda` in a build with
        /// that cargo feature.
        #[arg(long, default_value = "flex")]
        device: String,
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
        /// The backend to compute on: `flex` (the CPU), or `wgpu` or `cuda` in a build with
        /// that cargo feature.
        #[arg(long, default_value = "flex")]
        device: String,
    },
    /// Convert a table (CSV/TSV/JSONL) or class-folder dataset into webdataset tar shards
    /// (`KEY.jpg|png|webp`, `KEY.txt`, `KEY.json`) of N samples each, with `sizes.json`.
    Shards {
        /// A `.csv`/`.tsv`/`.jsonl` table or a folder of class subfolders.
        input: PathBuf,
        /// Folder to write `000000.tar`, `000001.tar`, ... and `sizes.json` into.
        #[arg(long)]
        output: PathBuf,
        /// Samples per shard.
        #[arg(long, default_value_t = 1000)]
        samples_per_shard: usize,
        /// Column holding image paths (as data.image_column).
        #[arg(long, default_value = "filepath")]
        image_column: String,
        /// Column holding captions (as data.caption_column).
        #[arg(long, default_value = "title")]
        caption_column: String,
        /// Column holding class names, kept as `label` in `KEY.json`.
        #[arg(long)]
        label_column: Option<String>,
        /// Caption of a class folder's images, `{}` standing for the class name.
        #[arg(long, default_value = "a photo of a {}.")]
        caption_template: String,
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
    clip_train::allocator::keep_freed_memory();
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let by_config = names_run_config(&args);
    let matches = with_task_commands(Cli::command(), by_config).get_matches_from(args);
    let result = match matches.subcommand() {
        Some((name, args)) if is_task_command(name) => run_task_command(name, args),
        _ => Cli::from_arg_matches(&matches).map_err(anyhow::Error::from).and_then(run),
    };
    if let Err(error) = result {
        eprintln!("error: {error:#}");
        std::process::exit(1);
    }
}

/// The inference commands of the registered tasks (`segment`, `detect`, ...), each under the
/// arguments that locate its model.
fn task_commands() -> Vec<clap::Command> {
    let mut commands: Vec<clap::Command> = Vec::new();
    for (_, task) in registry::TASKS {
        for command in task.commands() {
            if !commands.iter().any(|c| c.get_name() == command.get_name()) {
                commands.push(command);
            }
        }
    }
    commands
}

fn is_task_command(name: &str) -> bool {
    task_commands().iter().any(|c| c.get_name() == name)
}

/// Whether `args` run a task command with `--config` (its run named by a run config, and every
/// positional argument the command's own).
fn names_run_config(args: &[std::ffi::OsString]) -> bool {
    let is_task = args.get(1).and_then(|a| a.to_str()).is_some_and(is_task_command);
    is_task
        && args
            .iter()
            .skip(2)
            .filter_map(|a| a.to_str())
            .take_while(|a| *a != "--")
            .any(|a| a == "--config" || a.starts_with("--config="))
}

/// `cli` with every task command, each taking first the run that holds its model, or, when
/// `by_config` (the command line gives `--config`), that run as `--config` and no `MODEL`.
fn with_task_commands(cli: clap::Command, by_config: bool) -> clap::Command {
    task_commands().into_iter().fold(cli, |cli, command| {
        let config = clap::Arg::new("config")
            .long("config")
            .value_name("CONFIG")
            .value_parser(clap::value_parser!(PathBuf))
            .conflicts_with("checkpoint")
            .help(
                "A run config (TOML) whose run to use in place of MODEL: the newest checkpoint in its run.output, where the \
                 run is first trained (or its interrupted training finished) when it has no summary.json",
            );
        let located = clap::Command::new(command.get_name().to_string()).about(command.get_about().cloned().unwrap_or_default());
        let located = if by_config {
            located.arg(config.required(true))
        } else {
            located
                .arg(
                    // Required: a command line with `--config` takes the variant without MODEL
                    // (and clap refuses an optional positional before a command's required ones).
                    clap::Arg::new("model")
                        .value_name("MODEL")
                        .required(true)
                        .value_parser(clap::value_parser!(PathBuf))
                        .help("A run config (TOML; its model.weights or random weights), or a run's output folder (its newest checkpoint)"),
                )
                .arg(config)
        };
        let located = located
            .arg(
                clap::Arg::new("checkpoint")
                    .long("checkpoint")
                    .value_parser(clap::value_parser!(PathBuf))
                    .help("A run checkpoint folder (<output>/checkpoints/step-N) to load instead"),
            )
            .arg(
                clap::Arg::new("set")
                    .long("set")
                    .value_name("KEY=VALUE")
                    .action(clap::ArgAction::Append)
                    .help("Override a config key (repeatable)"),
            )
            .args(command.get_arguments().cloned());
        cli.subcommand(located)
    })
}

/// Runs task command `name` with the model of the run its arguments name.
fn run_task_command(name: &str, args: &clap::ArgMatches) -> anyhow::Result<()> {
    let overrides: Vec<String> = args.get_many::<String>("set").into_iter().flatten().cloned().collect();
    let by_config = args.get_one::<PathBuf>("config");
    let (model, config, checkpoint) = match by_config {
        Some(file) => (file, RunConfig::load(file, &overrides)?, None),
        None => {
            let model = args.get_one::<PathBuf>("model").context("give MODEL or --config")?;
            let (config, checkpoint) = runs::resolve(model, args.get_one::<PathBuf>("checkpoint").cloned(), &overrides)?;
            (model, config, checkpoint)
        }
    };
    let task = registry::task(&config.train.objective).map_err(anyhow::Error::msg)?;
    if !task.commands().iter().any(|c| c.get_name() == name) {
        let offering: Vec<&str> = registry::TASKS
            .iter()
            .filter(|(_, t)| t.commands().iter().any(|c| c.get_name() == name))
            .map(|(objective, _)| *objective)
            .collect();
        anyhow::bail!(
            "{}: `{name}` needs a run whose train.objective is {}, not {:?}",
            model.display(),
            offering.join(" or "),
            config.train.objective
        );
    }
    // The run of a `--config` is trained first when it has not finished.
    let checkpoint = if by_config.is_some() { Some(runs::trained(&config)?) } else { checkpoint };
    let device = trainer::select_device(config.run.backend()).context("run.device")?;
    let section = task.section().and_then(|key| config.sections.get(key));
    task.run_command(name, args, section, config.context(&config.run.output), checkpoint.as_deref(), &device)
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
        Command::Eval { config: path, weights, checkpoint, overrides } => {
            let explicit = checkpoint.clone();
            let (mut config, mut checkpoint) = runs::resolve(&path, checkpoint, &overrides)?;
            if weights.is_some() {
                // The weights given are the model evaluated, not a run folder's newest checkpoint.
                config.model.weights = weights;
                checkpoint = explicit;
            }
            let device = trainer::select_device(config.run.backend()).context("run.device")?;
            let task = registry::task(&config.train.objective).map_err(anyhow::Error::msg)?;
            let section = task.section().and_then(|key| config.sections.get(key));
            let report = task
                .evaluate(section, config.context(&config.run.output), checkpoint.as_deref(), &device)?
                .context("neither data.val nor data.val_fraction is set: nothing to evaluate")?;
            println!("{}", serde_json::to_string_pretty(&report)?);
        }
        Command::ZeroShot { model, weights, labels, images, top, device } => {
            let device = trainer::select_device(&device).context("--device")?;
            let labels: Vec<&str> = labels.split(',').map(str::trim).filter(|l| !l.is_empty()).collect();
            anyhow::ensure!(!labels.is_empty(), "--labels: give at least one class name");
            // Files that are not images go to the run's task (audio for an AudioCLIP run).
            if let Some(other) = images.iter().find(|p| image::ImageFormat::from_path(p).is_err()) {
                let names: Vec<String> = labels.iter().map(|l| l.to_string()).collect();
                let ranks = runs::rank_files(&weights, &names, &images, &device)?.with_context(|| {
                    format!("{}: not an image, and {} is no run checkpoint of a task that ranks such files", other.display(), weights.display())
                })?;
                for (file, ranked) in images.iter().zip(ranks) {
                    println!("{}", file.display());
                    for (class, probability) in ranked.into_iter().take(top.max(1)) {
                        println!("  {:>6.2}%  {}", 100.0 * probability, labels[class]);
                    }
                }
                return Ok(());
            }
            let (model, clip) = runs::load_clip(&model, &weights, &device)?;
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
        Command::Embed { model, weights, images, texts, batch_size, output, device } => {
            let device = trainer::select_device(&device).context("--device")?;
            let (model, clip) = runs::load_clip(&model, &weights, &device)?;
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
        Command::Shards { input, output, samples_per_shard, image_column, caption_column, label_column, caption_template } => {
            anyhow::ensure!(caption_template.contains("{}"), "--caption-template needs a {{}} for the class name");
            let mut data = clip_task::DataSection::new(&input);
            (data.image_column, data.caption_column, data.label_column, data.caption_template) =
                (image_column, caption_column, label_column, caption_template);
            let table = clip_task::pairs::PairTable::read(&input, &data)?;
            let shards = clip_task::shards::write_shards(&table, &output, samples_per_shard)?;
            println!(
                "wrote {} samples in {} shards: data.train = \"{}\"",
                table.pairs.len(),
                shards.len(),
                clip_task::shards::shard_pattern(&output, shards.len())
            );
        }
        Command::Export { model, weights, format, output } => {
            let device = burn::tensor::Device::flex();
            let (model, clip) = runs::load_clip(&model, &weights, &device)?;
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

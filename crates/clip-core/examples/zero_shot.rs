//! Zero-shot classification of images with a pretrained CLIP.
//!
//! ```text
//! cargo run --release -p clip-core --example zero_shot -- \
//!     ViT-B-32 open_clip_pytorch_model.bin "cat,dog,rocket" photo1.png photo2.jpg
//! ```
//! `MODEL` is a named architecture or a config JSON; `WEIGHTS` an open_clip/OpenAI checkpoint
//! (`.safetensors`, `.bin`, `.pt`) or a Hugging Face `CLIPModel` directory (then `MODEL` is
//! ignored: `config.json` describes the model).

use std::path::Path;

use burn::tensor::Device;
use clip_core::preprocess::{EvalTransformConfig, stack_images};
use clip_core::{ClipConfig, ClipTokenizer, ZeroShotClassifier, imagenet_templates, weights};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [model, weights_path, labels, images @ ..] = args.as_slice() else {
        anyhow::bail!("usage: zero_shot MODEL WEIGHTS LABELS IMAGE...");
    };
    let device = Device::default();
    let weights_path = Path::new(weights_path);
    let (model, config) = if weights_path.is_dir() {
        weights::load_hugging_face(weights_path, &device)?
    } else {
        let config = ClipConfig::from_name_or_path(model)?;
        (weights::load_clip(weights_path, &config, &device)?, config)
    };

    let labels: Vec<&str> = labels.split(',').map(str::trim).collect();
    let tokenizer = ClipTokenizer::new();
    let classifier = ZeroShotClassifier::build(&model, &tokenizer, &labels, &imagenet_templates(), &device)?;

    let transform = EvalTransformConfig::new().with_image_size(config.vision.image_size()).init();
    let pixels = images.iter().map(|p| transform.load(Path::new(p))).collect::<Result<Vec<_>, _>>()?;
    let embeddings = model.encode_image(stack_images(&pixels, &device)?, true);
    for (image, top) in images.iter().zip(classifier.top_k(embeddings, 3)) {
        let ranked: Vec<String> = top.iter().map(|p| format!("{} {:.3}", labels[p.class], p.probability)).collect();
        println!("{image}: {}", ranked.join(", "));
    }
    Ok(())
}

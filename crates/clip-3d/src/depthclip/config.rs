//! Configuration of DepthCLIP: the CLIP it runs on ([`DenseClipConfig`]) and the method's
//! hyperparameters ([`DepthClipConfig`]: prompts, bin depths, temperature, output size).

use burn::config::Config;
use clip_core::config::ClipConfig;
use clip_core::image_tower::ImageTowerConfig;
use clip_core::resnet::ModifiedResNetConfig;
use clip_core::text::TextTransformerConfig;
use clip_core::transformer::Activation;
use clip_core::ClipError;

/// clip-core's result (not imported as `Result`, which `#[derive(Config)]` uses unqualified).
type ClipResult<T> = clip_core::Result<T>;

/// The paper's distance words, nearest first (`depth_classes` of the official `monoclip.py`).
pub const PAPER_DEPTH_CLASSES: [&str; 7] =
    ["giant", "extremely close", "close", "not in distance", "a little remote", "far", "unseen"];

/// The paper's bin depths in metres, one per distance word (`bin_list`).
pub const PAPER_BINS: [f32; 7] = [1.00, 1.50, 2.00, 2.25, 2.50, 2.75, 3.00];

/// The paper's prompt template (`depth_templates`): `str.format(object, distance)`.
pub const PAPER_TEMPLATE: &str = "This {} is {}";

/// The paper's object word (`obj_classes`).
pub const PAPER_OBJECT: &str = "object";

/// The softmax temperature of the paper (`temperature`): logits are divided by it.
pub const PAPER_TEMPERATURE: f64 = 0.1;

/// The constant the official code multiplies cosine similarities by before the temperature
/// (`100. * img_f @ text_f`); CLIP's learned `logit_scale` is not used.
pub const OFFICIAL_LOGIT_FACTOR: f64 = 100.0;

/// The size the official evaluation upsamples every depth map to (`eval.py`, NYU crop).
pub const OFFICIAL_EVAL_SIZE: [usize; 2] = [416, 544];

fn paper_depth_classes() -> Vec<String> {
    PAPER_DEPTH_CLASSES.iter().map(|s| s.to_string()).collect()
}

fn paper_bins() -> Vec<f32> {
    PAPER_BINS.to_vec()
}

fn paper_templates() -> Vec<String> {
    vec![PAPER_TEMPLATE.to_string()]
}

fn paper_objects() -> Vec<String> {
    vec![PAPER_OBJECT.to_string()]
}

/// A CLIP whose image tower is a ModifiedResNet without its attention pool (DepthCLIP reads the
/// dense `layer4` map and never pools) and whose text tower is OpenAI's.
#[derive(Config, Debug, PartialEq)]
pub struct DenseClipConfig {
    /// Bottleneck blocks per ResNet stage (RN50: `[3, 4, 6, 3]`).
    pub layers: [usize; 4],
    /// ResNet stem width; `layer4` has `32 * width` channels (RN50: 64, so 2048).
    pub width: usize,
    /// Joint embedding size (`text_projection`'s columns; RN50: 1024).
    pub embed_dim: usize,
    /// The text tower (OpenAI's: QuickGELU, causal, end-of-text pooling).
    pub text: TextTransformerConfig,
}

impl DenseClipConfig {
    /// OpenAI's RN50, the backbone of the paper (`clip_vis = 'RN50'`).
    pub fn rn50() -> Self {
        let text = TextTransformerConfig::new(77, 49408, 512, 12, 8, 2048, 1024).with_activation(Activation::QuickGelu);
        Self::new([3, 4, 6, 3], 64, 1024, text)
    }

    /// Channels of the `layer4` map.
    pub fn feature_width(&self) -> usize {
        self.width * 32
    }

    /// The same model as a clip-core [`ClipConfig`] (with an attention pool for a 224-pixel
    /// input that DepthCLIP never builds), for reusing clip-core's key tables.
    pub fn clip_config(&self) -> ClipConfig {
        let heads = (self.feature_width() / 64).max(1);
        let vision = ModifiedResNetConfig::new(224, self.layers, self.width, heads, self.embed_dim);
        ClipConfig::new(self.embed_dim, ImageTowerConfig::ResNet(vision), self.text.clone())
    }

    /// Checks the architecture; `origin` names the error.
    pub fn validate(&self, origin: &str) -> ClipResult<()> {
        let t = &self.text;
        let checks = [
            (self.width >= 2, "the ResNet width must be at least 2"),
            (self.layers.iter().all(|&b| b > 0), "every ResNet stage needs at least one block"),
            (t.heads > 0 && t.width.is_multiple_of(t.heads), "text width must be a multiple of text heads"),
            (t.layers > 0 && t.context_length > 0, "the text tower needs layers and a context"),
            (t.embed_dim == self.embed_dim, "the text tower's embed_dim must equal embed_dim"),
        ];
        match checks.iter().find(|(ok, _)| !ok) {
            Some((_, message)) => Err(ClipError::config(origin, *message)),
            None => Ok(()),
        }
    }
}

/// DepthCLIP: the CLIP model and the method's hyperparameters, the paper's values by default.
#[derive(Config, Debug, PartialEq)]
pub struct DepthClipConfig {
    /// The CLIP model.
    pub clip: DenseClipConfig,
    /// Prompt templates, each `str.format`ted with (object, distance word): `{}` twice, or
    /// `{0}` and `{1}`. Several templates are ensembled as the official `zeroshot_classifier`.
    #[config(default = "paper_templates()")]
    pub templates: Vec<String>,
    /// Object words; the official code reshapes the logits to one map per distance word, so it
    /// works only with exactly one (the paper: `object`).
    #[config(default = "paper_objects()")]
    pub obj_classes: Vec<String>,
    /// Distance words, one per bin, in the order of [`bins`](Self::bins).
    #[config(default = "paper_depth_classes()")]
    pub depth_classes: Vec<String>,
    /// Depth of each bin in metres.
    #[config(default = "paper_bins()")]
    pub bins: Vec<f32>,
    /// Softmax temperature: logits are divided by it.
    #[config(default = "PAPER_TEMPERATURE")]
    pub temperature: f64,
    /// Factor on the cosine similarities before the temperature (official: 100).
    #[config(default = "OFFICIAL_LOGIT_FACTOR")]
    pub logit_factor: f64,
    /// Whether [`DepthClip::predict`](super::DepthClip::predict) averages the prediction with
    /// that of the horizontally flipped image, as the official evaluation does.
    #[config(default = true)]
    pub flip_average: bool,
    /// `[height, width]` the prediction is upsampled to (bilinear, corners aligned); `None` is
    /// the input image's size. The official evaluation hard-codes `[416, 544]`, the size of its
    /// NYU input crop, so the two agree there.
    #[config(default = "None")]
    pub output_size: Option<[usize; 2]>,
}

impl DepthClipConfig {
    /// The paper's settings on OpenAI's RN50.
    pub fn paper() -> Self {
        Self::new(DenseClipConfig::rn50())
    }

    /// Number of depth bins.
    pub fn num_bins(&self) -> usize {
        self.depth_classes.len()
    }

    /// Every prompt, ordered as the official `zeroshot_classifier` encodes them: distance word
    /// major, then object word, then template.
    pub fn prompts(&self) -> ClipResult<Vec<String>> {
        let mut prompts = Vec::with_capacity(self.depth_classes.len() * self.obj_classes.len() * self.templates.len());
        for depth in &self.depth_classes {
            for object in &self.obj_classes {
                for template in &self.templates {
                    prompts.push(format_template(template, object, depth)?);
                }
            }
        }
        Ok(prompts)
    }

    /// Checks the architecture and the hyperparameters; `origin` names the error.
    pub fn validate(&self, origin: &str) -> ClipResult<()> {
        self.clip.validate(origin)?;
        let err = |message: String| Err(ClipError::config(origin, message));
        if self.depth_classes.is_empty() {
            return err("depth_classes is empty".into());
        }
        if self.bins.len() != self.depth_classes.len() {
            return err(format!(
                "{} bins for {} depth classes: there must be one bin depth per distance word",
                self.bins.len(),
                self.depth_classes.len()
            ));
        }
        if self.obj_classes.len() != 1 {
            return err(format!(
                "{} object words: DepthCLIP uses exactly one (the official code reshapes the logits to one map per \
                 distance word)",
                self.obj_classes.len()
            ));
        }
        if self.templates.is_empty() {
            return err("templates is empty".into());
        }
        for template in &self.templates {
            format_template(template, "object", "far").map_err(|e| ClipError::config(origin, e.to_string()))?;
        }
        if self.temperature.is_nan() || self.temperature <= 0.0 {
            return err(format!("temperature must be positive, not {}", self.temperature));
        }
        let halved = self.clip.feature_width() / 2;
        if halved != self.clip.embed_dim {
            return err(format!(
                "layer4 has {} channels; halving them (the official nearest interpolation) gives {halved}, \
                 which must equal the text embedding size {}",
                self.clip.feature_width(),
                self.clip.embed_dim
            ));
        }
        if let Some([h, w]) = self.output_size
            && (h == 0 || w == 0)
        {
            return err("output_size must be positive".into());
        }
        Ok(())
    }
}

/// Python's `template.format(object, distance)` for templates with two automatic (`{}`) or
/// explicit (`{0}`, `{1}`) fields and `{{`/`}}` escapes.
pub fn format_template(template: &str, object: &str, distance: &str) -> ClipResult<String> {
    let args = [object, distance];
    let bad = |why: &str| ClipError::config("depthclip templates", format!("template '{template}': {why}"));
    let mut out = String::with_capacity(template.len() + object.len() + distance.len());
    let mut next = 0;
    let mut chars = template.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                out.push('{');
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                out.push('}');
            }
            '{' => {
                let mut field = String::new();
                loop {
                    match chars.next() {
                        Some('}') => break,
                        Some(c) => field.push(c),
                        None => return Err(bad("unclosed '{'")),
                    }
                }
                let index = if field.is_empty() {
                    next += 1;
                    next - 1
                } else {
                    field.parse::<usize>().map_err(|_| bad("only {}, {0} and {1} fields are supported"))?
                };
                out.push_str(args.get(index).ok_or_else(|| bad("more than two fields"))?);
            }
            '}' => return Err(bad("single '}'")),
            c => out.push(c),
        }
    }
    Ok(out)
}

//! DepthCLIP (Zhang et al., 2022, "Can Language Understand Depth?"): zero-shot monocular depth
//! from a frozen CLIP, ported from the official `DepthCLIP_code/monoclip.py`
//! (Adonis-galaxy/DepthCLIP).
//!
//! Each position of the dense ResNet `layer4` map is compared with the text features of seven
//! distance prompts ("This object is giant", ..., "This object is unseen"); a softmax over the
//! prompts weighs each prompt's bin depth, and the weighted sum is the depth there:
//!
//! ```text
//! f_ij  = even_channels(layer4_ij / |layer4_ij|)           (C -> C/2, not renormalized)
//! l_ijk = 100 * <f_ij, t_k> / temperature                   (t_k: prompt k's text feature)
//! D_ij  = sum_k softmax_k(l_ij)_k * bin_k
//! ```
//!
//! - [`config`] holds [`DepthClipConfig`] (prompts, bins, temperature; the paper's values by
//!   default) and [`DenseClipConfig`] (the CLIP architecture).
//! - [`model`] holds [`DenseClip`] and the predictor [`DepthClip`], every step a public function.
//! - [`official`] loads and writes the official weights (an OpenAI CLIP state dict).
//! - [`metrics`] computes AbsRel, SqRel, RMSE, log RMSE, log10 and the delta thresholds, with
//!   crops and depth caps.
//! - [`io`] reads RGB images and 16-bit depth PNGs, writes depth and colorized depth PNGs, and
//!   makes the NYU test crop.
//!
//! See `docs/clip-3d.md` (DepthCLIP) for the method, the official quirks reproduced here and the
//! measured parity with the official code.

pub mod config;
pub mod io;
pub mod metrics;
pub mod model;
pub mod objective;
pub mod official;

pub use config::{DenseClipConfig, DepthClipConfig, PAPER_BINS, PAPER_DEPTH_CLASSES, PAPER_TEMPERATURE};
pub use io::{DepthIoError, DepthMap, read_depth_png, write_colorized_depth_png, write_depth_png};
pub use metrics::{DepthMetrics, EvalCrop, EvalOptions, MetricsMean, depth_metrics};
pub use model::{DenseClip, DenseResNet, DepthClip, DepthOutput};
pub use objective::{DepthBatch, DepthClipObjective};
pub use official::{import_official, load_official, official_config, official_layout};

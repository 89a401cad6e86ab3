//! Image-caption data in the webdataset layout (open_clip's LAION-style `.tar` shards, as
//! img2dataset writes them), streamed: members `KEY.jpg` / `KEY.png` / `KEY.webp` with
//! `KEY.txt` and/or `KEY.json` form one sample; shard lists with brace expansion
//! (`shards/{000000..000999}.tar`); several sources, `::`-separated, mixed with weights;
//! shards split across data workers, each with a seeded shuffle buffer; open_clip's resampled
//! mode (shards drawn with replacement, `data.train_num_samples` samples per epoch).
//!
//! The order is a pure function of the seed, the epoch, `data.workers`, the shuffle settings
//! and the shard list: worker `w` reads shards `w, w + W, ...` of the epoch's (seeded) shard
//! order, or its own seeded draws in resampled mode, through its shuffle buffer; the stream
//! takes one sample from each worker in turn. A resumed run regenerates the epoch's stream and
//! passes over (reads without decoding) the samples before its position, so it sees exactly
//! the batches an uninterrupted run would. Decoding and augmentation happen per batch on the
//! data workers (seeded by step and slot, as for tables).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};

use clip_core::ClipTokenizer;
use clip_core::preprocess::{ImageTensorData, TrainTransformConfig, decode_image};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use crate::config::{DataSection, RunContext};
use crate::data::{BatchSource, DataError, load_on_workers, sample_rng};
use crate::pairs::{PairBatch, PairTable, Transform};

/// Extensions of image members (lower case), in order of preference within a sample.
pub const IMAGE_MEMBERS: &[&str] = &["jpg", "jpeg", "png", "webp"];

/// Whether `data.train` names tar shards: every `::`-separated source ends in `.tar`.
pub fn is_shard_spec(train: &Path) -> bool {
    let text = train.to_string_lossy();
    !text.is_empty() && text.split("::").all(|source| source.trim().ends_with(".tar"))
}

/// Expands braces as webdataset and open_clip (`braceexpand`) do: `{000..009}` is a range
/// whose numbers keep the zero padding of its bounds, `{a,b}` a list; several braces give
/// every combination, in order; braces nest.
pub fn expand_braces(pattern: &str) -> Result<Vec<String>, String> {
    let Some(open) = pattern.find('{') else {
        if pattern.contains('}') {
            return Err(format!("{pattern:?}: a `}}` without its `{{`"));
        }
        return Ok(vec![pattern.to_string()]);
    };
    let mut depth = 0;
    let mut close = None;
    for (i, c) in pattern[open..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    close = Some(open + i);
                    break;
                }
            }
            _ => {}
        }
    }
    let close = close.ok_or_else(|| format!("{pattern:?}: a `{{` without its `}}`"))?;
    let (prefix, inner, rest) = (&pattern[..open], &pattern[open + 1..close], &pattern[close + 1..]);
    if prefix.contains('}') {
        return Err(format!("{pattern:?}: a `}}` without its `{{`"));
    }
    let alternatives: Vec<String> = match top_level_split(inner) {
        parts if parts.len() > 1 => parts.into_iter().map(str::to_string).collect(),
        _ => match inner.split_once("..") {
            Some((from, to)) => range(from, to).map_err(|e| format!("{pattern:?}: {e}"))?,
            None => vec![format!("{{{inner}}}")],
        },
    };
    let tails = expand_braces(rest)?;
    let mut expanded = Vec::new();
    for alternative in alternatives {
        for head in expand_braces(&alternative)? {
            for tail in &tails {
                expanded.push(format!("{prefix}{head}{tail}"));
            }
        }
    }
    Ok(expanded)
}

/// `inner` split at its commas outside nested braces.
fn top_level_split(inner: &str) -> Vec<&str> {
    let (mut parts, mut depth, mut start) = (Vec::new(), 0, 0);
    for (i, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&inner[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&inner[start..]);
    parts
}

/// The numbers `from..=to` (either direction), zero-padded to the width of a padded bound.
fn range(from: &str, to: &str) -> Result<Vec<String>, String> {
    let parse = |s: &str| s.parse::<u64>().map_err(|_| format!("{{{from}..{to}}}: {s:?} is not a number"));
    let (a, b) = (parse(from)?, parse(to)?);
    let padded = |s: &str| s.len() > 1 && s.starts_with('0');
    let width = if padded(from) || padded(to) { from.len().max(to.len()) } else { 0 };
    let numbers: Vec<u64> = if a <= b { (a..=b).collect() } else { (b..=a).rev().collect() };
    Ok(numbers.into_iter().map(|n| format!("{n:0width$}")).collect())
}

/// The shards of `data.train`, by source.
#[derive(Debug, Clone)]
pub struct ShardSpec {
    /// Each source's shard files, in the order the pattern lists them.
    pub sources: Vec<Vec<PathBuf>>,
}

impl ShardSpec {
    /// Expands `data.train` (`a/{000..009}.tar::b/{00..04}.tar`); an error names the pattern.
    pub fn parse(train: &Path) -> Result<Self, String> {
        let text = train.to_string_lossy();
        let sources = text
            .split("::")
            .map(|source| Ok(expand_braces(source.trim())?.into_iter().map(PathBuf::from).collect()))
            .collect::<Result<Vec<Vec<PathBuf>>, String>>()
            .map_err(|e| format!("data.train = {text:?}: {e}"))?;
        Ok(Self { sources })
    }

    /// Checks what a config can be checked for: shards exist, weights fit the sources.
    pub fn validate(data: &DataSection) -> Result<Self, String> {
        let spec = Self::parse(&data.train)?;
        if let Some(missing) = spec.sources.iter().flatten().find(|p| !p.is_file()) {
            return Err(format!("data.train: shard {} does not exist", missing.display()));
        }
        if !data.train_weights.is_empty() {
            if !data.resampled {
                return Err("data.train_weights needs data.resampled = true (sources are mixed by drawing shards, as open_clip's upsampling factors)".into());
            }
            if data.train_weights.len() != spec.sources.len() {
                return Err(format!(
                    "data.train_weights has {} weights for the {} `::`-separated sources of data.train",
                    data.train_weights.len(),
                    spec.sources.len()
                ));
            }
            if data.train_weights.iter().any(|w| !(w.is_finite() && *w >= 0.0)) || data.train_weights.iter().all(|w| *w == 0.0) {
                return Err(format!("data.train_weights = {:?}: weights are non-negative, and one at least positive", data.train_weights));
            }
        }
        if data.resampled && data.train_num_samples == 0 {
            return Err("data.resampled = true needs data.train_num_samples (samples per epoch), as open_clip's --train-num-samples".into());
        }
        if data.val_fraction > 0.0 {
            return Err("data.val_fraction splits a table: with shards in data.train, give data.val".into());
        }
        Ok(spec)
    }

    fn all(&self) -> Vec<PathBuf> {
        self.sources.iter().flatten().cloned().collect()
    }
}

/// One sample of a shard as stored: its members' bytes, not decoded.
#[derive(Debug, Clone)]
pub struct RawSample {
    /// The shard.
    pub shard: Arc<PathBuf>,
    /// The webdataset key (member path up to the first dot of its file name).
    pub key: String,
    /// The image member's name and bytes.
    pub image: Option<(String, Vec<u8>)>,
    /// `KEY.txt`.
    pub text: Option<Vec<u8>>,
    /// `KEY.json`.
    pub json: Option<Vec<u8>>,
    /// What made the shard unreadable from here on (a truncated or corrupt archive).
    pub broken: Option<String>,
}

impl RawSample {
    fn error(&self, message: impl std::fmt::Display) -> DataError {
        DataError { path: self.shard.to_path_buf(), line: None, message: format!("sample {:?}: {message}", self.key) }
    }

    /// The caption: `KEY.txt`, or the `caption_key` (then `caption`) string of `KEY.json`.
    pub fn caption(&self, caption_key: &str) -> Result<String, DataError> {
        if let Some(text) = &self.text {
            let text = std::str::from_utf8(text).map_err(|e| self.error(format!("{}.txt is not UTF-8: {e}", self.key)))?;
            return Ok(text.trim().to_string());
        }
        let Some(json) = &self.json else { return Err(self.error("no caption member (KEY.txt or KEY.json)")) };
        let value: serde_json::Value = serde_json::from_slice(json).map_err(|e| self.error(format!("{}.json: {e}", self.key)))?;
        [caption_key, "caption"]
            .iter()
            .find_map(|k| value.get(k).and_then(|v| v.as_str()))
            .map(|s| s.trim().to_string())
            .ok_or_else(|| self.error(format!("{}.json has no string {caption_key:?} or \"caption\"", self.key)))
    }
}

/// Splits a member name into its webdataset key and extension (after the first dot of the
/// file name): `a/b/0001.seg.png` is key `a/b/0001`, extension `seg.png`.
pub fn split_member(name: &str) -> Option<(&str, &str)> {
    let start = name.rfind('/').map_or(0, |i| i + 1);
    let dot = name[start..].find('.')? + start;
    Some((&name[..dot], &name[dot + 1..]))
}

/// Reads `shard` front to back, giving each sample to `emit` (which returns false to stop);
/// returns false when `emit` did. An unreadable archive ends the shard with one sample
/// marked broken.
pub fn read_shard(shard: &Arc<PathBuf>, emit: &mut dyn FnMut(RawSample) -> bool) -> bool {
    let new_sample = |key: &str| RawSample { shard: shard.clone(), key: key.to_string(), image: None, text: None, json: None, broken: None };
    let broken = |key: &str, message: String| RawSample { broken: Some(message), ..new_sample(key) };
    let file = match std::fs::File::open(shard.as_path()) {
        Ok(file) => file,
        Err(e) => return emit(broken("", format!("cannot open the shard: {e}"))),
    };
    let mut archive = tar::Archive::new(std::io::BufReader::with_capacity(1 << 20, file));
    let entries = match archive.entries() {
        Ok(entries) => entries,
        Err(e) => return emit(broken("", format!("not a tar archive: {e}"))),
    };
    let mut current: Option<RawSample> = None;
    for entry in entries {
        let after = current.as_ref().map(|s| s.key.clone()).unwrap_or_default();
        let mut entry = match entry {
            Ok(entry) => entry,
            Err(e) => {
                let message = format!("corrupt archive after sample {after:?}; the rest of the shard is lost: {e}");
                return current.take().is_none_or(&mut *emit) && emit(broken(&after, message));
            }
        };
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let Some((key, extension)) = split_member(&name) else { continue };
        let extension = extension.to_ascii_lowercase();
        let mut bytes = Vec::with_capacity(entry.size() as usize);
        if let Err(e) = entry.read_to_end(&mut bytes) {
            let message = format!("member {name} cannot be read; the rest of the shard is lost: {e}");
            return current.take().filter(|s| s.key != key).is_none_or(&mut *emit) && emit(broken(key, message));
        }
        if current.as_ref().is_some_and(|s| s.key != key) {
            let done = current.take().expect("a sample is being read");
            if !emit(done) {
                return false;
            }
        }
        let sample = current.get_or_insert_with(|| new_sample(key));
        if IMAGE_MEMBERS.contains(&extension.as_str()) {
            sample.image.get_or_insert((name, bytes));
        } else if extension == "txt" {
            sample.text = Some(bytes);
        } else if extension == "json" {
            sample.json = Some(bytes);
        }
    }
    current.is_none_or(emit)
}

/// Samples (distinct keys) in `shard`: its entry in `sizes.json` next to it (open_clip's
/// convention, written by `clipforge shards`), else counted from the tar headers.
pub fn count_samples(shard: &Path) -> Result<usize, DataError> {
    let error = |message: String| DataError { path: shard.to_path_buf(), line: None, message };
    let sizes = shard.parent().unwrap_or(Path::new(".")).join("sizes.json");
    if let Ok(text) = std::fs::read_to_string(&sizes) {
        let table: BTreeMap<String, serde_json::Value> = serde_json::from_str(&text)
            .map_err(|e| DataError { path: sizes.clone(), line: None, message: e.to_string() })?;
        let name = shard.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if let Some(count) = table.get(&name).and_then(|v| v.as_u64()) {
            return Ok(count as usize);
        }
    }
    let file = std::fs::File::open(shard).map_err(|e| error(format!("cannot open the shard: {e}")))?;
    let mut archive = tar::Archive::new(file);
    let entries = archive.entries_with_seek().map_err(|e| error(format!("not a tar archive: {e}")))?;
    let (mut count, mut last) = (0, String::new());
    for entry in entries {
        let entry = entry.map_err(|e| error(format!("corrupt archive after sample {last:?}: {e}")))?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        if let Some((key, _)) = split_member(&name)
            && key != last
        {
            count += 1;
            last = key.to_string();
        }
    }
    Ok(count)
}

/// A seeded generator for `(seed, epoch, stream)`, independent across its arguments.
fn stream_rng(seed: u64, epoch: usize, stream: u64) -> StdRng {
    let mut x = seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ stream.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    StdRng::seed_from_u64(x ^ (x >> 31))
}

/// How a run streams its shards.
#[derive(Debug, Clone)]
pub struct StreamConfig {
    /// Each source's shards.
    pub sources: Vec<Vec<PathBuf>>,
    /// Per-source weights of resampled mode (empty: every shard equally likely).
    pub weights: Vec<f64>,
    /// Draw shards with replacement (open_clip's `--dataset-resampled`).
    pub resampled: bool,
    /// Shuffle the shard order per epoch and pass samples through the shuffle buffer.
    pub shuffle: bool,
    /// Samples each worker's shuffle buffer holds.
    pub shuffle_buffer: usize,
    /// Data workers; shards are split across them.
    pub workers: usize,
    /// The run's seed.
    pub seed: u64,
    /// Samples in one epoch.
    pub epoch_samples: usize,
}

impl StreamConfig {
    /// The stream `data` describes; counts the samples of every shard unless
    /// `data.train_num_samples` gives the epoch's size.
    pub fn new(data: &DataSection, seed: u64) -> Result<Self, DataError> {
        let spec = ShardSpec::validate(data).map_err(|message| DataError { path: data.train.clone(), line: None, message })?;
        let epoch_samples = if data.train_num_samples > 0 {
            data.train_num_samples
        } else {
            spec.all().iter().map(|s| count_samples(s)).sum::<Result<usize, _>>()?
        };
        Ok(Self {
            sources: spec.sources,
            weights: data.train_weights.clone(),
            resampled: data.resampled,
            shuffle: data.shuffle,
            shuffle_buffer: data.shuffle_buffer,
            workers: data.workers.max(1),
            seed,
            epoch_samples,
        })
    }

    /// The shards worker `worker` reads in `epoch`, in order (endless when resampled).
    fn worker_shards(&self, epoch: usize, worker: usize) -> Box<dyn Iterator<Item = PathBuf> + Send> {
        let all: Vec<PathBuf> = self.sources.iter().flatten().cloned().collect();
        if self.resampled {
            let mut rng = stream_rng(self.seed, epoch, 1000 + worker as u64);
            let sources = self.sources.clone();
            let weights = self.weights.clone();
            return Box::new(std::iter::from_fn(move || {
                if weights.is_empty() {
                    return Some(all[rng.random_range(0..all.len())].clone());
                }
                let mut pick = rng.random::<f64>() * weights.iter().sum::<f64>();
                let source = weights
                    .iter()
                    .position(|w| {
                        pick -= w;
                        pick < 0.0
                    })
                    .unwrap_or(weights.len() - 1);
                let shards = &sources[source];
                Some(shards[rng.random_range(0..shards.len())].clone())
            }));
        }
        let mut order = all;
        if self.shuffle {
            order.shuffle(&mut stream_rng(self.seed, epoch, 0));
        }
        let workers = self.workers;
        Box::new(order.into_iter().skip(worker).step_by(workers))
    }

    /// Reads worker `worker`'s shards of `epoch` through its shuffle buffer into `sender`.
    fn run_worker(&self, epoch: usize, worker: usize, sender: SyncSender<RawSample>) {
        let mut rng = stream_rng(self.seed, epoch, 2000 + worker as u64);
        let capacity = if self.shuffle { self.shuffle_buffer } else { 0 };
        let mut buffer: Vec<RawSample> = Vec::with_capacity(capacity);
        let mut emit = |sample: RawSample| -> bool {
            if capacity <= 1 {
                return sender.send(sample).is_ok();
            }
            buffer.push(sample);
            if buffer.len() < capacity {
                return true;
            }
            let pick = rng.random_range(0..buffer.len());
            sender.send(buffer.swap_remove(pick)).is_ok()
        };
        for shard in self.worker_shards(epoch, worker) {
            let shard = Arc::new(shard);
            let mut any = false;
            let going = read_shard(&shard, &mut |sample| {
                any = true;
                emit(sample)
            });
            if !going {
                return;
            }
            if !any && self.resampled {
                // Resampling an empty shard forever would never yield a sample.
                let message = "holds no samples".to_string();
                let sample = RawSample { shard, key: String::new(), image: None, text: None, json: None, broken: Some(message) };
                if !emit(sample) {
                    return;
                }
            }
        }
        while !buffer.is_empty() {
            let pick = rng.random_range(0..buffer.len());
            if sender.send(buffer.swap_remove(pick)).is_err() {
                return;
            }
        }
    }
}

/// The samples of one epoch, in order, read on the worker threads.
struct Stream {
    epoch: usize,
    /// Samples taken so far this epoch.
    position: usize,
    workers: Vec<Receiver<RawSample>>,
    /// Workers with samples left, and whose turn it is.
    active: Vec<usize>,
    turn: usize,
}

impl Stream {
    fn start(config: &Arc<StreamConfig>, epoch: usize) -> Self {
        let workers = (0..config.workers)
            .map(|worker| {
                let (sender, receiver) = sync_channel(64);
                let config = config.clone();
                std::thread::spawn(move || config.run_worker(epoch, worker, sender));
                receiver
            })
            .collect();
        Self { epoch, position: 0, workers, active: (0..config.workers).collect(), turn: 0 }
    }

    /// The next sample: one from each worker in turn, until all are done.
    fn next(&mut self) -> Option<RawSample> {
        while !self.active.is_empty() {
            self.turn %= self.active.len();
            match self.workers[self.active[self.turn]].recv() {
                Ok(sample) => {
                    self.turn += 1;
                    self.position += 1;
                    return Some(sample);
                }
                Err(_) => {
                    self.active.remove(self.turn);
                }
            }
        }
        None
    }
}

/// Training batches streamed from tar shards: a [`BatchSource`] whose "rows" are positions in
/// the epoch's stream (the trainer visits them in order; the stream shuffles itself).
#[derive(Clone)]
pub struct ShardBatcher {
    config: Arc<StreamConfig>,
    stream: Arc<Mutex<Option<Stream>>>,
    /// Names the data in errors.
    train: PathBuf,
    tokenizer: ClipTokenizer,
    transform: Transform,
    caption_key: String,
    skip_bad_samples: bool,
}

impl ShardBatcher {
    /// A batcher over the shards of `run.data.train` with the training transform.
    pub fn for_training(run: &RunContext, tokenizer: &ClipTokenizer, image_size: usize) -> anyhow::Result<Self> {
        let transform = TrainTransformConfig::new().with_image_size(image_size).with_scale(run.data.crop_scale).init()?;
        let config = StreamConfig::new(&run.data, run.seed)?;
        Ok(Self::new(config, run.data.train.clone(), tokenizer.clone(), Transform::Train(transform), &run.data))
    }

    /// A batcher streaming as `config` says.
    pub fn new(config: StreamConfig, train: PathBuf, tokenizer: ClipTokenizer, transform: Transform, data: &DataSection) -> Self {
        Self {
            config: Arc::new(config),
            stream: Arc::new(Mutex::new(None)),
            train,
            tokenizer,
            transform,
            caption_key: data.caption_column.clone(),
            skip_bad_samples: data.skip_bad_samples,
        }
    }

    /// The training data, as `data.train` names it.
    pub fn train(&self) -> &Path {
        &self.train
    }

    /// The caption tokenizer.
    pub fn tokenizer(&self) -> &ClipTokenizer {
        &self.tokenizer
    }

    /// The image transform.
    pub fn transform(&self) -> &Transform {
        &self.transform
    }

    /// Samples in one epoch.
    pub fn rows(&self) -> usize {
        self.config.epoch_samples
    }

    /// Loads the batch at the consecutive stream positions `indices` of batch `step` (see
    /// the [`BatchSource`] implementation).
    pub fn batch(&self, indices: &[usize], step: usize) -> Result<PairBatch, DataError> {
        BatchSource::batch(self, indices, step)
    }

    /// The raw samples at positions `start..start + count` of `epoch`'s stream.
    pub fn raw(&self, epoch: usize, start: usize, count: usize) -> Result<Vec<RawSample>, DataError> {
        let mut guard = self.stream.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if guard.as_ref().is_none_or(|s| s.epoch != epoch || s.position > start) {
            *guard = Some(Stream::start(&self.config, epoch));
        }
        let stream = guard.as_mut().expect("the stream was just started");
        let ran_out = |position: usize| DataError {
            path: self.train.clone(),
            line: None,
            message: format!(
                "the shards ran out after {position} samples of epoch {epoch}, of the {} expected (data.train_num_samples or sizes.json)",
                self.config.epoch_samples
            ),
        };
        // A shard that held fewer samples than counted (a corrupt archive) shortens the
        // stream: with data.skip_bad_samples, the missing positions are skipped samples.
        let next = |stream: &mut Stream| match stream.next() {
            Some(sample) => Ok(sample),
            None if self.skip_bad_samples => {
                stream.position += 1;
                Ok(RawSample {
                    shard: Arc::new(self.train.clone()),
                    key: String::new(),
                    image: None,
                    text: None,
                    json: None,
                    broken: Some(ran_out(stream.position - 1).message),
                })
            }
            None => Err(ran_out(stream.position)),
        };
        while stream.position < start {
            next(stream)?;
        }
        (0..count).map(|_| next(stream)).collect()
    }

    fn decode(&self, sample: &RawSample, step: usize, slot: usize) -> Result<(ImageTensorData, Vec<i64>), DataError> {
        if let Some(message) = &sample.broken {
            return Err(sample.error(message));
        }
        let Some((member, bytes)) = &sample.image else {
            return Err(sample.error(format!("no image member ({})", IMAGE_MEMBERS.join(", "))));
        };
        let caption = sample.caption(&self.caption_key)?;
        let image = decode_image(bytes, Path::new(member)).map_err(|e| sample.error(format!("member {member}: {e}")))?;
        let pixels = match &self.transform {
            Transform::Eval(t) => t.apply(&image),
            Transform::Train(t) => t.apply(&image, &mut sample_rng(self.config.seed, step, slot)),
        }
        .map_err(|e| sample.error(format!("member {member}: {e}")))?;
        let tokens = self.tokenizer.tokenize(&caption).map_err(|e| sample.error(e))?;
        Ok((pixels, tokens))
    }
}

impl BatchSource for ShardBatcher {
    type Batch = PairBatch;

    fn rows(&self) -> usize {
        self.config.epoch_samples
    }

    fn shuffled(&self) -> bool {
        false
    }

    /// `indices` are consecutive positions of the epoch's stream; the epoch is the one of
    /// batch `step` (the trainer's schedule has `rows / batch` batches per epoch).
    fn batch(&self, indices: &[usize], step: usize) -> Result<PairBatch, DataError> {
        let Some(&start) = indices.first() else {
            return Ok(PairBatch { step, rows: vec![], images: vec![], tokens: vec![], skipped: vec![] });
        };
        let per_epoch = (self.rows() / indices.len()).max(1);
        let raw = self.raw(step / per_epoch, start, indices.len())?;
        let loaded = load_on_workers(indices, self.config.workers, |_, slot| self.decode(&raw[slot], step, slot));
        let mut batch = PairBatch {
            step,
            rows: Vec::with_capacity(indices.len()),
            images: Vec::with_capacity(indices.len()),
            tokens: Vec::with_capacity(indices.len() * self.tokenizer.context_length()),
            skipped: Vec::new(),
        };
        for (&row, sample) in indices.iter().zip(loaded) {
            match sample {
                Ok((image, tokens)) => {
                    batch.rows.push(row);
                    batch.images.push(image);
                    batch.tokens.extend(tokens);
                }
                Err(error) if self.skip_bad_samples => batch.skipped.push(error),
                Err(error) => return Err(error),
            }
        }
        Ok(batch)
    }
}

/// Writes `table` as shards of `per_shard` samples under `output` (`000000.tar`, ...), each
/// sample `KEY.EXT` (the image file's bytes), `KEY.txt` (the caption) and `KEY.json`
/// (`caption`, `label` where the table has one, and the source `image` path), keys the
/// zero-padded row number; `sizes.json` records each shard's samples. Returns the shard
/// files, in order.
pub fn write_shards(table: &PairTable, output: &Path, per_shard: usize) -> anyhow::Result<Vec<PathBuf>> {
    use anyhow::Context;
    anyhow::ensure!(per_shard > 0, "--samples-per-shard must be at least 1");
    std::fs::create_dir_all(output).with_context(|| format!("creating {}", output.display()))?;
    let mut shards = Vec::new();
    let mut sizes = BTreeMap::new();
    for (index, chunk) in table.pairs.chunks(per_shard).enumerate() {
        let path = output.join(format!("{index:06}.tar"));
        let file = std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        let mut builder = tar::Builder::new(std::io::BufWriter::new(file));
        for (offset, pair) in chunk.iter().enumerate() {
            let row = index * per_shard + offset;
            let key = format!("{row:09}");
            let line = if pair.line > 0 { format!(":{}", pair.line) } else { String::new() };
            let bytes = std::fs::read(&pair.image).with_context(|| format!("{}{line}: reading {}", table.path.display(), pair.image.display()))?;
            let extension = pair
                .image
                .extension()
                .and_then(|e| e.to_str())
                .map(str::to_ascii_lowercase)
                .filter(|e| IMAGE_MEMBERS.contains(&e.as_str()))
                .with_context(|| {
                    format!("{}{line}: {}: shards hold {} images", table.path.display(), pair.image.display(), IMAGE_MEMBERS.join(", "))
                })?;
            let mut json = serde_json::json!({ "caption": pair.caption, "image": pair.image.to_string_lossy() });
            if let Some(label) = &pair.label {
                json["label"] = serde_json::json!(label);
            }
            let members = [
                (format!("{key}.{extension}"), bytes),
                (format!("{key}.txt"), pair.caption.clone().into_bytes()),
                (format!("{key}.json"), serde_json::to_vec(&json)?),
            ];
            for (name, data) in members {
                let mut header = tar::Header::new_ustar();
                header.set_size(data.len() as u64);
                header.set_mode(0o644);
                header.set_mtime(0);
                header.set_entry_type(tar::EntryType::Regular);
                builder.append_data(&mut header, &name, data.as_slice()).with_context(|| format!("writing {}", path.display()))?;
            }
        }
        builder.into_inner().and_then(|mut w| std::io::Write::flush(&mut w)).with_context(|| format!("writing {}", path.display()))?;
        sizes.insert(format!("{index:06}.tar"), chunk.len());
        shards.push(path);
    }
    let sizes_path = output.join("sizes.json");
    std::fs::write(&sizes_path, serde_json::to_string_pretty(&sizes)?).with_context(|| format!("writing {}", sizes_path.display()))?;
    Ok(shards)
}

/// The brace pattern naming `count` shards written by [`write_shards`] under `output`.
pub fn shard_pattern(output: &Path, count: usize) -> String {
    let last = count.saturating_sub(1);
    if count == 1 {
        return output.join("000000.tar").to_string_lossy().into_owned();
    }
    format!("{}/{{000000..{last:06}}}.tar", output.to_string_lossy().trim_end_matches('/'))
}


#[cfg(test)]
mod tests {
    use super::*;
    use crate::pairs::Pair;
    use clip_core::preprocess::EvalTransformConfig;

    #[test]
    fn braces_expand_ranges_with_their_padding_lists_and_products() {
        assert_eq!(expand_braces("s/{000000..000003}.tar").unwrap(), ["s/000000.tar", "s/000001.tar", "s/000002.tar", "s/000003.tar"]);
        assert_eq!(expand_braces("{8..11}").unwrap(), ["8", "9", "10", "11"]);
        assert_eq!(expand_braces("{a,b}/{0..1}.tar").unwrap(), ["a/0.tar", "a/1.tar", "b/0.tar", "b/1.tar"]);
        assert_eq!(expand_braces("{x,{1..2}}").unwrap(), ["x", "1", "2"]);
        assert_eq!(expand_braces("plain.tar").unwrap(), ["plain.tar"]);
        assert!(expand_braces("s/{000..003.tar").unwrap_err().contains("without its `}`"));
        assert!(expand_braces("s/{a..3}.tar").unwrap_err().contains("\"a\" is not a number"));
        let spec = ShardSpec::parse(Path::new("a/{0..2}.tar::b/{00..01}.tar")).unwrap();
        assert_eq!(spec.sources.iter().map(Vec::len).collect::<Vec<_>>(), [3, 2]);
        assert_eq!(spec.sources[1][1], PathBuf::from("b/01.tar"));
        assert!(is_shard_spec(Path::new("a/{0..2}.tar::b.tar")) && !is_shard_spec(Path::new("a.tsv")));
        assert_eq!(split_member("d/0001.seg.png"), Some(("d/0001", "seg.png")));
    }

    /// A fresh scratch directory, removed when dropped.
    fn scratch(name: &str) -> tempfile::TempDir {
        tempfile::Builder::new().prefix(&format!("clip-task-shards-{name}-")).tempdir().unwrap()
    }

    /// `count` digits of the shipped dataset, captions naming their row.
    fn digits(count: usize) -> PairTable {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../datasets/digits/images");
        let mut images: Vec<PathBuf> = std::fs::read_dir(&root).unwrap().map(|e| e.unwrap().path()).collect();
        images.sort();
        let pairs = images
            .into_iter()
            .take(count)
            .enumerate()
            .map(|(i, image)| Pair { image, caption: format!("sample {i}"), label: None, line: i + 2 })
            .collect();
        PairTable { path: "digits.tsv".into(), pairs }
    }

    fn data(train: String, workers: usize) -> DataSection {
        DataSection { workers, shuffle_buffer: 4, ..DataSection::new(train) }
    }

    fn batcher(data: &DataSection) -> ShardBatcher {
        let config = StreamConfig::new(data, 7).unwrap();
        let transform = Transform::Eval(EvalTransformConfig::new().with_image_size(8).init());
        ShardBatcher::new(config, data.train.clone(), ClipTokenizer::new(), transform, data)
    }

    /// The row numbers (from the keys) of an epoch's first `count` samples.
    fn keys(batcher: &ShardBatcher, epoch: usize, start: usize, count: usize) -> Vec<usize> {
        batcher.raw(epoch, start, count).unwrap().iter().map(|s| s.key.parse().unwrap()).collect()
    }

    #[test]
    fn shards_round_trip_and_stream_in_a_seeded_resumable_order() {
        let tmp = scratch("stream");
        let dir = tmp.path();
        let shards = write_shards(&digits(20), dir, 6).unwrap();
        assert_eq!(shards.len(), 4);
        let pattern = shard_pattern(dir, shards.len());
        assert!(pattern.ends_with("{000000..000003}.tar"), "{pattern}");
        let mut samples = Vec::new();
        read_shard(&Arc::new(shards[0].clone()), &mut |s| {
            samples.push(s);
            true
        });
        assert_eq!(samples.len(), 6);
        assert_eq!(samples[1].key, "000000001");
        assert_eq!(samples[1].caption("title").unwrap(), "sample 1");
        assert_eq!(samples[1].image.as_ref().unwrap().1, std::fs::read(&digits(2).pairs[1].image).unwrap());
        // sizes.json, else the tar headers.
        assert_eq!(count_samples(&shards[3]).unwrap(), 2);
        std::fs::remove_file(dir.join("sizes.json")).unwrap();
        assert_eq!(count_samples(&shards[3]).unwrap(), 2);
        assert_eq!(count_samples(&shards[0]).unwrap(), 6);

        // Unshuffled, one worker: file order.
        let ordered = batcher(&DataSection { shuffle: false, ..data(pattern.clone(), 1) });
        assert_eq!(ordered.rows(), 20);
        assert_eq!(keys(&ordered, 0, 0, 20), (0..20).collect::<Vec<_>>());
        // Unshuffled, two workers: shards 0 and 2 on one, 1 and 3 on the other, in turn.
        let split = batcher(&DataSection { shuffle: false, ..data(pattern.clone(), 2) });
        assert_eq!(keys(&split, 0, 0, 6), [0, 6, 1, 7, 2, 8]);
        // Worker 1 holds 8 samples, worker 0 twelve: once it runs out, worker 0 goes on alone.
        assert_eq!(keys(&split, 0, 12, 8), [12, 18, 13, 19, 14, 15, 16, 17]);

        // Shuffled: each epoch visits every sample once, in a seeded order that differs per epoch.
        let shuffled = batcher(&data(pattern.clone(), 2));
        let epoch0 = keys(&shuffled, 0, 0, 20);
        let mut sorted = epoch0.clone();
        sorted.sort();
        assert_eq!(sorted, (0..20).collect::<Vec<_>>());
        assert_ne!(epoch0, (0..20).collect::<Vec<_>>());
        let epoch1 = keys(&shuffled, 1, 0, 20);
        assert_ne!(epoch0, epoch1);
        // A fresh batcher (a resumed run) at position 12 sees what the uninterrupted one saw.
        assert_eq!(keys(&batcher(&data(pattern.clone(), 2)), 0, 12, 8), epoch0[12..]);
        assert_eq!(keys(&shuffled, 0, 4, 3), epoch0[4..7], "going back restarts the epoch");

        // Batches decode the images and tokenize the captions.
        let batch = shuffled.batch(&[0, 1, 2, 3], 0).unwrap();
        assert_eq!((batch.rows.len(), batch.images.len(), batch.skipped.len()), (4, 4, 0));
    }

    #[test]
    fn resampled_mode_draws_shards_by_source_weight() {
        let tmp = scratch("resampled");
        let dir = tmp.path();
        write_shards(&digits(12), &dir.join("a"), 3).unwrap();
        let b = digits(12);
        let b = PairTable { pairs: b.pairs[6..].to_vec(), ..b };
        write_shards(&b, &dir.join("b"), 3).unwrap();
        let train = format!("{0}/a/{{000000..000003}}.tar::{0}/b/{{000000..000001}}.tar", dir.display());
        let resampled = |weights: Vec<f64>| DataSection { resampled: true, train_num_samples: 30, train_weights: weights, ..data(train.clone(), 2) };
        assert!(ShardSpec::validate(&DataSection { train_num_samples: 0, ..resampled(vec![]) }).unwrap_err().contains("train_num_samples"));
        assert!(ShardSpec::validate(&resampled(vec![1.0])).unwrap_err().contains("2 `::`-separated sources"));
        assert!(ShardSpec::validate(&DataSection { resampled: false, ..resampled(vec![1.0, 1.0]) }).unwrap_err().contains("data.resampled"));
        let from_b = |weights: Vec<f64>| {
            let source = batcher(&resampled(weights));
            assert_eq!(source.rows(), 30);
            let raw = source.raw(0, 0, 30).unwrap();
            raw.iter().filter(|s| s.shard.starts_with(dir.join("b"))).count()
        };
        assert_eq!(from_b(vec![1.0, 0.0]), 0);
        assert_eq!(from_b(vec![0.0, 1.0]), 30);
        let mixed = from_b(vec![1.0, 1.0]);
        assert!((3..=27).contains(&mixed), "{mixed} of 30 from b");
        // With replacement: 30 samples from 4 shards of 3 repeat some.
        let source = batcher(&resampled(vec![]));
        let mut keys: Vec<String> = source.raw(0, 0, 30).unwrap().into_iter().map(|s| format!("{}{}", s.shard.display(), s.key)).collect();
        keys.sort();
        keys.dedup();
        assert!(keys.len() < 30);
        assert_eq!(source.raw(0, 0, 30).unwrap().iter().map(|s| s.key.clone()).collect::<Vec<_>>(),
            batcher(&resampled(vec![])).raw(0, 0, 30).unwrap().iter().map(|s| s.key.clone()).collect::<Vec<_>>(), "seeded");
    }

    #[test]
    fn corrupt_members_name_shard_and_key_and_are_skipped_when_asked() {
        let tmp = scratch("corrupt");
        let dir = tmp.path();
        std::fs::write(dir.join("broken.png"), b"not a png").unwrap();
        let mut table = digits(4);
        table.pairs[2].image = dir.join("broken.png");
        let shards = write_shards(&table, &dir.join("s"), 4).unwrap();
        let train = shards[0].to_string_lossy().into_owned();
        let strict = batcher(&DataSection { shuffle: false, ..data(train.clone(), 1) });
        let error = strict.batch(&[0, 1, 2, 3], 0).unwrap_err().to_string();
        assert!(error.contains("000000.tar") && error.contains("\"000000002\"") && error.contains("000000002.png"), "{error}");
        let skipping = batcher(&DataSection { shuffle: false, skip_bad_samples: true, ..data(train, 1) });
        let batch = skipping.batch(&[0, 1, 2, 3], 0).unwrap();
        assert_eq!(batch.rows, [0, 1, 3]);
        assert_eq!(batch.skipped.len(), 1);
        assert!(batch.skipped[0].to_string().contains("\"000000002\""), "{}", batch.skipped[0]);

        // A truncated shard: the samples before the cut are read, the cut is named.
        let bytes = std::fs::read(&shards[0]).unwrap();
        let cut = dir.join("cut.tar");
        std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
        let mut samples = Vec::new();
        read_shard(&Arc::new(cut.clone()), &mut |s| {
            samples.push(s);
            true
        });
        let broken = samples.last().unwrap().broken.clone().unwrap();
        assert!(samples.len() >= 2 && broken.contains("rest of the shard is lost"), "{broken}");
        assert!(count_samples(&cut).is_err() || count_samples(&cut).unwrap() < 4);
    }
}

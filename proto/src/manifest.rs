//! The job manifest: parse (TOML, unknown keys refused), then validate into a [`Manifest`] whose
//! locations are resolved and whose defaults are filled in.
//!
//! Every problem is reported as a [`FieldError`] naming the field, one line each, and all problems
//! found are reported together rather than one per attempt.

pub use crate::field::{one_line, FieldError};
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use url::Url;

/// The manifest file as written, with defaults filled in. Field names are the public interface.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawManifest {
    /// Job name: letters, digits, `.`, `_`, `-`.
    pub name: String,
    /// Where the inputs are.
    pub input: InputSpec,
    /// The model and how to batch it.
    pub model: ModelSpec,
    /// How an image becomes the model's input tensor.
    #[serde(default)]
    pub preprocess: PreprocessSpec,
    /// How the model's output becomes a row.
    #[serde(default)]
    pub postprocess: PostprocessSpec,
    /// Where the result rows go.
    pub output: OutputSpec,
    /// The lease queue and sharding.
    #[serde(default)]
    pub queue: QueueSpec,
    /// When the job must finish (optional): the fleet is sized for it.
    #[serde(default, skip_serializing_if = "JobSpec::is_unset")]
    pub job: JobSpec,
}

/// `[job]`: when the job must finish, and how many on-demand workers may be added to get there.
/// Without a deadline the fleet scales on queue depth, as it always has.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// The deadline as an RFC 3339 time (`2026-12-01T06:00:00Z`, or with an offset), written as
    /// a TOML date-time or as text.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::rfc3339::text_or_datetime"
    )]
    pub deadline: Option<String>,
    /// The deadline as hours after the job's submission.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_hours: Option<f64>,
    /// Most on-demand workers the fleet may add to meet the deadline (unset: the coordinator's
    /// `--max-on-demand-workers`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_on_demand_workers: Option<u32>,
}

impl JobSpec {
    /// Nothing set (the table is left out of the canonical and stored forms).
    pub fn is_unset(&self) -> bool {
        *self == Self::default()
    }
}

/// When a job must finish, resolved from `[job]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Deadline {
    /// At this time, Unix seconds.
    At(f64),
    /// This many hours after the job's submission.
    AfterSubmission(f64),
}

impl Deadline {
    /// The deadline in Unix seconds, for a job submitted at `submitted_unix_s`.
    pub fn unix_s(self, submitted_unix_s: f64) -> f64 {
        match self {
            Deadline::At(t) => t,
            Deadline::AfterSubmission(h) => submitted_unix_s + h * 3_600.0,
        }
    }
}

/// `queue.shard_size`: a number of inputs, or `"auto"` (chosen at plan time from the
/// interruption rate, `spotbatch_fleet::shard::suggest`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardSize {
    /// This many inputs per shard.
    Items(usize),
    /// Chosen when the job is planned (and kept in the stored manifest, so a job planned again
    /// gets the same shards).
    Auto,
}

impl ShardSize {
    /// The number, when one is set.
    pub fn items(self) -> Option<usize> {
        match self {
            ShardSize::Items(n) => Some(n),
            ShardSize::Auto => None,
        }
    }
}

impl Default for ShardSize {
    fn default() -> Self {
        ShardSize::Items(default_shard_size())
    }
}

impl fmt::Display for ShardSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ShardSize::Items(n) => write!(f, "{n}"),
            ShardSize::Auto => f.write_str("auto"),
        }
    }
}

impl Serialize for ShardSize {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            // A number serialises as it did when the field was a number (the job's digest).
            ShardSize::Items(n) => s.serialize_u64(*n as u64),
            ShardSize::Auto => s.serialize_str("auto"),
        }
    }
}

impl<'de> Deserialize<'de> for ShardSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = ShardSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a whole number of inputs or \"auto\"")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<ShardSize, E> {
                usize::try_from(v)
                    .map(ShardSize::Items)
                    .map_err(|_| E::invalid_value(serde::de::Unexpected::Unsigned(v), &self))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<ShardSize, E> {
                match u64::try_from(v) {
                    Ok(v) => self.visit_u64(v),
                    Err(_) => Err(E::invalid_value(serde::de::Unexpected::Signed(v), &self)),
                }
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ShardSize, E> {
                if v.eq_ignore_ascii_case("auto") {
                    Ok(ShardSize::Auto)
                } else {
                    Err(E::invalid_value(serde::de::Unexpected::Str(v), &self))
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// `[input]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    /// A folder (`./images`, `/data`, `file:///data`) or an object-store prefix (`s3://b/p`).
    pub uri: String,
    /// Keep only keys matching this glob (relative to `uri`), e.g. `**/*.png`.
    #[serde(default)]
    pub glob: Option<String>,
    /// Inputs larger than this many bytes become error rows without being read.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,
    /// `files` (one object per item, the default), or rows of `jsonl`, `csv` or `parquet` files.
    #[serde(default, skip_serializing_if = "is_default")]
    pub format: InputFormat,
    /// JSONL/CSV: the bytes of a file one shard reads (its records are those starting in it).
    #[serde(
        default = "default_split_bytes",
        skip_serializing_if = "is_default_split_bytes"
    )]
    pub split_bytes: u64,
    /// `files`: a text, CSV or Parquet file listing the object keys or URIs to process, instead
    /// of listing `uri`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub list: Option<String>,
    /// Records: a column holding a stable id per row, carried into the output under its name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id_column: Option<String>,
    /// CSV: the field delimiter (one ASCII character).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub csv_delimiter: Option<String>,
    /// CSV: whether quoted fields may hold newlines (RFC 4180, the default). `false` takes every
    /// line as a record, for files with stray quotes.
    #[serde(default = "default_true", skip_serializing_if = "is_true")]
    pub csv_quoted_newlines: bool,
}

/// What the inputs are (`input.format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum InputFormat {
    /// One object per item (images, or one document per file).
    #[default]
    Files,
    /// One JSON object per line.
    Jsonl,
    /// RFC 4180 CSV with a header row.
    Csv,
    /// Apache Parquet.
    Parquet,
}

impl InputFormat {
    /// The record format, for record inputs.
    pub fn records(self) -> Option<crate::split::Format> {
        match self {
            InputFormat::Files => None,
            InputFormat::Jsonl => Some(crate::split::Format::Jsonl),
            InputFormat::Csv => Some(crate::split::Format::Csv),
            InputFormat::Parquet => Some(crate::split::Format::Parquet),
        }
    }
}

/// `[model]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// The `.onnx` file.
    pub uri: String,
    /// The model input to feed; optional when the model has one input.
    #[serde(default)]
    pub input: Option<String>,
    /// The model output to read; optional when the model has one output.
    #[serde(default)]
    pub output: Option<String>,
    /// Items per inference call.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// ONNX Runtime intra-op threads; 0 lets ONNX Runtime choose (one per core).
    #[serde(default)]
    pub intra_op_threads: usize,
    /// How long a partial batch waits for more items before it runs, in milliseconds.
    #[serde(default = "default_max_batch_delay_ms")]
    pub max_batch_delay_ms: u64,
    /// Where the model runs: `auto` (CUDA when a GPU and the CUDA provider are present, else the
    /// CPU with a warning; the default), `cpu`, `cuda` or `cuda:N` (an error without a GPU).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// On CUDA, how cuDNN picks each convolution's algorithm (ONNX Runtime's
    /// `cudnn_conv_algo_search`); unset = `exhaustive`, ONNX Runtime's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cudnn_conv_algo_search: Option<ConvAlgoSearch>,
    /// On CUDA, whether float32 matrix products and convolutions may use TensorFloat-32 (ONNX
    /// Runtime's `use_tf32`); unset = ONNX Runtime's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tf32: Option<bool>,
    /// On CUDA, a cap on ONNX Runtime's GPU memory arena in MiB (ONNX Runtime's `gpu_mem_limit`),
    /// e.g. for several workers on one GPU; unset = no cap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_mem_limit_mb: Option<u64>,
}

/// How cuDNN picks a convolution's algorithm on CUDA (`model.cudnn_conv_algo_search`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ConvAlgoSearch {
    /// Times every algorithm on the first run of each input shape and keeps the fastest: the
    /// fastest steady state, at the price of a slower first batch per shape.
    #[default]
    Exhaustive,
    /// cuDNN's heuristics choose without timing: a fast first batch, usually as fast later.
    Heuristic,
    /// cuDNN's default algorithm, untuned.
    Default,
}

/// Where a model runs, as `model.device` and `--device` spell it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceSpec {
    /// CUDA when a GPU and ONNX Runtime's CUDA provider are present, else the CPU (with a warning).
    #[default]
    Auto,
    /// The CPU.
    Cpu,
    /// GPU `N` through CUDA; an error when there is none.
    Cuda(u32),
}

impl DeviceSpec {
    /// Parses `auto`, `cpu`, `cuda` or `cuda:N`.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" | "gpu" => Ok(Self::Cuda(0)),
            other => match other.strip_prefix("cuda:").map(str::parse::<u32>) {
                Some(Ok(n)) => Ok(Self::Cuda(n)),
                _ => Err(format!(
                    "{:?} is not a device: use auto, cpu, cuda or cuda:N",
                    s.trim()
                )),
            },
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// Where images are resized and normalised (`preprocess.device`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PreprocessDevice {
    /// On the GPU when the model runs on CUDA, else on the CPU.
    #[default]
    Auto,
    /// Always on the CPU (the reference implementation).
    Cpu,
    /// On the GPU; a job whose model runs on the CPU is refused.
    Gpu,
}

/// Colour order of the model's input channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Color {
    /// Red, green, blue.
    #[default]
    Rgb,
    /// Blue, green, red (OpenCV-trained models).
    Bgr,
    /// One luma channel (ITU-R 601-2, as Pillow's `convert("L")`).
    Gray,
}

impl Color {
    /// Channels per pixel.
    pub fn channels(self) -> usize {
        match self {
            Color::Gray => 1,
            Color::Rgb | Color::Bgr => 3,
        }
    }
}

/// Memory layout of one image in the input tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// Channels, then rows, then columns.
    #[default]
    Nchw,
    /// Rows, then columns, then channels.
    Nhwc,
}

/// `[preprocess]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreprocessSpec {
    /// `[width, height]` to resize to (bilinear); absent: images must already have the model's size.
    #[serde(default)]
    pub resize: Option<[u32; 2]>,
    /// Channel order.
    #[serde(default)]
    pub color: Color,
    /// Tensor layout.
    #[serde(default)]
    pub layout: Layout,
    /// Multiplies 0..255 pixel values.
    #[serde(default = "default_scale")]
    pub scale: f32,
    /// Subtracted per channel after scaling; one value per channel (default zeros).
    #[serde(default)]
    pub mean: Option<Vec<f32>>,
    /// Divides per channel after the mean; one value per channel (default ones).
    #[serde(default)]
    pub std: Option<Vec<f32>>,
    /// Images with more pixels than this are refused before decoding (decompression bombs).
    #[serde(default = "default_max_pixels")]
    pub max_pixels: u64,
    /// Where resizing and normalising run: `auto` (the GPU when the model runs on CUDA), `cpu`
    /// or `gpu`. Decoding is always on the CPU.
    #[serde(default, skip_serializing_if = "is_default")]
    pub device: PreprocessDevice,
    /// `image` (the default) or `text` (tokenized with a HuggingFace `tokenizer.json`).
    #[serde(default, skip_serializing_if = "is_default")]
    pub kind: PreKind,
    /// Text: the record column holding the text (default `text`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_column: Option<String>,
    /// Text: the HuggingFace `tokenizer.json`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokenizer: Option<String>,
    /// Text: tokens per item at most (longer texts are truncated; default 128).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_length: Option<usize>,
}

/// What an item is to the model (`preprocess.kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PreKind {
    /// An image: decoded, converted, resized, normalised.
    #[default]
    Image,
    /// A text: tokenized; the model is fed `input_ids`, `attention_mask` and, when it has one,
    /// `token_type_ids`.
    Text,
}

/// How a per-token output becomes one embedding (`postprocess.pooling`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Pooling {
    /// The mean over the item's real tokens (its attention mask).
    #[default]
    Mean,
    /// The first token's vector.
    Cls,
    /// None: the model's output is already one vector per item.
    None,
}

/// The rows' file format (`output.format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OutputFormat {
    /// One JSON object per line.
    #[default]
    Jsonl,
    /// Apache Parquet with typed columns.
    Parquet,
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

impl Default for PreprocessSpec {
    fn default() -> Self {
        Self {
            resize: None,
            color: Color::default(),
            layout: Layout::default(),
            scale: default_scale(),
            mean: None,
            std: None,
            max_pixels: default_max_pixels(),
            device: PreprocessDevice::default(),
            kind: PreKind::default(),
            text_column: None,
            tokenizer: None,
            max_length: None,
        }
    }
}

/// What a row carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PostKind {
    /// `top_k`: the best classes with labels and scores.
    #[default]
    Classify,
    /// `embedding`: the output vector.
    Embedding,
    /// `tensor`: the output tensor, shape and data.
    Raw,
}

/// `[postprocess]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostprocessSpec {
    /// `classify`, `embedding` or `raw`.
    #[serde(default)]
    pub kind: PostKind,
    /// How many classes a classify row keeps.
    #[serde(default = "default_top_k")]
    pub top_k: usize,
    /// A text file, one label per line, line N naming class N.
    #[serde(default)]
    pub labels: Option<String>,
    /// Apply softmax to the scores before top-k.
    #[serde(default)]
    pub softmax: bool,
    /// L2-normalise embeddings.
    #[serde(default)]
    pub normalize: bool,
    /// Text embeddings: `mean` over the real tokens (the default), `cls`, or `none` when the model
    /// gives one vector per item.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pooling: Option<Pooling>,
}

impl Default for PostprocessSpec {
    fn default() -> Self {
        Self {
            kind: PostKind::default(),
            top_k: default_top_k(),
            labels: None,
            softmax: false,
            normalize: false,
            pooling: None,
        }
    }
}

/// `[output]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSpec {
    /// A folder or object-store prefix; rows go to `URI/JOB_ID/part-SHARD.jsonl` (or `.parquet`).
    pub uri: String,
    /// `jsonl` (the default) or `parquet`.
    #[serde(default, skip_serializing_if = "is_default")]
    pub format: OutputFormat,
    /// Records: input columns carried through to each output row.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub columns: Vec<String>,
}

/// `[queue]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueSpec {
    /// `sqlite://PATH` (the default, `sqlite://./queue.db`).
    #[serde(default = "default_queue_uri")]
    pub uri: String,
    /// Inputs per shard (per queue message), or `"auto"`.
    #[serde(default)]
    pub shard_size: ShardSize,
    /// How long a lease hides a shard before it is redelivered, unless extended.
    #[serde(default = "default_visibility_timeout_secs")]
    pub visibility_timeout_secs: u64,
    /// Failed attempts after which a shard goes to the dead-letter queue.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
}

impl Default for QueueSpec {
    fn default() -> Self {
        Self {
            uri: default_queue_uri(),
            shard_size: ShardSize::default(),
            visibility_timeout_secs: default_visibility_timeout_secs(),
            max_attempts: default_max_attempts(),
        }
    }
}

const fn default_max_bytes() -> u64 {
    64 << 20
}
const fn default_split_bytes() -> u64 {
    4 << 20
}
fn is_default_split_bytes(v: &u64) -> bool {
    *v == default_split_bytes()
}
const fn default_true() -> bool {
    true
}
fn is_true(v: &bool) -> bool {
    *v
}
/// Tokens per text item when `preprocess.max_length` is not given.
pub const DEFAULT_MAX_LENGTH: usize = 128;
const fn default_batch_size() -> usize {
    32
}
const fn default_max_batch_delay_ms() -> u64 {
    5
}
const fn default_scale() -> f32 {
    1.0 / 255.0
}
const fn default_max_pixels() -> u64 {
    64 << 20
}
const fn default_top_k() -> usize {
    5
}
fn default_queue_uri() -> String {
    "sqlite://./queue.db".to_string()
}
const fn default_shard_size() -> usize {
    256
}
const fn default_visibility_timeout_secs() -> u64 {
    60
}
const fn default_max_attempts() -> u32 {
    3
}

/// Why a manifest could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The file could not be read.
    #[error("{path}: cannot read: {source}")]
    Read {
        /// The manifest file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The manifest has problems; each is one line naming its field.
    #[error("{}", .errors.iter().map(|e| format!("{}: {e}", .source_name)).collect::<Vec<_>>().join("\n"))]
    Invalid {
        /// The manifest's name for messages (its path, or `<request>`).
        source_name: String,
        /// Every problem found.
        errors: Vec<FieldError>,
    },
}

/// A validated manifest: defaults filled, relative locations resolved against the manifest's
/// folder, mean/std expanded per channel.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    /// As written, with defaults (relative paths kept): what is stored and hashed.
    pub raw: RawManifest,
    /// `name-DIGEST`: stable for the same manifest content wherever it is stored.
    pub job_id: String,
    /// Digest of the canonical manifest (hex SHA-256).
    pub digest: String,
    /// The input prefix (always ends in `/`).
    pub input: Url,
    /// The model file.
    pub model: Url,
    /// The labels file, if any.
    pub labels: Option<Url>,
    /// The tokenizer file (text), if any.
    pub tokenizer: Option<Url>,
    /// The file listing the inputs (`input.list`), if any.
    pub list: Option<Url>,
    /// The output prefix for this job: `output.uri/JOB_ID/`.
    pub output: Url,
    /// The queue URI with relative SQLite paths resolved.
    pub queue_uri: String,
    /// Per-channel mean.
    pub mean: Vec<f32>,
    /// Per-channel std.
    pub std: Vec<f32>,
    /// When the job must finish (`[job]`), if it has a deadline.
    pub deadline: Option<Deadline>,
}

impl Manifest {
    /// Where the manifest asks the model to run (`model.device`; `auto` when absent).
    pub fn device(&self) -> DeviceSpec {
        self.raw
            .model
            .device
            .as_deref()
            .and_then(|d| DeviceSpec::parse(d).ok())
            .unwrap_or_default()
    }

    /// Reads and validates the manifest file at `path`.
    pub fn load(path: &Path) -> Result<Self, ManifestError> {
        let text = std::fs::read_to_string(path).map_err(|source| ManifestError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let abs = std::path::absolute(path).map_err(|source| ManifestError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let base = abs.parent().unwrap_or(Path::new("/")).to_path_buf();
        Self::parse(&text, &base).map_err(|errors| ManifestError::Invalid {
            source_name: path.display().to_string(),
            errors,
        })
    }

    /// Parses and validates manifest text; relative locations resolve against `base_dir`.
    ///
    /// Every problem is reported: the keys that could not be read (unknown, or of the wrong type)
    /// and, beside them, the checks of the values that could (`batch_size = 0` beside an unknown
    /// key in the same table is named too).
    pub fn parse(text: &str, base_dir: &Path) -> Result<Self, Vec<FieldError>> {
        let parsed = parse_lenient(text)?;
        let mut errs = parsed.errors;
        let Some(raw) = parsed.raw else {
            return Err(errs);
        };
        match Self::from_raw(raw, base_dir) {
            Ok(m) if errs.is_empty() => Ok(m),
            Ok(_) => Err(errs),
            Err(checks) if errs.is_empty() => Err(checks),
            Err(checks) => {
                // A check of a key the file does not set (its default) or could not read would
                // only echo a problem named already; so would a check in the same table that
                // depends on a key set aside (`mean` against a `color` that could not be read).
                let named: Vec<String> = errs.iter().map(|e| e.field.clone()).collect();
                let echoes = |e: &FieldError| {
                    named
                        .iter()
                        .any(|n| match (n.rsplit_once('.'), e.field.rsplit_once('.')) {
                            (Some((table, key)), Some((its_table, _))) => {
                                table == its_table && e.message.contains(&format!("{key} ="))
                            }
                            _ => false,
                        })
                };
                errs.extend(checks.into_iter().filter(|e| {
                    parsed.written.contains(&e.field) && !named.contains(&e.field) && !echoes(e)
                }));
                Err(errs)
            }
        }
    }

    /// Validates an already-parsed manifest.
    pub fn from_raw(raw: RawManifest, base_dir: &Path) -> Result<Self, Vec<FieldError>> {
        let mut errs = Vec::new();
        let name_ok = !raw.name.is_empty()
            && raw.name.len() <= 64
            && raw
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            && !raw.name.starts_with('.');
        if !name_ok {
            errs.push(FieldError::new(
                "name",
                format!(
                    "{:?}: use 1-64 letters, digits, '.', '_' or '-', not starting with '.'",
                    raw.name
                ),
            ));
        }
        let input =
            resolve_dir(&raw.input.uri, base_dir).map_err(|m| FieldError::new("input.uri", m));
        if let Some(glob) = &raw.input.glob {
            if let Err(e) = check_glob(glob) {
                errs.push(FieldError::new("input.glob", e));
            }
        }
        if raw.input.max_bytes == 0 {
            errs.push(FieldError::new("input.max_bytes", "must be at least 1"));
        }
        let model = resolve(&raw.model.uri, base_dir).map_err(|m| FieldError::new("model.uri", m));
        if !(1..=65_536).contains(&raw.model.batch_size) {
            errs.push(FieldError::new(
                "model.batch_size",
                format!("{} is out of range 1..=65536", raw.model.batch_size),
            ));
        }
        if raw.model.intra_op_threads > 1024 {
            errs.push(FieldError::new(
                "model.intra_op_threads",
                "at most 1024 (0 = one per core)",
            ));
        }
        if let Some(d) = &raw.model.device {
            if let Err(e) = DeviceSpec::parse(d) {
                errs.push(FieldError::new("model.device", e));
            }
        }
        if let Some(mb) = raw.model.gpu_mem_limit_mb {
            if !(1..=16_777_216).contains(&mb) {
                errs.push(FieldError::new(
                    "model.gpu_mem_limit_mb",
                    format!("{mb} is out of range 1..=16777216 (leave it out for no cap)"),
                ));
            }
        }
        if raw.model.max_batch_delay_ms > 60_000 {
            errs.push(FieldError::new("model.max_batch_delay_ms", "at most 60000"));
        }
        for (field, name) in [
            ("model.input", &raw.model.input),
            ("model.output", &raw.model.output),
        ] {
            if name.as_deref() == Some("") {
                errs.push(FieldError::new(
                    field,
                    "must not be empty (leave it out to use the model's only one)",
                ));
            }
        }
        let p = &raw.preprocess;
        if let Some([w, h]) = p.resize {
            if !(1..=16_384).contains(&w) || !(1..=16_384).contains(&h) {
                errs.push(FieldError::new(
                    "preprocess.resize",
                    format!("[{w}, {h}]: width and height must be 1..=16384"),
                ));
            }
        }
        if !p.scale.is_finite() || p.scale == 0.0 {
            errs.push(FieldError::new(
                "preprocess.scale",
                format!("{} must be a finite, non-zero number", p.scale),
            ));
        }
        let channels = p.color.channels();
        let mean = per_channel(
            &mut errs,
            "preprocess.mean",
            &p.mean,
            channels,
            0.0,
            p.color,
        );
        let std = per_channel(&mut errs, "preprocess.std", &p.std, channels, 1.0, p.color);
        if std.contains(&0.0) {
            errs.push(FieldError::new(
                "preprocess.std",
                "values must not be 0 (they divide)",
            ));
        }
        if p.max_pixels == 0 {
            errs.push(FieldError::new(
                "preprocess.max_pixels",
                "must be at least 1",
            ));
        }
        let q = &raw.postprocess;
        if q.kind == PostKind::Classify && q.top_k == 0 {
            errs.push(FieldError::new("postprocess.top_k", "must be at least 1"));
        }
        if q.kind != PostKind::Classify {
            for (set, field) in [
                (q.labels.is_some(), "postprocess.labels"),
                (q.softmax, "postprocess.softmax"),
            ] {
                if set {
                    errs.push(FieldError::new(
                        field,
                        format!(
                            "only applies to kind = \"classify\", not {:?}",
                            kind_name(q.kind)
                        ),
                    ));
                }
            }
        }
        if q.normalize && q.kind != PostKind::Embedding {
            errs.push(FieldError::new(
                "postprocess.normalize",
                "only applies to kind = \"embedding\"",
            ));
        }
        check_records_and_text(&raw, &mut errs);
        let tokenizer =
            raw.preprocess.tokenizer.as_deref().map(|t| {
                resolve(t, base_dir).map_err(|m| FieldError::new("preprocess.tokenizer", m))
            });
        let list = raw
            .input
            .list
            .as_deref()
            .map(|l| resolve(l, base_dir).map_err(|m| FieldError::new("input.list", m)));
        let labels = q
            .labels
            .as_deref()
            .map(|l| resolve(l, base_dir).map_err(|m| FieldError::new("postprocess.labels", m)));
        let output_root =
            resolve_dir(&raw.output.uri, base_dir).map_err(|m| FieldError::new("output.uri", m));
        let queue_uri =
            resolve_queue(&raw.queue.uri, base_dir).map_err(|m| FieldError::new("queue.uri", m));
        let qs = &raw.queue;
        if let ShardSize::Items(n) = qs.shard_size {
            if !(1..=1_000_000).contains(&n) {
                errs.push(FieldError::new(
                    "queue.shard_size",
                    format!("{n} is out of range 1..=1000000 (or \"auto\")"),
                ));
            }
        }
        let deadline = check_job(&raw.job, &mut errs);
        if !(1..=43_200).contains(&qs.visibility_timeout_secs) {
            errs.push(FieldError::new(
                "queue.visibility_timeout_secs",
                format!(
                    "{} is out of range 1..=43200 (12 h, SQS's limit)",
                    qs.visibility_timeout_secs
                ),
            ));
        }
        if !(1..=1000).contains(&qs.max_attempts) {
            errs.push(FieldError::new(
                "queue.max_attempts",
                format!("{} is out of range 1..=1000", qs.max_attempts),
            ));
        }

        let mut take = |r: Result<Url, FieldError>| match r {
            Ok(u) => Some(u),
            Err(e) => {
                errs.push(e);
                None
            }
        };
        let input = take(input);
        let model = take(model);
        let labels = labels.map(&mut take);
        let tokenizer = tokenizer.map(&mut take);
        let list = list.map(&mut take);
        let output_root = take(output_root);
        let queue_uri = match queue_uri {
            Ok(q) => Some(q),
            Err(e) => {
                errs.push(e);
                None
            }
        };
        if !errs.is_empty() {
            return Err(errs);
        }
        let (Some(input), Some(model), Some(output_root), Some(queue_uri)) =
            (input, model, output_root, queue_uri)
        else {
            return Err(vec![FieldError::new(
                "",
                "internal error: unresolved location",
            )]);
        };
        let labels = labels.flatten();
        let tokenizer = tokenizer.flatten();
        let list = list.flatten();
        let digest = identity_digest(&raw);
        let job_id = format!("{}-{}", raw.name, &digest[..12]);
        let output = output_root
            .join(&format!("{job_id}/"))
            .map_err(|e| vec![FieldError::new("output.uri", e.to_string())])?;
        Ok(Manifest {
            raw,
            job_id,
            digest,
            input,
            model,
            labels,
            tokenizer,
            list,
            output,
            queue_uri,
            mean,
            std,
            deadline,
        })
    }

    /// Whether the inputs are rows of record files.
    pub fn is_records(&self) -> bool {
        self.raw.input.format != InputFormat::Files
    }

    /// The record column holding the text (text items of record inputs).
    pub fn text_column(&self) -> &str {
        self.raw.preprocess.text_column.as_deref().unwrap_or("text")
    }

    /// Tokens per text item at most.
    pub fn max_length(&self) -> usize {
        self.raw.preprocess.max_length.unwrap_or(DEFAULT_MAX_LENGTH)
    }

    /// How per-token outputs become one embedding (text embeddings).
    pub fn pooling(&self) -> Pooling {
        self.raw.postprocess.pooling.unwrap_or_default()
    }

    /// Channels the model sees per pixel.
    pub fn channels(&self) -> usize {
        self.raw.preprocess.color.channels()
    }

    /// The canonical TOML of the manifest (defaults filled, relative paths as written).
    pub fn to_toml(&self) -> String {
        toml::to_string(&self.raw).unwrap_or_default()
    }

    /// The manifest as stored beside the job's results: locations resolved to absolute URLs and
    /// the job's identity kept, so a worker on any machine can load it from a shard's reference.
    pub fn to_stored(&self) -> Vec<u8> {
        let mut raw = self.raw.clone();
        raw.input.uri = self.input.to_string();
        raw.model.uri = self.model.to_string();
        raw.postprocess.labels = self.labels.as_ref().map(|u| u.to_string());
        raw.preprocess.tokenizer = self.tokenizer.as_ref().map(|u| u.to_string());
        raw.input.list = self.list.as_ref().map(|u| u.to_string());
        raw.output.uri = self
            .output
            .join("..")
            .map(|u| u.to_string())
            .unwrap_or_default();
        raw.queue.uri = self.queue_uri.clone();
        let stored = StoredManifest {
            v: 1,
            job_id: self.job_id.clone(),
            digest: self.digest.clone(),
            manifest: raw,
        };
        serde_json::to_vec_pretty(&stored).unwrap_or_default()
    }

    /// Reads a manifest written by [`Manifest::to_stored`].
    pub fn from_stored(bytes: &[u8]) -> Result<Self, Vec<FieldError>> {
        let stored: StoredManifest = serde_json::from_slice(bytes).map_err(|e| {
            vec![FieldError::new(
                "",
                format!("not a stored spotbatch manifest: {e}"),
            )]
        })?;
        if stored.v != 1 {
            return Err(vec![FieldError::new(
                "",
                format!("stored manifest version {} is not supported", stored.v),
            )]);
        }
        // The job's identity names its output prefix: anything but `NAME-DIGEST` (a `#`, `?`,
        // `/` or `..` in it) would put its outputs somewhere else.
        let digest_ok = stored.digest.len() == 64
            && stored
                .digest
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !digest_ok {
            return Err(vec![FieldError::new(
                "digest",
                format!("{:?} is not a hex SHA-256", stored.digest),
            )]);
        }
        if stored.job_id != format!("{}-{}", stored.manifest.name, &stored.digest[..12]) {
            return Err(vec![FieldError::new(
                "job_id",
                format!(
                    "{:?} is not the manifest's name and digest (NAME-DIGEST)",
                    stored.job_id
                ),
            )]);
        }
        let mut m = Self::from_raw(stored.manifest, Path::new("/"))?;
        let root = resolve_dir(&m.raw.output.uri, Path::new("/"))
            .map_err(|e| vec![FieldError::new("output.uri", e)])?;
        m.output = root
            .join(&format!("{}/", stored.job_id))
            .map_err(|e| vec![FieldError::new("output.uri", e.to_string())])?;
        m.job_id = stored.job_id;
        m.digest = stored.digest;
        Ok(m)
    }
}

/// `[job]`: one deadline at most, a time with its zone or a positive number of hours; the
/// on-demand cap only with a deadline.
fn check_job(job: &JobSpec, errs: &mut Vec<FieldError>) -> Option<Deadline> {
    let at = job
        .deadline
        .as_deref()
        .and_then(|d| match crate::rfc3339::parse(d) {
            Ok(t) => Some(t),
            Err(e) => {
                errs.push(FieldError::new("job.deadline", format!("{d:?}: {e}")));
                None
            }
        });
    let hours = job.deadline_hours.and_then(|h| {
        if h.is_finite() && h > 0.0 && h <= 8_760.0 {
            Some(h)
        } else {
            errs.push(FieldError::new(
                "job.deadline_hours",
                format!("{h} is out of range: more than 0, at most 8760 (a year)"),
            ));
            None
        }
    });
    if job.deadline.is_some() && job.deadline_hours.is_some() {
        errs.push(FieldError::new(
            "job.deadline_hours",
            "set job.deadline (a time) or job.deadline_hours (from submission), not both",
        ));
        return None;
    }
    if let Some(n) = job.max_on_demand_workers {
        if job.deadline.is_none() && job.deadline_hours.is_none() {
            errs.push(FieldError::new(
                "job.max_on_demand_workers",
                "applies to a job with a deadline (job.deadline or job.deadline_hours)",
            ));
        } else if n > 10_000 {
            errs.push(FieldError::new(
                "job.max_on_demand_workers",
                format!("{n} is out of range 0..=10000"),
            ));
        }
    }
    at.map(Deadline::At)
        .or(hours.map(Deadline::AfterSubmission))
}

/// The rules that tie record inputs, text models, pooling and output columns together.
fn check_records_and_text(raw: &RawManifest, errs: &mut Vec<FieldError>) {
    let (i, p, q, o) = (&raw.input, &raw.preprocess, &raw.postprocess, &raw.output);
    let records = i.format != InputFormat::Files;
    let fmt = |f: InputFormat| match f {
        InputFormat::Files => "files",
        InputFormat::Jsonl => "jsonl",
        InputFormat::Csv => "csv",
        InputFormat::Parquet => "parquet",
    };
    if records && p.kind != PreKind::Text {
        errs.push(FieldError::new(
            "preprocess.kind",
            format!(
                "input.format = \"{}\" feeds rows of text: set kind = \"text\" (with a tokenizer)",
                fmt(i.format)
            ),
        ));
    }
    if i.list.is_some() && records {
        errs.push(FieldError::new(
            "input.list",
            "lists object keys for input.format = \"files\"; record files are found under input.uri",
        ));
    }
    if i.list.is_some() && i.glob.is_some() {
        errs.push(FieldError::new(
            "input.glob",
            "does not apply with input.list (the list names the inputs); leave one out",
        ));
    }
    if !(1024..=(1 << 30)).contains(&i.split_bytes) {
        errs.push(FieldError::new(
            "input.split_bytes",
            format!("{} is out of range 1024..=1073741824", i.split_bytes),
        ));
    }
    for (set, field) in [
        (i.id_column.is_some(), "input.id_column"),
        (!o.columns.is_empty(), "output.columns"),
    ] {
        if set && !records {
            errs.push(FieldError::new(
                field,
                "applies to record inputs (input.format = \"jsonl\", \"csv\" or \"parquet\")",
            ));
        }
    }
    for (name, field) in [
        (i.id_column.as_deref(), "input.id_column"),
        (p.text_column.as_deref(), "preprocess.text_column"),
    ] {
        if name == Some("") {
            errs.push(FieldError::new(field, "must not be empty"));
        }
    }
    let reserved = ["key", "error", "top_k", "embedding", "tensor"];
    let mut seen = std::collections::HashSet::new();
    for c in o.columns.iter().chain(i.id_column.iter()) {
        if c.is_empty() || reserved.contains(&c.as_str()) {
            errs.push(FieldError::new(
                "output.columns",
                format!("{c:?}: not a usable column name in the output (key, error, top_k, embedding and tensor are spotbatch's)"),
            ));
        } else if !seen.insert(c.as_str()) {
            errs.push(FieldError::new(
                "output.columns",
                format!("{c:?} is named twice (the id column is carried already)"),
            ));
        }
    }
    if let Some(d) = &i.csv_delimiter {
        if d.len() != 1 || !d.is_ascii() || d == "\"" || d == "\n" || d == "\r" {
            errs.push(FieldError::new(
                "input.csv_delimiter",
                format!("{d:?}: one ASCII character other than a quote or a newline"),
            ));
        }
    }
    if (i.csv_delimiter.is_some() || !i.csv_quoted_newlines) && i.format != InputFormat::Csv {
        errs.push(FieldError::new(
            "input.csv_delimiter",
            "CSV settings apply to input.format = \"csv\"",
        ));
    }
    match p.kind {
        PreKind::Text => {
            if p.tokenizer.is_none() {
                errs.push(FieldError::new(
                    "preprocess.tokenizer",
                    "missing: kind = \"text\" needs a HuggingFace tokenizer.json",
                ));
            }
            if let Some(n) = p.max_length {
                if !(2..=8192).contains(&n) {
                    errs.push(FieldError::new(
                        "preprocess.max_length",
                        format!("{n} is out of range 2..=8192"),
                    ));
                }
            }
            for (set, field) in [
                (p.resize.is_some(), "preprocess.resize"),
                (p.mean.is_some(), "preprocess.mean"),
                (p.std.is_some(), "preprocess.std"),
            ] {
                if set {
                    errs.push(FieldError::new(
                        field,
                        "applies to images, not kind = \"text\"",
                    ));
                }
            }
        }
        PreKind::Image => {
            for (set, field) in [
                (p.tokenizer.is_some(), "preprocess.tokenizer"),
                (p.text_column.is_some(), "preprocess.text_column"),
                (p.max_length.is_some(), "preprocess.max_length"),
            ] {
                if set {
                    errs.push(FieldError::new(
                        field,
                        "applies to kind = \"text\", not images",
                    ));
                }
            }
        }
    }
    if q.pooling.is_some() && (q.kind != PostKind::Embedding || p.kind != PreKind::Text) {
        errs.push(FieldError::new(
            "postprocess.pooling",
            "applies to text embeddings (preprocess.kind = \"text\", kind = \"embedding\")",
        ));
    }
}

/// The stored form of a manifest (see [`Manifest::to_stored`]).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredManifest {
    v: u32,
    job_id: String,
    digest: String,
    manifest: RawManifest,
}

fn kind_name(k: PostKind) -> &'static str {
    match k {
        PostKind::Classify => "classify",
        PostKind::Embedding => "embedding",
        PostKind::Raw => "raw",
    }
}

/// Parses TOML into a [`RawManifest`], reporting unknown keys and wrong types per field, all at once.
pub fn parse_raw(text: &str) -> Result<RawManifest, Vec<FieldError>> {
    let parsed = parse_lenient(text)?;
    match parsed.raw {
        Some(raw) if parsed.errors.is_empty() => Ok(raw),
        _ => Err(parsed.errors),
    }
}

/// A manifest read as far as it could be (see [`parse_lenient`]).
struct Lenient {
    /// The manifest with every key that could not be read set aside (its default applies);
    /// `None` when a required key or table is missing or unreadable.
    raw: Option<RawManifest>,
    /// Every key that could not be read, one line each.
    errors: Vec<FieldError>,
    /// The keys the file sets, as fields (`name`, `model.batch_size`).
    written: Vec<String>,
}

/// The keys a manifest's text sets, as fields (`name`, `model.batch_size`), whatever their
/// values; empty when the text is not TOML. For saying which settings were asked for, not
/// defaulted.
pub fn keys_written(text: &str) -> Vec<String> {
    text.parse::<toml::Table>()
        .map(|t| written(&t))
        .unwrap_or_default()
}

fn written(table: &toml::Table) -> Vec<String> {
    let mut keys = Vec::new();
    for (key, value) in table {
        match value.as_table() {
            Some(t) => keys.extend(t.keys().map(|k| format!("{key}.{k}"))),
            None => keys.push(key.clone()),
        }
    }
    keys
}

/// Parses TOML, reading every table as far as it goes (the machinery is [`crate::table`]); a TOML
/// syntax error is the only problem reported alone.
fn parse_lenient(text: &str) -> Result<Lenient, Vec<FieldError>> {
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        let line = e
            .span()
            .map(|s| text[..s.start.min(text.len())].lines().count().max(1));
        let msg = one_line(e.message());
        vec![match line {
            Some(l) => FieldError::new("", format!("line {l}: {msg}")),
            None => FieldError::new("", msg),
        }]
    })?;
    let mut errs = Vec::new();
    const TOP: &[&str] = &[
        "name",
        "input",
        "model",
        "preprocess",
        "postprocess",
        "output",
        "queue",
        "job",
    ];
    for key in table.keys() {
        if !TOP.contains(&key.as_str()) {
            errs.push(FieldError::new(
                key.clone(),
                crate::table::unknown_key(key, TOP),
            ));
        }
    }
    let written = written(&table);
    fn section<T: serde::de::DeserializeOwned>(
        table: &toml::Table,
        key: &str,
        required: bool,
        errs: &mut Vec<FieldError>,
    ) -> Option<T> {
        let value = match table.get(key) {
            Some(v) => v.clone(),
            None if required => {
                errs.push(FieldError::new(key, "missing"));
                return None;
            }
            None => toml::Value::Table(toml::Table::new()),
        };
        if !value.is_table() {
            errs.push(FieldError::new(
                key,
                format!(
                    "expected a [{key}] table, found {}",
                    crate::table::describe(&value)
                ),
            ));
            return None;
        }
        crate::table::read(key, value, errs)
    }
    let name = match table.get("name") {
        Some(toml::Value::String(n)) => Some(n.clone()),
        Some(other) => {
            errs.push(FieldError::new(
                "name",
                format!(
                    "expected text in quotes, found {}",
                    crate::table::describe(other)
                ),
            ));
            None
        }
        None => {
            errs.push(FieldError::new("name", "missing"));
            None
        }
    };
    let input = section(&table, "input", true, &mut errs);
    let model = section(&table, "model", true, &mut errs);
    let preprocess = section(&table, "preprocess", false, &mut errs);
    let postprocess = section(&table, "postprocess", false, &mut errs);
    let output = section(&table, "output", true, &mut errs);
    let queue = section(&table, "queue", false, &mut errs);
    let job = section(&table, "job", false, &mut errs);
    let raw = match (
        name,
        input,
        model,
        preprocess,
        postprocess,
        output,
        queue,
        job,
    ) {
        (
            Some(name),
            Some(input),
            Some(model),
            Some(preprocess),
            Some(postprocess),
            Some(output),
            Some(queue),
            Some(job),
        ) => Some(RawManifest {
            name,
            input,
            model,
            preprocess,
            postprocess,
            output,
            queue,
            job,
        }),
        _ => None,
    };
    Ok(Lenient {
        raw,
        errors: errs,
        written,
    })
}

/// Expands an optional per-channel list to exactly `channels` values.
fn per_channel(
    errs: &mut Vec<FieldError>,
    field: &str,
    given: &Option<Vec<f32>>,
    channels: usize,
    default: f32,
    color: Color,
) -> Vec<f32> {
    match given {
        None => vec![default; channels],
        Some(v) if v.len() == channels => {
            if v.iter().any(|x| !x.is_finite()) {
                errs.push(FieldError::new(field, "values must be finite numbers"));
            }
            v.clone()
        }
        Some(v) => {
            let color = match color {
                Color::Rgb => "rgb",
                Color::Bgr => "bgr",
                Color::Gray => "gray",
            };
            errs.push(FieldError::new(
                field,
                format!(
                    "has {} value{}, but color = \"{color}\" has {channels} channel{}",
                    v.len(),
                    if v.len() == 1 { "" } else { "s" },
                    if channels == 1 { "" } else { "s" }
                ),
            ));
            vec![default; channels]
        }
    }
}

/// Checks glob syntax with the same matcher the planner uses.
fn check_glob(glob: &str) -> Result<(), String> {
    if glob.is_empty() {
        return Err("must not be empty (leave it out to take every file)".into());
    }
    crate::compile_glob(glob)
        .map(|_| ())
        .map_err(|e| format!("{glob:?}: {e}"))
}

/// Resolves a location: a URL with a scheme, or a path relative to `base`.
pub fn resolve(s: &str, base: &Path) -> Result<Url, String> {
    if s.trim().is_empty() {
        return Err("must not be empty".into());
    }
    if let Some(path) = s.strip_prefix("file://") {
        // A file URL's path is percent-encoded (stored manifests write their locations so): a
        // folder named `my images` is `file:///my%20images`. A literal `?` or `#` stays part of
        // the path, as before.
        let decoded = Url::parse(s)
            .ok()
            .filter(|u| u.query().is_none() && u.fragment().is_none())
            .and_then(|u| u.to_file_path().ok());
        return match decoded {
            Some(p) => file_url(&p, base),
            None => file_url(Path::new(path), base),
        };
    }
    if let Some((scheme, _)) = s.split_once("://") {
        return match scheme {
            "s3" | "gs" | "az" | "abfs" | "abfss" | "azure" | "http" | "https" | "memory" => {
                Url::parse(s).map_err(|e| format!("{s:?}: {e}"))
            }
            other => Err(format!(
                "{s:?}: unsupported scheme {other:?} (use a path, file://, s3://, gs:// or az://)"
            )),
        };
    }
    file_url(Path::new(s), base)
}

/// Like [`resolve`], for a folder or prefix: the URL ends in `/`.
pub fn resolve_dir(s: &str, base: &Path) -> Result<Url, String> {
    let mut url = resolve(s, base)?;
    if !url.path().ends_with('/') {
        let p = format!("{}/", url.path());
        url.set_path(&p);
    }
    Ok(url)
}

fn file_url(path: &Path, base: &Path) -> Result<Url, String> {
    let abs = if path.is_absolute() {
        path.to_path_buf()
    } else {
        base.join(path)
    };
    let norm = normalize(&abs);
    Url::from_file_path(&norm).map_err(|()| format!("{}: not a usable path", path.display()))
}

/// Removes `.` and `..` components without touching the filesystem.
fn normalize(p: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

/// Resolves relative SQLite paths in a queue URI against `base`.
fn resolve_queue(uri: &str, base: &Path) -> Result<String, String> {
    let Some((scheme, rest)) = uri.split_once("://") else {
        return Err(format!("{uri:?}: expected sqlite://PATH"));
    };
    match scheme {
        "sqlite" => {
            let (path, query) = match rest.split_once('?') {
                Some((p, q)) => (p, Some(q)),
                None => (rest, None),
            };
            if path.is_empty() {
                return Err(format!("{uri:?}: the SQLite path is empty"));
            }
            let p = Path::new(path);
            let abs = normalize(&if p.is_absolute() {
                p.to_path_buf()
            } else {
                base.join(p)
            });
            Ok(match query {
                Some(q) => format!("sqlite://{}?{q}", abs.display()),
                None => format!("sqlite://{}", abs.display()),
            })
        }
        "sqs" | "kafka" => Ok(uri.to_string()),
        other => Err(format!(
            "{uri:?}: unsupported queue scheme {other:?} (sqlite://, sqs://, kafka://)"
        )),
    }
}

/// The digest that names a job: everything that changes what the output rows are, and nothing
/// that only changes how they are computed (queue location, timeouts, attempts, batch size,
/// threads).
fn identity_digest(raw: &RawManifest) -> String {
    #[derive(Serialize)]
    struct Identity<'a> {
        v: u32,
        name: &'a str,
        input: &'a InputSpec,
        model_uri: &'a str,
        model_input: &'a Option<String>,
        model_output: &'a Option<String>,
        preprocess: &'a PreprocessSpec,
        postprocess: &'a PostprocessSpec,
        output: &'a OutputSpec,
        shard_size: ShardSize,
    }
    let id = Identity {
        v: 1,
        name: &raw.name,
        input: &raw.input,
        model_uri: &raw.model.uri,
        model_input: &raw.model.input,
        model_output: &raw.model.output,
        preprocess: &raw.preprocess,
        postprocess: &raw.postprocess,
        output: &raw.output,
        shard_size: raw.queue.shard_size,
    };
    let json = serde_json::to_vec(&id).unwrap_or_default();
    hex::encode(Sha256::digest(&json))
}

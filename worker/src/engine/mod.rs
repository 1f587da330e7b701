//! The inference engine seam: the [`InferenceEngine`] trait (one batch in, one output tensor out),
//! its ONNX Runtime implementation ([`ort::OrtEngine`], on the CPU or through the CUDA execution
//! provider, loaded from `ORT_DYLIB_PATH`), a fake for tests ([`fake::FakeEngine`]), and the
//! [`EngineLoader`] that turns a model file into an engine (so tests can load fakes).

pub mod fake;
pub mod ort;

use ::ort::value::{Shape, TensorElementType};
use spotbatch_proto::manifest::one_line;
use spotbatch_proto::manifest::{ConvAlgoSearch, DeviceSpec};

pub use self::ort::{ort_environment, OrtEngine, OrtLoader};

/// The environment variable naming ONNX Runtime's shared library.
pub const ORT_DYLIB_ENV: &str = "ORT_DYLIB_PATH";

/// What can go wrong loading or running a model.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// ONNX Runtime's library could not be found or loaded.
    #[error("{0}")]
    Runtime(String),
    /// The model file is not a model ONNX Runtime can load.
    #[error("model.uri: not a loadable ONNX model: {0}")]
    BadModel(String),
    /// The model's inputs or outputs do not fit the manifest; names the manifest field.
    #[error("{field}: {message}")]
    Mismatch {
        /// The manifest field to change.
        field: &'static str,
        /// What does not fit.
        message: String,
    },
    /// A run failed.
    #[error("inference failed: {0}")]
    Run(String),
}

/// A tensor's static description: element type and dimensions (-1 where dynamic).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// Its name in the graph.
    pub name: String,
    /// Element type, as ONNX Runtime names it.
    pub element: String,
    /// The element type when spotbatch can feed or read it (float32 or float16).
    pub float: Option<Float>,
    /// Dimensions; -1 where dynamic.
    pub dims: Vec<i64>,
}

/// The floating-point element types spotbatch feeds and reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Float {
    /// 32-bit.
    F32,
    /// 16-bit (fp16 models); converted at the model's edge.
    F16,
}

impl Float {
    /// Bytes per value.
    pub fn size(self) -> usize {
        match self {
            Float::F32 => 4,
            Float::F16 => 2,
        }
    }
}

/// Where an engine runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    /// The CPU.
    Cpu,
    /// CUDA GPU `N`.
    Cuda(u32),
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// The chosen input and output of a loaded model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelInfo {
    /// The input fed with the preprocessed batch (a text model's `input_ids`).
    pub input: TensorInfo,
    /// The output read for rows.
    pub output: TensorInfo,
    /// A text model's inputs, by name, in the model's order (`input_ids`, `attention_mask`,
    /// `token_type_ids`); empty for image models.
    pub token_inputs: Vec<String>,
}

/// The inputs a tokenizer feeds, by their names in BERT-style ONNX models.
pub const TOKEN_INPUTS: [&str; 3] = ["input_ids", "attention_mask", "token_type_ids"];

/// One inference result: the output tensor for the whole batch.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchOutput {
    /// The output's shape, batch dimension first.
    pub shape: Vec<usize>,
    /// The values, row-major.
    pub data: Vec<f32>,
}

/// Runs a model on batches. One engine serves one model; it is used from one thread at a time.
pub trait InferenceEngine: Send {
    /// The model's chosen input and output.
    fn info(&self) -> &ModelInfo;
    /// Where it runs.
    fn device(&self) -> Device {
        Device::Cpu
    }
    /// Runs one batch. `shape` is the input's full shape, batch first; `input` holds its values.
    fn run(&mut self, input: &[f32], shape: &[i64]) -> Result<BatchOutput, EngineError>;
    /// Runs one batch of texts: each of the model's [`ModelInfo::token_inputs`] fed from the
    /// batch's buffer of that name.
    fn run_tokens(
        &mut self,
        batch: &spotbatch_text::TokenBatch,
    ) -> Result<BatchOutput, EngineError> {
        let _ = batch;
        Err(EngineError::Run("this model takes no token inputs".into()))
    }
    /// An allocator of input tensors in this engine's GPU memory (the model's input element
    /// type), to be written there by the GPU preprocessing and run with [`Self::run_device`].
    fn device_allocator(&mut self) -> Result<DeviceAllocator, EngineError> {
        Err(EngineError::Run(
            "this engine takes its input from host memory only".into(),
        ))
    }
    /// Runs one batch whose input lies in GPU memory (IO binding: no round trip through the host).
    fn run_device(&mut self, input: DeviceTensor) -> Result<BatchOutput, EngineError> {
        let _ = input;
        Err(EngineError::Run(
            "this engine takes its input from host memory only".into(),
        ))
    }
}

/// An input tensor in GPU memory, owned by ONNX Runtime's allocator for the session (so binding it
/// needs no copy).
pub struct DeviceTensor(::ort::value::DynTensor);

impl std::fmt::Debug for DeviceTensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceTensor").finish_non_exhaustive()
    }
}

impl DeviceTensor {
    /// The ONNX Runtime value, for binding.
    pub(crate) fn tensor(&self) -> &::ort::value::DynTensor {
        &self.0
    }

    /// The device address of its data.
    pub fn ptr(&mut self) -> u64 {
        self.0.data_ptr_mut() as usize as u64
    }
}

/// Allocates [`DeviceTensor`]s from ONNX Runtime's GPU arena for one session; usable from another
/// thread than the one running the session.
pub struct DeviceAllocator {
    pub(crate) allocator: ::ort::memory::Allocator,
    pub(crate) ty: TensorElementType,
}

impl std::fmt::Debug for DeviceAllocator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceAllocator")
            .field("ty", &self.ty)
            .finish_non_exhaustive()
    }
}

impl DeviceAllocator {
    /// A new input tensor of `shape`.
    pub fn tensor(&self, shape: &[i64]) -> Result<DeviceTensor, EngineError> {
        ::ort::value::DynTensor::new(&self.allocator, self.ty, Shape::new(shape.iter().copied()))
            .map(DeviceTensor)
            .map_err(|e| EngineError::Run(one_line(&e.to_string())))
    }
}

/// Turns a model file into an engine: ONNX Runtime ([`OrtLoader`]) in production, a fake in tests.
pub trait EngineLoader: Send + Sync + std::fmt::Debug {
    /// Loads the model in `model` (the file's bytes).
    fn load(
        &self,
        model: &[u8],
        opts: &EngineOptions,
    ) -> Result<Box<dyn InferenceEngine>, EngineError>;
}

/// Options for loading a model.
#[derive(Debug, Clone, Default)]
pub struct EngineOptions {
    /// `model.input`, if the manifest names one.
    pub input: Option<String>,
    /// `model.output`, if the manifest names one.
    pub output: Option<String>,
    /// Intra-op threads; 0 lets ONNX Runtime choose.
    pub intra_op_threads: usize,
    /// Where to run it.
    pub device: DeviceSpec,
    /// CUDA execution provider settings (ignored on the CPU).
    pub cuda: CudaOptions,
    /// A text model: fed `input_ids`, `attention_mask` and (when it has it) `token_type_ids`.
    pub tokens: bool,
}

/// Settings of ONNX Runtime's CUDA execution provider; `None` keeps ONNX Runtime's default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CudaOptions {
    /// `model.cudnn_conv_algo_search`.
    pub conv_algo_search: Option<ConvAlgoSearch>,
    /// `model.tf32`.
    pub tf32: Option<bool>,
    /// `model.gpu_mem_limit_mb`, in bytes.
    pub mem_limit_bytes: Option<usize>,
}

impl CudaOptions {
    /// The `[model]` section's CUDA settings.
    pub fn from_manifest(model: &spotbatch_proto::manifest::ModelSpec) -> Self {
        Self {
            conv_algo_search: model.cudnn_conv_algo_search,
            tf32: model.tf32,
            // Validated to at most 16 TiB; saturates on a 32-bit host.
            mem_limit_bytes: model
                .gpu_mem_limit_mb
                .map(|mb| usize::try_from(mb.saturating_mul(1 << 20)).unwrap_or(usize::MAX)),
        }
    }

    /// Applies the settings to a CUDA provider.
    pub(crate) fn apply(&self, mut cuda: ::ort::ep::CUDA) -> ::ort::ep::CUDA {
        use ::ort::ep::cuda::ConvAlgorithmSearch as Search;
        if let Some(search) = self.conv_algo_search {
            cuda = cuda.with_conv_algorithm_search(match search {
                ConvAlgoSearch::Exhaustive => Search::Exhaustive,
                ConvAlgoSearch::Heuristic => Search::Heuristic,
                ConvAlgoSearch::Default => Search::Default,
            });
        }
        if let Some(on) = self.tf32 {
            cuda = cuda.with_tf32(on);
        }
        if let Some(limit) = self.mem_limit_bytes {
            cuda = cuda.with_memory_limit(limit);
        }
        cuda
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The manifest's CUDA settings become ONNX Runtime's documented CUDA provider options, and
    /// unset ones are left to ONNX Runtime.
    #[test]
    fn cuda_settings_become_the_providers_options() {
        let mut model: spotbatch_proto::manifest::ModelSpec =
            serde_json::from_str(r#"{"uri": "m.onnx"}"#).expect("a minimal [model]");
        let provider = |model: &spotbatch_proto::manifest::ModelSpec| {
            format!(
                "{:?}",
                CudaOptions::from_manifest(model).apply(Default::default())
            )
        };
        let unset = provider(&model);
        for key in ["cudnn_conv_algo_search", "use_tf32", "gpu_mem_limit"] {
            assert!(!unset.contains(key), "{key} set while unset: {unset}");
        }
        model.cudnn_conv_algo_search = Some(ConvAlgoSearch::Heuristic);
        model.tf32 = Some(false);
        model.gpu_mem_limit_mb = Some(2048);
        assert_eq!(
            CudaOptions::from_manifest(&model).mem_limit_bytes,
            Some(2048 << 20)
        );
        let set = provider(&model);
        for (key, value) in [
            ("cudnn_conv_algo_search", "HEURISTIC"),
            ("use_tf32", "false"),
            ("gpu_mem_limit", "2147483648"),
        ] {
            assert!(
                set.contains(&format!("{key:?}: {value:?}")),
                "{key} = {value} missing from {set}"
            );
        }
        for (search, name) in [
            (ConvAlgoSearch::Exhaustive, "EXHAUSTIVE"),
            (ConvAlgoSearch::Default, "DEFAULT"),
        ] {
            model.cudnn_conv_algo_search = Some(search);
            let set = provider(&model);
            assert!(
                set.contains(&format!("{name:?}")),
                "{name} missing from {set}"
            );
        }
    }
}

/// Checks every [`InferenceEngine`] must pass, run by each implementation's tests (like the
/// queue's conformance suite): one output row per item with the batch dimension first, the same
/// input gives the same output, an item's output does not depend on the batch it runs in, and a
/// malformed batch is an error, not a panic.
pub mod conformance {
    use super::*;

    /// Values of one item of `engine`'s input (dynamic dimensions taken as 1), made from `seed`.
    fn item(engine: &dyn InferenceEngine, seed: usize) -> (Vec<f32>, Vec<i64>) {
        let dims: Vec<i64> = engine.info().input.dims[1..]
            .iter()
            .map(|d| if *d > 0 { *d } else { 1 })
            .collect();
        let len: usize = dims.iter().map(|d| *d as usize).product();
        let values = (0..len)
            .map(|i| ((i * 7 + seed * 13) % 17) as f32 / 17.0)
            .collect();
        (values, dims)
    }

    fn shape(n: usize, dims: &[i64]) -> Vec<i64> {
        let mut s = vec![n as i64];
        s.extend_from_slice(dims);
        s
    }

    /// Runs the checks; panics naming the one that failed.
    pub fn check(engine: &mut dyn InferenceEngine) {
        let fixed = engine.info().input.dims.first().copied().filter(|d| *d > 0);
        let n = fixed.map(|d| d as usize).unwrap_or(3);
        let items: Vec<(Vec<f32>, Vec<i64>)> = (0..n).map(|i| item(engine, i)).collect();
        let dims = items[0].1.clone();
        let batch: Vec<f32> = items.iter().flat_map(|(v, _)| v.clone()).collect();
        let out = engine
            .run(&batch, &shape(n, &dims))
            .expect("a well-formed batch runs");
        assert_eq!(out.shape.first(), Some(&n), "batch dimension first");
        let per: usize = out.shape[1..].iter().product();
        assert_eq!(out.data.len(), n * per, "one output per item");
        let again = engine.run(&batch, &shape(n, &dims)).expect("runs again");
        assert_eq!(out, again, "the same input gives the same output");
        if fixed.is_none() {
            for (i, (values, _)) in items.iter().enumerate() {
                let alone = engine
                    .run(values, &shape(1, &dims))
                    .expect("an item runs alone");
                for (a, b) in alone.data.iter().zip(&out.data[i * per..(i + 1) * per]) {
                    assert!(
                        (a - b).abs() <= 1e-4 * a.abs().max(1.0),
                        "item {i}'s output depends on its batch: {a} vs {b}"
                    );
                }
            }
        }
        let short = &batch[..batch.len() - 1];
        assert!(
            engine.run(short, &shape(n, &dims)).is_err(),
            "a batch with too few values is an error"
        );
    }
}

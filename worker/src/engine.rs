//! Inference engines: the [`InferenceEngine`] trait (one batch in, one output tensor out) and its
//! ONNX Runtime implementation, [`OrtEngine`], on the CPU or through the CUDA execution provider,
//! loaded dynamically from `ORT_DYLIB_PATH` (the CUDA provider library sits beside it).

use std::sync::OnceLock;

use half::f16;
use ort::memory::{AllocationDevice, AllocatorType, MemoryInfo, MemoryType};
use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use ort::value::{Shape, TensorElementType, TensorRef, ValueType};
use spotbatch_proto::manifest::{ConvAlgoSearch, DeviceSpec};
use tracing::warn;

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
    /// The input fed with the preprocessed batch.
    pub input: TensorInfo,
    /// The output read for rows.
    pub output: TensorInfo,
}

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
pub struct DeviceTensor(ort::value::DynTensor);

impl std::fmt::Debug for DeviceTensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceTensor").finish_non_exhaustive()
    }
}

impl DeviceTensor {
    /// The device address of its data.
    pub fn ptr(&mut self) -> u64 {
        self.0.data_ptr_mut() as usize as u64
    }
}

/// Allocates [`DeviceTensor`]s from ONNX Runtime's GPU arena for one session; usable from another
/// thread than the one running the session.
pub struct DeviceAllocator {
    allocator: ort::memory::Allocator,
    ty: TensorElementType,
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
        ort::value::DynTensor::new(&self.allocator, self.ty, Shape::new(shape.iter().copied()))
            .map(DeviceTensor)
            .map_err(|e| EngineError::Run(one_line(&e.to_string())))
    }
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
    fn apply(&self, mut cuda: ort::ep::CUDA) -> ort::ep::CUDA {
        use ort::ep::cuda::ConvAlgorithmSearch as Search;
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

static ENVIRONMENT: OnceLock<Result<ort::environment::Environment, String>> = OnceLock::new();

/// Loads ONNX Runtime from `ORT_DYLIB_PATH` once per process.
pub fn ort_environment() -> Result<&'static ort::environment::Environment, EngineError> {
    ENVIRONMENT
        .get_or_init(|| {
            let path = std::env::var_os(ORT_DYLIB_ENV).ok_or_else(|| {
                format!(
                    "ONNX Runtime not found: set {ORT_DYLIB_ENV} to the path of libonnxruntime.so \
                     (`make demo` installs it into .venv; see the README)"
                )
            })?;
            let shown = std::path::Path::new(&path).display().to_string();
            if !std::path::Path::new(&path).is_file() {
                return Err(format!("{ORT_DYLIB_ENV}={shown}: no such file"));
            }
            ort::init_from(&path)
                .map_err(|e| format!("{ORT_DYLIB_ENV}={shown}: cannot load ONNX Runtime: {e}"))?
                .with_name("spotbatch")
                .build()
                .map_err(|e| format!("{ORT_DYLIB_ENV}={shown}: cannot start ONNX Runtime: {e}"))
        })
        .as_ref()
        .map_err(|e| EngineError::Runtime(e.clone()))
}

/// ONNX Runtime on the CPU or a CUDA GPU.
pub struct OrtEngine {
    session: Session,
    info: ModelInfo,
    device: Device,
}

impl std::fmt::Debug for OrtEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrtEngine")
            .field("info", &self.info)
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}

impl OrtEngine {
    /// Loads a model from its bytes and picks its input and output.
    pub fn load(model: &[u8], opts: &EngineOptions) -> Result<Self, EngineError> {
        ort_environment()?;
        let device = match opts.device {
            DeviceSpec::Cpu => Device::Cpu,
            DeviceSpec::Cuda(n) => {
                let count = crate::gpu::cuda_device_count()
                    .map_err(|e| EngineError::Runtime(format!("device cuda:{n}: {e}")))?;
                if n as usize >= count {
                    return Err(EngineError::Runtime(format!(
                        "device cuda:{n}: this machine has {count} GPU{}",
                        if count == 1 { "" } else { "s" }
                    )));
                }
                Device::Cuda(n)
            }
            DeviceSpec::Auto => match crate::gpu::cuda_device_count() {
                Ok(n) if n > 0 => Device::Cuda(0),
                Ok(_) => {
                    warn_cpu_fallback("no GPU found");
                    Device::Cpu
                }
                Err(e) => {
                    warn_cpu_fallback(&e);
                    Device::Cpu
                }
            },
        };
        match Self::load_on(model, opts, device) {
            Err(EngineError::Runtime(e)) if opts.device == DeviceSpec::Auto => {
                warn_cpu_fallback(&e);
                Self::load_on(model, opts, Device::Cpu)
            }
            other => other,
        }
    }

    fn load_on(model: &[u8], opts: &EngineOptions, device: Device) -> Result<Self, EngineError> {
        let env = ort_environment()?;
        let bad = |e: ort::Error| EngineError::BadModel(one_line(&e.to_string()));
        let mut builder = Session::builder(env)
            .map_err(bad)?
            .with_optimization_level(GraphOptimizationLevel::Level3)
            .map_err(|e| bad(e.into()))?;
        if opts.intra_op_threads > 0 {
            builder = builder
                .with_intra_threads(opts.intra_op_threads)
                .map_err(|e| bad(e.into()))?;
        }
        if let Device::Cuda(n) = device {
            let cuda = opts
                .cuda
                .apply(
                    ort::ep::CUDA::default()
                        .with_device_id(n as i32)
                        .with_conv_max_workspace(true),
                )
                .build()
                .error_on_failure();
            builder = builder.with_execution_providers([cuda]).map_err(|e| {
                EngineError::Runtime(format!(
                    "device cuda:{n}: ONNX Runtime's CUDA execution provider is not usable \
                     (libonnxruntime_providers_cuda.so from the onnxruntime-gpu wheel must sit \
                     beside {ORT_DYLIB_ENV}, with CUDA 13 and cuDNN 9 on LD_LIBRARY_PATH): {}",
                    one_line(&ort::Error::<()>::from(e).to_string())
                ))
            })?;
        }
        let session = builder.commit_from_memory(model).map_err(bad)?;
        let inputs: Vec<TensorInfo> = session
            .inputs()
            .iter()
            .map(|o| tensor_info(o.name(), o.dtype()))
            .collect();
        let outputs: Vec<TensorInfo> = session
            .outputs()
            .iter()
            .map(|o| tensor_info(o.name(), o.dtype()))
            .collect();
        let input = pick("model.input", "input", &inputs, opts.input.as_deref())?;
        let output = pick("model.output", "output", &outputs, opts.output.as_deref())?;
        if input.float.is_none() {
            return Err(EngineError::Mismatch {
                field: "model.input",
                message: format!(
                    "{:?} takes {} values; spotbatch feeds float32 or float16",
                    input.name, input.element
                ),
            });
        }
        if output.float.is_none() {
            return Err(EngineError::Mismatch {
                field: "model.output",
                message: format!(
                    "{:?} gives {} values; spotbatch reads float32 or float16",
                    output.name, output.element
                ),
            });
        }
        if output.dims.is_empty() {
            return Err(EngineError::Mismatch {
                field: "model.output",
                message: format!(
                    "{:?} is a scalar; spotbatch needs a batch dimension first",
                    output.name
                ),
            });
        }
        Ok(Self {
            session,
            info: ModelInfo { input, output },
            device,
        })
    }
}

/// Reads the chosen output, as float32.
fn read_output(
    info: &ModelInfo,
    outputs: &ort::session::SessionOutputs<'_>,
) -> Result<BatchOutput, EngineError> {
    {
        let run_err = |e: ort::Error| EngineError::Run(one_line(&e.to_string()));
        let value = outputs.get(&info.output.name).ok_or_else(|| {
            EngineError::Run(format!(
                "output {:?} missing from the results",
                info.output.name
            ))
        })?;
        let (out_shape, data) = if info.output.float == Some(Float::F16) {
            let (shape, data) = value.try_extract_tensor::<f16>().map_err(run_err)?;
            (shape, data.iter().map(|v| v.to_f32()).collect())
        } else {
            let (shape, data) = value.try_extract_tensor::<f32>().map_err(run_err)?;
            (shape, data.to_vec())
        };
        Ok(BatchOutput {
            shape: out_shape
                .iter()
                .map(|d| usize::try_from(*d).unwrap_or(0))
                .collect(),
            data,
        })
    }
}

/// Says once per process why `auto` runs on the CPU.
fn warn_cpu_fallback(why: &str) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    let why = one_line(why);
    ONCE.call_once(|| {
        warn!(reason = %why, "device auto: running inference on the CPU ({why})");
    });
}

impl InferenceEngine for OrtEngine {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn device(&self) -> Device {
        self.device
    }

    fn run(&mut self, input: &[f32], shape: &[i64]) -> Result<BatchOutput, EngineError> {
        let run_err = |e: ort::Error| EngineError::Run(one_line(&e.to_string()));
        let name = self.info.input.name.as_str();
        let outputs = if self.info.input.float == Some(Float::F16) {
            let halves: Vec<f16> = input.iter().map(|v| f16::from_f32(*v)).collect();
            let tensor =
                TensorRef::from_array_view((shape.to_vec(), halves.as_slice())).map_err(run_err)?;
            self.session.run(ort::inputs![name => tensor])
        } else {
            let tensor = TensorRef::from_array_view((shape.to_vec(), input)).map_err(run_err)?;
            self.session.run(ort::inputs![name => tensor])
        }
        .map_err(run_err)?;
        read_output(&self.info, &outputs)
    }

    fn device_allocator(&mut self) -> Result<DeviceAllocator, EngineError> {
        let run_err = |e: ort::Error| EngineError::Run(one_line(&e.to_string()));
        let Device::Cuda(gpu) = self.device else {
            return Err(EngineError::Run(
                "GPU input asked of a model running on the CPU".into(),
            ));
        };
        let on_gpu = MemoryInfo::new(
            AllocationDevice::CUDA,
            gpu as i32,
            AllocatorType::Device,
            MemoryType::Default,
        )
        .map_err(run_err)?;
        let allocator = ort::memory::Allocator::new(&self.session, on_gpu).map_err(run_err)?;
        let ty = match self.info.input.float {
            Some(Float::F16) => TensorElementType::Float16,
            _ => TensorElementType::Float32,
        };
        Ok(DeviceAllocator { allocator, ty })
    }

    fn run_device(&mut self, input: DeviceTensor) -> Result<BatchOutput, EngineError> {
        let run_err = |e: ort::Error| EngineError::Run(one_line(&e.to_string()));
        let Device::Cuda(gpu) = self.device else {
            return Err(EngineError::Run(
                "GPU input given to a model running on the CPU".into(),
            ));
        };
        // Outputs come back to pinned host memory (CPU-readable), copied by the CUDA provider.
        let on_host = MemoryInfo::new(
            AllocationDevice::CUDA_PINNED,
            gpu as i32,
            AllocatorType::Device,
            MemoryType::CPUOutput,
        )
        .map_err(run_err)?;
        let mut binding = self.session.create_binding().map_err(run_err)?;
        // An owned tensor: ONNX Runtime binds it as it is (a borrowed one would be copied first).
        binding
            .bind_input(&self.info.input.name, &input.0)
            .map_err(run_err)?;
        binding
            .bind_output_to_device(&self.info.output.name, &on_host)
            .map_err(run_err)?;
        let outputs = self.session.run_binding(&binding).map_err(run_err)?;
        read_output(&self.info, &outputs)
    }
}

fn tensor_info(name: &str, ty: &ValueType) -> TensorInfo {
    match ty {
        ValueType::Tensor { ty, shape, .. } => TensorInfo {
            name: name.to_string(),
            element: ty.to_string(),
            float: match ty {
                TensorElementType::Float32 => Some(Float::F32),
                TensorElementType::Float16 => Some(Float::F16),
                _ => None,
            },
            dims: shape.iter().copied().collect(),
        },
        other => TensorInfo {
            name: name.to_string(),
            element: other.to_string(),
            float: None,
            dims: Vec::new(),
        },
    }
}

fn pick(
    field: &'static str,
    what: &str,
    all: &[TensorInfo],
    wanted: Option<&str>,
) -> Result<TensorInfo, EngineError> {
    let names = || {
        all.iter()
            .map(|t| format!("{:?}", t.name))
            .collect::<Vec<_>>()
            .join(", ")
    };
    match wanted {
        Some(name) => {
            all.iter()
                .find(|t| t.name == name)
                .cloned()
                .ok_or_else(|| EngineError::Mismatch {
                    field,
                    message: format!(
                        "{name:?} is not an {what} of the model (its {what}s: {})",
                        names()
                    ),
                })
        }
        None if all.len() == 1 => Ok(all[0].clone()),
        None => Err(EngineError::Mismatch {
            field,
            message: format!(
                "the model has {} {what}s ({}); name one",
                all.len(),
                names()
            ),
        }),
    }
}

pub(crate) fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
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

//! ONNX Runtime as an [`InferenceEngine`]: loaded once per process from `ORT_DYLIB_PATH` (the
//! PyPI wheel's `libonnxruntime.so`; the CUDA provider library sits beside it), on the CPU or a
//! CUDA GPU (through IO binding when the input is already on the GPU).

use std::sync::OnceLock;

use half::f16;
use ort::memory::{AllocationDevice, AllocatorType, MemoryInfo, MemoryType};
use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use ort::value::{TensorElementType, TensorRef, ValueType};
use spotbatch_proto::manifest::{one_line, DeviceSpec};
use tracing::warn;

use spotbatch_text::TokenBatch;

use super::{
    BatchOutput, Device, DeviceAllocator, DeviceTensor, EngineError, EngineLoader, EngineOptions,
    Float, InferenceEngine, ModelInfo, TensorInfo, ORT_DYLIB_ENV, TOKEN_INPUTS,
};
use crate::device::cuda_device_count;

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
                let count = cuda_device_count()
                    .map_err(|e| EngineError::Runtime(format!("device cuda:{n}: {e}")))?;
                if n as usize >= count {
                    return Err(EngineError::Runtime(format!(
                        "device cuda:{n}: this machine has {count} GPU{}",
                        if count == 1 { "" } else { "s" }
                    )));
                }
                Device::Cuda(n)
            }
            DeviceSpec::Auto => match cuda_device_count() {
                Ok(n) if n > 0 => Device::Cuda(0),
                Ok(_) => {
                    warn_cpu_fallback("no GPU found");
                    Device::Cpu
                }
                Err(e) => {
                    warn_cpu_fallback(&e.to_string());
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
        let (input, token_inputs) = if opts.tokens {
            token_inputs(&inputs)?
        } else {
            let input = pick("model.input", "input", &inputs, opts.input.as_deref())?;
            if input.float.is_none() {
                return Err(EngineError::Mismatch {
                    field: "model.input",
                    message: format!(
                        "{:?} takes {} values; spotbatch feeds float32 or float16",
                        input.name, input.element
                    ),
                });
            }
            (input, Vec::new())
        };
        let output = pick("model.output", "output", &outputs, opts.output.as_deref())?;
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
            info: ModelInfo {
                input,
                output,
                token_inputs,
            },
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
        warn!("device auto: running inference on the CPU ({why})");
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

    fn run_tokens(&mut self, batch: &TokenBatch) -> Result<BatchOutput, EngineError> {
        let run_err = |e: ort::Error| EngineError::Run(one_line(&e.to_string()));
        let shape = vec![batch.batch as i64, batch.seq as i64];
        let mut inputs: Vec<(String, ort::session::SessionInputValue<'_>)> = Vec::new();
        for name in &self.info.token_inputs {
            let data: &[i64] = match name.as_str() {
                "input_ids" => &batch.input_ids,
                "attention_mask" => &batch.attention_mask,
                _ => &batch.token_type_ids,
            };
            let tensor = TensorRef::from_array_view((shape.clone(), data)).map_err(run_err)?;
            inputs.push((name.clone(), tensor.into()));
        }
        let outputs = self.session.run(inputs).map_err(run_err)?;
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
            .bind_input(&self.info.input.name, input.tensor())
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

/// A text model's inputs: `input_ids` and any of `attention_mask` and `token_type_ids`, all
/// int64; an input the tokenizer does not feed is a mismatch naming it.
fn token_inputs(inputs: &[TensorInfo]) -> Result<(TensorInfo, Vec<String>), EngineError> {
    let mut names = Vec::new();
    for i in inputs {
        if !TOKEN_INPUTS.contains(&i.name.as_str()) {
            return Err(EngineError::Mismatch {
                field: "model.uri",
                message: format!(
                    "the model takes {:?}, which a tokenizer does not feed (it feeds {})",
                    i.name,
                    TOKEN_INPUTS.join(", ")
                ),
            });
        }
        if i.element != "i64" {
            return Err(EngineError::Mismatch {
                field: "model.uri",
                message: format!(
                    "the model's {:?} takes {} values; token inputs are int64",
                    i.name, i.element
                ),
            });
        }
        names.push(i.name.clone());
    }
    let ids = inputs
        .iter()
        .find(|i| i.name == "input_ids")
        .cloned()
        .ok_or_else(|| EngineError::Mismatch {
            field: "model.uri",
            message: "a text model needs an input named \"input_ids\"".into(),
        })?;
    Ok((ids, names))
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

/// Loads models with ONNX Runtime.
#[derive(Debug, Clone, Copy, Default)]
pub struct OrtLoader;

impl EngineLoader for OrtLoader {
    fn load(
        &self,
        model: &[u8],
        opts: &EngineOptions,
    ) -> Result<Box<dyn InferenceEngine>, EngineError> {
        Ok(Box::new(OrtEngine::load(model, opts)?))
    }
}

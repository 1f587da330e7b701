//! Inference engines: the [`InferenceEngine`] trait (one batch in, one output tensor out) and its
//! ONNX Runtime CPU implementation, [`OrtEngine`], loaded dynamically from `ORT_DYLIB_PATH`.

use std::sync::OnceLock;

use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use ort::value::{TensorElementType, TensorRef, ValueType};

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
    /// Whether the element type is 32-bit float.
    pub is_f32: bool,
    /// Dimensions; -1 where dynamic.
    pub dims: Vec<i64>,
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
    /// Runs one batch. `shape` is the input's full shape, batch first; `input` holds its values.
    fn run(&mut self, input: &[f32], shape: &[i64]) -> Result<BatchOutput, EngineError>;
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

/// ONNX Runtime on the CPU.
pub struct OrtEngine {
    session: Session,
    info: ModelInfo,
}

impl std::fmt::Debug for OrtEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrtEngine")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

impl OrtEngine {
    /// Loads a model from its bytes and picks its input and output.
    pub fn load(model: &[u8], opts: &EngineOptions) -> Result<Self, EngineError> {
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
        if !input.is_f32 {
            return Err(EngineError::Mismatch {
                field: "model.input",
                message: format!(
                    "{:?} takes {} values; spotbatch feeds float32",
                    input.name, input.element
                ),
            });
        }
        if !output.is_f32 {
            return Err(EngineError::Mismatch {
                field: "model.output",
                message: format!(
                    "{:?} gives {} values; spotbatch reads float32",
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
        })
    }
}

impl InferenceEngine for OrtEngine {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn run(&mut self, input: &[f32], shape: &[i64]) -> Result<BatchOutput, EngineError> {
        let run_err = |e: ort::Error| EngineError::Run(one_line(&e.to_string()));
        let tensor = TensorRef::from_array_view((shape.to_vec(), input)).map_err(run_err)?;
        let outputs = self
            .session
            .run(ort::inputs![self.info.input.name.as_str() => tensor])
            .map_err(run_err)?;
        let value = outputs.get(&self.info.output.name).ok_or_else(|| {
            EngineError::Run(format!(
                "output {:?} missing from the results",
                self.info.output.name
            ))
        })?;
        let (out_shape, data) = value.try_extract_tensor::<f32>().map_err(run_err)?;
        Ok(BatchOutput {
            shape: out_shape
                .iter()
                .map(|d| usize::try_from(*d).unwrap_or(0))
                .collect(),
            data: data.to_vec(),
        })
    }
}

fn tensor_info(name: &str, ty: &ValueType) -> TensorInfo {
    match ty {
        ValueType::Tensor { ty, shape, .. } => TensorInfo {
            name: name.to_string(),
            element: ty.to_string(),
            is_f32: *ty == TensorElementType::Float32,
            dims: shape.iter().copied().collect(),
        },
        other => TensorInfo {
            name: name.to_string(),
            element: other.to_string(),
            is_f32: false,
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

//! A loaded model as the pipeline uses it: the engine, the input plan, the preprocessing fitted
//! to the model (on the CPU or the GPU) and a text model's tokenizer.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use spotbatch_proto::manifest::{DeviceSpec, PreprocessDevice};
use spotbatch_proto::Manifest;
use tracing::{info, warn};

use crate::engine::{
    CudaOptions, Device, DeviceAllocator, EngineError, EngineLoader, EngineOptions, InferenceEngine,
};
use crate::error::JobError;
use crate::gpu::{GpuPreprocessor, TensorSpec};
use crate::model::{plan_input, InputPlan};
use crate::preprocess::{ImagePreprocessor, ImageTarget, Preprocessor, TextPreprocessor};

/// A loaded model with its input plan and preprocessing. Jobs whose model file, model settings
/// and preprocessing are the same share one, so their items fill the same batches.
pub struct ModelRuntime {
    /// An item's payload → its model input (run on the decode threads).
    pub pre: Box<dyn Preprocessor>,
    /// The input's shape per item.
    pub plan: InputPlan,
    /// The loaded model (used by the engine thread only).
    pub engine: Mutex<Box<dyn InferenceEngine>>,
    /// GPU preprocessing, when images are resized and normalised on the GPU, with the allocator
    /// of the input tensors it writes.
    pub gpu: Option<(Mutex<GpuPreprocessor>, Mutex<DeviceAllocator>)>,
    /// A text model's tokenizer (batches are packed with its pad id); `None` for images.
    pub tokenizer: Option<Arc<spotbatch_text::TextTokenizer>>,
    /// Items per inference call.
    pub batch_size: usize,
    /// How long a partial batch waits for more items.
    pub max_batch_delay: Duration,
    /// Where the model runs.
    pub device: Device,
}

impl ModelRuntime {
    /// The batch size a batch of `n` items runs at: the model's fixed batch; on a GPU the next
    /// power of two up to `batch_size` (padding), so the session sees a few shapes only (cuDNN
    /// tunes its kernels once per shape); else `n`.
    pub fn run_size(&self, n: usize) -> usize {
        match (self.plan.fixed_batch, self.device) {
            (Some(f), _) => f.max(n),
            (None, Device::Cuda(_)) => n.next_power_of_two().min(self.batch_size).max(n),
            (None, Device::Cpu) => n,
        }
    }
}

impl std::fmt::Debug for ModelRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelRuntime")
            .field("device", &self.device)
            .field("gpu_preprocess", &self.gpu.is_some())
            .field("batch_size", &self.batch_size)
            .finish_non_exhaustive()
    }
}

impl ModelRuntime {
    /// Loads the model and fits the manifest's preprocessing to it.
    pub(crate) fn load(
        manifest: &Manifest,
        files: &ModelFiles,
        intra_op_threads: Option<usize>,
        device: DeviceSpec,
        loader: &dyn EngineLoader,
    ) -> Result<Self, JobError> {
        let opts = EngineOptions {
            input: manifest.raw.model.input.clone(),
            output: manifest.raw.model.output.clone(),
            intra_op_threads: intra_op_threads.unwrap_or(manifest.raw.model.intra_op_threads),
            device,
            cuda: CudaOptions::from_manifest(&manifest.raw.model),
            tokens: files.tokenizer.is_some(),
        };
        let model_bytes = &files.model;
        if let Some(tokenizer) = &files.tokenizer {
            return Self::load_text(manifest, model_bytes, tokenizer, &opts, loader);
        }
        if device != DeviceSpec::Cpu && manifest.raw.preprocess.device != PreprocessDevice::Cpu {
            crate::gpu::compile_kernels_early();
        }
        let mut engine = loader.load(model_bytes, &opts)?;
        let plan = plan_input(manifest, engine.info())?;
        let image = ImagePreprocessor::new(manifest, &plan);
        let device = engine.device();
        let float = engine
            .info()
            .input
            .float
            .unwrap_or(crate::engine::Float::F32);
        let want = manifest.raw.preprocess.device;
        let gpu = match (device, want) {
            (_, PreprocessDevice::Cpu) => None,
            (Device::Cpu, PreprocessDevice::Gpu) => return Err(EngineError::Mismatch {
                field: "preprocess.device",
                message:
                    "gpu needs the model on a GPU (model.device = cuda); it runs on the CPU here"
                        .into(),
            }
            .into()),
            (Device::Cpu, PreprocessDevice::Auto) => None,
            (Device::Cuda(n), _) => {
                match GpuPreprocessor::new(n, TensorSpec::for_images(&image, float))
                    .map_err(|e| e.to_string())
                    .and_then(|g| Ok((g, engine.device_allocator().map_err(|e| e.to_string())?)))
                {
                    Ok((g, a)) => Some((Mutex::new(g), Mutex::new(a))),
                    Err(e) if want == PreprocessDevice::Gpu => {
                        return Err(
                            EngineError::Runtime(format!("preprocess.device = gpu: {e}")).into(),
                        )
                    }
                    Err(e) => {
                        warn!(error = %e, "preprocessing on the CPU: the GPU path is not usable");
                        None
                    }
                }
            }
        };
        info!(job = %manifest.job_id, device = %device, gpu_preprocess = gpu.is_some(),
              input = ?engine.info().input.element, "model loaded");
        let target = if gpu.is_some() {
            ImageTarget::Pixels
        } else {
            ImageTarget::Tensor
        };
        Ok(Self {
            batch_size: plan.fixed_batch.unwrap_or(manifest.raw.model.batch_size),
            max_batch_delay: Duration::from_millis(manifest.raw.model.max_batch_delay_ms),
            pre: Box::new(image.with_target(target)),
            plan,
            engine: Mutex::new(engine),
            gpu,
            tokenizer: None,
            device,
        })
    }

    /// Loads a text model: its tokenizer (with the job's `max_length`) and the model, fed by the
    /// token inputs' names.
    fn load_text(
        manifest: &Manifest,
        model_bytes: &[u8],
        tokenizer: &(String, bytes::Bytes),
        opts: &EngineOptions,
        loader: &dyn EngineLoader,
    ) -> Result<Self, JobError> {
        let (url, bytes) = tokenizer;
        let tokenizer =
            spotbatch_text::TextTokenizer::from_bytes(bytes, url.as_str(), manifest.max_length())
                .map_err(|e| JobError::File {
                field: "preprocess.tokenizer",
                message: e.to_string(),
            })?;
        let tokenizer = Arc::new(tokenizer);
        let engine = loader.load(model_bytes, opts)?;
        let plan = crate::model::plan_text(manifest, engine.info())?;
        let device = engine.device();
        info!(job = %manifest.job_id, device = %device, inputs = ?engine.info().token_inputs,
              "text model loaded");
        Ok(Self {
            batch_size: plan.fixed_batch.unwrap_or(manifest.raw.model.batch_size),
            max_batch_delay: Duration::from_millis(manifest.raw.model.max_batch_delay_ms),
            pre: Box::new(TextPreprocessor::new(Arc::clone(&tokenizer))),
            plan,
            engine: Mutex::new(engine),
            gpu: None,
            tokenizer: Some(tokenizer),
            device,
        })
    }

    /// Items of a shard in the pipeline at which the next shard starts feeding: two batches, or
    /// for texts the length window (so it stays full across shards).
    pub fn low_water(&self) -> usize {
        match self.tokenizer {
            Some(_) => text_window(self.batch_size),
            None => 2 * self.batch_size,
        }
    }
}

/// The files a model runtime is made from: the model's bytes, and a text model's tokenizer (its
/// URL and bytes).
pub(crate) struct ModelFiles {
    pub(crate) model: bytes::Bytes,
    pub(crate) tokenizer: Option<(String, bytes::Bytes)>,
}

/// The window of a text runtime, in items: how many may be held for sorting.
fn text_window(batch_size: usize) -> usize {
    spotbatch_text::BatcherConfig::new(
        std::num::NonZeroUsize::new(batch_size.max(1)).unwrap_or(std::num::NonZeroUsize::MIN),
    )
    .window
    .get()
}

//! Running one batch: on the CPU (the items' values packed into one input, padded to the run
//! size) or on the GPU (the input written there by the GPU preprocessing, run through IO
//! binding). A batch that fails is run again item by item: items that fail alone get error rows;
//! if every item fails, the model is broken and their shards' attempts fail.

use std::sync::Arc;
use std::time::Instant;

use spotbatch_proto::OutputRow;
use tracing::warn;

use super::post::{self, Ran};
use super::{Decoded, ToShard};
use crate::cost::CostMeter;
use crate::engine::{BatchOutput, DeviceAllocator, DeviceTensor, EngineError, InferenceEngine};
use crate::error::{ItemError, ShardError};
use crate::gpu::{GpuError, GpuPreprocessor, Prepared};
use crate::preprocess::{ModelInput, Pixels};
use crate::runtime::ModelRuntime;

/// Why a batch could not run.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BatchError {
    /// The engine failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The GPU preprocessing failed.
    #[error(transparent)]
    Gpu(#[from] GpuError),
    /// The model's output does not have the batch's shape.
    #[error("{0}")]
    Shape(String),
    /// Items preprocessed for the other path (a bug's symptom).
    #[error("{0}")]
    Mixed(&'static str),
    /// A thread panicked holding a lock.
    #[error("{0} lock poisoned")]
    Poisoned(&'static str),
}

/// Allocates the batch's input tensor on the GPU and starts writing it there.
pub(crate) fn prepare_on_gpu(
    rt: &ModelRuntime,
    gpu: &(
        std::sync::Mutex<GpuPreprocessor>,
        std::sync::Mutex<DeviceAllocator>,
    ),
    items: &[Decoded],
) -> Result<(DeviceTensor, Prepared), BatchError> {
    let t0 = Instant::now();
    let pixels: Vec<&Pixels> = items
        .iter()
        .filter_map(|d| match &d.input {
            ModelInput::Pixels(p) => Some(p),
            ModelInput::Values(_) | ModelInput::Tokens(_) => None,
        })
        .collect();
    if pixels.len() != items.len() {
        return Err(BatchError::Mixed(
            "GPU preprocessing got CPU-preprocessed items",
        ));
    }
    let run_n = rt.run_size(items.len());
    let mut tensor = gpu
        .1
        .lock()
        .map_err(|_| BatchError::Poisoned("GPU allocator"))?
        .tensor(&input_shape(rt, run_n))?;
    let prepared = gpu
        .0
        .lock()
        .map_err(|_| BatchError::Poisoned("GPU preprocessor"))?
        .prepare(&pixels, run_n, Some(tensor.ptr()))?;
    metrics::histogram!("spotbatch_stage_seconds", "stage" => "gpu_preprocess")
        .record(t0.elapsed().as_secs_f64());
    Ok((tensor, prepared))
}

/// Runs one batch; its rows are made on the post thread (`post`). If the batch fails, each item
/// is run alone: items that fail alone get error rows; if every item fails, their shards fail
/// (the model is broken). `prepared` is the batch's input on the GPU when it was preprocessed
/// there.
pub(crate) fn run_batch(
    rt: &ModelRuntime,
    batch: Vec<Decoded>,
    prepared: Option<Result<(DeviceTensor, Prepared), BatchError>>,
    post: &crossbeam_channel::Sender<Ran>,
) {
    let Ok(mut engine) = rt.engine.lock() else {
        for d in &batch {
            let e = BatchError::Poisoned("engine");
            d.work
                .send(ToShard::Fail(ShardError::Pipeline(e.to_string())));
        }
        return;
    };
    let mut t0 = Instant::now();
    let result = match prepared {
        Some(p) => p.and_then(|(t, p)| infer_gpu(engine.as_mut(), rt, t, &p, batch.len(), &mut t0)),
        None => infer_cpu(engine.as_mut(), rt, &batch),
    };
    match result {
        Ok(out) => {
            metrics::histogram!("spotbatch_inference_seconds").record(t0.elapsed().as_secs_f64());
            metrics::histogram!("spotbatch_batch_size").record(batch.len() as f64);
            charge_items(&batch);
            if let Err(crossbeam_channel::SendError(r)) = post.send(Ran { out, batch }) {
                post::send_rows(r);
            }
        }
        Err(batch_err) if batch.len() == 1 => {
            for d in batch {
                d.work
                    .send(ToShard::Fail(ShardError::Pipeline(batch_err.to_string())));
            }
        }
        Err(batch_err) => {
            warn!(error = %batch_err, "batch failed; running its items one by one");
            let singles: Vec<Result<BatchOutput, BatchError>> = batch
                .iter()
                .map(|d| infer_one(engine.as_mut(), rt, d))
                .collect();
            let all_failed = singles.iter().all(|r| r.is_err());
            let ran: Vec<&Decoded> = batch
                .iter()
                .zip(&singles)
                .filter(|(_, r)| r.is_ok())
                .map(|(d, _)| d)
                .collect();
            charge_items(&ran);
            for (d, r) in batch.into_iter().zip(singles) {
                match (r, all_failed) {
                    (Err(e), true) => d
                        .work
                        .send(ToShard::Fail(ShardError::Pipeline(e.to_string()))),
                    (Err(e), false) => {
                        let error = ItemError::Inference(e.to_string());
                        let row =
                            OutputRow::failed(d.key, d.work.ctx.post.kind(), error.to_string());
                        d.work.send(ToShard::Row(d.idx, row));
                    }
                    (Ok(out), _) => post::send_row(&out, 0, d),
                }
            }
        }
    }
}

/// Tells the cost meter which jobs' items the model just ran.
fn charge_items<D: std::borrow::Borrow<Decoded>>(batch: &[D]) {
    let mut per_job: Vec<(&Arc<CostMeter>, &str, u64)> = Vec::new();
    for d in batch.iter().map(|d| d.borrow()) {
        let m = &d.work.cost;
        let job = d.work.ctx.manifest.job_id.as_str();
        match per_job.iter_mut().find(|(_, j, _)| *j == job) {
            Some(e) => e.2 += 1,
            None => per_job.push((m, job, 1)),
        }
    }
    for (m, job, n) in per_job {
        m.inferred(job, n);
    }
}

/// The model's full input shape for `run_n` items.
fn input_shape(rt: &ModelRuntime, run_n: usize) -> Vec<i64> {
    let mut shape = Vec::with_capacity(rt.plan.item_shape.len() + 1);
    shape.push(run_n as i64);
    shape.extend_from_slice(&rt.plan.item_shape);
    shape
}

thread_local! {
    /// The batch input of CPU-preprocessed items, kept between batches: a batch is tens of MB,
    /// and a fresh buffer each time costs a page fault per 4 KiB as it is written.
    static BATCH_INPUT: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs CPU-preprocessed items (padding to a fixed batch size); texts are packed and padded to
/// their batch's longest item.
fn infer_cpu(
    engine: &mut dyn InferenceEngine,
    rt: &ModelRuntime,
    items: &[Decoded],
) -> Result<BatchOutput, BatchError> {
    if let Some(tokenizer) = &rt.tokenizer {
        return infer_tokens(engine, tokenizer, items);
    }
    let n = items.len();
    let run_n = rt.run_size(n);
    BATCH_INPUT.with_borrow_mut(|input| {
        input.clear();
        for d in items {
            match &d.input {
                ModelInput::Values(v) => input.extend_from_slice(v),
                ModelInput::Pixels(_) => {
                    return Err(BatchError::Mixed("CPU inference got GPU-bound pixels"))
                }
                ModelInput::Tokens(_) => {
                    return Err(BatchError::Mixed("an image model got a text"))
                }
            }
        }
        input.resize(run_n * rt.plan.item_len, 0.0);
        let out = engine.run(input, &input_shape(rt, run_n))?;
        check_batch(out, run_n)
    })
}

/// Runs a batch of texts: their tokens padded to the longest, fed by name.
fn infer_tokens(
    engine: &mut dyn InferenceEngine,
    tokenizer: &spotbatch_text::TextTokenizer,
    items: &[Decoded],
) -> Result<BatchOutput, BatchError> {
    let encoded = items
        .iter()
        .map(|d| match &d.input {
            ModelInput::Tokens(t) => Ok(t),
            _ => Err(BatchError::Mixed(
                "a text model got an item that is not text",
            )),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let batch = tokenizer.pack(encoded);
    metrics::histogram!("spotbatch_padding_efficiency_ratio").record(batch.padding_efficiency());
    let out = engine.run_tokens(&batch)?;
    check_batch(out, items.len())
}

/// Runs a batch whose input was written on the GPU. The wait for that writing to finish is
/// timed as the `gpu_wait` stage, and `started` moves past it (the model's time starts after).
fn infer_gpu(
    engine: &mut dyn InferenceEngine,
    rt: &ModelRuntime,
    tensor: DeviceTensor,
    p: &Prepared,
    n: usize,
    started: &mut Instant,
) -> Result<BatchOutput, BatchError> {
    let run_n = rt.run_size(n);
    p.wait()?;
    metrics::histogram!("spotbatch_stage_seconds", "stage" => "gpu_wait")
        .record(started.elapsed().as_secs_f64());
    *started = Instant::now();
    let out = engine.run_device(tensor)?;
    check_batch(out, run_n)
}

/// Runs one item alone, on the path it was preprocessed for.
fn infer_one(
    engine: &mut dyn InferenceEngine,
    rt: &ModelRuntime,
    d: &Decoded,
) -> Result<BatchOutput, BatchError> {
    match (&d.input, &rt.gpu) {
        (ModelInput::Pixels(_), Some(gpu)) => {
            let (t, p) = prepare_on_gpu(rt, gpu, std::slice::from_ref(d))?;
            infer_gpu(engine, rt, t, &p, 1, &mut Instant::now())
        }
        _ => infer_cpu(engine, rt, std::slice::from_ref(d)),
    }
}

fn check_batch(out: BatchOutput, run_n: usize) -> Result<BatchOutput, BatchError> {
    if out.shape.first().copied() != Some(run_n) {
        return Err(BatchError::Shape(format!(
            "model output shape {:?} does not start with the batch size {run_n}",
            out.shape
        )));
    }
    Ok(out)
}

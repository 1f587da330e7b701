//! The engine thread: forms batches across items, shards and jobs that share one model runtime
//! (by arrival for images, by length for texts: [`super::policy`]), then runs them. A batch preprocessed on the GPU is packed, copied up and its kernels started here, then
//! handed to the infer thread, so that the next batch's packing, copy and kernels overlap the
//! model's compute on the current one; rows are made on the post thread.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{debug, warn};

use super::infer::{self, BatchError};
use super::policy::Batching;
use super::post::{self, Ran};
use super::{Decoded, ShardWork};
use crate::engine::DeviceTensor;
use crate::gpu::Prepared;
use crate::runtime::ModelRuntime;

/// A batch whose input is being written on the GPU, on its way to the infer thread.
struct InFlight {
    rt: Arc<ModelRuntime>,
    items: Vec<Decoded>,
    prepared: Result<(DeviceTensor, Prepared), BatchError>,
}

/// The engine thread: fills batches (across shards, and across jobs that share a model) up to
/// the batch size or until the oldest item has waited `max_batch_delay_ms`, then runs them. A
/// batch preprocessed on the GPU is packed, copied up and its kernels started here, then handed
/// to the infer thread, so that the next batch's packing, copy and kernels overlap the model's
/// compute on the current one.
pub(crate) fn engine_loop(
    rx: crossbeam_channel::Receiver<Decoded>,
    throttle: Option<Duration>,
    mut processed_log: Option<std::fs::File>,
) {
    // Rows are made on their own thread, so the model's thread goes straight on to the next
    // batch. Should the thread not start, the sends fail and run_batch makes the rows itself.
    let (post_tx, post_rx) = crossbeam_channel::bounded::<Ran>(2);
    let post = std::thread::Builder::new()
        .name("post".into())
        .spawn(move || {
            while let Ok(r) = post_rx.recv() {
                post::send_rows(r);
            }
        });
    let (gpu_tx, gpu_rx) = crossbeam_channel::bounded::<InFlight>(1);
    let infer_post = post_tx.clone();
    let infer = std::thread::Builder::new()
        .name("infer".into())
        .spawn(move || {
            while let Ok(f) = gpu_rx.recv() {
                finish_gpu(f, &infer_post);
            }
        });
    let mut batching: Vec<Batching> = Vec::new();
    let mut dispatch = |rt: &Arc<ModelRuntime>, items: Vec<Decoded>| {
        let items: Vec<Decoded> = items
            .into_iter()
            .filter(|d| !d.work.cancel.is_cancelled())
            .collect();
        if items.is_empty() {
            return;
        }
        if let Some(f) = processed_log.as_mut() {
            use std::io::Write;
            let keys: String = items.iter().map(|d| format!("{}\n", d.key)).collect();
            let _ = f.write_all(keys.as_bytes());
        }
        metrics::histogram!("spotbatch_batch_fill_ratio")
            .record(items.len() as f64 / rt.batch_size.max(1) as f64);
        if tracing::enabled!(tracing::Level::DEBUG) {
            let mut jobs: Vec<&str> = items
                .iter()
                .map(|d| d.work.ctx.manifest.job_id.as_str())
                .collect();
            jobs.sort_unstable();
            jobs.dedup();
            let mut shards: Vec<*const ShardWork> =
                items.iter().map(|d| Arc::as_ptr(&d.work)).collect();
            shards.sort_unstable();
            shards.dedup();
            debug!(items = items.len(), shards = shards.len(), jobs = jobs.len(),
                   device = %rt.device, "batch dispatched");
        }
        match (&rt.gpu, &infer) {
            (Some(gpu), Ok(_)) => {
                let prepared = infer::prepare_on_gpu(rt, gpu, &items);
                let next = InFlight {
                    rt: Arc::clone(rt),
                    items,
                    prepared,
                };
                if let Err(crossbeam_channel::SendError(f)) = gpu_tx.send(next) {
                    finish_gpu(f, &post_tx);
                }
            }
            _ => infer::run_batch(rt, items, None, &post_tx),
        }
        if let Some(pause) = throttle {
            std::thread::sleep(pause);
        }
    };
    loop {
        let next = match batching.iter().filter_map(Batching::deadline).min() {
            Some(t) => rx.recv_deadline(t),
            None => rx
                .recv()
                .map_err(|_| crossbeam_channel::RecvTimeoutError::Disconnected),
        };
        match next {
            Ok(d) if d.work.cancel.is_cancelled() => {}
            Ok(d) => {
                let rt = Arc::clone(&d.work.ctx.runtime);
                let at = match batching.iter().position(|b| Arc::ptr_eq(&b.rt, &rt)) {
                    Some(i) => i,
                    None => {
                        batching.push(Batching::new(Arc::clone(&rt)));
                        batching.len() - 1
                    }
                };
                if let Some(items) = batching[at].push(d, Instant::now()) {
                    dispatch(&rt, items);
                }
            }
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                let now = Instant::now();
                for b in &mut batching {
                    if let Some(items) = b.due(now) {
                        let rt = Arc::clone(&b.rt);
                        dispatch(&rt, items);
                    }
                }
                // A runtime no batch is forming for any more is forgotten (its jobs may be done).
                batching.retain(|b| b.deadline().is_some());
            }
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                let now = Instant::now();
                for b in &mut batching {
                    while let Some(items) = b.flush(now) {
                        let rt = Arc::clone(&b.rt);
                        dispatch(&rt, items);
                    }
                }
                break;
            }
        }
    }
    drop(gpu_tx);
    if let Ok(t) = infer {
        let _ = t.join();
    }
    drop(post_tx);
    if let Ok(t) = post {
        let _ = t.join();
    }
}

fn finish_gpu(f: InFlight, post: &crossbeam_channel::Sender<Ran>) {
    let prepared = f.prepared;
    if let Err(e) = &prepared {
        warn!(error = %e, "GPU preprocessing failed for a batch");
    }
    debug!(items = f.items.len(), "running a GPU-preprocessed batch");
    infer::run_batch(&f.rt, f.items, Some(prepared), post);
}

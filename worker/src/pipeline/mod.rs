//! The pipeline: keeps the model busy with the items of the shards in work.
//!
//! ```text
//!  shard in work ── item source (fetches concurrently) ──► decode queue (bounded)
//!                                                             │
//!      decode threads: the job's preprocessor, item → model input │ bad input → error row
//!                                                             ▼
//!      infer queue (bounded) ──► engine thread: batches across items, shards and jobs that
//!                                share a model; runs it (GPU batches: packed here, run on the
//!                                infer thread) ──► post thread: rows, back to each item's shard
//! ```
//!
//! Memory is bounded by the queues' capacities, the fetch concurrency and the shards held. The
//! modules: [`feed`] (one shard's items in, its rows out, the drain's cutoff), [`decode`] (the
//! decode threads), [`batch`] (the engine thread's batching), [`infer`] (running a batch, item by
//! item when it fails), [`post`] (rows from a batch's output).

pub(crate) mod batch;
pub(crate) mod decode;
pub(crate) mod feed;
pub(crate) mod infer;
pub(crate) mod policy;
pub(crate) mod post;

use std::sync::atomic::AtomicIsize;
use std::sync::{Arc, Mutex};

use spotbatch_proto::OutputRow;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::cost::CostMeter;
use crate::error::ShardError;
use crate::job::JobContext;
use crate::options::WorkerOptions;
use crate::preprocess::ModelInput;
use crate::sink::Row;
use crate::source::Payload;

pub(crate) use feed::Collected;

/// A message from the pipeline to a shard.
#[derive(Debug)]
pub(crate) enum ToShard {
    /// Item `idx`'s row, from the pipeline.
    Row(usize, OutputRow),
    /// Item `idx`'s row kept from a partial result (it never entered the pipeline).
    Kept(usize, Row),
    /// The whole attempt must fail (the model cannot run, storage is down).
    Fail(ShardError),
}

/// One shard in work, as the pipeline's stages see it.
pub(crate) struct ShardWork {
    pub(crate) ctx: Arc<JobContext>,
    tx: mpsc::UnboundedSender<ToShard>,
    pub(crate) cancel: CancellationToken,
    pub(crate) cost: Arc<CostMeter>,
}

impl ShardWork {
    pub(crate) fn send(&self, msg: ToShard) {
        // The shard may have stopped (lease lost, interrupted); its rows are no longer wanted.
        let _ = self.tx.send(msg);
    }
}

/// An item read by its source, on its way to the decode threads.
pub(crate) struct Fetched {
    pub(crate) work: Arc<ShardWork>,
    pub(crate) idx: usize,
    pub(crate) key: String,
    pub(crate) payload: Payload,
}

/// An item's model input, on its way to the engine thread.
pub(crate) struct Decoded {
    pub(crate) work: Arc<ShardWork>,
    pub(crate) idx: usize,
    pub(crate) key: String,
    pub(crate) input: ModelInput,
}

/// A worker's pipeline: its threads and the queue into them.
pub(crate) struct Pipeline {
    decode_tx: async_channel::Sender<Fetched>,
    /// Items fed into the pipeline and not yet back as rows, over every shard.
    in_pipeline: AtomicIsize,
    fetch_concurrency: usize,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
}

impl Pipeline {
    /// Starts the decode threads and the engine thread.
    pub(crate) fn start(opts: &WorkerOptions) -> std::io::Result<Self> {
        let (decode_tx, decode_rx) = async_channel::bounded::<Fetched>(64);
        let (infer_tx, infer_rx) = crossbeam_channel::bounded::<Decoded>(128);
        let mut threads = Vec::new();
        for i in 0..opts.decode_threads.max(1) {
            let (rx, tx) = (decode_rx.clone(), infer_tx.clone());
            threads.push(
                std::thread::Builder::new()
                    .name(format!("decode-{i}"))
                    .spawn(move || decode::decode_loop(rx, tx))?,
            );
        }
        drop((decode_rx, infer_tx));
        let processed_log = match &opts.processed_log {
            Some(path) => Some(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?,
            ),
            None => None,
        };
        let throttle = opts.throttle_batch;
        threads.push(
            std::thread::Builder::new()
                .name("engine".into())
                .spawn(move || batch::engine_loop(infer_rx, throttle, processed_log))?,
        );
        Ok(Self {
            decode_tx,
            in_pipeline: AtomicIsize::new(0),
            fetch_concurrency: opts.fetch_concurrency.max(1),
            threads: Mutex::new(threads),
        })
    }

    /// Closes the decode queue and waits for the threads to drain and exit.
    pub(crate) async fn close(&self) {
        self.decode_tx.close();
        let threads = self
            .threads
            .lock()
            .map(|mut t| std::mem::take(&mut *t))
            .unwrap_or_default();
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
    }
}

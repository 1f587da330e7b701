//! The local runner behind `spotbatch run`: a whole job on this machine in one process — the
//! embedded SQLite queue (one per job in the file unless the URI names one), planning and
//! enqueueing, workers in the process, and the summary read back from the done markers and the
//! dead-letter queue. Running the same manifest again resumes: finished shards are skipped, and
//! leases left in the queue file by a killed run are reclaimed at once (the run holds the file's
//! lock, so nobody else can hold them).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use spotbatch_plan::{enqueue_plan, plan_job, Plan, PlanError, SubmitReport};
use spotbatch_proto::manifest::DeviceSpec;
use spotbatch_proto::{DoneMarker, Manifest, ShardTask};
use spotbatch_queue::sqlite::SqliteQueue;
use spotbatch_queue::{LeaseQueue, QueueConfig, QueueError};
use spotbatch_store::{JobLayout, Prices, StorageError};

use crate::control::Control;
use crate::job::Jobs;
use crate::lease::run_worker;
use crate::options::{default_decode_threads, WorkerOptions};
use crate::progress::Progress;

/// Why a local run could not start or finish.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LocalError {
    /// `run` takes the embedded queue only.
    #[error(
        "queue.uri: `spotbatch run` uses the embedded SQLite queue; {0} is for distributed workers"
    )]
    NotLocal(String),
    /// The queue file is in use by another run, or cannot be locked.
    #[error("{path}: {message}")]
    Locked {
        /// The queue file.
        path: String,
        /// Why.
        message: String,
    },
    /// The queue failed.
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// Planning or enqueueing failed.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// Storage failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A worker task panicked.
    #[error("a worker crashed: {0}")]
    Crashed(String),
}

/// How the local workers run.
#[derive(Debug, Clone)]
pub struct LocalOptions {
    /// Workers in the process, each with its own model session.
    pub workers: usize,
    /// Shards each worker holds at once.
    pub prefetch: usize,
    /// Threads per worker decoding inputs (default: half the cores).
    pub decode_threads: Option<usize>,
    /// ONNX Runtime intra-op threads (default: the manifest's).
    pub ort_threads: Option<usize>,
    /// Where models run (default: the manifest's).
    pub device: Option<DeviceSpec>,
    /// Testing knob: pause after every batch.
    pub throttle_batch: Option<Duration>,
    /// What the machine costs.
    pub prices: Option<Prices>,
}

/// A job planned and on its queue, ready to run.
pub struct Prepared {
    manifest: Manifest,
    queue: Arc<dyn LeaseQueue>,
    _lock: std::fs::File,
    /// The plan.
    pub plan: Plan,
    /// The job's output layout.
    pub layout: JobLayout,
    /// What enqueueing found already done.
    pub submitted: SubmitReport,
    /// Leases left by an interrupted run, put back on the queue.
    pub reclaimed: u64,
}

/// Opens the job's queue (holding its file's lock), reclaims leases a killed run left, plans the
/// job, stores its manifest and enqueues the shards that are not done.
pub async fn prepare(m: &Manifest) -> Result<Prepared, LocalError> {
    if !m.queue_uri.starts_with("sqlite://") {
        return Err(LocalError::NotLocal(m.queue_uri.clone()));
    }
    let plan = plan_job(m).await?;
    prepare_planned(m, plan).await
}

/// [`prepare`] with the job planned already (by the checks `run` makes first).
pub async fn prepare_planned(m: &Manifest, plan: Plan) -> Result<Prepared, LocalError> {
    if !m.queue_uri.starts_with("sqlite://") {
        return Err(LocalError::NotLocal(m.queue_uri.clone()));
    }
    let queue = open_local_queue(m).await?;
    let lock = lock_queue_file(queue.path())?;
    // We hold the file: any lease still in it belongs to a run that was killed.
    let reclaimed = queue.reclaim_all_leases().await?;
    let layout = JobLayout::for_manifest(m)?;
    spotbatch_plan::store_plan(&layout, m, &plan).await?;
    let submitted = enqueue_plan(&queue, &layout, &plan).await?;
    Ok(Prepared {
        manifest: m.clone(),
        queue: Arc::new(queue),
        _lock: lock,
        plan,
        layout,
        submitted,
        reclaimed,
    })
}

/// The SQLite queue for a job run locally: the manifest's file, and unless the URI names a queue,
/// one queue per job so jobs sharing a file never take each other's shards.
async fn open_local_queue(m: &Manifest) -> Result<SqliteQueue, QueueError> {
    let (path, named) = spotbatch_queue::sqlite::parse_uri(&m.queue_uri)?;
    let queue = if m.queue_uri.contains("queue=") {
        named
    } else {
        m.job_id.clone()
    };
    let config = QueueConfig {
        max_attempts: m.raw.queue.max_attempts,
    };
    SqliteQueue::open(&path, &queue, config).await
}

/// Holds an exclusive lock on `<queue file>.lock` while a `run` uses the queue.
fn lock_queue_file(db: &Path) -> Result<std::fs::File, LocalError> {
    let lock_path = PathBuf::from(format!("{}.lock", db.display()));
    let locked = |message: String| LocalError::Locked {
        path: db.display().to_string(),
        message,
    };
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| locked(format!("cannot open {}: {e}", lock_path.display())))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(locked(
            "another `spotbatch run` is using this queue; wait for it or point queue.uri elsewhere"
                .into(),
        )),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(locked(format!("cannot lock {}: {e}", lock_path.display())))
        }
    }
}

/// A shard the queue gave up on.
#[derive(Debug, Clone)]
pub struct DeadShard {
    /// The queue's id for it (the shard id).
    pub id: String,
    /// Its position in the plan, when the message is a shard.
    pub index: Option<u32>,
    /// Its first and last keys, when the message is a shard.
    pub keys: Option<(String, String)>,
    /// Deliveries it had.
    pub deliveries: u32,
    /// Why it was given up on.
    pub reason: String,
}

/// How a local run ended.
#[derive(Debug)]
pub struct Finished {
    /// Done markers of the planned shards.
    pub done: Vec<DoneMarker>,
    /// Rows in them.
    pub items: u64,
    /// Error rows in them.
    pub errors: u64,
    /// Items processed in this run.
    pub processed: u64,
    /// Stopped at once (a signal): leases released.
    pub interrupted: bool,
    /// Dead-lettered shards.
    pub dead: Vec<DeadShard>,
}

impl Prepared {
    /// Runs `opts.workers` workers until the queue is drained or `control` stops them;
    /// `progress` is updated as rows are written.
    pub async fn run(
        self,
        opts: &LocalOptions,
        progress: Arc<Progress>,
        control: Control,
    ) -> Result<Finished, LocalError> {
        let mut workers = tokio::task::JoinSet::new();
        for i in 0..opts.workers.max(1) {
            let wopts = WorkerOptions {
                id: format!("run-{}-{i}", std::process::id()),
                prefetch: opts.prefetch,
                decode_threads: opts.decode_threads.unwrap_or_else(default_decode_threads),
                exit_when_empty: true,
                throttle_batch: opts.throttle_batch,
                prices: opts.prices.clone(),
                ..WorkerOptions::default()
            };
            let jobs =
                Jobs::new([self.manifest.clone()], opts.ort_threads).with_device(opts.device);
            workers.spawn(run_worker(
                Arc::clone(&self.queue),
                jobs,
                wopts,
                Arc::clone(&progress),
                control.clone(),
                None,
            ));
        }
        let mut worker_error = None;
        while let Some(r) = workers.join_next().await {
            match r {
                Ok(Ok(())) => {}
                Ok(Err(e)) => worker_error = Some(LocalError::Queue(e)),
                Err(e) => worker_error = Some(LocalError::Crashed(e.to_string())),
            }
        }
        if let Some(e) = worker_error {
            return Err(e);
        }
        let planned: HashSet<&str> = self.plan.shards.iter().map(|s| s.shard.as_str()).collect();
        let done: Vec<DoneMarker> = self
            .layout
            .done_markers()
            .await?
            .into_iter()
            .filter(|d| planned.contains(d.shard.as_str()))
            .collect();
        let dead = if control.stop.is_cancelled() {
            Vec::new()
        } else {
            self.queue
                .dead_letters(1000)
                .await?
                .into_iter()
                .map(|d| {
                    let task = ShardTask::from_bytes(&d.body).ok();
                    DeadShard {
                        index: task.as_ref().map(|t| t.index),
                        keys: task.as_ref().map(|t| {
                            (
                                t.keys.first().cloned().unwrap_or_default(),
                                t.keys.last().cloned().unwrap_or_default(),
                            )
                        }),
                        id: d.id,
                        deliveries: d.delivery_count,
                        reason: d.reason,
                    }
                })
                .collect()
        };
        use std::sync::atomic::Ordering;
        Ok(Finished {
            items: done.iter().map(|d| d.items).sum(),
            errors: done.iter().map(|d| d.errors).sum(),
            done,
            processed: progress.items_ok.load(Ordering::Relaxed)
                + progress.items_failed.load(Ordering::Relaxed),
            interrupted: control.stop.is_cancelled(),
            dead,
        })
    }
}

//! The worker: a lease loop feeding a pipeline that keeps the model busy.
//!
//! ```text
//!  lease loop ──► shard tasks (≤ prefetch leased; one feeds at a time, the rest wait unstarted)
//!                   │ fetch inputs concurrently (object_store)
//!                   ▼
//!             decode queue (bounded) ──► decode threads: decode, convert, resize, normalise
//!                                              │ bad input → error row straight to its shard
//!                                              ▼
//!                                    infer queue (bounded) ──► engine thread: batches across
//!                                                              items and shards, runs the model,
//!                                                              post-processes, rows to shards
//!  shard task: all rows in → part file → done marker → ack      (a heartbeat extends the lease)
//! ```
//!
//! Memory is bounded by the queues' capacities, the fetch concurrency and the prefetch depth.
//! A shard whose lease is lost stops at once and writes nothing; a shard that fails is released
//! with its error (the queue dead-letters it after `max_attempts`).

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use futures::StreamExt;
use spotbatch_coordinator::{GetError, JobLayout, StorageError};
use spotbatch_proto::api::HandedShard;
use spotbatch_proto::{sha256_hex, DoneMarker, OutputRow, ShardTask};
use spotbatch_queue::{Lease, LeaseQueue, QueueError};
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::cost::CostMeter;
use crate::engine::{BatchOutput, DeviceAllocator, DeviceTensor};
use crate::gpu::{GpuPreprocessor, Pixels, Prepared};
use crate::job::{JobContext, Jobs, ModelRuntime};
use crate::steal::{Deque, Given, Keeper, Pace, PeerConn, StealState, Stealing, Word};

/// How a worker runs.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// Names the worker in logs and metrics.
    pub id: String,
    /// Shards held at once (one in work, the rest leased-but-unstarted so the model never waits).
    pub prefetch: usize,
    /// Threads decoding and preprocessing images.
    pub decode_threads: usize,
    /// Inputs fetched at once per shard.
    pub fetch_concurrency: usize,
    /// How long one `lease` call waits for work.
    pub lease_wait: Duration,
    /// Stop when the queue has nothing visible or in flight (for `run`); otherwise wait for work.
    pub exit_when_empty: bool,
    /// Testing knob: sleep this long after every inference batch, to make a worker slow.
    pub throttle_batch: Option<Duration>,
    /// Lease length; default: the longest of the known jobs' `queue.visibility_timeout_secs`,
    /// else 60 s.
    pub visibility: Option<Duration>,
    /// Measurement knob: append the key of every item the model ran on to this file (the chaos
    /// test counts work redone from it, also for workers that were SIGKILLed).
    pub processed_log: Option<std::path::PathBuf>,
    /// What this worker's machine costs; `None`: cost is not accounted.
    pub prices: Option<crate::cost::Prices>,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        Self {
            id: format!("worker-{}", std::process::id()),
            prefetch: 2,
            decode_threads: default_decode_threads(),
            fetch_concurrency: 16,
            lease_wait: Duration::from_secs(1),
            exit_when_empty: true,
            throttle_batch: None,
            visibility: None,
            processed_log: None,
            prices: None,
        }
    }
}

/// Registers the worker's series at zero, so that a scrape before the first event already shows
/// them and the first event is an increase (Prometheus's `rate()` and `histogram_quantile()` see
/// nothing in a series that appears with its first value already counted).
pub fn register_metrics() {
    for reason in ["preemption", "shutdown", "failed"] {
        metrics::counter!("spotbatch_leases_released_total", "reason" => reason).increment(0);
    }
    for source in ["signal", "aws", "gcp", "azure"] {
        metrics::counter!("spotbatch_preemption_notices_total", "source" => source).increment(0);
    }
    metrics::counter!("spotbatch_redeliveries_total").increment(0);
    metrics::counter!("spotbatch_items_redone_total").increment(0);
    metrics::counter!("spotbatch_lease_errors_total").increment(0);
    for h in [
        "spotbatch_recovery_seconds",
        "spotbatch_notice_to_release_seconds",
        "spotbatch_inference_seconds",
        "spotbatch_batch_size",
        "spotbatch_batch_fill_ratio",
    ] {
        // Registering is enough: the exporter renders an empty histogram (count 0).
        let _ = metrics::histogram!(h);
    }
}

/// Half the cores for decoding, at least one: the model's own threads take the rest.
pub fn default_decode_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get() / 2)
        .unwrap_or(1)
        .max(1)
}

/// Live counters, shared with whoever shows progress.
#[derive(Debug, Default)]
pub struct Progress {
    /// Rows written without error.
    pub items_ok: AtomicU64,
    /// Rows written with an error.
    pub items_failed: AtomicU64,
    /// Shards written and acked.
    pub shards_done: AtomicU64,
    /// Shards found already done when leased (acked without work).
    pub shards_skipped: AtomicU64,
    /// Shard attempts that failed and were released.
    pub attempts_failed: AtomicU64,
    /// Shards held right now (waiting or in work).
    pub shards_in_flight: AtomicUsize,
    /// Leased shards waiting for their turn (what peers may steal).
    pub unstarted: AtomicUsize,
    /// Shards in work right now: shard → job (reported in coordinator heartbeats).
    pub current: std::sync::Mutex<std::collections::BTreeMap<String, String>>,
    /// Shard outcomes not reported yet; collected only when `collect_outcomes` is set.
    pub outcomes: std::sync::Mutex<Vec<ShardOutcome>>,
    /// Whether to collect outcomes (a coordinator link drains them).
    pub collect_outcomes: std::sync::atomic::AtomicBool,
    /// Jobs cancelled at the coordinator: their shards are acked without work.
    pub cancelled: std::sync::RwLock<std::collections::HashSet<String>>,
}

/// What became of a shard a worker leased.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardOutcome {
    /// The job.
    pub job: String,
    /// The shard.
    pub shard: String,
    /// `done`, `skipped`, `failed`, `released`, `lease_lost` or `cancelled`.
    pub outcome: &'static str,
    /// Rows written.
    pub items: u64,
    /// Error rows.
    pub errors: u64,
    /// Why (failures).
    pub reason: String,
}

impl Progress {
    fn record(
        &self,
        task: &ShardTask,
        outcome: &'static str,
        items: u64,
        errors: u64,
        reason: &str,
    ) {
        if !self.collect_outcomes.load(Ordering::Relaxed) {
            return;
        }
        if let Ok(mut o) = self.outcomes.lock() {
            // Bounded: a coordinator away for long loses the oldest reports, not memory.
            if o.len() >= 10_000 {
                o.remove(0);
            }
            o.push(ShardOutcome {
                job: task.job.clone(),
                shard: task.shard.clone(),
                outcome,
                items,
                errors,
                reason: reason.to_string(),
            });
        }
    }

    /// The shard is held (waiting or in work): counted and reported in heartbeats.
    fn hold(&self, task: &ShardTask) {
        self.shards_in_flight.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut c) = self.current.lock() {
            c.insert(task.shard.clone(), task.job.clone());
        }
    }

    fn unhold(&self, task: &ShardTask) {
        let held = self
            .current
            .lock()
            .map(|mut c| c.remove(&task.shard).is_some())
            .unwrap_or(false);
        if held {
            self.shards_in_flight.fetch_sub(1, Ordering::Relaxed);
        }
    }

    fn is_cancelled(&self, job: &str) -> bool {
        self.cancelled
            .read()
            .map(|c| c.contains(job))
            .unwrap_or(false)
    }
}

/// How a worker is told to stop: the two-phase drain with a deadline, or at once.
#[derive(Debug, Clone, Default)]
pub struct Control {
    /// Stop leasing new shards (the drain's first step; alone, an AWS rebalance recommendation).
    pub stop_leasing: CancellationToken,
    drain: CancellationToken,
    drain_state: Arc<std::sync::Mutex<Option<(SystemTime, Instant)>>>,
    /// Stop now: release every lease at once and write nothing more.
    pub stop: CancellationToken,
}

impl Control {
    /// Starts draining: stop leasing; release unstarted shards at once; finish the in-flight
    /// shard if `deadline` allows, else write what is finished as a partial result and release it.
    pub fn drain(&self, deadline: SystemTime) {
        if let Ok(mut d) = self.drain_state.lock() {
            d.get_or_insert((deadline, Instant::now()));
        }
        self.stop_leasing.cancel();
        self.drain.cancel();
    }

    /// Stops at once: every lease released, nothing more written.
    pub fn stop_now(&self) {
        self.stop_leasing.cancel();
        self.drain.cancel();
        self.stop.cancel();
    }

    /// Whether a drain (or stop) was asked for.
    pub fn is_draining(&self) -> bool {
        self.drain.is_cancelled()
    }

    /// When in-flight work must stop so that it can be written and released by the deadline: a
    /// quarter of the time left is kept for that, at most 2 s.
    fn cutoff(&self) -> Instant {
        let deadline = self.drain_state.lock().ok().and_then(|d| d.map(|(t, _)| t));
        let left = deadline
            .and_then(|t| t.duration_since(SystemTime::now()).ok())
            .unwrap_or_default();
        Instant::now() + left - (left / 4).min(Duration::from_secs(2))
    }

    fn since_notice(&self) -> Option<Duration> {
        self.drain_state.lock().ok()?.map(|(_, at)| at.elapsed())
    }
}

/// What happened to one leased shard.
#[derive(Debug)]
enum Outcome {
    Done {
        items: u64,
        errors: u64,
    },
    AlreadyDone,
    Failed(String),
    LeaseLost(String),
    Interrupted,
    /// Drained before it started: handed back untouched.
    Unstarted,
    /// Drained mid-shard: the finished rows were written as a partial result.
    Partial {
        done: usize,
        total: usize,
    },
    /// A peer worked it and reported it done.
    HandedOver,
}

impl Outcome {
    /// Its name in ledgers and reports, and the rows it wrote.
    fn summary(&self) -> (&'static str, u64) {
        match self {
            Outcome::Done { items, .. } => ("done", *items),
            Outcome::AlreadyDone => ("skipped", 0),
            Outcome::Failed(_) => ("failed", 0),
            Outcome::LeaseLost(_) => ("lease_lost", 0),
            Outcome::Interrupted => ("interrupted", 0),
            Outcome::Unstarted => ("released", 0),
            Outcome::Partial { done, .. } => ("partial", *done as u64),
            Outcome::HandedOver => ("handed_over", 0),
        }
    }
}

/// A message from the pipeline to a shard.
#[derive(Debug)]
enum ToShard {
    Row(usize, OutputRow),
    /// The whole shard must fail (the model cannot run, storage is down).
    Fail(String),
}

/// One shard in work, as the pipeline stages see it.
struct ShardWork {
    ctx: Arc<JobContext>,
    tx: mpsc::UnboundedSender<ToShard>,
    cancel: CancellationToken,
    cost: Arc<CostMeter>,
}

impl ShardWork {
    fn send(&self, msg: ToShard) {
        // The shard may have stopped (lease lost, interrupted); its rows are no longer wanted.
        let _ = self.tx.send(msg);
    }
}

struct Fetched {
    work: Arc<ShardWork>,
    idx: usize,
    key: String,
    bytes: Bytes,
}

/// One item's model input: preprocessed values (CPU path) or decoded pixels (GPU path).
enum Input {
    Values(Vec<f32>),
    Pixels(Pixels),
}

struct Decoded {
    work: Arc<ShardWork>,
    idx: usize,
    key: String,
    input: Input,
}

/// State shared by a worker's tasks.
pub(crate) struct Shared {
    queue: Arc<dyn LeaseQueue>,
    jobs: Jobs,
    opts: WorkerOptions,
    pub(crate) progress: Arc<Progress>,
    pub(crate) control: Control,
    decode_tx: async_channel::Sender<Fetched>,
    /// One shard feeds the pipeline at a time; the others wait here, unstarted.
    feed: Semaphore,
    /// What the machine costs, charged to jobs.
    cost: Arc<CostMeter>,
    /// The leased shards waiting for their turn to feed (what peers may steal).
    pub(crate) deque: Deque,
    /// Shards waiting for their turn to feed: the deque's and stolen ones.
    waiting: AtomicUsize,
    /// Measured pace, setting how many shards to hold.
    pub(crate) pace: Pace,
    /// Work stealing, when on.
    pub(crate) steal: Option<StealState>,
    /// Every shard task (leased or stolen); its length is the shards held.
    pub(crate) tasks: TaskTracker,
    /// A shard task ended: a slot is free.
    slot_freed: tokio::sync::Notify,
    /// A drain's offers to peers are over: the drain may release what is left.
    offers_done: CancellationToken,
    /// Items fed into the pipeline and not yet back as rows, over every shard.
    in_pipeline: std::sync::atomic::AtomicIsize,
}

impl Shared {
    /// Shards to hold now, from the measured pace, `--prefetch` and the lease timeout.
    fn target(&self) -> usize {
        let visibility = Duration::from_secs(visibility_secs(self));
        self.pace.target(self.opts.prefetch.max(1), visibility)
    }

    fn count_unstarted(&self) {
        let n = self.deque.len();
        self.progress.unstarted.store(n, Ordering::Relaxed);
        metrics::gauge!("spotbatch_unstarted_shards").set(n as f64);
    }

    /// Free slots: how many more shards to hold.
    pub(crate) fn room(&self) -> usize {
        self.target().saturating_sub(self.tasks.len())
    }
}

/// Runs a worker until the queue is empty (with `exit_when_empty`), or until `control` drains or
/// stops it (see [`Control`]).
pub async fn run_worker(
    queue: Arc<dyn LeaseQueue>,
    jobs: Jobs,
    opts: WorkerOptions,
    progress: Arc<Progress>,
    control: Control,
    steal: Option<Stealing>,
) -> Result<(), QueueError> {
    let (decode_tx, decode_rx) = async_channel::bounded::<Fetched>(64);
    let (infer_tx, infer_rx) = crossbeam_channel::bounded::<Decoded>(128);
    let mut threads = Vec::new();
    for i in 0..opts.decode_threads.max(1) {
        let (rx, tx) = (decode_rx.clone(), infer_tx.clone());
        threads.push(
            std::thread::Builder::new()
                .name(format!("decode-{i}"))
                .spawn(move || decode_loop(rx, tx))
                .map_err(|e| spawn_err(&queue, e))?,
        );
    }
    drop((decode_rx, infer_tx));
    let throttle = opts.throttle_batch;
    let processed_log = match &opts.processed_log {
        Some(path) => Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| spawn_err(&queue, e))?,
        ),
        None => None,
    };
    threads.push(
        std::thread::Builder::new()
            .name("engine".into())
            .spawn(move || engine_loop(infer_rx, throttle, processed_log))
            .map_err(|e| spawn_err(&queue, e))?,
    );

    // Always on: without prices it keeps the shard timeline that `spotbatch report` charts.
    let cost = Arc::new(CostMeter::new(&opts.id, opts.prices.clone()));
    let (steal, listener) = match steal {
        Some(s) => {
            let (st, listener) = StealState::new(s);
            (Some(st), Some(listener))
        }
        None => (None, None),
    };
    let shared = Arc::new(Shared {
        queue,
        jobs,
        progress,
        control,
        decode_tx,
        feed: Semaphore::new(1),
        opts,
        cost,
        deque: Deque::default(),
        waiting: AtomicUsize::new(0),
        pace: Pace::default(),
        steal,
        tasks: TaskTracker::new(),
        slot_freed: tokio::sync::Notify::new(),
        offers_done: CancellationToken::new(),
        in_pipeline: std::sync::atomic::AtomicIsize::new(0),
    });
    let peer_stop = CancellationToken::new();
    let peer_server = match listener {
        Some(listener) => {
            let token = shared.steal.as_ref().and_then(|s| s.token.clone());
            Some(crate::steal::serve(
                Arc::clone(&shared),
                listener,
                token,
                peer_stop.clone(),
            ))
        }
        None => None,
    };
    // A drain first offers unstarted shards to idle peers, then releases the rest.
    let offers = {
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            shared.control.drain.cancelled().await;
            if let Some(st) = &shared.steal {
                // Bounded: the release of what is not offered waits for this.
                let cutoff = shared.control.cutoff();
                let offers = crate::steal::offer_unstarted(&shared, st, cutoff);
                let _ = tokio::time::timeout(Duration::from_secs(3), offers).await;
            }
            shared.offers_done.cancel();
        })
    };
    let meter = {
        let (m, progress) = (Arc::clone(&shared.cost), Arc::clone(&shared.progress));
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(1));
            every.tick().await;
            loop {
                every.tick().await;
                m.tick(&held_jobs(&progress));
            }
        })
    };
    let mut result = lease_loop(Arc::clone(&shared)).await;
    meter.abort();
    offers.abort();
    peer_stop.cancel();
    if let Some(p) = peer_server {
        let _ = p.await;
    }
    shared.cost.tick(&held_jobs(&shared.progress));
    if let Some(since) = shared.control.since_notice() {
        shared
            .cost
            .notice(crate::cost::now_ms().saturating_sub(since.as_millis() as u64));
    }
    for ctx in shared.jobs.loaded_contexts().await {
        write_ledger(&shared.cost, &ctx).await;
    }
    // Every lease is acked or released by now: hand back what the queue holds for us.
    if let Err(e) = shared.queue.close().await {
        warn!(worker = %shared.opts.id, error = %e, "closing the queue failed");
        if result.is_ok() {
            result = Err(e);
        }
    }
    // Closing the decode queue lets the threads drain and exit.
    shared.decode_tx.close();
    drop(shared);
    let _ = tokio::task::spawn_blocking(move || {
        for t in threads {
            let _ = t.join();
        }
    })
    .await;
    result
}

fn spawn_err(queue: &Arc<dyn LeaseQueue>, e: std::io::Error) -> QueueError {
    QueueError::Backend {
        queue: queue.name().to_string(),
        backend: "worker",
        source: format!("cannot start a pipeline thread: {e}").into(),
    }
}

async fn lease_loop(shared: Arc<Shared>) -> Result<(), QueueError> {
    let mut next_steal = Instant::now();
    // A queue that cannot be reached is tried again and again (the machine may outlive the
    // outage), but less often the longer it lasts, and never in the way of a stop.
    let mut lease_backoff = crate::backoff::Backoff::new();
    let result = loop {
        if shared.control.stop_leasing.is_cancelled() {
            break Ok(());
        }
        let target = shared.target();
        metrics::gauge!("spotbatch_prefetch_depth").set(target as f64);
        let free = target.saturating_sub(shared.tasks.len());
        if free == 0 {
            // Wait for a slot (or stop).
            tokio::select! {
                _ = shared.slot_freed.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                _ = shared.control.stop_leasing.cancelled() => break Ok(()),
            }
            continue;
        }
        if shared.opts.exit_when_empty && shared.tasks.is_empty() {
            match shared.queue.depth().await {
                Ok(d) if d.pending() == 0 => break Ok(()),
                Ok(_) => {}
                Err(e) => warn!(worker = %shared.opts.id, error = %e, "queue depth failed"),
            }
        }
        let visibility = Duration::from_secs(visibility_secs(&shared));
        // While our own shards are in work, look again soon: a slot frees when one finishes.
        let wait = if shared.tasks.is_empty() {
            shared.opts.lease_wait
        } else {
            shared.opts.lease_wait.min(Duration::from_millis(100))
        };
        let t0 = Instant::now();
        let leases = tokio::select! {
            r = shared.queue.lease(free, visibility, wait) => r,
            _ = shared.control.stop_leasing.cancelled() => break Ok(()),
        };
        let leases = match leases {
            Ok(l) => {
                lease_backoff.reset();
                l
            }
            Err(e) => {
                let delay = lease_backoff.next_delay();
                warn!(worker = %shared.opts.id, error = %e, retry_in_ms = delay.as_millis() as u64, "lease failed; retrying");
                metrics::counter!("spotbatch_lease_errors_total").increment(1);
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shared.control.stop_leasing.cancelled() => break Ok(()),
                }
                continue;
            }
        };
        if !leases.is_empty() {
            shared.pace.lease_took(t0.elapsed());
            for lease in leases {
                let s = Arc::clone(&shared);
                spawn_shard(&shared, async move { handle_lease(&s, lease).await });
            }
            continue;
        }
        // Nothing for us in the queue and nothing waiting to start: idle, so steal.
        let idle = shared.waiting.load(Ordering::Relaxed) == 0;
        if let (Some(st), true) = (&shared.steal, idle && Instant::now() >= next_steal) {
            match crate::steal::steal(st, free).await {
                Some((owner, shards)) => {
                    let conn = match st.conn(&owner) {
                        Ok(c) => c,
                        Err(e) => {
                            warn!(error = %e, "cannot reach the shards' owner");
                            continue;
                        }
                    };
                    for h in shards {
                        spawn_stolen(&shared, h, conn.clone(), st.handoff_timeout);
                    }
                    next_steal = Instant::now();
                }
                None => next_steal = Instant::now() + Duration::from_secs(1),
            }
        }
    };
    // Interrupted or finished: let every shard task release or finish.
    shared.tasks.close();
    shared.tasks.wait().await;
    result
}

/// Runs a shard task on the worker's tracker; its end frees a slot.
fn spawn_shard<F>(shared: &Arc<Shared>, f: F)
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let s = Arc::clone(shared);
    shared.tasks.spawn(async move {
        f.await;
        s.slot_freed.notify_one();
    });
}

/// Works a shard handed over by a peer (stolen, or offered by a draining peer).
pub(crate) fn spawn_stolen(
    shared: &Arc<Shared>,
    h: HandedShard,
    owner: PeerConn,
    timeout: Duration,
) {
    let s = Arc::clone(shared);
    spawn_shard(
        shared,
        async move { handle_stolen(&s, h, owner, timeout).await },
    );
}

/// The visibility timeout: the manifest's for known jobs (all jobs of a worker share a queue, so
/// the largest), else the default.
fn visibility_secs(shared: &Shared) -> u64 {
    match shared.opts.visibility {
        Some(v) => v.as_secs().max(1),
        None => shared.jobs.max_visibility_secs().unwrap_or(60),
    }
}

async fn handle_lease(shared: &Shared, lease: Lease) {
    let q = &shared.queue;
    let task = match ShardTask::from_bytes(&lease.body) {
        Ok(t) => t,
        Err(e) => {
            warn!(worker = %shared.opts.id, item = %lease.id, error = %e, "dead-lettering a message that is not ours");
            if let Err(e) = q.dead_letter(&lease, &e.to_string()).await {
                warn!(item = %lease.id, error = %e, "dead-letter failed");
            }
            return;
        }
    };
    // Handed back (released or expired) until leased again: the recovery time.
    let recovery_s = lease.released_at.map(|back| {
        SystemTime::now()
            .duration_since(back)
            .unwrap_or_default()
            .as_secs_f64()
    });
    if let Some(secs) = recovery_s {
        metrics::histogram!("spotbatch_recovery_seconds").record(secs);
    }
    if lease.delivery_count > 1 {
        metrics::counter!("spotbatch_redeliveries_total").increment(1);
        info!(worker = %shared.opts.id, shard = %task.shard, delivery = lease.delivery_count, "working a redelivered shard");
    }
    if shared.progress.is_cancelled(&task.job) {
        // Cancelled at the coordinator: drop the shard without work.
        let _ = q.ack(std::slice::from_ref(&lease)).await;
        shared.progress.record(&task, "cancelled", 0, 0, "");
        metrics::counter!("spotbatch_shards_total", "job" => task.job.clone(), "outcome" => "cancelled")
            .increment(1);
        return;
    }
    shared.progress.hold(&task);
    let leased_at_ms = crate::cost::now_ms();
    let visibility = Duration::from_secs(visibility_secs(shared));
    let keeper = Keeper::queue(Arc::clone(&shared.queue), lease.clone(), visibility);
    let outcome = loop {
        let given = match wait_turn(shared, Some(&lease), &keeper).await {
            Turn::Feed(permit) => {
                break timed_run(shared, &task, lease.delivery_count, &keeper, permit).await
            }
            Turn::Drained => break Outcome::Unstarted,
            Turn::Lost(reason) => break Outcome::LeaseLost(reason),
            Turn::Stopped => break Outcome::Interrupted,
            Turn::Given(g) => g,
        };
        // A peer works it now (and reports it in its heartbeats); the lease stays ours.
        shared.progress.unhold(&task);
        let (thief, at) = (given.thief.clone(), given.at);
        match handed_over(shared, given, &keeper).await {
            Back::Done => {
                info!(worker = %shared.opts.id, shard = %task.shard, thief = %thief, after_ms = at.elapsed().as_millis() as u64, "a peer finished a shard handed to it; acking");
                break Outcome::HandedOver;
            }
            Back::Failed(reason) => break Outcome::Failed(reason),
            Back::Drained => break Outcome::Unstarted,
            Back::Lost(reason) => break Outcome::LeaseLost(reason),
            Back::Stopped => break Outcome::Interrupted,
            Back::Returned(why) => {
                metrics::counter!("spotbatch_shards_handed_over_total", "direction" => "returned")
                    .increment(1);
                info!(worker = %shared.opts.id, shard = %task.shard, thief = %thief, why, "took a handed-over shard back");
                shared.progress.hold(&task);
            }
        }
    };
    // Extensions stop before the ack or release (an extension after a release would hide the
    // message again).
    drop(keeper);
    shared.progress.unhold(&task);
    shard_event(
        shared,
        &task,
        &outcome,
        leased_at_ms,
        lease.delivery_count,
        recovery_s,
    )
    .await;
    let job = task.job.clone();
    match outcome {
        Outcome::Done { .. } | Outcome::HandedOver => {
            // Acks need no retry: an un-acked shard is redelivered, found done, and acked then.
            if let Err(e) = q.ack(std::slice::from_ref(&lease)).await {
                warn!(job = %job, shard = %task.shard, error = %e, "ack failed; the shard will be redelivered and skipped");
            }
            match outcome {
                Outcome::Done { items, errors } => count_done(shared, &task, items, errors),
                _ => shared.progress.record(&task, "handed_over", 0, 0, ""),
            }
        }
        Outcome::AlreadyDone => {
            let _ = q.ack(std::slice::from_ref(&lease)).await;
            count_skipped(shared, &task);
        }
        Outcome::Failed(reason) => {
            warn!(worker = %shared.opts.id, job = %job, shard = %task.shard, attempt = lease.delivery_count, error = %reason, "shard failed; releasing it");
            count_failed(shared, &task, &reason);
            metrics::counter!("spotbatch_leases_released_total", "reason" => "failed").increment(1);
            if let Err(e) = q.release(std::slice::from_ref(&lease), Some(&reason)).await {
                warn!(shard = %task.shard, error = %e, "release failed; the lease will expire");
            }
        }
        Outcome::LeaseLost(reason) => {
            warn!(worker = %shared.opts.id, shard = %task.shard, error = %reason, "lease lost; stopped work on the shard");
            shared.progress.record(&task, "lease_lost", 0, 0, &reason);
            metrics::counter!("spotbatch_shards_total", "job" => job, "outcome" => "lease_lost")
                .increment(1);
        }
        Outcome::Interrupted => {
            metrics::counter!("spotbatch_leases_released_total", "reason" => "shutdown")
                .increment(1);
            if let Err(e) = q.release(std::slice::from_ref(&lease), None).await {
                warn!(shard = %task.shard, error = %e, "release failed; the lease will expire");
            }
            info!(shard = %task.shard, "released on shutdown");
        }
        Outcome::Unstarted => {
            release_for_preemption(shared, &lease).await;
            if let Some(t) = shared.control.since_notice() {
                metrics::histogram!("spotbatch_notice_to_release_seconds").record(t.as_secs_f64());
                info!(worker = %shared.opts.id, shard = %task.shard, after_ms = t.as_millis() as u64, "released an unstarted shard after the notice");
            }
        }
        Outcome::Partial { done, total } => {
            release_for_preemption(shared, &lease).await;
            info!(worker = %shared.opts.id, shard = %task.shard, done, total, "wrote a partial result and released the shard");
        }
    }
}

/// Runs a shard whose turn has come; a shard done is a measurement of the worker's pace.
async fn timed_run(
    shared: &Shared,
    task: &ShardTask,
    attempt: u32,
    keeper: &Keeper,
    permit: tokio::sync::SemaphorePermit<'_>,
) -> Outcome {
    let t0 = Instant::now();
    let o = run_shard(shared, task, attempt, keeper, permit).await;
    if matches!(o, Outcome::Done { .. }) {
        shared.pace.shard_took(t0.elapsed());
    }
    o
}

/// Puts the shard's bar on the cost ledger's timeline and writes the ledger.
async fn shard_event(
    shared: &Shared,
    task: &ShardTask,
    outcome: &Outcome,
    started_ms: u64,
    attempt: u32,
    recovery_s: Option<f64>,
) {
    let (name, items) = outcome.summary();
    shared.cost.shard(
        &task.job,
        crate::cost::ShardEvent {
            shard: task.shard.clone(),
            leased_at_ms: started_ms,
            ended_at_ms: crate::cost::now_ms(),
            outcome: name.to_string(),
            items,
            attempt,
            recovery_s,
        },
    );
    if let Ok(ctx) = shared.jobs.context(task).await {
        write_ledger(&shared.cost, &ctx).await;
    }
}

fn count_done(shared: &Shared, task: &ShardTask, items: u64, errors: u64) {
    let p = &shared.progress;
    p.items_ok.fetch_add(items - errors, Ordering::Relaxed);
    p.items_failed.fetch_add(errors, Ordering::Relaxed);
    p.shards_done.fetch_add(1, Ordering::Relaxed);
    let job = task.job.clone();
    metrics::counter!("spotbatch_items_total", "job" => job.clone(), "outcome" => "ok")
        .increment(items - errors);
    metrics::counter!("spotbatch_items_total", "job" => job.clone(), "outcome" => "error")
        .increment(errors);
    metrics::counter!("spotbatch_shards_total", "job" => job, "outcome" => "done").increment(1);
    debug!(shard = %task.shard, items, errors, "shard done");
    p.record(task, "done", items, errors, "");
}

fn count_skipped(shared: &Shared, task: &ShardTask) {
    shared
        .progress
        .shards_skipped
        .fetch_add(1, Ordering::Relaxed);
    shared.progress.record(task, "skipped", 0, 0, "");
    metrics::counter!("spotbatch_shards_total", "job" => task.job.clone(), "outcome" => "skipped")
        .increment(1);
}

fn count_failed(shared: &Shared, task: &ShardTask, reason: &str) {
    shared
        .progress
        .attempts_failed
        .fetch_add(1, Ordering::Relaxed);
    shared.progress.record(task, "failed", 0, 0, reason);
    metrics::counter!("spotbatch_shards_total", "job" => task.job.clone(), "outcome" => "failed")
        .increment(1);
}

/// How a shard's wait for its turn to feed ended.
enum Turn<'a> {
    /// Its turn: the feed permit.
    Feed(tokio::sync::SemaphorePermit<'a>),
    /// A peer took it.
    Given(Given),
    /// Drained before its turn (after any offers to peers).
    Drained,
    /// The claim on it was lost.
    Lost(String),
    /// Stopped at once.
    Stopped,
}

/// Waits for the shard's turn to feed the pipeline. A leased shard (`lease` given) waits in the
/// deque, where a peer may take it; a stolen one just waits.
async fn wait_turn<'a>(shared: &'a Shared, lease: Option<&Lease>, keeper: &Keeper) -> Turn<'a> {
    let (seq, mut given) = lease
        .map(|l| shared.deque.enter(&l.body, l.delivery_count))
        .unzip();
    shared.waiting.fetch_add(1, Ordering::Relaxed);
    shared.count_unstarted();
    let taken = async {
        match given.as_mut() {
            Some(rx) => rx.await.ok(),
            None => std::future::pending().await,
        }
    };
    tokio::pin!(taken);
    // Whether `taken` has completed (it must not be polled again then).
    let mut settled = false;
    let turn = tokio::select! {
        p = shared.feed.acquire() => match p {
            Ok(p) => Turn::Feed(p),
            Err(_) => Turn::Stopped,
        },
        g = &mut taken => {
            settled = true;
            match g {
                Some(g) => Turn::Given(g),
                None => Turn::Stopped,
            }
        }
        _ = shared.control.drain.cancelled() => {
            // Offers to idle peers go first; what they do not take is released.
            tokio::select! {
                _ = shared.offers_done.cancelled() => Turn::Drained,
                g = &mut taken => {
                    settled = true;
                    match g {
                        Some(g) => Turn::Given(g),
                        None => Turn::Drained,
                    }
                }
            }
        }
        r = keeper.lost() => Turn::Lost(r),
        _ = shared.control.stop.cancelled() => Turn::Stopped,
    };
    shared.waiting.fetch_sub(1, Ordering::Relaxed);
    let turn = match (turn, seq) {
        (t @ Turn::Given(_), _) | (t, None) => t,
        (t, Some(seq)) if settled || shared.deque.leave(seq) => t,
        // Taken by a peer at the same moment: the hand-off (already on its way) wins.
        (t, Some(_)) => match taken.await {
            Some(g) => Turn::Given(g),
            None => t,
        },
    };
    shared.count_unstarted();
    turn
}

/// How a hand-off ended, for the owner.
enum Back {
    /// The thief wrote it: ack.
    Done,
    /// The thief's attempt failed: release with the error.
    Failed(String),
    /// Back in our hands (the thief gave it back, or went silent).
    Returned(&'static str),
    /// Drained while it was out and not reported by the cutoff: release it.
    Drained,
    Lost(String),
    Stopped,
}

/// The owner's side of a hand-off: keeps the lease (the keeper goes on extending it) until the
/// thief's word, or until the thief has been silent for the hand-off timeout.
async fn handed_over(shared: &Shared, given: Given, keeper: &Keeper) -> Back {
    let Some(st) = &shared.steal else {
        return Back::Returned("stealing is off");
    };
    let Given { id, mut words, .. } = given;
    let timeout = st.handoff_timeout;
    let silent = tokio::time::sleep(timeout);
    tokio::pin!(silent);
    let cutoff = tokio::time::sleep(Duration::from_secs(u64::MAX / 4));
    tokio::pin!(cutoff);
    let mut draining = false;
    let back = loop {
        tokio::select! {
            w = words.recv() => match w {
                Some(Word::Working) => silent.as_mut().reset(tokio::time::Instant::now() + timeout),
                Some(Word::Done) => break Back::Done,
                Some(Word::Failed(reason)) => break Back::Failed(reason),
                Some(Word::Released) => break Back::Returned("the peer gave it back"),
                None => break Back::Returned("the hand-off closed"),
            },
            _ = &mut silent => break Back::Returned("the peer went silent past the hand-off timeout"),
            r = keeper.lost() => break Back::Lost(r),
            _ = shared.control.stop.cancelled() => break Back::Stopped,
            _ = shared.control.drain.cancelled(), if !draining => {
                draining = true;
                cutoff.as_mut().reset(tokio::time::Instant::from_std(shared.control.cutoff()));
            }
            _ = &mut cutoff, if draining => break Back::Drained,
        }
    };
    st.forget(&id);
    back
}

/// A thief's side: works a shard handed over by its owner as if leased, keeping the hand-off
/// alive, and reports the outcome; the owner acks or releases.
async fn handle_stolen(shared: &Shared, h: HandedShard, owner: PeerConn, timeout: Duration) {
    let me = shared.opts.id.clone();
    let id = h.handoff_id.clone();
    let task = match ShardTask::from_bytes(&h.task) {
        Ok(t) => t,
        Err(e) => {
            let reason = format!("not a spotbatch shard: {e}");
            crate::steal::report_final(owner, &id, &me, "failed", 0, 0, reason).await;
            return;
        }
    };
    if shared.progress.is_cancelled(&task.job) {
        // Cancelled at the coordinator: the owner acks it unworked.
        crate::steal::report_final(owner, &id, &me, "done", 0, 0, String::new()).await;
        return;
    }
    shared.progress.hold(&task);
    let started_ms = crate::cost::now_ms();
    let keeper = Keeper::handoff(owner.clone(), id.clone(), me.clone(), timeout / 4);
    let outcome = match wait_turn(shared, None, &keeper).await {
        Turn::Feed(permit) => timed_run(shared, &task, h.delivery_count, &keeper, permit).await,
        Turn::Lost(reason) => Outcome::LeaseLost(reason),
        Turn::Drained | Turn::Given(_) => Outcome::Unstarted,
        Turn::Stopped => Outcome::Interrupted,
    };
    drop(keeper);
    shared.progress.unhold(&task);
    shard_event(shared, &task, &outcome, started_ms, h.delivery_count, None).await;
    let (state, items, errors, reason) = match outcome {
        Outcome::Done { items, errors } => {
            count_done(shared, &task, items, errors);
            ("done", items, errors, String::new())
        }
        Outcome::AlreadyDone | Outcome::HandedOver => {
            count_skipped(shared, &task);
            ("done", 0, 0, String::new())
        }
        Outcome::Failed(reason) => {
            warn!(worker = %me, shard = %task.shard, error = %reason, "a stolen shard failed; its owner releases it");
            count_failed(shared, &task, &reason);
            ("failed", 0, 0, reason)
        }
        Outcome::LeaseLost(reason) => {
            info!(worker = %me, shard = %task.shard, why = %reason, "stopped work on a stolen shard");
            return;
        }
        Outcome::Interrupted | Outcome::Unstarted | Outcome::Partial { .. } => {
            info!(worker = %me, shard = %task.shard, "giving a stolen shard back to its owner");
            ("released", 0, 0, String::new())
        }
    };
    crate::steal::report_final(owner, &id, &me, state, items, errors, reason).await;
}

/// The jobs of the shards this worker holds.
fn held_jobs(progress: &Progress) -> Vec<String> {
    progress
        .current
        .lock()
        .map(|c| c.values().cloned().collect())
        .unwrap_or_default()
}

/// Writes this worker's cost ledger for a job beside its output (`_cost/WORKER.json`).
async fn write_ledger(meter: &CostMeter, ctx: &JobContext) {
    let Some(ledger) = meter.ledger(&ctx.manifest.job_id) else {
        return;
    };
    let Ok(bytes) = serde_json::to_vec_pretty(&ledger) else {
        return;
    };
    let key = crate::cost::ledger_key(&ledger.worker);
    if let Err(e) = ctx.layout.prefix.put(&key, Bytes::from(bytes)).await {
        warn!(job = %ctx.manifest.job_id, error = %e, "writing the cost ledger failed");
    }
}

async fn release_for_preemption(shared: &Shared, lease: &Lease) {
    metrics::counter!("spotbatch_leases_released_total", "reason" => "preemption").increment(1);
    if let Err(e) = shared
        .queue
        .release(std::slice::from_ref(lease), None)
        .await
    {
        warn!(item = %lease.id, error = %e, "release failed; the lease will expire");
    }
}

/// One row of a shard: computed now, or carried over from a partial result.
enum Row {
    New(OutputRow),
    Kept { line: String, error: bool },
}

impl Row {
    fn is_error(&self) -> bool {
        match self {
            Row::New(r) => r.error.is_some(),
            Row::Kept { error, .. } => *error,
        }
    }

    fn write(&self, out: &mut Vec<u8>) -> Result<(), String> {
        match self {
            Row::New(r) => serde_json::to_writer(&mut *out, r)
                .map_err(|e| format!("cannot encode row for {}: {e}", r.key))?,
            Row::Kept { line, .. } => out.extend_from_slice(line.as_bytes()),
        }
        out.push(b'\n');
        Ok(())
    }
}

/// How far the shard's pipeline got.
enum Collected {
    /// Every row.
    Complete(Vec<Row>),
    /// Drained: the rows finished by the cutoff (by index), and how many there are.
    Partial(Vec<Option<Row>>),
    /// Drained before it fed anything.
    Unstarted,
}

/// Works a shard whose turn to feed has come (`permit`): skips it if done, resumes it from a
/// partial result, else runs it whole; writes the part file and the done marker. `keeper` holds
/// the claim on it (the queue lease, or a hand-off from its owner).
async fn run_shard(
    shared: &Shared,
    task: &ShardTask,
    attempt: u32,
    keeper: &Keeper,
    permit: tokio::sync::SemaphorePermit<'_>,
) -> Outcome {
    let ctx = match shared.jobs.context(task).await {
        Ok(c) => c,
        Err(e) => return Outcome::Failed(e.to_string()),
    };
    let done_key = JobLayout::done_key(&task.shard);
    match ctx.layout.prefix.exists(&done_key).await {
        Ok(true) => return Outcome::AlreadyDone,
        Ok(false) => {}
        Err(e) => return Outcome::Failed(e.to_string()),
    }
    // Rows a drained worker finished before handing the shard back: not done again.
    let kept = match read_partial(&ctx, &task.shard).await {
        Ok(k) => k,
        Err(e) => return Outcome::Failed(e),
    };
    if !kept.is_empty() {
        info!(worker = %shared.opts.id, shard = %task.shard, kept = kept.len(), total = task.keys.len(), "resuming a shard from its partial result");
    }
    if attempt > 1 {
        // Items of a redelivered shard beyond its partial result may have been computed by the
        // previous holder: an upper bound on work redone.
        let redo = task
            .keys
            .iter()
            .filter(|k| !kept.contains_key(k.as_str()))
            .count();
        metrics::counter!("spotbatch_items_redone_total").increment(redo as u64);
        shared.cost.redone(&task.job, redo as u64);
    }
    let cancel = shared.control.stop.child_token();
    let work = tokio::select! {
        o = process_shard(shared, &ctx, task, cancel.clone(), kept, permit) => o,
        lost = keeper.lost() => Err(Outcome::LeaseLost(lost)),
        _ = shared.control.stop.cancelled() => Err(Outcome::Interrupted),
    };
    cancel.cancel();
    let (key, rows, outcome) = match work {
        Ok(Collected::Complete(rows)) => (JobLayout::part_key(&task.shard), rows, None),
        Ok(Collected::Partial(rows)) => {
            let total = rows.len();
            let rows: Vec<Row> = rows.into_iter().flatten().collect();
            let done = rows.len();
            (
                partial_key(&task.shard),
                rows,
                Some(Outcome::Partial { done, total }),
            )
        }
        Ok(Collected::Unstarted) => return Outcome::Unstarted,
        Err(outcome) => return outcome,
    };
    // Write the part whole, then the done marker, then (the caller) ack. A partial result is
    // written the same way, without a marker, and the shard is released.
    let t0 = Instant::now();
    let mut body = Vec::with_capacity(rows.len() * 128);
    let mut errors = 0;
    for row in &rows {
        errors += u64::from(row.is_error());
        if let Err(e) = row.write(&mut body) {
            return Outcome::Failed(e);
        }
    }
    let marker = DoneMarker {
        job: task.job.clone(),
        shard: task.shard.clone(),
        items: rows.len() as u64,
        errors,
        part: key.clone(),
        sha256: sha256_hex(&body),
    };
    let complete = outcome.is_none();
    let write = async {
        ctx.layout.prefix.put(&key, Bytes::from(body)).await?;
        if complete {
            let marker = serde_json::to_vec(&marker).unwrap_or_default();
            ctx.layout
                .prefix
                .put(&done_key, Bytes::from(marker))
                .await?;
            ctx.layout.prefix.delete(&partial_key(&task.shard)).await?;
        }
        Ok::<(), StorageError>(())
    };
    let written: Result<(), StorageError> = tokio::select! {
        w = write => w,
        lost = keeper.lost() => return Outcome::LeaseLost(lost),
    };
    if let Err(e) = written {
        return Outcome::Failed(e.to_string());
    }
    metrics::histogram!("spotbatch_stage_seconds", "stage" => "write")
        .record(t0.elapsed().as_secs_f64());
    outcome.unwrap_or(Outcome::Done {
        items: rows.len() as u64,
        errors,
    })
}

/// Key of a shard's partial result (rows finished before a drain; the keys in it are the cursor).
fn partial_key(shard: &str) -> String {
    format!("_partial/{shard}.jsonl")
}

/// Reads a shard's partial result: each kept row's JSON line, by key.
async fn read_partial(
    ctx: &JobContext,
    shard: &str,
) -> Result<std::collections::HashMap<String, Row>, String> {
    let mut kept = std::collections::HashMap::new();
    let Some(bytes) = ctx
        .layout
        .prefix
        .get_opt(&partial_key(shard))
        .await
        .map_err(|e| e.to_string())?
    else {
        return Ok(kept);
    };
    for line in String::from_utf8_lossy(&bytes).lines() {
        // A line that does not parse is not kept: that item is simply done again.
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if let Some(key) = v.get("key").and_then(|k| k.as_str()) {
            let error = !v.get("error").is_none_or(|e| e.is_null());
            kept.insert(
                key.to_string(),
                Row::Kept {
                    line: line.to_string(),
                    error,
                },
            );
        }
    }
    Ok(kept)
}

/// How the feeding of a shard ended: the items handed to the pipeline (all of them unless
/// drained), and the feed permit, which the collector gives up once few are left in the pipeline.
struct Fed<'a> {
    items: usize,
    permit: tokio::sync::SemaphorePermit<'a>,
}

/// Feeds the shard's inputs (those not kept from a partial result) into the pipeline and collects
/// one row per key, in key order. On a drain, feeding stops and rows are collected until the
/// drain's cutoff.
async fn process_shard(
    shared: &Shared,
    ctx: &Arc<JobContext>,
    task: &ShardTask,
    cancel: CancellationToken,
    mut kept: std::collections::HashMap<String, Row>,
    permit: tokio::sync::SemaphorePermit<'_>,
) -> Result<Collected, Outcome> {
    let n = task.keys.len();
    let mut rows: Vec<Option<Row>> = task.keys.iter().map(|k| kept.remove(k.as_str())).collect();
    let todo: Vec<(usize, String)> = task
        .keys
        .iter()
        .enumerate()
        .filter(|(i, _)| rows[*i].is_none())
        .map(|(i, k)| (i, k.clone()))
        .collect();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let work = Arc::new(ShardWork {
        ctx: Arc::clone(ctx),
        tx,
        cancel,
        cost: shared.cost.clone(),
    });
    let (fed_tx, mut fed_rx) = tokio::sync::oneshot::channel::<Fed>();
    // This shard's items fed and not yet collected.
    let outstanding = std::sync::atomic::AtomicIsize::new(0);
    let feed = async {
        let max_bytes = ctx.manifest.raw.input.max_bytes;
        // Each fetch is a task of its own: it goes on while the pipeline has no room for its
        // result yet (an object store's request needs polling to progress), and its time is the
        // store's alone, not the wait for room. Dropped unfinished (a drain), it is aborted.
        let fetches = futures::stream::iter(todo.clone())
            .map(|(idx, key)| {
                let ctx = Arc::clone(ctx);
                tokio_util::task::AbortOnDropHandle::new(tokio::spawn(async move {
                    let t0 = Instant::now();
                    let r = ctx.input.get(&key, max_bytes).await;
                    metrics::histogram!("spotbatch_stage_seconds", "stage" => "fetch")
                        .record(t0.elapsed().as_secs_f64());
                    (idx, key, r)
                }))
            })
            .buffered(shared.opts.fetch_concurrency.max(1));
        futures::pin_mut!(fetches);
        let mut fed = 0;
        while let Some(fetched) = fetches.next().await {
            if work.cancel.is_cancelled() || shared.control.drain.is_cancelled() {
                break;
            }
            let (idx, key, r) = match fetched {
                Ok(f) => f,
                // A fetch that panicked: the attempt fails and is retried.
                Err(e) => {
                    work.send(ToShard::Fail(format!("reading an input failed: {e}")));
                    break;
                }
            };
            // Counted before it goes in, so its row cannot overtake the count.
            outstanding.fetch_add(1, Ordering::Relaxed);
            shared.in_pipeline.fetch_add(1, Ordering::Relaxed);
            match r {
                Ok(bytes) => {
                    let item = Fetched {
                        work: Arc::clone(&work),
                        idx,
                        key,
                        bytes,
                    };
                    // A full pipeline must not hold up a drain.
                    let sent = tokio::select! {
                        r = shared.decode_tx.send(item) => r.is_ok(),
                        _ = shared.control.drain.cancelled() => false,
                    };
                    if !sent {
                        break;
                    }
                }
                // Missing or oversized inputs are the item's problem: an error row.
                Err(e @ GetError::TooLarge { .. })
                | Err(e @ GetError::Storage(StorageError::NotFound { .. })) => {
                    work.send(ToShard::Row(
                        idx,
                        OutputRow::failed(key, ctx.post.kind(), e.to_string()),
                    ));
                }
                // Anything else is the store's: fail the attempt, it is retried.
                Err(GetError::Storage(e)) => {
                    work.send(ToShard::Fail(e.to_string()));
                    break;
                }
            }
            fed += 1;
        }
        let _ = fed_tx.send(Fed { items: fed, permit });
    };
    let low_water = 2 * ctx.runtime.batch_size;
    let collect = async {
        let mut permit: Option<tokio::sync::SemaphorePermit<'_>> = None;
        let mut have = 0;
        let mut fed: Option<usize> = None;
        let mut draining = false;
        let cutoff = tokio::time::sleep(Duration::from_secs(u64::MAX / 4));
        tokio::pin!(cutoff);
        loop {
            if have == todo.len() {
                return Ok(true);
            }
            // The next shard starts feeding when the pipeline (this shard and any before it) is
            // down to two batches: the model keeps busy, shards not needed yet stay unstarted (in
            // the deque, where peers may take them) and a drain finds at most one shard started.
            if fed.is_some() && shared.in_pipeline.load(Ordering::Relaxed) <= low_water as isize {
                drop(permit.take());
            }
            // Drained and everything fed is back: a partial result. (Feeding that stopped for a
            // store error is followed by its Fail message, which ends the shard instead.)
            if draining && fed.is_some_and(|f| have >= f) {
                return Ok(false);
            }
            tokio::select! {
                m = rx.recv() => match m {
                    Some(ToShard::Row(idx, row)) => {
                        if let Some(slot) = rows.get_mut(idx) {
                            if slot.is_none() {
                                have += 1;
                                if outstanding.fetch_sub(1, Ordering::Relaxed) > 0 {
                                    shared.in_pipeline.fetch_sub(1, Ordering::Relaxed);
                                } else {
                                    outstanding.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                            *slot = Some(Row::New(row));
                        }
                    }
                    Some(ToShard::Fail(reason)) => return Err(Outcome::Failed(reason)),
                    None => return Err(Outcome::Failed("pipeline stopped".into())),
                },
                end = &mut fed_rx, if fed.is_none() => match end {
                    Ok(end) => {
                        fed = Some(end.items);
                        permit = Some(end.permit);
                    }
                    Err(_) => return Err(Outcome::Failed("pipeline stopped".into())),
                },
                _ = shared.control.drain.cancelled(), if !draining => {
                    draining = true;
                    cutoff.as_mut().reset(tokio::time::Instant::from_std(shared.control.cutoff()));
                }
                _ = &mut cutoff, if draining => return Ok(false),
            }
        }
    };
    let (_, complete) = tokio::join!(feed, collect);
    // Items of this shard never collected (it stopped early) are no longer in the pipeline.
    let left = outstanding.swap(0, Ordering::Relaxed);
    shared.in_pipeline.fetch_sub(left.max(0), Ordering::Relaxed);
    work.cancel.cancel();
    match complete {
        Ok(true) => Ok(Collected::Complete(rows.into_iter().flatten().collect())),
        Ok(false) if rows.iter().all(Option::is_none) => Ok(Collected::Unstarted),
        Ok(false) => {
            debug_assert_eq!(rows.len(), n);
            Ok(Collected::Partial(rows))
        }
        Err(Outcome::Unstarted) => Ok(Collected::Unstarted),
        Err(o) => Err(o),
    }
}

/// Extends the lease every third of the visibility timeout. Returns only when the lease is lost
/// (or cannot be extended before it runs out), with the reason.
///
/// Retry policy: extensions retry aggressively (every second until the deadline), because losing
/// a lease wastes the work done on it; a `LeaseLost` answer is final.
pub(crate) async fn heartbeat(
    queue: &dyn LeaseQueue,
    lease: &Lease,
    visibility: Duration,
) -> String {
    let period = (visibility / 3).max(Duration::from_millis(100));
    let mut deadline = lease.deadline;
    loop {
        tokio::time::sleep(period).await;
        loop {
            match queue.extend(lease, visibility).await {
                Ok(d) => {
                    deadline = d;
                    break;
                }
                Err(e @ QueueError::LeaseLost { .. }) => return e.to_string(),
                Err(e) => {
                    if std::time::SystemTime::now() + Duration::from_secs(1) >= deadline {
                        return format!("could not extend the lease before it ran out: {e}");
                    }
                    warn!(item = %lease.id, error = %e, "lease extension failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }
}

fn decode_loop(rx: async_channel::Receiver<Fetched>, tx: crossbeam_channel::Sender<Decoded>) {
    while let Ok(item) = rx.recv_blocking() {
        if item.work.cancel.is_cancelled() {
            continue;
        }
        let t0 = Instant::now();
        let rt = &item.work.ctx.runtime;
        let pre = &rt.pre;
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
            if rt.gpu.is_some() {
                pre.decode_pixels(&item.bytes).map(Input::Pixels)
            } else {
                let mut values = Vec::with_capacity(rt.plan.item_len);
                pre.process(&item.bytes, &mut values)
                    .map(|()| Input::Values(values))
            }
        }))
        .unwrap_or_else(|_| Err("the image decoder crashed on this input".into()));
        metrics::histogram!("spotbatch_stage_seconds", "stage" => "decode")
            .record(t0.elapsed().as_secs_f64());
        match result {
            Ok(input) => {
                let d = Decoded {
                    work: item.work,
                    idx: item.idx,
                    key: item.key,
                    input,
                };
                if tx.send(d).is_err() {
                    return;
                }
            }
            Err(reason) => {
                let row = OutputRow::failed(item.key, item.work.ctx.post.kind(), reason);
                item.work.send(ToShard::Row(item.idx, row));
            }
        }
    }
}

/// A batch being filled: items of jobs that share one model runtime.
struct Filling {
    rt: Arc<ModelRuntime>,
    items: Vec<Decoded>,
    until: Instant,
}

/// A batch whose input is being written on the GPU, on its way to the infer thread.
struct InFlight {
    rt: Arc<ModelRuntime>,
    items: Vec<Decoded>,
    prepared: Result<(DeviceTensor, Prepared), String>,
}

/// The engine thread: fills batches (across shards, and across jobs that share a model) up to
/// the batch size or until the oldest item has waited `max_batch_delay_ms`, then runs them. A
/// batch preprocessed on the GPU is packed, copied up and its kernels started here, then handed
/// to the infer thread, so that the next batch's packing, copy and kernels overlap the model's
/// compute on the current one.
fn engine_loop(
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
                send_rows(r);
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
    let mut filling: Vec<Filling> = Vec::new();
    let mut dispatch = |batch: Filling| {
        let items: Vec<Decoded> = batch
            .items
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
            .record(items.len() as f64 / batch.rt.batch_size.max(1) as f64);
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
                   device = %batch.rt.device, "batch dispatched");
        }
        match (&batch.rt.gpu, &infer) {
            (Some(gpu), Ok(_)) => {
                let prepared = prepare_on_gpu(&batch.rt, gpu, &items);
                let next = InFlight {
                    rt: batch.rt,
                    items,
                    prepared,
                };
                if let Err(crossbeam_channel::SendError(f)) = gpu_tx.send(next) {
                    finish_gpu(f, &post_tx);
                }
            }
            _ => run_batch(&batch.rt, items, None, &post_tx),
        }
        if let Some(pause) = throttle {
            std::thread::sleep(pause);
        }
    };
    loop {
        let next = match filling.iter().map(|b| b.until).min() {
            Some(t) => rx.recv_deadline(t),
            None => rx
                .recv()
                .map_err(|_| crossbeam_channel::RecvTimeoutError::Disconnected),
        };
        match next {
            Ok(d) if d.work.cancel.is_cancelled() => {}
            Ok(d) => {
                let rt = Arc::clone(&d.work.ctx.runtime);
                let at = match filling.iter().position(|b| Arc::ptr_eq(&b.rt, &rt)) {
                    Some(i) => i,
                    None => {
                        filling.push(Filling {
                            until: Instant::now() + rt.max_batch_delay,
                            rt,
                            items: Vec::new(),
                        });
                        filling.len() - 1
                    }
                };
                filling[at].items.push(d);
                if filling[at].items.len() >= filling[at].rt.batch_size {
                    let full = filling.swap_remove(at);
                    dispatch(full);
                }
            }
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                let now = Instant::now();
                let (due, wait): (Vec<_>, Vec<_>) = filling.drain(..).partition(|b| b.until <= now);
                filling = wait;
                for b in due {
                    dispatch(b);
                }
            }
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                for b in std::mem::take(&mut filling) {
                    dispatch(b);
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

/// Allocates the batch's input tensor on the GPU and starts writing it there.
fn prepare_on_gpu(
    rt: &ModelRuntime,
    gpu: &(
        std::sync::Mutex<GpuPreprocessor>,
        std::sync::Mutex<DeviceAllocator>,
    ),
    items: &[Decoded],
) -> Result<(DeviceTensor, Prepared), String> {
    let t0 = Instant::now();
    let pixels: Vec<&Pixels> = items
        .iter()
        .filter_map(|d| match &d.input {
            Input::Pixels(p) => Some(p),
            Input::Values(_) => None,
        })
        .collect();
    if pixels.len() != items.len() {
        return Err("GPU preprocessing got CPU-preprocessed items".into());
    }
    let run_n = rt.run_size(items.len());
    let mut tensor = gpu
        .1
        .lock()
        .map_err(|_| "GPU allocator lock poisoned".to_string())?
        .tensor(&input_shape(rt, run_n))
        .map_err(|e| e.to_string())?;
    let prepared = gpu
        .0
        .lock()
        .map_err(|_| "GPU preprocessor lock poisoned".to_string())?
        .prepare(&pixels, run_n, Some(tensor.ptr()))?;
    metrics::histogram!("spotbatch_stage_seconds", "stage" => "gpu_preprocess")
        .record(t0.elapsed().as_secs_f64());
    Ok((tensor, prepared))
}

fn finish_gpu(f: InFlight, post: &crossbeam_channel::Sender<Ran>) {
    let prepared = f.prepared;
    if let Err(e) = &prepared {
        warn!(error = %e, "GPU preprocessing failed for a batch");
    }
    debug!(items = f.items.len(), "running a GPU-preprocessed batch");
    run_batch(&f.rt, f.items, Some(prepared), post);
}

/// A batch the model has run, on its way to the post thread for its rows.
struct Ran {
    out: BatchOutput,
    batch: Vec<Decoded>,
}

/// Post-processes each item of a batch the model ran and sends its row.
fn send_rows(r: Ran) {
    let t0 = Instant::now();
    for (i, d) in r.batch.into_iter().enumerate() {
        send_row(&r.out, i, d);
    }
    metrics::histogram!("spotbatch_stage_seconds", "stage" => "postprocess")
        .record(t0.elapsed().as_secs_f64());
}

/// Runs one batch; its rows are made on the post thread (`post`). If the batch fails, each item
/// is run alone: items that fail alone get error rows; if every item fails, their shards fail
/// (the model is broken). `prepared` is the batch's input on the GPU when it was preprocessed
/// there.
fn run_batch(
    rt: &ModelRuntime,
    batch: Vec<Decoded>,
    prepared: Option<Result<(DeviceTensor, Prepared), String>>,
    post: &crossbeam_channel::Sender<Ran>,
) {
    let Ok(mut engine) = rt.engine.lock() else {
        for d in &batch {
            d.work.send(ToShard::Fail("engine lock poisoned".into()));
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
                send_rows(r);
            }
        }
        Err(batch_err) if batch.len() == 1 => {
            for d in batch {
                d.work.send(ToShard::Fail(batch_err.clone()));
            }
        }
        Err(batch_err) => {
            warn!(error = %batch_err, "batch failed; running its items one by one");
            let singles: Vec<Result<BatchOutput, String>> = batch
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
                    (Err(e), true) => d.work.send(ToShard::Fail(e)),
                    (Err(e), false) => {
                        let row = OutputRow::failed(d.key, d.work.ctx.post.kind(), e);
                        d.work.send(ToShard::Row(d.idx, row));
                    }
                    (Ok(out), _) => send_row(&out, 0, d),
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

/// Runs CPU-preprocessed items (padding to a fixed batch size).
fn infer_cpu(
    engine: &mut dyn crate::engine::InferenceEngine,
    rt: &ModelRuntime,
    items: &[Decoded],
) -> Result<BatchOutput, String> {
    let n = items.len();
    let run_n = rt.run_size(n);
    BATCH_INPUT.with_borrow_mut(|input| {
        input.clear();
        for d in items {
            match &d.input {
                Input::Values(v) => input.extend_from_slice(v),
                Input::Pixels(_) => return Err("CPU inference got GPU-bound pixels".into()),
            }
        }
        input.resize(run_n * rt.plan.item_len, 0.0);
        let out = engine
            .run(input, &input_shape(rt, run_n))
            .map_err(|e| e.to_string())?;
        check_batch(out, run_n)
    })
}

/// Runs a batch whose input was written on the GPU. The wait for that writing to finish is
/// timed as the `gpu_wait` stage, and `started` moves past it (the model's time starts after).
fn infer_gpu(
    engine: &mut dyn crate::engine::InferenceEngine,
    rt: &ModelRuntime,
    tensor: DeviceTensor,
    p: &Prepared,
    n: usize,
    started: &mut Instant,
) -> Result<BatchOutput, String> {
    let run_n = rt.run_size(n);
    p.wait()?;
    metrics::histogram!("spotbatch_stage_seconds", "stage" => "gpu_wait")
        .record(started.elapsed().as_secs_f64());
    *started = Instant::now();
    let out = engine.run_device(tensor).map_err(|e| e.to_string())?;
    check_batch(out, run_n)
}

/// Runs one item alone, on the path it was preprocessed for.
fn infer_one(
    engine: &mut dyn crate::engine::InferenceEngine,
    rt: &ModelRuntime,
    d: &Decoded,
) -> Result<BatchOutput, String> {
    match (&d.input, &rt.gpu) {
        (Input::Pixels(_), Some(gpu)) => {
            let (t, p) = prepare_on_gpu(rt, gpu, std::slice::from_ref(d))?;
            infer_gpu(engine, rt, t, &p, 1, &mut Instant::now())
        }
        _ => infer_cpu(engine, rt, std::slice::from_ref(d)),
    }
}

fn check_batch(out: BatchOutput, run_n: usize) -> Result<BatchOutput, String> {
    if out.shape.first().copied() != Some(run_n) {
        return Err(format!(
            "model output shape {:?} does not start with the batch size {run_n}",
            out.shape
        ));
    }
    Ok(out)
}

/// Sends item `i`'s row: its output post-processed by its own job, or the error.
fn send_row(out: &BatchOutput, i: usize, d: Decoded) {
    let kind = d.work.ctx.post.kind();
    let row = match item_value(out, i, &d) {
        Ok(value) => OutputRow {
            key: d.key,
            kind,
            value: Some(value),
            error: None,
        },
        Err(reason) => OutputRow::failed(d.key, kind, reason),
    };
    d.work.send(ToShard::Row(d.idx, row));
}

/// Item `i`'s output, post-processed by its own job.
fn item_value(
    out: &BatchOutput,
    i: usize,
    d: &Decoded,
) -> Result<spotbatch_proto::RowValue, String> {
    let run_n = out.shape.first().copied().unwrap_or(1).max(1);
    let per = out.data.len() / run_n;
    let values = out
        .data
        .get(i * per..(i + 1) * per)
        .ok_or_else(|| "model returned no output for this item".to_string())?;
    d.work.ctx.post.apply(values, &out.shape[1..])
}

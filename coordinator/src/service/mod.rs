//! The coordinator service: the gRPC API of `proto/coordinator.proto` (submit, cancel, list,
//! status; worker register and heartbeat) over a queue and a state prefix in object storage.
//!
//! Everything durable lives under `--state`: `manifests/DIGEST.json` (the stored manifest),
//! `jobs/JOB.json` (the job record with its shard plan). Progress is never stored here: it is
//! read from the done markers in each job's output prefix, so a coordinator started on another
//! machine over the same state rebuilds every job's progress. Workers are not on this path: they
//! lease from the queue directly and keep working while the coordinator is away.
//!
//! The modules: this one holds the state and its refresh; [`jobs`] submit, status, cancel and
//! list; [`workers`] the registry (register, heartbeat, peers); [`fleet`] the fleet the jobs
//! want (the deadline-aware policy, its metrics); [`error`] the domain errors and their gRPC
//! codes; [`api`] the gRPC face, which only maps.

mod api;
mod error;
mod fleet;
mod jobs;
mod workers;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use spotbatch_proto::api::DeadShard;
use spotbatch_proto::ShardTask;
use spotbatch_queue::LeaseQueue;
use spotbatch_store::{JobLayout, Prefix, StorageError};
use url::Url;

pub use api::Api;
pub use error::ApiError;
pub use fleet::FleetConfig;

/// Largest manifest accepted over the API.
pub const MAX_MANIFEST_BYTES: usize = 256 * 1024;
pub use spotbatch_net::MAX_MESSAGE_BYTES;

/// How the coordinator runs.
#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    /// The queue every job's shards go to (and workers lease from).
    pub queue_uri: String,
    /// Failures before a shard is dead-lettered (told to workers).
    pub max_attempts: u32,
    /// How often workers heartbeat.
    pub heartbeat_interval: Duration,
    /// Heartbeats a worker may miss before it is marked dead.
    pub missed_heartbeats: u32,
    /// When not empty, job outputs must lie under one of these prefixes.
    pub allowed_outputs: Vec<Url>,
    /// How the fleet is sized.
    pub fleet: FleetConfig,
}

/// A job as stored under `jobs/JOB.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct JobRecord {
    job_id: String,
    digest: String,
    output: String,
    submitted_unix_ms: u64,
    items_total: u64,
    /// Shard ids in plan order, with their item counts.
    shards: Vec<(String, u64)>,
    cancelled: bool,
    /// The deadline (`[job]`), Unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    deadline_unix_s: Option<f64>,
    /// `job.max_on_demand_workers`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_on_demand_workers: Option<u32>,
    /// The shard size as planned: `256`, or `auto → 125`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    shard_size: Option<String>,
}

struct JobRuntime {
    record: JobRecord,
    layout: JobLayout,
    /// Done markers seen: shard → (items, errors).
    done: HashMap<String, (u64, u64)>,
    /// (when, items done) samples for the rate, newest last.
    samples: VecDeque<(Instant, u64)>,
}

impl JobRuntime {
    fn items_done(&self) -> u64 {
        self.done.values().map(|(i, _)| i).sum()
    }

    fn items_failed(&self) -> u64 {
        self.done.values().map(|(_, e)| e).sum()
    }

    fn rate(&self) -> f64 {
        let (Some(first), Some(last)) = (self.samples.front(), self.samples.back()) else {
            return 0.0;
        };
        let dt = last.0.duration_since(first.0).as_secs_f64();
        if dt < 0.5 {
            return 0.0;
        }
        last.1.saturating_sub(first.1) as f64 / dt
    }
}

struct WorkerEntry {
    capacity: u32,
    device: String,
    last_seen: SystemTime,
    seen_at: Instant,
    rate: f64,
    shards: Vec<(String, String)>,
    /// Where it serves `Peer` (empty: no stealing).
    peer_address: String,
    /// Leased shards it has not started.
    unstarted: u32,
    /// It said goodbye in its last heartbeat.
    exited: bool,
    /// Spot or on demand (`--capacity`).
    capacity_type: spotbatch_fleet::Capacity,
    /// A cloud's interruption notice is draining it.
    interrupted: bool,
    /// Its interruption (notice or hard kill) is counted in the fleet's history.
    counted: bool,
}

/// The coordinator's state and API.
pub struct CoordinatorService {
    config: CoordinatorConfig,
    queue: Arc<dyn LeaseQueue>,
    state: Prefix,
    jobs: tokio::sync::Mutex<BTreeMap<String, JobRuntime>>,
    workers: Mutex<HashMap<String, WorkerEntry>>,
    next_worker: std::sync::atomic::AtomicU64,
    ready: std::sync::atomic::AtomicBool,
    fleet: Mutex<fleet::FleetState>,
}

/// Errors starting the coordinator.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The state prefix could not be read.
    #[error("state {0}")]
    State(#[from] StorageError),
    /// A stored record did not parse.
    #[error("state record {key}: {message}")]
    Record {
        /// Its key.
        key: String,
        /// What is wrong.
        message: String,
    },
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl CoordinatorService {
    /// Opens the state prefix and rebuilds every job from it (records, manifests, done markers).
    pub async fn open(
        config: CoordinatorConfig,
        queue: Arc<dyn LeaseQueue>,
        state: &Url,
    ) -> Result<Arc<Self>, ServiceError> {
        let state = Prefix::open(state)?;
        let svc = Arc::new(Self {
            config,
            queue,
            state,
            jobs: tokio::sync::Mutex::new(BTreeMap::new()),
            workers: Mutex::new(HashMap::new()),
            next_worker: std::sync::atomic::AtomicU64::new(1),
            ready: std::sync::atomic::AtomicBool::new(false),
            fleet: Mutex::new(fleet::FleetState::default()),
        });
        let mut jobs = BTreeMap::new();
        for listed in svc.state.list().await? {
            let Some(name) = listed.key.strip_prefix("jobs/") else {
                continue;
            };
            if !name.ends_with(".json") {
                continue;
            }
            let Some(bytes) = svc.state.get_opt(&listed.key).await? else {
                continue;
            };
            let record: JobRecord =
                serde_json::from_slice(&bytes).map_err(|e| ServiceError::Record {
                    key: listed.key.clone(),
                    message: e.to_string(),
                })?;
            let output = Url::parse(&record.output).map_err(|e| ServiceError::Record {
                key: listed.key.clone(),
                message: format!("output: {e}"),
            })?;
            let layout = JobLayout {
                prefix: Prefix::open(&output)?,
            };
            jobs.insert(
                record.job_id.clone(),
                JobRuntime {
                    record,
                    layout,
                    done: HashMap::new(),
                    samples: VecDeque::new(),
                },
            );
        }
        tracing::info!(jobs = jobs.len(), "coordinator state loaded");
        *svc.jobs.lock().await = jobs;
        svc.refresh_all().await;
        svc.ready.store(true, std::sync::atomic::Ordering::Relaxed);
        Ok(svc)
    }

    /// Whether the state is loaded and the queue answers.
    pub async fn ready(&self) -> bool {
        self.ready.load(std::sync::atomic::Ordering::Relaxed) && self.queue.depth().await.is_ok()
    }

    /// Reads the done markers of every unfinished job and, once a heartbeat interval, sizes the
    /// fleet; run every few seconds.
    pub async fn refresh_all(&self) {
        let ids: Vec<String> = self.jobs.lock().await.keys().cloned().collect();
        for id in ids {
            if let Err(e) = self.refresh(&id).await {
                tracing::warn!(job = %id, error = %e, "reading done markers failed");
            }
        }
        match self.queue.depth().await {
            Ok(d) => {
                let q = self.queue.name().to_string();
                metrics::gauge!("spotbatch_queue_depth", "queue" => q.clone(), "state" => "visible")
                    .set(d.visible as f64);
                metrics::gauge!("spotbatch_queue_depth", "queue" => q.clone(), "state" => "in_flight")
                    .set(d.in_flight as f64);
                metrics::gauge!("spotbatch_queue_depth", "queue" => q, "state" => "dead")
                    .set(d.dead as f64);
            }
            Err(e) => tracing::warn!(error = %e, "queue depth failed"),
        }
        let (alive, dead, exited) = self.worker_counts();
        metrics::gauge!("spotbatch_workers", "state" => "alive").set(alive as f64);
        metrics::gauge!("spotbatch_workers", "state" => "dead").set(dead as f64);
        metrics::gauge!("spotbatch_workers", "state" => "exited").set(exited as f64);
        self.maybe_evaluate_fleet().await;
    }

    async fn refresh(&self, id: &str) -> Result<(), StorageError> {
        let layout = {
            let jobs = self.jobs.lock().await;
            match jobs.get(id) {
                Some(j) if j.done.len() < j.record.shards.len() => j.layout.clone(),
                _ => return Ok(()),
            }
        };
        let markers = layout.done_markers().await?;
        let mut jobs = self.jobs.lock().await;
        let Some(job) = jobs.get_mut(id) else {
            return Ok(());
        };
        let planned: HashSet<&str> = job.record.shards.iter().map(|(s, _)| s.as_str()).collect();
        let mut done = HashMap::new();
        for m in markers {
            if m.job == job.record.job_id && planned.contains(m.shard.as_str()) {
                done.insert(m.shard, (m.items, m.errors));
            }
        }
        job.done = done;
        let now = Instant::now();
        let items = job.items_done();
        job.samples.push_back((now, items));
        while job
            .samples
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > Duration::from_secs(60))
        {
            job.samples.pop_front();
        }
        metrics::gauge!("spotbatch_job_items", "job" => id.to_string(), "state" => "done")
            .set(items as f64);
        metrics::gauge!("spotbatch_job_items", "job" => id.to_string(), "state" => "total")
            .set(job.record.items_total as f64);
        Ok(())
    }

    /// Workers alive, dead (silent past three heartbeats) and exited (said goodbye).
    fn worker_counts(&self) -> (usize, usize, usize) {
        let Ok(w) = self.workers.lock() else {
            return (0, 0, 0);
        };
        let alive = w.values().filter(|e| self.alive(e)).count();
        let exited = w.values().filter(|e| e.exited).count();
        (alive, w.len() - alive - exited, exited)
    }

    fn alive(&self, w: &WorkerEntry) -> bool {
        !w.exited
            && w.seen_at.elapsed()
                < self.config.heartbeat_interval * self.config.missed_heartbeats.max(1)
    }

    fn job_state(&self, job: &JobRuntime, dead: usize) -> &'static str {
        let total = job.record.shards.len();
        if job.done.len() >= total {
            "done"
        } else if job.record.cancelled {
            "cancelled"
        } else if dead > 0 && job.done.len() + dead >= total {
            "failed"
        } else {
            "running"
        }
    }

    /// Dead-lettered shards per job (reads the dead-letter queue).
    async fn dead_letters(&self) -> HashMap<String, Vec<DeadShard>> {
        let mut out: HashMap<String, Vec<DeadShard>> = HashMap::new();
        match self.queue.dead_letters(10_000).await {
            Ok(list) => {
                let mut seen = HashSet::new();
                for d in list {
                    let Ok(task) = ShardTask::from_bytes(&d.body) else {
                        continue;
                    };
                    if seen.insert(task.shard.clone()) {
                        out.entry(task.job).or_default().push(DeadShard {
                            shard: task.shard,
                            reason: d.reason,
                            deliveries: d.delivery_count,
                        });
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "reading the dead-letter queue failed"),
        }
        out
    }

    fn workers_lock(
        &self,
    ) -> Result<std::sync::MutexGuard<'_, HashMap<String, WorkerEntry>>, ApiError> {
        self.workers
            .lock()
            .map_err(|_| ApiError::Internal("the worker registry's lock was poisoned".into()))
    }

    /// Writes `jobs/JOB.json`.
    async fn save_record(&self, record: &JobRecord) -> Result<(), ApiError> {
        let bytes =
            serde_json::to_vec_pretty(record).map_err(|e| ApiError::Internal(e.to_string()))?;
        Ok(self
            .state
            .put(&format!("jobs/{}.json", record.job_id), Bytes::from(bytes))
            .await?)
    }

    async fn cancelled_jobs(&self) -> Vec<String> {
        self.jobs
            .lock()
            .await
            .values()
            .filter(|j| j.record.cancelled)
            .map(|j| j.record.job_id.clone())
            .collect()
    }
}

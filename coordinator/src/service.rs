//! The coordinator service: the gRPC API of `proto/coordinator.proto` (submit, cancel, list,
//! status; worker register and heartbeat) over a queue and a state prefix in object storage.
//!
//! Everything durable lives under `--state`: `manifests/DIGEST.json` (the stored manifest),
//! `jobs/JOB.json` (the job record with its shard plan). Progress is never stored here: it is
//! read from the done markers in each job's output prefix, so a coordinator started on another
//! machine over the same state rebuilds every job's progress. Workers are not on this path: they
//! lease from the queue directly and keep working while the coordinator is away.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use spotbatch_proto::api::coordinator_server::Coordinator;
use spotbatch_proto::api::{
    CancelReply, CancelRequest, DeadShard, HeartbeatReply, HeartbeatRequest, JobStatus, JobSummary,
    ListJobsReply, ListJobsRequest, PeerInfo, PeersReply, PeersRequest, RegisterReply,
    RegisterRequest, ShardInFlight, StatusRequest, SubmitReply, SubmitRequest, WorkerInfo,
};
use spotbatch_proto::manifest::Manifest;
use spotbatch_proto::ShardTask;
use spotbatch_queue::LeaseQueue;
use tonic::{Request, Response, Status};
use url::Url;

use spotbatch_store::{JobLayout, Prefix, StorageError};

use spotbatch_plan::{enqueue_plan, plan_job};

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

fn internal(e: impl std::fmt::Display) -> Status {
    Status::internal(e.to_string())
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

    /// Reads the done markers of every unfinished job; run every few seconds.
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
        let (alive, dead) = self.worker_counts();
        metrics::gauge!("spotbatch_workers", "state" => "alive").set(alive as f64);
        metrics::gauge!("spotbatch_workers", "state" => "dead").set(dead as f64);
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

    fn worker_counts(&self) -> (usize, usize) {
        let Ok(w) = self.workers.lock() else {
            return (0, 0);
        };
        let alive = w.values().filter(|e| self.alive(e)).count();
        (alive, w.len() - alive)
    }

    fn alive(&self, w: &WorkerEntry) -> bool {
        w.seen_at.elapsed() < self.config.heartbeat_interval * self.config.missed_heartbeats.max(1)
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

    async fn submit_inner(&self, req: SubmitRequest) -> Result<SubmitReply, Status> {
        if req.manifest_toml.len() > MAX_MANIFEST_BYTES {
            return Err(Status::invalid_argument(format!(
                "manifest is {} bytes; the limit is {MAX_MANIFEST_BYTES}",
                req.manifest_toml.len()
            )));
        }
        let base = if req.base_url.is_empty() {
            std::path::PathBuf::from("/")
        } else {
            Url::parse(&req.base_url)
                .ok()
                .filter(|u| u.scheme() == "file")
                .and_then(|u| u.to_file_path().ok())
                .ok_or_else(|| {
                    Status::invalid_argument(format!(
                        "base_url: {:?} is not a file:// folder URL",
                        req.base_url
                    ))
                })?
        };
        let mut m = Manifest::parse(&req.manifest_toml, &base).map_err(|errs| {
            Status::invalid_argument(
                errs.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("\n"),
            )
        })?;
        if m.raw.output.uri.split(['/', '\\']).any(|seg| seg == "..") {
            return Err(Status::invalid_argument(
                "output.uri: must not contain `..` segments",
            ));
        }
        if !self.config.allowed_outputs.is_empty()
            && !self
                .config
                .allowed_outputs
                .iter()
                .any(|p| m.output.as_str().starts_with(p.as_str()))
        {
            return Err(Status::permission_denied(format!(
                "output.uri: {} is outside the coordinator's output prefixes ({})",
                m.output,
                self.config
                    .allowed_outputs
                    .iter()
                    .map(Url::as_str)
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        // The coordinator's queue carries every job.
        m.queue_uri = self.config.queue_uri.clone();
        let layout = JobLayout::for_manifest(&m).map_err(internal)?;
        let plan = plan_job(&m)
            .await
            .map_err(|e| Status::failed_precondition(e.to_string()))?;
        let existing = {
            let jobs = self.jobs.lock().await;
            jobs.get(&m.job_id).map(|j| j.record.clone())
        };
        // Store the manifest by digest and beside the results (for workers), then the record.
        self.state
            .put(
                &format!("manifests/{}.json", m.digest),
                Bytes::from(m.to_stored()),
            )
            .await
            .map_err(internal)?;
        layout.store_manifest(&m).await.map_err(internal)?;
        let record = JobRecord {
            job_id: m.job_id.clone(),
            digest: m.digest.clone(),
            output: m.output.to_string(),
            submitted_unix_ms: existing
                .as_ref()
                .map(|r| r.submitted_unix_ms)
                .unwrap_or_else(|| unix_ms(SystemTime::now())),
            items_total: plan.total_items,
            shards: plan
                .shards
                .iter()
                .map(|s| (s.shard.clone(), s.keys.len() as u64))
                .collect(),
            cancelled: false,
        };
        self.save_record(&record).await?;
        self.jobs.lock().await.insert(
            m.job_id.clone(),
            JobRuntime {
                record: record.clone(),
                layout: layout.clone(),
                done: HashMap::new(),
                samples: VecDeque::new(),
            },
        );
        self.refresh(&m.job_id).await.map_err(internal)?;
        // A job already submitted and still running has its shards on the queue: enqueue nothing
        // (re-enqueueing would have them worked twice). A new, cancelled or failed job gets every
        // shard that is not done (a failed job's dead-lettered shards are re-driven).
        let running_already = match &existing {
            Some(r) if !r.cancelled => {
                let dead = self.dead_letters().await;
                let jobs = self.jobs.lock().await;
                jobs.get(&m.job_id).is_some_and(|j| {
                    self.job_state(j, dead.get(&m.job_id).map_or(0, Vec::len)) == "running"
                })
            }
            _ => false,
        };
        let (enqueued, already_done) = if running_already {
            let jobs = self.jobs.lock().await;
            (0, jobs.get(&m.job_id).map_or(0, |j| j.done.len()))
        } else {
            let report = enqueue_plan(self.queue.as_ref(), &layout, &plan)
                .await
                .map_err(|e| Status::unavailable(e.to_string()))?;
            (report.enqueued, report.already_done)
        };
        metrics::counter!("spotbatch_jobs_submitted_total").increment(1);
        tracing::info!(job = %m.job_id, enqueued, already_done, resubmitted = existing.is_some(), "job submitted");
        Ok(SubmitReply {
            job_id: m.job_id.clone(),
            shards_total: plan.shards.len() as u64,
            shards_enqueued: enqueued as u64,
            shards_already_done: already_done as u64,
            items_total: plan.total_items,
            output: m.output.to_string(),
        })
    }

    async fn status_inner(&self, id: &str) -> Result<JobStatus, Status> {
        self.refresh(id).await.map_err(internal)?;
        let dead = self.dead_letters().await;
        let in_flight: Vec<ShardInFlight> = {
            let w = self.workers.lock().map_err(internal)?;
            let mut v: Vec<ShardInFlight> = w
                .iter()
                .filter(|(_, e)| self.alive(e))
                .flat_map(|(wid, e)| {
                    e.shards
                        .iter()
                        .filter(|(job, _)| job == id)
                        .map(|(_, shard)| ShardInFlight {
                            shard: shard.clone(),
                            worker: wid.clone(),
                        })
                        .collect::<Vec<_>>()
                })
                .collect();
            v.sort_by(|a, b| a.shard.cmp(&b.shard));
            v
        };
        let workers = self.worker_infos();
        let jobs = self.jobs.lock().await;
        let job = jobs
            .get(id)
            .ok_or_else(|| Status::not_found(format!("no job {id}")))?;
        let dead_lettered: Vec<DeadShard> = dead
            .get(id)
            .map(|d| {
                d.iter()
                    .filter(|s| !job.done.contains_key(&s.shard))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        let done = job.items_done();
        let rate = job.rate();
        let remaining = job.record.items_total.saturating_sub(done);
        let eta = if remaining == 0 {
            0.0
        } else if rate > 0.0 {
            remaining as f64 / rate
        } else {
            -1.0
        };
        Ok(JobStatus {
            job_id: id.to_string(),
            state: self.job_state(job, dead_lettered.len()).to_string(),
            items_total: job.record.items_total,
            items_done: done,
            items_failed: job.items_failed(),
            shards_total: job.record.shards.len() as u64,
            shards_done: job.done.len() as u64,
            rate,
            eta_seconds: eta,
            in_flight,
            dead_lettered,
            workers,
            output: job.record.output.clone(),
            submitted_unix_ms: job.record.submitted_unix_ms,
        })
    }

    fn worker_infos(&self) -> Vec<WorkerInfo> {
        let Ok(w) = self.workers.lock() else {
            return Vec::new();
        };
        let mut v: Vec<WorkerInfo> = w
            .iter()
            .map(|(id, e)| WorkerInfo {
                worker_id: id.clone(),
                alive: self.alive(e),
                capacity: e.capacity,
                device: e.device.clone(),
                items_per_second: e.rate,
                last_seen_unix_ms: unix_ms(e.last_seen),
                shards: e.shards.iter().map(|(_, s)| s.clone()).collect(),
                unstarted: e.unstarted,
            })
            .collect();
        v.sort_by(|a, b| a.worker_id.cmp(&b.worker_id));
        v
    }

    /// Writes `jobs/JOB.json`.
    async fn save_record(&self, record: &JobRecord) -> Result<(), Status> {
        let bytes = serde_json::to_vec_pretty(record).map_err(internal)?;
        self.state
            .put(&format!("jobs/{}.json", record.job_id), Bytes::from(bytes))
            .await
            .map_err(internal)
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

/// The gRPC face of a [`CoordinatorService`].
#[derive(Clone)]
pub struct Api(pub Arc<CoordinatorService>);

impl std::ops::Deref for Api {
    type Target = CoordinatorService;
    fn deref(&self) -> &CoordinatorService {
        &self.0
    }
}

#[tonic::async_trait]
impl Coordinator for Api {
    async fn submit(&self, req: Request<SubmitRequest>) -> Result<Response<SubmitReply>, Status> {
        self.submit_inner(req.into_inner()).await.map(Response::new)
    }

    async fn cancel(&self, req: Request<CancelRequest>) -> Result<Response<CancelReply>, Status> {
        let id = req.into_inner().job_id;
        let record = {
            let mut jobs = self.jobs.lock().await;
            let job = jobs
                .get_mut(&id)
                .ok_or_else(|| Status::not_found(format!("no job {id}")))?;
            let was_running = !job.record.cancelled && job.done.len() < job.record.shards.len();
            job.record.cancelled = true;
            (job.record.clone(), was_running)
        };
        self.save_record(&record.0).await?;
        tracing::info!(job = %id, "job cancelled");
        Ok(Response::new(CancelReply {
            was_running: record.1,
        }))
    }

    async fn list_jobs(
        &self,
        _req: Request<ListJobsRequest>,
    ) -> Result<Response<ListJobsReply>, Status> {
        let dead = self.dead_letters().await;
        let jobs = self.jobs.lock().await;
        let list = jobs
            .values()
            .map(|j| JobSummary {
                job_id: j.record.job_id.clone(),
                state: self
                    .job_state(j, dead.get(&j.record.job_id).map_or(0, Vec::len))
                    .to_string(),
                items_total: j.record.items_total,
                items_done: j.items_done(),
                submitted_unix_ms: j.record.submitted_unix_ms,
            })
            .collect();
        Ok(Response::new(ListJobsReply { jobs: list }))
    }

    async fn status(&self, req: Request<StatusRequest>) -> Result<Response<JobStatus>, Status> {
        self.status_inner(&req.into_inner().job_id)
            .await
            .map(Response::new)
    }

    async fn register(
        &self,
        req: Request<RegisterRequest>,
    ) -> Result<Response<RegisterReply>, Status> {
        let r = req.into_inner();
        let name: String = r
            .name
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || "-_.".contains(*c))
            .take(64)
            .collect();
        let n = self
            .next_worker
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let id = format!(
            "{}-{n}-{:x}",
            if name.is_empty() { "worker" } else { &name },
            unix_ms(SystemTime::now()) % 0xffff_ffff
        );
        self.workers.lock().map_err(internal)?.insert(
            id.clone(),
            WorkerEntry {
                capacity: r.capacity,
                device: r.device,
                last_seen: SystemTime::now(),
                seen_at: Instant::now(),
                rate: 0.0,
                shards: Vec::new(),
                peer_address: r.peer_address,
                unstarted: 0,
            },
        );
        tracing::info!(worker = %id, "worker registered");
        Ok(Response::new(RegisterReply {
            worker_id: id,
            queue_uri: self.config.queue_uri.clone(),
            max_attempts: self.config.max_attempts,
            heartbeat_interval_ms: self.config.heartbeat_interval.as_millis() as u32,
        }))
    }

    async fn heartbeat(
        &self,
        req: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatReply>, Status> {
        let h = req.into_inner();
        {
            let mut w = self.workers.lock().map_err(internal)?;
            let Some(e) = w.get_mut(&h.worker_id) else {
                return Err(Status::not_found(format!(
                    "unknown worker {}: register again",
                    h.worker_id
                )));
            };
            e.last_seen = SystemTime::now();
            e.seen_at = Instant::now();
            e.rate = h.items_per_second;
            e.capacity = h.capacity;
            e.device = h.device;
            e.shards = h.shards.into_iter().map(|s| (s.job_id, s.shard)).collect();
            e.unstarted = h.unstarted;
            if !h.peer_address.is_empty() {
                e.peer_address = h.peer_address;
            }
        }
        for o in &h.outcomes {
            metrics::counter!("spotbatch_shard_reports_total", "outcome" => o.outcome.clone())
                .increment(1);
            tracing::debug!(worker = %h.worker_id, job = %o.job_id, shard = %o.shard, outcome = %o.outcome, items = o.items, errors = o.errors, reason = %o.reason, "shard outcome");
        }
        Ok(Response::new(HeartbeatReply {
            cancelled_jobs: self.cancelled_jobs().await,
        }))
    }

    async fn peers(&self, req: Request<PeersRequest>) -> Result<Response<PeersReply>, Status> {
        let r = req.into_inner();
        let w = self.workers.lock().map_err(internal)?;
        let mut peers: Vec<PeerInfo> = w
            .iter()
            .filter(|(id, e)| **id != r.worker_id && !e.peer_address.is_empty() && self.alive(e))
            .map(|(id, e)| PeerInfo {
                worker_id: id.clone(),
                address: e.peer_address.clone(),
                unstarted: e.unstarted,
                capacity: e.capacity,
                in_work: e.shards.len() as u32,
                items_per_second: e.rate,
            })
            .filter(|p| {
                if r.idle {
                    p.unstarted == 0 && p.in_work < p.capacity.max(1)
                } else {
                    p.unstarted > 0
                }
            })
            .collect();
        if r.idle {
            peers.sort_by_key(|p| (p.in_work, p.worker_id.clone()));
        } else {
            peers.sort_by(|a, b| {
                b.unstarted
                    .cmp(&a.unstarted)
                    .then_with(|| a.worker_id.cmp(&b.worker_id))
            });
        }
        peers.truncate(16);
        Ok(Response::new(PeersReply { peers }))
    }
}

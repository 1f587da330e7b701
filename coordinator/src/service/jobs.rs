//! Jobs: submit (validate, plan, store the manifest and the record, enqueue what is not done —
//! idempotent: the same manifest is the same job; a deadline is kept in the record), status
//! (progress from the done markers, rate, ETA, shards in flight, dead letters, the fleet the job
//! wants), cancel and list.

use std::collections::{HashMap, VecDeque};
use std::time::SystemTime;

use bytes::Bytes;
use spotbatch_plan::{enqueue_plan, plan_job_with, ShardHow};
use spotbatch_proto::api::{
    DeadShard, JobStatus, JobSummary, ShardInFlight, SubmitReply, SubmitRequest,
};
use spotbatch_proto::manifest::Manifest;
use spotbatch_store::{JobLayout, Prefix};
use url::Url;

use super::{unix_ms, ApiError, CoordinatorService, JobRecord, JobRuntime, MAX_MANIFEST_BYTES};

impl CoordinatorService {
    /// Submits a job (see the module docs).
    pub async fn submit(&self, req: SubmitRequest) -> Result<SubmitReply, ApiError> {
        if req.manifest_toml.len() > MAX_MANIFEST_BYTES {
            return Err(ApiError::ManifestTooLarge {
                bytes: req.manifest_toml.len(),
                limit: MAX_MANIFEST_BYTES,
            });
        }
        let base = if req.base_url.is_empty() {
            std::path::PathBuf::from("/")
        } else {
            Url::parse(&req.base_url)
                .ok()
                .filter(|u| u.scheme() == "file")
                .and_then(|u| u.to_file_path().ok())
                .ok_or_else(|| ApiError::BadBase(req.base_url.clone()))?
        };
        let mut m = Manifest::parse(&req.manifest_toml, &base).map_err(|errs| {
            ApiError::InvalidManifest(errs.iter().map(ToString::to_string).collect())
        })?;
        if m.raw.output.uri.split(['/', '\\']).any(|seg| seg == "..") {
            return Err(ApiError::OutputDotDot);
        }
        if !self.config.allowed_outputs.is_empty()
            && !self
                .config
                .allowed_outputs
                .iter()
                .any(|p| m.output.as_str().starts_with(p.as_str()))
        {
            return Err(ApiError::OutputNotAllowed {
                output: m.output.to_string(),
                allowed: self
                    .config
                    .allowed_outputs
                    .iter()
                    .map(Url::as_str)
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        // What can be checked here without the model's runtime: the files the manifest names
        // exist, and the output folder takes files (the rest is the workers' to find).
        let mut problems = Vec::new();
        let files = [
            ("model.uri", Some(&m.model)),
            ("postprocess.labels", m.labels.as_ref()),
        ];
        for (field, url) in files {
            if let Some(url) = url {
                if let Err(e) = spotbatch_store::storage::check_file(url).await {
                    problems.push(format!("{field}: {e}"));
                }
            }
        }
        if let Err(e) = Prefix::open(&m.output)?.check_writable().await {
            problems.push(format!("output.uri: {e}"));
        }
        if !problems.is_empty() {
            return Err(ApiError::InvalidManifest(problems));
        }
        // The coordinator's queue carries every job, with its attempts: say so where the manifest
        // asked for something else.
        let written = spotbatch_proto::manifest::keys_written(&req.manifest_toml);
        let mut notes = Vec::new();
        if written.iter().any(|k| k == "queue.uri") && m.queue_uri != self.config.queue_uri {
            notes.push(format!(
                "queue.uri: the coordinator's queue {} carries every job; {} is not used",
                self.config.queue_uri, m.queue_uri
            ));
        }
        if written.iter().any(|k| k == "queue.max_attempts")
            && m.raw.queue.max_attempts != self.config.max_attempts
        {
            notes.push(format!(
                "queue.max_attempts: {} is not used: the coordinator's workers dead-letter a shard after {} failed attempts (its --max-attempts)",
                m.raw.queue.max_attempts, self.config.max_attempts
            ));
        }
        m.queue_uri = self.config.queue_uri.clone();
        let layout = JobLayout::for_manifest(&m)?;
        let plan = plan_job_with(&m, &self.shard_hints())
            .await
            .map_err(ApiError::Plan)?;
        for skipped in &plan.skipped {
            notes.push(format!(
                "input.uri: {} is not an input: {}",
                skipped.key, skipped.reason
            ));
        }
        let existing = {
            let jobs = self.jobs.lock().await;
            jobs.get(&m.job_id).map(|j| j.record.clone())
        };
        // Store the manifest by digest and beside the results (for workers), then the record.
        self.state
            .put(
                &format!("manifests/{}.json", m.digest),
                Bytes::from(plan.resolved_manifest(&m).to_stored()),
            )
            .await?;
        spotbatch_plan::store_plan(&layout, &m, &plan)
            .await
            .map_err(ApiError::Plan)?;
        let submitted_unix_ms = existing
            .as_ref()
            .map(|r| r.submitted_unix_ms)
            .unwrap_or_else(|| unix_ms(SystemTime::now()));
        // A deadline in hours counts from the first submission (a resubmission may move it).
        let deadline = m
            .deadline
            .map(|d| d.unix_s(submitted_unix_ms as f64 / 1_000.0));
        if let Some(d) = deadline {
            let now = unix_ms(SystemTime::now()) as f64 / 1_000.0;
            if d <= now {
                notes.push(format!(
                    "job.deadline: it passed {:.0} s ago: every allowed worker runs until the job is done",
                    now - d
                ));
            }
        }
        let shard_size = match plan.shard_size.how {
            ShardHow::Manifest => plan.shard_size.items.to_string(),
            ShardHow::Kept | ShardHow::Suggested(_) => {
                format!("auto → {}", plan.shard_size.items)
            }
        };
        let record = JobRecord {
            job_id: m.job_id.clone(),
            digest: m.digest.clone(),
            output: m.output.to_string(),
            submitted_unix_ms,
            items_total: plan.total_items,
            shards: plan
                .shards
                .iter()
                .map(|s| {
                    let items = s
                        .split
                        .as_ref()
                        .map_or(s.keys.len() as u64, |sp| sp.rows().unwrap_or(0));
                    (s.shard.clone(), items)
                })
                .collect(),
            cancelled: false,
            deadline_unix_s: deadline,
            max_on_demand_workers: m.raw.job.max_on_demand_workers,
            shard_size: Some(shard_size),
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
        self.refresh(&m.job_id).await?;
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
                .map_err(ApiError::Enqueue)?;
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
            notes,
        })
    }

    /// A job's progress.
    pub async fn status(&self, id: &str) -> Result<JobStatus, ApiError> {
        self.refresh(id).await?;
        let dead = self.dead_letters().await;
        let in_flight: Vec<ShardInFlight> = {
            let w = self.workers_lock()?;
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
            .ok_or_else(|| ApiError::NoJob(id.to_string()))?;
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
        let dead_items: u64 = dead_lettered
            .iter()
            .filter_map(|d| job.record.shards.iter().find(|(s, _)| *s == d.shard))
            .map(|(_, n)| n)
            .sum();
        let rate = job.rate();
        let remaining = job.record.items_total.saturating_sub(done + dead_items);
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
            items_dead: dead_items,
            fleet: self.fleet_status(id),
        })
    }

    /// Cancels a job: workers drop its remaining shards. Returns whether it was running.
    pub async fn cancel(&self, id: &str) -> Result<bool, ApiError> {
        let (record, was_running) = {
            let mut jobs = self.jobs.lock().await;
            let job = jobs
                .get_mut(id)
                .ok_or_else(|| ApiError::NoJob(id.to_string()))?;
            let was_running = !job.record.cancelled && job.done.len() < job.record.shards.len();
            job.record.cancelled = true;
            (job.record.clone(), was_running)
        };
        self.save_record(&record).await?;
        tracing::info!(job = %id, "job cancelled");
        Ok(was_running)
    }

    /// Every job, with its state and progress.
    pub async fn list(&self) -> Vec<JobSummary> {
        let dead = self.dead_letters().await;
        let jobs = self.jobs.lock().await;
        jobs.values()
            .map(|j| JobSummary {
                job_id: j.record.job_id.clone(),
                state: self
                    .job_state(j, dead.get(&j.record.job_id).map_or(0, Vec::len))
                    .to_string(),
                items_total: j.record.items_total,
                items_done: j.items_done(),
                submitted_unix_ms: j.record.submitted_unix_ms,
            })
            .collect()
    }
}

//! The worker registry: workers register (the coordinator names their queue), heartbeat what
//! they hold, how fast they go, their capacity (spot or on demand) and whether a notice drains
//! them (three missed and a worker is marked dead), and ask for peers to steal from or to offer
//! shards to.

use std::time::{Instant, SystemTime};

use spotbatch_proto::api::{
    HeartbeatReply, HeartbeatRequest, PeerInfo, PeersReply, PeersRequest, RegisterReply,
    RegisterRequest, WorkerInfo,
};

use super::{unix_ms, ApiError, CoordinatorService, WorkerEntry};

impl CoordinatorService {
    /// Registers a worker: its id, and the queue, attempts and heartbeat interval it is to use.
    pub fn register(&self, r: RegisterRequest) -> Result<RegisterReply, ApiError> {
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
        self.workers_lock()?.insert(
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
                exited: false,
                capacity_type: super::fleet::capacity_of(&r.capacity_type),
                interrupted: false,
                counted: false,
            },
        );
        tracing::info!(worker = %id, "worker registered");
        Ok(RegisterReply {
            worker_id: id,
            queue_uri: self.config.queue_uri.clone(),
            max_attempts: self.config.max_attempts,
            heartbeat_interval_ms: self.config.heartbeat_interval.as_millis() as u32,
        })
    }

    /// A worker's heartbeat: what it holds, its pace and its shards' outcomes; the reply names
    /// the cancelled jobs. An unknown worker (the coordinator restarted) must register again.
    pub async fn heartbeat(&self, h: HeartbeatRequest) -> Result<HeartbeatReply, ApiError> {
        {
            let mut w = self.workers_lock()?;
            let Some(e) = w.get_mut(&h.worker_id) else {
                return Err(ApiError::UnknownWorker(h.worker_id.clone()));
            };
            e.last_seen = SystemTime::now();
            e.seen_at = Instant::now();
            e.rate = h.items_per_second;
            e.capacity = h.capacity;
            e.device = h.device;
            e.shards = h.shards.into_iter().map(|s| (s.job_id, s.shard)).collect();
            e.unstarted = h.unstarted;
            e.exited = h.leaving;
            e.interrupted |= h.interrupted;
            if !h.capacity_type.is_empty() {
                e.capacity_type = super::fleet::capacity_of(&h.capacity_type);
            }
            if !h.peer_address.is_empty() {
                e.peer_address = h.peer_address;
            }
        }
        for o in &h.outcomes {
            metrics::counter!("spotbatch_shard_reports_total", "outcome" => o.outcome.clone())
                .increment(1);
            tracing::debug!(worker = %h.worker_id, job = %o.job_id, shard = %o.shard, outcome = %o.outcome, items = o.items, errors = o.errors, reason = %o.reason, "shard outcome");
        }
        Ok(HeartbeatReply {
            cancelled_jobs: self.cancelled_jobs().await,
        })
    }

    /// Live peers that serve stealing: the busiest first (most unstarted shards), or, with
    /// `idle`, those with nothing unstarted and a free slot.
    pub fn peers(&self, r: PeersRequest) -> Result<PeersReply, ApiError> {
        let w = self.workers_lock()?;
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
        Ok(PeersReply { peers })
    }

    /// Every registered worker, alive or not.
    pub(super) fn worker_infos(&self) -> Vec<WorkerInfo> {
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
                exited: e.exited,
                capacity_type: e.capacity_type.label().to_string(),
                interrupted: e.interrupted,
            })
            .collect();
        v.sort_by(|a, b| a.worker_id.cmp(&b.worker_id));
        v
    }
}

//! A worker's link to the coordinator: register (learning the queue), then heartbeat with
//! capacity, device, current shards, throughput, the shard outcomes since the last beat, and
//! whether a cloud's interruption notice is draining it (the fleet policy's evidence). The
//! coordinator is not on the data path: when it is away the worker keeps working from the queue,
//! logs once, and registers again when it answers `NOT_FOUND` (a restarted coordinator).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use spotbatch_net::Client;
use spotbatch_proto::api::{
    CurrentShard, HeartbeatRequest, RegisterReply, RegisterRequest, ShardOutcome,
};
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::progress::Progress;

/// Who this worker is, as told to the coordinator.
#[derive(Debug, Clone)]
pub struct Identity {
    /// Host or pod name.
    pub name: String,
    /// Shards it works at once.
    pub capacity: u32,
    /// `cpu` or `cuda:N`.
    pub device: String,
    /// Where it serves `Peer` for work stealing (empty: stealing off).
    pub peer_address: String,
    /// `spot` or `on_demand`: what the coordinator's fleet policy counts it as.
    pub capacity_type: String,
}

/// Registers, retrying for up to `patience` while the coordinator is unreachable: soon at first
/// (a coordinator that is just starting), then less and less often (0.2 s doubling to 10 s, with
/// jitter), so a fleet that starts during an outage does not hammer it.
pub async fn register(
    client: &mut Client,
    me: &Identity,
    patience: Duration,
) -> Result<RegisterReply, tonic::Status> {
    let until = Instant::now() + patience;
    let mut backoff = Backoff::new();
    loop {
        let r = client
            .register(RegisterRequest {
                name: me.name.clone(),
                capacity: me.capacity,
                device: me.device.clone(),
                peer_address: me.peer_address.clone(),
                capacity_type: me.capacity_type.clone(),
            })
            .await;
        match r {
            Ok(reply) => return Ok(reply.into_inner()),
            Err(s) if s.code() == tonic::Code::Unavailable && Instant::now() < until => {
                let delay = backoff
                    .next_delay()
                    .min(until.saturating_duration_since(Instant::now()));
                tracing::warn!(error = %spotbatch_net::describe(&s),
                               retry_in_ms = delay.as_millis() as u64,
                               "coordinator unavailable; retrying registration");
                tokio::time::sleep(delay).await;
            }
            Err(s) => return Err(s),
        }
    }
}

/// How far back the rate a heartbeat reports looks.
const RATE_WINDOW: Duration = Duration::from_secs(30);

/// Items per second over a sliding window of samples of a growing count.
struct RateWindow {
    span: Duration,
    samples: std::collections::VecDeque<(Instant, u64)>,
}

impl RateWindow {
    fn new(span: Duration) -> Self {
        Self {
            span,
            samples: std::collections::VecDeque::new(),
        }
    }

    /// Adds a sample and gives the rate since the oldest one inside the window (0 with one).
    fn rate(&mut self, now: Instant, count: u64) -> f64 {
        self.samples.push_back((now, count));
        while self
            .samples
            .front()
            .is_some_and(|(t, _)| now.saturating_duration_since(*t) > self.span)
        {
            self.samples.pop_front();
        }
        match self.samples.front() {
            Some((t, c)) if now > *t => {
                count.saturating_sub(*c) as f64 / now.duration_since(*t).as_secs_f64()
            }
            _ => 0.0,
        }
    }
}

/// Heartbeats until `stop`; returns after one last beat (so final outcomes are reported). The
/// first beat goes at once and `first` is signalled after it, so a worker learns which jobs are
/// cancelled before it leases anything.
pub async fn heartbeat_loop(
    mut client: Client,
    me: Identity,
    mut worker_id: String,
    interval: Duration,
    progress: Arc<Progress>,
    stop: CancellationToken,
    mut first: Option<tokio::sync::oneshot::Sender<()>>,
) {
    progress.collect_outcomes.store(true, Ordering::Relaxed);
    let mut window = RateWindow::new(RATE_WINDOW);
    let mut away = false;
    loop {
        let stopping = if first.is_some() {
            false
        } else {
            tokio::select! {
                _ = stop.cancelled() => true,
                _ = tokio::time::sleep(interval) => false,
            }
        };
        // Rows as the pipeline makes them (not as shards are written: a shard longer than a
        // beat would read 0 on most beats and a spike after it), over the last half minute.
        let rate = window.rate(Instant::now(), progress.rows_made.load(Ordering::Relaxed));
        let shards: Vec<CurrentShard> = progress
            .current
            .lock()
            .map(|c| {
                c.iter()
                    .map(|(shard, job)| CurrentShard {
                        job_id: job.clone(),
                        shard: shard.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        let pending = progress
            .outcomes
            .lock()
            .map(|mut o| std::mem::take(&mut *o))
            .unwrap_or_default();
        let outcomes: Vec<ShardOutcome> = pending
            .iter()
            .map(|o| ShardOutcome {
                job_id: o.job.clone(),
                shard: o.shard.clone(),
                outcome: o.outcome.to_string(),
                items: o.items,
                errors: o.errors,
                reason: o.reason.clone(),
            })
            .collect();
        let req = HeartbeatRequest {
            worker_id: worker_id.clone(),
            shards,
            items_per_second: rate,
            outcomes,
            capacity: me.capacity,
            device: me.device.clone(),
            unstarted: progress.unstarted.load(Ordering::Relaxed) as u32,
            peer_address: me.peer_address.clone(),
            // The last beat says goodbye: the coordinator counts it exited, not dead.
            leaving: stopping,
            capacity_type: me.capacity_type.clone(),
            // A drain a cloud's notice started: an interruption, not a scale-down.
            interrupted: progress.interrupted.load(Ordering::Relaxed),
        };
        match client.heartbeat(req).await {
            Ok(reply) => {
                if away {
                    tracing::info!("coordinator back");
                    away = false;
                }
                if let Ok(mut c) = progress.cancelled.write() {
                    for job in reply.into_inner().cancelled_jobs {
                        if c.insert(job.clone()) {
                            tracing::info!(job = %job, "job cancelled at the coordinator; dropping its shards");
                        }
                    }
                }
            }
            Err(s) => {
                // Keep the outcomes for the next beat.
                if let Ok(mut o) = progress.outcomes.lock() {
                    let later = std::mem::take(&mut *o);
                    *o = pending.into_iter().chain(later).collect();
                }
                if s.code() == tonic::Code::NotFound {
                    match register(&mut client, &me, Duration::ZERO).await {
                        Ok(r) => {
                            tracing::info!(worker = %r.worker_id, "registered again with the coordinator");
                            worker_id = r.worker_id;
                        }
                        Err(e) => {
                            tracing::warn!(error = %spotbatch_net::describe(&e), "registering again failed")
                        }
                    }
                } else if !away {
                    tracing::warn!(error = %spotbatch_net::describe(&s), "coordinator unreachable; working on from the queue");
                    away = true;
                }
            }
        }
        if let Some(tx) = first.take() {
            let _ = tx.send(());
        }
        if stopping {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Work written in bursts (50 items every 5 s, 10 items/s) reads as a steady 10 items/s
    /// once the window is full, on beats every 2 s; an idle worker's rate falls to 0.
    #[test]
    fn the_reported_rate_is_steady_when_items_come_in_bursts() {
        let mut w = RateWindow::new(Duration::from_secs(30));
        let t0 = Instant::now();
        let mut rates = Vec::new();
        for beat in 0..60u64 {
            let secs = beat * 2;
            let count = (secs / 5) * 50;
            rates.push(w.rate(t0 + Duration::from_secs(secs), count));
        }
        for r in &rates[20..] {
            assert!((8.0..=12.0).contains(r), "{rates:?}");
        }
        // Idle from 120 s on: the count stays.
        let mut r = 0.0;
        for beat in 61..80u64 {
            r = w.rate(t0 + Duration::from_secs(beat * 2), 1200);
        }
        assert_eq!(r, 0.0);
    }
}

//! The owner's side of a leased shard, from lease to ack: read the message (a foreign one is
//! dead-lettered), wait for its turn in the deque (where a peer may take it: then keep the lease
//! alive until the peer's last word), work it, and settle it on the queue by the outcome — ack
//! what is written, release what failed (with its reason; an attempt counted) or was handed back
//! by a drain (not counted), leave a lost lease alone.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use spotbatch_proto::ShardTask;
use spotbatch_queue::Lease;
use tracing::{info, warn};

use super::account::{count_done, count_failed, count_skipped, shard_event};
use super::run::run_shard;
use super::turn::{wait_turn, Turn};
use super::Outcome;
use crate::error::{Policy, ShardError};
use crate::handoff::{Given, Word};
use crate::keeper::Keeper;
use crate::node::Node;

/// Works a leased shard to its end on the queue.
pub(crate) async fn handle_lease(node: &Node, lease: Lease) {
    let task = match ShardTask::from_bytes(&lease.body) {
        Ok(t) => t,
        Err(e) => {
            let e = ShardError::from(e);
            debug_assert_eq!(e.policy(), Policy::DeadLetter);
            warn!(worker = %node.opts.id, item = %lease.id, error = %e, "dead-lettering a message that is not ours");
            if let Err(e) = node.queue.dead_letter(&lease, &e.to_string()).await {
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
        info!(worker = %node.opts.id, shard = %task.shard, delivery = lease.delivery_count, "working a redelivered shard");
    }
    if node.progress.is_cancelled(&task.job) {
        // Cancelled at the coordinator: drop the shard without work.
        let _ = node.queue.ack(std::slice::from_ref(&lease)).await;
        node.progress.record(&task, "cancelled", 0, 0, "");
        metrics::counter!("spotbatch_shards_total", "job" => task.job.clone(), "outcome" => "cancelled")
            .increment(1);
        return;
    }
    node.progress.hold(&task);
    let leased_at_ms = spotbatch_store::ledger::now_ms();
    let keeper = Keeper::queue(Arc::clone(&node.queue), lease.clone(), node.visibility());
    let outcome = loop {
        let given = match wait_turn(node, Some(&lease), &keeper).await {
            Turn::Feed(permit) => {
                break run_shard(node, &task, lease.delivery_count, &keeper, permit).await
            }
            Turn::Drained => break Outcome::Unstarted,
            Turn::Lost(reason) => break Outcome::Failed(ShardError::LeaseLost(reason)),
            Turn::Stopped => break Outcome::Failed(ShardError::Stopped),
            Turn::Given(g) => g,
        };
        // A peer works it now (and reports it in its heartbeats); the lease stays ours.
        node.progress.unhold(&task);
        let (thief, at) = (given.thief.clone(), given.at);
        match handed_over(node, given, &keeper).await {
            Back::Done => {
                info!(worker = %node.opts.id, shard = %task.shard, thief = %thief, after_ms = at.elapsed().as_millis() as u64, "a peer finished a shard handed to it; acking");
                break Outcome::HandedOver;
            }
            Back::Failed(reason) => break Outcome::Failed(ShardError::Peer(reason)),
            Back::Drained => break Outcome::Unstarted,
            Back::Lost(reason) => break Outcome::Failed(ShardError::LeaseLost(reason)),
            Back::Stopped => break Outcome::Failed(ShardError::Stopped),
            Back::Returned(why) => {
                metrics::counter!("spotbatch_shards_handed_over_total", "direction" => "returned")
                    .increment(1);
                info!(worker = %node.opts.id, shard = %task.shard, thief = %thief, why, "took a handed-over shard back");
                node.progress.hold(&task);
            }
        }
    };
    // Extensions stop before the ack or release (an extension after a release would hide the
    // message again).
    drop(keeper);
    node.progress.unhold(&task);
    shard_event(
        node,
        &task,
        &outcome,
        leased_at_ms,
        lease.delivery_count,
        recovery_s,
    )
    .await;
    settle(node, &task, &lease, outcome).await;
}

/// Settles a shard on the queue by its outcome.
async fn settle(node: &Node, task: &ShardTask, lease: &Lease, outcome: Outcome) {
    let q = &node.queue;
    let leases = std::slice::from_ref(lease);
    match outcome {
        Outcome::Done { .. } | Outcome::HandedOver => {
            // Acks need no retry: an un-acked shard is redelivered, found done, and acked then.
            if let Err(e) = q.ack(leases).await {
                warn!(job = %task.job, shard = %task.shard, error = %e, "ack failed; the shard will be redelivered and skipped");
            }
            match outcome {
                Outcome::Done { items, errors } => count_done(node, task, items, errors),
                _ => node.progress.record(task, "handed_over", 0, 0, ""),
            }
        }
        Outcome::AlreadyDone => {
            let _ = q.ack(leases).await;
            count_skipped(node, task);
        }
        Outcome::Unstarted => {
            release_for_preemption(node, lease).await;
            if let Some(t) = node.control.since_notice() {
                metrics::histogram!("spotbatch_notice_to_release_seconds").record(t.as_secs_f64());
                info!(worker = %node.opts.id, shard = %task.shard, after_ms = t.as_millis() as u64, "released an unstarted shard after the notice");
            }
        }
        Outcome::Partial { done, total } => {
            release_for_preemption(node, lease).await;
            info!(worker = %node.opts.id, shard = %task.shard, done, total, "wrote a partial result and released the shard");
        }
        Outcome::Failed(e) => match e.policy() {
            Policy::Retry | Policy::ErrorRow => {
                let reason = e.to_string();
                warn!(worker = %node.opts.id, job = %task.job, shard = %task.shard, attempt = lease.delivery_count, error = %reason, "shard failed; releasing it");
                count_failed(node, task, &reason);
                metrics::counter!("spotbatch_leases_released_total", "reason" => "failed")
                    .increment(1);
                if let Err(e) = q.release(leases, Some(&reason)).await {
                    warn!(shard = %task.shard, error = %e, "release failed; the lease will expire");
                }
            }
            Policy::Stop => {
                let reason = e.to_string();
                warn!(worker = %node.opts.id, shard = %task.shard, error = %reason, "lease lost; stopped work on the shard");
                node.progress.record(task, "lease_lost", 0, 0, &reason);
                metrics::counter!("spotbatch_shards_total", "job" => task.job.clone(), "outcome" => "lease_lost")
                    .increment(1);
            }
            Policy::Release => {
                metrics::counter!("spotbatch_leases_released_total", "reason" => "shutdown")
                    .increment(1);
                if let Err(e) = q.release(leases, None).await {
                    warn!(shard = %task.shard, error = %e, "release failed; the lease will expire");
                }
                info!(shard = %task.shard, "released on shutdown");
            }
            Policy::DeadLetter => {
                let reason = e.to_string();
                warn!(worker = %node.opts.id, shard = %task.shard, error = %reason, "dead-lettering a shard that cannot succeed");
                count_failed(node, task, &reason);
                if let Err(e) = q.dead_letter(lease, &reason).await {
                    warn!(shard = %task.shard, error = %e, "dead-letter failed");
                }
            }
        },
    }
}

async fn release_for_preemption(node: &Node, lease: &Lease) {
    metrics::counter!("spotbatch_leases_released_total", "reason" => "preemption").increment(1);
    if let Err(e) = node.queue.release(std::slice::from_ref(lease), None).await {
        warn!(item = %lease.id, error = %e, "release failed; the lease will expire");
    }
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
async fn handed_over(node: &Node, given: Given, keeper: &Keeper) -> Back {
    let Some(st) = &node.steal else {
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
            _ = node.control.stop.cancelled() => break Back::Stopped,
            _ = node.control.drain.cancelled(), if !draining => {
                draining = true;
                cutoff.as_mut().reset(tokio::time::Instant::from_std(node.control.cutoff()));
            }
            _ = &mut cutoff, if draining => break Back::Drained,
        }
    };
    st.handoffs.forget(&id);
    back
}

//! A thief's side of a shard handed over by its owner (stolen, or offered by a draining owner):
//! work it as if leased, keeping the hand-off alive with `working` reports, then tell the owner
//! how it ended — `done` (the owner acks), `failed` (the owner releases it with the reason) or
//! `released` (the owner takes it back). A thief whose owner took the shard back stops at once.

use std::time::Duration;

use spotbatch_proto::api::HandedShard;
use spotbatch_proto::ShardTask;
use tracing::{info, warn};

use super::account::{count_done, count_failed, count_skipped, shard_event};
use super::run::run_shard;
use super::turn::{wait_turn, Turn};
use super::Outcome;
use crate::error::{Policy, ShardError};
use crate::keeper::Keeper;
use crate::node::Node;
use crate::steal::{keep_handoff, report_final, PeerConn};

/// Works a shard handed over by `owner` and reports its outcome.
pub(crate) async fn handle_stolen(node: &Node, h: HandedShard, owner: PeerConn, timeout: Duration) {
    let me = node.opts.id.clone();
    let id = h.handoff_id.clone();
    let task = match ShardTask::from_bytes(&h.task) {
        Ok(t) => t,
        Err(e) => {
            let reason = format!("not a spotbatch shard: {e}");
            report_final(owner, &id, &me, "failed", 0, 0, reason).await;
            return;
        }
    };
    if node.progress.is_cancelled(&task.job) {
        // Cancelled at the coordinator: the owner acks it unworked.
        report_final(owner, &id, &me, "done", 0, 0, String::new()).await;
        return;
    }
    node.progress.hold(&task);
    let started_ms = spotbatch_store::ledger::now_ms();
    let keeper = Keeper::spawn(keep_handoff(
        owner.clone(),
        id.clone(),
        me.clone(),
        timeout / 4,
    ));
    let outcome = match wait_turn(node, None, &keeper).await {
        Turn::Feed(permit) => run_shard(node, &task, h.delivery_count, &keeper, permit).await,
        Turn::Lost(reason) => Outcome::Failed(ShardError::LeaseLost(reason)),
        Turn::Drained | Turn::Given(_) => Outcome::Unstarted,
        Turn::Stopped => Outcome::Failed(ShardError::Stopped),
    };
    drop(keeper);
    node.progress.unhold(&task);
    shard_event(node, &task, &outcome, started_ms, h.delivery_count, None).await;
    let (state, items, errors, reason) = match outcome {
        Outcome::Done { items, errors } => {
            count_done(node, &task, items, errors);
            ("done", items, errors, String::new())
        }
        Outcome::AlreadyDone | Outcome::HandedOver => {
            count_skipped(node, &task);
            ("done", 0, 0, String::new())
        }
        Outcome::Failed(e) => match e.policy() {
            Policy::Stop => {
                info!(worker = %me, shard = %task.shard, why = %e, "stopped work on a stolen shard");
                return;
            }
            Policy::Release => {
                info!(worker = %me, shard = %task.shard, "giving a stolen shard back to its owner");
                ("released", 0, 0, String::new())
            }
            Policy::Retry | Policy::ErrorRow | Policy::DeadLetter => {
                let reason = e.to_string();
                warn!(worker = %me, shard = %task.shard, error = %reason, "a stolen shard failed; its owner releases it");
                count_failed(node, &task, &reason);
                ("failed", 0, 0, reason)
            }
        },
        Outcome::Unstarted | Outcome::Partial { .. } => {
            info!(worker = %me, shard = %task.shard, "giving a stolen shard back to its owner");
            ("released", 0, 0, String::new())
        }
    };
    report_final(owner, &id, &me, state, items, errors, reason).await;
}

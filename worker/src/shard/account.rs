//! Accounting for a shard's end: the worker's progress counters, the `spotbatch_items_total` /
//! `spotbatch_shards_total` series, the outcome reported to the coordinator, and the shard's bar
//! on the worker's cost ledger (written beside the job's output).

use std::sync::atomic::Ordering;

use spotbatch_proto::ShardTask;
use spotbatch_store::ledger::{now_ms, ShardEvent};

use super::Outcome;
use crate::node::Node;

/// Puts the shard's bar on the cost ledger's timeline and writes the ledger.
pub(crate) async fn shard_event(
    node: &Node,
    task: &ShardTask,
    outcome: &Outcome,
    started_ms: u64,
    attempt: u32,
    recovery_s: Option<f64>,
) {
    let (name, items) = outcome.summary();
    node.cost.shard(
        &task.job,
        ShardEvent {
            shard: task.shard.clone(),
            leased_at_ms: started_ms,
            ended_at_ms: now_ms(),
            outcome: name.to_string(),
            items,
            attempt,
            recovery_s,
        },
    );
    // Without loading the job's model: a shard that failed because it cannot load is on the
    // ledger too.
    if let Ok(layout) = node.jobs.layout(task).await {
        node.cost.write_ledger(&task.job, &layout).await;
    }
}

pub(crate) fn count_done(node: &Node, task: &ShardTask, items: u64, errors: u64) {
    let p = &node.progress;
    p.items_ok.fetch_add(items - errors, Ordering::Relaxed);
    p.items_failed.fetch_add(errors, Ordering::Relaxed);
    p.shards_done.fetch_add(1, Ordering::Relaxed);
    let job = task.job.clone();
    metrics::counter!("spotbatch_items_total", "job" => job.clone(), "outcome" => "ok")
        .increment(items - errors);
    metrics::counter!("spotbatch_items_total", "job" => job.clone(), "outcome" => "error")
        .increment(errors);
    metrics::counter!("spotbatch_shards_total", "job" => job, "outcome" => "done").increment(1);
    p.record(task, "done", items, errors, "");
}

pub(crate) fn count_skipped(node: &Node, task: &ShardTask) {
    node.progress.shards_skipped.fetch_add(1, Ordering::Relaxed);
    node.progress.record(task, "skipped", 0, 0, "");
    metrics::counter!("spotbatch_shards_total", "job" => task.job.clone(), "outcome" => "skipped")
        .increment(1);
}

pub(crate) fn count_failed(node: &Node, task: &ShardTask, reason: &str) {
    node.progress
        .attempts_failed
        .fetch_add(1, Ordering::Relaxed);
    node.progress.record(task, "failed", 0, 0, reason);
    metrics::counter!("spotbatch_shards_total", "job" => task.job.clone(), "outcome" => "failed")
        .increment(1);
}

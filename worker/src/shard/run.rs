//! Working a shard whose turn to feed has come: skip it if its done marker exists, resume it from
//! a partial result, else run it whole through the pipeline; then write its part file and done
//! marker (or, drained, its partial result). Work stops the moment the claim on the shard is lost
//! (nothing is written then) or the worker stops at once.

use std::time::Instant;

use spotbatch_proto::ShardTask;
use spotbatch_store::JobLayout;
use tracing::info;

use super::output::{read_partial, write_done, write_partial};
use super::Outcome;
use crate::error::ShardError;
use crate::keeper::Keeper;
use crate::node::Node;
use crate::pipeline::Collected;

/// Works `task` (its `attempt`-th delivery) with its turn to feed (`permit`); `keeper` holds the
/// claim on it (the queue lease, or a hand-off from its owner). A shard done is a measurement of
/// the worker's pace.
pub(crate) async fn run_shard(
    node: &Node,
    task: &ShardTask,
    attempt: u32,
    keeper: &Keeper,
    permit: tokio::sync::SemaphorePermit<'_>,
) -> Outcome {
    let t0 = Instant::now();
    let outcome = match work(node, task, attempt, keeper, permit).await {
        Ok(o) => o,
        Err(e) => Outcome::Failed(e),
    };
    if let Outcome::Done { items, errors } = &outcome {
        let took = t0.elapsed();
        node.pace.shard_took(took);
        let secs = took.as_secs_f64();
        info!(worker = %node.opts.id, job = %task.job, shard = %task.shard, items, errors,
              seconds = format!("{secs:.2}"), items_per_s = format!("{:.1}", *items as f64 / secs.max(1e-9)),
              "shard done");
    }
    outcome
}

async fn work(
    node: &Node,
    task: &ShardTask,
    attempt: u32,
    keeper: &Keeper,
    permit: tokio::sync::SemaphorePermit<'_>,
) -> Result<Outcome, ShardError> {
    let ctx = node.jobs.context(task).await?;
    if ctx
        .layout
        .prefix
        .exists(&JobLayout::done_key(&task.shard))
        .await?
    {
        return Ok(Outcome::AlreadyDone);
    }
    // Rows a drained worker finished before handing the shard back: not done again.
    let kept = read_partial(&ctx.layout, &task.shard).await?;
    if !kept.is_empty() {
        info!(worker = %node.opts.id, shard = %task.shard, kept = kept.len(), total = task.keys.len(), "resuming a shard from its partial result");
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
        node.cost.redone(&task.job, redo as u64);
    }
    let cancel = node.control.stop.child_token();
    let fed = node.pipeline.work_shard(
        &node.control,
        &node.progress,
        &node.cost,
        &ctx,
        task,
        cancel.clone(),
        kept,
        permit,
    );
    let collected = tokio::select! {
        c = fed => c,
        lost = keeper.lost() => Err(ShardError::LeaseLost(lost)),
        _ = node.control.stop.cancelled() => Err(ShardError::Stopped),
    };
    cancel.cancel();
    // Write the part whole, then the done marker, then (the caller) ack. A partial result is
    // written the same way, without a marker, and the shard is released.
    let t0 = Instant::now();
    let write = async {
        let outcome: Result<Outcome, ShardError> = match collected? {
            Collected::Complete(rows) => {
                let w = write_done(&ctx.layout, ctx.sink.as_ref(), task, &rows).await?;
                Ok(Outcome::Done {
                    items: w.items,
                    errors: w.errors,
                })
            }
            Collected::Partial(rows) => {
                let w = write_partial(&ctx.layout, &ctx.carried, task, &rows).await?;
                Ok(Outcome::Partial {
                    done: w.items as usize,
                    total: task.keys.len(),
                })
            }
            Collected::Unstarted => Ok(Outcome::Unstarted),
        };
        outcome
    };
    let outcome = tokio::select! {
        w = write => w?,
        lost = keeper.lost() => return Err(ShardError::LeaseLost(lost)),
    };
    if matches!(outcome, Outcome::Done { .. } | Outcome::Partial { .. }) {
        metrics::histogram!("spotbatch_stage_seconds", "stage" => "write")
            .record(t0.elapsed().as_secs_f64());
    }
    Ok(outcome)
}

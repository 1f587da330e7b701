//! One shard through the pipeline: its items (from the job's item source) fed in, one row per
//! item collected, in the source's order. The next shard starts feeding when this one's last two
//! batches are in the pipeline; on a drain, feeding stops and rows are collected until the drain's
//! cutoff (what is finished by then is the partial result).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use spotbatch_proto::{OutputRow, ShardTask};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Fetched, Pipeline, ShardWork, ToShard};
use crate::control::Control;
use crate::cost::CostMeter;
use crate::error::{Policy, ShardError};
use crate::job::JobContext;
use crate::progress::Progress;
use crate::sink::Row;
use crate::source::Payload;

/// How far a shard's pipeline got.
#[derive(Debug)]
pub(crate) enum Collected {
    /// Every row, in order.
    Complete(Vec<Row>),
    /// Drained: the rows finished by the cutoff (kept ones included), in no particular order.
    Partial(Vec<Row>),
    /// Drained before it fed anything.
    Unstarted,
}

/// How the feeding of a shard ended: the items it named, whether that was all of them (not
/// stopped by a drain or a failure), and the feed permit, which the collector gives up once few
/// are left in the pipeline.
struct Fed<'a> {
    items: usize,
    all: bool,
    permit: tokio::sync::SemaphorePermit<'a>,
}

impl Pipeline {
    /// Feeds `task`'s items into the pipeline (those in `kept` are not read: their rows are
    /// kept) and collects one row per item, in order. `permit` is this shard's turn to feed; it
    /// is given up when the pipeline is down to two batches, so the next shard can start.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn work_shard(
        &self,
        control: &Control,
        progress: &Progress,
        cost: &Arc<CostMeter>,
        ctx: &Arc<JobContext>,
        task: &ShardTask,
        cancel: CancellationToken,
        mut kept: HashMap<String, Row>,
        permit: tokio::sync::SemaphorePermit<'_>,
    ) -> Result<Collected, ShardError> {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let work = Arc::new(ShardWork {
            ctx: Arc::clone(ctx),
            tx,
            cancel,
            cost: Arc::clone(cost),
        });
        let kept_keys: Arc<HashSet<String>> = Arc::new(kept.keys().cloned().collect());
        let mut items = ctx.source.read(task, kept_keys, self.fetch_concurrency);
        let (fed_tx, mut fed_rx) = tokio::sync::oneshot::channel::<Fed>();
        // This shard's items fed into the pipeline and not yet collected.
        let outstanding = AtomicIsize::new(0);
        let kind = ctx.post.kind();
        // A record's carried values (its id and carried columns), set aside for its row while its
        // text goes through the pipeline.
        let carried: std::sync::Mutex<HashMap<usize, Vec<spotbatch_records::Value>>> =
            Default::default();
        let feed = async {
            let mut named = 0;
            let mut all = true;
            while let Some(next) = items.next().await {
                if work.cancel.is_cancelled() || control.drain.is_cancelled() {
                    all = false;
                    break;
                }
                let idx = named;
                let item = match next {
                    Ok(item) => item,
                    Err(e) => match (e.policy(), e) {
                        (Policy::ErrorRow, ShardError::Item { key, error }) => {
                            let row = OutputRow::failed(key, kind, error.to_string());
                            work.send(ToShard::Row(idx, row));
                            named += 1;
                            continue;
                        }
                        // Anything else is the attempt's: it fails, and is retried.
                        (_, e) => {
                            work.send(ToShard::Fail(e));
                            all = false;
                            break;
                        }
                    },
                };
                named += 1;
                let payload = match item.payload {
                    // Kept from a partial result: its row goes straight to the collector.
                    None => {
                        if let Some(row) = kept.remove(&item.key) {
                            work.send(ToShard::Kept(idx, row));
                        }
                        continue;
                    }
                    Some(Payload::Record(fields)) => {
                        let values: Vec<_> = fields.id.into_iter().chain(fields.columns).collect();
                        if !values.is_empty() {
                            if let Ok(mut c) = carried.lock() {
                                c.insert(idx, values);
                            }
                        }
                        Payload::Text(fields.text.unwrap_or_default())
                    }
                    Some(other) => other,
                };
                // Counted before it goes in, so its row cannot overtake the count.
                outstanding.fetch_add(1, Ordering::Relaxed);
                self.in_pipeline.fetch_add(1, Ordering::Relaxed);
                let fetched = Fetched {
                    work: Arc::clone(&work),
                    idx,
                    key: item.key,
                    payload,
                };
                // A full pipeline must not hold up a drain.
                let sent = tokio::select! {
                    r = self.decode_tx.send(fetched) => r.is_ok(),
                    _ = control.drain.cancelled() => false,
                };
                if !sent {
                    all = false;
                    break;
                }
            }
            let _ = fed_tx.send(Fed {
                items: named,
                all,
                permit,
            });
        };
        let low_water = ctx.runtime.low_water();
        let mut rows: Vec<Option<Row>> = Vec::new();
        let collect = async {
            let mut permit: Option<tokio::sync::SemaphorePermit<'_>> = None;
            let mut have = 0;
            // Items named by the feed, once it ended, and whether that was all of them.
            let mut fed: Option<(usize, bool)> = None;
            let mut draining = false;
            let cutoff = tokio::time::sleep(Duration::from_secs(u64::MAX / 4));
            tokio::pin!(cutoff);
            loop {
                if fed.is_some_and(|(f, all)| all && have >= f) {
                    return Ok(true);
                }
                // The next shard starts feeding when the pipeline (this shard and any before it)
                // is down to two batches: the model keeps busy, shards not needed yet stay
                // unstarted (in the deque, where peers may take them) and a drain finds at most
                // one shard started.
                if fed.is_some() && self.in_pipeline.load(Ordering::Relaxed) <= low_water as isize {
                    drop(permit.take());
                }
                // Drained and everything fed is back: a partial result. (Feeding that stopped for
                // a store error is followed by its Fail message, which ends the shard instead.)
                if draining && fed.is_some_and(|(f, _)| have >= f) {
                    return Ok(false);
                }
                let place = |rows: &mut Vec<Option<Row>>, idx: usize, row: Row| -> bool {
                    if rows.len() <= idx {
                        rows.resize_with(idx + 1, || None);
                    }
                    let new = rows[idx].is_none();
                    rows[idx] = Some(row);
                    new
                };
                tokio::select! {
                    m = rx.recv() => match m {
                        Some(ToShard::Row(idx, row)) => {
                            let values = carried
                                .lock()
                                .ok()
                                .and_then(|mut c| c.remove(&idx))
                                .unwrap_or_default();
                            let failed = row.error.is_some();
                            if place(&mut rows, idx, Row::New(row, values)) {
                                progress.rows_made.fetch_add(1, Ordering::Relaxed);
                                if failed {
                                    progress.rows_made_failed.fetch_add(1, Ordering::Relaxed);
                                }
                                have += 1;
                                if outstanding.fetch_sub(1, Ordering::Relaxed) > 0 {
                                    self.in_pipeline.fetch_sub(1, Ordering::Relaxed);
                                } else {
                                    // An error row from the feed itself: never counted in.
                                    outstanding.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                        }
                        Some(ToShard::Kept(idx, row)) => {
                            if place(&mut rows, idx, row) {
                                have += 1;
                            }
                        }
                        Some(ToShard::Fail(e)) => return Err(e),
                        None => return Err(ShardError::Pipeline("pipeline stopped".into())),
                    },
                    end = &mut fed_rx, if fed.is_none() => match end {
                        Ok(end) => {
                            fed = Some((end.items, end.all));
                            permit = Some(end.permit);
                        }
                        Err(_) => return Err(ShardError::Pipeline("pipeline stopped".into())),
                    },
                    _ = control.drain.cancelled(), if !draining => {
                        draining = true;
                        cutoff.as_mut().reset(tokio::time::Instant::from_std(control.cutoff()));
                    }
                    _ = &mut cutoff, if draining => return Ok(false),
                }
            }
        };
        let (_, complete) = tokio::join!(feed, collect);
        // Items of this shard never collected (it stopped early) are no longer in the pipeline.
        let left = outstanding.swap(0, Ordering::Relaxed);
        self.in_pipeline.fetch_sub(left.max(0), Ordering::Relaxed);
        work.cancel.cancel();
        match complete? {
            true => Ok(Collected::Complete(rows.into_iter().flatten().collect())),
            false => {
                // Rows kept from an earlier partial result that feeding did not reach stay kept.
                let mut done: Vec<Row> = rows.into_iter().flatten().collect();
                done.extend(kept.into_values());
                if done.is_empty() {
                    Ok(Collected::Unstarted)
                } else {
                    Ok(Collected::Partial(done))
                }
            }
        }
    }
}

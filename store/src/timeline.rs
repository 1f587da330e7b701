//! A job's timeline, from its workers' ledgers and its done markers: rows written over time (and
//! their rate over a window), every shard as a bar on the worker that leased it (how it ended),
//! failed attempts and shards that failed for good, preemption notices and recoveries, and the
//! cost report. `spotbatch report` draws it.

use serde::Serialize;
use spotbatch_proto::DoneMarker;

use crate::cost::{failures, report as cost_report, total, Report};
use crate::ledger::Ledger;

/// Rows written by a moment (the cumulative series): one point per shard done.
#[derive(Debug, Serialize)]
pub struct Written {
    /// When, seconds from the first lease.
    pub at_s: f64,
    /// Rows written by then.
    pub items: u64,
}

/// The rate of rows written over the window before a moment (the second series).
#[derive(Debug, Serialize)]
pub struct Rate {
    /// When, seconds from the first lease.
    pub at_s: f64,
    /// Rows written per second over `rate_window_s` before it.
    pub items_per_s: f64,
}

/// One leased shard on one worker.
#[derive(Debug, Serialize)]
pub struct Bar {
    /// The worker.
    pub worker: String,
    /// The shard.
    pub shard: String,
    /// Leased, seconds from the first lease.
    pub start_s: f64,
    /// Ended, seconds from the first lease.
    pub end_s: f64,
    /// How it ended (the ledger's outcome).
    pub outcome: String,
    /// Rows it wrote.
    pub items: u64,
    /// The delivery count.
    pub attempt: u32,
}

/// A moment on a worker: a notice, or a shard leased again after waiting `seconds` on the queue.
#[derive(Debug, Serialize)]
pub struct Point {
    /// The worker.
    pub worker: String,
    /// When, seconds from the first lease.
    pub at_s: f64,
    /// The wait (recoveries), or 0.
    pub seconds: f64,
}

/// A job's timeline.
#[derive(Debug, Serialize)]
pub struct Timeline {
    /// The job id.
    pub job: String,
    /// The first lease (Unix milliseconds).
    pub started_at_ms: u64,
    /// First lease to last shard end, seconds.
    pub wall_s: f64,
    /// Rows written (done markers).
    pub items: u64,
    /// Rows with an error (done markers).
    pub error_rows: u64,
    /// Shards done (done markers).
    pub shards_done: u64,
    /// Shards not done whose last attempt failed: dead-lettered, unless the queue retries them.
    pub shards_failed: u64,
    /// Attempts that failed (each released with its error, or dead-lettered).
    pub failed_attempts: u64,
    /// Shards leased again after an earlier delivery.
    pub redelivered: u64,
    /// Rows written over time: one point per shard done.
    pub cumulative: Vec<Written>,
    /// The rate of rows written, over a window of `rate_window_s`.
    pub rate: Vec<Rate>,
    /// The rate's window, seconds.
    pub rate_window_s: f64,
    /// Every leased shard.
    pub shards: Vec<Bar>,
    /// Preemption notices.
    pub notices: Vec<Point>,
    /// Shards leased again after being handed back.
    pub recoveries: Vec<Point>,
    /// The cost report, when workers had prices.
    pub cost: Option<Report>,
}

/// Builds the timeline.
pub fn build(job: &str, ledgers: &[Ledger], markers: &[DoneMarker]) -> Timeline {
    let events = ledgers
        .iter()
        .flat_map(|l| l.shards.iter().map(move |e| (l, e)));
    let t0 = events
        .clone()
        .map(|(_, e)| e.leased_at_ms)
        .min()
        .unwrap_or(0);
    let t1 = events
        .clone()
        .map(|(_, e)| e.ended_at_ms)
        .max()
        .unwrap_or(t0)
        .max(t0.saturating_add(1));
    let s = |ms: u64| ms.saturating_sub(t0) as f64 / 1000.0;
    let wall = s(t1);
    // Rows written over time: a done shard's rows (a drained shard's partial rows count when the
    // shard is done, in its rows); a shard done twice (redelivered before its ack) counts once.
    let mut done: Vec<(f64, &str, u64)> = events
        .clone()
        .filter(|(_, e)| e.outcome == "done")
        .map(|(_, e)| (s(e.ended_at_ms), e.shard.as_str(), e.items))
        .collect();
    done.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut seen = std::collections::HashSet::new();
    done.retain(|(_, shard, _)| seen.insert(*shard));
    let mut sum = 0u64;
    let cumulative: Vec<Written> = done
        .iter()
        .map(|(at, _, n)| {
            sum = sum.saturating_add(*n);
            Written {
                at_s: *at,
                items: sum,
            }
        })
        .collect();
    // The rate over a window of a tenth of the job (shards finish in bursts: a narrower window
    // shows the bursts, not the pace).
    let window = (wall / 10.0).max(1e-3);
    let written_by = |t: f64| {
        cumulative
            .iter()
            .take_while(|w| w.at_s <= t)
            .last()
            .map_or(0, |w| w.items)
    };
    let steps = 100usize;
    let rate = (0..=steps)
        .map(|i| {
            let at = wall * i as f64 / steps as f64;
            Rate {
                at_s: at,
                items_per_s: written_by(at).saturating_sub(written_by(at - window)) as f64 / window,
            }
        })
        .collect();
    let (failed_attempts, shards_failed) = failures(ledgers, markers);
    let shards: Vec<Bar> = events
        .clone()
        .map(|(l, e)| Bar {
            worker: l.worker.clone(),
            shard: e.shard.clone(),
            start_s: s(e.leased_at_ms),
            end_s: s(e.ended_at_ms),
            outcome: e.outcome.clone(),
            items: e.items,
            attempt: e.attempt,
        })
        .collect();
    let notices = ledgers
        .iter()
        .filter_map(|l| {
            l.notice_at_ms.map(|at| Point {
                worker: l.worker.clone(),
                at_s: s(at),
                seconds: 0.0,
            })
        })
        .collect();
    let recoveries = events
        .filter_map(|(l, e)| {
            e.recovery_s.map(|r| Point {
                worker: l.worker.clone(),
                at_s: s(e.leased_at_ms),
                seconds: r,
            })
        })
        .collect();
    let priced: Vec<Ledger> = ledgers.iter().filter(|l| l.priced).cloned().collect();
    Timeline {
        job: job.to_string(),
        started_at_ms: t0,
        wall_s: wall,
        items: total(markers.iter().map(|m| m.items)),
        error_rows: total(markers.iter().map(|m| m.errors)),
        shards_done: markers.len() as u64,
        shards_failed,
        failed_attempts,
        redelivered: shards.iter().filter(|b| b.attempt > 1).count() as u64,
        cumulative,
        rate,
        rate_window_s: window,
        shards,
        notices,
        recoveries,
        cost: (!priced.is_empty()).then(|| cost_report(job, &priced, markers)),
    }
}

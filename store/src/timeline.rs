//! A job's timeline, from its workers' ledgers and its done markers: items finished over time,
//! every shard as a bar on the worker that leased it (how it ended), preemption notices and
//! recoveries, and the cost report. `spotbatch report` draws it.

use serde::Serialize;
use spotbatch_proto::DoneMarker;

use crate::cost::{report as cost_report, total, Report};
use crate::ledger::Ledger;

/// Items finished in one interval.
#[derive(Debug, Serialize)]
pub struct Bucket {
    /// Start, seconds from the first lease.
    pub start_s: f64,
    /// End, seconds from the first lease.
    pub end_s: f64,
    /// Rows finished in it.
    pub items: u64,
    /// The rate.
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
    /// Items finished per interval.
    pub throughput: Vec<Bucket>,
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
    let n = 40usize;
    let width = wall / n as f64;
    let mut throughput: Vec<Bucket> = (0..n)
        .map(|i| Bucket {
            start_s: i as f64 * width,
            end_s: (i + 1) as f64 * width,
            items: 0,
            items_per_s: 0.0,
        })
        .collect();
    for (_, e) in events.clone() {
        if e.outcome == "done" || e.outcome == "partial" {
            let i = ((s(e.ended_at_ms) / width) as usize).min(n - 1);
            throughput[i].items = throughput[i].items.saturating_add(e.items);
        }
    }
    for b in &mut throughput {
        b.items_per_s = b.items as f64 / width.max(1e-9);
    }
    let shards = events
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
        throughput,
        shards,
        notices,
        recoveries,
        cost: (!priced.is_empty()).then(|| cost_report(job, &priced, markers)),
    }
}

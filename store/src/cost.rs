//! A job's cost, added up from its workers' ledgers and its done markers: dollars spent, saved
//! against on-demand, per 1000 items, and what interruptions cost (work redone, time lost).

use spotbatch_proto::DoneMarker;

use crate::ledger::Ledger;

/// The cost report of a job.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Report {
    /// The job id.
    pub job: String,
    /// Worker ledgers added up.
    pub workers: usize,
    /// Rows written (done markers).
    pub items: u64,
    /// Rows with an error.
    pub error_rows: u64,
    /// Machine seconds charged to the job.
    pub machine_seconds: f64,
    /// Dollars spent.
    pub dollars: f64,
    /// What the same machine time costs on demand.
    pub on_demand_dollars: f64,
    /// On-demand dollars minus dollars spent.
    pub saved_dollars: f64,
    /// Saved, as a fraction of the on-demand dollars.
    pub saved_fraction: f64,
    /// Dollars per 1000 rows written.
    pub dollars_per_1k_items: f64,
    /// Items the model ran (redone ones included).
    pub items_inferred: u64,
    /// Items run again after an interruption (an upper bound).
    pub items_redone: u64,
    /// Attempts that failed (released with their error, or dead-lettered).
    pub failed_attempts: u64,
    /// Shards not done whose last attempt failed: dead-lettered, unless the queue retries them.
    pub shards_failed: u64,
    /// Items redone per row written.
    pub redone_fraction: f64,
    /// Machine seconds spent on redone items.
    pub seconds_lost: f64,
    /// Dollars spent on redone items.
    pub dollars_lost: f64,
    /// Dollars by capacity (`spot`, `on_demand`).
    pub by_capacity: std::collections::BTreeMap<String, f64>,
    /// The ledgers themselves.
    pub per_worker: Vec<Ledger>,
}

/// The sum of counts read back from storage, saturating: a corrupt file's huge count must not
/// overflow (a panic in debug builds, a wrong small total in release builds).
pub(crate) fn total(counts: impl Iterator<Item = u64>) -> u64 {
    counts.fold(0, u64::saturating_add)
}

/// Failed attempts, and shards not done whose last attempt (on any worker) failed.
pub fn failures(ledgers: &[Ledger], markers: &[DoneMarker]) -> (u64, u64) {
    let mut attempts = 0;
    let mut last: std::collections::HashMap<&str, (u64, &str)> = Default::default();
    for e in ledgers.iter().flat_map(|l| &l.shards) {
        attempts += u64::from(e.outcome == "failed");
        let slot = last.entry(e.shard.as_str()).or_insert((0, ""));
        if e.ended_at_ms >= slot.0 {
            *slot = (e.ended_at_ms, e.outcome.as_str());
        }
    }
    let marked: std::collections::HashSet<&str> =
        markers.iter().map(|m| m.shard.as_str()).collect();
    let shards = last
        .iter()
        .filter(|(shard, (_, outcome))| *outcome == "failed" && !marked.contains(*shard))
        .count() as u64;
    (attempts, shards)
}

/// Adds up ledgers and markers.
pub fn report(job: &str, ledgers: &[Ledger], markers: &[DoneMarker]) -> Report {
    let items = total(markers.iter().map(|m| m.items));
    let error_rows = total(markers.iter().map(|m| m.errors));
    let dollars: f64 = ledgers.iter().map(|l| l.dollars).sum();
    let on_demand: f64 = ledgers.iter().map(|l| l.on_demand_dollars).sum();
    let seconds: f64 = ledgers.iter().map(|l| l.seconds).sum();
    let inferred = total(ledgers.iter().map(|l| l.items));
    let redone = total(ledgers.iter().map(|l| l.items_redone)).min(inferred);
    let per_item = |total: f64| {
        if inferred > 0 {
            total / inferred as f64
        } else {
            0.0
        }
    };
    let (failed_attempts, shards_failed) = failures(ledgers, markers);
    let mut by_capacity = std::collections::BTreeMap::new();
    for l in ledgers {
        *by_capacity.entry(l.capacity.clone()).or_insert(0.0) += l.dollars;
    }
    Report {
        job: job.to_string(),
        workers: ledgers.len(),
        items,
        error_rows,
        machine_seconds: seconds,
        dollars,
        on_demand_dollars: on_demand,
        saved_dollars: on_demand - dollars,
        saved_fraction: if on_demand > 0.0 {
            (on_demand - dollars) / on_demand
        } else {
            0.0
        },
        dollars_per_1k_items: if items > 0 {
            dollars / items as f64 * 1000.0
        } else {
            0.0
        },
        items_inferred: inferred,
        items_redone: redone,
        failed_attempts,
        shards_failed,
        redone_fraction: if items > 0 {
            redone as f64 / items as f64
        } else {
            0.0
        },
        seconds_lost: redone as f64 * per_item(seconds),
        dollars_lost: redone as f64 * per_item(dollars),
        by_capacity,
        per_worker: ledgers.to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::ShardEvent;

    /// Found by fuzzing: counts read back from corrupt or hostile done markers and ledgers
    /// overflowed their sums (`spotbatch cost` and `report` panicked in debug builds).
    #[test]
    fn huge_counts_read_back_saturate_instead_of_overflowing() {
        let marker = DoneMarker {
            job: "j".into(),
            shard: "s".into(),
            items: u64::MAX,
            errors: u64::MAX,
            part: "p".into(),
            sha256: String::new(),
        };
        let ledger = Ledger {
            worker: "w".into(),
            items: u64::MAX,
            items_redone: u64::MAX,
            shards: vec![ShardEvent {
                shard: "s".into(),
                leased_at_ms: u64::MAX,
                ended_at_ms: u64::MAX,
                outcome: "done".into(),
                items: u64::MAX,
                attempt: 1,
                recovery_s: None,
            }],
            ..Ledger::default()
        };
        let markers = [marker.clone(), marker];
        let ledgers = [ledger.clone(), ledger];
        let r = report("j", &ledgers, &markers);
        assert_eq!((r.items, r.error_rows), (u64::MAX, u64::MAX));
        assert_eq!((r.items_inferred, r.items_redone), (u64::MAX, u64::MAX));
        let t = crate::timeline::build("j", &ledgers, &markers);
        assert_eq!(t.items, u64::MAX);
        assert_eq!(t.cumulative.last().map(|w| w.items), Some(u64::MAX));
    }
}

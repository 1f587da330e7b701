//! What a worker costs. A worker knows its hourly price and the on-demand price of the same
//! capacity (flags or environment, or the price table by instance type); it accrues both every
//! second into metrics (monotonic: kept as gauges because the `metrics` crate's counters count
//! whole numbers, and named `_dollars_total` as the totals they are) (`spotbatch_cost_dollars_total{capacity}`,
//! `spotbatch_on_demand_equivalent_dollars_total`, and per job `spotbatch_job_cost_dollars_total`
//! / `spotbatch_job_on_demand_dollars_total`) and into a ledger per job, written beside the job's
//! output as `_cost/WORKER.json`, which `spotbatch cost` adds up.
//!
//! A second of machine time is charged to the jobs whose items the model ran in that second, in
//! proportion to their items; a second with no inference is charged to the jobs with shards held
//! (fetching, decoding, writing), equally; a second holding nothing is idle and charged to no job
//! (it still counts in the worker's totals).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use serde::{Deserialize, Serialize};

/// Whether a worker runs on spot / preemptible capacity or on demand.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Capacity {
    /// Spot / preemptible.
    Spot,
    /// On demand.
    OnDemand,
}

impl Capacity {
    /// The metric label value.
    pub fn label(self) -> &'static str {
        match self {
            Capacity::Spot => "spot",
            Capacity::OnDemand => "on_demand",
        }
    }
}

/// A worker's prices, in dollars per hour.
#[derive(Debug, Clone, PartialEq)]
pub struct Prices {
    /// What it runs on.
    pub capacity: Capacity,
    /// What it pays.
    pub per_hour: f64,
    /// What the same capacity costs on demand.
    pub on_demand_per_hour: f64,
}

/// On-demand and typical spot prices ($/hour, AWS us-east-1 / GCP us-central1 list prices as of
/// 2026-11, rounded) of common GPU instance types. Spot prices move; pass `--price-per-hour` for
/// the price actually paid.
pub const PRICE_TABLE: &[(&str, f64, f64)] = &[
    ("g4dn.xlarge", 0.526, 0.22),
    ("g4dn.2xlarge", 0.752, 0.30),
    ("g5.xlarge", 1.006, 0.40),
    ("g5.2xlarge", 1.212, 0.48),
    ("g6.xlarge", 0.805, 0.33),
    ("g6e.xlarge", 1.861, 0.75),
    ("p3.2xlarge", 3.06, 0.95),
    ("p4d.24xlarge", 32.77, 12.50),
    ("p5.48xlarge", 98.32, 40.00),
    ("n1-standard-8+t4", 0.73, 0.24),
    ("a2-highgpu-1g", 3.67, 1.10),
    ("a3-highgpu-1g", 11.06, 3.50),
];

/// The table's on-demand and spot prices for an instance type.
pub fn lookup(instance_type: &str) -> Option<(f64, f64)> {
    PRICE_TABLE
        .iter()
        .find(|(t, _, _)| *t == instance_type)
        .map(|(_, od, spot)| (*od, *spot))
}

/// Works out a worker's prices from what it was told: explicit prices win, then the table by
/// instance type; `None` when nothing says (cost is then not accounted).
pub fn resolve(
    capacity: Capacity,
    per_hour: Option<f64>,
    on_demand_per_hour: Option<f64>,
    instance_type: Option<&str>,
) -> Result<Option<Prices>, String> {
    let table = match instance_type {
        Some(t) => Some(lookup(t).ok_or_else(|| {
            format!(
                "--instance-type {t}: not in the price table ({}); give --price-per-hour and --on-demand-price-per-hour",
                PRICE_TABLE.iter().map(|p| p.0).collect::<Vec<_>>().join(", ")
            )
        })?),
        None => None,
    };
    let od = on_demand_per_hour.or(table.map(|t| t.0));
    let paid = per_hour.or(match capacity {
        Capacity::Spot => table.map(|t| t.1),
        Capacity::OnDemand => od,
    });
    for (name, v) in [
        ("--price-per-hour", paid),
        ("--on-demand-price-per-hour", od),
    ] {
        if let Some(v) = v {
            if !v.is_finite() || v < 0.0 {
                return Err(format!("{name}: {v} is not a price"));
            }
        }
    }
    Ok(match (paid, od) {
        (Some(p), Some(o)) => Some(Prices {
            capacity,
            per_hour: p,
            on_demand_per_hour: o,
        }),
        (Some(p), None) if capacity == Capacity::OnDemand => Some(Prices {
            capacity,
            per_hour: p,
            on_demand_per_hour: p,
        }),
        (None, None) => None,
        _ => return Err(
            "cost: give both --price-per-hour and --on-demand-price-per-hour (or --instance-type)"
                .into(),
        ),
    })
}

/// One worker's cost for one job, as written to `_cost/WORKER.json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Ledger {
    /// The worker.
    pub worker: String,
    /// `spot` or `on_demand`.
    pub capacity: String,
    /// Its price, $/hour.
    pub price_per_hour: f64,
    /// The on-demand price of the same capacity, $/hour.
    pub on_demand_price_per_hour: f64,
    /// Machine seconds charged to the job.
    pub seconds: f64,
    /// Dollars charged to the job.
    pub dollars: f64,
    /// What those seconds would have cost on demand.
    pub on_demand_dollars: f64,
    /// Items the model ran for the job on this worker (redone ones included).
    pub items: u64,
    /// Items of redelivered shards this worker ran again (an upper bound on work redone).
    pub items_redone: u64,
    /// Whether prices were given (without, the dollar fields are zero).
    #[serde(default)]
    pub priced: bool,
    /// What happened to each shard of the job this worker leased, in order.
    #[serde(default)]
    pub shards: Vec<ShardEvent>,
    /// When this worker got a preemption notice (Unix milliseconds), if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notice_at_ms: Option<u64>,
}

/// One leased shard on one worker: when it was leased and how it ended.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ShardEvent {
    /// The shard id.
    pub shard: String,
    /// Leased (Unix milliseconds).
    pub leased_at_ms: u64,
    /// Ended (Unix milliseconds).
    pub ended_at_ms: u64,
    /// `done`, `skipped`, `failed`, `lease_lost`, `interrupted`, `released` (unstarted, after a
    /// notice) or `partial` (drained mid-shard).
    pub outcome: String,
    /// Rows written (done) or finished before the drain (partial).
    pub items: u64,
    /// The queue's delivery count: above 1, the shard was redelivered.
    pub attempt: u32,
    /// How long it waited on the queue after being handed back (release or expiry), seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery_s: Option<f64>,
}

/// Now, in Unix milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

struct State {
    last: Instant,
    pending: HashMap<String, u64>,
    ledgers: HashMap<String, Ledger>,
}

/// Accrues a worker's cost and charges it to jobs.
pub struct CostMeter {
    worker: String,
    prices: Option<Prices>,
    state: Mutex<State>,
}

impl std::fmt::Debug for CostMeter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CostMeter")
            .field("worker", &self.worker)
            .field("prices", &self.prices)
            .finish_non_exhaustive()
    }
}

impl CostMeter {
    /// A meter starting now; without prices it keeps the shard timeline only.
    pub fn new(worker: &str, prices: Option<Prices>) -> Self {
        if let Some(prices) = &prices {
            metrics::gauge!("spotbatch_price_dollars_per_hour", "capacity" => prices.capacity.label())
                .set(prices.per_hour);
            metrics::gauge!("spotbatch_on_demand_price_dollars_per_hour")
                .set(prices.on_demand_per_hour);
            // The series exist from the start, so dashboards see zeros rather than nothing.
            metrics::gauge!("spotbatch_cost_dollars_total", "capacity" => prices.capacity.label())
                .increment(0.0);
            metrics::gauge!("spotbatch_on_demand_equivalent_dollars_total").increment(0.0);
        }
        Self {
            worker: worker.to_string(),
            prices,
            state: Mutex::new(State {
                last: Instant::now(),
                pending: HashMap::new(),
                ledgers: HashMap::new(),
            }),
        }
    }

    /// The model ran `n` items of `job`.
    pub fn inferred(&self, job: &str, n: u64) {
        if let Ok(mut s) = self.state.lock() {
            *s.pending.entry(job.to_string()).or_default() += n;
            self.ledger_mut(&mut s, job).items += n;
        }
    }

    /// `n` items of `job` are being run again (a redelivered shard).
    pub fn redone(&self, job: &str, n: u64) {
        if let Ok(mut s) = self.state.lock() {
            self.ledger_mut(&mut s, job).items_redone += n;
        }
    }

    fn ledger_mut<'a>(&self, s: &'a mut State, job: &str) -> &'a mut Ledger {
        s.ledgers.entry(job.to_string()).or_insert_with(|| {
            if let Some(p) = &self.prices {
                // The job's series exist from its first ledger entry, also when nothing is
                // ever charged to it here (a shard released at once).
                metrics::gauge!("spotbatch_job_cost_dollars_total", "job" => job.to_string(), "capacity" => p.capacity.label())
                    .increment(0.0);
                metrics::gauge!("spotbatch_job_on_demand_dollars_total", "job" => job.to_string())
                    .increment(0.0);
            }
            self.new_ledger()
        })
    }

    fn new_ledger(&self) -> Ledger {
        Ledger {
            worker: self.worker.clone(),
            capacity: self
                .prices
                .as_ref()
                .map(|p| p.capacity.label())
                .unwrap_or("unpriced")
                .to_string(),
            price_per_hour: self.prices.as_ref().map(|p| p.per_hour).unwrap_or(0.0),
            on_demand_price_per_hour: self
                .prices
                .as_ref()
                .map(|p| p.on_demand_per_hour)
                .unwrap_or(0.0),
            priced: self.prices.is_some(),
            ..Ledger::default()
        }
    }

    /// Records how a shard of `job` went.
    pub fn shard(&self, job: &str, event: ShardEvent) {
        if let Ok(mut s) = self.state.lock() {
            self.ledger_mut(&mut s, job).shards.push(event);
        }
    }

    /// Records the preemption notice (on every job's ledger).
    pub fn notice(&self, at_ms: u64) {
        if let Ok(mut s) = self.state.lock() {
            for l in s.ledgers.values_mut() {
                l.notice_at_ms.get_or_insert(at_ms);
            }
        }
    }

    /// Charges the time since the last tick: to the jobs inferred since, by items; else to the
    /// jobs `held`, equally; else to no job.
    pub fn tick(&self, held: &[String]) {
        let Ok(mut s) = self.state.lock() else { return };
        let now = Instant::now();
        let secs = now.duration_since(s.last).as_secs_f64();
        s.last = now;
        let Some(prices) = &self.prices else {
            s.pending.clear();
            return;
        };
        let paid = prices.per_hour * secs / 3600.0;
        let od = prices.on_demand_per_hour * secs / 3600.0;
        let cap = prices.capacity.label();
        metrics::gauge!("spotbatch_cost_dollars_total", "capacity" => cap).increment(paid);
        metrics::gauge!("spotbatch_on_demand_equivalent_dollars_total").increment(od);
        let pending = std::mem::take(&mut s.pending);
        let total: u64 = pending.values().sum();
        let shares: Vec<(String, f64)> = if total > 0 {
            pending
                .into_iter()
                .map(|(j, n)| (j, n as f64 / total as f64))
                .collect()
        } else if !held.is_empty() {
            let mut jobs: Vec<String> = held.to_vec();
            jobs.sort();
            jobs.dedup();
            let n = jobs.len() as f64;
            jobs.into_iter().map(|j| (j, 1.0 / n)).collect()
        } else {
            Vec::new()
        };
        for (job, share) in shares {
            metrics::gauge!("spotbatch_job_cost_dollars_total", "job" => job.clone(), "capacity" => cap)
                .increment(paid * share);
            metrics::gauge!("spotbatch_job_on_demand_dollars_total", "job" => job.clone())
                .increment(od * share);
            let l = self.ledger_mut(&mut s, &job);
            l.seconds += secs * share;
            l.dollars += paid * share;
            l.on_demand_dollars += od * share;
        }
    }

    /// This worker's ledger for `job`, if it worked on it.
    pub fn ledger(&self, job: &str) -> Option<Ledger> {
        self.state.lock().ok()?.ledgers.get(job).cloned()
    }

    /// The jobs it has ledgers for.
    pub fn jobs(&self) -> Vec<String> {
        self.state
            .lock()
            .map(|s| s.ledgers.keys().cloned().collect())
            .unwrap_or_default()
    }
}

/// The object key of a worker's ledger under a job's output prefix.
pub fn ledger_key(worker: &str) -> String {
    let safe: String = worker
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("_cost/{safe}.json")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prices_resolve_from_flags_then_table() {
        let p = resolve(Capacity::Spot, Some(1.0), Some(3.0), None)
            .unwrap()
            .unwrap();
        assert_eq!((p.per_hour, p.on_demand_per_hour), (1.0, 3.0));
        let p = resolve(Capacity::Spot, None, None, Some("g5.xlarge"))
            .unwrap()
            .unwrap();
        assert_eq!((p.per_hour, p.on_demand_per_hour), (0.40, 1.006));
        let p = resolve(Capacity::OnDemand, None, None, Some("g5.xlarge"))
            .unwrap()
            .unwrap();
        assert_eq!((p.per_hour, p.on_demand_per_hour), (1.006, 1.006));
        assert!(resolve(Capacity::Spot, None, None, None).unwrap().is_none());
        assert!(resolve(Capacity::Spot, Some(1.0), None, None).is_err());
        assert!(resolve(Capacity::Spot, None, None, Some("nope.large")).is_err());
        assert!(resolve(Capacity::Spot, Some(-1.0), Some(2.0), None).is_err());
    }

    #[test]
    fn time_is_charged_by_items_then_held_shards() {
        let m = CostMeter::new(
            "w",
            Some(Prices {
                capacity: Capacity::Spot,
                per_hour: 3600.0,
                on_demand_per_hour: 7200.0,
            }),
        );
        m.inferred("a", 3);
        m.inferred("b", 1);
        std::thread::sleep(std::time::Duration::from_millis(50));
        m.tick(&[]);
        let (a, b) = (m.ledger("a").unwrap(), m.ledger("b").unwrap());
        assert!((a.dollars / b.dollars - 3.0).abs() < 1e-9);
        assert!((a.on_demand_dollars - 2.0 * a.dollars).abs() < 1e-9);
        assert!(a.dollars + b.dollars >= 0.05);
        std::thread::sleep(std::time::Duration::from_millis(20));
        m.tick(&["b".to_string()]);
        let b2 = m.ledger("b").unwrap();
        assert!(b2.dollars > b.dollars && m.ledger("a").unwrap() == a);
    }
}

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

use bytes::Bytes;
use spotbatch_store::ledger::{Ledger, Prices, ShardEvent};
use spotbatch_store::JobLayout;
use tracing::warn;

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

    /// Writes this worker's ledger for `job` beside its output (`_cost/WORKER.json`).
    pub async fn write_ledger(&self, job: &str, layout: &JobLayout) {
        let Some(ledger) = self.ledger(job) else {
            return;
        };
        let Ok(bytes) = serde_json::to_vec_pretty(&ledger) else {
            return;
        };
        let key = JobLayout::ledger_key(&ledger.worker);
        if let Err(e) = layout.prefix.put(&key, Bytes::from(bytes)).await {
            warn!(job = %job, error = %e, "writing the cost ledger failed");
        }
    }

    /// The jobs it has ledgers for.
    pub fn jobs(&self) -> Vec<String> {
        self.state
            .lock()
            .map(|s| s.ledgers.keys().cloned().collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use spotbatch_store::Capacity;

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

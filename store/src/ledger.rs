//! A worker's cost ledger per job (`_cost/WORKER.json`, see [`crate::layout`]) and the prices it
//! is computed from: what the machine pays, what the same capacity costs on demand, and the
//! built-in table of GPU instance prices.

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
}

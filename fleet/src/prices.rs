//! What machines cost: the capacity kinds (spot, on demand) and the built-in table of GPU
//! instance prices. This is the one table; `worker/src/cost.rs` carries a copy today that should
//! become a re-export of this one.

use serde::{Deserialize, Serialize};

/// Whether a worker runs on spot / preemptible capacity or on demand.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Capacity {
    /// Spot / preemptible.
    Spot,
    /// On demand.
    OnDemand,
}

impl Capacity {
    /// The metric label value (`spotbatch_desired_workers{capacity}`, the cost totals).
    pub fn label(self) -> &'static str {
        match self {
            Capacity::Spot => "spot",
            Capacity::OnDemand => "on_demand",
        }
    }
}

/// One row of [`PRICE_TABLE`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InstancePrice {
    /// The instance type (AWS) or machine + accelerator (GCP).
    pub instance_type: &'static str,
    /// On-demand list price, $/hour.
    pub on_demand_per_hour: f64,
    /// A typical spot price, $/hour.
    pub spot_per_hour: f64,
}

const fn row(instance_type: &'static str, on_demand: f64, spot: f64) -> InstancePrice {
    InstancePrice {
        instance_type,
        on_demand_per_hour: on_demand,
        spot_per_hour: spot,
    }
}

/// On-demand and typical spot prices ($/hour, AWS us-east-1 / GCP us-central1 list prices as of
/// 2026-11, rounded) of common GPU instance types. Spot prices move; a worker should be told the
/// price actually paid when it is known.
pub const PRICE_TABLE: &[InstancePrice] = &[
    row("g4dn.xlarge", 0.526, 0.22),
    row("g4dn.2xlarge", 0.752, 0.30),
    row("g5.xlarge", 1.006, 0.40),
    row("g5.2xlarge", 1.212, 0.48),
    row("g6.xlarge", 0.805, 0.33),
    row("g6e.xlarge", 1.861, 0.75),
    row("p3.2xlarge", 3.06, 0.95),
    row("p4d.24xlarge", 32.77, 12.50),
    row("p5.48xlarge", 98.32, 40.00),
    row("n1-standard-8+t4", 0.73, 0.24),
    row("a2-highgpu-1g", 3.67, 1.10),
    row("a3-highgpu-1g", 11.06, 3.50),
];

/// The table's row for an instance type.
pub fn lookup(instance_type: &str) -> Option<InstancePrice> {
    PRICE_TABLE
        .iter()
        .find(|p| p.instance_type == instance_type)
        .copied()
}

/// What one worker-hour costs in each capacity, as the policy weighs them.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Prices {
    /// $/hour of a spot worker.
    pub spot_per_hour: f64,
    /// $/hour of an on-demand worker.
    pub on_demand_per_hour: f64,
}

impl Prices {
    /// The table's prices for an instance type.
    pub fn of(instance_type: &str) -> Option<Self> {
        lookup(instance_type).map(|p| Prices {
            spot_per_hour: p.spot_per_hour,
            on_demand_per_hour: p.on_demand_per_hour,
        })
    }

    /// $/hour of one worker of `capacity`.
    pub fn per_hour(&self, capacity: Capacity) -> f64 {
        match capacity {
            Capacity::Spot => self.spot_per_hour,
            Capacity::OnDemand => self.on_demand_per_hour,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_finds_rows_and_only_rows() {
        let p4d = lookup("p4d.24xlarge").expect("p4d is in the table");
        assert_eq!(p4d.on_demand_per_hour, 32.77);
        assert_eq!(p4d.spot_per_hour, 12.50);
        assert!(lookup("p4d.24xlarg").is_none());
        let g5 = Prices::of("g5.xlarge").expect("g5 is in the table");
        assert_eq!(g5.per_hour(Capacity::Spot), 0.40);
        assert_eq!(g5.per_hour(Capacity::OnDemand), 1.006);
    }

    #[test]
    fn every_spot_price_is_below_its_on_demand_price() {
        for p in PRICE_TABLE {
            assert!(
                p.spot_per_hour > 0.0 && p.spot_per_hour < p.on_demand_per_hour,
                "{}",
                p.instance_type
            );
        }
    }

    #[test]
    fn capacity_labels_and_serde_names_agree() {
        for c in [Capacity::Spot, Capacity::OnDemand] {
            let json = serde_json::to_string(&c).expect("a unit variant serialises");
            assert_eq!(json, format!("\"{}\"", c.label()));
            let back: Capacity = serde_json::from_str(&json).expect("and parses back");
            assert_eq!(back, c);
        }
    }
}

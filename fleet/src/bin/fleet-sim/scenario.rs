//! The simulated jobs: instance type, region, start time, size, deadline, fleet limits, and
//! the spot market's behaviour (interruption rate against the table, notices, bursts, droughts).
//! Every scenario is run on the same seeds under every policy. A scenario can also be read from
//! a file ([`crate::real`]): the one `benches/fleet_real.py` ran for real.

use spotbatch_fleet::interruption::{table_per_hour, InterruptionPrior};
use spotbatch_fleet::prices::Prices;
use spotbatch_fleet::shard::{
    suggest, ShardInputs, ShardLimits, ShardSuggestion, SHARD_OVERHEAD_S,
};

/// Hours in a week; the week starts Monday 00:00 UTC.
const WEEK_H: f64 = 168.0;

/// One simulated job and its market.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// Short name for the table.
    pub name: &'static str,
    /// Instance type of every worker (prices, interruption prior).
    pub instance_type: &'static str,
    /// Region (interruption rate factor).
    pub region: &'static str,
    /// When the job starts, hours after Monday 00:00 UTC.
    pub start_hour_of_week: f64,
    /// Items in the job.
    pub items: u64,
    /// Items/s of one instance with this job's model (assumed).
    pub items_per_second: f64,
    /// Deadline, hours after the start.
    pub deadline_h: f64,
    /// The all-on-demand fleet, the fixed spot fleet, and `max_on_demand_workers`.
    pub fleet: u32,
    /// Most spot workers (KEDA's `maxReplicaCount`, the policy's `max_spot_workers`).
    pub max_spot: u32,
    /// Share of interruptions that come with a notice.
    pub notice_share: f64,
    /// True interruption rate / the table's (1: the table is right).
    pub rate_factor: f64,
    /// Correlated bursts per hour (many spot machines at once, as in ray#46367).
    pub bursts_per_hour: f64,
    /// Share of the spot fleet a burst takes, drawn uniformly from this range.
    pub burst_share: (f64, f64),
    /// Probability that a burst is followed by a drought (no spot capacity).
    pub drought_after_burst: f64,
    /// Droughts per hour besides those after bursts.
    pub droughts_per_hour: f64,
    /// Mean drought length, minutes (exponential).
    pub drought_mean_min: f64,
    /// Spot price override, $/hour (else the table's).
    pub spot_price: Option<f64>,
    /// Simulated seconds per step.
    pub step_s: f64,
    /// The policy decides this often, seconds (at least once a step).
    pub decide_every_s: f64,
    /// How long instances take to come and how long a notice gives.
    pub timing: Timing,
    /// A constant true interruption rate per instance-hour (else the table's × `rate_factor`).
    pub hazard_override: Option<f64>,
    /// A fixed shard plan: items per shard and the seconds a hard-killed lease takes to expire
    /// (else `shard_size = "auto"`, [`Scenario::auto_shards`]).
    pub fixed_shards: Option<(u64, f64)>,
    /// Seconds each shard costs besides its items (lease, write, ack).
    pub shard_overhead_s: f64,
    /// Whether the policy is given 0.8 × the nominal rate until one is measured (the
    /// coordinator gives none: queue depth until the first worker reports).
    pub prior_rate: bool,
    /// Shards a worker holds leased but unstarted (prefetch): a hard kill leaves them to wait
    /// out their lease too.
    pub held_unstarted: u32,
    /// Spread (log-normal σ) of instance speeds around the nominal rate.
    pub speed_spread: f64,
    /// What a worker reports as its items/s: its speed (with 5 % noise) when `None`, else as
    /// the worker's heartbeat computes it — the items of the shards it finished in the last
    /// this many seconds (the heartbeat interval), over them.
    pub reported_rate_window_s: Option<f64>,
    /// Expired leases after which a shard is dead-lettered and the job fails (0: never).
    pub max_attempts: u32,
    /// Whether a drained worker finishes the shard in work (as the worker does, within the
    /// notice) instead of handing back its unfinished part at once.
    pub drain_finishes_shard: bool,
}

/// How long instances take: a request filled, then booting (billed), and a notice's lead.
/// Each delay is a fixed part plus an exponential part of the given mean, seconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timing {
    /// A spot request filled (outside droughts).
    pub spot_arrival: (f64, f64),
    /// An on-demand request filled.
    pub on_demand_arrival: (f64, f64),
    /// Image pull, model load, device set-up.
    pub boot: (f64, f64),
    /// A notice comes this long before the machine goes (billed until then).
    pub notice_s: f64,
}

/// A cloud's: spot filled in one to several minutes, on-demand in about one, a boot of
/// minutes (image pull, model load, CUDA set-up), AWS's two-minute notice.
pub const CLOUD: Timing = Timing {
    spot_arrival: (60.0, 180.0),
    on_demand_arrival: (30.0, 30.0),
    boot: (90.0, 60.0),
    notice_s: 120.0,
};

impl Scenario {
    /// $/hour by capacity.
    pub fn prices(&self) -> Prices {
        let mut p = Prices::of(self.instance_type).unwrap_or(Prices {
            spot_per_hour: 1.0,
            on_demand_per_hour: 1.0,
        });
        if let Some(s) = self.spot_price {
            p.spot_per_hour = s;
        }
        p
    }

    /// Whether `t` seconds after the start falls on a weekend.
    pub fn weekend_at(&self, t: f64) -> bool {
        (self.start_hour_of_week + t / 3_600.0).rem_euclid(WEEK_H) >= 120.0
    }

    /// The true spot interruption rate per instance-hour at `t`.
    pub fn hazard_per_hour(&self, t: f64) -> f64 {
        if let Some(h) = self.hazard_override {
            return h;
        }
        self.rate_factor
            * table_per_hour(
                Some(self.instance_type),
                Some(self.region),
                self.weekend_at(t),
            )
    }

    /// The policy's prior: the table for the instance type, region and the start's weekday.
    pub fn prior(&self) -> InterruptionPrior {
        InterruptionPrior::from_table(
            Some(self.instance_type),
            Some(self.region),
            self.weekend_at(0.0),
        )
    }

    /// The deadline, seconds after the start.
    pub fn deadline_s(&self) -> f64 {
        self.deadline_h * 3_600.0
    }

    /// Items per shard and the lease a hard kill leaves to expire, seconds: the fixed plan, or
    /// `shard_size = "auto"`'s.
    pub fn shard_plan(&self) -> (u64, f64) {
        self.fixed_shards.unwrap_or_else(|| {
            let p = self.auto_shards();
            (p.items, p.visibility_timeout_s as f64)
        })
    }

    /// `shard_size = "auto"` at plan time: Young–Daly with the table's whole rate taken as hard
    /// kills (nothing is measured yet, and a notice that fails to come must not blow the
    /// redone-work budget), at least 4 shards per spot worker.
    pub fn auto_shards(&self) -> ShardSuggestion {
        suggest(
            &ShardInputs {
                seconds_per_item: Some(1.0 / self.items_per_second),
                shard_overhead_s: SHARD_OVERHEAD_S,
                hard_kills_per_hour: self.prior().per_hour,
                items_total: Some(self.items),
                workers: Some(self.max_spot),
            },
            // The coordinator's bounds for "auto".
            &ShardLimits::default(),
        )
    }
}

/// A calm market: the table's rate, nine in ten interruptions with a notice, a rare burst.
pub const CALM: Scenario = Scenario {
    name: "",
    instance_type: "",
    region: "us-east-1",
    start_hour_of_week: 33.0, // Tuesday 09:00
    items: 0,
    items_per_second: 0.0,
    deadline_h: 0.0,
    fleet: 0,
    max_spot: 0,
    notice_share: 0.9,
    rate_factor: 1.0,
    bursts_per_hour: 0.03,
    burst_share: (0.2, 0.6),
    drought_after_burst: 0.5,
    droughts_per_hour: 0.02,
    drought_mean_min: 30.0,
    spot_price: None,
    step_s: 10.0,
    decide_every_s: 10.0,
    timing: CLOUD,
    hazard_override: None,
    fixed_shards: None,
    shard_overhead_s: SHARD_OVERHEAD_S,
    prior_rate: true,
    held_unstarted: 0,
    speed_spread: 0.08,
    reported_rate_window_s: None,
    max_attempts: 0,
    drain_finishes_shard: false,
};

/// The scenarios `make bench-fleet` runs.
pub fn all() -> Vec<Scenario> {
    vec![
        Scenario {
            name: "p4d-a100-use1-100M",
            instance_type: "p4d.24xlarge",
            items: 100_000_000,
            items_per_second: 2_000.0,
            deadline_h: 4.0,
            fleet: 8,
            max_spot: 20,
            // The article's p4d spot price (the table's typical price is $12.50).
            spot_price: Some(8.19),
            ..CALM
        },
        Scenario {
            name: "p3-v100-usw2-10M",
            instance_type: "p3.2xlarge",
            region: "us-west-2",
            items: 10_000_000,
            items_per_second: 120.0,
            deadline_h: 4.0,
            fleet: 12,
            max_spot: 30,
            ..CALM
        },
        Scenario {
            name: "p5-h100-use1-100M",
            instance_type: "p5.48xlarge",
            items: 100_000_000,
            items_per_second: 5_000.0,
            deadline_h: 3.0,
            fleet: 4,
            max_spot: 10,
            ..CALM
        },
        Scenario {
            name: "g5-use1-weekend-30M",
            instance_type: "g5.xlarge",
            start_hour_of_week: 122.0, // Saturday 02:00
            items: 30_000_000,
            items_per_second: 150.0,
            deadline_h: 5.0,
            fleet: 24,
            max_spot: 60,
            ..CALM
        },
        Scenario {
            name: "g4dn-usw2-1M",
            instance_type: "g4dn.xlarge",
            region: "us-west-2",
            items: 1_000_000,
            items_per_second: 60.0,
            deadline_h: 2.5,
            fleet: 4,
            max_spot: 10,
            ..CALM
        },
        Scenario {
            name: "p4d-bursts-droughts-50M",
            instance_type: "p4d.24xlarge",
            items: 50_000_000,
            items_per_second: 1_000.0,
            deadline_h: 4.0,
            fleet: 8,
            max_spot: 20,
            bursts_per_hour: 0.5,
            burst_share: (0.5, 0.95),
            drought_after_burst: 0.9,
            droughts_per_hour: 0.1,
            drought_mean_min: 60.0,
            spot_price: Some(8.19),
            ..CALM
        },
        Scenario {
            // A heavier model, so that Young–Daly (not the item cap) sets the shard size, and
            // no notices at all: every interruption redoes its shard.
            name: "p5-h100-hard-kills-50M",
            instance_type: "p5.48xlarge",
            items: 50_000_000,
            items_per_second: 1_500.0,
            deadline_h: 3.5,
            fleet: 4,
            max_spot: 10,
            notice_share: 0.0,
            ..CALM
        },
        Scenario {
            name: "p4d-tight-deadline-100M",
            instance_type: "p4d.24xlarge",
            items: 100_000_000,
            items_per_second: 2_000.0,
            deadline_h: 2.3,
            fleet: 8,
            max_spot: 20,
            spot_price: Some(8.19),
            ..CALM
        },
        Scenario {
            name: "g5-rate-3x-table-30M",
            instance_type: "g5.xlarge",
            items: 30_000_000,
            items_per_second: 150.0,
            deadline_h: 5.0,
            fleet: 24,
            max_spot: 60,
            rate_factor: 3.0,
            ..CALM
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weekends_and_rates_follow_the_clock() {
        let s = all()
            .into_iter()
            .find(|s| s.name == "g5-use1-weekend-30M")
            .expect("exists");
        assert!(s.weekend_at(0.0));
        // Saturday 02:00 + 46 h = Monday 00:00.
        assert!(s.weekend_at(45.9 * 3_600.0));
        assert!(!s.weekend_at(46.1 * 3_600.0));
        let weekday = s.hazard_per_hour(47.0 * 3_600.0);
        assert!((s.hazard_per_hour(0.0) / weekday - 0.6).abs() < 1e-12);
        assert!((weekday - 0.023 * 1.5).abs() < 1e-12);
    }

    #[test]
    fn every_scenario_is_feasible_for_all_on_demand() {
        for s in all() {
            let hours = s.items as f64 / s.items_per_second / 3_600.0 / s.fleet as f64;
            assert!(hours < s.deadline_h, "{}: {hours:.2} h", s.name);
            assert!(
                s.prices().spot_per_hour < s.prices().on_demand_per_hour,
                "{}",
                s.name
            );
            let shards = s.auto_shards();
            assert!(
                shards.items >= 1 && s.items / shards.items >= s.max_spot as u64,
                "{}",
                s.name
            );
        }
    }
}

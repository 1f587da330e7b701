//! The fleet policies compared, each turning what the coordinator knows into desired spot and
//! on-demand counts: all on-demand, a fixed spot fleet, spot scaled on queue depth as KEDA does
//! today (with the deployed `queueLength` of 20 shards per worker, and tuned to the job so that
//! the whole queue asks for the cap), and the deadline-aware policy of
//! `spotbatch_fleet::policy`.

use std::collections::VecDeque;

use spotbatch_fleet::policy::{decide, Decision, Observation, PolicyConfig, PolicyState};

use crate::scenario::Scenario;

/// KEDA's `queueLength`: shards per worker (deploy/keda).
pub const KEDA_TARGET: u64 = 20;
/// The HPA's scale-down stabilisation window, seconds (scale-up is immediate).
const HPA_DOWN_S: f64 = 300.0;
/// Until measured, the policy plans with this share of the nominal rate (a pessimistic
/// benchmark figure).
const PRIOR_RATE_SHARE: f64 = 0.8;

/// The policies, in table order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    AllOnDemand,
    FixedSpot,
    /// KEDA as deployed: 20 shards per worker.
    DepthDeployed,
    /// KEDA tuned to the job: ⌈shards / max workers⌉ per worker, so the full queue asks for
    /// the cap (the baseline the targets compare with).
    DepthSpot,
    DeadlineAware,
}

impl Kind {
    pub const ALL: [Kind; 5] = [
        Kind::AllOnDemand,
        Kind::FixedSpot,
        Kind::DepthDeployed,
        Kind::DepthSpot,
        Kind::DeadlineAware,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::AllOnDemand => "all on-demand",
            Kind::FixedSpot => "fixed spot fleet",
            Kind::DepthDeployed => "depth-scaled spot, queueLength 20",
            Kind::DepthSpot => "depth-scaled spot, tuned",
            Kind::DeadlineAware => "deadline-aware",
        }
    }
}

/// One policy's state during a run.
pub enum Controller {
    Fixed {
        spot: u32,
        on_demand: u32,
    },
    Depth {
        cap: u32,
        target: u64,
        window: VecDeque<(f64, u32)>,
    },
    Deadline {
        config: Box<PolicyConfig>,
        state: PolicyState,
        last: Option<Box<Decision>>,
    },
}

impl Controller {
    pub fn new(kind: Kind, s: &Scenario) -> Self {
        match kind {
            Kind::AllOnDemand => Controller::Fixed {
                spot: 0,
                on_demand: s.fleet,
            },
            Kind::FixedSpot => Controller::Fixed {
                spot: s.fleet,
                on_demand: 0,
            },
            Kind::DepthDeployed => Controller::Depth {
                cap: s.max_spot,
                target: KEDA_TARGET,
                window: VecDeque::new(),
            },
            Kind::DepthSpot => Controller::Depth {
                cap: s.max_spot,
                target: s
                    .items
                    .div_ceil(s.shard_plan().0)
                    .div_ceil(s.max_spot as u64),
                window: VecDeque::new(),
            },
            Kind::DeadlineAware => {
                let mut config = PolicyConfig::new(s.max_spot, s.fleet);
                config.target_shards_per_worker = KEDA_TARGET as u32;
                config.prior = s.prior();
                config.spot_items_per_second = s
                    .prior_rate
                    .then_some(s.items_per_second * PRIOR_RATE_SHARE);
                Controller::Deadline {
                    config: Box::new(config),
                    state: PolicyState::default(),
                    last: None,
                }
            }
        }
    }

    /// Desired (spot, on-demand) now.
    pub fn desired(&mut self, obs: &Observation) -> (u32, u32) {
        match self {
            Controller::Fixed { spot, on_demand } => (*spot, *on_demand),
            Controller::Depth {
                cap,
                target,
                window,
            } => {
                let raw = obs.shards_left.div_ceil((*target).max(1)).min(*cap as u64) as u32;
                window.push_back((obs.now, raw));
                while window.front().is_some_and(|w| w.0 < obs.now - HPA_DOWN_S) {
                    window.pop_front();
                }
                (window.iter().map(|w| w.1).max().unwrap_or(raw), 0)
            }
            Controller::Deadline {
                config,
                state,
                last,
            } => {
                let d = decide(config, obs, state);
                *last = Some(Box::new(d));
                (d.spot, d.on_demand)
            }
        }
    }

    /// The deadline-aware policy's last decision (for `--trace`).
    pub fn last_decision(&self) -> Option<&Decision> {
        match self {
            Controller::Deadline { last, .. } => last.as_deref(),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::all;
    use spotbatch_fleet::interruption::Exposure;
    use spotbatch_fleet::prices::Prices;

    fn obs(now: f64, shards_left: u64) -> Observation {
        Observation {
            now,
            started: 0.0,
            deadline: None,
            items_left: shards_left * 100,
            shards_left,
            items_per_shard: 100.0,
            running_spot: 0,
            running_on_demand: 0,
            workers: Vec::new(),
            seen: Exposure::default(),
            recent: Exposure::default(),
            prices: Prices {
                spot_per_hour: 1.0,
                on_demand_per_hour: 2.0,
            },
        }
    }

    #[test]
    fn depth_scaling_follows_the_queue_and_scales_down_slowly() {
        let s = &all()[0]; // max_spot 20
        let mut c = Controller::new(Kind::DepthDeployed, s);
        assert_eq!(c.desired(&obs(0.0, 1_000)), (20, 0), "capped");
        assert_eq!(c.desired(&obs(10.0, 100)), (20, 0), "held for 300 s");
        assert_eq!(c.desired(&obs(301.0, 100)), (5, 0), "then 100 / 20");
        assert_eq!(c.desired(&obs(311.0, 300)), (15, 0), "up at once");
        // Tuned: the whole queue asks for the cap, half of it for about half.
        let shards = s.items.div_ceil(s.auto_shards().items);
        let mut tuned = Controller::new(Kind::DepthSpot, s);
        assert_eq!(tuned.desired(&obs(0.0, shards)), (s.max_spot, 0));
        let half = tuned.desired(&obs(400.0, shards / 2)).0;
        assert!(half.abs_diff(s.max_spot / 2) <= 1, "{half}");
    }

    #[test]
    fn fixed_fleets_stay_fixed() {
        let s = &all()[0];
        let mut od = Controller::new(Kind::AllOnDemand, s);
        let mut spot = Controller::new(Kind::FixedSpot, s);
        for n in [1_000, 10, 0] {
            assert_eq!(od.desired(&obs(0.0, n)), (0, s.fleet));
            assert_eq!(spot.desired(&obs(0.0, n)), (s.fleet, 0));
        }
    }
}

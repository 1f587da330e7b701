//! Interruption rates of spot workers: the prior by GPU / instance type (published rates, a
//! weekend and a region factor), the gamma-Poisson posterior from what the fleet has seen
//! (notices and hard kills per worker-hour), and the test for a spike.
//!
//! **Prior.** Published rates, per instance-hour: A100 2.3 %, V100 0.8 %, H100 4.1 %; weekends
//! 40 % lower; us-east-1 three times us-west-2. The per-GPU rates are taken as fleet averages,
//! so us-east-1 is 1.5 × and us-west-2 0.5 × them (3 : 1), other regions 1 ×. GPUs without a
//! published rate are assumed: A10G (g5), L4 (g6) and L40S (g6e) as the A100, T4 (g4dn, n1+T4)
//! as the V100.
//!
//! **Posterior.** Interruptions of one worker are a Poisson process of rate λ per worker-hour;
//! λ itself is uncertain, gamma-distributed. The prior is Gamma(shape α₀ = λ₀·H₀, rate β₀ = H₀):
//! λ₀ the table's rate, H₀ the *prior weight* in worker-hours (how many worker-hours of
//! observation count as much as the table). After k interruptions in H worker-hours the
//! posterior is Gamma(α₀ + k, β₀ + H), whose mean (α₀ + k) / (β₀ + H) moves from the table to
//! the measured k / H as H grows past H₀. The number of interruptions N in a future exposure of
//! E worker-hours is then negative-binomial: mean μ = E·α/β, variance μ + μ²/α — wider than a
//! Poisson while little is known (α small), a Poisson once much is.
//!
//! The share of interruptions that are hard kills (no notice) gets a beta prior the same way.
//!
//! **Spike.** A rate that jumps (a burst that takes many machines at once, as in ray#46367) is
//! tested against the posterior on a recent window: with k_r events in H_r recent worker-hours,
//! a spike is P(Poisson(λ·H_r) ≥ k_r) < p with k_r at least a minimum count; the policy then
//! plans with the recent rate k_r / H_r instead of λ.

use serde::{Deserialize, Serialize};

use crate::stats::poisson_at_least;

/// A GPU family, for the interruption prior.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Gpu {
    /// NVIDIA A100 (p4d, a2-highgpu).
    A100,
    /// NVIDIA V100 (p3).
    V100,
    /// NVIDIA H100 (p5, a3-highgpu).
    H100,
    /// NVIDIA A10G (g5): no published rate, assumed as the A100.
    A10G,
    /// NVIDIA T4 (g4dn, n1 + T4): no published rate, assumed as the V100.
    T4,
    /// NVIDIA L4 (g6): no published rate, assumed as the A100.
    L4,
    /// NVIDIA L40S (g6e): no published rate, assumed as the A100.
    L40S,
}

/// The rate assumed for an instance type whose GPU is unknown, per instance-hour.
pub const DEFAULT_PER_HOUR: f64 = 0.023;
/// Weekend rates are this fraction of weekday rates (40 % lower).
pub const WEEKEND_FACTOR: f64 = 0.6;

impl Gpu {
    /// Spot interruptions per instance-hour, on a weekday, averaged over regions.
    pub fn per_hour(self) -> f64 {
        match self {
            Gpu::A100 | Gpu::A10G | Gpu::L4 | Gpu::L40S => 0.023,
            Gpu::V100 | Gpu::T4 => 0.008,
            Gpu::H100 => 0.041,
        }
    }

    /// Whether the rate is published (else it is assumed from a similar GPU).
    pub fn published(self) -> bool {
        matches!(self, Gpu::A100 | Gpu::V100 | Gpu::H100)
    }
}

/// The GPU of an instance type (AWS family prefixes, GCP machine names), if known.
pub fn gpu_of(instance_type: &str) -> Option<Gpu> {
    let t = instance_type.to_ascii_lowercase();
    let family = t.split('.').next().unwrap_or("");
    Some(match family {
        "p4d" | "p4de" => Gpu::A100,
        "p3" | "p3dn" => Gpu::V100,
        "p5" | "p5e" | "p5en" => Gpu::H100,
        "g5" => Gpu::A10G,
        "g4dn" => Gpu::T4,
        "g6" => Gpu::L4,
        "g6e" => Gpu::L40S,
        _ if t.starts_with("a2-") => Gpu::A100,
        _ if t.starts_with("a3-") => Gpu::H100,
        _ if t.ends_with("+t4") => Gpu::T4,
        _ => return None,
    })
}

/// How a region's rate compares with the average: us-east-1 1.5 ×, us-west-2 0.5 × (so
/// us-east-1 is 3 × us-west-2), any other 1 ×.
pub fn region_factor(region: &str) -> f64 {
    match region {
        "us-east-1" => 1.5,
        "us-west-2" => 0.5,
        _ => 1.0,
    }
}

/// Whether a Unix time (seconds, UTC) falls on a Saturday or Sunday.
pub fn is_weekend(unix_s: f64) -> bool {
    let days = (unix_s / 86_400.0).floor() as i64;
    // 1970-01-01 was a Thursday: Monday = 0 after the shift.
    let weekday = (days + 3).rem_euclid(7);
    weekday >= 5
}

/// The table's spot interruption rate per instance-hour for an instance type, region and day.
pub fn table_per_hour(instance_type: Option<&str>, region: Option<&str>, weekend: bool) -> f64 {
    let base = instance_type
        .and_then(gpu_of)
        .map_or(DEFAULT_PER_HOUR, Gpu::per_hour);
    base * region.map_or(1.0, region_factor) * if weekend { WEEKEND_FACTOR } else { 1.0 }
}

/// What a fleet has seen over some time: worker-hours on spot, and the interruptions in them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Exposure {
    /// Spot worker-hours observed (registered, heartbeating workers).
    pub worker_hours: f64,
    /// Interruptions announced by a notice (the worker drained).
    pub notices: u64,
    /// Workers that vanished without a notice (missed heartbeats, leases expired).
    pub hard_kills: u64,
}

impl Exposure {
    /// Notices and hard kills together.
    pub fn events(&self) -> u64 {
        self.notices + self.hard_kills
    }

    /// Worker-hours, treating a negative or non-finite figure as none.
    fn hours(&self) -> f64 {
        if self.worker_hours.is_finite() {
            self.worker_hours.max(0.0)
        } else {
            0.0
        }
    }
}

/// The prior belief about a spot pool's interruptions, before anything is observed.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct InterruptionPrior {
    /// Interruptions per worker-hour (the table's rate).
    pub per_hour: f64,
    /// How many worker-hours of observation weigh as much as the table (H₀).
    pub weight_hours: f64,
    /// The share of interruptions that come without a notice.
    pub hard_share: f64,
    /// How many interruptions of observation weigh as much as that share.
    pub hard_weight: f64,
}

impl InterruptionPrior {
    /// The table's rate for an instance type in a region on a weekday or weekend day, weighed as
    /// 50 worker-hours, with one interruption in ten assumed to come without a notice (weighed as
    /// ten interruptions).
    pub fn from_table(instance_type: Option<&str>, region: Option<&str>, weekend: bool) -> Self {
        Self {
            per_hour: table_per_hour(instance_type, region, weekend),
            ..Self::default()
        }
    }
}

impl Default for InterruptionPrior {
    fn default() -> Self {
        Self {
            per_hour: DEFAULT_PER_HOUR,
            weight_hours: 50.0,
            hard_share: 0.1,
            hard_weight: 10.0,
        }
    }
}

/// The gamma posterior of a spot pool's interruption rate, and the hard-kill share.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Posterior {
    /// Gamma shape α = α₀ + k.
    pub shape: f64,
    /// Gamma rate β = H₀ + H, in worker-hours.
    pub rate_hours: f64,
    /// Posterior mean share of interruptions that are hard kills.
    pub hard_share: f64,
}

impl Posterior {
    /// The prior updated with what was seen.
    pub fn new(prior: &InterruptionPrior, seen: &Exposure) -> Self {
        let per_hour = finite_or(prior.per_hour, DEFAULT_PER_HOUR).max(0.0);
        // A tiny floor keeps the shape positive (a prior of zero interruptions is still a belief).
        let weight = finite_or(prior.weight_hours, 0.0).max(1e-6);
        let shape = (per_hour * weight).max(1e-6) + seen.events() as f64;
        let rate_hours = weight + seen.hours();
        let hw = finite_or(prior.hard_weight, 0.0).max(1e-6);
        let hs = finite_or(prior.hard_share, 0.1).clamp(0.0, 1.0);
        let hard_share = (hs * hw + seen.hard_kills as f64) / (hw + seen.events() as f64);
        Self {
            shape,
            rate_hours,
            hard_share,
        }
    }

    /// The posterior mean rate, interruptions per worker-hour.
    pub fn per_hour(&self) -> f64 {
        self.shape / self.rate_hours
    }

    /// Hard kills per worker-hour (the rate that costs redone work).
    pub fn hard_kills_per_hour(&self) -> f64 {
        self.per_hour() * self.hard_share
    }

    /// Mean and variance of the number of interruptions in `hours` more worker-hours, at rate
    /// `per_hour` (the posterior mean, or a spike's rate), with the posterior's uncertainty.
    pub fn count_mean_var(&self, per_hour: f64, hours: f64) -> (f64, f64) {
        let mean = per_hour * hours.max(0.0);
        (mean, mean + mean * mean / self.shape)
    }
}

/// The recent rate, when the last window's interruptions are too many for the posterior rate:
/// P(Poisson(`per_hour` × H_r) ≥ k_r) < `p` and k_r ≥ `min_events`.
pub fn spike(per_hour: f64, recent: &Exposure, p: f64, min_events: u64) -> Option<f64> {
    let k = recent.events();
    let hours = recent.hours();
    if k < min_events.max(1) || hours <= 0.0 {
        return None;
    }
    (poisson_at_least(k, per_hour * hours) < p).then(|| k as f64 / hours)
}

fn finite_or(v: f64, default: f64) -> f64 {
    if v.is_finite() {
        v
    } else {
        default
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_types_map_to_their_gpus() {
        assert_eq!(gpu_of("p4d.24xlarge"), Some(Gpu::A100));
        assert_eq!(gpu_of("p3.2xlarge"), Some(Gpu::V100));
        assert_eq!(gpu_of("p5.48xlarge"), Some(Gpu::H100));
        assert_eq!(gpu_of("g5.xlarge"), Some(Gpu::A10G));
        assert_eq!(gpu_of("g4dn.xlarge"), Some(Gpu::T4));
        assert_eq!(gpu_of("a3-highgpu-1g"), Some(Gpu::H100));
        assert_eq!(gpu_of("a2-highgpu-1g"), Some(Gpu::A100));
        assert_eq!(gpu_of("n1-standard-8+t4"), Some(Gpu::T4));
        assert_eq!(gpu_of("m5.large"), None);
        assert!(Gpu::H100.published() && !Gpu::A10G.published());
    }

    #[test]
    fn table_rates_apply_region_and_weekend_factors() {
        let a100 = table_per_hour(Some("p4d.24xlarge"), None, false);
        assert!((a100 - 0.023).abs() < 1e-12);
        let east = table_per_hour(Some("p4d.24xlarge"), Some("us-east-1"), false);
        let west = table_per_hour(Some("p4d.24xlarge"), Some("us-west-2"), false);
        assert!(
            (east / west - 3.0).abs() < 1e-12,
            "us-east-1 is 3 × us-west-2"
        );
        let weekend = table_per_hour(Some("p5.48xlarge"), None, true);
        assert!((weekend - 0.041 * 0.6).abs() < 1e-12, "weekends 40 % lower");
        assert!((table_per_hour(Some("m5.large"), None, false) - DEFAULT_PER_HOUR).abs() < 1e-12);
    }

    #[test]
    fn weekends_by_unix_time() {
        // 2026-11-28 00:00 UTC is a Saturday, 2026-11-30 00:00 UTC a Monday.
        let saturday = 1_795_824_000.0;
        let monday = 1_795_996_800.0;
        assert!(is_weekend(saturday));
        assert!(is_weekend(saturday + 43_200.0));
        assert!(is_weekend(monday - 1.0), "Sunday 23:59:59");
        assert!(!is_weekend(monday));
        assert!(!is_weekend(saturday - 1.0), "Friday 23:59:59");
        assert!(!is_weekend(0.0), "1970-01-01 was a Thursday");
    }

    #[test]
    fn posterior_moves_from_the_table_to_the_measurement() {
        let prior = InterruptionPrior {
            per_hour: 0.02,
            weight_hours: 50.0,
            ..InterruptionPrior::default()
        };
        let none = Posterior::new(&prior, &Exposure::default());
        assert!(
            (none.per_hour() - 0.02).abs() < 1e-12,
            "nothing seen: the table"
        );
        // 10 interruptions in 100 worker-hours (0.1/h): (1 + 10) / (50 + 100).
        let seen = Exposure {
            worker_hours: 100.0,
            notices: 8,
            hard_kills: 2,
        };
        let some = Posterior::new(&prior, &seen);
        assert!((some.per_hour() - 11.0 / 150.0).abs() < 1e-12);
        // Much more data: close to the measured 0.1/h.
        let lots = Exposure {
            worker_hours: 100_000.0,
            notices: 8_000,
            hard_kills: 2_000,
        };
        let many = Posterior::new(&prior, &lots);
        assert!((many.per_hour() - 0.1).abs() < 0.001);
        // Hard share: (0.1·10 + 2000) / (10 + 10000) ≈ 0.2.
        assert!((many.hard_share - 0.2).abs() < 0.001);
        assert!((many.hard_kills_per_hour() - 0.02).abs() < 0.001);
    }

    #[test]
    fn predictive_variance_narrows_as_evidence_grows() {
        let prior = InterruptionPrior::default();
        let early = Posterior::new(&prior, &Exposure::default());
        let late = Posterior::new(
            &prior,
            &Exposure {
                worker_hours: 10_000.0,
                notices: 230,
                hard_kills: 0,
            },
        );
        let (m1, v1) = early.count_mean_var(0.023, 100.0);
        let (m2, v2) = late.count_mean_var(0.023, 100.0);
        assert!((m1 - m2).abs() < 1e-12);
        assert!(
            v1 > 1.5 * m1,
            "little known: overdispersed ({v1} vs mean {m1})"
        );
        assert!(
            v2 < 1.05 * m2,
            "much known: nearly Poisson ({v2} vs mean {m2})"
        );
    }

    #[test]
    fn spike_needs_enough_improbable_events() {
        let calm = Exposure {
            worker_hours: 10.0,
            notices: 1,
            hard_kills: 0,
        };
        assert_eq!(
            spike(0.02, &calm, 0.01, 3),
            None,
            "one event is not a spike"
        );
        let burst = Exposure {
            worker_hours: 10.0,
            notices: 6,
            hard_kills: 2,
        };
        assert_eq!(spike(0.02, &burst, 0.01, 3), Some(0.8));
        // The same count is no spike when the posterior already expects it.
        assert_eq!(spike(0.8, &burst, 0.01, 3), None);
        // Below the minimum count even if improbable.
        let two = Exposure {
            worker_hours: 1.0,
            notices: 2,
            hard_kills: 0,
        };
        assert_eq!(spike(0.001, &two, 0.01, 3), None);
        assert!(spike(0.001, &two, 0.01, 2).is_some());
        assert_eq!(spike(0.02, &Exposure::default(), 0.01, 1), None);
    }

    #[test]
    fn bad_numbers_in_the_prior_fall_back() {
        let prior = InterruptionPrior {
            per_hour: f64::NAN,
            weight_hours: f64::INFINITY,
            hard_share: 7.0,
            hard_weight: -1.0,
        };
        let p = Posterior::new(&prior, &Exposure::default());
        assert!(p.per_hour().is_finite() && p.per_hour() >= 0.0);
        assert!((0.0..=1.0).contains(&p.hard_share));
    }
}

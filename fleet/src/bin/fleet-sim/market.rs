//! The simulation's randomness: what each instance will do (arrival delay, boot time, speed,
//! interruption time, notice or not), drawn from the seed, the capacity and its ordinal, so that
//! every policy sees the same k-th instance; and the market's exogenous events (bursts and
//! droughts), drawn up front.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use spotbatch_fleet::prices::Capacity;

use crate::scenario::Scenario;

/// What one instance will do, drawn from the seed, the capacity and its ordinal.
pub struct Draws {
    pub arrival_s: f64,
    pub boot_s: f64,
    pub speed_factor: f64,
    pub hazard_budget: f64,
    pub notice: bool,
}

/// A SplitMix64 step: a well-mixed 64-bit value from any input (seeds for sub-streams).
pub fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A uniform draw in [0, 1) from any input.
pub fn unit(x: u64) -> f64 {
    (mix(x) >> 11) as f64 / (1u64 << 53) as f64
}

fn exponential(rng: &mut ChaCha8Rng, mean: f64) -> f64 {
    -mean * (1.0 - rng.random::<f64>()).ln()
}

/// A standard normal draw (Box–Muller).
pub fn normal(rng: &mut ChaCha8Rng) -> f64 {
    let u1: f64 = 1.0 - rng.random::<f64>();
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

impl Draws {
    /// The `k`-th instance of `capacity` in run `seed` of scenario `s`.
    pub fn new(seed: u64, capacity: Capacity, k: u64, s: &Scenario) -> Self {
        let stream = mix(seed
            ^ mix(k ^ if capacity == Capacity::Spot {
                1 << 62
            } else {
                1 << 63
            }));
        let mut rng = ChaCha8Rng::seed_from_u64(stream);
        let (fixed, mean) = match capacity {
            Capacity::Spot => s.timing.spot_arrival,
            Capacity::OnDemand => s.timing.on_demand_arrival,
        };
        let arrival_s = fixed + exponential(&mut rng, mean);
        let spread = s.speed_spread;
        Self {
            arrival_s,
            // Billed.
            boot_s: s.timing.boot.0 + exponential(&mut rng, s.timing.boot.1),
            speed_factor: (spread * normal(&mut rng) - spread * spread / 2.0).exp(),
            hazard_budget: exponential(&mut rng, 1.0),
            notice: rng.random::<f64>() < s.notice_share,
        }
    }
}

/// A correlated burst: at `at`, each live spot instance goes with probability `share`.
pub struct Burst {
    pub at: f64,
    pub share: f64,
}

/// The market's exogenous events for one seed.
pub struct Market {
    pub bursts: Vec<Burst>,
    /// Spans with no spot capacity (no request is filled).
    pub droughts: Vec<(f64, f64)>,
}

impl Market {
    pub fn new(s: &Scenario, seed: u64, horizon: f64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(mix(seed ^ 0xB0B5));
        let mut bursts = Vec::new();
        let mut droughts = Vec::new();
        let mut t = 0.0;
        if s.bursts_per_hour > 0.0 {
            loop {
                t += exponential(&mut rng, 3_600.0 / s.bursts_per_hour);
                if t > horizon {
                    break;
                }
                let share = rng.random_range(s.burst_share.0..=s.burst_share.1);
                bursts.push(Burst { at: t, share });
                if rng.random::<f64>() < s.drought_after_burst {
                    droughts.push((t, t + exponential(&mut rng, s.drought_mean_min * 60.0)));
                }
            }
        }
        t = 0.0;
        if s.droughts_per_hour > 0.0 {
            loop {
                t += exponential(&mut rng, 3_600.0 / s.droughts_per_hour);
                if t > horizon {
                    break;
                }
                droughts.push((t, t + exponential(&mut rng, s.drought_mean_min * 60.0)));
            }
        }
        Self { bursts, droughts }
    }

    /// Whether spot requests go unfilled at `t`.
    pub fn drought(&self, t: f64) -> bool {
        self.droughts.iter().any(|&(a, b)| a <= t && t < b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::all;

    #[test]
    fn the_kth_instance_draws_the_same_in_every_run() {
        let s = &all()[0];
        let a = Draws::new(7, Capacity::Spot, 3, s);
        let b = Draws::new(7, Capacity::Spot, 3, s);
        assert_eq!(a.hazard_budget, b.hazard_budget);
        assert_eq!(a.arrival_s, b.arrival_s);
        let c = Draws::new(7, Capacity::Spot, 4, s);
        assert_ne!(a.hazard_budget, c.hazard_budget);
        let d = Draws::new(8, Capacity::Spot, 3, s);
        assert_ne!(a.hazard_budget, d.hazard_budget);
    }
}

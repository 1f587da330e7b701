//! Items per second per worker, by capacity and device, from what workers report in their
//! heartbeats: the median of the busy workers of the same capacity and device, falling back to
//! the same device on the other capacity, then the same capacity on any device, then any busy
//! worker, then a prior the caller gives.

use serde::{Deserialize, Serialize};

use crate::prices::Capacity;
use crate::stats::median;

/// One worker's last reported throughput.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerRate {
    /// Spot or on demand.
    pub capacity: Capacity,
    /// Its device as it reports it (`cuda:0 NVIDIA A100-SXM4-40GB`, `cpu`, …).
    pub device: String,
    /// Items its model ran per second since its last heartbeat.
    pub items_per_second: f64,
    /// Whether it had work in that time (an idle worker's 0 items/s says nothing of its speed).
    pub busy: bool,
}

/// Where a pool's rate came from, most specific first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RateBasis {
    /// Busy workers of the same capacity and device.
    SameCapacityAndDevice,
    /// Busy workers of the same device on the other capacity.
    SameDevice,
    /// Busy workers of the same capacity on another device.
    SameCapacity,
    /// Any busy worker.
    AnyWorker,
    /// Nothing measured yet: the caller's prior.
    Prior,
}

/// A pool's rate per worker and what it rests on.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PoolRate {
    /// Items per second per worker.
    pub items_per_second: f64,
    /// How many workers' reports it is the median of (0 for the prior).
    pub workers: usize,
    /// Where it came from.
    pub basis: RateBasis,
}

/// The rate a new worker of `capacity` on `device` (any device when `None`) is expected to
/// reach, from `samples`, else `prior` (items per second per worker).
pub fn pool_rate(
    samples: &[WorkerRate],
    capacity: Capacity,
    device: Option<&str>,
    prior: Option<f64>,
) -> Option<PoolRate> {
    let usable =
        |w: &&WorkerRate| w.busy && w.items_per_second.is_finite() && w.items_per_second > 0.0;
    let same_device = |w: &WorkerRate| device.is_none_or(|d| w.device == d);
    let keep = |basis: RateBasis, w: &WorkerRate| match basis {
        RateBasis::SameCapacityAndDevice => w.capacity == capacity && same_device(w),
        RateBasis::SameDevice => device.is_some() && same_device(w),
        RateBasis::SameCapacity => w.capacity == capacity,
        RateBasis::AnyWorker | RateBasis::Prior => true,
    };
    for basis in [
        RateBasis::SameCapacityAndDevice,
        RateBasis::SameDevice,
        RateBasis::SameCapacity,
        RateBasis::AnyWorker,
    ] {
        let mut v: Vec<f64> = samples
            .iter()
            .filter(usable)
            .filter(|w| keep(basis, w))
            .map(|w| w.items_per_second)
            .collect();
        if let Some(m) = median(&mut v) {
            return Some(PoolRate {
                items_per_second: m,
                workers: v.len(),
                basis,
            });
        }
    }
    prior
        .filter(|p| p.is_finite() && *p > 0.0)
        .map(|p| PoolRate {
            items_per_second: p,
            workers: 0,
            basis: RateBasis::Prior,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(capacity: Capacity, device: &str, ips: f64, busy: bool) -> WorkerRate {
        WorkerRate {
            capacity,
            device: device.into(),
            items_per_second: ips,
            busy,
        }
    }

    #[test]
    fn median_of_busy_workers_of_the_same_pool() {
        let s = [
            w(Capacity::Spot, "a100", 100.0, true),
            w(Capacity::Spot, "a100", 120.0, true),
            w(Capacity::Spot, "a100", 500.0, true),
            w(Capacity::Spot, "a100", 0.0, false),
            w(Capacity::Spot, "t4", 20.0, true),
            w(Capacity::OnDemand, "a100", 90.0, true),
        ];
        let r = pool_rate(&s, Capacity::Spot, Some("a100"), None).expect("measured");
        assert_eq!(r.items_per_second, 120.0);
        assert_eq!(r.workers, 3);
        assert_eq!(r.basis, RateBasis::SameCapacityAndDevice);
    }

    #[test]
    fn falls_back_in_order_then_to_the_prior() {
        let s = [
            w(Capacity::Spot, "a100", 100.0, true),
            w(Capacity::Spot, "t4", 20.0, true),
        ];
        // No on-demand a100 yet: the spot a100s.
        let r = pool_rate(&s, Capacity::OnDemand, Some("a100"), None).expect("measured");
        assert_eq!(
            (r.items_per_second, r.basis),
            (100.0, RateBasis::SameDevice)
        );
        // No on-demand worker on any device: same capacity fails, any worker answers.
        let r = pool_rate(&s, Capacity::OnDemand, Some("h100"), None).expect("measured");
        assert_eq!((r.items_per_second, r.basis), (60.0, RateBasis::AnyWorker));
        // No h100 anywhere, but spot workers on other devices.
        let r = pool_rate(&s, Capacity::Spot, Some("h100"), None).expect("measured");
        assert_eq!(
            (r.items_per_second, r.basis),
            (60.0, RateBasis::SameCapacity)
        );
        // Nothing busy: the prior, or nothing.
        let idle = [
            w(Capacity::Spot, "a100", 0.0, false),
            w(Capacity::Spot, "a100", f64::NAN, true),
        ];
        let r = pool_rate(&idle, Capacity::Spot, None, Some(42.0)).expect("prior");
        assert_eq!(
            (r.items_per_second, r.workers, r.basis),
            (42.0, 0, RateBasis::Prior)
        );
        assert_eq!(pool_rate(&idle, Capacity::Spot, None, None), None);
        assert_eq!(pool_rate(&[], Capacity::Spot, None, Some(-1.0)), None);
    }
}

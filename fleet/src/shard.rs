//! Shard size and lease time from the interruption rate (what `queue.shard_size = "auto"` picks
//! at plan time, and what `validate` / `status` suggest).
//!
//! **What an interruption costs.** With a notice, a worker drains: it hands its unstarted shards
//! back at once and writes the finished part of the one in work as a partial result, so nothing
//! is redone. Only a *hard kill* (no notice) costs work: the shard in work is redone from its
//! start, on average half of it. Small shards lose little to a kill but pay the per-shard
//! overhead (lease, write the part and its done marker, ack, the pipeline's drain and refill at
//! the shard boundary) often; big shards the reverse.
//!
//! **Young–Daly.** With per-shard overhead o seconds and hard kills at λ per worker-second (mean
//! time between them M = 1/λ), a shard of τ seconds of work wastes o / τ of the time in overhead
//! and λ τ / 2 in redone work; the sum is least at
//!
//! ```text
//! τ* = √(2 · o · M)          shard items = τ* / (seconds per item)
//! ```
//!
//! where both wastes are equal, √(o λ / 2) each. Example: o = 2 s and H100 hard kills at
//! 0.41 % per hour (4.1 %/h, one in ten without a notice): M = 244 h, τ* = 1874 s, each waste
//! 0.11 %. At 4.1 %/h all hard kills: τ* = 593 s, 0.34 % each.
//!
//! **Limits.** τ is at most `max_seconds` (without hard kills Young–Daly has no optimum: the
//! shard would be the whole job); a job keeps at least `min_shards_per_worker` shards per
//! worker so the last shards do not leave most of the fleet idle; items are clamped to
//! `[min_items, max_items]`. Without a per-item time (nothing measured, no estimate) the
//! defaults stay: 256 items, 60 s.
//!
//! **Lease time.** Workers extend their leases every third of the visibility timeout V while they
//! work, so V need not cover the shard; it is how long a hard-killed worker's shards wait before
//! they are redelivered, and how long a live lease survives failed extensions (⅔ V). The
//! suggestion is V = (τ + o) / 2, clamped: the wait after a hard kill is then no longer than the
//! work the kill redoes (half a shard on average), and the more work a false expiry would waste
//! (a bigger shard), the longer an extension outage the lease rides out.

use serde::{Deserialize, Serialize};

/// Items per shard when nothing is known (the manifest's default).
pub const DEFAULT_SHARD_ITEMS: u64 = 256;
/// The largest shard `queue.shard_size = "auto"` chooses, in items: the manifest's own limit
/// for a number. (A job of files is also held to what one queue message can list.) It is high
/// because a fast model needs big shards: at 5 000 items/s, 100 000 items are 20 s of work, and
/// a 2 s per-shard overhead would be 9 % of the worker's time.
pub const MAX_AUTO_ITEMS: u64 = 1_000_000;
/// Per-shard overhead of a worker, seconds: leasing, writing the part and the done marker,
/// acking, and the pipeline's drain and refill at a shard boundary.
pub const SHARD_OVERHEAD_S: f64 = 2.0;
/// Visibility timeout when nothing is known (the manifest's default), seconds.
pub const DEFAULT_VISIBILITY_S: u64 = 60;

/// What the suggestion is computed from.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ShardInputs {
    /// One worker's time per item, seconds (1 / its items per second); `None` when not measured.
    pub seconds_per_item: Option<f64>,
    /// Per-shard overhead not overlapped with inference, seconds.
    pub shard_overhead_s: f64,
    /// Hard kills (interruptions without a notice) per worker-hour.
    pub hard_kills_per_hour: f64,
    /// Items in the job, when known (for the per-worker minimum).
    pub items_total: Option<u64>,
    /// Workers expected to share the job, when known (for the per-worker minimum).
    pub workers: Option<u32>,
}

/// The bounds a suggestion is kept within.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ShardLimits {
    /// Fewest items per shard.
    pub min_items: u64,
    /// Most items per shard.
    pub max_items: u64,
    /// Longest shard, seconds of work.
    pub max_seconds: f64,
    /// Fewest shards per worker.
    pub min_shards_per_worker: u64,
    /// Shortest visibility timeout, seconds.
    pub min_visibility_s: u64,
    /// Longest visibility timeout, seconds.
    pub max_visibility_s: u64,
}

impl Default for ShardLimits {
    fn default() -> Self {
        Self {
            min_items: 1,
            max_items: MAX_AUTO_ITEMS,
            max_seconds: 1_800.0,
            min_shards_per_worker: 4,
            min_visibility_s: 30,
            // The manifest accepts up to 43 200 s (SQS's limit); an hour is plenty for a lease
            // that is extended every third of it.
            max_visibility_s: 3_600,
        }
    }
}

/// Which rule set the shard size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShardBound {
    /// Young–Daly's optimum.
    YoungDaly,
    /// The longest shard (`max_seconds`), e.g. because no hard kills are expected.
    MaxSeconds,
    /// At least `min_shards_per_worker` shards per worker.
    PerWorker,
    /// `max_items`.
    MaxItems,
    /// `min_items`.
    MinItems,
    /// No per-item time: the defaults.
    Unmeasured,
}

/// A suggested shard size and lease time, with what they are expected to cost.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ShardSuggestion {
    /// Items per shard.
    pub items: u64,
    /// Visibility timeout, seconds.
    pub visibility_timeout_s: u64,
    /// One shard's work, seconds (without the overhead; 0 when unmeasured).
    pub shard_seconds: f64,
    /// Expected share of the work redone after hard kills: λ (τ + o) / 2 (0 when unmeasured).
    pub redone_fraction: f64,
    /// Share of worker time spent in per-shard overhead: o / (τ + o) (0 when unmeasured).
    pub overhead_fraction: f64,
    /// The rule that set `items`.
    pub bound: ShardBound,
}

/// The shard size and visibility timeout for a job (see the module documentation).
pub fn suggest(inputs: &ShardInputs, limits: &ShardLimits) -> ShardSuggestion {
    let overhead = if inputs.shard_overhead_s.is_finite() {
        inputs.shard_overhead_s.max(0.0)
    } else {
        0.0
    };
    let kills_per_s = if inputs.hard_kills_per_hour.is_finite() {
        inputs.hard_kills_per_hour.max(0.0) / 3_600.0
    } else {
        0.0
    };
    let Some(per_item) = inputs
        .seconds_per_item
        .filter(|s| s.is_finite() && *s > 0.0)
    else {
        return ShardSuggestion {
            items: DEFAULT_SHARD_ITEMS,
            visibility_timeout_s: DEFAULT_VISIBILITY_S,
            shard_seconds: 0.0,
            redone_fraction: 0.0,
            overhead_fraction: 0.0,
            bound: ShardBound::Unmeasured,
        };
    };
    let max_items = limits.max_items.max(1);
    let min_items = limits.min_items.clamp(1, max_items);
    let mut bound = ShardBound::YoungDaly;
    // τ* = √(2 o M); infinite without hard kills.
    let mut items = if kills_per_s > 0.0 {
        (2.0 * overhead / kills_per_s).sqrt() / per_item
    } else {
        f64::INFINITY
    };
    let by_seconds = limits.max_seconds.max(0.0) / per_item;
    if items > by_seconds {
        items = by_seconds;
        bound = ShardBound::MaxSeconds;
    }
    if let (Some(total), Some(workers)) = (inputs.items_total, inputs.workers) {
        let shards = limits.min_shards_per_worker.max(1) as f64 * workers.max(1) as f64;
        let per_worker = total as f64 / shards;
        if items > per_worker {
            items = per_worker;
            bound = ShardBound::PerWorker;
        }
    }
    let mut items = items.round().max(0.0).min(u64::MAX as f64) as u64;
    if items > max_items {
        items = max_items;
        bound = ShardBound::MaxItems;
    }
    if items < min_items {
        items = min_items;
        bound = ShardBound::MinItems;
    }
    let tau = items as f64 * per_item;
    let lease = ((tau + overhead) / 2.0).ceil() as u64;
    ShardSuggestion {
        items,
        visibility_timeout_s: lease.clamp(
            limits.min_visibility_s,
            limits.max_visibility_s.max(limits.min_visibility_s),
        ),
        shard_seconds: tau,
        redone_fraction: kills_per_s * (tau + overhead) / 2.0,
        overhead_fraction: if tau + overhead > 0.0 {
            overhead / (tau + overhead)
        } else {
            0.0
        },
        bound,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs(per_item: f64, overhead: f64, kills_per_hour: f64) -> ShardInputs {
        ShardInputs {
            seconds_per_item: Some(per_item),
            shard_overhead_s: overhead,
            hard_kills_per_hour: kills_per_hour,
            items_total: None,
            workers: None,
        }
    }

    #[test]
    fn young_daly_balances_overhead_and_redone_work() {
        // 1000 items/s, 2 s overhead, 4.1 % hard kills per hour: τ* = √(2·2·3600/0.041) s.
        let s = suggest(&inputs(0.001, 2.0, 0.041), &ShardLimits::default());
        let tau = (2.0 * 2.0 * 3_600.0 / 0.041f64).sqrt();
        assert_eq!(s.bound, ShardBound::YoungDaly);
        assert_eq!(s.items, (tau / 0.001).round() as u64);
        assert!((s.shard_seconds - tau).abs() < 0.001);
        // Both wastes near √(o λ / 2), and under 1 % together.
        let each = (2.0 * 0.041 / 3_600.0 / 2.0f64).sqrt();
        assert!((s.overhead_fraction - each).abs() < each * 0.01, "{s:?}");
        assert!((s.redone_fraction - each).abs() < each * 0.01, "{s:?}");
        assert!(s.redone_fraction + s.overhead_fraction < 0.01);
        // The lease: half the shard plus overhead.
        assert_eq!(s.visibility_timeout_s, ((tau + 2.0) / 2.0).ceil() as u64);
    }

    #[test]
    fn more_hard_kills_mean_smaller_shards() {
        let l = ShardLimits::default();
        let calm = suggest(&inputs(0.01, 2.0, 0.008), &l);
        let rough = suggest(&inputs(0.01, 2.0, 0.08), &l);
        assert!(rough.items < calm.items);
        // A 10 × rate: √10 × smaller.
        let ratio = calm.items as f64 / rough.items as f64;
        assert!((ratio - 10f64.sqrt()).abs() < 0.01, "{ratio}");
    }

    #[test]
    fn no_hard_kills_means_the_longest_shard() {
        let l = ShardLimits::default();
        let s = suggest(&inputs(0.01, 2.0, 0.0), &l);
        assert_eq!(s.bound, ShardBound::MaxSeconds);
        assert_eq!(s.items, 180_000);
        assert_eq!(s.redone_fraction, 0.0);
        // Nonsense rates count as none.
        let nan = suggest(&inputs(0.01, 2.0, f64::NAN), &l);
        assert_eq!(nan.items, 180_000);
    }

    #[test]
    fn each_clamp_binds() {
        let mut l = ShardLimits::default();
        // Per worker: 1M items, 100 workers, 4 each → at most 2500 items.
        let mut i = inputs(0.001, 2.0, 0.041);
        i.items_total = Some(1_000_000);
        i.workers = Some(100);
        let s = suggest(&i, &l);
        assert_eq!((s.items, s.bound), (2_500, ShardBound::PerWorker));
        // Max items.
        l.max_items = 1_000;
        assert_eq!(suggest(&i, &l).bound, ShardBound::MaxItems);
        assert_eq!(suggest(&i, &l).items, 1_000);
        // Min items beats everything else.
        l.min_items = 5_000;
        l.max_items = 1_000_000;
        let s = suggest(&i, &l);
        assert_eq!((s.items, s.bound), (5_000, ShardBound::MinItems));
        // Zero overhead: Young–Daly says as small as allowed.
        let s = suggest(&inputs(0.001, 0.0, 0.041), &ShardLimits::default());
        assert_eq!((s.items, s.bound), (1, ShardBound::MinItems));
    }

    #[test]
    fn lease_time_is_clamped() {
        let l = ShardLimits::default();
        // Tiny shards: the floor.
        let s = suggest(&inputs(0.000_01, 0.1, 0.5), &l);
        assert_eq!(s.visibility_timeout_s, l.min_visibility_s);
        // Long shards (max_seconds 1800): (1800 + 2) / 2.
        let s = suggest(&inputs(0.01, 2.0, 0.0), &l);
        assert_eq!(s.visibility_timeout_s, 901);
        let tight = ShardLimits {
            max_visibility_s: 600,
            ..l
        };
        assert_eq!(
            suggest(&inputs(0.01, 2.0, 0.0), &tight).visibility_timeout_s,
            600
        );
    }

    #[test]
    fn without_a_measurement_the_defaults_stay() {
        let l = ShardLimits::default();
        for per_item in [None, Some(0.0), Some(-1.0), Some(f64::NAN)] {
            let i = ShardInputs {
                seconds_per_item: per_item,
                ..inputs(1.0, 2.0, 0.041)
            };
            let s = suggest(&i, &l);
            assert_eq!(s.bound, ShardBound::Unmeasured);
            assert_eq!(s.items, DEFAULT_SHARD_ITEMS);
            assert_eq!(s.visibility_timeout_s, DEFAULT_VISIBILITY_S);
        }
    }
}

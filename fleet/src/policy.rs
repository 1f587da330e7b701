//! The fleet policy: how many spot and on-demand workers a job wants now, when it will finish,
//! and the risk that it misses its deadline. One pure function, [`decide`], that the
//! coordinator calls every few seconds from what it already knows (the backlog, heartbeats,
//! interruptions, prices) and that the fleet simulation (`fleet-sim`) calls the same way.
//!
//! # Without a deadline: today's behaviour
//!
//! Spot workers scaled on queue depth, as KEDA does on SQS depth or Kafka lag:
//! `spot = min(max_spot_workers, ⌈shards_left / target_shards_per_worker⌉)`, no on-demand. The
//! same holds with a deadline while no rate is known (nothing measured and no prior given).
//!
//! # With a deadline
//!
//! Notation: now t, deadline D, T = D − t; R items left; r_s, r_o items/s of one spot and one
//! on-demand worker (measured, [`crate::rates`]); λ spot interruptions per worker-second
//! (posterior mean, or the recent rate during a spike, [`crate::interruption`]) of which a share
//! h are hard kills; d_s, d_o how long a requested spot / on-demand worker takes to arrive
//! (measured from the fleet's own history in [`PolicyState`]); S items per shard; N_o =
//! `max_on_demand_workers`.
//!
//! **Work model.** A spot slot is up 1/λ on average and then down d_s while its replacement
//! comes, so it is available A = 1 / (1 + λ d_s) of the time; a hard kill redoes half a shard,
//! a share ℓ = λ h (S/2) / r_s of its time. One spot slot therefore delivers ρ_s = r_s A (1 − ℓ)
//! items/s, an on-demand one r_o. With n_s spot and n_o on-demand workers, of which m_s, m_o
//! run now (the others arrive after d_s, d_o), the work done in a horizon H is
//!
//! ```text
//! E[W] = ρ_s (m_s H + (n_s − m_s)(H − d_s)⁺) + r_o (m_o H + (n_o − m_o)(H − d_o)⁺)
//! Var[W] = c² Var[N] + (cv · E[W_spot])² + (cv · E[W_od])²
//! ```
//!
//! where N, the interruptions in that exposure, is negative-binomial (the gamma-Poisson
//! predictive: mean μ, variance μ + μ²/α), each costing c = r_s d_s + h S / 2 items (the
//! replacement's wait and the redone half shard), and cv is the relative uncertainty of the
//! measured rates. The job finishes within H with probability ≈ Φ((E[W] − R) / √Var[W]), so
//! the **risk of missing the deadline** is `Φ((R − E[W]) / √Var[W])` with H = T − S / r_s (the
//! last shard's length). The **projected finish** is when E[W] reaches R, plus that last shard.
//!
//! **Spot first.** The spot fleet is the smallest n_s ≤ `max_spot_workers` whose expected work
//! finishes by F* = D − reserve, with reserve = d_o + S/r_s + 1.5 · `rescue_guard_s` +
//! `slack_fraction` · (D − job start): the time on-demand takes to arrive, the last shard, the
//! rescue guard and a share of the window kept free. Spot costs about the same per item however
//! many run, so a bigger spot fleet only finishes sooner; the smallest on-time one pays the
//! fewest start-ups. It grows at once when the job falls behind, and shrinks only when every
//! spot worker asked for runs and the need has fallen below (1 − `spot_shrink_band`) of it (a
//! wide band: the need moves with the measured rates, and a drained worker's replacement would
//! start up again), and to the shards left (a worker without a shard idles).
//!
//! **On-demand, when needed.** On-demand workers are added, fewest first, until
//!
//! 1. *the deadline is not at risk*: risk(n_s, n_o) ≤ `miss_risk` (1 %). If the spot fleet is
//!    below its cap and spot is arriving, more spot is tried first;
//! 2. *the job stays rescuable*: the rescue slack s = T − d_o − S/r_s − R / (N_o r_o) is the
//!    time to spare if every spot worker vanished now and all N_o on-demand workers were
//!    started. Below `rescue_guard_s`, the fleet must keep pace with the rescue line — finish
//!    work at least as fast as N_o on-demand workers would — so on-demand makes up what the
//!    running spot workers lack: n_o ≥ ⌈(N_o r_o − ρ_s m_s) / r_o⌉. This covers what the
//!    statistics do not: a burst that takes most spot machines at once and a drought after it.
//!    It is drawn from measured rates only (before the first worker reports, a prior rate is a
//!    guess and no spot work is at stake yet).
//!
//! The triggers the issue names enter through these two rules: *spot capacity that does not
//! arrive* (desired > running for `spot_shortfall_after_s` without a worker arriving) expects
//! the missing spot workers only once the shortage has lasted as long again as it has so far
//! (plus d_s), and asks for no more spot meanwhile; an *interruption spike* plans with the
//! recent rate (lower A, wider variance); a deadline *at risk* is rule 1. On-demand is bought
//! only when they put the deadline at risk: a shortfall with time to spare costs nothing.
//!
//! **Removed again, without flapping.** On-demand workers go when fewer would still meet the
//! stricter `release_risk` (0.25 %) and a rescue slack of 1.5 · `rescue_guard_s`, and not until
//! `on_demand_hold_s` after the last increase: the band between the two thresholds and the hold
//! keep the count from oscillating.
//!
//! **Late.** Once the deadline has passed, every allowed worker runs (`max_spot_workers`,
//! `max_on_demand_workers`), to finish as soon as possible.
//!
//! Counts never exceed the shards left.

use serde::{Deserialize, Serialize};

use crate::interruption::{spike, Exposure, InterruptionPrior, Posterior};
use crate::prices::{Capacity, Prices};
use crate::rates::{pool_rate, PoolRate, RateBasis, WorkerRate};
use crate::stats::normal_cdf;

/// How the policy behaves for one job. [`PolicyConfig::new`] gives the defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyConfig {
    /// Most spot workers (KEDA's `maxReplicaCount` today).
    pub max_spot_workers: u32,
    /// Most on-demand workers (the manifest's `max_on_demand_workers`).
    pub max_on_demand_workers: u32,
    /// Without a deadline: shards per spot worker (KEDA's `queueLength`, 20).
    pub target_shards_per_worker: u32,
    /// The accepted risk of missing the deadline (0.01).
    pub miss_risk: f64,
    /// On-demand workers are released only below this risk (0.0025).
    pub release_risk: f64,
    /// Share of the deadline window (job start to deadline) the spot plan keeps free (0.25).
    pub slack_fraction: f64,
    /// Time a requested spot worker takes to run, seconds, until measured (300).
    pub spot_arrival_s: f64,
    /// Time a requested on-demand worker takes to run, seconds, until measured (180).
    pub on_demand_arrival_s: f64,
    /// Desired spot above running this long with no arrival: spot is short (600 s).
    pub spot_shortfall_after_s: f64,
    /// On-demand workers stay at least this long after an increase (900 s).
    pub on_demand_hold_s: f64,
    /// Rescue slack below which the fleet must keep pace with the rescue line (300 s).
    pub rescue_guard_s: f64,
    /// The spot fleet shrinks only when its need falls by more than this share (0.5).
    pub spot_shrink_band: f64,
    /// A recent window is a spike below this Poisson tail probability (0.01).
    pub spike_p: f64,
    /// … and with at least this many interruptions in it (3).
    pub spike_min_events: u64,
    /// Relative uncertainty of the measured items/s (0.05).
    pub rate_cv: f64,
    /// Weight of a new sample in the measured arrival delays (0.3).
    pub arrival_smoothing: f64,
    /// Weight of a new measurement in the smoothed items/s per worker (0.1 per call).
    pub rate_smoothing: f64,
    /// The interruption prior (from the instance type, [`InterruptionPrior::from_table`]).
    pub prior: InterruptionPrior,
    /// Items/s of one spot worker until one is measured, if known.
    pub spot_items_per_second: Option<f64>,
    /// Items/s of one on-demand worker until one is measured, if known.
    pub on_demand_items_per_second: Option<f64>,
    /// The device spot workers report, to pick their rate (any device when `None`).
    pub spot_device: Option<String>,
    /// The device on-demand workers report.
    pub on_demand_device: Option<String>,
}

impl PolicyConfig {
    /// The defaults, with these caps.
    pub fn new(max_spot_workers: u32, max_on_demand_workers: u32) -> Self {
        Self {
            max_spot_workers,
            max_on_demand_workers,
            target_shards_per_worker: 20,
            miss_risk: 0.01,
            release_risk: 0.0025,
            slack_fraction: 0.25,
            spot_arrival_s: 300.0,
            on_demand_arrival_s: 180.0,
            spot_shortfall_after_s: 600.0,
            on_demand_hold_s: 900.0,
            rescue_guard_s: 300.0,
            spot_shrink_band: 0.5,
            spike_p: 0.01,
            spike_min_events: 3,
            rate_cv: 0.05,
            arrival_smoothing: 0.3,
            rate_smoothing: 0.1,
            prior: InterruptionPrior::default(),
            spot_items_per_second: None,
            on_demand_items_per_second: None,
            spot_device: None,
            on_demand_device: None,
        }
    }

    /// Every problem, one per field.
    pub fn validate(&self) -> Result<(), Vec<ConfigError>> {
        let mut errors = Vec::new();
        let mut check = |ok: bool, field: &'static str, problem: String| {
            if !ok {
                errors.push(ConfigError { field, problem });
            }
        };
        let prob = |v: f64| v.is_finite() && v > 0.0 && v < 1.0;
        let nonneg = |v: f64| v.is_finite() && v >= 0.0;
        check(
            self.target_shards_per_worker > 0,
            "target_shards_per_worker",
            "must be at least 1".into(),
        );
        check(
            prob(self.miss_risk),
            "miss_risk",
            format!("{} is not a probability in (0, 1)", self.miss_risk),
        );
        check(
            prob(self.release_risk) && self.release_risk <= self.miss_risk,
            "release_risk",
            format!(
                "{} must be a probability no larger than miss_risk ({})",
                self.release_risk, self.miss_risk
            ),
        );
        check(
            nonneg(self.slack_fraction) && self.slack_fraction < 1.0,
            "slack_fraction",
            format!("{} must be in [0, 1)", self.slack_fraction),
        );
        check(
            nonneg(self.spot_shrink_band) && self.spot_shrink_band < 1.0,
            "spot_shrink_band",
            format!("{} must be in [0, 1)", self.spot_shrink_band),
        );
        check(
            prob(self.spike_p),
            "spike_p",
            format!("{} is not a probability in (0, 1)", self.spike_p),
        );
        for (field, v) in [
            ("arrival_smoothing", self.arrival_smoothing),
            ("rate_smoothing", self.rate_smoothing),
        ] {
            check(prob(v) || v == 1.0, field, format!("{v} must be in (0, 1]"));
        }
        for (field, v) in [
            ("spot_arrival_s", self.spot_arrival_s),
            ("on_demand_arrival_s", self.on_demand_arrival_s),
            ("spot_shortfall_after_s", self.spot_shortfall_after_s),
            ("on_demand_hold_s", self.on_demand_hold_s),
            ("rescue_guard_s", self.rescue_guard_s),
            ("rate_cv", self.rate_cv),
            ("prior.per_hour", self.prior.per_hour),
            ("prior.weight_hours", self.prior.weight_hours),
        ] {
            check(nonneg(v), field, format!("{v} must be a number ≥ 0"));
        }
        for (field, v) in [
            ("spot_items_per_second", self.spot_items_per_second),
            (
                "on_demand_items_per_second",
                self.on_demand_items_per_second,
            ),
        ] {
            if let Some(v) = v {
                check(v.is_finite() && v > 0.0, field, format!("{v} must be > 0"));
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}

/// A problem with one field of [`PolicyConfig`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct ConfigError {
    /// The field.
    pub field: &'static str,
    /// What is wrong with it.
    pub problem: String,
}

/// What the coordinator knows about a job and its fleet now. Times are seconds on one clock
/// (Unix seconds in the coordinator, simulated seconds in `fleet-sim`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Observation {
    /// Now.
    pub now: f64,
    /// When the job was submitted (the deadline window's start).
    pub started: f64,
    /// The deadline, if the job has one.
    pub deadline: Option<f64>,
    /// Items not done yet.
    pub items_left: u64,
    /// Shards not done yet: visible plus in flight (what KEDA's queue-depth scaler counts).
    pub shards_left: u64,
    /// Items per shard in the job's plan (0: items_left / shards_left).
    pub items_per_shard: f64,
    /// Live spot workers serving the job (registered, heartbeating, not draining).
    pub running_spot: u32,
    /// Live on-demand workers serving the job.
    pub running_on_demand: u32,
    /// The workers' last reported throughput.
    pub workers: Vec<WorkerRate>,
    /// Spot exposure and interruptions over the pool's history (the posterior's evidence).
    pub seen: Exposure,
    /// The same over a recent window (for the spike test; 30 minutes suits).
    pub recent: Exposure,
    /// What a worker-hour costs.
    pub prices: Prices,
}

/// What the policy remembers between calls. Start from `PolicyState::default()`; keep the one
/// [`decide`] leaves behind (it is small and serialisable, so a coordinator can store it).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PolicyState {
    /// Spot workers desired by the last decision.
    pub spot: u32,
    /// On-demand workers desired by the last decision.
    pub on_demand: u32,
    /// When on-demand was last increased.
    pub on_demand_raised_at: Option<f64>,
    /// Spot arrivals: since when short, and the measured delay.
    pub spot_arrivals: Arrivals,
    /// On-demand arrivals.
    pub on_demand_arrivals: Arrivals,
    /// Smoothed measured items/s of one spot and one on-demand worker.
    pub rates: Option<(f64, f64)>,
}

/// Arrivals of one capacity, measured from desired vs running over successive calls.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Arrivals {
    /// Since when running has been below desired with no worker arriving.
    pub short_since: Option<f64>,
    /// Running at the last call.
    pub last_running: u32,
    /// Smoothed time from a request (or the previous arrival) to an arrival, seconds.
    pub delay_s: Option<f64>,
}

impl Arrivals {
    /// Updates from this call's running count against the last desired count.
    fn observe(&mut self, now: f64, desired: u32, running: u32, smoothing: f64) {
        if running > self.last_running {
            if let Some(since) = self.short_since {
                let sample = (now - since).max(0.0);
                self.delay_s = Some(match self.delay_s {
                    Some(d) => d + smoothing * (sample - d),
                    None => sample,
                });
            }
            // Capacity is arriving: a still-open request counts from now.
            self.short_since = (running < desired).then_some(now);
        } else if running < desired {
            self.short_since.get_or_insert(now);
        } else {
            self.short_since = None;
        }
        self.last_running = running;
    }

    /// Whether running has been below desired for `after` seconds with nothing arriving.
    fn short_for(&self, now: f64, after: f64) -> bool {
        self.short_since.is_some_and(|s| now - s >= after)
    }
}

/// How the decision was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Nothing left: no workers.
    Done,
    /// Queue depth (no deadline, or no rate to plan with).
    Depth,
    /// Deadline-aware.
    Deadline,
    /// The deadline has passed: every allowed worker.
    Late,
}

/// Which conditions held at this decision.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Triggers {
    /// The spot-only plan's risk exceeded `miss_risk`.
    pub deadline_risk: bool,
    /// Desired spot above running for `spot_shortfall_after_s` with nothing arriving.
    pub spot_shortfall: bool,
    /// Recent interruptions far above the posterior rate.
    pub interruption_spike: bool,
    /// Rescue slack below `rescue_guard_s`.
    pub rescue_guard: bool,
    /// A deadline, but no rate to plan with (depth mode).
    pub no_rate: bool,
}

/// The figures the decision used (for `status`, metrics and the dashboard).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Estimate {
    /// Items/s of one spot worker measured this call, and where it came from.
    pub spot_rate: Option<PoolRate>,
    /// Items/s of one on-demand worker measured this call.
    pub on_demand_rate: Option<PoolRate>,
    /// Items/s of one spot and one on-demand worker planned with (smoothed).
    pub planned_rates: Option<(f64, f64)>,
    /// Spot interruptions per worker-hour planned with (posterior mean, or the spike's rate).
    pub interruptions_per_hour: f64,
    /// Share of them that are hard kills.
    pub hard_share: f64,
    /// Share of time a spot slot is up: 1 / (1 + λ d_s).
    pub spot_availability: f64,
    /// Spot arrival delay planned with, seconds.
    pub spot_arrival_s: f64,
    /// On-demand arrival delay planned with, seconds.
    pub on_demand_arrival_s: f64,
    /// Rescue slack, seconds (with a deadline and on-demand allowed).
    pub rescue_slack_s: Option<f64>,
}

/// Desired workers by capacity, and what the plan expects.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    /// Spot workers wanted.
    pub spot: u32,
    /// On-demand workers wanted.
    pub on_demand: u32,
    /// How it was decided.
    pub mode: Mode,
    /// When the job is expected to finish with these workers (`None` without a rate).
    pub projected_finish: Option<f64>,
    /// Probability of finishing after the deadline (`None` without a deadline or a rate).
    pub miss_risk: Option<f64>,
    /// Expected dollars to finish with these workers (`None` without a rate).
    pub expected_cost: Option<f64>,
    /// The conditions that held.
    pub triggers: Triggers,
    /// The figures used.
    pub estimate: Estimate,
}

impl Decision {
    /// Desired workers of one capacity.
    pub fn desired(&self, capacity: Capacity) -> u32 {
        match capacity {
            Capacity::Spot => self.spot,
            Capacity::OnDemand => self.on_demand,
        }
    }
}

/// The work model of one decision (see the module documentation).
struct Model {
    /// Items/s of one spot worker and of one on-demand worker.
    r_s: f64,
    r_o: f64,
    /// Planned interruptions per worker-second.
    lambda: f64,
    posterior: Posterior,
    hard: f64,
    d_s: f64,
    d_o: f64,
    items_per_shard: f64,
    cv: f64,
    /// Whether the rates are measured (not the caller's prior).
    measured: bool,
}

/// A fleet to evaluate: workers running now and workers still to arrive, by capacity.
#[derive(Clone, Copy)]
struct Fleet {
    spot_now: f64,
    spot_new: f64,
    /// When the new spot workers are expected, seconds from now.
    spot_delay: f64,
    od_now: f64,
    od_new: f64,
}

impl Model {
    fn availability(&self) -> f64 {
        1.0 / (1.0 + self.lambda * self.d_s)
    }

    /// ρ_s: what one spot slot delivers, items/s.
    fn spot_yield(&self) -> f64 {
        let lost = (self.lambda * self.hard * self.items_per_shard / 2.0 / self.r_s).min(0.9);
        self.r_s * self.availability() * (1.0 - lost)
    }

    /// Time for the last shard, seconds.
    fn tail(&self) -> f64 {
        self.items_per_shard / self.r_s.min(self.r_o)
    }

    /// Mean and variance of the items done within `horizon` seconds.
    fn work(&self, f: Fleet, horizon: f64) -> (f64, f64) {
        if horizon <= 0.0 {
            return (0.0, 0.0);
        }
        let spot_s = f.spot_now * horizon + f.spot_new * (horizon - f.spot_delay).max(0.0);
        let od_s = f.od_now * horizon + f.od_new * (horizon - self.d_o).max(0.0);
        let spot = self.spot_yield() * spot_s;
        let od = self.r_o * od_s;
        let up_hours = spot_s * self.availability() / 3_600.0;
        let (_, var_n) = self
            .posterior
            .count_mean_var(self.lambda * 3_600.0, up_hours);
        let per_event = self.r_s * self.d_s + self.hard * self.items_per_shard / 2.0;
        let var = per_event * per_event * var_n
            + (self.cv * spot) * (self.cv * spot)
            + (self.cv * od) * (self.cv * od);
        (spot + od, var)
    }

    /// P(fewer than `items` done within `horizon`).
    fn miss(&self, f: Fleet, items: f64, horizon: f64) -> f64 {
        let (mean, var) = self.work(f, horizon);
        if var <= 0.0 {
            return if mean >= items { 0.0 } else { 1.0 };
        }
        normal_cdf((items - mean) / var.sqrt())
    }

    /// Seconds from now until the expected work reaches `items`, plus the last shard.
    fn finish_in(&self, f: Fleet, items: f64) -> Option<f64> {
        let rho = self.spot_yield();
        let mut steps = [
            (0.0, rho * f.spot_now + self.r_o * f.od_now),
            (f.spot_delay, rho * f.spot_new),
            (self.d_o, self.r_o * f.od_new),
        ];
        steps.sort_by(|a, b| a.0.total_cmp(&b.0));
        let (mut t, mut rate, mut left) = (0.0, 0.0, items);
        for (at, add) in steps {
            if rate > 0.0 && left <= rate * (at - t) {
                return Some(t + left / rate + self.tail());
            }
            left -= rate * (at - t);
            t = at;
            rate += add;
        }
        (rate > 0.0).then(|| t + left / rate + self.tail())
    }
}

/// `spot` and `od` workers wanted, of which those running count from now and the rest from
/// their arrival (`spot_delay` for spot, d_o for on-demand).
fn fleet(spot: u32, running_spot: u32, spot_delay: f64, od: u32, running_od: u32) -> Fleet {
    let spot_now = spot.min(running_spot);
    let od_now = od.min(running_od);
    Fleet {
        spot_now: spot_now as f64,
        spot_new: (spot - spot_now) as f64,
        spot_delay,
        od_now: od_now as f64,
        od_new: (od - od_now) as f64,
    }
}

/// The desired workers by capacity for a job now (see the module documentation for the rule and
/// its formulas). `state` carries what the policy remembers between calls: pass the same one
/// every time (it starts as `PolicyState::default()`). No I/O; the same inputs and state give the
/// same decision.
pub fn decide(config: &PolicyConfig, obs: &Observation, state: &mut PolicyState) -> Decision {
    let now = obs.now;
    let smoothing = config.arrival_smoothing;
    state
        .spot_arrivals
        .observe(now, state.spot, obs.running_spot, smoothing);
    state
        .on_demand_arrivals
        .observe(now, state.on_demand, obs.running_on_demand, smoothing);
    let cap_s = config.max_spot_workers;
    let cap_o = config.max_on_demand_workers;
    let shards = obs.shards_left.min(u32::MAX as u64) as u32;
    let spot_short = state
        .spot_arrivals
        .short_for(now, config.spot_shortfall_after_s);
    let short_for = state.spot_arrivals.short_since.map_or(0.0, |s| now - s);

    // Estimates.
    let posterior = Posterior::new(&config.prior, &obs.seen);
    let spiking = spike(
        posterior.per_hour(),
        &obs.recent,
        config.spike_p,
        config.spike_min_events,
    );
    let per_hour = spiking.map_or(posterior.per_hour(), |s| s.max(posterior.per_hour()));
    let spot_rate = pool_rate(
        &obs.workers,
        Capacity::Spot,
        config.spot_device.as_deref(),
        config.spot_items_per_second,
    );
    let od_rate = pool_rate(
        &obs.workers,
        Capacity::OnDemand,
        config.on_demand_device.as_deref(),
        config.on_demand_items_per_second,
    );
    let d_s = state
        .spot_arrivals
        .delay_s
        .unwrap_or(config.spot_arrival_s)
        .max(0.0);
    // In a shortfall, the missing spot workers are expected once the shortage has lasted as
    // long again as it has so far.
    let spot_delay = if spot_short { d_s + short_for } else { d_s };
    let d_o = state
        .on_demand_arrivals
        .delay_s
        .unwrap_or(config.on_demand_arrival_s)
        .max(0.0);
    let mut estimate = Estimate {
        spot_rate,
        on_demand_rate: od_rate,
        interruptions_per_hour: per_hour,
        hard_share: posterior.hard_share,
        spot_availability: 1.0 / (1.0 + per_hour / 3_600.0 * d_s),
        spot_arrival_s: d_s,
        on_demand_arrival_s: d_o,
        rescue_slack_s: None,
        planned_rates: None,
    };
    let mut triggers = Triggers {
        spot_shortfall: spot_short,
        interruption_spike: spiking.is_some(),
        ..Triggers::default()
    };
    let rates = match (spot_rate, od_rate) {
        (Some(s), Some(o)) => Some((s.items_per_second, o.items_per_second)),
        (Some(s), None) => Some((s.items_per_second, s.items_per_second)),
        (None, Some(o)) => Some((o.items_per_second, o.items_per_second)),
        (None, None) => None,
    };
    let measured = [spot_rate, od_rate]
        .iter()
        .flatten()
        .any(|r| r.basis != RateBasis::Prior);
    // Measured rates are smoothed across calls (one heartbeat's rate is noisy); a prior is
    // used as given.
    let rates = match (rates, state.rates, measured) {
        (Some((s, o)), Some((ps, po)), true) => {
            let a = config.rate_smoothing;
            let smoothed = (ps + a * (s - ps), po + a * (o - po));
            state.rates = Some(smoothed);
            Some(smoothed)
        }
        (Some(r), None, true) => {
            state.rates = Some(r);
            Some(r)
        }
        (r, _, _) => r,
    };
    estimate.planned_rates = rates;
    let model = rates.map(|(r_s, r_o)| Model {
        r_s,
        r_o,
        lambda: per_hour / 3_600.0,
        posterior,
        hard: posterior.hard_share,
        d_s,
        d_o,
        items_per_shard: if obs.items_per_shard.is_finite() && obs.items_per_shard > 0.0 {
            obs.items_per_shard
        } else {
            obs.items_left as f64 / obs.shards_left.max(1) as f64
        },
        cv: config.rate_cv.max(0.0),
        measured,
    });
    let items = obs.items_left as f64;

    let (spot, on_demand, mode) = match (obs.deadline, &model) {
        _ if obs.items_left == 0 => (0, 0, Mode::Done),
        (Some(deadline), Some(_)) if deadline <= now => {
            (cap_s.min(shards), cap_o.min(shards), Mode::Late)
        }
        (Some(deadline), Some(model)) => {
            let (spot, on_demand) = plan(
                config,
                obs,
                state,
                model,
                deadline,
                spot_delay,
                &mut triggers,
                &mut estimate,
            );
            (spot, on_demand, Mode::Deadline)
        }
        (deadline, _) => {
            // Today's behaviour: spot on queue depth.
            triggers.no_rate = deadline.is_some();
            let per = config.target_shards_per_worker.max(1) as u64;
            let spot = obs.shards_left.div_ceil(per).min(cap_s as u64) as u32;
            (spot, 0, Mode::Depth)
        }
    };
    state.spot = spot;
    state.on_demand = on_demand;

    let mut decision = Decision {
        spot,
        on_demand,
        mode,
        projected_finish: None,
        miss_risk: None,
        expected_cost: None,
        triggers,
        estimate,
    };
    if let (Some(model), true) = (&model, mode != Mode::Done) {
        let f = fleet(
            spot,
            obs.running_spot,
            spot_delay,
            on_demand,
            obs.running_on_demand,
        );
        decision.projected_finish = model.finish_in(f, items).map(|s| now + s);
        decision.expected_cost = decision.projected_finish.map(|end| {
            (spot as f64 * obs.prices.spot_per_hour
                + on_demand as f64 * obs.prices.on_demand_per_hour)
                * (end - now)
                / 3_600.0
        });
        decision.miss_risk = match (mode, obs.deadline) {
            (Mode::Late, _) => Some(1.0),
            (Mode::Deadline, Some(deadline)) => {
                Some(model.miss(f, items, deadline - now - model.tail()))
            }
            _ => None,
        };
    }
    decision
}

/// The deadline-aware counts (spot first, then on-demand by risk and the rescue line).
#[allow(clippy::too_many_arguments)]
fn plan(
    config: &PolicyConfig,
    obs: &Observation,
    state: &mut PolicyState,
    model: &Model,
    deadline: f64,
    spot_delay: f64,
    triggers: &mut Triggers,
    estimate: &mut Estimate,
) -> (u32, u32) {
    let now = obs.now;
    let items = obs.items_left as f64;
    let cap_o = config.max_on_demand_workers;
    let shards = obs.shards_left.min(u32::MAX as u64) as u32;
    let cap_s = config.max_spot_workers.min(shards);
    let left = deadline - now;
    let tail = model.tail();
    let horizon = left - tail;

    // Spot first: the smallest spot fleet that finishes by F* = D − reserve, assuming requested
    // spot arrives (an unfilled request costs nothing).
    let reserve = model.d_o
        + tail
        + 1.5 * config.rescue_guard_s
        + config.slack_fraction * (deadline - obs.started).max(0.0);
    let plan_horizon = left - reserve - tail;
    let needed = (1..=cap_s)
        .find(|&n| {
            let f = fleet(n, obs.running_spot, model.d_s, 0, 0);
            model.work(f, plan_horizon).0 >= items
        })
        .unwrap_or(cap_s);
    let shrink = obs.running_spot >= state.spot
        && (needed as f64) < state.spot as f64 * (1.0 - config.spot_shrink_band);
    let mut spot = if needed >= state.spot || shrink {
        needed
    } else {
        state.spot
    }
    .min(cap_s);

    // The deadline at risk: more spot first (when spot arrives), then on-demand.
    let running = (obs.running_spot, obs.running_on_demand);
    let risk = |s: u32, o: u32| {
        model.miss(
            fleet(s, running.0, spot_delay, o, running.1),
            items,
            horizon,
        )
    };
    if risk(spot, 0) > config.miss_risk {
        triggers.deadline_risk = true;
        if !triggers.spot_shortfall {
            spot = (spot..=cap_s)
                .find(|&s| risk(s, 0) <= config.miss_risk)
                .unwrap_or(cap_s);
        }
    }
    let by_risk = |eps: f64| (0..=cap_o).find(|&o| risk(spot, o) <= eps).unwrap_or(cap_o);

    // The rescue line: could N_o on-demand workers still finish if spot vanished now? Drawn
    // from measured rates only: before the first worker reports there is nothing to lose yet.
    let rescue = (cap_o > 0 && model.measured)
        .then(|| left - model.d_o - tail - items / (cap_o as f64 * model.r_o));
    estimate.rescue_slack_s = rescue;
    triggers.rescue_guard = rescue.is_some_and(|s| s < config.rescue_guard_s);
    let spot_pace = model.spot_yield() * spot.min(running.0) as f64;
    let by_rescue = |guard: f64| match rescue {
        Some(s) if s < guard => {
            let lack = cap_o as f64 * model.r_o - spot_pace;
            ((lack / model.r_o).ceil().max(0.0) as u32).min(cap_o)
        }
        _ => 0,
    };

    let need = by_risk(config.miss_risk).max(by_rescue(config.rescue_guard_s));
    let keep = by_risk(config.release_risk).max(by_rescue(1.5 * config.rescue_guard_s));
    let held = state
        .on_demand_raised_at
        .is_none_or(|t| now - t >= config.on_demand_hold_s);
    let on_demand = if need > state.on_demand {
        state.on_demand_raised_at = Some(now);
        need
    } else if keep < state.on_demand && held {
        keep
    } else {
        state.on_demand
    };
    (spot, on_demand.min(cap_o).min(shards))
}

#[cfg(test)]
mod tests {
    use super::*;

    const RATE: f64 = 100.0;

    /// The defaults, with the figures the tests' arithmetic uses pinned.
    fn config(max_spot: u32, max_od: u32) -> PolicyConfig {
        let mut c = PolicyConfig::new(max_spot, max_od);
        c.prior.per_hour = 0.02;
        c.spot_items_per_second = Some(RATE);
        c.slack_fraction = 0.1;
        c.rescue_guard_s = 600.0;
        c.spot_arrival_s = 300.0;
        c.on_demand_arrival_s = 180.0;
        c
    }

    /// A job with shards of 1000 items, `running` busy workers of each capacity at 100 items/s.
    fn obs(now: f64, deadline: Option<f64>, items_left: u64, spot: u32, od: u32) -> Observation {
        let worker = |capacity| WorkerRate {
            capacity,
            device: "gpu".into(),
            items_per_second: RATE,
            busy: true,
        };
        let mut workers = vec![worker(Capacity::Spot); spot as usize];
        workers.extend(vec![worker(Capacity::OnDemand); od as usize]);
        Observation {
            now,
            started: 0.0,
            deadline,
            items_left,
            shards_left: items_left.div_ceil(1000),
            items_per_shard: 1000.0,
            running_spot: spot,
            running_on_demand: od,
            workers,
            seen: Exposure::default(),
            recent: Exposure::default(),
            prices: Prices {
                spot_per_hour: 1.0,
                on_demand_per_hour: 3.0,
            },
        }
    }

    #[test]
    fn a_finished_job_wants_no_workers() {
        let mut state = PolicyState {
            spot: 7,
            on_demand: 3,
            ..PolicyState::default()
        };
        let d = decide(&config(10, 10), &obs(0.0, Some(100.0), 0, 7, 3), &mut state);
        assert_eq!((d.spot, d.on_demand, d.mode), (0, 0, Mode::Done));
        assert_eq!((state.spot, state.on_demand), (0, 0));
        assert_eq!(d.projected_finish, None);
    }

    #[test]
    fn without_a_deadline_it_scales_spot_on_queue_depth_as_keda_does() {
        let c = config(40, 10);
        for (items, running_od, want) in [
            (1_000_000u64, 0u32, 40u32), // 1000 shards / 20 = 50, capped at 40
            (100_000, 4, 5),             // 100 shards / 20
            (100_001, 0, 6),             // 101 shards: rounded up
            (1_000, 0, 1),
        ] {
            let mut state = PolicyState {
                on_demand: 5,
                ..PolicyState::default()
            };
            let d = decide(&c, &obs(0.0, None, items, 3, running_od), &mut state);
            assert_eq!(
                (d.spot, d.on_demand, d.mode),
                (want, 0, Mode::Depth),
                "{items}"
            );
            assert!(!d.triggers.no_rate);
            assert_eq!(d.miss_risk, None);
            // With a rate it still projects a finish.
            assert!(d.projected_finish.is_some_and(|f| f > 0.0));
        }
    }

    #[test]
    fn a_deadline_without_any_rate_falls_back_to_depth() {
        let mut c = config(40, 10);
        c.spot_items_per_second = None;
        let mut o = obs(0.0, Some(3_600.0), 100_000, 0, 0);
        o.workers.clear();
        let d = decide(&c, &o, &mut PolicyState::default());
        assert_eq!((d.spot, d.on_demand, d.mode), (5, 0, Mode::Depth));
        assert!(d.triggers.no_rate);
        assert_eq!((d.projected_finish, d.miss_risk), (None, None));
        // The first busy worker's report is enough to plan.
        o.workers.push(WorkerRate {
            capacity: Capacity::Spot,
            device: "gpu".into(),
            items_per_second: RATE,
            busy: true,
        });
        o.running_spot = 1;
        let d = decide(&c, &o, &mut PolicyState::default());
        assert_eq!(d.mode, Mode::Deadline);
    }

    #[test]
    fn a_distant_deadline_gets_the_smallest_on_time_spot_fleet() {
        // 3.6 M items at 100/s per worker: 10 worker-hours; deadline in 10 h.
        let c = config(50, 20);
        let o = obs(0.0, Some(36_000.0), 3_600_000, 0, 0);
        let d = decide(&c, &o, &mut PolicyState::default());
        assert_eq!(d.mode, Mode::Deadline);
        assert_eq!((d.spot, d.on_demand), (2, 0));
        let risk = d.miss_risk.expect("a deadline and a rate");
        assert!(risk < 1e-6, "{risk}");
        let finish = d.projected_finish.expect("a rate");
        // Two workers arriving after 300 s: about 300 + 18 000 s, plus the last shard.
        assert!((finish - 18_350.0).abs() < 100.0, "{finish}");
        assert!(!d.triggers.deadline_risk && !d.triggers.rescue_guard);
        // One worker would not finish by F* = D − reserve: that is why it is two.
        let reserve = 180.0 + 10.0 + 900.0 + 3_600.0;
        assert!(RATE * (36_000.0 - reserve - 10.0 - 300.0) < 3_600_000.0);
        // Expected cost: two spot workers until the projected finish at $1/h.
        let cost = d.expected_cost.expect("a rate");
        assert!((cost - 2.0 * finish / 3_600.0).abs() < 1e-9);
    }

    #[test]
    fn a_deadline_at_risk_adds_on_demand_after_spot_is_at_its_cap() {
        // Two spot workers at most: 2 × 100/s × 5 h is less than 3.6 M.
        let c = config(2, 20);
        let o = obs(0.0, Some(18_000.0), 3_600_000, 2, 0);
        let d = decide(&c, &o, &mut PolicyState::default());
        assert!(d.triggers.deadline_risk);
        assert_eq!(d.spot, 2);
        assert!(d.on_demand >= 1, "{d:?}");
        assert!(d.miss_risk.expect("risk") <= c.miss_risk);
        // One fewer on-demand worker would have been too risky.
        let mut fewer = c.clone();
        fewer.max_on_demand_workers = d.on_demand - 1;
        let d2 = decide(&fewer, &o, &mut PolicyState::default());
        assert!(d2.miss_risk.expect("risk") > c.miss_risk);
        // With room for spot, spot comes first and no on-demand is bought.
        let d3 = decide(&config(50, 20), &o, &mut PolicyState::default());
        assert_eq!(d3.on_demand, 0);
        assert!(d3.spot > 2);
    }

    /// Asks for spot, then lets only `arrived` of it run for `wait` seconds.
    fn short_of_spot(c: &PolicyConfig, deadline: f64, arrived: u32, wait: f64) -> Decision {
        let mut state = PolicyState::default();
        let first = decide(c, &obs(0.0, Some(deadline), 3_600_000, 0, 0), &mut state);
        assert!(first.spot > arrived, "the test needs a shortfall");
        decide(
            c,
            &obs(300.0, Some(deadline), 3_600_000, arrived, 0),
            &mut state,
        );
        decide(
            c,
            &obs(300.0 + wait, Some(deadline), 3_600_000, arrived, 0),
            &mut state,
        )
    }

    #[test]
    fn spot_that_does_not_arrive_is_replaced_by_on_demand_when_it_matters() {
        // Four spot workers wanted, one arrives; 3000 s later the other three are expected only
        // 3300 s from then, which the deadline cannot absorb.
        let c = config(4, 20);
        let d = short_of_spot(&c, 14_600.0, 1, 3_000.0);
        assert!(d.triggers.spot_shortfall);
        assert_eq!(d.spot, 4, "the request stays open");
        assert!(d.on_demand > 0, "{d:?}");
        assert!(d.miss_risk.expect("risk") <= c.miss_risk);
        // The same wait with a patient shortfall timer: spot is still expected, no on-demand.
        let patient = PolicyConfig {
            spot_shortfall_after_s: 1e6,
            ..c.clone()
        };
        let d = short_of_spot(&patient, 14_600.0, 1, 3_000.0);
        assert!(!d.triggers.spot_shortfall);
        assert_eq!(d.on_demand, 0, "{d:?}");
        // A shortfall with time to spare buys nothing.
        let d = short_of_spot(&c, 40.0 * 3_600.0, 0, 700.0);
        assert!(d.triggers.spot_shortfall);
        assert_eq!(d.on_demand, 0, "{d:?}");
    }

    #[test]
    fn an_interruption_spike_adds_on_demand() {
        // Three running spot workers finish comfortably at the prior's rate …
        let c = config(3, 20);
        let calm = obs(0.0, Some(14_400.0), 3_600_000, 3, 0);
        let d = decide(&c, &calm, &mut PolicyState::default());
        assert!(!d.triggers.interruption_spike);
        assert_eq!(d.on_demand, 0, "{d:?}");
        // … not when 10 interruptions hit in the last 5 worker-hours.
        let mut rough = calm.clone();
        rough.recent = Exposure {
            worker_hours: 5.0,
            notices: 8,
            hard_kills: 2,
        };
        rough.seen = rough.recent;
        let d = decide(&c, &rough, &mut PolicyState::default());
        assert!(d.triggers.interruption_spike);
        assert!((d.estimate.interruptions_per_hour - 2.0).abs() < 1e-9);
        assert!(d.on_demand > 0, "{d:?}");
        // The same events spread over 500 worker-hours are no spike.
        let mut spread = rough.clone();
        spread.recent.worker_hours = 500.0;
        spread.seen.worker_hours = 500.0;
        let d = decide(&c, &spread, &mut PolicyState::default());
        assert!(!d.triggers.interruption_spike);
        assert_eq!(d.on_demand, 0);
    }

    #[test]
    fn the_rescue_guard_keeps_pace_with_the_on_demand_allowance() {
        // Nine spot workers (≈ 898 items/s) would finish 3 M items in time, but if they vanished,
        // ten on-demand workers (1000 items/s) would have only ~810 s to spare.
        let mut c = config(9, 10);
        c.rescue_guard_s = 1_000.0;
        let o = obs(0.0, Some(4_000.0), 3_000_000, 9, 0);
        let state = PolicyState {
            spot: 9,
            ..PolicyState::default()
        };
        let d = decide(&c, &o, &mut state.clone());
        assert!(
            d.triggers.rescue_guard && !d.triggers.deadline_risk,
            "{d:?}"
        );
        let slack = d.estimate.rescue_slack_s.expect("on-demand allowed");
        assert!((slack - (4_000.0 - 180.0 - 10.0 - 3_000.0)).abs() < 1e-6);
        // (1000 − 898.5) / 100 → 2 on-demand workers.
        assert_eq!((d.spot, d.on_demand), (9, 2));
        // A smaller guard: no on-demand.
        c.rescue_guard_s = 500.0;
        let d = decide(&c, &o, &mut state.clone());
        assert!(!d.triggers.rescue_guard);
        assert_eq!(d.on_demand, 0);
    }

    #[test]
    fn on_demand_is_held_then_released() {
        let c = config(2, 20);
        let mut state = PolicyState::default();
        let d = decide(&c, &obs(0.0, Some(18_000.0), 3_600_000, 2, 0), &mut state);
        let raised = d.on_demand;
        assert!(raised > 0);
        assert_eq!(state.on_demand_raised_at, Some(0.0));
        // Most of the work done: no longer needed, but held for on_demand_hold_s.
        let easy = |now| obs(now, Some(18_000.0), 100_000, 2, raised);
        let d = decide(&c, &easy(60.0), &mut state);
        assert_eq!(d.on_demand, raised, "held");
        let d = decide(&c, &easy(899.0), &mut state);
        assert_eq!(d.on_demand, raised, "still held");
        let d = decide(&c, &easy(901.0), &mut state);
        assert_eq!(d.on_demand, 0, "released after the hold");
    }

    #[test]
    fn on_demand_between_the_two_risks_stays() {
        // Find a backlog whose spot-only risk lies between release_risk and miss_risk.
        let c = config(2, 20);
        let long_ago = PolicyState {
            spot: 2,
            on_demand: 1,
            on_demand_raised_at: Some(-10_000.0),
            ..PolicyState::default()
        };
        let band = (3_000_000u64..3_600_000)
            .step_by(5_000)
            .find(|&items| {
                let o = obs(0.0, Some(18_000.0), items, 2, 1);
                let fresh = PolicyState {
                    spot: 2,
                    ..PolicyState::default()
                };
                let d = decide(&c, &o, &mut fresh.clone());
                d.on_demand == 0 && d.miss_risk.is_some_and(|r| r > c.release_risk)
            })
            .expect("a backlog in the band");
        let o = obs(0.0, Some(18_000.0), band, 2, 1);
        let d = decide(&c, &o, &mut long_ago.clone());
        assert_eq!(d.on_demand, 1, "inside the band the worker stays");
        // Well below the band it goes.
        let o = obs(0.0, Some(18_000.0), band / 2, 2, 1);
        let d = decide(&c, &o, &mut long_ago.clone());
        assert_eq!(d.on_demand, 0);
    }

    #[test]
    fn past_the_deadline_every_allowed_worker_runs() {
        let c = config(30, 12);
        let d = decide(
            &c,
            &obs(20_000.0, Some(18_000.0), 3_600_000, 5, 0),
            &mut PolicyState::default(),
        );
        assert_eq!((d.spot, d.on_demand, d.mode), (30, 12, Mode::Late));
        assert_eq!(d.miss_risk, Some(1.0));
        // No more than there are shards.
        let d = decide(
            &c,
            &obs(20_000.0, Some(18_000.0), 5_000, 5, 0),
            &mut PolicyState::default(),
        );
        assert_eq!((d.spot, d.on_demand), (5, 5));
    }

    #[test]
    fn never_more_workers_than_shards_left() {
        // 3 shards left and a deadline only on-demand could make.
        let c = config(50, 20);
        let mut o = obs(0.0, Some(200.0), 3_000, 0, 0);
        o.items_per_shard = 1_000.0;
        let d = decide(&c, &o, &mut PolicyState::default());
        assert!(d.spot <= 3 && d.on_demand <= 3, "{d:?}");
        assert_eq!(d.on_demand, 3);
    }

    #[test]
    fn the_spot_fleet_shrinks_only_past_the_band_when_all_of_it_runs() {
        let c = config(50, 20);
        // Needs two workers (see the distant-deadline test).
        let state = |spot| PolicyState {
            spot,
            ..PolicyState::default()
        };
        let o = obs(0.0, Some(36_000.0), 3_600_000, 2, 0);
        assert_eq!(decide(&c, &o, &mut state(2)).spot, 2);
        // Asked for 5, all five run: 2 is below half of 5, it shrinks.
        let o = obs(0.0, Some(36_000.0), 3_600_000, 5, 0);
        assert_eq!(decide(&c, &o, &mut state(5)).spot, 2);
        // Only two of the five run yet: the rest may be on their way; no shrinking.
        let o = obs(0.0, Some(36_000.0), 3_600_000, 2, 0);
        assert_eq!(decide(&c, &o, &mut state(5)).spot, 5);
        // Twice the work needs three; a fleet of 4 is within the band and stays.
        let o = obs(0.0, Some(36_000.0), 7_000_000, 4, 0);
        assert_eq!(decide(&c, &o, &mut PolicyState::default()).spot, 3);
        assert_eq!(decide(&c, &o, &mut state(4)).spot, 4);
    }

    #[test]
    fn arrival_delays_are_measured_from_desired_and_running() {
        let c = config(10, 10);
        let job = |now, spot| obs(now, Some(36_000.0), 3_600_000, spot, 0);
        let mut state = PolicyState::default();
        let asked = decide(&c, &job(0.0, 0), &mut state).spot;
        assert!(asked >= 1);
        decide(&c, &job(100.0, 0), &mut state);
        let d = decide(&c, &job(400.0, asked), &mut state);
        assert_eq!(d.estimate.spot_arrival_s, 300.0, "first sample: 400 − 100");
        // One is interrupted at 500, its replacement runs at 700: 200 s, smoothed.
        decide(&c, &job(500.0, asked - 1), &mut state);
        let d = decide(&c, &job(700.0, asked), &mut state);
        assert!((d.estimate.spot_arrival_s - (300.0 + 0.3 * (200.0 - 300.0))).abs() < 1e-9);
        assert_eq!(state.spot_arrivals.short_since, None);
    }

    #[test]
    fn measured_rates_are_smoothed_and_priors_are_not() {
        let c = config(10, 10);
        let o = obs(0.0, Some(36_000.0), 3_600_000, 2, 0);
        let mut state = PolicyState {
            rates: Some((50.0, 50.0)),
            ..PolicyState::default()
        };
        let d = decide(&c, &o, &mut state);
        // 50 + 0.1 × (100 − 50).
        assert_eq!(d.estimate.planned_rates, Some((55.0, 55.0)));
        assert_eq!(state.rates, Some((55.0, 55.0)));
        // The first measurement is taken as it is.
        let d = decide(&c, &o, &mut PolicyState::default());
        assert_eq!(d.estimate.planned_rates, Some((100.0, 100.0)));
        // A prior is used as given and not remembered.
        let mut o = obs(0.0, Some(36_000.0), 3_600_000, 0, 0);
        o.workers.clear();
        let mut state = PolicyState::default();
        let d = decide(&c, &o, &mut state);
        assert_eq!(d.estimate.planned_rates, Some((RATE, RATE)));
        assert_eq!(state.rates, None);
    }

    #[test]
    fn config_errors_name_each_field() {
        let mut c = PolicyConfig::new(1, 1);
        assert_eq!(c.validate(), Ok(()));
        c.target_shards_per_worker = 0;
        c.miss_risk = 1.5;
        c.spot_arrival_s = -1.0;
        c.spot_items_per_second = Some(0.0);
        let errors = c.validate().expect_err("four problems");
        let fields: Vec<&str> = errors.iter().map(|e| e.field).collect();
        assert_eq!(
            fields,
            [
                "target_shards_per_worker",
                "miss_risk",
                "spot_arrival_s",
                "spot_items_per_second"
            ]
        );
        assert!(errors[1].to_string().starts_with("miss_risk: 1.5"));
    }
}

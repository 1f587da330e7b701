//! The simulated fleet and its lease queue, in steps of simulated time: instances requested,
//! arriving (spot only outside droughts), booting (billed), leasing shards and working them,
//! interrupted (a notice drains: the finished part is kept and the rest handed back at once; a
//! hard kill loses the shard's progress, and the shard waits out its lease), and released.
//!
//! Randomness is seeded per scenario seed and split so that policies see the same market: the
//! bursts and droughts are drawn up front, and the k-th instance of a capacity gets the same
//! arrival delay, boot time, speed, interruption time (a hazard budget spent at the market's
//! rate) and notice-or-not in every policy.

use std::collections::VecDeque;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use spotbatch_fleet::interruption::Exposure;
use spotbatch_fleet::policy::Observation;
use spotbatch_fleet::prices::{Capacity, Prices};
use spotbatch_fleet::rates::WorkerRate;

use crate::scenario::{Scenario, SHARD_OVERHEAD_S};

/// Simulated seconds per step.
pub const STEP_S: f64 = 10.0;
/// A notice comes this long before the machine goes (AWS: two minutes); billed until then.
const NOTICE_S: f64 = 120.0;
/// The spike test's window, seconds.
const RECENT_S: f64 = 1_800.0;
/// Relative noise of a worker's reported items/s.
const RATE_NOISE: f64 = 0.05;
/// Spread (log-normal σ) of instance speeds around the nominal rate.
const SPEED_SPREAD: f64 = 0.08;

/// What one instance will do, drawn from the seed, the capacity and its ordinal.
struct Draws {
    arrival_s: f64,
    boot_s: f64,
    speed_factor: f64,
    hazard_budget: f64,
    notice: bool,
}

/// A SplitMix64 step: a well-mixed 64-bit value from any input (seeds for sub-streams).
pub fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn unit(x: u64) -> f64 {
    (mix(x) >> 11) as f64 / (1u64 << 53) as f64
}

fn exponential(rng: &mut ChaCha8Rng, mean: f64) -> f64 {
    -mean * (1.0 - rng.random::<f64>()).ln()
}

fn normal(rng: &mut ChaCha8Rng) -> f64 {
    let u1: f64 = 1.0 - rng.random::<f64>();
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

impl Draws {
    fn new(seed: u64, capacity: Capacity, k: u64, notice_share: f64) -> Self {
        let stream = mix(seed
            ^ mix(k ^ if capacity == Capacity::Spot {
                1 << 62
            } else {
                1 << 63
            }));
        let mut rng = ChaCha8Rng::seed_from_u64(stream);
        let arrival_s = match capacity {
            // Spot: a request is filled in one to several minutes.
            Capacity::Spot => 60.0 + exponential(&mut rng, 180.0),
            Capacity::OnDemand => 30.0 + exponential(&mut rng, 30.0),
        };
        Self {
            arrival_s,
            // Image pull, model load, CUDA set-up: billed.
            boot_s: 90.0 + exponential(&mut rng, 60.0),
            speed_factor: (SPEED_SPREAD * normal(&mut rng) - SPEED_SPREAD * SPEED_SPREAD / 2.0)
                .exp(),
            hazard_budget: exponential(&mut rng, 1.0),
            notice: rng.random::<f64>() < notice_share,
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
    fn new(s: &Scenario, seed: u64, horizon: f64) -> Self {
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

#[derive(Clone, Copy, PartialEq)]
enum Phase {
    Pending { ready_at: f64 },
    Booting { until: f64 },
    Running,
    Draining { until: f64 },
    Gone,
}

struct Lease {
    shard: usize,
    setup_left: f64,
    progress: f64,
}

struct Instance {
    id: u64,
    capacity: Capacity,
    phase: Phase,
    speed: f64,
    hazard_left: f64,
    notice: bool,
    boot_s: f64,
    lease: Option<Lease>,
}

/// One step of the timeline (for the plot).
#[derive(Clone, Copy)]
pub struct Sample {
    pub t: f64,
    pub desired: (u32, u32),
    pub running: (u32, u32),
    pub items_left: f64,
}

/// How a run ended.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// When the last item was done, seconds after the start (`None`: not by the horizon).
    pub finished: Option<f64>,
    /// Dollars by capacity (spot, on-demand).
    pub cost: (f64, f64),
    /// Billed instance-hours by capacity.
    pub hours: (f64, f64),
    /// Items worked again after hard kills.
    pub redone: f64,
    /// Interruptions (notices, hard kills) of running spot workers.
    pub interruptions: (u64, u64),
}

/// The simulated fleet of one run.
pub struct World<'a> {
    s: &'a Scenario,
    seed: u64,
    prices: Prices,
    /// Now, seconds after the start.
    pub t: f64,
    visibility_s: f64,
    shard_items: f64,
    shard_left: Vec<f64>,
    shards_done: usize,
    visible: VecDeque<usize>,
    expiring: Vec<(f64, usize)>,
    instances: Vec<Instance>,
    next_id: [u64; 2],
    pub market: Market,
    next_burst: usize,
    committed: f64,
    out: Outcome,
    seen: Exposure,
    recent: VecDeque<(f64, f64, u64, u64)>,
    obs_rng: ChaCha8Rng,
    /// The timeline, when recorded.
    pub timeline: Option<Vec<Sample>>,
}

impl<'a> World<'a> {
    /// A fresh job: every shard visible, no instances.
    pub fn new(s: &'a Scenario, seed: u64, horizon: f64, record: bool) -> Self {
        let plan = s.auto_shards();
        let per = plan.items.max(1);
        let full = s.items / per;
        let mut shard_left = vec![per as f64; full as usize];
        if !s.items.is_multiple_of(per) {
            shard_left.push((s.items % per) as f64);
        }
        Self {
            s,
            seed,
            prices: s.prices(),
            t: 0.0,
            visibility_s: plan.visibility_timeout_s as f64,
            shard_items: per as f64,
            visible: (0..shard_left.len()).collect(),
            shard_left,
            shards_done: 0,
            expiring: Vec::new(),
            instances: Vec::new(),
            next_id: [0, 0],
            market: Market::new(s, seed, horizon),
            next_burst: 0,
            committed: 0.0,
            out: Outcome::default(),
            seen: Exposure::default(),
            recent: VecDeque::new(),
            obs_rng: ChaCha8Rng::seed_from_u64(mix(seed ^ 0x0B5)),
            timeline: record.then(Vec::new),
        }
    }

    /// Items not done.
    pub fn items_left(&self) -> f64 {
        (self.s.items as f64 - self.committed).max(0.0)
    }

    fn done(&self) -> bool {
        self.shards_done == self.shard_left.len()
    }

    fn running(&self, capacity: Capacity) -> u32 {
        self.instances
            .iter()
            .filter(|i| i.capacity == capacity && i.phase == Phase::Running)
            .count() as u32
    }

    /// What the coordinator would know now.
    pub fn observe(&mut self, deadline: Option<f64>) -> Observation {
        let mut workers = Vec::new();
        for i in self.instances.iter().filter(|i| i.phase == Phase::Running) {
            let noise = 1.0 + RATE_NOISE * normal(&mut self.obs_rng);
            workers.push(WorkerRate {
                capacity: i.capacity,
                device: self.s.instance_type.to_string(),
                items_per_second: i.speed * noise.max(0.0),
                busy: i.lease.is_some(),
            });
        }
        let mut recent = Exposure::default();
        for &(_, h, n, k) in &self.recent {
            recent.worker_hours += h;
            recent.notices += n;
            recent.hard_kills += k;
        }
        Observation {
            now: self.t,
            started: 0.0,
            deadline,
            items_left: self.items_left().round() as u64,
            shards_left: (self.shard_left.len() - self.shards_done) as u64,
            items_per_shard: self.shard_items,
            running_spot: self.running(Capacity::Spot),
            running_on_demand: self.running(Capacity::OnDemand),
            workers,
            seen: self.seen,
            recent,
            prices: self.prices,
        }
    }

    /// Requests or releases instances so that each capacity has `desired` live ones.
    pub fn reconcile(&mut self, spot: u32, on_demand: u32) {
        for (capacity, want) in [(Capacity::Spot, spot), (Capacity::OnDemand, on_demand)] {
            let live = |i: &Instance| {
                i.capacity == capacity
                    && matches!(
                        i.phase,
                        Phase::Pending { .. } | Phase::Booting { .. } | Phase::Running
                    )
            };
            let have = self.instances.iter().filter(|i| live(i)).count() as u32;
            for _ in have..want {
                let slot = if capacity == Capacity::Spot { 0 } else { 1 };
                let k = self.next_id[slot];
                self.next_id[slot] += 1;
                let d = Draws::new(self.seed, capacity, k, self.s.notice_share);
                self.instances.push(Instance {
                    id: k,
                    capacity,
                    phase: Phase::Pending {
                        ready_at: self.t + d.arrival_s,
                    },
                    speed: self.s.items_per_second * d.speed_factor,
                    hazard_left: d.hazard_budget,
                    notice: d.notice,
                    boot_s: d.boot_s,
                    lease: None,
                });
            }
            // Release the least useful first: unfilled requests, booting machines, idle
            // workers, then busy ones (drained: their progress is kept).
            let mut extra = have.saturating_sub(want);
            for rank in 0..4 {
                for idx in (0..self.instances.len()).rev() {
                    if extra == 0 {
                        break;
                    }
                    let i = &self.instances[idx];
                    if !live(i) {
                        continue;
                    }
                    let r = match i.phase {
                        Phase::Pending { .. } => 0,
                        Phase::Booting { .. } => 1,
                        Phase::Running if i.lease.is_none() => 2,
                        _ => 3,
                    };
                    if r == rank {
                        self.hand_back(idx, true);
                        self.instances[idx].phase = Phase::Gone;
                        extra -= 1;
                    }
                }
            }
        }
        self.instances.retain(|i| i.phase != Phase::Gone);
    }

    /// The instance's shard goes back: kept progress and at once (`drained`), or lost progress
    /// after the lease expires.
    fn hand_back(&mut self, idx: usize, drained: bool) {
        let Some(l) = self.instances[idx].lease.take() else {
            return;
        };
        if drained {
            self.committed += l.progress;
            self.shard_left[l.shard] -= l.progress;
            self.visible.push_back(l.shard);
        } else {
            self.out.redone += l.progress;
            self.expiring.push((self.t + self.visibility_s, l.shard));
        }
    }

    fn interrupt(&mut self, idx: usize) {
        let was_running = self.instances[idx].phase == Phase::Running;
        let notice = self.instances[idx].notice;
        if was_running {
            let last = self.recent.back_mut();
            if notice {
                self.seen.notices += 1;
                self.out.interruptions.0 += 1;
                if let Some(r) = last {
                    r.2 += 1;
                }
            } else {
                self.seen.hard_kills += 1;
                self.out.interruptions.1 += 1;
                if let Some(r) = last {
                    r.3 += 1;
                }
            }
        }
        self.hand_back(idx, notice);
        self.instances[idx].phase = if notice {
            Phase::Draining {
                until: self.t + NOTICE_S,
            }
        } else {
            Phase::Gone
        };
    }

    /// Records a timeline sample (when recording).
    pub fn record(&mut self, desired: (u32, u32)) {
        let sample = Sample {
            t: self.t,
            desired,
            running: (
                self.running(Capacity::Spot),
                self.running(Capacity::OnDemand),
            ),
            items_left: self.items_left(),
        };
        if let Some(tl) = self.timeline.as_mut() {
            tl.push(sample);
        }
    }

    /// One step: bursts, arrivals, interruptions, work, billing, expired leases.
    pub fn advance(&mut self) {
        let (t, dt) = (self.t, STEP_S);
        let drought = self.market.drought(t);
        let hazard = self.s.hazard_per_hour(t) * dt / 3_600.0;
        self.recent.push_back((t, 0.0, 0, 0));
        while self.recent.front().is_some_and(|r| r.0 < t - RECENT_S) {
            self.recent.pop_front();
        }
        // Bursts in this step.
        while let Some(b) = self.market.bursts.get(self.next_burst) {
            if b.at >= t + dt {
                break;
            }
            let (share, id) = (b.share, self.next_burst as u64);
            self.next_burst += 1;
            for idx in 0..self.instances.len() {
                let i = &self.instances[idx];
                let live = matches!(i.phase, Phase::Running | Phase::Booting { .. });
                let draw = unit(self.seed ^ mix(id ^ mix(i.id ^ 0xB057)));
                if i.capacity == Capacity::Spot && live && draw < share {
                    self.interrupt(idx);
                }
            }
        }
        for idx in 0..self.instances.len() {
            let capacity = self.instances[idx].capacity;
            let price = self.prices.per_hour(capacity);
            match self.instances[idx].phase {
                Phase::Pending { ready_at } => {
                    if t >= ready_at && (capacity == Capacity::OnDemand || !drought) {
                        let boot = self.instances[idx].boot_s;
                        self.instances[idx].phase = Phase::Booting { until: t + boot };
                    }
                    continue;
                }
                Phase::Gone => continue,
                Phase::Draining { until } => {
                    if t >= until {
                        self.instances[idx].phase = Phase::Gone;
                    }
                }
                Phase::Booting { until } => {
                    if t >= until {
                        self.instances[idx].phase = Phase::Running;
                    }
                }
                Phase::Running => {}
            }
            // Billed from here on.
            let h = dt / 3_600.0;
            match capacity {
                Capacity::Spot => {
                    self.out.cost.0 += price * h;
                    self.out.hours.0 += h;
                }
                Capacity::OnDemand => {
                    self.out.cost.1 += price * h;
                    self.out.hours.1 += h;
                }
            }
            let phase = self.instances[idx].phase;
            if capacity == Capacity::Spot && matches!(phase, Phase::Running | Phase::Booting { .. })
            {
                if phase == Phase::Running {
                    self.seen.worker_hours += h;
                    if let Some(r) = self.recent.back_mut() {
                        r.1 += h;
                    }
                }
                self.instances[idx].hazard_left -= hazard;
                if self.instances[idx].hazard_left <= 0.0 {
                    self.interrupt(idx);
                    continue;
                }
            }
            if self.instances[idx].phase == Phase::Running {
                self.work(idx, dt);
            }
        }
        self.instances.retain(|i| i.phase != Phase::Gone);
        let now = t + dt;
        let mut k = 0;
        while k < self.expiring.len() {
            if self.expiring[k].0 <= now {
                let (_, shard) = self.expiring.swap_remove(k);
                self.visible.push_back(shard);
            } else {
                k += 1;
            }
        }
        self.t = now;
    }

    fn work(&mut self, idx: usize, mut avail: f64) {
        let speed = self.instances[idx].speed;
        while avail > 1e-9 {
            if self.instances[idx].lease.is_none() {
                let Some(shard) = self.visible.pop_front() else {
                    return;
                };
                self.instances[idx].lease = Some(Lease {
                    shard,
                    setup_left: SHARD_OVERHEAD_S,
                    progress: 0.0,
                });
            }
            let Some(l) = self.instances[idx].lease.as_mut() else {
                return;
            };
            if l.setup_left > 0.0 {
                let used = l.setup_left.min(avail);
                l.setup_left -= used;
                avail -= used;
                continue;
            }
            let left = self.shard_left[l.shard] - l.progress;
            let need = left / speed;
            if need <= avail {
                avail -= need;
                let shard = l.shard;
                self.committed += self.shard_left[shard];
                self.shard_left[shard] = 0.0;
                self.shards_done += 1;
                self.instances[idx].lease = None;
            } else {
                l.progress += avail * speed;
                avail = 0.0;
            }
        }
    }

    /// The run's figures so far.
    pub fn outcome(&self) -> Outcome {
        let mut o = self.out.clone();
        o.finished = self.done().then_some(self.t);
        o
    }

    /// Whether every shard is done.
    pub fn finished(&self) -> bool {
        self.done()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::all;

    #[test]
    fn the_kth_instance_draws_the_same_in_every_run() {
        let a = Draws::new(7, Capacity::Spot, 3, 0.9);
        let b = Draws::new(7, Capacity::Spot, 3, 0.9);
        assert_eq!(a.hazard_budget, b.hazard_budget);
        assert_eq!(a.arrival_s, b.arrival_s);
        let c = Draws::new(7, Capacity::Spot, 4, 0.9);
        assert_ne!(a.hazard_budget, c.hazard_budget);
        let d = Draws::new(8, Capacity::Spot, 3, 0.9);
        assert_ne!(a.hazard_budget, d.hazard_budget);
    }

    #[test]
    fn a_fixed_fleet_finishes_the_work_exactly_once() {
        let mut s = all().remove(4); // g4dn, 1 M items
        s.bursts_per_hour = 0.0;
        s.droughts_per_hour = 0.0;
        s.rate_factor = 0.0;
        let mut w = World::new(&s, 1, 1e6, false);
        while !w.finished() && w.t < 1e5 {
            w.reconcile(0, 4);
            w.advance();
        }
        let o = w.outcome();
        let t = o.finished.expect("finished");
        // 1 M items at ~60/s × 4 workers ≈ 4170 s plus arrival and boot.
        assert!((4_000.0..5_500.0).contains(&t), "{t}");
        assert_eq!(w.items_left(), 0.0);
        assert_eq!(o.redone, 0.0);
        assert_eq!(o.cost.0, 0.0);
        assert!((o.cost.1 - o.hours.1 * 0.526).abs() < 1e-9);
    }

    #[test]
    fn hard_kills_redo_work_and_notices_do_not() {
        for (notice_share, redone) in [(1.0, false), (0.0, true)] {
            let mut s = all().remove(4);
            s.bursts_per_hour = 0.0;
            s.droughts_per_hour = 0.0;
            s.rate_factor = 300.0; // about one per instance-hour
            s.notice_share = notice_share;
            let mut w = World::new(&s, 3, 1e6, false);
            while !w.finished() && w.t < 1e5 {
                w.reconcile(4, 0);
                w.advance();
            }
            let o = w.outcome();
            assert!(o.finished.is_some());
            let (notices, kills) = o.interruptions;
            assert!(notices + kills > 3, "{:?}", o.interruptions);
            assert_eq!(o.redone > 0.0, redone, "{o:?}");
            assert_eq!(w.items_left(), 0.0);
        }
    }

    #[test]
    fn no_spot_arrives_in_a_drought() {
        let mut s = all().remove(4);
        s.bursts_per_hour = 0.0;
        s.droughts_per_hour = 0.0;
        let mut w = World::new(&s, 1, 1e6, false);
        w.market.droughts = vec![(0.0, 3_600.0)];
        while w.t < 3_500.0 {
            w.reconcile(4, 0);
            w.advance();
        }
        assert_eq!(w.running(Capacity::Spot), 0);
        while w.t < 4_200.0 {
            w.reconcile(4, 0);
            w.advance();
        }
        assert_eq!(w.running(Capacity::Spot), 4);
    }
}

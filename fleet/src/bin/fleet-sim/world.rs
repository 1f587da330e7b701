//! The simulated fleet and its lease queue, in steps of simulated time: instances requested,
//! arriving (spot only outside droughts), booting (billed), leasing shards and working them,
//! interrupted (a notice drains: the finished part is kept and the rest handed back at once; a
//! hard kill loses the shard's progress, and the shard waits out its lease), and released.
//!
//! Randomness is seeded per scenario seed and split so that policies see the same market
//! ([`crate::market`]): the bursts and droughts are drawn up front, and the k-th instance of a
//! capacity gets the same arrival delay, boot time, speed, interruption time (a hazard budget
//! spent at the market's rate) and notice-or-not in every policy.

use std::collections::VecDeque;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use spotbatch_fleet::interruption::Exposure;
use spotbatch_fleet::policy::Observation;
use spotbatch_fleet::prices::{Capacity, Prices};
use spotbatch_fleet::rates::WorkerRate;

pub use crate::market::mix;
use crate::market::{normal, unit, Draws, Market};
use crate::scenario::Scenario;

/// The spike test's window, seconds.
const RECENT_S: f64 = 1_800.0;
/// Relative noise of a worker's reported items/s.
const RATE_NOISE: f64 = 0.05;

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
    /// Shards finished (when, items): what a heartbeat's rate counts.
    finished: VecDeque<(f64, f64)>,
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
    /// Shards dead-lettered (their leases expired `max_attempts` times): the job failed.
    pub dead_lettered: u64,
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
    /// Expired leases per shard (failed attempts), and the shards dead-lettered.
    failures: Vec<u32>,
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
        let (per, visibility_s) = s.shard_plan();
        let per = per.max(1);
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
            visibility_s,
            shard_items: per as f64,
            visible: (0..shard_left.len()).collect(),
            failures: vec![0; shard_left.len()],
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

    /// Every shard done or dead-lettered.
    fn done(&self) -> bool {
        self.shards_done + self.out.dead_lettered as usize == self.shard_left.len()
    }

    /// A lease that will expire: a failed attempt, and the shard visible again afterwards.
    fn expire(&mut self, shard: usize) {
        self.failures[shard] += 1;
        self.expiring.push((self.t + self.visibility_s, shard));
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
            let rate = match self.s.reported_rate_window_s {
                // As a worker's heartbeat reports it: the items of the shards it finished in the
                // last window, over the window.
                Some(window) => {
                    i.finished
                        .iter()
                        .filter(|f| f.0 > self.t - window)
                        .map(|f| f.1)
                        .sum::<f64>()
                        / window
                }
                None => i.speed * (1.0 + RATE_NOISE * normal(&mut self.obs_rng)).max(0.0),
            };
            workers.push(WorkerRate {
                capacity: i.capacity,
                device: self.s.instance_type.to_string(),
                items_per_second: rate,
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
                let d = Draws::new(self.seed, capacity, k, self.s);
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
                    finished: VecDeque::new(),
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
            self.expire(l.shard);
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
        // A drain that finishes its shard keeps the lease until the shard is done or the notice
        // runs out; otherwise the finished part is kept and the rest handed back at once.
        if !(notice && self.s.drain_finishes_shard) {
            self.hand_back(idx, notice);
        }
        if !notice && was_running {
            // The shards it held unstarted wait out their leases too.
            for _ in 0..self.s.held_unstarted {
                let Some(shard) = self.visible.pop_front() else {
                    break;
                };
                self.expire(shard);
            }
        }
        self.instances[idx].phase = if notice {
            Phase::Draining {
                until: self.t + self.s.timing.notice_s,
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
        let (t, dt) = (self.t, self.s.step_s);
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
                        // The machine goes: the rows finished so far are kept, the rest released.
                        self.hand_back(idx, true);
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
            match self.instances[idx].phase {
                Phase::Running => self.work(idx, dt, true),
                // Draining: the shard in work only, no new lease.
                Phase::Draining { .. } => self.work(idx, dt, false),
                _ => {}
            }
        }
        self.instances.retain(|i| i.phase != Phase::Gone);
        let now = t + dt;
        let mut k = 0;
        while k < self.expiring.len() {
            if self.expiring[k].0 <= now {
                let (_, shard) = self.expiring.swap_remove(k);
                let max = self.s.max_attempts;
                if max > 0 && self.failures[shard] >= max {
                    self.out.dead_lettered += 1;
                } else {
                    self.visible.push_back(shard);
                }
            } else {
                k += 1;
            }
        }
        self.t = now;
    }

    fn work(&mut self, idx: usize, dt: f64, lease_more: bool) {
        let mut avail = dt;
        let speed = self.instances[idx].speed;
        while avail > 1e-9 {
            if self.instances[idx].lease.is_none() {
                if !lease_more {
                    return;
                }
                let Some(shard) = self.visible.pop_front() else {
                    return;
                };
                self.instances[idx].lease = Some(Lease {
                    shard,
                    setup_left: self.s.shard_overhead_s,
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
                let items = self.shard_left[shard];
                self.committed += items;
                self.shard_left[shard] = 0.0;
                self.shards_done += 1;
                let i = &mut self.instances[idx];
                i.lease = None;
                if self.s.reported_rate_window_s.is_some() {
                    i.finished.push_back((self.t + dt - avail, items));
                    while i.finished.front().is_some_and(|f| f.0 < self.t - 3_600.0) {
                        i.finished.pop_front();
                    }
                }
            } else {
                l.progress += avail * speed;
                avail = 0.0;
            }
        }
    }

    /// The run's figures so far.
    pub fn outcome(&self) -> Outcome {
        let mut o = self.out.clone();
        o.finished = (self.done() && o.dead_lettered == 0).then_some(self.t);
        o
    }

    /// Whether every shard is done.
    pub fn finished(&self) -> bool {
        self.done()
    }
}

#[cfg(test)]
mod tests;

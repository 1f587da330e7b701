//! Fleet sizing at the coordinator: at most once a heartbeat interval, every running
//! job is put to `spotbatch_fleet::policy::decide` with what the coordinator knows — the items
//! and shards left (done markers, dead letters), the live workers holding its shards by capacity
//! and their rates (heartbeats), the spot interruptions seen (notices reported in heartbeats, and
//! hard kills: spot workers gone silent without a goodbye) and the prices of `--instance-type`.
//!
//! A job without a deadline is sized on queue depth (one spot worker per 20 shards left, as the
//! KEDA queue scalers do); a job with one by the deadline-aware rule. The fleet wants the sum over
//! running jobs (each job's plan counts the workers holding its shards, and idle workers for
//! every job), spot capped at `--max-spot-workers`. Exported as
//! `spotbatch_desired_workers{capacity}` (what KEDA's Prometheus scaler follows, `deploy/keda/`),
//! `spotbatch_running_workers{capacity}`, per job `spotbatch_job_deadline_seconds`,
//! `spotbatch_projected_finish_seconds`, `spotbatch_deadline_miss_risk` and
//! `spotbatch_suggested_shard_size`, and in `status` ([`FleetStatus`]).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant, SystemTime};

use spotbatch_fleet::interruption::is_weekend;
use spotbatch_fleet::policy::{decide, Decision, Mode, Observation, PolicyConfig, PolicyState};
use spotbatch_fleet::shard::{suggest, ShardBound, ShardInputs, ShardLimits};
use spotbatch_fleet::{Capacity, Exposure, InterruptionPrior, Posterior, Prices, WorkerRate};
use spotbatch_proto::api::{DeadShard, FleetStatus};

use super::{CoordinatorService, JobRuntime};

/// The recent window of the interruption spike test.
const RECENT: Duration = Duration::from_secs(30 * 60);

/// How the coordinator sizes the fleet.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetConfig {
    /// Most spot workers (the spot Deployment's `maxReplicaCount`).
    pub max_spot_workers: u32,
    /// On-demand workers a deadline job may add when its manifest does not say
    /// (`job.max_on_demand_workers`).
    pub max_on_demand_workers: u32,
    /// The workers' instance type: the interruption prior and the prices (built-in table).
    pub instance_type: Option<String>,
    /// The region, for the interruption prior.
    pub region: Option<String>,
}

impl Default for FleetConfig {
    fn default() -> Self {
        Self {
            max_spot_workers: 100,
            max_on_demand_workers: 10,
            instance_type: None,
            region: None,
        }
    }
}

/// `spot` or `on_demand` as workers report it (`--capacity`); anything else counts as spot.
pub(super) fn capacity_of(label: &str) -> Capacity {
    match label.trim().to_ascii_lowercase().replace('-', "_").as_str() {
        "on_demand" | "ondemand" => Capacity::OnDemand,
        _ => Capacity::Spot,
    }
}

/// What the policy remembers, and the fleet's interruption history.
#[derive(Debug, Default)]
pub(super) struct FleetState {
    last: Option<Instant>,
    /// Spot worker-hours and interruptions since the coordinator started.
    seen: Exposure,
    /// The same per evaluation, over [`RECENT`].
    recent: VecDeque<(Instant, Exposure)>,
    jobs: HashMap<String, JobFleet>,
    /// The fleet's desired spot and on-demand workers at the last evaluation.
    desired: (u32, u32),
}

#[derive(Debug, Default)]
struct JobFleet {
    policy: PolicyState,
    status: Option<FleetStatus>,
}

/// What one evaluation needs of a job.
struct JobView {
    id: String,
    running: bool,
    started: f64,
    deadline: Option<f64>,
    max_on_demand: Option<u32>,
    items_left: u64,
    shards_left: u64,
    items_per_shard: f64,
    shard_size: String,
}

fn unix_s(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn mode_label(m: Mode) -> &'static str {
    match m {
        Mode::Done => "done",
        Mode::Depth => "depth",
        Mode::Deadline => "deadline",
        Mode::Late => "late",
    }
}

fn trigger_labels(d: &Decision) -> Vec<String> {
    let t = d.triggers;
    [
        (t.deadline_risk, "deadline_risk"),
        (t.spot_shortfall, "spot_shortfall"),
        (t.interruption_spike, "interruption_spike"),
        (t.rescue_guard, "rescue_guard"),
        (t.no_rate, "no_rate"),
    ]
    .into_iter()
    .filter(|(on, _)| *on)
    .map(|(_, l)| l.to_string())
    .collect()
}

/// A job as the policy sees it: what is left (dead-lettered shards are not), its deadline.
fn view(job: &JobRuntime, dead: &[DeadShard], running: bool) -> JobView {
    let r = &job.record;
    let dead: Vec<&str> = dead
        .iter()
        .map(|d| d.shard.as_str())
        .filter(|s| !job.done.contains_key(*s))
        .collect();
    let dead_items: u64 = r
        .shards
        .iter()
        .filter(|(s, _)| dead.contains(&s.as_str()))
        .map(|(_, n)| n)
        .sum();
    let shards_left =
        (r.shards.len() as u64).saturating_sub(job.done.len() as u64 + dead.len() as u64);
    let done = job.items_done();
    let counted = if r.items_total > 0 {
        r.items_total.saturating_sub(done + dead_items)
    } else {
        // Rows of JSONL/CSV are not counted before they are read: the done shards' mean.
        let per = if job.done.is_empty() {
            1.0
        } else {
            done as f64 / job.done.len() as f64
        };
        (shards_left as f64 * per).ceil() as u64
    };
    // A shard left is at least an item (a count of 0 would stop the fleet with work queued).
    let items_left = counted.max(shards_left);
    JobView {
        id: r.job_id.clone(),
        running,
        started: r.submitted_unix_ms as f64 / 1_000.0,
        deadline: r.deadline_unix_s,
        max_on_demand: r.max_on_demand_workers,
        items_left,
        shards_left,
        items_per_shard: if r.items_total > 0 && !r.shards.is_empty() {
            r.items_total as f64 / r.shards.len() as f64
        } else {
            0.0
        },
        shard_size: r.shard_size.clone().unwrap_or_default(),
    }
}

/// Live workers by job: how many of each capacity, and their rates.
#[derive(Default)]
struct Serving {
    spot: u32,
    on_demand: u32,
    rates: Vec<WorkerRate>,
}

impl CoordinatorService {
    /// Evaluates the fleet when a heartbeat interval has passed since the last evaluation.
    pub(super) async fn maybe_evaluate_fleet(&self) {
        let due = self.fleet.lock().is_ok_and(|f| {
            f.last
                .is_none_or(|t| t.elapsed() >= self.config.heartbeat_interval)
        });
        if due {
            self.evaluate_fleet().await;
        }
    }

    /// Puts every running job to the policy now and exports the result (see the module docs).
    pub(super) async fn evaluate_fleet(&self) {
        let now = Instant::now();
        let unix = unix_s(SystemTime::now());
        let any_running = {
            let jobs = self.jobs.lock().await;
            jobs.values()
                .any(|j| !j.record.cancelled && j.done.len() < j.record.shards.len())
        };
        let dead = if any_running {
            self.dead_letters().await
        } else {
            HashMap::new()
        };
        let views: Vec<JobView> = {
            let jobs = self.jobs.lock().await;
            jobs.values()
                .map(|j| {
                    let d = dead.get(&j.record.job_id).map_or(&[][..], Vec::as_slice);
                    view(j, d, self.job_state(j, d.len()) == "running")
                })
                .collect()
        };
        let running_ids: Vec<&str> = views
            .iter()
            .filter(|v| v.running)
            .map(|v| v.id.as_str())
            .collect();

        // Workers: who serves which job, how fast; interruptions not counted yet.
        let mut serving: BTreeMap<String, Serving> = BTreeMap::new();
        let (mut spot_alive, mut od_alive) = (0u32, 0u32);
        let mut events = Exposure::default();
        {
            let Ok(mut workers) = self.workers.lock() else {
                return;
            };
            for e in workers.values_mut() {
                let alive = self.alive(e);
                if e.capacity_type == Capacity::Spot && !e.counted {
                    if e.interrupted {
                        events.notices += 1;
                        e.counted = true;
                    } else if !alive && !e.exited {
                        events.hard_kills += 1;
                        e.counted = true;
                    }
                }
                if !alive {
                    continue;
                }
                match e.capacity_type {
                    Capacity::Spot => spot_alive += 1,
                    Capacity::OnDemand => od_alive += 1,
                }
                if e.interrupted {
                    // Draining: it is leaving, not serving.
                    continue;
                }
                let mut held: Vec<&str> = e.shards.iter().map(|(j, _)| j.as_str()).collect();
                held.sort_unstable();
                held.dedup();
                // An idle worker leases whatever comes next: it serves every running job.
                let serves = if held.is_empty() {
                    running_ids.clone()
                } else {
                    held
                };
                for job in serves {
                    let s = serving.entry(job.to_string()).or_default();
                    match e.capacity_type {
                        Capacity::Spot => s.spot += 1,
                        Capacity::OnDemand => s.on_demand += 1,
                    }
                    s.rates.push(WorkerRate {
                        capacity: e.capacity_type,
                        device: e.device.clone(),
                        items_per_second: e.rate,
                        busy: !e.shards.is_empty(),
                    });
                }
            }
        }
        if events.notices > 0 {
            metrics::counter!("spotbatch_spot_interruptions_total", "kind" => "notice")
                .increment(events.notices);
        }
        if events.hard_kills > 0 {
            metrics::counter!("spotbatch_spot_interruptions_total", "kind" => "hard_kill")
                .increment(events.hard_kills);
        }

        let fc = &self.config.fleet;
        let (prices, priced) = match fc.instance_type.as_deref().and_then(Prices::of) {
            Some(p) => (p, true),
            None => (
                Prices {
                    spot_per_hour: 0.0,
                    on_demand_per_hour: 0.0,
                },
                false,
            ),
        };
        let prior = InterruptionPrior::from_table(
            fc.instance_type.as_deref(),
            fc.region.as_deref(),
            is_weekend(unix),
        );
        let Ok(mut fleet) = self.fleet.lock() else {
            return;
        };
        // Spot exposure since the last evaluation (capped: a coordinator that was away does not
        // credit the whole gap to the workers alive now).
        let dt = fleet.last.map_or(0.0, |t| {
            now.duration_since(t)
                .min(self.config.heartbeat_interval * 5)
                .as_secs_f64()
        });
        fleet.last = Some(now);
        let step = Exposure {
            worker_hours: spot_alive as f64 * dt / 3_600.0,
            ..events
        };
        fleet.seen.worker_hours += step.worker_hours;
        fleet.seen.notices += step.notices;
        fleet.seen.hard_kills += step.hard_kills;
        fleet.recent.push_back((now, step));
        while fleet
            .recent
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > RECENT)
        {
            fleet.recent.pop_front();
        }
        let recent = fleet
            .recent
            .iter()
            .fold(Exposure::default(), |a, (_, e)| Exposure {
                worker_hours: a.worker_hours + e.worker_hours,
                notices: a.notices + e.notices,
                hard_kills: a.hard_kills + e.hard_kills,
            });
        let seen = fleet.seen;
        let posterior = Posterior::new(&prior, &seen);
        metrics::gauge!("spotbatch_spot_interruptions_per_hour").set(posterior.per_hour());

        let (mut want_spot, mut want_od) = (0u32, 0u32);
        for v in &views {
            let entry = fleet.jobs.entry(v.id.clone()).or_default();
            if !v.running {
                // Finished, cancelled or failed: no workers; a deadline job's last projection
                // is when it stopped.
                if let Some(s) = entry.status.as_mut().filter(|s| s.mode != "done") {
                    s.mode = "done".into();
                    s.desired_spot = 0;
                    s.desired_on_demand = 0;
                    s.running_spot = 0;
                    s.running_on_demand = 0;
                    s.triggers.clear();
                    s.projected_finish_unix_s = unix;
                    metrics::gauge!("spotbatch_projected_finish_seconds", "job" => v.id.clone())
                        .set(unix);
                    if s.deadline_unix_s >= 0.0 {
                        s.miss_risk = if unix <= s.deadline_unix_s { 0.0 } else { 1.0 };
                        metrics::gauge!("spotbatch_deadline_miss_risk", "job" => v.id.clone())
                            .set(s.miss_risk);
                    }
                }
                continue;
            }
            let s = serving.remove(&v.id).unwrap_or_default();
            let mut config = PolicyConfig::new(
                fc.max_spot_workers,
                v.max_on_demand.unwrap_or(fc.max_on_demand_workers),
            );
            config.prior = prior;
            let obs = Observation {
                now: unix,
                started: v.started,
                deadline: v.deadline,
                items_left: v.items_left,
                shards_left: v.shards_left,
                items_per_shard: v.items_per_shard,
                running_spot: s.spot,
                running_on_demand: s.on_demand,
                workers: s.rates,
                seen,
                recent,
                prices,
            };
            let d = decide(&config, &obs, &mut entry.policy);
            want_spot = want_spot.saturating_add(d.spot);
            want_od = want_od.saturating_add(d.on_demand);
            let spot_rate = d.estimate.planned_rates.map(|(s, _)| s);
            let suggestion = suggest(
                &ShardInputs {
                    seconds_per_item: spot_rate.filter(|r| *r > 0.0).map(|r| 1.0 / r),
                    shard_overhead_s: spotbatch_plan::SHARD_OVERHEAD_S,
                    hard_kills_per_hour: posterior.hard_kills_per_hour(),
                    items_total: Some(v.items_left),
                    workers: Some((d.spot + d.on_demand).max(1)),
                },
                &ShardLimits::default(),
            );
            let suggested = if suggestion.bound == ShardBound::Unmeasured {
                0
            } else {
                suggestion.items
            };
            let status = FleetStatus {
                mode: mode_label(d.mode).into(),
                deadline_unix_s: v.deadline.unwrap_or(-1.0),
                projected_finish_unix_s: d.projected_finish.unwrap_or(-1.0),
                miss_risk: d.miss_risk.unwrap_or(-1.0),
                desired_spot: d.spot,
                desired_on_demand: d.on_demand,
                running_spot: obs.running_spot,
                running_on_demand: obs.running_on_demand,
                triggers: trigger_labels(&d),
                interruptions_per_hour: d.estimate.interruptions_per_hour,
                spot_items_per_second: spot_rate.unwrap_or(0.0),
                on_demand_items_per_second: d.estimate.planned_rates.map_or(0.0, |(_, o)| o),
                expected_cost: d.expected_cost.filter(|_| priced).unwrap_or(-1.0),
                shard_size: v.shard_size.clone(),
                suggested_shard_size: suggested,
                max_on_demand_workers: config.max_on_demand_workers,
            };
            let job = v.id.clone();
            if let Some(deadline) = v.deadline {
                metrics::gauge!("spotbatch_job_deadline_seconds", "job" => job.clone())
                    .set(deadline);
            }
            if let Some(f) = d.projected_finish {
                metrics::gauge!("spotbatch_projected_finish_seconds", "job" => job.clone()).set(f);
            }
            if let Some(r) = d.miss_risk {
                metrics::gauge!("spotbatch_deadline_miss_risk", "job" => job.clone()).set(r);
            }
            if suggested > 0 {
                metrics::gauge!("spotbatch_suggested_shard_size", "job" => job.clone())
                    .set(suggested as f64);
            }
            if entry.status.as_ref().is_none_or(|p| {
                (p.desired_spot, p.desired_on_demand, &p.mode)
                    != (d.spot, d.on_demand, &status.mode)
            }) {
                tracing::info!(job = %job, mode = %status.mode, spot = d.spot, on_demand = d.on_demand,
                    running_spot = obs.running_spot, running_on_demand = obs.running_on_demand,
                    projected_finish = ?d.projected_finish, miss_risk = ?d.miss_risk,
                    triggers = ?status.triggers, "fleet decision");
            }
            entry.status = Some(status);
        }
        let want_spot = want_spot.min(fc.max_spot_workers);
        metrics::gauge!("spotbatch_desired_workers", "capacity" => Capacity::Spot.label())
            .set(want_spot as f64);
        metrics::gauge!("spotbatch_desired_workers", "capacity" => Capacity::OnDemand.label())
            .set(want_od as f64);
        metrics::gauge!("spotbatch_running_workers", "capacity" => Capacity::Spot.label())
            .set(spot_alive as f64);
        metrics::gauge!("spotbatch_running_workers", "capacity" => Capacity::OnDemand.label())
            .set(od_alive as f64);
        fleet.desired = (want_spot, want_od);
    }

    /// What `queue.shard_size = "auto"` is chosen from at submission: the median rate of the
    /// live workers that are busy (any job's), and how many workers are alive.
    pub(super) fn shard_hints(&self) -> spotbatch_plan::ShardHints {
        let Ok(w) = self.workers.lock() else {
            return spotbatch_plan::ShardHints::default();
        };
        let alive: Vec<&super::WorkerEntry> = w.values().filter(|e| self.alive(e)).collect();
        let mut rates: Vec<f64> = alive
            .iter()
            .filter(|e| !e.shards.is_empty() && e.rate.is_finite() && e.rate > 0.0)
            .map(|e| e.rate)
            .collect();
        rates.sort_by(f64::total_cmp);
        let median = match rates.len() {
            0 => None,
            n if n % 2 == 1 => Some(rates[n / 2]),
            n => Some((rates[n / 2 - 1] + rates[n / 2]) / 2.0),
        };
        spotbatch_plan::ShardHints {
            seconds_per_item: median.map(|r| 1.0 / r),
            workers: u32::try_from(alive.len()).ok().filter(|n| *n > 0),
        }
    }

    /// The job's fleet at the last evaluation.
    pub(super) fn fleet_status(&self, job: &str) -> Option<FleetStatus> {
        self.fleet
            .lock()
            .ok()
            .and_then(|f| f.jobs.get(job).and_then(|j| j.status.clone()))
    }

    /// The fleet's desired workers (spot, on-demand) and what it has seen of spot interruptions.
    #[cfg(test)]
    pub(super) fn fleet_totals(&self) -> ((u32, u32), Exposure) {
        self.fleet
            .lock()
            .map(|f| (f.desired, f.seen))
            .unwrap_or_default()
    }
}

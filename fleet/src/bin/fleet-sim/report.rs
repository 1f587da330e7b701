//! Adds the runs up per scenario and policy, prints the tables (Markdown), and checks the
//! issue's targets on the same seeds.

use std::fmt::Write as _;

use crate::controllers::Kind;
use crate::scenario::Scenario;
use crate::world::Outcome;

/// Every run of one scenario: `runs[policy][seed]`.
pub struct ScenarioRuns {
    pub scenario: Scenario,
    pub runs: Vec<Vec<Outcome>>,
}

impl ScenarioRuns {
    fn hit(&self, kind: Kind, seed: usize) -> bool {
        let deadline = self.scenario.deadline_s();
        self.runs[kind as usize][seed]
            .finished
            .is_some_and(|f| f <= deadline)
    }

    fn cost(&self, kind: Kind, seed: usize) -> f64 {
        let c = self.runs[kind as usize][seed].cost;
        c.0 + c.1
    }
}

/// Sums over some runs.
#[derive(Default)]
struct Totals {
    runs: usize,
    hits: usize,
    cost: f64,
    items: f64,
    redone: f64,
    hours: (f64, f64),
    finish_h: f64,
    finished: usize,
}

impl Totals {
    fn add(&mut self, r: &ScenarioRuns, kind: Kind, seed: usize) {
        let o = &r.runs[kind as usize][seed];
        self.runs += 1;
        self.hits += r.hit(kind, seed) as usize;
        self.cost += o.cost.0 + o.cost.1;
        self.items += r.scenario.items as f64;
        self.redone += o.redone;
        self.hours.0 += o.hours.0;
        self.hours.1 += o.hours.1;
        if let Some(f) = o.finished {
            self.finish_h += f / 3_600.0;
            self.finished += 1;
        }
    }

    fn row(&self, name: &str, policy: &str, baseline: Option<f64>) -> String {
        let n = self.runs.max(1) as f64;
        let vs = baseline.map_or("—".into(), |b| format!("{:.1} %", 100.0 * self.cost / b));
        format!(
            "| {name} | {policy} | {:.1} % | ${:.2} | ${:.4} | {vs} | {:.3} % | {:.1} / {:.1} | {} |",
            100.0 * self.hits as f64 / n,
            self.cost / n,
            1_000.0 * self.cost / self.items.max(1.0),
            100.0 * self.redone / self.items.max(1.0),
            self.hours.0 / n,
            self.hours.1 / n,
            if self.finished > 0 {
                format!("{:.2} h", self.finish_h / self.finished as f64)
            } else {
                "—".into()
            },
        )
    }
}

const HEADER: &str = "| scenario | policy | deadline hit | cost per job | per 1k items | vs all on-demand | work redone | worker-h spot / on-demand | mean finish |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- |";

/// The per-scenario table and the all-scenario summary.
pub fn tables(all: &[ScenarioRuns]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{HEADER}");
    let mut overall: Vec<Totals> = Kind::ALL.iter().map(|_| Totals::default()).collect();
    for r in all {
        let seeds = r.runs[0].len();
        let mut per: Vec<Totals> = Kind::ALL.iter().map(|_| Totals::default()).collect();
        for seed in 0..seeds {
            for kind in Kind::ALL {
                per[kind as usize].add(r, kind, seed);
                overall[kind as usize].add(r, kind, seed);
            }
        }
        let base = per[Kind::AllOnDemand as usize].cost;
        for kind in Kind::ALL {
            let _ = writeln!(
                out,
                "{}",
                per[kind as usize].row(r.scenario.name, kind.name(), Some(base))
            );
        }
    }
    let _ = writeln!(out, "\nAll scenarios together:\n\n{HEADER}");
    let base = overall[Kind::AllOnDemand as usize].cost;
    for kind in Kind::ALL {
        let _ = writeln!(
            out,
            "{}",
            overall[kind as usize].row("all", kind.name(), Some(base))
        );
    }
    out
}

/// One line per scenario: each policy's deadline hit rate and cost against all on-demand.
pub fn compact(all: &[ScenarioRuns]) -> String {
    let mut out = String::from("| scenario |");
    for kind in Kind::ALL {
        let _ = write!(out, " {} |", kind.name());
    }
    out.push_str("\n| --- |");
    for _ in Kind::ALL {
        out.push_str(" --- |");
    }
    out.push('\n');
    for r in all {
        let seeds = r.runs[0].len();
        let cost = |kind: Kind| (0..seeds).map(|seed| r.cost(kind, seed)).sum::<f64>();
        let base = cost(Kind::AllOnDemand);
        let _ = write!(out, "| {} |", r.scenario.name);
        for kind in Kind::ALL {
            let hits = (0..seeds).filter(|&seed| r.hit(kind, seed)).count();
            let _ = write!(
                out,
                " {:.0} % on time, {:.1} % of the cost |",
                100.0 * hits as f64 / seeds.max(1) as f64,
                100.0 * cost(kind) / base.max(1e-9)
            );
        }
        out.push('\n');
    }
    out
}

/// The deadline-aware policy against `other` on the runs where `other` made the deadline.
struct Versus {
    runs: usize,
    cheaper: usize,
    ours: f64,
    theirs: f64,
    /// (scenario, cheaper, runs) where it was not cheaper every time.
    misses: Vec<(&'static str, usize, usize)>,
    /// On the runs where it was not cheaper: dollars more in all, dollars it spent on
    /// on-demand, runs with any on-demand.
    extra: f64,
    extra_on_demand: f64,
    with_on_demand: usize,
}

fn versus(all: &[ScenarioRuns], other: Kind) -> Versus {
    let mut v = Versus {
        runs: 0,
        cheaper: 0,
        ours: 0.0,
        theirs: 0.0,
        misses: Vec::new(),
        extra: 0.0,
        extra_on_demand: 0.0,
        with_on_demand: 0,
    };
    for r in all {
        let (mut runs, mut cheaper) = (0, 0);
        for seed in (0..r.runs[0].len()).filter(|&seed| r.hit(other, seed)) {
            let (a, b) = (r.cost(Kind::DeadlineAware, seed), r.cost(other, seed));
            runs += 1;
            cheaper += (a < b) as usize;
            if a >= b {
                let od = r.runs[Kind::DeadlineAware as usize][seed].cost.1;
                v.extra += a - b;
                v.extra_on_demand += od;
                v.with_on_demand += (od > 0.0) as usize;
            }
            v.ours += a;
            v.theirs += b;
        }
        v.runs += runs;
        v.cheaper += cheaper;
        if cheaper < runs {
            v.misses.push((r.scenario.name, cheaper, runs));
        }
    }
    v
}

/// The targets, measured: returns the report and whether every target was met.
pub fn targets(all: &[ScenarioRuns]) -> (String, bool) {
    let mut out = String::new();
    let (mut od_hits, mut da_hits, mut da_cost, mut od_cost) = (0usize, 0usize, 0.0, 0.0);
    let mut per_scenario = Vec::new();
    for r in all {
        let (mut s_da, mut s_od) = (0.0, 0.0);
        for seed in (0..r.runs[0].len()).filter(|&seed| r.hit(Kind::AllOnDemand, seed)) {
            od_hits += 1;
            da_hits += r.hit(Kind::DeadlineAware, seed) as usize;
            s_da += r.cost(Kind::DeadlineAware, seed);
            s_od += r.cost(Kind::AllOnDemand, seed);
        }
        da_cost += s_da;
        od_cost += s_od;
        per_scenario.push((r.scenario.name, s_da / s_od.max(1e-9)));
    }
    let hit_rate = da_hits as f64 / od_hits.max(1) as f64;
    let cost_ratio = da_cost / od_cost.max(1e-9);
    let mut ok = true;
    let mut line = |met: bool, text: String| {
        ok &= met;
        let _ = writeln!(out, "- [{}] {text}", if met { "met" } else { "NOT met" });
    };
    line(
        hit_rate >= 0.99,
        format!(
            "deadline hit rate ≥ 99 % where all-on-demand makes it: {:.2} % ({da_hits} of {od_hits} runs)",
            100.0 * hit_rate
        ),
    );
    line(
        cost_ratio <= 0.45,
        format!(
            "cost ≤ 45 % of all-on-demand on those runs: {:.1} % overall; by scenario: {}",
            100.0 * cost_ratio,
            per_scenario
                .iter()
                .map(|(n, r)| format!("{n} {:.1} %", 100.0 * r))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    );
    for other in [Kind::DepthSpot, Kind::DepthDeployed] {
        let v = versus(all, other);
        line(
            v.cheaper == v.runs,
            format!(
                "cheaper than {} whenever it makes the deadline: in {} of {} runs ({:.1} %), {:.1} % of its cost on them together{}",
                other.name(),
                v.cheaper,
                v.runs,
                100.0 * v.cheaper as f64 / v.runs.max(1) as f64,
                100.0 * v.ours / v.theirs.max(1e-9),
                if v.misses.is_empty() {
                    String::new()
                } else {
                    format!(
                        "; not always in {}. On the {} runs where it was not cheaper it spent ${:.0} more in all, and ${:.0} on on-demand workers (in {} of them)",
                        v.misses
                            .iter()
                            .map(|(n, c, r)| format!("{n} ({c} of {r})"))
                            .collect::<Vec<_>>()
                            .join(", "),
                        v.runs - v.cheaper,
                        v.extra,
                        v.extra_on_demand,
                        v.with_on_demand
                    )
                }
            ),
        );
    }
    let mut h100 = Vec::new();
    for r in all
        .iter()
        .filter(|r| r.scenario.instance_type.starts_with("p5"))
    {
        let items = r.scenario.items as f64;
        let mut each: Vec<f64> = r.runs[Kind::DeadlineAware as usize]
            .iter()
            .map(|o| o.redone / items)
            .collect();
        each.sort_by(f64::total_cmp);
        let mean = each.iter().sum::<f64>() / each.len().max(1) as f64;
        let p95 = each.get(each.len() * 95 / 100).copied().unwrap_or(0.0);
        let kills: u64 = r.runs[Kind::DeadlineAware as usize]
            .iter()
            .map(|o| o.interruptions.1)
            .sum();
        h100.push((r.scenario.name, mean, p95, kills, each.len()));
    }
    let worst = h100.iter().map(|h| h.1).fold(0.0, f64::max);
    line(
        worst <= 0.01,
        format!(
            "work redone ≤ 1 % at the H100 rate with shard_size = \"auto\" (mean over runs): {}",
            h100.iter()
                .map(|(n, mean, p95, kills, runs)| format!(
                    "{n} {:.3} % (95th percentile of runs {:.3} %, {kills} hard kills in {runs} runs)",
                    100.0 * mean,
                    100.0 * p95
                ))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    );
    (out, ok)
}

/// The plan-time shard sizes.
pub fn shard_plans(scenarios: &[Scenario]) -> String {
    let mut out = String::from(
        "| scenario | table rate /h | items per shard | shard work | visibility timeout | bound | expected redone + overhead |\n| --- | --- | --- | --- | --- | --- | --- |\n",
    );
    for s in scenarios {
        let p = s.auto_shards();
        let _ = writeln!(
            out,
            "| {} | {:.2} % | {} | {:.0} s | {} s | {:?} | {:.2} % + {:.2} % |",
            s.name,
            100.0 * s.prior().per_hour,
            p.items,
            p.shard_seconds,
            p.visibility_timeout_s,
            p.bound,
            100.0 * p.redone_fraction,
            100.0 * p.overhead_fraction
        );
    }
    out
}

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

/// The targets, measured: returns the report and whether every target was met.
pub fn targets(all: &[ScenarioRuns]) -> (String, bool) {
    let mut out = String::new();
    let (mut od_hits, mut da_hits, mut da_cost, mut od_cost) = (0usize, 0usize, 0.0, 0.0);
    let (mut depth_hits, mut cheaper, mut da_vs, mut depth_vs) = (0usize, 0usize, 0.0, 0.0);
    let mut per_scenario = Vec::new();
    for r in all {
        let (mut s_da, mut s_od) = (0.0, 0.0);
        for seed in 0..r.runs[0].len() {
            if r.hit(Kind::AllOnDemand, seed) {
                od_hits += 1;
                da_hits += r.hit(Kind::DeadlineAware, seed) as usize;
                da_cost += r.cost(Kind::DeadlineAware, seed);
                od_cost += r.cost(Kind::AllOnDemand, seed);
                s_da += r.cost(Kind::DeadlineAware, seed);
                s_od += r.cost(Kind::AllOnDemand, seed);
            }
            if r.hit(Kind::DepthSpot, seed) {
                depth_hits += 1;
                let (a, b) = (
                    r.cost(Kind::DeadlineAware, seed),
                    r.cost(Kind::DepthSpot, seed),
                );
                cheaper += (a < b) as usize;
                da_vs += a;
                depth_vs += b;
            }
        }
        per_scenario.push((r.scenario.name, s_da / s_od.max(1e-9)));
    }
    let hit_rate = da_hits as f64 / od_hits.max(1) as f64;
    let cost_ratio = da_cost / od_cost.max(1e-9);
    let cheaper_share = cheaper as f64 / depth_hits.max(1) as f64;
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
    line(
        cheaper == depth_hits,
        format!(
            "cheaper than depth-scaled spot whenever it makes the deadline: in {cheaper} of {depth_hits} runs ({:.1} %); together {:.1} % of its cost",
            100.0 * cheaper_share,
            100.0 * da_vs / depth_vs.max(1e-9)
        ),
    );
    let mut h100 = Vec::new();
    for r in all
        .iter()
        .filter(|r| r.scenario.instance_type.starts_with("p5"))
    {
        let (mut redone, mut items) = (0.0, 0.0);
        for o in &r.runs[Kind::DeadlineAware as usize] {
            redone += o.redone;
            items += r.scenario.items as f64;
        }
        h100.push((r.scenario.name, redone / items));
    }
    let worst = h100.iter().map(|h| h.1).fold(0.0, f64::max);
    line(
        worst <= 0.01,
        format!(
            "work redone ≤ 1 % at the H100 rate with shard_size = \"auto\": {}",
            h100.iter()
                .map(|(n, f)| format!("{n} {:.3} %", 100.0 * f))
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

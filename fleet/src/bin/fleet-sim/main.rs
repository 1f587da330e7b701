//! fleet-sim: the fleet simulation behind `make bench-fleet`. Runs every scenario on the same
//! seeds under each policy (all on-demand, a fixed spot fleet, spot scaled on queue depth as
//! KEDA does — as deployed and tuned to the job — and the deadline-aware policy), prints the
//! tables and the targets, and writes a plot of one job's fleet over time. `--trace SEED` prints
//! the deadline-aware decisions of one seed minute by minute instead (`--trace-every S`: every S
//! simulated seconds). `--scenario-file PATH`
//! simulates one scenario from a file ([`real`]: the one `benches/fleet_real.py` ran for real)
//! under the deadline-aware policy and prints its finish times and work redone.
//!
//! ```text
//! fleet-sim [--seeds N] [--svg PATH] [--only NAME] [--trace SEED [--trace-every S]] [--scenario-file PATH]
//! ```

mod controllers;
mod market;
mod real;
mod report;
mod scenario;
mod svg;
mod world;

use std::process::ExitCode;

use controllers::{Controller, Kind};
use report::ScenarioRuns;
use scenario::Scenario;
use world::{Outcome, Sample, World};

/// One run of one scenario, seed and policy; with `record`, its timeline too; with `trace`,
/// the deadline-aware decisions every that many simulated seconds on stdout.
fn run_traced(
    s: &Scenario,
    seed: u64,
    kind: Kind,
    record: bool,
    trace: Option<f64>,
) -> (Outcome, Vec<Sample>) {
    let deadline = s.deadline_s();
    let horizon = 3.0 * deadline;
    let mut w = World::new(s, seed, horizon, record);
    let mut c = Controller::new(kind, s);
    let mut step = 0u64;
    // The policy decides every `decide_every_s`; the fleet follows what it last said.
    let decide = ((s.decide_every_s / s.step_s).round() as u64).max(1);
    // A trace line every `trace` simulated seconds (every decision when they are further apart).
    let every = trace.map_or(1, |e| ((e / s.step_s).round() as u64).max(decide));
    let (mut spot, mut on_demand) = (0, 0);
    while !w.finished() && w.t < horizon {
        if !step.is_multiple_of(decide) {
            step += 1;
            w.reconcile(spot, on_demand);
            w.record((spot, on_demand));
            w.advance();
            continue;
        }
        let obs = w.observe(Some(deadline));
        (spot, on_demand) = c.desired(&obs);
        if let (true, Some(d)) = (
            trace.is_some() && step.is_multiple_of(every),
            c.last_decision(),
        ) {
            let tr = d.triggers;
            println!(
                "{:6.0} s  left {:>11}  running {:>2}/{:>2}  desired {:>2}/{:>2}  {:8}  risk {:.4}  finish {:>7.0}  rescue {:>6.0}  λ {:.3}/h  d_s {:.0}  {}{}{}{}{}",
                obs.now,
                obs.items_left,
                obs.running_spot,
                obs.running_on_demand,
                spot,
                on_demand,
                format!("{:?}", d.mode),
                d.miss_risk.unwrap_or(f64::NAN),
                d.projected_finish.unwrap_or(f64::NAN),
                d.estimate.rescue_slack_s.unwrap_or(f64::NAN),
                d.estimate.interruptions_per_hour,
                d.estimate.spot_arrival_s,
                if tr.deadline_risk { " risk" } else { "" },
                if tr.spot_shortfall { " shortfall" } else { "" },
                if tr.interruption_spike { " spike" } else { "" },
                if tr.rescue_guard { " rescue" } else { "" },
                if w.market.drought(obs.now) { " (drought)" } else { "" },
            );
        }
        step += 1;
        w.reconcile(spot, on_demand);
        w.record((spot, on_demand));
        w.advance();
    }
    (w.outcome(), w.timeline.take().unwrap_or_default())
}

fn run(s: &Scenario, seed: u64, kind: Kind, record: bool) -> (Outcome, Vec<Sample>) {
    run_traced(s, seed, kind, record, None)
}

/// The seed of run `i` of a scenario (the same for every policy, whatever else runs).
fn seed_of(s: &Scenario, i: usize) -> u64 {
    let name = s.name.bytes().fold(0u64, |h, b| world::mix(h ^ b as u64));
    world::mix(name ^ i as u64)
}

fn run_scenario(s: &Scenario, seeds: usize) -> ScenarioRuns {
    let runs = Kind::ALL
        .iter()
        .map(|&kind| {
            (0..seeds)
                .map(|i| run(s, seed_of(s, i), kind, false).0)
                .collect()
        })
        .collect();
    ScenarioRuns {
        scenario: s.clone(),
        runs,
    }
}

struct Args {
    seeds: usize,
    svg: Option<String>,
    only: Option<String>,
    trace: Option<usize>,
    scenario_file: Option<String>,
    trace_every: f64,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        seeds: 200,
        svg: None,
        only: None,
        trace: None,
        scenario_file: None,
        trace_every: 60.0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match a.as_str() {
            "--seeds" => {
                let v = value("--seeds")?;
                args.seeds = v
                    .parse()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or(format!("--seeds: {v} is not a positive number"))?;
            }
            "--svg" => args.svg = Some(value("--svg")?),
            "--only" => args.only = Some(value("--only")?),
            "--scenario-file" => args.scenario_file = Some(value("--scenario-file")?),
            "--trace-every" => {
                let v = value("--trace-every")?;
                args.trace_every = v
                    .parse()
                    .ok()
                    .filter(|s: &f64| *s > 0.0)
                    .ok_or(format!("--trace-every: {v} is not a positive number of seconds"))?;
            }
            "--trace" => {
                let v = value("--trace")?;
                args.trace = Some(
                    v.parse()
                        .map_err(|_| format!("--trace: {v} is not a seed number"))?,
                );
            }
            "-h" | "--help" => {
                return Err(
                    "usage: fleet-sim [--seeds N] [--svg PATH] [--only NAME] [--trace SEED [--trace-every S]] [--scenario-file PATH]".into(),
                )
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(args)
}

/// The plotted job: the first seed of the bursts-and-droughts scenario where a burst comes in
/// the first half of the window and the deadline-aware policy bought on-demand.
fn plot(scenarios: &[Scenario], path: &str) -> Result<(), String> {
    let Some(s) = scenarios
        .iter()
        .find(|s| s.bursts_per_hour >= 0.5)
        .or(scenarios.first())
    else {
        return Ok(());
    };
    let pick = (0..200)
        .find(|&i| {
            let w = World::new(s, seed_of(s, i), 3.0 * s.deadline_s(), false);
            let early = w
                .market
                .bursts
                .iter()
                .any(|b| b.at < 0.5 * s.deadline_s() && b.at > 1_800.0);
            early
                && run(s, seed_of(s, i), Kind::DeadlineAware, true)
                    .1
                    .iter()
                    .any(|x| x.desired.1 > 0)
        })
        .unwrap_or(0);
    let seed = seed_of(s, pick);
    let (da_out, da) = run(s, seed, Kind::DeadlineAware, true);
    let (depth_out, depth) = run(s, seed, Kind::DepthSpot, true);
    let w = World::new(s, seed, 3.0 * s.deadline_s(), false);
    let bursts: Vec<f64> = w.market.bursts.iter().map(|b| b.at).collect();
    let describe = |o: &Outcome| {
        format!(
            "{}, ${:.0}",
            o.finished.map_or("unfinished".into(), |f| format!(
                "done at {:.2} h",
                f / 3_600.0
            )),
            o.cost.0 + o.cost.1
        )
    };
    let doc = svg::plot(
        &svg::Job {
            title: format!(
                "{} (seed {pick}): {} M items, deadline {} h",
                s.name,
                s.items / 1_000_000,
                s.deadline_h
            ),
            deadline_s: s.deadline_s(),
            items: s.items as f64,
            bursts: &bursts,
            droughts: &w.market.droughts,
        },
        &[
            svg::Panel {
                title: format!("deadline-aware: {}", describe(&da_out)),
                samples: &da,
            },
            svg::Panel {
                title: format!("depth-scaled spot, tuned: {}", describe(&depth_out)),
                samples: &depth,
            },
        ],
    );
    std::fs::write(path, doc).map_err(|e| format!("writing {path}: {e}"))?;
    println!("\nplot: {path} ({}, seed {pick})", s.name);
    Ok(())
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let scenarios: Vec<Scenario> = match args.scenario_file.as_deref().map(real::load) {
        Some(Ok(s)) => vec![s],
        Some(Err(e)) => {
            eprintln!("--scenario-file: {e}");
            return ExitCode::from(2);
        }
        None => scenario::all()
            .into_iter()
            .filter(|s| args.only.as_deref().is_none_or(|o| s.name.contains(o)))
            .collect(),
    };
    if scenarios.is_empty() {
        eprintln!("--only: no scenario matches");
        return ExitCode::from(2);
    }
    if let Some(i) = args.trace {
        for s in &scenarios {
            println!("{} seed {i}, deadline-aware:", s.name);
            let (o, _) = run_traced(
                s,
                seed_of(s, i),
                Kind::DeadlineAware,
                false,
                Some(args.trace_every),
            );
            println!("{o:?}\n");
        }
        return ExitCode::SUCCESS;
    }
    if let (Some(s), true) = (scenarios.first(), args.scenario_file.is_some()) {
        let outcomes: Vec<Outcome> = (0..args.seeds)
            .map(|i| run(s, seed_of(s, i), real::KIND, false).0)
            .collect();
        print!("{}", real::report(s, &outcomes));
        return ExitCode::SUCCESS;
    }
    let started = std::time::Instant::now();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut results: Vec<Option<ScenarioRuns>> = scenarios.iter().map(|_| None).collect();
    let per = scenarios.len().div_ceil(threads);
    std::thread::scope(|scope| {
        for (chunk, todo) in results.chunks_mut(per).zip(scenarios.chunks(per)) {
            let seeds = args.seeds;
            scope.spawn(move || {
                for (slot, s) in chunk.iter_mut().zip(todo) {
                    *slot = Some(run_scenario(s, seeds));
                }
            });
        }
    });
    let results: Vec<ScenarioRuns> = results.into_iter().flatten().collect();
    println!(
        "fleet-sim: {} scenarios × {} seeds × {} policies, {:.1} s\n",
        results.len(),
        args.seeds,
        Kind::ALL.len(),
        started.elapsed().as_secs_f64()
    );
    println!(
        "Shard plans (shard_size = \"auto\"):\n\n{}",
        report::shard_plans(&scenarios)
    );
    println!("{}", report::tables(&results));
    println!("By scenario:\n\n{}", report::compact(&results));
    let (targets, _) = report::targets(&results);
    println!("Targets:\n\n{targets}");
    if let Some(path) = args.svg {
        if let Err(e) = plot(&scenarios, &path) {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}

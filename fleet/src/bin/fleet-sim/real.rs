//! A scenario read from a file — the one `benches/fleet_real.py` ran for real on this machine,
//! with what it measured — simulated on many seeds under the deadline-aware policy configured as
//! the coordinator configures it (its defaults, the instance type's prior, no prior rate), so
//! that the simulated finish time and work redone can be set beside the real ones.
//!
//! The file has one `key = value` per line (`#` starts a comment); times in seconds:
//!
//! ```text
//! name = real-2core                 items = 3600          items_per_second = 9.5
//! deadline_s = 600                  max_spot = 2          max_on_demand = 1
//! instance_type = g5.xlarge         region =              start_hour_of_week = 33.5
//! hazard_per_hour = 36              notice_share = 0.9    notice_s = 10
//! spot_arrival = 5 10               on_demand_arrival = 0 0   boot = 1.5 0.5   (fixed, exponential mean)
//! shard_items = 50                  lease_expiry_s = 12.5 shard_overhead_s = 0
//! held_unstarted = 1                speed_spread = 0.05   step_s = 1   decide_every_s = 2
//! reported_rate_window_s = 2        # rates as heartbeats report them (absent: true speeds)
//! max_attempts = 3                  # expired leases before a shard is dead-lettered (0: never)
//! ```

use std::fmt::Write as _;

use crate::controllers::Kind;
use crate::scenario::{Scenario, Timing, CALM};
use crate::world::Outcome;

/// Reads a scenario file (see the module documentation). Keys not given keep a calm market's
/// values with no bursts or droughts and the coordinator's policy configuration.
pub fn load(path: &str) -> Result<Scenario, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
    parse(&text).map_err(|e| format!("{path}: {e}"))
}

fn leak(s: &str) -> &'static str {
    Box::leak(s.to_string().into_boxed_str())
}

/// A scenario from `key = value` lines.
pub fn parse(text: &str) -> Result<Scenario, String> {
    let mut s = Scenario {
        name: "real",
        instance_type: "g5.xlarge",
        region: "",
        bursts_per_hour: 0.0,
        droughts_per_hour: 0.0,
        drought_after_burst: 0.0,
        prior_rate: false,
        step_s: 1.0,
        decide_every_s: 2.0,
        timing: Timing {
            spot_arrival: (0.0, 0.0),
            on_demand_arrival: (0.0, 0.0),
            boot: (1.0, 0.0),
            notice_s: 10.0,
        },
        ..CALM
    };
    let (mut shard_items, mut expiry) = (None, None);
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .ok_or(format!("line {}: not key = value", n + 1))?;
        let (key, value) = (key.trim(), value.trim());
        let bad = |what: &str| format!("line {}: {key}: {value:?} is not {what}", n + 1);
        let num = |v: &str| -> Result<f64, String> {
            v.parse::<f64>()
                .ok()
                .filter(|x| x.is_finite() && *x >= 0.0)
                .ok_or(bad("a number ≥ 0"))
        };
        let pair = |v: &str| -> Result<(f64, f64), String> {
            let parts: Vec<&str> = v.split_whitespace().collect();
            match parts[..] {
                [a, b] => Ok((num(a)?, num(b)?)),
                _ => Err(bad("two numbers (fixed, exponential mean)")),
            }
        };
        let count = |v: &str| v.parse::<u64>().map_err(|_| bad("a whole number"));
        match key {
            "name" => s.name = leak(value),
            "instance_type" => s.instance_type = leak(value),
            "region" => s.region = leak(value),
            "start_hour_of_week" => s.start_hour_of_week = num(value)?,
            "items" => s.items = count(value)?,
            "items_per_second" => s.items_per_second = num(value)?,
            "deadline_s" => s.deadline_h = num(value)? / 3_600.0,
            "max_spot" => s.max_spot = count(value)? as u32,
            "max_on_demand" => s.fleet = count(value)? as u32,
            "hazard_per_hour" => s.hazard_override = Some(num(value)?),
            "notice_share" => s.notice_share = num(value)?.min(1.0),
            "notice_s" => s.timing.notice_s = num(value)?,
            "spot_arrival" => s.timing.spot_arrival = pair(value)?,
            "on_demand_arrival" => s.timing.on_demand_arrival = pair(value)?,
            "boot" => s.timing.boot = pair(value)?,
            "shard_items" => shard_items = Some(count(value)?.max(1)),
            "lease_expiry_s" => expiry = Some(num(value)?),
            "shard_overhead_s" => s.shard_overhead_s = num(value)?,
            "held_unstarted" => s.held_unstarted = count(value)? as u32,
            "speed_spread" => s.speed_spread = num(value)?,
            "step_s" => s.step_s = num(value)?.max(0.1),
            "decide_every_s" => s.decide_every_s = num(value)?,
            "spot_price" => s.spot_price = Some(num(value)?),
            "max_attempts" => s.max_attempts = count(value)? as u32,
            "drain_finishes_shard" => {
                s.drain_finishes_shard = match value {
                    "true" | "yes" | "1" => true,
                    "false" | "no" | "0" => false,
                    _ => return Err(bad("true or false")),
                }
            }
            "reported_rate_window_s" => {
                s.reported_rate_window_s = Some(num(value)?).filter(|w| *w > 0.0)
            }
            _ => return Err(format!("line {}: unknown key {key}", n + 1)),
        }
    }
    if s.items == 0 || s.items_per_second <= 0.0 || s.deadline_h <= 0.0 {
        return Err("items, items_per_second and deadline_s are required".into());
    }
    if let Some(items) = shard_items {
        s.fixed_shards = Some((items, expiry.unwrap_or(60.0)));
    }
    Ok(s)
}

fn mean_sd(v: &[f64]) -> (f64, f64) {
    let n = v.len().max(1) as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / (n - 1.0).max(1.0);
    (mean, var.sqrt())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// What the runs of the deadline-aware policy add up to: a table, and `key=value` lines
/// (`SIM …`, `SIM-FINISH …`, `SIM-REDONE …`) for the driver.
pub fn report(s: &Scenario, outcomes: &[Outcome]) -> String {
    let deadline = s.deadline_s();
    let mut finish: Vec<f64> = outcomes.iter().filter_map(|o| o.finished).collect();
    finish.sort_by(f64::total_cmp);
    let mut redone: Vec<f64> = outcomes.iter().map(|o| o.redone).collect();
    redone.sort_by(f64::total_cmp);
    let per = |f: &dyn Fn(&Outcome) -> f64| -> Vec<f64> {
        let mut v: Vec<f64> = outcomes.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v
    };
    let notices = per(&|o| o.interruptions.0 as f64);
    let kills = per(&|o| o.interruptions.1 as f64);
    let spot_s = per(&|o| o.hours.0 * 3_600.0);
    let od_s = per(&|o| o.hours.1 * 3_600.0);
    let hits = finish.iter().filter(|f| **f <= deadline).count();
    let with_od = outcomes.iter().filter(|o| o.hours.1 > 0.0).count();
    let failed = outcomes.iter().filter(|o| o.dead_lettered > 0).count();
    let n = outcomes.len();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{}: {} items at {:.2} items/s per worker, deadline {:.0} s, at most {} spot + {} on-demand; interruptions {:.1} per spot worker-hour ({:.0} % with a {:.0} s notice); {} runs of the deadline-aware policy as the coordinator configures it\n",
        s.name,
        s.items,
        s.items_per_second,
        deadline,
        s.max_spot,
        s.fleet,
        s.hazard_per_hour(0.0),
        100.0 * s.notice_share,
        s.timing.notice_s,
        n
    );
    let _ = writeln!(out, "| simulated | mean | sd | p5 | p50 | p95 |");
    let _ = writeln!(out, "| --- | --- | --- | --- | --- | --- |");
    for (name, v) in [
        ("finish, s", &finish),
        ("items redone", &redone),
        ("notices", &notices),
        ("hard kills", &kills),
        ("spot worker-s", &spot_s),
        ("on-demand worker-s", &od_s),
    ] {
        let (m, sd) = mean_sd(v);
        let _ = writeln!(
            out,
            "| {name} | {m:.1} | {sd:.1} | {:.1} | {:.1} | {:.1} |",
            percentile(v, 0.05),
            percentile(v, 0.5),
            percentile(v, 0.95)
        );
    }
    let _ = writeln!(
        out,
        "\ndeadline hit in {hits} of {n} runs; finished in {} of {n}; failed (a shard dead-lettered) in {failed} of {n}; on-demand bought in {with_od} of {n}",
        finish.len()
    );
    let (fm, fsd) = mean_sd(&finish);
    let (rm, _) = mean_sd(&redone);
    let _ = writeln!(
        out,
        "SIM runs={n} finished={} failed={failed} hits={hits} with_on_demand={with_od} finish_mean={fm:.2} finish_sd={fsd:.2} finish_p5={:.2} finish_p50={:.2} finish_p95={:.2} redone_mean={rm:.2} redone_p50={:.2} redone_p95={:.2} notices_mean={:.3} kills_mean={:.3} spot_s_mean={:.1} on_demand_s_mean={:.1}",
        finish.len(),
        percentile(&finish, 0.05),
        percentile(&finish, 0.5),
        percentile(&finish, 0.95),
        percentile(&redone, 0.5),
        percentile(&redone, 0.95),
        mean_sd(&notices).0,
        mean_sd(&kills).0,
        mean_sd(&spot_s).0,
        mean_sd(&od_s).0,
    );
    let list = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.1}"))
            .collect::<Vec<_>>()
            .join(",")
    };
    let _ = writeln!(out, "SIM-FINISH {}", list(&finish));
    let _ = writeln!(out, "SIM-REDONE {}", list(&redone));
    out
}

/// The policy the file's scenario is simulated under.
pub const KIND: Kind = Kind::DeadlineAware;

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "name = t\nitems = 2000 # images\nitems_per_second = 10\ndeadline_s = 600\n\
        max_spot = 2\nmax_on_demand = 1\nhazard_per_hour = 36\nnotice_share = 0.9\n\
        spot_arrival = 5 10\nboot = 1.5 0.5\nshard_items = 50\nlease_expiry_s = 12.5\n";

    #[test]
    fn a_file_sets_what_it_names() {
        let s = parse(FILE).expect("parses");
        assert_eq!((s.items, s.max_spot, s.fleet), (2000, 2, 1));
        assert_eq!(s.shard_plan(), (50, 12.5));
        assert_eq!(s.timing.spot_arrival, (5.0, 10.0));
        assert_eq!(s.hazard_per_hour(1e5), 36.0);
        assert!((s.deadline_s() - 600.0).abs() < 1e-9);
        assert!(!s.prior_rate && s.bursts_per_hour == 0.0);
        assert!(parse("items = x").is_err());
        assert!(parse("colour = 3").is_err());
        assert!(parse("items = 10").is_err(), "rate and deadline required");
    }

    #[test]
    fn the_file_scenario_finishes_and_reports() {
        let s = parse(FILE).expect("parses");
        let outcomes: Vec<Outcome> = (0..5)
            .map(|i| crate::run(&s, crate::seed_of(&s, i), KIND, false).0)
            .collect();
        assert!(
            outcomes.iter().all(|o| o.finished.is_some()),
            "{outcomes:?}"
        );
        let r = report(&s, &outcomes);
        assert!(r.contains("SIM runs=5 finished=5"), "{r}");
    }
}

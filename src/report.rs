//! `spotbatch report`: one self-contained HTML page (inline SVG, no scripts or links to fetch) with
//! a job's rows written over time (and their rate), its shards on each worker with preemption
//! notices and recoveries, and its cost, drawn from the workers' ledgers and the done markers
//! beside the output. The data behind the charts is embedded too
//! (`<script type="application/json" id="spotbatch-data">`).

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use spotbatch_store::cost::Report;
use spotbatch_store::timeline::{build, Timeline as Data};

use crate::cost::{job_prefix, read_job};
use crate::say::count;

/// `spotbatch report`.
#[derive(clap::Args, Debug)]
pub struct ReportCmd {
    /// The job: its manifest, or its id with --output.
    job: String,
    /// The output location (`output.uri`) when JOB is a job id.
    #[arg(long)]
    output: Option<String>,
    /// The HTML page to write.
    #[arg(long, alias = "out", default_value = "report.html")]
    html: PathBuf,
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Chart width, the room for lane labels on the left and for the right axis.
const W: f64 = 900.0;
const LEFT: f64 = 160.0;
const RIGHT: f64 = 70.0;
/// Characters of a lane label that fit in `LEFT` at the page's 12 px.
const LABEL_CHARS: usize = 21;

/// A label that fits its lane: long names are cut (with …) and shown whole on hover.
fn label(x: f64, y: f64, text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let shown: String = if chars.len() > LABEL_CHARS {
        chars[..LABEL_CHARS - 1].iter().collect::<String>() + "…"
    } else {
        text.to_string()
    };
    format!(
        "<text class=\"label\" x=\"{x:.1}\" y=\"{y:.1}\"><title>{}</title>{}</text>",
        esc(text),
        esc(&shown)
    )
}

/// About `n` round tick values from 0 to at least `max` (steps of 1, 2 or 5 × 10^k).
fn ticks(max: f64, n: usize) -> Vec<f64> {
    let max = if max.is_finite() && max > 0.0 {
        max
    } else {
        1.0
    };
    let raw = max / n.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    let steps = (max / step).ceil() as usize;
    (0..=steps).map(|i| i as f64 * step).collect()
}

/// A tick's label: whole numbers as such, small steps with their decimals.
fn tick_label(v: f64, step: f64) -> String {
    if step >= 1.0 {
        format!("{v:.0}")
    } else {
        let decimals = (-step.log10().floor()) as usize;
        format!("{v:.decimals$}")
    }
}

/// The time axis under a chart: ticks and their labels in seconds, and the axis line.
fn time_axis(svg: &mut String, wall: f64, x: impl Fn(f64) -> f64, y: f64) {
    let t = ticks(wall, 8);
    let step = t.get(1).copied().unwrap_or(1.0);
    let _ = write!(
        svg,
        "<line class=\"axis\" x1=\"{LEFT}\" x2=\"{:.1}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#555\"/>",
        W - RIGHT
    );
    for v in t.iter().filter(|v| **v <= wall * 1.0001) {
        let _ = write!(
            svg,
            "<line class=\"tick\" x1=\"{0:.1}\" x2=\"{0:.1}\" y1=\"{y:.1}\" y2=\"{1:.1}\" stroke=\"#555\"/><text class=\"tick-label\" x=\"{0:.1}\" y=\"{2:.1}\" text-anchor=\"middle\">{3} s</text>",
            x(*v),
            y + 5.0,
            y + 18.0,
            tick_label(*v, step)
        );
    }
}

/// A vertical axis at `ax` from `top` to `bottom` for values 0..`max`, its labels on `side`.
#[allow(clippy::too_many_arguments)] // an SVG axis: where, how long, which side, what unit
fn value_axis(
    svg: &mut String,
    max: f64,
    ax: f64,
    top: f64,
    bottom: f64,
    right: bool,
    unit: &str,
    class: &str,
) -> f64 {
    let t = ticks(max, 5);
    let top_value = t.last().copied().unwrap_or(1.0).max(1e-12);
    let step = t.get(1).copied().unwrap_or(1.0);
    let y = |v: f64| bottom - v / top_value * (bottom - top);
    let _ = write!(
        svg,
        "<line class=\"axis {class}\" x1=\"{ax:.1}\" x2=\"{ax:.1}\" y1=\"{top:.1}\" y2=\"{bottom:.1}\" stroke=\"#555\"/>"
    );
    for v in &t {
        let (x2, tx, anchor) = if right {
            (ax + 5.0, ax + 8.0, "start")
        } else {
            (ax - 5.0, ax - 8.0, "end")
        };
        let _ = write!(
            svg,
            "<line class=\"tick\" x1=\"{ax:.1}\" x2=\"{x2:.1}\" y1=\"{0:.1}\" y2=\"{0:.1}\" stroke=\"#555\"/><line x1=\"{LEFT}\" x2=\"{1:.1}\" y1=\"{0:.1}\" y2=\"{0:.1}\" stroke=\"#eee\"/><text class=\"tick-label {class}\" x=\"{tx:.1}\" y=\"{2:.1}\" text-anchor=\"{anchor}\">{3}{unit}</text>",
            y(*v),
            W - RIGHT,
            y(*v) + 4.0,
            tick_label(*v, step)
        );
    }
    top_value
}

/// Legend entries in a row: (colour, outline, text); a `line` entry is drawn as a line.
fn legend(svg: &mut String, y: f64, entries: &[(&str, &str, &str)]) {
    let mut x = LEFT;
    for (fill, kind, text) in entries {
        let _ = match *kind {
            "line" => write!(
                svg,
                "<line x1=\"{x:.1}\" x2=\"{:.1}\" y1=\"{1:.1}\" y2=\"{1:.1}\" stroke=\"{fill}\" stroke-width=\"3\"/>",
                x + 16.0,
                y - 4.0
            ),
            "vline" => write!(
                svg,
                "<line x1=\"{0:.1}\" x2=\"{0:.1}\" y1=\"{1:.1}\" y2=\"{2:.1}\" stroke=\"{fill}\" stroke-width=\"3\"/>",
                x + 8.0,
                y - 11.0,
                y + 2.0
            ),
            "dot" => write!(
                svg,
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"4\" fill=\"{fill}\"/>",
                x + 8.0,
                y - 4.0
            ),
            outline => write!(
                svg,
                "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"16\" height=\"10\" fill=\"{fill}\" stroke=\"{outline}\"/>",
                y - 9.0
            ),
        };
        let _ = write!(
            svg,
            "<text class=\"legend\" x=\"{:.1}\" y=\"{y:.1}\">{}</text>",
            x + 20.0,
            esc(text)
        );
        x += 20.0 + text.chars().count() as f64 * 6.6 + 18.0;
    }
}

fn throughput_svg(d: &Data) -> String {
    let (top, bottom) = (30.0, 230.0);
    let h = bottom + 30.0;
    let wall = d.wall_s.max(1e-9);
    let x = |t: f64| LEFT + t / wall * (W - LEFT - RIGHT);
    let mut svg = format!(
        "<svg id=\"throughput\" viewBox=\"0 0 {W} {h}\" width=\"{W}\" height=\"{h}\" role=\"img\">"
    );
    legend(
        &mut svg,
        14.0,
        &[
            ("#2a6", "line", "rows written (left axis)"),
            (
                "#c60",
                "line",
                &format!("rate over {:.1} s, rows/s (right axis)", d.rate_window_s),
            ),
        ],
    );
    let final_items = d.cumulative.last().map_or(0, |w| w.items);
    let items_top = value_axis(
        &mut svg,
        final_items.max(1) as f64,
        LEFT,
        top,
        bottom,
        false,
        "",
        "items",
    );
    let max_rate = d.rate.iter().map(|r| r.items_per_s).fold(0.0f64, f64::max);
    let rate_top = value_axis(
        &mut svg,
        max_rate.max(1e-9),
        W - RIGHT,
        top,
        bottom,
        true,
        "/s",
        "rate",
    );
    time_axis(&mut svg, wall, x, bottom);
    let y_items = |v: u64| bottom - v as f64 / items_top * (bottom - top);
    // Rows written: a step up at each shard done.
    let mut points = format!("{:.1},{:.1}", x(0.0), bottom);
    let mut prev = 0;
    for w in &d.cumulative {
        let _ = write!(
            points,
            " {0:.1},{1:.1} {0:.1},{2:.1}",
            x(w.at_s),
            y_items(prev),
            y_items(w.items)
        );
        prev = w.items;
    }
    let _ = write!(points, " {:.1},{:.1}", x(wall), y_items(prev));
    let _ = write!(
        svg,
        "<polyline class=\"cumulative\" points=\"{points}\" fill=\"none\" stroke=\"#2a6\" stroke-width=\"2\" data-final-items=\"{final_items}\"><title>{final_items} rows written</title></polyline>"
    );
    let rate: Vec<String> = d
        .rate
        .iter()
        .map(|r| {
            format!(
                "{:.1},{:.1}",
                x(r.at_s),
                bottom - r.items_per_s / rate_top * (bottom - top)
            )
        })
        .collect();
    let _ = write!(
        svg,
        "<polyline class=\"rate\" points=\"{}\" fill=\"none\" stroke=\"#c60\" stroke-width=\"1.5\"/></svg>",
        rate.join(" ")
    );
    svg
}

/// How a shard's bar is coloured, by how the attempt ended; every one is in the legend.
const OUTCOMES: &[(&str, &str, &str)] = &[
    ("done", "#3a7", "done"),
    ("partial", "#e90", "partial (drained mid-shard, rows kept)"),
    ("released", "#999", "released unstarted"),
    ("interrupted", "#bbb", "interrupted (stopped at once)"),
    ("handed_over", "#9bd", "handed to a peer"),
    ("skipped", "#ddd", "already done"),
    ("failed", "#d33", "failed"),
    ("lease_lost", "#a3c", "lease lost"),
];

fn colour(outcome: &str) -> &'static str {
    OUTCOMES
        .iter()
        .find(|(o, _, _)| *o == outcome)
        .map_or("#d33", |(_, c, _)| *c)
}

fn timeline_svg(d: &Data) -> String {
    let mut workers: Vec<&str> = d.shards.iter().map(|b| b.worker.as_str()).collect();
    workers.sort_unstable();
    workers.dedup();
    // Shards a worker held at once (prefetch) overlap: each goes on the first row of its
    // worker's lane where it does not.
    let row_h = 12.0;
    let mut rows: Vec<usize> = vec![0; d.shards.len()];
    let mut lanes: Vec<usize> = Vec::with_capacity(workers.len());
    for w in &workers {
        let mut ends: Vec<f64> = Vec::new();
        let mut idx: Vec<usize> = (0..d.shards.len())
            .filter(|i| d.shards[*i].worker == *w)
            .collect();
        idx.sort_by(|a, b| d.shards[*a].start_s.total_cmp(&d.shards[*b].start_s));
        for i in idx {
            let b = &d.shards[i];
            let r = match ends.iter().position(|e| *e <= b.start_s) {
                Some(r) => r,
                None => {
                    ends.push(0.0);
                    ends.len() - 1
                }
            };
            ends[r] = b.end_s;
            rows[i] = r;
        }
        lanes.push(ends.len().max(1));
    }
    // The legend takes two lines above the lanes.
    let first = 48.0;
    let tops: Vec<f64> = lanes
        .iter()
        .scan(first, |y, n| {
            let top = *y;
            *y += (*n as f64 * row_h).max(16.0) + 10.0;
            Some(top)
        })
        .collect();
    let bottom = tops
        .last()
        .zip(lanes.last())
        .map_or(first, |(t, n)| t + (*n as f64 * row_h).max(16.0) + 4.0);
    let h = bottom + 30.0;
    let wall = d.wall_s.max(1e-9);
    let x = |t: f64| LEFT + t / wall * (W - LEFT - RIGHT);
    let lane_of = |w: &str| workers.iter().position(|v| *v == w).unwrap_or(0);
    let y = |w: &str| tops[lane_of(w)];
    let lane = |w: &str| (lanes[lane_of(w)] as f64 * row_h).max(16.0);
    let mut svg = format!(
        "<svg id=\"timeline\" viewBox=\"0 0 {W} {h}\" width=\"{W}\" height=\"{h}\" role=\"img\">"
    );
    let (half, rest) = OUTCOMES.split_at(4);
    legend(
        &mut svg,
        14.0,
        &half
            .iter()
            .map(|(_, c, t)| (*c, "none", *t))
            .collect::<Vec<_>>(),
    );
    let mut second: Vec<(&str, &str, &str)> =
        rest.iter().map(|(_, c, t)| (*c, "none", *t)).collect();
    second.extend([
        ("#fff", "#000", "redelivered (outline)"),
        ("#d00", "vline", "preemption notice"),
        ("#06c", "dot", "leased again (time back on the queue)"),
    ]);
    legend(&mut svg, 32.0, &second);
    for w in &workers {
        let _ = write!(
            svg,
            "<line x1=\"{LEFT}\" x2=\"{:.1}\" y1=\"{1:.1}\" y2=\"{1:.1}\" stroke=\"#eee\"/>",
            W - RIGHT,
            y(w) + lane(w) + 5.0
        );
        svg.push_str(&label(4.0, y(w) + 11.0, w));
    }
    time_axis(&mut svg, wall, x, bottom);
    for (b, row) in d.shards.iter().zip(&rows) {
        let _ = write!(
            svg,
            "<rect class=\"shard\" x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{}\" stroke=\"{}\" data-shard=\"{}\" data-outcome=\"{}\" data-attempt=\"{}\"><title>{} {} attempt {}: {} ({} items), {:.2}–{:.2} s</title></rect>",
            x(b.start_s),
            y(&b.worker) + *row as f64 * row_h,
            (x(b.end_s) - x(b.start_s)).max(1.5),
            row_h - 2.0,
            colour(&b.outcome),
            if b.attempt > 1 { "#000" } else { "none" },
            esc(&b.shard),
            esc(&b.outcome),
            b.attempt,
            esc(&b.worker),
            esc(&b.shard),
            b.attempt,
            esc(&b.outcome),
            b.items,
            b.start_s,
            b.end_s
        );
    }
    for n in &d.notices {
        let _ = write!(
            svg,
            "<line class=\"notice\" x1=\"{0:.1}\" x2=\"{0:.1}\" y1=\"{1:.1}\" y2=\"{2:.1}\" stroke=\"#d00\" stroke-width=\"3\" data-at-s=\"{3:.3}\"><title>preemption notice to {4} at {3:.2} s</title></line>",
            x(n.at_s),
            y(&n.worker) - 2.0,
            y(&n.worker) + lane(&n.worker) + 2.0,
            n.at_s,
            esc(&n.worker)
        );
    }
    for r in &d.recoveries {
        let _ = write!(
            svg,
            "<circle class=\"recovery\" cx=\"{:.1}\" cy=\"{:.1}\" r=\"4\" fill=\"#06c\" data-at-s=\"{:.3}\" data-seconds=\"{:.3}\"><title>re-leased by {} after {:.2} s back on the queue</title></circle>",
            x(r.at_s),
            y(&r.worker) + lane(&r.worker) / 2.0,
            r.at_s,
            r.seconds,
            esc(&r.worker),
            r.seconds
        );
    }
    svg.push_str("</svg>");
    svg
}

fn cost_svg(r: &Report) -> String {
    let lane = 26.0;
    let top = 24.0;
    let bottom = top + lane * r.per_worker.len() as f64;
    let h = bottom + 30.0;
    let max = r
        .per_worker
        .iter()
        .map(|l| l.on_demand_dollars.max(l.dollars))
        .fold(0.0f64, f64::max)
        .max(1e-12);
    let t = ticks(max, 6);
    let step = t.get(1).copied().unwrap_or(1.0);
    let top_value = t.last().copied().unwrap_or(1.0).max(1e-12);
    let scale = |v: f64| v / top_value * (W - LEFT - RIGHT);
    let mut svg = format!(
        "<svg id=\"cost\" viewBox=\"0 0 {W} {h}\" width=\"{W}\" height=\"{h}\" role=\"img\">"
    );
    legend(
        &mut svg,
        14.0,
        &[
            ("#3a7", "none", "spent on spot"),
            ("#e90", "none", "spent on demand"),
            ("#ddd", "none", "the same time on demand"),
        ],
    );
    let _ = write!(
        svg,
        "<line class=\"axis\" x1=\"{LEFT}\" x2=\"{:.1}\" y1=\"{bottom:.1}\" y2=\"{bottom:.1}\" stroke=\"#555\"/>",
        W - RIGHT
    );
    for v in &t {
        // Enough decimals to tell the ticks apart.
        let decimals = if step >= 1.0 {
            0
        } else {
            (-step.log10().floor()) as usize
        };
        let _ = write!(
            svg,
            "<line class=\"tick\" x1=\"{0:.1}\" x2=\"{0:.1}\" y1=\"{bottom:.1}\" y2=\"{1:.1}\" stroke=\"#555\"/><text class=\"tick-label\" x=\"{0:.1}\" y=\"{2:.1}\" text-anchor=\"middle\">${3:.decimals$}</text>",
            LEFT + scale(*v),
            bottom + 5.0,
            bottom + 18.0,
            v
        );
    }
    for (i, l) in r.per_worker.iter().enumerate() {
        let y = top + i as f64 * lane + 4.0;
        svg.push_str(&label(4.0, y + 14.0, &l.worker));
        let _ = write!(
            svg,
            "<rect class=\"od\" x=\"{LEFT}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"#ddd\" data-dollars=\"{:.9}\"><title>on demand ${:.4}</title></rect><rect class=\"spent\" x=\"{LEFT}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{}\" data-dollars=\"{:.9}\" data-worker=\"{}\"><title>{} {}: ${:.4}</title></rect><text x=\"{:.1}\" y=\"{:.1}\">${:.4} of ${:.4}</text>",
            scale(l.on_demand_dollars),
            lane - 8.0,
            l.on_demand_dollars,
            l.on_demand_dollars,
            scale(l.dollars),
            lane - 8.0,
            if l.capacity == "spot" { "#3a7" } else { "#e90" },
            l.dollars,
            esc(&l.worker),
            esc(&l.worker),
            esc(&l.capacity),
            l.dollars,
            LEFT + scale(l.on_demand_dollars.max(l.dollars)) + 6.0,
            y + 14.0,
            l.dollars,
            l.on_demand_dollars
        );
    }
    svg.push_str("</svg>");
    svg
}

fn row(html: &mut String, name: &str, value: &str, class: &str) {
    let _ = write!(
        html,
        "<tr class=\"{class}\"><td>{}</td><td>{}</td></tr>",
        esc(name),
        esc(value)
    );
}

fn summary(d: &Data) -> String {
    let mut html = String::from("<table id=\"summary\">");
    let ok = d.items.saturating_sub(d.error_rows);
    row(
        &mut html,
        "rows written",
        &format!(
            "{} ({} with a result, {})",
            d.items,
            ok,
            count(d.error_rows, "error row")
        ),
        "items",
    );
    row(
        &mut html,
        "shards",
        &format!(
            "{} done, {} leased in all",
            d.shards_done,
            count(d.shards.len() as u64, "time")
        ),
        "shards",
    );
    row(
        &mut html,
        "failed attempts",
        &d.failed_attempts.to_string(),
        if d.failed_attempts > 0 {
            "failed bad"
        } else {
            "failed"
        },
    );
    row(
        &mut html,
        "shards failed, not done",
        &format!("{} (dead-lettered unless retried)", d.shards_failed),
        if d.shards_failed > 0 {
            "dead bad"
        } else {
            "dead"
        },
    );
    row(
        &mut html,
        "wall time",
        &format!("{:.1} s", d.wall_s),
        "wall",
    );
    row(
        &mut html,
        "preemption notices",
        &d.notices.len().to_string(),
        "notices",
    );
    row(
        &mut html,
        "redelivered shards",
        &d.redelivered.to_string(),
        "redelivered",
    );
    if let Some(c) = &d.cost {
        row(&mut html, "spent", &format!("${:.4}", c.dollars), "spent");
        row(
            &mut html,
            "on demand would be",
            &format!("${:.4}", c.on_demand_dollars),
            "on-demand",
        );
        row(
            &mut html,
            "saved",
            &format!(
                "${:.4} ({:.1} %)",
                c.saved_dollars,
                c.saved_fraction * 100.0
            ),
            "saved",
        );
        row(
            &mut html,
            "per 1000 items",
            &format!("${:.4}", c.dollars_per_1k_items),
            "per-1k",
        );
        row(
            &mut html,
            "work redone",
            &format!(
                "{}, {:.1} s, ${:.4}",
                count(c.items_redone, "item"),
                c.seconds_lost,
                c.dollars_lost
            ),
            "redone",
        );
    }
    html.push_str("</table>");
    html
}

fn page(d: &Data) -> anyhow::Result<String> {
    let data = serde_json::to_string(d)?.replace("</", "<\\/");
    let mut html = String::new();
    let _ = write!(
        html,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>spotbatch report: {job}</title><style>body{{font:14px system-ui,sans-serif;margin:24px;color:#222}}h2{{margin-top:28px}}svg text{{font-size:12px;fill:#222}}table{{border-collapse:collapse}}td{{padding:2px 12px 2px 0}}tr.bad td{{color:#b00;font-weight:600}}</style></head><body><h1>Job {job}</h1>",
        job = esc(&d.job)
    );
    html.push_str(&summary(d));
    let _ = write!(html, "<h2>Rows written over time</h2><p>Rows written as shards finish (a drained shard's kept rows count when the shard is done), and their rate over a window of a tenth of the job.</p>{}", throughput_svg(d));
    let _ = write!(html, "<h2>Preemptions and recoveries</h2><p>Each shard attempt on the worker that leased it, coloured by how it ended.</p>{}", timeline_svg(d));
    match &d.cost {
        Some(c) => {
            let _ = write!(html, "<h2>Cost</h2><p>Per worker: what it spent on the job against what the same time would cost on demand.</p>{}", cost_svg(c));
        }
        None => html.push_str("<h2>Cost</h2><p>No prices were given to the workers (--price-per-hour, or --instance-type), so cost was not accounted.</p>"),
    }
    let _ = writeln!(
        html,
        "<script type=\"application/json\" id=\"spotbatch-data\">{data}</script></body></html>"
    );
    Ok(html)
}

pub async fn run(cmd: ReportCmd) -> anyhow::Result<ExitCode> {
    let (job, prefix) = job_prefix(&cmd.job, cmd.output.as_deref())?;
    let (ledgers, markers) = read_job(&job, &prefix).await?;
    if ledgers.iter().all(|l| l.shards.is_empty()) {
        anyhow::bail!(
            "{job}: {} under {}, none with a shard on it (workers write theirs as they go)",
            count(ledgers.len() as u64, "worker ledger"),
            prefix.url()
        );
    }
    let d = build(&job, &ledgers, &markers);
    let html = page(&d)?;
    std::fs::write(&cmd.html, html).with_context(|| format!("writing {}", cmd.html.display()))?;
    crate::say!(
        "{job}: report of {} on {} written to {}",
        count(d.shards.len() as u64, "shard attempt"),
        count(ledgers.len() as u64, "worker"),
        cmd.html.display()
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        assert_eq!(ticks(10.0, 5), vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
        assert_eq!(ticks(540.0, 5), vec![0.0, 200.0, 400.0, 600.0]);
        let small = ticks(0.03, 6);
        assert!(
            small.last().copied().unwrap() >= 0.03 && small.len() <= 8,
            "{small:?}"
        );
        assert_eq!(tick_label(0.005, 0.005), "0.005");
        assert_eq!(tick_label(200.0, 100.0), "200");
    }

    #[test]
    fn long_lane_labels_are_cut_and_kept_whole_on_hover() {
        let name = "worker-with-a-very-long-name-from-kubernetes-7f9c";
        let l = label(4.0, 10.0, name);
        assert!(l.contains(&format!("<title>{name}</title>")), "{l}");
        let shown = l
            .rsplit("</title>")
            .next()
            .unwrap()
            .trim_end_matches("</text>");
        assert_eq!(shown.chars().count(), LABEL_CHARS, "{shown}");
        assert!(shown.ends_with('…'));
        assert!(label(4.0, 10.0, "w1").ends_with(">w1</text>"));
    }

    #[test]
    fn every_outcome_has_its_own_colour_in_the_legend() {
        let mut colours: Vec<&str> = OUTCOMES.iter().map(|(_, c, _)| *c).collect();
        colours.sort_unstable();
        colours.dedup();
        assert_eq!(colours.len(), OUTCOMES.len());
        for o in [
            "done",
            "partial",
            "released",
            "interrupted",
            "skipped",
            "handed_over",
            "failed",
            "lease_lost",
        ] {
            assert!(
                OUTCOMES.iter().any(|(k, _, _)| *k == o),
                "{o} has no colour"
            );
        }
    }
}

//! `spotbatch report`: one self-contained HTML page (inline SVG, no scripts or links to fetch) with
//! a job's throughput over time, its shards on each worker with preemption notices and recoveries,
//! and its cost, drawn from the workers' ledgers and the done markers beside the output. The data
//! behind the charts is embedded too (`<script type="application/json" id="spotbatch-data">`).

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use spotbatch_store::cost::Report;
use spotbatch_store::timeline::{build, Timeline as Data};

use crate::cost::{job_prefix, read_job};

/// `spotbatch report`.
#[derive(clap::Args, Debug)]
pub struct ReportCmd {
    /// The job: its manifest, or its id with --output.
    job: String,
    /// The output location (`output.uri`) when JOB is a job id.
    #[arg(long)]
    output: Option<String>,
    /// Where to write the page.
    #[arg(long, default_value = "report.html")]
    out: PathBuf,
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

const W: f64 = 900.0;
const LEFT: f64 = 140.0;

fn throughput_svg(d: &Data) -> String {
    let h = 220.0;
    let max = d
        .throughput
        .iter()
        .map(|b| b.items_per_s)
        .fold(0.0f64, f64::max)
        .max(1e-9);
    let bw = (W - LEFT) / d.throughput.len().max(1) as f64;
    let mut svg = format!(
        "<svg id=\"throughput\" viewBox=\"0 0 {W} {}\" width=\"{W}\" height=\"{}\" role=\"img\">",
        h + 30.0,
        h + 30.0
    );
    let _ = write!(
        svg,
        "<text x=\"4\" y=\"14\">{max:.1} items/s</text><text x=\"4\" y=\"{h}\">0</text>"
    );
    for (i, b) in d.throughput.iter().enumerate() {
        let bh = b.items_per_s / max * (h - 20.0);
        let _ = write!(
            svg,
            "<rect class=\"bar\" fill=\"#4a8\" x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{bh:.1}\" data-start-s=\"{:.3}\" data-items=\"{}\" data-items-per-s=\"{:.3}\"><title>{:.1}–{:.1} s: {} items ({:.1}/s)</title></rect>",
            LEFT + i as f64 * bw,
            h - bh,
            (bw - 1.0).max(1.0),
            b.start_s,
            b.items,
            b.items_per_s,
            b.start_s,
            b.end_s,
            b.items,
            b.items_per_s
        );
    }
    let _ = write!(svg, "<text x=\"{LEFT}\" y=\"{}\">0 s</text><text x=\"{}\" y=\"{}\" text-anchor=\"end\">{:.1} s</text></svg>", h + 20.0, W - 4.0, h + 20.0, d.wall_s);
    svg
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
    let tops: Vec<f64> = lanes
        .iter()
        .scan(4.0, |y, n| {
            let top = *y;
            *y += *n as f64 * row_h + 10.0;
            Some(top)
        })
        .collect();
    let h = tops.last().copied().unwrap_or(0.0)
        + lanes.last().copied().unwrap_or(1) as f64 * row_h
        + 30.0;
    let x = |t: f64| LEFT + t / d.wall_s.max(1e-9) * (W - LEFT - 10.0);
    let lane_of = |w: &str| workers.iter().position(|v| *v == w).unwrap_or(0);
    let y = |w: &str| tops[lane_of(w)];
    let lane = |w: &str| lanes[lane_of(w)] as f64 * row_h;
    let mut svg = format!(
        "<svg id=\"timeline\" viewBox=\"0 0 {W} {h}\" width=\"{W}\" height=\"{h}\" role=\"img\">"
    );
    for w in &workers {
        let _ = write!(
            svg,
            "<text x=\"4\" y=\"{:.1}\">{}</text>",
            y(w) + 12.0,
            esc(w)
        );
    }
    for (b, row) in d.shards.iter().zip(&rows) {
        let color = match b.outcome.as_str() {
            "done" => "#3a7",
            "partial" => "#e90",
            "released" | "interrupted" => "#999",
            "skipped" => "#ccc",
            // Leased here, worked by a peer (whose own bar says "done").
            "handed_over" => "#9bd",
            _ => "#d33",
        };
        let _ = write!(
            svg,
            "<rect class=\"shard\" x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{color}\" stroke=\"{}\" data-shard=\"{}\" data-outcome=\"{}\" data-attempt=\"{}\"><title>{} {} attempt {}: {} ({} items), {:.2}–{:.2} s</title></rect>",
            x(b.start_s),
            y(&b.worker) + *row as f64 * row_h,
            (x(b.end_s) - x(b.start_s)).max(1.5),
            row_h - 2.0,
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
    let _ = write!(svg, "<text x=\"{LEFT}\" y=\"{:.1}\">0 s</text><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{:.1} s</text>", h - 8.0, W - 4.0, h - 8.0, d.wall_s);
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
    let h = lane * r.per_worker.len() as f64 + 10.0;
    let max = r
        .per_worker
        .iter()
        .map(|l| l.on_demand_dollars.max(l.dollars))
        .fold(0.0f64, f64::max)
        .max(1e-12);
    let mut svg = format!(
        "<svg id=\"cost\" viewBox=\"0 0 {W} {h}\" width=\"{W}\" height=\"{h}\" role=\"img\">"
    );
    for (i, l) in r.per_worker.iter().enumerate() {
        let y = i as f64 * lane + 4.0;
        let scale = |v: f64| v / max * (W - LEFT - 170.0);
        let _ = write!(
            svg,
            "<text x=\"4\" y=\"{:.1}\">{}</text><rect class=\"od\" x=\"{LEFT}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"#ddd\" data-dollars=\"{:.9}\"><title>on demand ${:.4}</title></rect><rect class=\"spent\" x=\"{LEFT}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{}\" data-dollars=\"{:.9}\" data-worker=\"{}\"><title>{} {}: ${:.4}</title></rect><text x=\"{:.1}\" y=\"{:.1}\">${:.4} of ${:.4}</text>",
            y + 14.0,
            esc(&l.worker),
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

fn page(d: &Data) -> anyhow::Result<String> {
    let data = serde_json::to_string(d)?.replace("</", "<\\/");
    let mut html = String::new();
    let _ = write!(
        html,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>spotbatch report: {job}</title><style>body{{font:14px system-ui,sans-serif;margin:24px;color:#222}}h2{{margin-top:28px}}svg text{{font-size:12px}}table{{border-collapse:collapse}}td{{padding:2px 12px 2px 0}}</style></head><body><h1>Job {job}</h1>",
        job = esc(&d.job)
    );
    let _ = write!(
        html,
        "<table><tr><td>items</td><td>{}</td></tr><tr><td>shards leased</td><td>{}</td></tr><tr><td>wall time</td><td>{:.1} s</td></tr><tr><td>preemption notices</td><td>{}</td></tr><tr><td>redelivered shards</td><td>{}</td></tr>",
        d.items,
        d.shards.len(),
        d.wall_s,
        d.notices.len(),
        d.shards.iter().filter(|b| b.attempt > 1).count()
    );
    if let Some(c) = &d.cost {
        let _ = write!(
            html,
            "<tr><td>spent</td><td>${:.4}</td></tr><tr><td>on demand would be</td><td>${:.4}</td></tr><tr><td>saved</td><td>${:.4} ({:.1} %)</td></tr><tr><td>per 1000 items</td><td>${:.4}</td></tr><tr><td>work redone</td><td>{} items, {:.1} s, ${:.4}</td></tr>",
            c.dollars,
            c.on_demand_dollars,
            c.saved_dollars,
            c.saved_fraction * 100.0,
            c.dollars_per_1k_items,
            c.items_redone,
            c.seconds_lost,
            c.dollars_lost
        );
    }
    html.push_str("</table>");
    let _ = write!(html, "<h2>Throughput over time</h2><p>Items finished per interval (done shards, and partial results of drained ones).</p>{}", throughput_svg(d));
    let _ = write!(html, "<h2>Preemptions and recoveries</h2><p>Each shard on the worker that leased it: green done, orange partial (drained mid-shard), grey released unstarted, red failed; a black outline marks a redelivery; red lines are preemption notices; blue dots are shards leased again after waiting on the queue.</p>{}", timeline_svg(d));
    match &d.cost {
        Some(c) => {
            let _ = write!(html, "<h2>Cost</h2><p>Per worker: spent (green spot, orange on demand) against what the same time would cost on demand (grey).</p>{}", cost_svg(c));
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
    let (ledgers, markers) = read_job(&prefix).await?;
    if ledgers.iter().all(|l| l.shards.is_empty()) {
        anyhow::bail!(
            "{job}: no worker ledgers with shards under {}",
            prefix.url()
        );
    }
    let d = build(&job, &ledgers, &markers);
    let html = page(&d)?;
    std::fs::write(&cmd.out, html).with_context(|| format!("writing {}", cmd.out.display()))?;
    eprintln!(
        "{job}: report with {} shards from {} workers written to {}",
        d.shards.len(),
        ledgers.len(),
        cmd.out.display()
    );
    Ok(ExitCode::SUCCESS)
}

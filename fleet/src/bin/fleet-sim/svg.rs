//! The plot of one job's fleet over time (hand-written SVG): desired and running workers by
//! capacity, the backlog, the deadline, bursts and droughts — one panel per policy.

use std::fmt::Write as _;

use crate::world::Sample;

const W: f64 = 960.0;
const PANEL_H: f64 = 260.0;
const LEFT: f64 = 56.0;
const RIGHT: f64 = 70.0;
const TOP: f64 = 34.0;
const BOTTOM: f64 = 34.0;
const SPOT: &str = "#e8710a";
const ON_DEMAND: &str = "#1a73e8";

/// One panel: a policy's timeline.
pub struct Panel<'a> {
    pub title: String,
    pub samples: &'a [Sample],
}

/// What every panel shares.
pub struct Job<'a> {
    pub title: String,
    pub deadline_s: f64,
    pub items: f64,
    pub bursts: &'a [f64],
    pub droughts: &'a [(f64, f64)],
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The SVG document.
pub fn plot(job: &Job, panels: &[Panel]) -> String {
    let t_max = panels
        .iter()
        .filter_map(|p| p.samples.last().map(|s| s.t))
        .fold(job.deadline_s * 1.05, f64::max);
    let w_max = panels
        .iter()
        .flat_map(|p| p.samples.iter())
        .map(|s| {
            s.desired
                .0
                .max(s.desired.1)
                .max(s.running.0)
                .max(s.running.1)
        })
        .max()
        .unwrap_or(1)
        .max(1) as f64
        * 1.1;
    let height = TOP + panels.len() as f64 * (PANEL_H + BOTTOM) + 40.0;
    let mut o = String::new();
    let _ = writeln!(
        o,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{height}" viewBox="0 0 {W} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(o, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        o,
        r#"<text x="{LEFT}" y="20" font-size="15" font-weight="bold">{}</text>"#,
        esc(&job.title)
    );
    let pw = W - LEFT - RIGHT;
    for (n, p) in panels.iter().enumerate() {
        let y0 = TOP + n as f64 * (PANEL_H + BOTTOM);
        let x = |t: f64| LEFT + pw * t / t_max;
        let y = |w: f64| y0 + PANEL_H - PANEL_H * w / w_max;
        let yb = |items: f64| y0 + PANEL_H - PANEL_H * items / job.items.max(1.0);
        for &(a, b) in job.droughts {
            if a < t_max {
                let _ = writeln!(
                    o,
                    r##"<rect x="{:.1}" y="{y0:.1}" width="{:.1}" height="{PANEL_H}" fill="#f1e4c3"/>"##,
                    x(a),
                    (x(b.min(t_max)) - x(a)).max(0.5)
                );
            }
        }
        // Backlog, right axis.
        let mut area = format!("{:.1},{:.1}", x(0.0), yb(0.0));
        let every = (p.samples.len() / 400).max(1);
        for s in p.samples.iter().step_by(every).chain(p.samples.last()) {
            let _ = write!(area, " {:.1},{:.1}", x(s.t), yb(s.items_left));
        }
        if let Some(last) = p.samples.last() {
            let _ = write!(area, " {:.1},{:.1}", x(last.t), yb(0.0));
        }
        let _ = writeln!(o, r##"<polygon points="{area}" fill="#e6e6e6"/>"##);
        // Axes and ticks.
        let _ = writeln!(
            o,
            r##"<rect x="{LEFT}" y="{y0}" width="{pw}" height="{PANEL_H}" fill="none" stroke="#888"/>"##
        );
        let step_h = if t_max > 6.0 * 3_600.0 { 2.0 } else { 1.0 };
        let mut h = 0.0;
        while h * 3_600.0 <= t_max {
            let _ = writeln!(
                o,
                r##"<text x="{:.1}" y="{:.1}" text-anchor="middle" fill="#444">{h} h</text>"##,
                x(h * 3_600.0),
                y0 + PANEL_H + 15.0
            );
            h += step_h;
        }
        let w_step = (w_max / 5.0).ceil().max(1.0);
        let mut w = 0.0;
        while w <= w_max {
            let _ = writeln!(
                o,
                r##"<text x="{:.1}" y="{:.1}" text-anchor="end" fill="#444">{w}</text><line x1="{LEFT}" x2="{:.1}" y1="{:.1}" y2="{:.1}" stroke="#eee"/>"##,
                LEFT - 6.0,
                y(w) + 4.0,
                LEFT + pw,
                y(w),
                y(w)
            );
            w += w_step;
        }
        for frac in [0.0, 0.5, 1.0] {
            let _ = writeln!(
                o,
                r##"<text x="{:.1}" y="{:.1}" fill="#777">{:.0} M</text>"##,
                LEFT + pw + 6.0,
                yb(job.items * frac) + 4.0,
                job.items * frac / 1e6
            );
        }
        let _ = writeln!(
            o,
            r##"<text x="{:.1}" y="{:.1}" transform="rotate(-90 {:.1} {:.1})" text-anchor="middle" fill="#444">workers</text>"##,
            LEFT - 38.0,
            y0 + PANEL_H / 2.0,
            LEFT - 38.0,
            y0 + PANEL_H / 2.0
        );
        // Deadline and bursts.
        let _ = writeln!(
            o,
            r##"<line x1="{0:.1}" x2="{0:.1}" y1="{y0}" y2="{1:.1}" stroke="#d93025" stroke-width="2"/><text x="{2:.1}" y="{3:.1}" fill="#d93025">deadline</text>"##,
            x(job.deadline_s),
            y0 + PANEL_H,
            x(job.deadline_s) + 4.0,
            y0 + 14.0
        );
        for &b in job.bursts.iter().filter(|&&b| b < t_max) {
            let _ = writeln!(
                o,
                r##"<line x1="{0:.1}" x2="{0:.1}" y1="{y0}" y2="{1:.1}" stroke="#7b1fa2" stroke-dasharray="2 3"/><text x="{2:.1}" y="{3:.1}" fill="#7b1fa2">burst</text>"##,
                x(b),
                y0 + PANEL_H,
                x(b) + 3.0,
                y0 + PANEL_H - 6.0
            );
        }
        // Worker lines.
        type Pick = fn(&Sample) -> u32;
        let series: [(Pick, &str, &str); 4] = [
            (|s| s.desired.0, SPOT, "6 4"),
            (|s| s.running.0, SPOT, ""),
            (|s| s.desired.1, ON_DEMAND, "6 4"),
            (|s| s.running.1, ON_DEMAND, ""),
        ];
        for (pick, colour, dash) in series {
            // A step line: a corner only where the count changes.
            let mut pts = String::new();
            let mut prev: Option<u32> = None;
            for s in p.samples {
                let v = pick(s);
                match prev {
                    None => {
                        let _ = write!(pts, "{:.1},{:.1}", x(s.t), y(v as f64));
                    }
                    Some(pv) if pv != v => {
                        let _ = write!(
                            pts,
                            " {:.1},{:.1} {:.1},{:.1}",
                            x(s.t),
                            y(pv as f64),
                            x(s.t),
                            y(v as f64)
                        );
                    }
                    _ => {}
                }
                prev = Some(v);
            }
            if let (Some(last), Some(v)) = (p.samples.last(), prev) {
                let _ = write!(pts, " {:.1},{:.1}", x(last.t), y(v as f64));
            }
            let _ = writeln!(
                o,
                r#"<polyline points="{pts}" fill="none" stroke="{colour}" stroke-width="{}" stroke-dasharray="{dash}"/>"#,
                if dash.is_empty() { 2.0 } else { 1.5 }
            );
        }
        let _ = writeln!(
            o,
            r#"<text x="{:.1}" y="{:.1}" font-weight="bold">{}</text>"#,
            LEFT + 6.0,
            y0 + 16.0,
            esc(&p.title)
        );
    }
    // Legend.
    let ly = height - 16.0;
    let items: [(&str, &str, &str); 4] = [
        ("spot desired", SPOT, "6 4"),
        ("spot running", SPOT, ""),
        ("on-demand desired", ON_DEMAND, "6 4"),
        ("on-demand running", ON_DEMAND, ""),
    ];
    let mut lx = LEFT;
    for (label, colour, dash) in items {
        let _ = writeln!(
            o,
            r#"<line x1="{lx}" x2="{}" y1="{ly}" y2="{ly}" stroke="{colour}" stroke-width="2" stroke-dasharray="{dash}"/><text x="{}" y="{}">{label}</text>"#,
            lx + 24.0,
            lx + 30.0,
            ly + 4.0
        );
        lx += 44.0 + 7.0 * label.len() as f64;
    }
    let _ = writeln!(
        o,
        r##"<rect x="{lx}" y="{}" width="20" height="10" fill="#e6e6e6"/><text x="{}" y="{}">items left (right axis)</text>"##,
        ly - 5.0,
        lx + 26.0,
        ly + 4.0
    );
    lx += 190.0;
    let _ = writeln!(
        o,
        r##"<rect x="{lx}" y="{}" width="20" height="10" fill="#f1e4c3"/><text x="{}" y="{}">spot drought</text>"##,
        ly - 5.0,
        lx + 26.0,
        ly + 4.0
    );
    let _ = writeln!(o, "</svg>");
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plot_has_every_series_and_marker() {
        let samples: Vec<Sample> = (0..10)
            .map(|i| Sample {
                t: i as f64 * 600.0,
                desired: (4, i % 2),
                running: (3, 0),
                items_left: 1e6 - i as f64 * 1e5,
            })
            .collect();
        let job = Job {
            title: "a <job>".into(),
            deadline_s: 7_200.0,
            items: 1e6,
            bursts: &[1_800.0],
            droughts: &[(1_800.0, 2_400.0)],
        };
        let svg = plot(
            &job,
            &[Panel {
                title: "deadline-aware".into(),
                samples: &samples,
            }],
        );
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 4);
        assert!(svg.contains(">deadline<") && svg.contains(">burst<"));
        assert!(svg.contains("a &lt;job&gt;"));
        assert!(svg.contains(r##"fill="#f1e4c3""##));
    }
}

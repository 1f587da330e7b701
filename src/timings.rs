//! `spotbatch run --timings`: where a run's time went, from the same histograms a worker exports
//! to Prometheus (`spotbatch_stage_seconds{stage}`, `spotbatch_inference_seconds`,
//! `spotbatch_batch_size`), gathered in the process by a small recorder instead of an exporter.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use metrics::{
    Counter, Gauge, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder, SharedString, Unit,
};

/// Count and sum of one histogram's values.
#[derive(Debug, Default)]
struct Sum(Mutex<(u64, f64)>);

impl HistogramFn for Sum {
    fn record(&self, value: f64) {
        if let Ok(mut s) = self.0.lock() {
            s.0 += 1;
            s.1 += value;
        }
    }
}

/// Keeps a count and a sum per histogram series; counters and gauges are not kept.
#[derive(Debug, Default, Clone)]
pub struct Timings {
    series: Arc<Mutex<BTreeMap<String, Arc<Sum>>>>,
}

/// The series name as Prometheus writes it: `name{label="value",…}`.
fn series_name(key: &Key) -> String {
    let labels: Vec<String> = key
        .labels()
        .map(|l| format!("{}=\"{}\"", l.key(), l.value()))
        .collect();
    if labels.is_empty() {
        key.name().to_string()
    } else {
        format!("{}{{{}}}", key.name(), labels.join(","))
    }
}

impl Recorder for Timings {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, _: &Key, _: &Metadata<'_>) -> Counter {
        Counter::noop()
    }

    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::noop()
    }

    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        let Ok(mut series) = self.series.lock() else {
            return Histogram::noop();
        };
        let sum = series.entry(series_name(key)).or_default();
        Histogram::from_arc(Arc::clone(sum))
    }
}

impl Timings {
    /// Installs a new one as the process's metrics recorder.
    pub fn install() -> anyhow::Result<Self> {
        let t = Self::default();
        metrics::set_global_recorder(t.clone())
            .map_err(|e| anyhow::anyhow!("--timings: cannot install the recorder: {e}"))?;
        Ok(t)
    }

    /// `(count, sum)` of a series.
    fn get(&self, series: &str) -> (u64, f64) {
        self.series
            .lock()
            .ok()
            .and_then(|s| s.get(series).and_then(|v| v.0.lock().ok().map(|v| *v)))
            .unwrap_or((0, 0.0))
    }

    /// The report: per stage, how often it ran, its mean and its total; the model's share of
    /// the run's wall time (near 1 when the model is the bottleneck).
    pub fn report(&self, wall: f64, sessions: usize) -> String {
        let mut out = format!(
            "timings (wall {wall:.2} s; a stage's total adds up all its runs, those at the same time on \
             other threads too):\n"
        );
        let mut line = |name: &str, per: &str, (n, total): (u64, f64)| {
            if n > 0 {
                out.push_str(&format!(
                    "  {name:<15} {n:>8} {per:<7} × {:>9.3} ms = {total:>8.3} s\n",
                    total * 1e3 / n as f64
                ));
            }
        };
        let stage = |name: &str| format!("spotbatch_stage_seconds{{stage=\"{name}\"}}");
        let inference = "spotbatch_inference_seconds".to_string();
        for (name, series, per) in [
            ("fetch", stage("fetch"), "items"),
            ("decode", stage("decode"), "items"),
            ("gpu_preprocess", stage("gpu_preprocess"), "batches"),
            ("gpu_wait", stage("gpu_wait"), "batches"),
            ("inference", inference.clone(), "batches"),
            ("postprocess", stage("postprocess"), "batches"),
            ("write", stage("write"), "shards"),
        ] {
            line(name, per, self.get(&series));
        }
        let (batches, items) = self.get("spotbatch_batch_size");
        if batches > 0 && wall > 0.0 {
            out.push_str(&format!(
                "  {items:.0} items in {batches} batches ({:.1} per batch); the model ran {:.0} % of the wall time{}\n",
                items / batches as f64,
                100.0 * self.get(&inference).1 / wall,
                if sessions > 1 {
                    format!(" (summed over {sessions} model sessions)")
                } else {
                    String::new()
                }
            ));
        }
        out
    }
}

//! The process's Prometheus recorder: latencies (`*_seconds`) and batch sizes as histograms with
//! buckets, so dashboards can take p50/p99 across processes with `histogram_quantile`.

use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};

/// Installs the recorder for this process; the handle renders the exposition for `/metrics`.
pub fn install_prometheus() -> Result<PrometheusHandle, BuildError> {
    const SECONDS: &[f64] = &[
        0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
        300.0,
    ];
    const SIZES: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS)?
        .set_buckets_for_metric(Matcher::Full("spotbatch_batch_size".into()), SIZES)?
        .set_buckets_for_metric(
            Matcher::Full("spotbatch_batch_fill_ratio".into()),
            &[0.125, 0.25, 0.5, 0.75, 0.9, 1.0],
        )?
        .install_recorder()
}

//! The worker's metric series, registered at zero when it starts (names and labels follow the
//! metrics spec in the README: `spotbatch_<name>_<unit>[_total]`).

/// Registers the worker's series at zero, so that a scrape before the first event already shows
/// them and the first event is an increase (Prometheus's `rate()` and `histogram_quantile()` see
/// nothing in a series that appears with its first value already counted).
pub fn register_metrics() {
    for reason in ["preemption", "shutdown", "failed"] {
        metrics::counter!("spotbatch_leases_released_total", "reason" => reason).increment(0);
    }
    for source in ["signal", "aws", "gcp", "azure"] {
        metrics::counter!("spotbatch_preemption_notices_total", "source" => source).increment(0);
    }
    metrics::counter!("spotbatch_redeliveries_total").increment(0);
    metrics::counter!("spotbatch_items_redone_total").increment(0);
    metrics::counter!("spotbatch_lease_errors_total").increment(0);
    for h in [
        "spotbatch_recovery_seconds",
        "spotbatch_notice_to_release_seconds",
        "spotbatch_inference_seconds",
        "spotbatch_batch_size",
        "spotbatch_batch_fill_ratio",
    ] {
        // Registering is enough: the exporter renders an empty histogram (count 0).
        let _ = metrics::histogram!(h);
    }
    // Work stealing.
    metrics::counter!("spotbatch_steal_attempts_total").increment(0);
    for result in ["succeeded", "empty", "failed"] {
        metrics::counter!("spotbatch_steals_total", "result" => result).increment(0);
    }
    for d in ["given", "taken", "returned", "offered"] {
        metrics::counter!("spotbatch_shards_handed_over_total", "direction" => d).increment(0);
    }
    let _ = metrics::histogram!("spotbatch_handoff_seconds");
}

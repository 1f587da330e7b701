//! A worker serves `/metrics`, `/healthz` and `/readyz`: a real run is scraped while it works and
//! the metric names, types and labels are checked against the catalogue in DESIGN.md.

mod common;

use std::net::TcpListener;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;

#[test]
fn a_worker_serves_its_metrics_while_it_works() {
    let job = JobDir::digits(3);
    let manifest = job.manifest(&[("shard_size = 64", "shard_size = 20")]);
    run_ok(spotbatch().arg("enqueue").arg(&manifest));
    let addr = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let queue = format!("sqlite://{}", job.path().join("queue.db").display());
    let mut w = spotbatch()
        .args([
            "worker",
            "--queue",
            &queue,
            "--exit-when-empty",
            "--throttle-batch-ms",
            "400",
        ])
        .arg("--metrics-addr")
        .arg(addr.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let until = Instant::now() + Duration::from_secs(60);
    let body = loop {
        assert!(Instant::now() < until, "no items in the worker's metrics");
        if let Some((200, body)) = http_get(addr, "/metrics") {
            if body.contains("spotbatch_items_total{") {
                break body;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(http_get(addr, "/healthz").map(|r| r.0), Some(200));
    assert_eq!(http_get(addr, "/readyz").map(|r| r.0), Some(200));
    let status = wait_bounded(&mut w, Duration::from_secs(60));
    assert!(status.is_some_and(|s| s.success()));

    // Types as declared, labels as specified.
    let types: std::collections::HashMap<&str, &str> = body
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .collect();
    for (name, kind) in [
        ("spotbatch_items_total", "counter"),
        ("spotbatch_shards_total", "counter"),
        ("spotbatch_inference_seconds", "histogram"),
        ("spotbatch_batch_size", "histogram"),
        ("spotbatch_stage_seconds", "histogram"),
    ] {
        assert_eq!(types.get(name).copied(), Some(kind), "{name} in\n{body}");
    }
    let job_id = job
        .job_out()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .to_string();
    assert!(
        body.contains(&format!(
            "spotbatch_items_total{{job=\"{job_id}\",outcome=\"ok\"}}"
        )),
        "{body}"
    );
    // Every stage a CPU job goes through is timed.
    for stage in ["fetch", "decode", "postprocess", "write"] {
        assert!(
            body.contains(&format!(
                "spotbatch_stage_seconds_bucket{{stage=\"{stage}\""
            )),
            "stage {stage} in\n{body}"
        );
    }
    assert!(
        body.contains("spotbatch_inference_seconds_bucket{le=\"0.005\"}"),
        "{body}"
    );
    for line in body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        assert!(
            line.starts_with("spotbatch_"),
            "a metric outside the catalogue: {line}"
        );
    }
}

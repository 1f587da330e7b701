//! The Grafana dashboard against a real Prometheus (Debian's package, started on loopback by
//! `scripts/services.sh`, scraping every second) that scraped a real run: a coordinator and three
//! workers on SQLite with prices, one spot worker preempted (SIGTERM) mid-job and replaced, a poison
//! input. Every panel's query must return data (the GPU panel only on a machine with a GPU, and it
//! says so otherwise). The job has a one-hour deadline: the coordinator's fleet metrics (deadline,
//! projected finish, risk, desired and running workers by capacity) are scraped and checked. Then
//! `spotbatch cost` must match a hand computation from the scraped cost metrics, worker by worker.

mod common;

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
}

/// Prometheus's URL and its file_sd folder, which `make test` always provides.
fn prometheus() -> (String, PathBuf) {
    let url = std::env::var("SPOTBATCH_TEST_PROMETHEUS_URL")
        .expect("SPOTBATCH_TEST_PROMETHEUS_URL is not set: run the tests with `make test`");
    let targets = std::env::var("SPOTBATCH_TEST_PROMETHEUS_TARGETS")
        .expect("SPOTBATCH_TEST_PROMETHEUS_TARGETS is not set: run the tests with `make test`");
    (url, PathBuf::from(targets))
}

fn sb() -> Command {
    let mut c = spotbatch();
    c.env_remove("SPOTBATCH_TOKEN")
        .env_remove("SPOTBATCH_COORDINATOR");
    c
}

/// A worker with its prices and metrics address, logging to `dir/ID.log`.
fn worker(coord: &str, id: &str, dir: &Path, metrics: SocketAddr, prices: &[&str]) -> Child {
    sb().args([
        "worker",
        "--coordinator",
        coord,
        "--id",
        id,
        "--prefetch",
        "3",
    ])
    .args(["--throttle-batch-ms", "200", "--device", "cpu"])
    .arg("--metrics-addr")
    .arg(metrics.to_string())
    .args(["--metrics-linger-ms", "2500"])
    .args(prices)
    .env("SPOTBATCH_LOG", "spotbatch=info,spotbatch_worker=info")
    .stdout(Stdio::null())
    .stderr(std::fs::File::create(dir.join(format!("{id}.log"))).expect("log"))
    .spawn()
    .expect("spawn worker")
}

struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// An instant query; the result vector.
fn query(prom: &str, expr: &str) -> Vec<serde_json::Value> {
    let addr: SocketAddr = prom
        .trim_start_matches("http://")
        .parse()
        .expect("prometheus address");
    let enc: String = expr
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect();
    let (status, body) =
        http_get(addr, &format!("/api/v1/query?query={enc}")).expect("prometheus answers");
    assert_eq!(status, 200, "{expr}: {body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(v["status"], "success", "{expr}: {body}");
    v["data"]["result"].as_array().cloned().unwrap_or_default()
}

fn value(sample: &serde_json::Value) -> f64 {
    sample["value"][1]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or(f64::NAN)
}

#[test]
fn every_panel_has_data_from_a_real_run_and_cost_matches_the_metrics() {
    let (prom, targets) = prometheus();
    let job = JobDir::digits(1);
    let poison = job.images().join("poison");
    std::fs::create_dir_all(&poison).expect("mkdir");
    std::fs::write(poison.join("text.png"), b"not an image\n").expect("write");
    let n_inputs = job.input_keys().len();
    let manifest = job.manifest(&[
        ("batch_size = 32", "batch_size = 8"),
        ("shard_size = 64", "shard_size = 30"),
        (
            "max_attempts = 3",
            "max_attempts = 3\n\n[job]\ndeadline_hours = 1\nmax_on_demand_workers = 2",
        ),
    ]);
    let dir = job.path();
    let (grpc, http) = (free_addr(), free_addr());
    let mut procs = Procs(Vec::new());
    let queue = format!("sqlite://{}", dir.join("queue.db").display());
    procs.0.push(
        sb().args([
            "coordinator",
            "--queue",
            &queue,
            "--heartbeat-ms",
            "300",
            "--insecure-no-auth",
        ])
        .arg("--listen")
        .arg(grpc.to_string())
        .arg("--http")
        .arg(http.to_string())
        .arg("--state")
        .arg(dir.join("state"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("coordinator.log")).expect("log"))
        .spawn()
        .expect("spawn coordinator"),
    );
    wait_ready(http, || "coordinator".into());
    let coord = format!("http://{grpc}");

    let spot = [
        "--price-per-hour",
        "1.2",
        "--on-demand-price-per-hour",
        "4.0",
    ];
    let on_demand = ["--capacity", "on-demand", "--price-per-hour", "4.0"];
    let addrs = [free_addr(), free_addr(), free_addr()];
    // Prometheus scrapes the coordinator and the three workers (w3 starts later).
    // The job id is the manifest's digest, the same in every run: a `run` label keeps this run's
    // series apart from an earlier run's on the same Prometheus.
    let run = unique("dash");
    let file: Vec<serde_json::Value> = [
        ("coordinator", http),
        ("w1", addrs[0]),
        ("w2", addrs[1]),
        ("w3", addrs[2]),
    ]
    .iter()
    .map(|(id, a)| serde_json::json!({"targets": [a.to_string()], "labels": {"worker": id, "run": run}}))
    .collect();
    let sd = targets.join(format!("{run}.json"));
    std::fs::write(&sd, serde_json::to_vec(&file).expect("json")).expect("write targets");

    let w1 = worker(&coord, "w1", dir, addrs[0], &spot);
    procs
        .0
        .push(worker(&coord, "w2", dir, addrs[1], &on_demand));
    // Prometheus must have scraped both workers before anything happens, or their first events
    // would be in their first samples, where rate() sees no increase.
    let until = Instant::now() + Duration::from_secs(30);
    while query(&prom, "sum(up{worker=~\"w1|w2\"})")
        .first()
        .map(value)
        .unwrap_or(0.0)
        < 2.0
    {
        assert!(
            Instant::now() < until,
            "Prometheus did not scrape w1 and w2"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Only now the job: the workers must not have worked through it while Prometheus was still
    // finding them (the preemption below must catch w1 holding shards of its own).
    let out = run_ok(
        sb().args(["submit", "--coordinator", &coord])
            .arg(&manifest),
    );
    let job_id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    // Preempt w1 once it has finished a shard and holds more.
    let until = Instant::now() + Duration::from_secs(60);
    while job
        .path()
        .join("out")
        .read_dir()
        .map(|mut d| d.next().is_none())
        .unwrap_or(true)
        || job.done_markers() < 2
    {
        assert!(Instant::now() < until, "no shard done within 60 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    sigterm(&w1);
    let mut w1 = w1;
    let st = wait_bounded(&mut w1, Duration::from_secs(60));
    assert!(st.is_some_and(|s| s.success()), "w1 did not drain: {st:?}");
    procs.0.push(worker(&coord, "w3", dir, addrs[2], &spot));
    let shards = n_inputs.div_ceil(30);
    let until = Instant::now() + Duration::from_secs(120);
    while job.done_markers() < shards {
        assert!(
            Instant::now() < until,
            "job not done: {} of {shards} shards; w2: {}",
            job.done_markers(),
            std::fs::read_to_string(dir.join("w2.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // A few scrapes after the last item (workers now idle: nothing more is charged to the job).
    std::thread::sleep(Duration::from_secs(4));

    // Issue 23: the fleet as the coordinator saw it, scraped.
    let scalar = |expr: &str| query(&prom, expr).first().map(value).unwrap_or(f64::NAN);
    let of_job = format!("job=\"{job_id}\",run=\"{run}\"");
    let deadline = scalar(&format!("max(spotbatch_job_deadline_seconds{{{of_job}}})"));
    let finish = scalar(&format!(
        "max(spotbatch_projected_finish_seconds{{{of_job}}})"
    ));
    assert!(
        deadline - finish > 3_000.0,
        "done well before its one-hour deadline: deadline {deadline}, finished {finish}"
    );
    assert_eq!(
        scalar(&format!("max(spotbatch_deadline_miss_risk{{{of_job}}})")),
        0.0,
        "done before the deadline: no risk left"
    );
    let most = |metric: &str, capacity: &str| {
        scalar(&format!(
            "max(max_over_time({metric}{{capacity=\"{capacity}\",run=\"{run}\"}}[10m]))"
        ))
    };
    assert!(most("spotbatch_running_workers", "spot") >= 1.0);
    assert!(
        most("spotbatch_running_workers", "on_demand") >= 1.0,
        "w2 runs on demand"
    );
    assert!(most("spotbatch_desired_workers", "spot") >= 1.0);
    // An hour for a minute's work: never on-demand; done, nothing wanted.
    assert_eq!(most("spotbatch_desired_workers", "on_demand"), 0.0);
    assert_eq!(
        scalar(&format!("max(spotbatch_desired_workers{{run=\"{run}\"}})")),
        0.0
    );
    let st = run_ok(sb().args(["status", "--json", "--coordinator", &coord, &job_id]));
    let st: serde_json::Value = serde_json::from_slice(&st.stdout).expect("status --json");
    assert_eq!(st["fleet"]["mode"], "done", "{st}");
    assert!(
        st["fleet"]["deadline_unix_s"]
            .as_f64()
            .is_some_and(|d| (d - deadline).abs() < 1e-3),
        "{st}"
    );
    assert_eq!(st["fleet"]["shard_size"], "30", "{st}");

    let dash: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("deploy/grafana/spotbatch.json")).expect("dashboard"),
    )
    .expect("dashboard JSON");
    let gpu = spotbatch_worker::device::cuda_device_count().is_ok_and(|n| n > 0);
    let mut empty = Vec::new();
    let mut checked = 0;
    for p in dash["panels"].as_array().expect("panels") {
        for t in p["targets"].as_array().expect("targets") {
            let expr = t["expr"].as_str().expect("expr");
            if expr.contains("spotbatch_gpu_") && !gpu {
                eprintln!(
                    "SKIPPED panel {:?}: no GPU here, so no NVML metrics",
                    p["title"]
                );
                continue;
            }
            let result = query(&prom, expr);
            checked += 1;
            if result.is_empty() || result.iter().all(|s| value(s).is_nan()) {
                empty.push(format!("{:?}: {expr}", p["title"]));
            }
        }
    }
    assert!(checked >= 15, "only {checked} queries checked");
    assert!(
        empty.is_empty(),
        "queries without data:\n{}\nw1: {}",
        empty.join("\n"),
        std::fs::read_to_string(dir.join("w1.log")).unwrap_or_default()
    );

    // Cost: per worker, the last scraped job cost against the worker's ledger.
    let scraped: std::collections::BTreeMap<String, f64> = query(
        &prom,
        &format!("max by (worker) (max_over_time(spotbatch_job_cost_dollars_total{{job=\"{job_id}\",run=\"{run}\"}}[10m]))"),
    )
    .iter()
    .map(|s| (s["metric"]["worker"].as_str().unwrap_or("").to_string(), value(s)))
    .collect();
    let items_scraped: f64 = query(
        &prom,
        &format!(
            "sum(max_over_time(spotbatch_items_total{{job=\"{job_id}\",run=\"{run}\"}}[10m]))"
        ),
    )
    .first()
    .map(value)
    .unwrap_or(f64::NAN);
    // Stop w2 and w3: their ledgers are written as they exit.
    for c in procs.0.iter().skip(1) {
        sigterm(c);
    }
    for c in procs.0.iter_mut().skip(1) {
        assert!(wait_bounded(c, Duration::from_secs(60)).is_some_and(|s| s.success()));
    }
    let out = run_ok(sb().args(["cost", "--json"]).arg(&manifest));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).expect("cost --json");
    eprintln!("cost: {r:#}\nscraped per worker: {scraped:?}, items {items_scraped}");
    let ledgers = r["per_worker"].as_array().expect("per_worker");
    // w1 and w2 worked on the job; w3 did if it leased a shard before the job ran out.
    assert!(ledgers.len() >= 2, "{r}");
    let mut sum = 0.0;
    for l in ledgers {
        let w = l["worker"].as_str().expect("worker");
        let dollars = l["dollars"].as_f64().expect("dollars");
        let price = l["price_per_hour"].as_f64().expect("price");
        sum += dollars;
        // The coordinator names workers `ID-N-…`; Prometheus knows them by the target's label.
        let short = w.split('-').next().unwrap_or(w);
        let got = scraped.get(short).copied().unwrap_or(f64::NAN);
        // w1 was scraped up to a second before its last tick at exit; the others were idle.
        let tolerance = if short == "w1" {
            2.5 * price / 3600.0
        } else {
            1e-9
        };
        assert!(
            (dollars - got).abs() <= tolerance,
            "{w}: ledger ${dollars} vs scraped ${got}"
        );
        let od = l["on_demand_dollars"].as_f64().expect("od");
        let od_price = l["on_demand_price_per_hour"].as_f64().expect("od price");
        assert!((od - dollars * od_price / price).abs() < 1e-9, "{l}");
    }
    let spent = r["dollars"].as_f64().expect("dollars");
    let od = r["on_demand_dollars"].as_f64().expect("od");
    let items = r["items"].as_u64().expect("items");
    assert!((spent - sum).abs() < 1e-12);
    assert!(spent > 0.0 && od > spent, "{r}");
    assert_eq!(items as usize, n_inputs);
    assert_eq!(items as f64, items_scraped, "items in markers vs scraped");
    assert!((r["saved_dollars"].as_f64().expect("saved") - (od - spent)).abs() < 1e-12);
    assert!(
        (r["dollars_per_1k_items"].as_f64().expect("per 1k") - spent / items as f64 * 1000.0).abs()
            < 1e-12
    );
    assert!(
        r["items_redone"].as_u64().expect("redone") > 0,
        "w1's released shards were redone: {r}"
    );

    // The report: a self-contained page whose charts carry the run's real data points.
    let page = dir.join("report.html");
    run_ok(
        sb().args(["report"])
            .arg(&manifest)
            .arg("--html")
            .arg(&page),
    );
    let html = std::fs::read_to_string(&page).expect("report written");
    for forbidden in ["<script src", "<link", "src=\"http", "href=\"http"] {
        assert!(!html.contains(forbidden), "not self-contained: {forbidden}");
    }
    for id in ["id=\"throughput\"", "id=\"timeline\"", "id=\"cost\""] {
        assert!(html.contains(id), "no chart {id}");
    }
    let tag = "id=\"spotbatch-data\">";
    let start = html.find(tag).expect("embedded data") + tag.len();
    let end = start + html[start..].find("</script>").expect("end of data");
    let data: serde_json::Value =
        serde_json::from_str(&html[start..end].replace("<\\/", "</")).expect("data JSON");
    // Rows written over time: one step per shard done, up to every row of the job (w1's partial
    // rows count once, in the shard the next holder finished), drawn to that total; the rate is
    // the second series.
    let cumulative: Vec<u64> = data["cumulative"]
        .as_array()
        .expect("cumulative")
        .iter()
        .map(|w| w["items"].as_u64().unwrap_or(0))
        .collect();
    assert!(
        cumulative.windows(2).all(|w| w[0] <= w[1]),
        "{cumulative:?}"
    );
    assert_eq!(cumulative.last().copied(), Some(n_inputs as u64), "{data}");
    assert_eq!(cumulative.len(), n_inputs.div_ceil(30));
    assert!(
        html.contains(&format!("data-final-items=\"{n_inputs}\"")),
        "the chart draws the data"
    );
    assert!(html.contains("class=\"rate\""));
    assert!(data["rate"].as_array().is_some_and(|r| !r.is_empty()));
    let shards = data["shards"].as_array().expect("shards");
    // Shards: every done marker is a done bar; w1's notice and the shards it handed back are
    // there, and the recoveries of those shards.
    assert_eq!(
        shards.iter().filter(|b| b["outcome"] == "done").count(),
        n_inputs.div_ceil(30)
    );
    assert!(shards.iter().any(|b| {
        b["worker"].as_str().is_some_and(|w| w.starts_with("w1"))
            && (b["outcome"] == "released" || b["outcome"] == "partial")
    }));
    let notices = data["notices"].as_array().expect("notices");
    // w1's notice mid-job; the others got theirs when the test stopped them.
    assert!(notices
        .iter()
        .any(|n| n["worker"].as_str().is_some_and(|w| w.starts_with("w1"))));
    assert_eq!(html.matches("class=\"notice\"").count(), notices.len());
    let recoveries = data["recoveries"].as_array().expect("recoveries");
    assert!(!recoveries.is_empty());
    assert_eq!(html.matches("class=\"recovery\"").count(), recoveries.len());
    // Cost: the same figures as `spotbatch cost`.
    assert_eq!(data["cost"]["dollars"], r["dollars"]);
    assert_eq!(html.matches("<rect class=\"spent\"").count(), ledgers.len());
    let _ = std::fs::remove_file(sd);
}

//! The coordinator as a real process on loopback with real worker processes: submit → status →
//! completion (SQLite and SQS queues), a coordinator killed mid-job and restarted on the same
//! state, an idempotent resubmit, the bearer token, size limits and bad manifests over the API.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::coord::*;
use common::*;

fn worker(coord: &str, id: &str, dir: &Path, throttle_ms: u64) -> Child {
    sb(Some(TOKEN))
        .args([
            "worker",
            "--coordinator",
            coord,
            "--exit-when-empty",
            "--id",
            id,
        ])
        .args(["--throttle-batch-ms", &throttle_ms.to_string()])
        .env("SPOTBATCH_LOG", "spotbatch=info,spotbatch_worker=info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join(format!("{id}.log"))).unwrap())
        .spawn()
        .unwrap()
}

fn wait_exit(c: &mut Child, what: &str, dir: &Path) {
    let status = wait_bounded(c, Duration::from_secs(120));
    assert!(
        status.is_some_and(|s| s.success()),
        "{what} did not finish ({status:?}): {}",
        std::fs::read_to_string(dir.join(format!("{what}.log"))).unwrap_or_default()
    );
}

/// The job finished: every input one row, and `status --json` agrees with the files.
fn check_finished(coord: &str, job_id: &str, job: &JobDir) {
    let rows = job.one_row_per_input();
    let failed = rows.values().filter(|r| !r["error"].is_null()).count() as u64;
    // Progress is read from the done markers; give the coordinator one refresh.
    let s = wait_done(coord, job_id, Duration::from_secs(10));
    assert_eq!(s["job"], job_id);
    assert_eq!(s["items"]["total"], rows.len() as u64, "{s}");
    assert_eq!(s["items"]["done"], rows.len() as u64, "{s}");
    assert_eq!(s["items"]["failed"], failed, "{s}");
    assert_eq!(s["shards"]["done"], job.done_markers() as u64, "{s}");
    assert_eq!(s["shards"]["total"], s["shards"]["done"], "{s}");
    assert_eq!(s["dead_lettered"].as_array().map(Vec::len), Some(0), "{s}");
    assert_eq!(s["eta_s"], 0.0, "{s}");
}

fn two_workers(queue: &str) {
    let job = JobDir::digits(1);
    let manifest = job.manifest(&[("shard_size = 64", "shard_size = 20")]);
    let coord = Coord::start(job.path(), queue, free_addr(), free_addr());
    let url = coord.url();
    let (job_id, said) = submit(&url, &manifest);
    assert!(job_id.starts_with("digits-"), "{job_id}");
    assert!(
        said.contains("27 shards (27 enqueued, 0 already done), 540 inputs"),
        "{said}"
    );
    let mut w1 = worker(&url, "w1", job.path(), 30);
    let mut w2 = worker(&url, "w2", job.path(), 30);
    // While it runs, the coordinator sees both workers.
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let s = status_json(&url, &job_id);
        let alive = s["workers"]
            .as_array()
            .map(|w| w.iter().filter(|w| w["alive"] == true).count())
            .unwrap_or(0);
        if alive == 2 || s["state"] == "done" {
            break;
        }
        assert!(Instant::now() < until, "workers never registered: {s}");
        std::thread::sleep(Duration::from_millis(100));
    }
    wait_exit(&mut w1, "w1", job.path());
    wait_exit(&mut w2, "w2", job.path());
    check_finished(&url, &job_id, &job);
    // Gone workers are marked dead after three missed heartbeats (300 ms each here).
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let s = status_json(&url, &job_id);
        let workers = s["workers"].as_array().cloned().unwrap_or_default();
        if workers.len() == 2 && workers.iter().all(|w| w["alive"] == false) {
            break;
        }
        assert!(Instant::now() < until, "exited workers still alive: {s}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Both did work.
    for w in ["w1", "w2"] {
        let log = std::fs::read_to_string(job.path().join(format!("{w}.log"))).unwrap();
        assert!(!log.contains(": 0 shards done"), "{w} did nothing: {log}");
    }
    // Resubmitting the finished job enqueues nothing.
    let (again, said) = submit(&url, &manifest);
    assert_eq!(again, job_id);
    assert!(said.contains("(0 enqueued, 27 already done)"), "{said}");
    let depth = run_ok(sb(None).args(["queue", "depth", queue]));
    assert_eq!(
        String::from_utf8_lossy(&depth.stdout).trim(),
        "visible 0 in_flight 0 dead 0"
    );
    let jobs = run_ok(sb(Some(TOKEN)).args(["jobs", "--coordinator", &url]));
    assert_eq!(
        String::from_utf8_lossy(&jobs.stdout).trim(),
        format!("{job_id}\tdone\t540/540 items")
    );
    // Metrics are served.
    let (code, body) = http_get(coord.http, "/metrics").expect("metrics answer");
    assert_eq!(code, 200);
    assert!(
        body.contains("spotbatch_job_items{job=\"")
            && body.contains("spotbatch_workers{state=\"alive\"}")
            && body.contains("spotbatch_queue_depth{queue=\""),
        "{body}"
    );
}

#[test]
fn submit_status_completion_with_two_workers_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let queue = format!("sqlite://{}", dir.path().join("q.db").display());
    two_workers(&queue);
}

#[test]
fn submit_status_completion_with_two_workers_on_sqs() {
    let endpoint = std::env::var("SPOTBATCH_TEST_SQS_ENDPOINT").expect(
        "SPOTBATCH_TEST_SQS_ENDPOINT is not set: run the tests with `make test`, which starts moto",
    );
    let queue = format!(
        "sqs://{}?region=us-east-1&endpoint={endpoint}",
        unique("coord")
    );
    run_ok(sb(None).args(["queue", "create", &queue, "--dlq"]));
    two_workers(&queue);
}

#[test]
fn a_restarted_coordinator_rebuilds_progress_and_the_job_completes() {
    let job = JobDir::digits(1);
    let manifest = job.manifest(&[("shard_size = 64", "shard_size = 10")]);
    let queue = format!("sqlite://{}", job.path().join("q.db").display());
    let (grpc, http) = (free_addr(), free_addr());
    let mut coord = Coord::start(job.path(), &queue, grpc, http);
    let url = coord.url();
    let (job_id, _) = submit(&url, &manifest);
    let mut w1 = worker(&url, "w1", job.path(), 300);
    let mut w2 = worker(&url, "w2", job.path(), 300);
    let until = Instant::now() + Duration::from_secs(60);
    while job.done_markers() < 5 {
        assert!(Instant::now() < until, "no progress");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Kill the coordinator; the workers keep working from the queue.
    coord.child.kill().unwrap();
    coord.child.wait().unwrap();
    let before = job.done_markers();
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        job.done_markers() > before,
        "workers stopped without the coordinator"
    );
    assert!(w1.try_wait().unwrap().is_none() || job.done_markers() == 54);
    // A new coordinator on the same state: the job and its progress are back.
    let coord2 = Coord::start(job.path(), &queue, grpc, http);
    let s = status_json(&url, &job_id);
    let seen = job.done_markers() as u64;
    assert_eq!(s["items"]["total"], 540, "{s}");
    let done = s["shards"]["done"].as_u64().unwrap();
    assert!(
        done >= before as u64 && done <= seen,
        "{done} vs {before}..{seen}: {s}"
    );
    assert_eq!(s["items"]["done"].as_u64().unwrap(), done * 10, "{s}");
    wait_exit(&mut w1, "w1", job.path());
    wait_exit(&mut w2, "w2", job.path());
    check_finished(&coord2.url(), &job_id, &job);
    // The workers registered again with the new coordinator.
    let log = std::fs::read_to_string(job.path().join("w1.log")).unwrap();
    let log2 = std::fs::read_to_string(job.path().join("w2.log")).unwrap();
    assert!(
        log.contains("registered again") || log2.contains("registered again"),
        "{log}\n{log2}"
    );
}

/// Workers that start before their coordinator (a fleet scaled up during its restart) keep
/// trying to register, soon at first and then less often, and work once it answers.
#[test]
fn a_worker_started_before_its_coordinator_registers_when_it_comes_up() {
    let job = JobDir::digits(1);
    let manifest = job.manifest(&[("shard_size = 64", "shard_size = 60")]);
    let queue = format!("sqlite://{}", job.path().join("q.db").display());
    // The shards wait on the coordinator's queue before anything runs.
    run_ok(sb(None).args(["enqueue", "--queue", &queue]).arg(&manifest));
    let (grpc, http) = (free_addr(), free_addr());
    let url = format!("http://{grpc}");
    let mut w = worker(&url, "early", job.path(), 0);
    let log = || std::fs::read_to_string(job.path().join("early.log")).unwrap_or_default();
    let message = "retrying registration";
    let until = Instant::now() + Duration::from_secs(30);
    while log_numbers(&log(), message, "retry_in_ms").len() < 5 {
        assert!(
            w.try_wait().unwrap().is_none(),
            "the worker gave up without a coordinator: {}",
            log()
        );
        assert!(Instant::now() < until, "no retries logged: {}", log());
        std::thread::sleep(Duration::from_millis(50));
    }
    let waits = log_numbers(&log(), message, "retry_in_ms");
    // 0.2 s doubling (plus < 100 ms of jitter), not a fixed interval.
    assert!(waits[0] < 300, "{waits:?}");
    assert!(waits[4] >= 3200 && waits[4] < 3300, "{waits:?}");
    assert!(waits.windows(2).all(|p| p[1] > p[0]), "{waits:?}");
    let _coord = Coord::start(job.path(), &queue, grpc, http);
    wait_exit(&mut w, "early", job.path());
    let rows = job.one_row_per_input();
    assert_eq!(rows.len(), 540);
    assert_eq!(job.done_markers(), 9);
    let log = log();
    assert_eq!(
        log.matches("registered with the coordinator").count(),
        1,
        "{log}"
    );
}

#[test]
fn the_api_requires_the_token_and_limits_requests() {
    let job = JobDir::digits(30);
    let queue = format!("sqlite://{}", job.path().join("q.db").display());
    let coord = Coord::start(job.path(), &queue, free_addr(), free_addr());
    let url = coord.url();
    for token in [None, Some("wrong-token")] {
        let out = sb(token)
            .args(["jobs", "--coordinator", &url])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{token:?} accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("refused the token"), "{err}");
    }
    run_ok(sb(Some(TOKEN)).args(["jobs", "--coordinator", &url]));
    // The coordinator logs the refusals without the token.
    let log = std::fs::read_to_string(job.path().join("coordinator.log")).unwrap();
    assert!(
        log.contains("rejected a request without a valid bearer token"),
        "{log}"
    );
    assert!(!log.contains("wrong-token"), "{log}");

    // A malformed manifest: one line per field, exit 2, nothing submitted.
    let bad = job.manifest(&[
        ("batch_size = 32", "batch_size = -1"),
        ("top_k = 3", "top_k = \"x\""),
    ]);
    let out = sb(Some(TOKEN))
        .args(["submit", "--coordinator", &url])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.lines().any(|l| l.contains("model.batch_size")), "{err}");
    assert!(
        err.lines().any(|l| l.contains("postprocess.top_k")),
        "{err}"
    );
    // An output with `..` is refused.
    let up = job.manifest(&[("uri = \"./out\"", "uri = \"./out/../../elsewhere\"")]);
    let out = sb(Some(TOKEN))
        .args(["submit", "--coordinator", &url])
        .arg(&up)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("output.uri: must not contain `..`"));

    // Oversize requests are refused, and the coordinator keeps serving.
    for size in [300 * 1024, 3 * 1024 * 1024] {
        let big = job.path().join("big.toml");
        let mut text = std::fs::read_to_string(job.path().join("job.toml")).unwrap();
        text.push_str(&format!("\n# {}\n", "x".repeat(size)));
        std::fs::write(&big, text).unwrap();
        let out = sb(Some(TOKEN))
            .args(["submit", "--coordinator", &url])
            .arg(&big)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{size} bytes accepted");
        let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
        assert!(err.contains("limit") || err.contains("too large"), "{err}");
    }
    let jobs = run_ok(sb(Some(TOKEN)).args(["jobs", "--coordinator", &url]));
    assert_eq!(String::from_utf8_lossy(&jobs.stdout).trim(), "");
    let (code, _) = http_get(coord.http, "/healthz").unwrap();
    assert_eq!(code, 200);

    // Started without a token and without --insecure-no-auth, it refuses to start.
    let out = sb(None)
        .args(["coordinator", "--queue", &queue, "--state"])
        .arg(job.path().join("state"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("set SPOTBATCH_TOKEN"));
}

#[test]
fn the_api_over_tls() {
    let job = JobDir::digits(30);
    let d = job.path();
    make_tls(d);
    let queue = format!("sqlite://{}", d.join("q.db").display());
    let (grpc, http) = (free_addr(), free_addr());
    let mut child = sb(Some(TOKEN))
        .args(["coordinator", "--queue", &queue])
        .arg("--listen")
        .arg(grpc.to_string())
        .arg("--http")
        .arg(http.to_string())
        .arg("--state")
        .arg(d.join("state"))
        .arg("--tls-cert")
        .arg(d.join("server.pem"))
        .arg("--tls-key")
        .arg(d.join("server.key"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(d.join("coordinator.log")).unwrap())
        .spawn()
        .unwrap();
    wait_ready(http, || "TLS coordinator".into());
    let https = format!("https://{grpc}");
    let ok = sb(Some(TOKEN))
        .args(["jobs", "--coordinator", &https, "--tls-ca"])
        .arg(d.join("ca.pem"))
        .output()
        .unwrap();
    // Plain text to the TLS port, and TLS without the CA, both fail.
    let plain = sb(Some(TOKEN))
        .args(["jobs", "--coordinator", &format!("http://{grpc}")])
        .output()
        .unwrap();
    let no_ca = sb(Some(TOKEN))
        .args(["jobs", "--coordinator", &https])
        .output()
        .unwrap();
    let other = d.join("other");
    std::fs::create_dir_all(&other).unwrap();
    make_tls(&other);
    let wrong_ca = sb(Some(TOKEN))
        .args(["jobs", "--coordinator", &https, "--tls-ca"])
        .arg(other.join("ca.pem"))
        .output()
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        ok.status.success(),
        "{}\ncoordinator: {}",
        String::from_utf8_lossy(&ok.stderr),
        std::fs::read_to_string(d.join("coordinator.log")).unwrap_or_default()
    );
    // Each failure says what to check.
    assert!(!plain.status.success() && !wrong_ca.status.success());
    let plain = String::from_utf8_lossy(&plain.stderr);
    assert!(
        plain.contains("use an https:// URL and --tls-ca"),
        "{plain}"
    );
    assert!(!no_ca.status.success());
    assert!(String::from_utf8_lossy(&no_ca.stderr).contains("--tls-ca"));
    let wrong_ca = String::from_utf8_lossy(&wrong_ca.stderr);
    assert!(
        wrong_ca.contains("invalid peer certificate")
            && wrong_ca.contains("is --tls-ca the CA that signed the server's certificate?"),
        "{wrong_ca}"
    );
}

#[test]
fn two_jobs_with_their_own_models_and_a_cancelled_one() {
    let job = JobDir::digits(2);
    let d = job.path();
    std::fs::copy(d.join("model.onnx"), d.join("model2.onnx")).unwrap();
    let first = job.manifest(&[("shard_size = 64", "shard_size = 15")]);
    let second = d.join("second.toml");
    std::fs::write(
        &second,
        std::fs::read_to_string(&first)
            .unwrap()
            .replace("name = \"digits\"", "name = \"digits-b\"")
            .replace("uri = \"./model.onnx\"", "uri = \"./model2.onnx\"")
            .replace("uri = \"./out\"", "uri = \"./out-b\""),
    )
    .unwrap();
    let third = d.join("third.toml");
    std::fs::write(
        &third,
        std::fs::read_to_string(&first)
            .unwrap()
            .replace("name = \"digits\"", "name = \"digits-c\"")
            .replace("uri = \"./out\"", "uri = \"./out-c\""),
    )
    .unwrap();
    let queue = format!("sqlite://{}", d.join("q.db").display());
    let coord = Coord::start(d, &queue, free_addr(), free_addr());
    let url = coord.url();
    let (a, _) = submit(&url, &first);
    let (b, _) = submit(&url, &second);
    let (c, _) = submit(&url, &third);
    assert!(a != b && b != c && a != c);
    // The third is cancelled before any worker runs: its shards are dropped unworked.
    let out = run_ok(sb(Some(TOKEN)).args(["cancel", &c, "--coordinator", &url]));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("{c}: cancelled")
    );
    let mut w1 = worker(&url, "w1", d, 0);
    let mut w2 = worker(&url, "w2", d, 0);
    wait_exit(&mut w1, "w1", d);
    wait_exit(&mut w2, "w2", d);
    check_finished(&url, &a, &job);
    let b_status = status_json(&url, &b);
    assert_eq!(b_status["state"], "done", "{b_status}");
    assert_eq!(b_status["items"]["done"], 270, "{b_status}");
    let b_rows: usize = std::fs::read_dir(d.join("out-b").join(&b))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .map(|p| std::fs::read_to_string(p).unwrap().lines().count())
        .sum();
    assert_eq!(b_rows, 270);
    let c_status = status_json(&url, &c);
    assert_eq!(c_status["state"], "cancelled", "{c_status}");
    assert_eq!(c_status["items"]["done"], 0, "{c_status}");
    assert!(!d.join("out-c").join(&c).join("_done").exists());
    let depth = run_ok(sb(None).args(["queue", "depth", &queue]));
    assert_eq!(
        String::from_utf8_lossy(&depth.stdout).trim(),
        "visible 0 in_flight 0 dead 0"
    );
    // `status --watch` on a finished job draws the bar and returns.
    let watch = run_ok(sb(Some(TOKEN)).args(["status", &a, "--watch", "--coordinator", &url]));
    assert!(String::from_utf8_lossy(&watch.stdout).contains(&format!("{a}: done")));
    // Garbage on the gRPC port is dropped; the coordinator keeps serving.
    let mut s = TcpStream::connect(coord.grpc).unwrap();
    let _ = s.write_all(&[0xff; 4096]);
    drop(s);
    let jobs = run_ok(sb(Some(TOKEN)).args(["jobs", "--coordinator", &url]));
    assert_eq!(String::from_utf8_lossy(&jobs.stdout).lines().count(), 3);
}

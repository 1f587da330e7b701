//! Distributed mode on SQS and S3 (moto's server, started by `make test`): inputs, model and
//! outputs on S3, shards on SQS, `enqueue` plus two `worker` processes, one `kill -9`-ed part-way.
//! Its shards come back after the visibility timeout and the job completes exactly once; foreign
//! messages land in the dead-letter queue with their reason. A worker whose SQS goes away (a relay
//! in front of moto, cut and restored) keeps trying, less and less often, finishes the work that
//! arrived meanwhile when the queue is back, and still stops at once when told to.

mod common;

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn endpoint() -> String {
    std::env::var("SPOTBATCH_TEST_SQS_ENDPOINT").expect(
        "SPOTBATCH_TEST_SQS_ENDPOINT is not set: run the tests with `make test`, which starts moto",
    )
}

fn aws(args: &[&str]) -> String {
    let out = Command::new(python())
        .arg(root().join("tests/support/aws.py"))
        .args(args)
        .env("SPOTBATCH_TEST_S3_ENDPOINT", endpoint())
        .output()
        .expect("run aws.py");
    assert!(
        out.status.success(),
        "aws.py {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// `spotbatch` pointed at moto for both SQS and S3.
fn sb() -> Command {
    let mut c = spotbatch();
    c.env("AWS_ENDPOINT_URL", endpoint())
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_DEFAULT_REGION", "us-east-1");
    c
}

#[test]
fn two_workers_on_sqs_and_s3_one_killed_every_input_once() {
    let job = JobDir::digits(10);
    let bucket = unique("sb");
    aws(&["mkbucket", &bucket]);
    aws(&[
        "upload",
        &job.images().to_string_lossy(),
        &format!("s3://{bucket}/images"),
    ]);
    let model_dir = job.path().join("model");
    std::fs::create_dir_all(&model_dir).unwrap();
    for f in ["model.onnx", "labels.txt"] {
        std::fs::copy(job.path().join(f), model_dir.join(f)).unwrap();
    }
    aws(&[
        "upload",
        &model_dir.to_string_lossy(),
        &format!("s3://{bucket}/model"),
    ]);

    let queue = format!(
        "sqs://{}?region=us-east-1&endpoint={}",
        unique("shards"),
        endpoint()
    );
    let created = run_ok(sb().args(["queue", "create", &queue, "--dlq", "--max-attempts", "5"]));
    let queue_url = String::from_utf8_lossy(&created.stdout)
        .split(',')
        .next()
        .unwrap()
        .trim()
        .to_string();
    assert!(queue_url.starts_with("http://"), "{queue_url}");

    let manifest = job.path().join("job.toml");
    std::fs::write(
        &manifest,
        format!(
            r#"name = "digits-s3"
[input]
uri = "s3://{bucket}/images"
glob = "**/*.png"
[model]
uri = "s3://{bucket}/model/model.onnx"
batch_size = 2
[preprocess]
resize = [8, 8]
color = "gray"
[postprocess]
top_k = 3
labels = "s3://{bucket}/model/labels.txt"
[output]
uri = "s3://{bucket}/out"
[queue]
uri = "{queue}"
shard_size = 3
visibility_timeout_secs = 3
max_attempts = 5
"#
        ),
    )
    .unwrap();

    // Messages that are not ours: foreign JSON and garbage text.
    aws(&["send", &queue_url, &hex(b"{\"hello\":\"world\"}")]);
    aws(&["send", &queue_url, &hex(b"\xde\xad\xbe\xef not json {{{")]);

    let out = run_ok(sb().arg("enqueue").arg(&manifest));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(": 18 shards enqueued on"), "{stdout}");

    let worker = |id: &str, with_manifest: bool| {
        let mut c = sb();
        c.args([
            "worker",
            "--queue",
            &queue,
            "--exit-when-empty",
            "--prefetch",
            "4",
            "--throttle-batch-ms",
            "150",
            "--id",
            id,
        ])
        .env("SPOTBATCH_LOG", "spotbatch_worker=info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        if with_manifest {
            c.arg("--manifest").arg(&manifest);
        } else {
            // This one learns the job from the stored manifest each shard refers to.
            c.args(["--visibility-timeout-secs", "3"]);
        }
        c.spawn().expect("spawn worker")
    };
    let mut a = worker("A", true);
    let out_prefix = format!("s3://{bucket}/out");
    let give_up = Instant::now() + Duration::from_secs(90);
    while aws(&["count", &out_prefix, ".json", "/_done/"])
        .trim()
        .parse::<usize>()
        .unwrap()
        < 1
    {
        assert!(a.try_wait().unwrap().is_none(), "worker A ended early");
        assert!(Instant::now() < give_up, "worker A made no progress");
        std::thread::sleep(Duration::from_millis(200));
    }
    let b = worker("B", false);
    std::thread::sleep(Duration::from_millis(500));
    a.kill().unwrap(); // SIGKILL: A's leases are left to expire.
    let a_out = a.wait_with_output().unwrap();
    assert!(!a_out.status.success());

    let b_out = b.wait_with_output().unwrap();
    let b_err = String::from_utf8_lossy(&b_out.stderr);
    assert!(b_out.status.success(), "worker B failed:\n{b_err}");
    assert!(
        b_err.contains("working a redelivered shard"),
        "A's leased shards must come back to B:\n{b_err}"
    );
    assert!(b_err.contains("queue requests"), "{b_err}");

    // Every input exactly one row; one done marker per shard (plus the stored manifest).
    let mut keys = BTreeSet::new();
    let mut rows = 0;
    for line in aws(&["rows", &out_prefix]).lines() {
        let row: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(row["error"].is_null(), "{row}");
        keys.insert(row["key"].as_str().unwrap().to_string());
        rows += 1;
    }
    assert_eq!(rows, 54, "no duplicate rows");
    assert_eq!(keys.into_iter().collect::<Vec<_>>(), job.input_keys());
    assert_eq!(
        aws(&["count", &out_prefix, ".json", "/_done/"]).trim(),
        "18"
    );
    assert_eq!(aws(&["count", &out_prefix, "_manifest.json"]).trim(), "1");
    // Cost ledgers: B's, and A's if it was killed after its first shard's ledger.
    let ledgers: usize = aws(&["count", &out_prefix, ".json", "/_cost/"])
        .trim()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&ledgers), "{ledgers} ledgers");

    // The foreign messages are in the dead-letter queue, with the reason.
    let dlq = run_ok(sb().args(["queue", "dlq", &queue]));
    let listing = String::from_utf8_lossy(&dlq.stdout);
    let lines: Vec<&str> = listing.lines().collect();
    assert_eq!(lines.len(), 2, "{listing}");
    assert!(
        lines.iter().all(|l| l.contains("not a spotbatch shard")
            && l.contains("not a spotbatch shard message (")),
        "{listing}"
    );
    let depth = run_ok(sb().args(["queue", "depth", &queue]));
    assert_eq!(
        String::from_utf8_lossy(&depth.stdout).trim(),
        "visible 0 in_flight 0 dead 2"
    );

    // Enqueueing the finished job again puts nothing on the queue.
    let again = run_ok(sb().arg("enqueue").arg(&manifest));
    assert!(String::from_utf8_lossy(&again.stdout).contains(": 0 shards enqueued on"));
}

#[test]
fn missing_queue_is_a_clear_error() {
    let queue = format!(
        "sqs://{}?region=us-east-1&endpoint={}",
        unique("missing"),
        endpoint()
    );
    let out = sb().args(["queue", "depth", &queue]).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("does not exist") && stderr.contains("spotbatch queue create"),
        "{stderr}"
    );
}

#[test]
fn missing_credentials_are_a_clear_error() {
    // No credentials anywhere: not in the environment, no config files, no instance metadata.
    let home = tempfile::tempdir().unwrap();
    let queue = format!(
        "sqs://{}?region=us-east-1&endpoint={}",
        unique("creds"),
        endpoint()
    );
    let out = Command::new(BIN)
        .args(["queue", "depth", &queue])
        .env_clear()
        .env("HOME", home.path())
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no usable AWS credentials"), "{stderr}");
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A TCP relay in front of moto that can be cut (its connections closed, new ones dropped) and
/// restored: an SQS outage as a worker sees one.
struct Relay {
    addr: std::net::SocketAddr,
    up: std::sync::Arc<std::sync::atomic::AtomicBool>,
    conns: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
}

impl Relay {
    fn start(target: &str) -> Self {
        use std::net::{Shutdown, TcpListener, TcpStream};
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::{Arc, Mutex};
        let target = target
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let up = Arc::new(AtomicBool::new(true));
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (up2, conns2) = (up.clone(), conns.clone());
        std::thread::spawn(move || {
            for inbound in listener.incoming() {
                let Ok(inbound) = inbound else { continue };
                if !up2.load(Ordering::SeqCst) {
                    let _ = inbound.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(outbound) = TcpStream::connect(&target) else {
                    continue;
                };
                let (Ok(i2), Ok(o2)) = (inbound.try_clone(), outbound.try_clone()) else {
                    continue;
                };
                conns2.lock().unwrap().extend([i2, o2]);
                if !up2.load(Ordering::SeqCst) {
                    // Cut while this one was being connected.
                    let _ = inbound.shutdown(Shutdown::Both);
                    continue;
                }
                for (mut from, mut to) in [
                    (inbound.try_clone().unwrap(), outbound.try_clone().unwrap()),
                    (outbound, inbound),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(Shutdown::Write);
                    });
                }
            }
        });
        Self { addr, up, conns }
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn cut(&self) {
        self.up.store(false, std::sync::atomic::Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }

    fn restore(&self) {
        self.up.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// `spotbatch_lease_errors_total` on a worker's metrics endpoint.
fn lease_errors(addr: std::net::SocketAddr) -> Option<f64> {
    let (200, body) = http_get(addr, "/metrics")? else {
        return None;
    };
    body.lines()
        .find_map(|l| l.strip_prefix("spotbatch_lease_errors_total "))
        .map(|v| v.trim().parse().expect("a counter's value"))
}

/// Waits until the worker has counted at least `n` failed leases.
fn wait_lease_errors(addr: std::net::SocketAddr, n: f64, w: &mut std::process::Child) -> f64 {
    let until = Instant::now() + Duration::from_secs(90);
    loop {
        assert!(
            w.try_wait().unwrap().is_none(),
            "the worker gave up on the queue"
        );
        let seen = lease_errors(addr).unwrap_or(0.0);
        if seen >= n {
            return seen;
        }
        assert!(Instant::now() < until, "{seen} failed leases, {n} awaited");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_worker_waits_out_an_sqs_outage_and_still_stops_at_once() {
    let job = JobDir::digits(10);
    let manifest = job.manifest(&[("shard_size = 64", "shard_size = 10")]);
    let name = unique("outage");
    let direct = format!("sqs://{name}?region=us-east-1&endpoint={}", endpoint());
    run_ok(sb().args(["queue", "create", &direct, "--dlq"]));
    let relay = Relay::start(&endpoint());
    let relayed = format!(
        "sqs://{name}?region=us-east-1&endpoint={}",
        relay.endpoint()
    );
    let metrics = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut w = sb()
        .args(["worker", "--queue", &relayed])
        .arg("--manifest")
        .arg(&manifest)
        .arg("--metrics-addr")
        .arg(metrics.to_string())
        .env("SPOTBATCH_LOG", "spotbatch_worker=info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Up and leasing (nothing there yet), then the queue goes away.
    wait_ready(metrics, || "the worker".into());
    assert_eq!(lease_errors(metrics), Some(0.0), "registered at zero");
    relay.cut();
    wait_lease_errors(metrics, 3.0, &mut w);
    // Work arrives during the outage; when the queue is back the worker does it all.
    let out = run_ok(
        sb().arg("enqueue")
            .arg(&manifest)
            .args(["--queue", &direct]),
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(": 6 shards enqueued on"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    relay.restore();
    let done = Instant::now() + Duration::from_secs(90);
    while job.done_markers() < 6 {
        assert!(w.try_wait().unwrap().is_none(), "the worker ended early");
        assert!(
            Instant::now() < done,
            "the job did not finish after the outage"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let rows = job.one_row_per_input();
    assert!(rows.values().all(|r| r["error"].is_null()));

    // A second outage: the tries back off (here to several seconds apart), yet a stop is obeyed
    // at once rather than after the current wait.
    let before = lease_errors(metrics).expect("metrics");
    relay.cut();
    wait_lease_errors(metrics, before + 5.0, &mut w);
    sigterm(&w);
    let stopped = Instant::now();
    let status = wait_bounded(&mut w, Duration::from_secs(30)).expect("the worker exits");
    let took = stopped.elapsed();
    let err = stderr_text(&mut w);
    assert!(status.success(), "{err}");
    assert!(
        took < Duration::from_secs(3),
        "stopped {took:?} after SIGTERM:\n{err}"
    );
    let waits = log_numbers(&err, "lease failed; retrying", "retry_in_ms");
    assert!(
        waits.iter().any(|&ms| ms >= 3200),
        "the waits between tries grow: {waits:?}"
    );
    assert!(
        waits.iter().all(|&ms| ms < 10_100),
        "and stop growing at 10 s: {waits:?}"
    );
}

/// `--exit-when-empty` with `--give-up-after-secs`: a worker whose SQS goes away for good in the
/// middle of a job exits 1 with a message naming the queue and the limit once it has not reached
/// the service for that long, instead of retrying forever; what it had not finished is still on
/// the queue (nothing acked that was not done).
#[test]
fn a_worker_that_exits_when_empty_gives_up_when_sqs_is_gone_for_good() {
    let job = JobDir::digits(10);
    let manifest = job.manifest(&[
        ("shard_size = 64", "shard_size = 10"),
        ("batch_size = 32", "batch_size = 5"),
    ]);
    let name = unique("gone");
    let direct = format!("sqs://{name}?region=us-east-1&endpoint={}", endpoint());
    run_ok(sb().args(["queue", "create", &direct, "--dlq"]));
    run_ok(
        sb().arg("enqueue")
            .arg(&manifest)
            .args(["--queue", &direct]),
    );
    let relay = Relay::start(&endpoint());
    let relayed = format!(
        "sqs://{name}?region=us-east-1&endpoint={}",
        relay.endpoint()
    );
    let mut w = sb()
        .args(["worker", "--queue", &relayed, "--exit-when-empty"])
        .args(["--give-up-after-secs", "4", "--prefetch", "1"])
        .args(["--throttle-batch-ms", "400"])
        .arg("--manifest")
        .arg(&manifest)
        .env("SPOTBATCH_LOG", "spotbatch_worker=info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let until = Instant::now() + Duration::from_secs(90);
    while job.done_markers() < 1 {
        assert!(w.try_wait().unwrap().is_none(), "the worker ended early");
        assert!(Instant::now() < until, "no shard finished");
        std::thread::sleep(Duration::from_millis(50));
    }
    relay.cut();
    let cut = Instant::now();
    let status = wait_bounded(&mut w, Duration::from_secs(60));
    let took = cut.elapsed();
    if status.is_none() {
        let _ = w.kill();
    }
    let err = stderr_text(&mut w);
    let status = status.unwrap_or_else(|| panic!("the worker did not give up:\n{err}"));
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        took >= Duration::from_secs(4) && took < Duration::from_secs(30),
        "gave up {took:?} after the cut:\n{err}"
    );
    assert!(
        err.contains("gave up after 4 s without reaching it (--give-up-after-secs)")
            && err.contains(&name),
        "{err}"
    );
    let done = job.done_markers();
    assert!(done < 6, "the job finished before the cut: {done}");
    println!(
        "sqs: gave up {took:?} after the cut: {}",
        err.lines().last().unwrap_or_default()
    );
    // Nothing lost: every shard without a done marker is still on the queue.
    let out = run_ok(sb().args(["queue", "depth", &direct]));
    let depth = String::from_utf8_lossy(&out.stdout).to_string();
    let count = |state: &str| -> usize {
        let words: Vec<&str> = depth.split_whitespace().collect();
        words
            .windows(2)
            .find(|w| w[0] == state)
            .and_then(|w| w[1].parse().ok())
            .unwrap_or_else(|| panic!("no {state} in {depth:?}"))
    };
    assert!(
        count("visible") + count("in_flight") >= 6 - done,
        "{done} done, queue: {depth}"
    );
}

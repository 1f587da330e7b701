//! Chaos: three worker processes on a 5400-item job while a controller repeatedly SIGKILLs,
//! SIGTERMs or sends AWS interruption notices to random workers that are running the model at
//! that moment, and starts replacements. Every
//! input ends up with exactly one row, none missing, and the dead-letter queue is empty. Run on the
//! SQLite queue, on SQS (moto) and on Kafka (nisshi). Prints the figures the README quotes
//! (`make bench-chaos` runs it with them shown).

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use common::metadata::{self, AwsState, Fake};
use common::*;

struct Worker {
    child: Child,
    imds: AwsState,
    _fake: Fake,
    log: PathBuf,
    processed: PathBuf,
}

impl Worker {
    /// Whether the worker ran the model in the last second: it holds work now. Interrupting
    /// only such workers makes every action cost something (on Kafka, a worker can spend its
    /// first seconds joining the group, and one interrupted then loses nothing).
    fn in_work(&self) -> bool {
        std::fs::metadata(&self.processed).is_ok_and(|m| {
            m.len() > 0
                && m.modified()
                    .is_ok_and(|t| t.elapsed().is_ok_and(|e| e < Duration::from_secs(1)))
        })
    }
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// 5400 inputs: the demo's 540 images, ten times over in folders c0..c9.
fn big_job() -> JobDir {
    let job = JobDir::digits(1);
    let keys = job.input_keys();
    for c in 0..10 {
        for k in &keys {
            let dst = job.images().join(format!("c{c}")).join(k);
            std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
            std::fs::copy(job.images().join(k), dst).unwrap();
        }
    }
    for label in 0..10 {
        std::fs::remove_dir_all(job.images().join(label.to_string())).unwrap();
    }
    job
}

fn spawn_worker(
    dir: &Path,
    n: usize,
    queue: &str,
    manifest: &Path,
    env: &[(&str, String)],
) -> Worker {
    let imds = AwsState::default();
    let fake = metadata::aws(imds.clone());
    let log = dir.join(format!("worker-{n}.log"));
    let processed = dir.join(format!("processed-{n}.txt"));
    let mut cmd = spotbatch();
    cmd.args([
        "worker",
        "--queue",
        queue,
        "--exit-when-empty",
        "--prefetch",
        "2",
        "--throttle-batch-ms",
        "100",
    ])
    .args([
        "--notices",
        "aws",
        "--aws-metadata-url",
        &fake.url,
        "--notice-poll-ms",
        "100",
    ])
    .args(["--grace-period-secs", "3", "--id", &format!("w{n}")])
    .arg("--manifest")
    .arg(manifest)
    .arg("--debug-processed-log")
    .arg(&processed)
    .env(
        "SPOTBATCH_LOG",
        "spotbatch_worker=info,spotbatch_queue=info,spotbatch=info",
    )
    .stdout(Stdio::null())
    .stderr(std::fs::File::create(&log).unwrap());
    for (k, v) in env {
        cmd.env(k, v);
    }
    Worker {
        child: cmd.spawn().expect("spawn worker"),
        imds,
        _fake: fake,
        log,
        processed,
    }
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// Parses `2026-11-22T21:40:00.123456Z`-style timestamps at the start of a log line.
fn stamp(line: &str) -> Option<f64> {
    let t = line.split_whitespace().next()?;
    let (date, time) = t.split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>().ok());
    let (y, m, dd) = (d.next()??, d.next()??, d.next()??);
    let time = time.trim_end_matches('Z');
    let time = time.split('+').next()?;
    let mut parts = time.split(':');
    let (h, mi, s) = (
        parts.next()?.parse::<f64>().ok()?,
        parts.next()?.parse::<f64>().ok()?,
        parts.next()?.parse::<f64>().ok()?,
    );
    // Days from civil (Howard Hinnant).
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + dd - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days as f64 * 86_400.0 + h * 3600.0 + mi * 60.0 + s)
}

fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    line.split(&format!("{name}="))
        .nth(1)?
        .split_whitespace()
        .next()
}

fn chaos(label: &str, queue: String, env: Vec<(&str, String)>, actions: usize) {
    let job = big_job();
    let manifest = job.manifest(&[
        ("batch_size = 32", "batch_size = 10"),
        ("shard_size = 64", "shard_size = 50"),
        (
            "visibility_timeout_secs = 60",
            "visibility_timeout_secs = 4",
        ),
        ("max_attempts = 3", "max_attempts = 1000"),
        (
            "uri = \"sqlite://./queue.db\"",
            &format!("uri = \"{queue}\""),
        ),
    ]);
    let mut enq = spotbatch();
    for (k, v) in &env {
        enq.env(k, v);
    }
    let out = run_ok(enq.arg("enqueue").arg(&manifest));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(": 108 shards enqueued"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // SPOTBATCH_CHAOS_SEED replays a run's choices (timing still differs).
    let seed = std::env::var("SPOTBATCH_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        })
        | 1;
    println!("[{label}] chaos seed {seed}");
    let mut rng = Rng(seed);
    let started = Instant::now();
    let mut n = 0;
    let mut live: Vec<Worker> = Vec::new();
    let mut dead: Vec<Worker> = Vec::new();
    for _ in 0..3 {
        live.push(spawn_worker(job.path(), n, &queue, &manifest, &env));
        n += 1;
    }
    let mut done_actions: BTreeMap<&str, usize> = BTreeMap::new();
    let give_up = started + Duration::from_secs(300);
    while done_actions.values().sum::<usize>() < actions && job.done_markers() < 100 {
        assert!(Instant::now() < give_up, "[{label}] chaos did not finish");
        std::thread::sleep(Duration::from_millis(1000 + rng.below(1000)));
        // A random worker among those in work (none yet: wait for one).
        let working: Vec<usize> = (0..live.len()).filter(|&i| live[i].in_work()).collect();
        if working.is_empty() {
            continue;
        }
        let i = working[rng.below(working.len() as u64) as usize];
        let mut w = live.swap_remove(i);
        let action = match rng.below(3) {
            0 => {
                w.child.kill().unwrap();
                "SIGKILL"
            }
            1 => {
                Command::new("kill")
                    .args(["-TERM", &w.child.id().to_string()])
                    .status()
                    .unwrap();
                "SIGTERM"
            }
            _ => {
                *w.imds.action.lock().unwrap() = Some(metadata::aws_terminate_in(3));
                "aws notice"
            }
        };
        *done_actions.entry(action).or_default() += 1;
        println!(
            "DIAG {label} t={:.1}s worker {} got {action}",
            started.elapsed().as_secs_f64(),
            w.log.display()
        );
        dead.push(w);
        live.push(spawn_worker(job.path(), n, &queue, &manifest, &env));
        n += 1;
    }
    // Let the job finish with the workers that are left (one deadline for all of them).
    let until = Instant::now() + Duration::from_secs(180);
    for i in 0..live.len() + dead.len() {
        loop {
            let w = if i < live.len() {
                &mut live[i]
            } else {
                &mut dead[i - live.len()]
            };
            if w.child.try_wait().unwrap().is_some() {
                break;
            }
            if Instant::now() >= until {
                let log = std::fs::read_to_string(&w.log).unwrap_or_default();
                let others: Vec<String> = live
                    .iter()
                    .chain(dead.iter())
                    .map(|o| {
                        let text = std::fs::read_to_string(&o.log).unwrap_or_default();
                        let tail: Vec<&str> = text.lines().rev().take(8).collect();
                        format!(
                            "{}:\n  {}",
                            o.log.display(),
                            tail.into_iter().rev().collect::<Vec<_>>().join("\n  ")
                        )
                    })
                    .collect();
                for w in live.iter_mut().chain(dead.iter_mut()) {
                    let _ = w.child.kill();
                }
                panic!(
                    "[{label}] a worker did not exit ({} of 108 shards done): {}\n{log}\n--- every worker's last lines ---\n{}",
                    job.done_markers(),
                    dead_or_live_name(i, live.len()),
                    others.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let wall = started.elapsed().as_secs_f64();

    // Every input exactly one row, nothing missing, nothing dead-lettered.
    let rows = job.rows();
    assert_eq!(
        rows.keys().cloned().collect::<Vec<_>>(),
        job.input_keys(),
        "[{label}] every input exactly one row"
    );
    assert!(rows.values().all(|r| r["error"].is_null()));
    assert_eq!(job.done_markers(), 108);
    let mut depth = spotbatch();
    for (k, v) in &env {
        depth.env(k, v);
    }
    let d = run_ok(depth.args(["queue", "depth", &queue]));
    assert_eq!(
        String::from_utf8_lossy(&d.stdout).trim(),
        "visible 0 in_flight 0 dead 0",
        "[{label}]"
    );

    // Figures.
    let mut processed = 0usize;
    for i in 0..n {
        processed += std::fs::read_to_string(job.path().join(format!("processed-{i}.txt")))
            .map(|s| s.lines().count())
            .unwrap_or(0);
    }
    for i in 0..n {
        let c = std::fs::read_to_string(job.path().join(format!("processed-{i}.txt")))
            .map(|s| s.lines().count())
            .unwrap_or(0);
        let log =
            std::fs::read_to_string(job.path().join(format!("worker-{i}.log"))).unwrap_or_default();
        let last: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("shard"))
            .rev()
            .take(2)
            .collect();
        println!("DIAG worker-{i} processed {c} last: {:?}", last);
    }
    let mut notice_to_release: Vec<f64> = Vec::new();
    let mut released: HashMap<String, Vec<f64>> = HashMap::new();
    let mut leased_again: HashMap<String, Vec<f64>> = HashMap::new();
    for w in live.iter().chain(dead.iter()) {
        for line in std::fs::read_to_string(&w.log).unwrap_or_default().lines() {
            if line.contains("released an unstarted shard after the notice") {
                if let Some(ms) = field(line, "after_ms").and_then(|v| v.parse::<f64>().ok()) {
                    notice_to_release.push(ms);
                }
            }
            if line.contains("released an unstarted shard")
                || line.contains("wrote a partial result and released")
            {
                if let (Some(t), Some(s)) = (stamp(line), field(line, "shard")) {
                    released.entry(s.to_string()).or_default().push(t);
                }
            }
            if line.contains("working a redelivered shard") {
                if let (Some(t), Some(s)) = (stamp(line), field(line, "shard")) {
                    leased_again.entry(s.to_string()).or_default().push(t);
                }
            }
        }
    }
    let mut recovery: Vec<f64> = Vec::new();
    for (shard, rel) in &released {
        for r in rel {
            if let Some(next) = leased_again
                .get(shard)
                .and_then(|l| l.iter().filter(|t| *t >= r).cloned().reduce(f64::min))
            {
                recovery.push((next - r) * 1000.0);
            }
        }
    }
    let redone = processed.saturating_sub(5400) as f64 / 5400.0;
    println!(
        "[{label}] actions {done_actions:?}; workers started {n}; wall {wall:.1} s; items inferred {processed} for 5400 inputs (redone {:.2}%); \
         notice→release p50 {:.0} ms p99 {:.0} ms (n={}); release→re-leased p50 {:.0} ms p99 {:.0} ms (n={})",
        redone * 100.0,
        percentile(&mut notice_to_release.clone(), 0.5),
        percentile(&mut notice_to_release.clone(), 0.99),
        notice_to_release.len(),
        percentile(&mut recovery.clone(), 0.5),
        percentile(&mut recovery.clone(), 0.99),
        recovery.len()
    );
    assert!(
        notice_to_release.iter().all(|ms| *ms < 1000.0),
        "[{label}] notice → release over 1 s: {notice_to_release:?}"
    );
}

fn dead_or_live_name(i: usize, live: usize) -> String {
    if i < live {
        format!("live worker #{i}")
    } else {
        format!("replaced worker #{}", i - live)
    }
}

fn actions() -> usize {
    std::env::var("SPOTBATCH_CHAOS_ACTIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8)
}

#[test]
fn chaos_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let queue = format!("sqlite://{}", dir.path().join("chaos.db").display());
    chaos("sqlite", queue, Vec::new(), actions());
}

#[test]
fn chaos_on_sqs() {
    let endpoint = std::env::var("SPOTBATCH_TEST_SQS_ENDPOINT").expect(
        "SPOTBATCH_TEST_SQS_ENDPOINT is not set: run the tests with `make test`, which starts moto",
    );
    let queue = format!(
        "sqs://{}?region=us-east-1&endpoint={endpoint}",
        unique("chaos")
    );
    let env = vec![
        ("AWS_ACCESS_KEY_ID", "testing".to_string()),
        ("AWS_SECRET_ACCESS_KEY", "testing".to_string()),
        ("AWS_REGION", "us-east-1".to_string()),
    ];
    let mut create = spotbatch();
    for (k, v) in &env {
        create.env(k, v);
    }
    run_ok(create.args(["queue", "create", &queue, "--dlq", "--max-attempts", "1000"]));
    chaos("sqs", queue, env, actions());
}

#[test]
fn chaos_on_kafka() {
    // nisshi 0.8.1, a separate process on loopback (started by `make test`), with spotbatch's own
    // batched producer.
    let brokers = std::env::var("SPOTBATCH_TEST_KAFKA_BROKERS").expect(
        "SPOTBATCH_TEST_KAFKA_BROKERS is not set: run the tests with `make test`, which starts nisshi",
    );
    let topic = unique("chaos");
    let queue = format!("kafka://{brokers}/{topic}?partitions=6&session_timeout_ms=6000");
    run_ok(spotbatch().args(["queue", "create", &queue]));
    chaos("kafka", queue, Vec::new(), actions());
}

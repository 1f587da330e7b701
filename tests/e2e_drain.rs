//! Drain on a deadline: a worker gets an AWS interruption notice (5 s) mid-shard. It releases its
//! unstarted shards within 1 s, writes what it finished as a partial result, and exits 0 before
//! the deadline; the next worker resumes the partial shard from its cursor and the job completes
//! with every input exactly once.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::metadata::{self, AwsState};
use common::*;

fn count(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

#[test]
fn notice_mid_shard_releases_unstarted_writes_partial_and_next_worker_resumes() {
    let job = JobDir::digits(1);
    let manifest = job.manifest(&[
        ("batch_size = 32", "batch_size = 5"),
        ("shard_size = 64", "shard_size = 100"),
        (
            "visibility_timeout_secs = 60",
            "visibility_timeout_secs = 30",
        ),
    ]);
    let queue = format!("sqlite://{}", job.path().join("queue.db").display());
    let out = run_ok(spotbatch().arg("enqueue").arg(&manifest));
    assert!(String::from_utf8_lossy(&out.stdout).contains(": 6 shards enqueued"));

    let imds = AwsState::default();
    let fake = metadata::aws(imds.clone());
    let mut w1 = spotbatch()
        .args([
            "worker",
            "--queue",
            &queue,
            "--prefetch",
            "3",
            "--throttle-batch-ms",
            "400",
        ])
        .args([
            "--notices",
            "aws",
            "--aws-metadata-url",
            &fake.url,
            "--notice-poll-ms",
            "100",
            "--id",
            "w1",
        ])
        .arg("--manifest")
        .arg(&manifest)
        .env("SPOTBATCH_LOG", "spotbatch_worker=info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the first shard is written and the next one is in work.
    let done = job.path().join("out");
    let give_up = Instant::now() + Duration::from_secs(60);
    loop {
        let markers = std::fs::read_dir(&done)
            .ok()
            .and_then(|mut d| d.next())
            .map(|j| count(&j.unwrap().path().join("_done")))
            .unwrap_or(0);
        if markers >= 1 {
            break;
        }
        assert!(Instant::now() < give_up, "no shard finished");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(600));
    *imds.action.lock().unwrap() = Some(metadata::aws_terminate_in(5));
    let noticed = Instant::now();

    // Within about a second the unstarted shards are back on the queue.
    let mut released_at = None;
    let mut seen = Vec::new();
    while noticed.elapsed() < Duration::from_secs(3) {
        let d = run_ok(spotbatch().args(["queue", "depth", &queue]));
        let d = String::from_utf8_lossy(&d.stdout).to_string();
        seen.push(d.trim().to_string());
        // 6 shards: 1 done, 1 in flight (being checkpointed), the rest visible.
        if d.starts_with("visible 4 in_flight 1") {
            released_at = Some(noticed.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let released_at =
        released_at.unwrap_or_else(|| panic!("unstarted shards were not released: {seen:?}"));
    // Polling every 100 ms plus this test's own polling: the worker's own figure is checked below.
    assert!(
        released_at < Duration::from_millis(1500),
        "released after {released_at:?}"
    );

    let status = wait_bounded(&mut w1, Duration::from_secs(30))
        .expect("a drained worker exits within its 5 s deadline");
    let exited = noticed.elapsed();
    let err = stderr_text(&mut w1);
    assert!(status.success(), "a drained worker exits 0:\n{err}");
    assert!(
        exited < Duration::from_secs(5),
        "exited {exited:?} after a 5 s notice"
    );
    assert!(err.contains("aws notice (terminate): draining"), "{err}");
    let after = log_numbers(
        &err,
        "released an unstarted shard after the notice",
        "after_ms",
    );
    // The depth adapts (8 s shards, a 30 s lease: one unstarted shard once the first is
    // measured, up to --prefetch 3 before): the queue's depth above says every unstarted shard
    // came back; each was released within a second of the notice.
    assert!(
        (1..=2).contains(&after.len()),
        "unstarted shards released:\n{err}"
    );
    assert!(
        after.iter().all(|ms| *ms < 1000),
        "notice → release took {after:?} ms"
    );
    assert!(
        err.contains("wrote a partial result and released the shard"),
        "{err}"
    );
    let partial_dir = job.job_out().join("_partial");
    assert_eq!(count(&partial_dir), 1, "one partial result");

    // A second worker finishes the job, resuming the partial shard instead of redoing it.
    let w2 = spotbatch()
        .args([
            "worker",
            "--queue",
            &queue,
            "--exit-when-empty",
            "--id",
            "w2",
        ])
        .arg("--manifest")
        .arg(&manifest)
        .env("SPOTBATCH_LOG", "spotbatch_worker=info")
        .output()
        .unwrap();
    let err2 = String::from_utf8_lossy(&w2.stderr);
    assert!(w2.status.success(), "{err2}");
    let resumed = err2
        .lines()
        .find(|l| l.contains("resuming a shard from its partial result"))
        .unwrap_or_else(|| panic!("{err2}"));
    let kept = *log_numbers(resumed, "", "kept")
        .first()
        .unwrap_or_else(|| panic!("no kept= in {resumed}"));
    assert!(kept > 0 && kept < 100, "{resumed}");
    assert_eq!(
        count(&partial_dir),
        0,
        "the partial result is removed once the shard is done"
    );

    let rows = job.one_row_per_input();
    assert!(rows.values().all(|r| r["error"].is_null()));
    assert_eq!(count(&job.job_out().join("_done")), 6);
    let _ = Command::new("true").status();
}

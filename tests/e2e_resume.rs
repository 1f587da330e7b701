//! Interruption: Ctrl-C releases leases and exits 130; `kill -9` leaves leases that the next run
//! reclaims at once; running the same manifest again completes the job, skipping finished shards,
//! with no duplicate rows.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant, SystemTime};

use common::*;

fn wait_for_markers(job: &JobDir, child: &mut Child, at_least: usize) {
    let give_up = Instant::now() + Duration::from_secs(60);
    while job.done_markers() < at_least {
        assert!(
            child.try_wait().unwrap().is_none(),
            "run ended before it could be interrupted"
        );
        assert!(Instant::now() < give_up, "no progress within 60 s");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn part_mtimes(dir: &Path) -> BTreeMap<String, SystemTime> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_name().to_string_lossy().starts_with("part-"))
        .map(|e| {
            (
                e.file_name().to_string_lossy().to_string(),
                e.metadata().unwrap().modified().unwrap(),
            )
        })
        .collect()
}

fn slow_run(manifest: &Path) -> Child {
    spotbatch()
        .arg("run")
        .arg(manifest)
        .args(["--progress", "none", "--throttle-batch-ms", "40"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn spotbatch")
}

#[test]
fn ctrl_c_then_kill_9_then_resume_completes_exactly_once() {
    let job = JobDir::digits(1);
    let manifest = job.manifest(&[
        ("batch_size = 32", "batch_size = 4"),
        ("shard_size = 64", "shard_size = 16"),
    ]);
    let shards = 540usize.div_ceil(16);

    // 1. Ctrl-C part-way: leases are released, exit code 130, a hint to resume.
    let mut child = slow_run(&manifest);
    wait_for_markers(&job, &mut child, 2);
    let status = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("interrupted: leases released"), "{stderr}");
    assert!(
        stderr.contains("Run the same command again to resume"),
        "{stderr}"
    );

    // 2. Run again and kill -9 part-way: its leases stay behind in the queue file.
    let mut child = slow_run(&manifest);
    let before_kill = job.done_markers();
    wait_for_markers(&job, &mut child, before_kill + 2);
    child.kill().unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The Ctrl-C run released everything: this run found no leases to reclaim.
    assert!(
        !stderr.contains("left in work by an interrupted run"),
        "{stderr}"
    );
    assert!(stderr.contains("shards already done"), "{stderr}");
    let done_before = job.done_markers();
    assert!(
        done_before < shards,
        "the job must not have finished before the kill"
    );
    let parts_before = part_mtimes(&job.job_out());

    // 3. Run again: the killed run's leases are reclaimed at once, finished shards skipped.
    let started = Instant::now();
    let out = run_ok(
        spotbatch()
            .arg("run")
            .arg(&manifest)
            .args(["--progress", "none"]),
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "resume must not wait for lease expiry"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("left in work by an interrupted run are back on the queue"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "resuming: {done_before} of {shards} shards already done"
        )),
        "{stderr}"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("540 of 540 items in {shards}/{shards} shards")),
        "{stdout}"
    );

    let rows = job.one_row_per_input();
    assert!(rows.values().all(|r| r["error"].is_null()));
    // Shards finished before the kill were skipped, not rewritten.
    let parts_after = part_mtimes(&job.job_out());
    for (name, t) in &parts_before {
        assert_eq!(parts_after.get(name), Some(t), "{name} was rewritten");
    }
    assert_eq!(parts_after.len(), shards);
}

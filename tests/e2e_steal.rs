//! Work stealing between real worker processes, through a real coordinator, on a SQLite queue: a
//! straggler holding many unstarted shards is relieved by an idle peer; a thief `kill -9`-ed
//! while holding stolen shards loses them back to their owner; an owner `kill -9`-ed after
//! handing shards over leaves a job that still completes without a duplicate row. Peer calls
//! need the bearer token.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::coord::*;
use common::*;

/// A worker of the coordinator at `url`, serving peers on `peer`, logging to `DIR/ID.log`.
fn worker(url: &str, id: &str, dir: &Path, peer: SocketAddr, extra: &[&str]) -> Child {
    sb(Some(TOKEN))
        .args([
            "worker",
            "--coordinator",
            url,
            "--exit-when-empty",
            "--id",
            id,
        ])
        .args(["--peer-listen", &peer.to_string()])
        .args(extra)
        .env("SPOTBATCH_LOG", "spotbatch=info,spotbatch_worker=info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join(format!("{id}.log"))).unwrap())
        .spawn()
        .unwrap()
}

fn log(dir: &Path, id: &str) -> String {
    std::fs::read_to_string(dir.join(format!("{id}.log"))).unwrap_or_default()
}

/// Waits (bounded) until `id`'s log contains `what`.
fn wait_log(dir: &Path, id: &str, what: &str, within: Duration) {
    let until = Instant::now() + within;
    while !log(dir, id).contains(what) {
        assert!(
            Instant::now() < until,
            "{id} never logged {what:?}:\n{}",
            log(dir, id)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits (bounded) until the coordinator sees `id` holding at least `n` shards.
fn wait_holding(url: &str, job: &str, id: &str, n: usize) {
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let s = status_json(url, job);
        let held = s["workers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|w| w["id"].as_str().is_some_and(|w| w.starts_with(id)))
            .map(|w| w["shards"].as_array().map_or(0, Vec::len))
            .max()
            .unwrap_or(0);
        if held >= n {
            return;
        }
        assert!(Instant::now() < until, "{id} never held {n} shards: {s}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn wait_ok(c: &mut Child, id: &str, dir: &Path) {
    let status = wait_bounded(c, Duration::from_secs(180));
    assert!(
        status.is_some_and(|s| s.success()),
        "{id} did not finish ({status:?}):\n{}",
        log(dir, id)
    );
}

/// Every input exactly one row (`rows()` panics on a duplicate), every shard done, the queue
/// empty and nothing dead-lettered.
fn check_complete(url: &str, job_id: &str, job: &JobDir, queue: &str) {
    let rows = job.one_row_per_input();
    assert!(rows.values().all(|r| r["error"].is_null()));
    let s = wait_done(url, job_id, Duration::from_secs(15));
    assert_eq!(s["shards"]["done"], job.done_markers() as u64, "{s}");
    assert_eq!(s["dead_lettered"].as_array().map(Vec::len), Some(0), "{s}");
    let depth = run_ok(sb(None).args(["queue", "depth", queue]));
    assert_eq!(
        String::from_utf8_lossy(&depth.stdout).trim(),
        "visible 0 in_flight 0 dead 0"
    );
}

/// A job (every `step`-th demo image, shards of `shard_size`, batches of `batch`), a coordinator
/// on a SQLite queue and the submitted job's id. The throttle knob pauses after every batch, and
/// batches span shards: small batches make a throttled worker slow per shard.
fn setup(step: usize, shard_size: usize, batch: usize) -> (JobDir, Coord, String, String) {
    let job = JobDir::digits(step);
    let manifest = job.manifest(&[
        ("shard_size = 64", &format!("shard_size = {shard_size}")),
        ("batch_size = 32", &format!("batch_size = {batch}")),
    ]);
    let queue = format!("sqlite://{}", job.path().join("q.db").display());
    let coord = Coord::start(job.path(), &queue, free_addr(), free_addr());
    let (job_id, _) = submit(&coord.url(), &manifest);
    (job, coord, job_id, queue)
}

/// Six shards of 9 images in batches of 3, all held by one throttled worker ("owner", with
/// `extra` flags): its job, coordinator, job id, queue and process.
fn owner_holding_all(extra: &[&str]) -> (JobDir, Coord, String, String, Child) {
    let (job, coord, job_id, queue) = setup(10, 9, 3);
    let url = coord.url();
    let flags = [&["--prefetch", "8"][..], extra].concat();
    let owner = worker(&url, "owner", job.path(), free_addr(), &flags);
    wait_holding(&url, &job_id, "owner", 6);
    (job, coord, job_id, queue, owner)
}

/// Calls `Steal` on a worker's peer port with `token` and returns the gRPC code.
fn steal_code(peer: SocketAddr, token: Option<&str>) -> tonic::Code {
    use spotbatch_proto::api::peer_client::PeerClient;
    use spotbatch_proto::api::StealRequest;
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let Ok(mut c) = PeerClient::connect(format!("http://{peer}")).await else {
            return tonic::Code::Unavailable;
        };
        let mut req = tonic::Request::new(StealRequest {
            thief_id: "intruder".into(),
            thief_address: String::new(),
            max: 0,
        });
        if let Some(t) = token {
            req.metadata_mut()
                .insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        match c.steal(req).await {
            Ok(_) => tonic::Code::Ok,
            Err(s) => s.code(),
        }
    })
}

#[test]
fn an_idle_worker_takes_over_a_stragglers_unstarted_shards() {
    // 54 shards of 10 in batches of 10; the straggler sleeps 300 ms after every batch and may
    // hold 24 shards: alone it would need 54 × 0.3 s.
    let (job, coord, job_id, queue) = setup(1, 10, 10);
    let url = coord.url();
    let slow_peer = free_addr();
    let mut slow = worker(
        &url,
        "slow",
        job.path(),
        slow_peer,
        &["--throttle-batch-ms", "300", "--prefetch", "24"],
    );
    wait_holding(&url, &job_id, "slow", 10);
    // Its heartbeats tell the coordinator how many of them are unstarted (what thieves look for).
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let s = status_json(&url, &job_id);
        let unstarted = s["workers"][0]["unstarted"].as_u64().unwrap_or(0);
        if unstarted >= 5 {
            break;
        }
        assert!(Instant::now() < until, "no unstarted shards reported: {s}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Peer calls need the coordinator's token.
    assert_eq!(steal_code(slow_peer, None), tonic::Code::Unauthenticated);
    assert_eq!(
        steal_code(slow_peer, Some("not-the-token")),
        tonic::Code::Unauthenticated
    );
    let mut fast = worker(&url, "fast", job.path(), free_addr(), &["--prefetch", "4"]);
    wait_ok(&mut fast, "fast", job.path());
    wait_ok(&mut slow, "slow", job.path());
    check_complete(&url, &job_id, &job, &queue);
    let (fast_log, slow_log) = (log(job.path(), "fast"), log(job.path(), "slow"));
    assert!(fast_log.contains("stole unstarted shards"), "{fast_log}");
    assert!(
        slow_log.contains("handed unstarted shards to an idle peer")
            && slow_log.contains("a peer finished a shard handed to it; acking"),
        "{slow_log}"
    );
}

#[test]
fn a_thief_killed_holding_stolen_shards_loses_them_back_to_the_owner() {
    // The thief is slow enough to be killed while it holds what it stole.
    let (job, coord, job_id, queue, mut owner) =
        owner_holding_all(&["--throttle-batch-ms", "300", "--handoff-timeout-ms", "2000"]);
    let url = coord.url();
    let mut thief = worker(
        &url,
        "thief",
        job.path(),
        free_addr(),
        &["--throttle-batch-ms", "20000", "--prefetch", "2"],
    );
    wait_log(
        job.path(),
        "thief",
        "stole unstarted shards",
        Duration::from_secs(30),
    );
    thief.kill().unwrap();
    let _ = thief.wait();
    wait_ok(&mut owner, "owner", job.path());
    check_complete(&url, &job_id, &job, &queue);
    let owner_log = log(job.path(), "owner");
    assert!(
        owner_log.contains("took a handed-over shard back")
            && owner_log.contains("the peer went silent past the hand-off timeout"),
        "{owner_log}"
    );
    assert!(owner_log.contains(": 6 shards done"), "{owner_log}");
}

#[test]
fn an_owner_killed_after_handing_shards_over_leaves_no_duplicate_rows() {
    // Short leases, so the dead owner's shards come back soon; the thief finishes the stolen
    // shards after the owner is gone, then finds them done when they are redelivered.
    let (job, coord, job_id, queue, mut owner) = owner_holding_all(&[
        "--throttle-batch-ms",
        "600",
        "--visibility-timeout-secs",
        "4",
    ]);
    let url = coord.url();
    let mut thief = worker(
        &url,
        "thief",
        job.path(),
        free_addr(),
        &[
            "--throttle-batch-ms",
            "300",
            "--prefetch",
            "2",
            "--visibility-timeout-secs",
            "4",
        ],
    );
    wait_log(
        job.path(),
        "thief",
        "stole unstarted shards",
        Duration::from_secs(30),
    );
    owner.kill().unwrap();
    let _ = owner.wait();
    wait_ok(&mut thief, "thief", job.path());
    check_complete(&url, &job_id, &job, &queue);
    let thief_log = log(job.path(), "thief");
    // The stolen shards were written by the thief and, redelivered after the owner's leases
    // ran out, found done.
    assert!(
        thief_log.contains("the owner is gone") || thief_log.contains("does not answer"),
        "{thief_log}"
    );
    assert!(
        !thief_log.contains("(0 skipped as already done"),
        "the redelivered stolen shards were found done: {thief_log}"
    );
}

#[test]
fn a_draining_worker_offers_its_unstarted_shards_to_an_idle_peer() {
    // The owner is slow (about 3 s a shard), so it still has unstarted shards when a peer that
    // is slow to start (a loaded machine) has stolen its half.
    let (job, coord, job_id, queue, mut owner) =
        owner_holding_all(&["--throttle-batch-ms", "1000"]);
    let url = coord.url();
    // Once the owner has measured its pace (one shard done), a slow peer joins, steals some, and
    // is busy with them (not idle) when the owner is told to drain.
    let until = Instant::now() + Duration::from_secs(30);
    while status_json(&url, &job_id)["shards"]["done"].as_u64() < Some(1) {
        assert!(Instant::now() < until, "the owner finished no shard");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut peer = worker(
        &url,
        "peer",
        job.path(),
        free_addr(),
        &["--throttle-batch-ms", "1000", "--prefetch", "8"],
    );
    wait_log(
        job.path(),
        "peer",
        "stole unstarted shards",
        Duration::from_secs(30),
    );
    sigterm(&owner);
    wait_ok(&mut owner, "owner", job.path());
    wait_ok(&mut peer, "peer", job.path());
    check_complete(&url, &job_id, &job, &queue);
    let (owner_log, peer_log) = (log(job.path(), "owner"), log(job.path(), "peer"));
    let accepted: u64 = log_numbers(
        &owner_log,
        "offered unstarted shards to an idle peer",
        "accepted",
    )
    .iter()
    .sum();
    assert!(accepted >= 1, "the peer took offered shards:\n{owner_log}");
    assert!(
        peer_log.contains("took shards offered by a draining peer"),
        "{peer_log}"
    );
    // The owner acked what the peer finished before its deadline, and released nothing it gave.
    assert!(
        owner_log.contains("a peer finished a shard handed to it; acking"),
        "{owner_log}"
    );
}

#[test]
fn peers_steal_over_tls_and_refuse_plain_text() {
    let (job, coord, job_id, queue) = setup(10, 9, 3);
    let url = coord.url();
    let d = job.path();
    make_tls(d);
    let file = |name: &str| d.join(name).to_string_lossy().to_string();
    let (cert, key, ca) = (file("server.pem"), file("server.key"), file("ca.pem"));
    let tls = [
        "--peer-tls-cert",
        &cert,
        "--peer-tls-key",
        &key,
        "--tls-ca",
        &ca,
    ];
    let owner_peer = free_addr();
    let flags = [&tls[..], &["--throttle-batch-ms", "300", "--prefetch", "8"]].concat();
    let mut owner = worker(&url, "owner", d, owner_peer, &flags);
    wait_holding(&url, &job_id, "owner", 6);
    // Plain text to the TLS port gets nowhere, token or not.
    assert_ne!(steal_code(owner_peer, Some(TOKEN)), tonic::Code::Ok);
    let flags = [&tls[..], &["--prefetch", "2"]].concat();
    let mut thief = worker(&url, "thief", d, free_addr(), &flags);
    wait_ok(&mut thief, "thief", d);
    wait_ok(&mut owner, "owner", d);
    check_complete(&url, &job_id, &job, &queue);
    let (owner_log, thief_log) = (log(d, "owner"), log(d, "thief"));
    assert!(owner_log.contains("peer=https://127.0.0.1:"), "{owner_log}");
    assert!(thief_log.contains("stole unstarted shards"), "{thief_log}");
    assert!(
        owner_log.contains("a peer finished a shard handed to it; acking"),
        "{owner_log}"
    );
}

#[test]
fn steal_off_leaves_a_stragglers_shards_with_it() {
    let (job, coord, job_id, queue, mut owner) =
        owner_holding_all(&["--throttle-batch-ms", "300", "--steal", "off"]);
    let url = coord.url();
    let mut idle = worker(
        &url,
        "idle",
        job.path(),
        free_addr(),
        &["--prefetch", "2", "--steal", "off"],
    );
    wait_ok(&mut idle, "idle", job.path());
    wait_ok(&mut owner, "owner", job.path());
    check_complete(&url, &job_id, &job, &queue);
    let (owner_log, idle_log) = (log(job.path(), "owner"), log(job.path(), "idle"));
    assert!(!owner_log.contains("work stealing on"), "{owner_log}");
    assert!(!idle_log.contains("stole unstarted shards"), "{idle_log}");
    assert!(owner_log.contains(": 6 shards done"), "{owner_log}");
    assert!(idle_log.contains(": 0 shards done"), "{idle_log}");
}

#[test]
fn a_peer_address_peers_cannot_use_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            vec!["--peer-advertise", "10.0.0.7:7071"],
            "peers reach this worker at http://HOST:PORT",
        ),
        (
            vec![
                "--peer-advertise",
                "http://10.0.0.7:7071",
                "--peer-tls-cert",
                "cert.pem",
                "--peer-tls-key",
                "missing-key.pem",
            ],
            "missing-key.pem",
        ),
        (
            vec![
                "--peer-advertise",
                "https://10.0.0.7:7071",
                "--peer-tls-cert",
                "cert.pem",
                "--peer-tls-key",
                "key.pem",
            ],
            "--peer-tls-cert/--peer-tls-key: not a usable certificate and key",
        ),
    ];
    std::fs::write(dir.path().join("cert.pem"), "not a certificate").unwrap();
    std::fs::write(dir.path().join("key.pem"), "not a key").unwrap();
    for (flags, want) in cases {
        let out = sb(Some(TOKEN))
            .current_dir(dir.path())
            .args(["worker", "--coordinator", "http://127.0.0.1:9"])
            .args(["--peer-listen", "127.0.0.1:0"])
            .args(&flags)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{flags:?}: {err}");
        assert!(err.contains(want), "{flags:?}: {err}");
    }
}

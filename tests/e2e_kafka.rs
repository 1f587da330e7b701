//! Distributed mode on Kafka, on librdkafka's mock cluster (in this test process) and on nisshi 0.8.1
//! (a separate process), both on loopback, with spotbatch's own batched producer; the workers are
//! separate processes. `enqueue` + three workers; one drained with SIGTERM, whose partitions move
//! and are worked within 5 s (proven on nisshi: the mock coordinator holds each rebalance round for
//! about 5 s), one `kill -9`-ed, whose partitions reach the survivor after the session timeout (no
//! broker here leaves a survivor without partitions); every input exactly once; a foreign record
//! lands in the dead-letter topic with its reason.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use rdkafka::config::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};

fn wait_markers(job: &JobDir, n: usize) {
    let until = Instant::now() + Duration::from_secs(120);
    while job.done_markers() < n {
        assert!(Instant::now() < until, "stuck below {n} done shards");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn worker(
    queue: &str,
    manifest: &std::path::Path,
    id: &str,
    log: &std::path::Path,
    throttle_ms: u64,
) -> Child {
    spotbatch()
        .args([
            "worker",
            "--queue",
            queue,
            "--exit-when-empty",
            "--prefetch",
            "2",
            "--throttle-batch-ms",
            &throttle_ms.to_string(),
        ])
        .args(["--grace-period-secs", "5", "--id", id])
        .arg("--manifest")
        .arg(manifest)
        .env(
            "SPOTBATCH_LOG",
            std::env::var("E2E_KAFKA_LOG")
                .unwrap_or_else(|_| "spotbatch_worker=info,spotbatch_queue=info".into()),
        )
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}

#[test]
fn kafka_two_workers_kill_and_drain_every_input_once_on_the_mock_cluster() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("shards", 6, 1).unwrap();
    cluster.create_topic("shards-dlq", 1, 1).unwrap();
    let queue = format!(
        "kafka://{}/shards?partitions=6&session_timeout_ms=6000",
        cluster.bootstrap_servers()
    );
    // librdkafka's mock coordinator holds every rebalance round for about 5 s (seen in the
    // workers' logs), so the hand-over time is proven on nisshi; here the partitions must move.
    two_workers_kill_and_drain(
        "mock",
        &queue,
        &cluster.bootstrap_servers(),
        "shards",
        Duration::from_secs(30),
        // Slower batches: the job must outlast the mock's slow rebalances.
        700,
    );
    drop(cluster);
}

#[test]
fn kafka_two_workers_kill_and_drain_every_input_once_on_nisshi() {
    let brokers = std::env::var("SPOTBATCH_TEST_KAFKA_BROKERS")
        .expect("SPOTBATCH_TEST_KAFKA_BROKERS is not set: run the tests with `make test`, which starts nisshi");
    let topic = unique("shards");
    let queue = format!("kafka://{brokers}/{topic}?partitions=6&session_timeout_ms=6000");
    run_ok(spotbatch().args(["queue", "create", &queue]));
    two_workers_kill_and_drain(
        "nisshi",
        &queue,
        &brokers,
        &topic,
        Duration::from_secs(5),
        300,
    );
}

fn two_workers_kill_and_drain(
    broker: &str,
    queue: &str,
    brokers: &str,
    topic: &str,
    handover: Duration,
    throttle_ms: u64,
) {
    let queue = queue.to_string();
    let job = JobDir::digits(1);
    let manifest = job.manifest(&[
        ("batch_size = 32", "batch_size = 5"),
        ("shard_size = 64", "shard_size = 10"),
        (
            "uri = \"sqlite://./queue.db\"",
            &format!("uri = \"{queue}\""),
        ),
    ]);
    let out = run_ok(spotbatch().arg("enqueue").arg(&manifest));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(": 54 shards enqueued"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // A record that is not ours.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    rt.block_on(
        producer.send(
            FutureRecord::to(topic)
                .key("x")
                .payload("{\"hello\":\"kafka\"}"),
            Duration::from_secs(10),
        ),
    )
    .unwrap();

    let dir = job.path();
    let assigned = |name: &str| {
        std::fs::read_to_string(dir.join(name))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("kafka partitions assigned") && !l.ends_with("partitions=[]"))
            .count()
    };
    let mut a = worker(&queue, &manifest, "A", &dir.join("a.log"), throttle_ms);
    let mut b = worker(&queue, &manifest, "B", &dir.join("b.log"), throttle_ms);
    wait_markers(&job, 3);
    let mut c = worker(&queue, &manifest, "C", &dir.join("c.log"), throttle_ms);
    let joined = Instant::now();
    // Every member has a share of the partitions: the group is settled before B is drained.
    while assigned("c.log") == 0 || assigned("b.log") == 0 || assigned("a.log") == 0 {
        assert!(
            joined.elapsed() < Duration::from_secs(60),
            "C never got partitions"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_secs(1));
    // Drain B with SIGTERM: it releases, commits, leaves; its partitions reach A or C within 5 s.
    let before = assigned("a.log") + assigned("c.log");
    let term = Instant::now();
    Command::new("kill")
        .args(["-TERM", &b.id().to_string()])
        .status()
        .unwrap();
    let b_status = wait_bounded(&mut b, Duration::from_secs(30));
    assert!(
        b_status.is_some_and(|s| s.success()),
        "a drained worker exits 0: {}",
        std::fs::read_to_string(dir.join("b.log")).unwrap()
    );
    while assigned("a.log") + assigned("c.log") == before {
        assert!(
            term.elapsed() < handover,
            "B's partitions did not move within {handover:?}\nA: {}\nB: {}\nC: {}",
            rebalances(&dir.join("a.log")),
            rebalances(&dir.join("b.log")),
            rebalances(&dir.join("c.log"))
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let moved = term.elapsed();
    if moved > handover / 2 {
        println!(
            "slow hand-over ({moved:?}):\nA: {}\nB: {}\nC: {}",
            rebalances(&dir.join("a.log")),
            rebalances(&dir.join("b.log")),
            rebalances(&dir.join("c.log"))
        );
    }
    // Then kill A without notice: its partitions reach C after the 6 s session timeout.
    let done_before_kill = job.done_markers();
    let c_before = assigned("c.log");
    a.kill().unwrap();
    a.wait().unwrap();
    let killed = Instant::now();
    while assigned("c.log") == c_before && c.try_wait().unwrap().is_none() {
        assert!(
            killed.elapsed() < Duration::from_secs(40),
            "A's partitions never reached C after its session expired\nA: {}\nC: {}",
            rebalances(&dir.join("a.log")),
            rebalances(&dir.join("c.log"))
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let taken_over = killed.elapsed();
    let c_status = wait_bounded(&mut c, Duration::from_secs(150));
    let c_log = std::fs::read_to_string(dir.join("c.log")).unwrap();
    assert!(
        c_status.is_some_and(|s| s.success()),
        "C did not finish the job ({c_status:?}):\n{c_log}\nA: {}\nB: {}",
        std::fs::read_to_string(dir.join("a.log")).unwrap_or_default(),
        std::fs::read_to_string(dir.join("b.log")).unwrap_or_default()
    );
    assert!(done_before_kill < 54, "A was killed before the job ended");
    println!(
        "kafka ({broker}): partitions moved {moved:?} after SIGTERM, {taken_over:?} after SIGKILL"
    );

    job.one_row_per_input();
    assert_eq!(job.done_markers(), 54);
    let dlq = run_ok(spotbatch().args(["queue", "dlq", &queue]));
    let listing = String::from_utf8_lossy(&dlq.stdout);
    // Dead-lettering is at-least-once too: a worker killed between producing to the DLQ topic and
    // committing past the record makes the next owner dead-letter it again. One item, then.
    let items: std::collections::BTreeSet<&str> = listing
        .lines()
        .filter_map(|l| l.split(" (").next())
        .collect();
    assert_eq!(items.len(), 1, "{listing}");
    assert!(
        listing.contains("not a spotbatch shard message ("),
        "{listing}"
    );
}

#[test]
fn missing_topic_and_unreachable_brokers_are_clear_errors() {
    let cluster = MockCluster::new(1).unwrap();
    let queue = format!("kafka://{}/nope", cluster.bootstrap_servers());
    let out = spotbatch()
        .args(["queue", "depth", &queue])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("topic nope does not exist") && err.contains("spotbatch queue create"),
        "{err}"
    );
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let out = spotbatch()
        .args(["queue", "depth", &format!("kafka://{closed}/t")])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot reach the Kafka brokers"), "{err}");
}

/// `--exit-when-empty` with `--give-up-after-secs`: a worker whose Kafka brokers disappear for
/// good in the middle of a job (the mock cluster, in this process, is dropped) exits 1 with a
/// message naming the brokers and the limit once it has not reached them for that long, instead
/// of retrying forever.
#[test]
fn a_worker_that_exits_when_empty_gives_up_when_the_brokers_are_gone_for_good() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("shards", 2, 1).unwrap();
    cluster.create_topic("shards-dlq", 1, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    let queue = format!("kafka://{brokers}/shards?partitions=2&session_timeout_ms=6000");
    let job = JobDir::digits(5);
    let manifest = job.manifest(&[
        ("batch_size = 32", "batch_size = 5"),
        ("shard_size = 64", "shard_size = 10"),
        (
            "uri = \"sqlite://./queue.db\"",
            &format!("uri = \"{queue}\""),
        ),
    ]);
    run_ok(spotbatch().arg("enqueue").arg(&manifest));
    let log = job.path().join("w.log");
    let mut w = spotbatch()
        .args(["worker", "--queue", &queue, "--exit-when-empty"])
        .args(["--give-up-after-secs", "4", "--prefetch", "1"])
        .args(["--throttle-batch-ms", "400"])
        .arg("--manifest")
        .arg(&manifest)
        .env(
            "SPOTBATCH_LOG",
            "spotbatch_worker=info,spotbatch_queue=info",
        )
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    wait_markers(&job, 1);
    drop(cluster);
    let gone = Instant::now();
    let status = wait_bounded(&mut w, Duration::from_secs(90));
    let took = gone.elapsed();
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(status.and_then(|s| s.code()), Some(1), "{text}");
    assert!(
        took >= Duration::from_secs(4) && took < Duration::from_secs(45),
        "gave up {took:?} after the brokers went:\n{text}"
    );
    assert!(
        text.contains("gave up after 4 s without reaching it (--give-up-after-secs)")
            && text.contains(&brokers),
        "{text}"
    );
    assert!(
        job.done_markers() < 11,
        "the job finished before the brokers went"
    );
    println!("kafka (mock): gave up {took:?} after the brokers went");
}

/// The rebalance lines of a worker's log, for failure messages.
fn rebalances(log: &std::path::Path) -> String {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| {
            l.contains("kafka partitions")
                || l.contains("kafka group")
                || l.contains("notice")
                || l.contains("drain")
                || l.contains("released")
                || l.contains("shards done")
        })
        .collect::<Vec<_>>()
        .join("\n   ")
}

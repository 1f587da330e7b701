//! Distributed mode on Kafka, on librdkafka's mock cluster (in this test process, listening on
//! loopback; the workers are separate processes): `enqueue` + two workers; one `kill -9`-ed
//! part-way, one drained with SIGTERM. The drained worker's partitions move and are worked within
//! 5 s; the killed one's after the session timeout; every input exactly once; a foreign record
//! lands in the dead-letter topic with its reason.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use rdkafka::config::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};

fn markers(job: &JobDir) -> usize {
    std::fs::read_dir(job.path().join("out"))
        .ok()
        .and_then(|mut d| d.next())
        .and_then(|j| std::fs::read_dir(j.ok()?.path().join("_done")).ok())
        .map(|d| d.count())
        .unwrap_or(0)
}

fn wait_markers(job: &JobDir, n: usize) {
    let until = Instant::now() + Duration::from_secs(120);
    while markers(job) < n {
        assert!(Instant::now() < until, "stuck below {n} done shards");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn worker(queue: &str, manifest: &std::path::Path, id: &str, log: &std::path::Path) -> Child {
    spotbatch()
        .args([
            "worker",
            "--queue",
            queue,
            "--exit-when-empty",
            "--prefetch",
            "2",
            "--throttle-batch-ms",
            "200",
        ])
        .args(["--grace-period-secs", "5", "--id", id])
        .arg("--manifest")
        .arg(manifest)
        .env(
            "SPOTBATCH_LOG",
            "spotbatch_worker=info,spotbatch_queue=info",
        )
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}

#[test]
fn kafka_two_workers_kill_and_drain_every_input_once() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("shards", 4, 1).unwrap();
    cluster.create_topic("shards-dlq", 1, 1).unwrap();
    let queue = format!(
        "kafka://{}/shards?partitions=4&session_timeout_ms=6000",
        cluster.bootstrap_servers()
    );
    let job = JobDir::digits(1);
    let manifest = job.manifest(&[
        ("batch_size = 32", "batch_size = 5"),
        ("shard_size = 64", "shard_size = 20"),
        (
            "uri = \"sqlite://./queue.db\"",
            &format!("uri = \"{queue}\""),
        ),
    ]);
    let out = run_ok(spotbatch().arg("enqueue").arg(&manifest));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(": 27 shards enqueued"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // A record that is not ours.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap_servers())
        .create()
        .unwrap();
    rt.block_on(
        producer.send(
            FutureRecord::to("shards")
                .key("x")
                .payload("{\"hello\":\"kafka\"}"),
            Duration::from_secs(10),
        ),
    )
    .unwrap();

    let dir = job.path();
    let mut a = worker(&queue, &manifest, "A", &dir.join("a.log"));
    let mut b = worker(&queue, &manifest, "B", &dir.join("b.log"));
    wait_markers(&job, 4);
    a.kill().unwrap(); // no notice: A's partitions move after the 6 s session timeout
    a.wait().unwrap();
    let mut c = worker(&queue, &manifest, "C", &dir.join("c.log"));
    wait_markers(&job, 10);
    let assigned_before = std::fs::read_to_string(dir.join("c.log"))
        .unwrap()
        .matches("kafka partitions assigned")
        .count();
    let term = Instant::now();
    Command::new("kill")
        .args(["-TERM", &b.id().to_string()])
        .status()
        .unwrap();
    let b_status = b.wait().unwrap();
    assert!(
        b_status.success(),
        "a drained worker exits 0: {}",
        std::fs::read_to_string(dir.join("b.log")).unwrap()
    );
    // B's partitions reach C (and are worked) within 5 s of the SIGTERM.
    loop {
        let log = std::fs::read_to_string(dir.join("c.log")).unwrap();
        if log.matches("kafka partitions assigned").count() > assigned_before {
            break;
        }
        assert!(
            term.elapsed() < Duration::from_secs(5),
            "B's partitions did not move within 5 s:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let moved = term.elapsed();
    let c_status = c.wait().unwrap();
    let c_log = std::fs::read_to_string(dir.join("c.log")).unwrap();
    assert!(c_status.success(), "{c_log}");
    println!("kafka: partitions moved {moved:?} after SIGTERM");

    let rows = job.rows();
    assert_eq!(
        rows.keys().cloned().collect::<Vec<_>>(),
        job.input_keys(),
        "every input exactly once"
    );
    assert_eq!(markers(&job), 27);
    let dlq = run_ok(spotbatch().args(["queue", "dlq", &queue]));
    let listing = String::from_utf8_lossy(&dlq.stdout);
    assert_eq!(listing.lines().count(), 1, "{listing}");
    assert!(
        listing.contains("not a spotbatch shard message ("),
        "{listing}"
    );
    drop(cluster);
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

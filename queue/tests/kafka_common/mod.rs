//! Kafka checks shared by the mock-cluster and nisshi test files. Each takes a queue URI (or
//! brokers and a topic) and `create`: make the topic first (the mock cluster has no CreateTopics,
//! and asking it takes its 60 s request timeout; its topics are made beforehand with
//! `MockCluster::create_topic`).
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use spotbatch_queue::kafka::{self, KafkaQueue};
use spotbatch_queue::{Lease, LeaseQueue, NewItem, QueueConfig};

/// Shows the backend's logs in a test's output (printed when it fails; `--nocapture` shows them
/// always): `SPOTBATCH_TEST_LOG` filters them (default `spotbatch_queue=info`).
pub fn logs() {
    let filter =
        std::env::var("SPOTBATCH_TEST_LOG").unwrap_or_else(|_| "spotbatch_queue=info".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_test_writer()
        .with_ansi(false)
        .try_init();
}

/// `n` records, ids `r000`….
pub fn records(from: usize, n: usize) -> Vec<NewItem> {
    (from..from + n)
        .map(|i| NewItem {
            id: format!("r{i:03}"),
            body: format!("{{\"n\":{i}}}").into_bytes(),
        })
        .collect()
}

/// Leases exactly `n` records (failing if they do not come within 10 s).
async fn take(q: &KafkaQueue, n: usize) -> Vec<Lease> {
    let mut got = Vec::new();
    let until = Instant::now() + Duration::from_secs(10);
    while got.len() < n {
        assert!(Instant::now() < until, "got {} of {n} records", got.len());
        got.extend(
            q.lease(
                n - got.len(),
                Duration::from_secs(60),
                Duration::from_secs(1),
            )
            .await
            .unwrap(),
        );
    }
    got
}

/// Leases and acks everything that comes until nothing has for `quiet`.
async fn take_all(q: &KafkaQueue, quiet: Duration) -> Vec<Lease> {
    let mut got = Vec::new();
    loop {
        let l = q.lease(100, Duration::from_secs(60), quiet).await.unwrap();
        if l.is_empty() {
            return got;
        }
        q.ack(&l).await.unwrap();
        got.extend(l);
    }
}

/// Waits (up to `within`) until `q` reports nothing pending; returns the last depth's pending.
async fn drained(q: &KafkaQueue, within: Duration) -> u64 {
    let until = Instant::now() + within;
    loop {
        let pending = q.depth().await.unwrap().pending();
        if pending == 0 || Instant::now() >= until {
            return pending;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Produces 20 records as one batch (linger), then checks what a second group member gets after the
/// first commits inside the batch and leaves: (acked by the first, leased by the second).
pub async fn batched_resume(brokers: &str, topic: &str, create: bool) -> (usize, usize) {
    logs();
    use rdkafka::config::ClientConfig;
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let u = format!("kafka://{brokers}/{topic}?partitions=1&session_timeout_ms=6000");
    if create {
        kafka::create(&u).await.unwrap();
    }
    let p: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "200")
        .create()
        .unwrap();
    let sends: Vec<_> = (0..20)
        .map(|i| {
            let body = format!("{{\"n\":{i}}}");
            let p = p.clone();
            let topic = topic.to_string();
            async move {
                p.send(
                    FutureRecord::to(&topic).key("k").payload(&body),
                    Duration::from_secs(10),
                )
                .await
                .map(|_| ())
            }
        })
        .collect();
    for r in futures::future::join_all(sends).await {
        r.unwrap();
    }
    let first = KafkaQueue::open_uri(&u, QueueConfig::default())
        .await
        .unwrap();
    let got = take(&first, 7).await;
    first.ack(&got).await.unwrap();
    first.close().await.unwrap();
    drop(first);
    let second = KafkaQueue::open_uri(&u, QueueConfig::default())
        .await
        .unwrap();
    let rest = take_all(&second, Duration::from_secs(8)).await;
    second.close().await.unwrap();
    (got.len(), rest.len())
}

/// The loss that tansu 0.6 caused with spotbatch's own (batched) producer: a partition moves
/// after a commit inside a batch, and a broker that answers a fetch inside a batch with the next
/// batch makes the new owner skip the rest of it. Six batches of ten records on one partition; the
/// partition moves three times, each time after a commit inside a batch. Returns (records never
/// acked, offset gaps the members found); every member ends reporting nothing pending.
pub async fn batches_survive_partition_moves(u: &str, create: bool) -> (usize, u64) {
    logs();
    if create {
        kafka::create(u).await.unwrap();
    }
    let first = KafkaQueue::open_uri(u, QueueConfig::default())
        .await
        .unwrap();
    for b in 0..6 {
        // One enqueue call, one batch (spotbatch's producer: linger 0, up to 10000 per batch).
        first.enqueue(&records(b * 10, 10)).await.unwrap();
    }
    let mut acked = BTreeSet::new();
    let mut gaps = 0;
    let mut member = first;
    for take_n in [7, 11, 15] {
        let got = take(&member, take_n).await;
        member.ack(&got).await.unwrap();
        acked.extend(got.iter().map(|l| l.id.clone()));
        gaps += member.offset_gaps();
        member.close().await.unwrap();
        drop(member);
        member = KafkaQueue::open_uri(u, QueueConfig::default())
            .await
            .unwrap();
    }
    let rest = take_all(&member, Duration::from_secs(5)).await;
    acked.extend(rest.iter().map(|l| l.id.clone()));
    assert_eq!(
        drained(&member, Duration::from_secs(20)).await,
        0,
        "the last member sees the topic drained"
    );
    gaps += member.offset_gaps();
    member.close().await.unwrap();
    let missing = records(0, 60)
        .iter()
        .filter(|r| !acked.contains(&r.id))
        .count();
    println!("batched records over partition moves: {missing} never acked, {gaps} offset gaps");
    (missing, gaps)
}

/// Members join and leave a group on a 4-partition topic while acking what they get (many
/// rebalances, commits refused in some of them); once every record is acked, every member left
/// must see nothing pending (what `--exit-when-empty` waits for) within 15 s. Returns the commits
/// the members had to retry.
pub async fn drained_after_many_rebalances(u: &str, create: bool, rounds: usize) -> u64 {
    logs();
    if create {
        kafka::create(u).await.unwrap();
    }
    let n = 200;
    let t0 = Instant::now();
    let mut members = vec![KafkaQueue::open_uri(u, QueueConfig::default())
        .await
        .unwrap()];
    members[0].enqueue(&records(0, n)).await.unwrap();
    let mut acked = BTreeSet::new();
    let mut retries = 0;
    for round in 0..rounds {
        members.push(
            KafkaQueue::open_uri(u, QueueConfig::default())
                .await
                .unwrap(),
        );
        for m in &members {
            let l = m
                .lease(12, Duration::from_secs(60), Duration::from_millis(300))
                .await
                .unwrap();
            m.ack(&l).await.unwrap();
            acked.extend(l.iter().map(|l| l.id.clone()));
        }
        if round % 2 == 1 {
            let gone = members.remove(0);
            retries += gone.commit_retries();
            gone.close().await.unwrap();
        }
    }
    println!(
        "{} of {n} acked after {rounds} rounds, {:?}",
        acked.len(),
        t0.elapsed()
    );
    let until = Instant::now() + Duration::from_secs(90);
    while acked.len() < n {
        assert!(
            Instant::now() < until,
            "only {} of {n} records acked",
            acked.len()
        );
        for m in &members {
            let l = m
                .lease(100, Duration::from_secs(60), Duration::from_millis(200))
                .await
                .unwrap();
            m.ack(&l).await.unwrap();
            acked.extend(l.iter().map(|l| l.id.clone()));
        }
    }
    for (i, m) in members.iter().enumerate() {
        assert_eq!(
            drained(m, Duration::from_secs(15)).await,
            0,
            "member {i} of {} still sees work after every record was acked",
            members.len()
        );
    }
    println!("every member drained after {:?}", t0.elapsed());
    for m in members {
        retries += m.commit_retries();
        m.close().await.unwrap();
    }
    retries
}

/// A member stops fetching (pauses its partitions) while plenty of records wait in its buffer. A
/// partition revoked from it while paused and assigned back later must be fetched again:
/// librdkafka keeps an application's pause on a partition across revoke and assign, so a member
/// that forgot it had paused that partition would hold it without ever reading it (the chaos test
/// on tansu once wedged this way: every worker idle, one partition's records never read).
/// Enqueues `n` records; returns how many distinct ones the first member ended up acking.
pub async fn paused_partition_comes_back(u: &str, n: usize, create: bool) -> usize {
    logs();
    if create {
        kafka::create(u).await.unwrap();
    }
    let items = records(0, n);
    let vis = Duration::from_secs(60);
    let t0 = Instant::now();
    let a = KafkaQueue::open_uri(u, QueueConfig::default())
        .await
        .unwrap();
    a.enqueue(&items).await.unwrap();
    // Nothing leased yet: `a` fills its buffer and pauses both partitions.
    tokio::time::sleep(Duration::from_secs(2)).await;
    // A second member joins: one partition is revoked from `a` while paused. It holds it once it
    // can lease from it.
    let b = KafkaQueue::open_uri(u, QueueConfig::default())
        .await
        .unwrap();
    println!("second member joined after {:?}", t0.elapsed());
    let mut acked = BTreeSet::new();
    let until = Instant::now() + Duration::from_secs(60);
    let taken = loop {
        assert!(
            Instant::now() < until,
            "the second member never got a partition"
        );
        // Meanwhile `a` works through its buffer, so it resumes fetching what it still owns.
        let l = a.lease(100, vis, Duration::from_millis(200)).await.unwrap();
        a.ack(&l).await.unwrap();
        acked.extend(l.iter().map(|l| l.id.clone()));
        let t = b.lease(1, vis, Duration::from_millis(200)).await.unwrap();
        if !t.is_empty() {
            break t;
        }
    };
    println!(
        "second member leased from its partition after {:?}",
        t0.elapsed()
    );
    // `b` leaves without acking: its partition goes back to `a`, from the last commit.
    b.release(&taken, None).await.unwrap();
    b.close().await.unwrap();
    drop(b);
    let mut quiet_since = Instant::now();
    while acked.len() < n && quiet_since.elapsed() < Duration::from_secs(20) {
        let l = a.lease(100, vis, Duration::from_secs(1)).await.unwrap();
        if !l.is_empty() {
            quiet_since = Instant::now();
        }
        a.ack(&l).await.unwrap();
        acked.extend(l.iter().map(|l| l.id.clone()));
    }
    println!("{} records acked after {:?}", acked.len(), t0.elapsed());
    a.close().await.unwrap();
    acked.len()
}

/// A handle that only produces and reads the depth (`enqueue`, `submit`, the coordinator,
/// `queue depth`) is not a member of the consumer group: a working member keeps every partition
/// and leases all of the new records at once, while that handle is still open. (Before, opening
/// a handle joined the group: it took a share of the partitions it never read, for as long as it
/// was open, and its joining and leaving moved every member's partitions twice.) Returns how
/// many of the 40 records the member leased within 4 s.
pub async fn producers_are_not_members(u: &str, create: bool) -> usize {
    logs();
    if create {
        kafka::create(u).await.unwrap();
    }
    let worker = KafkaQueue::open_uri(u, QueueConfig::default())
        .await
        .unwrap();
    // The worker joins (its first lease) and owns every partition; nothing to lease yet.
    assert!(worker
        .lease(10, Duration::from_secs(60), Duration::from_millis(300))
        .await
        .unwrap()
        .is_empty());
    let producer = KafkaQueue::open_uri(u, QueueConfig::default())
        .await
        .unwrap();
    producer.enqueue(&records(0, 40)).await.unwrap();
    let depth = producer.depth().await.unwrap();
    assert_eq!(depth.pending(), 40, "{depth:?}");
    let until = Instant::now() + Duration::from_secs(4);
    let mut leased = BTreeSet::new();
    while leased.len() < 40 && Instant::now() < until {
        for l in worker
            .lease(40, Duration::from_secs(60), Duration::from_millis(200))
            .await
            .unwrap()
        {
            leased.insert(l.id.clone());
            worker.ack(&[l]).await.unwrap();
        }
    }
    producer.close().await.unwrap();
    worker.close().await.unwrap();
    leased.len()
}

//! Kafka checks shared by the mock-cluster and tansu test files.
#![allow(dead_code)]

use std::time::Duration;

use spotbatch_queue::kafka::{self, KafkaQueue};
use spotbatch_queue::{LeaseQueue, NewItem, QueueConfig};

/// `n` records, ids `r000`….
fn records(n: usize) -> Vec<NewItem> {
    (0..n)
        .map(|i| NewItem {
            id: format!("r{i:03}"),
            body: format!("{{\"n\":{i}}}").into_bytes(),
        })
        .collect()
}

/// A member takes 7 of 20 records, acks them (commit at 7) and leaves; the next member of the group
/// gets exactly the other 13.
pub async fn resume_mid_partition(u: &str) -> (usize, usize) {
    kafka::create(u).await.unwrap();
    let items = records(20);
    let first = KafkaQueue::open_uri(u, QueueConfig::default())
        .await
        .unwrap();
    first.enqueue(&items).await.unwrap();
    let mut got = Vec::new();
    while got.len() < 7 {
        let l = first
            .lease(
                7 - got.len(),
                Duration::from_secs(30),
                Duration::from_secs(5),
            )
            .await
            .unwrap();
        assert!(!l.is_empty(), "first member got {} records", got.len());
        got.extend(l);
    }
    first.ack(&got).await.unwrap();
    first.close().await.unwrap();
    drop(first);
    let second = KafkaQueue::open_uri(u, QueueConfig::default())
        .await
        .unwrap();
    let mut rest = Vec::new();
    loop {
        let l = second
            .lease(20, Duration::from_secs(30), Duration::from_secs(8))
            .await
            .unwrap();
        if l.is_empty() {
            break;
        }
        rest.extend(l);
    }
    let mut ids: Vec<String> = got.iter().chain(&rest).map(|l| l.id.clone()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(
        ids.len(),
        got.len() + rest.len(),
        "no record delivered to both members"
    );
    (got.len(), rest.len())
}

/// Produces 20 records as one batch (linger), then checks what a second group member gets after the
/// first commits inside the batch and leaves.
/// `create` as for `paused_partition_comes_back`.
pub async fn batched_resume(brokers: &str, topic: &str, create: bool) -> (usize, usize) {
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
    let mut got = Vec::new();
    while got.len() < 7 {
        let l = first
            .lease(
                7 - got.len(),
                Duration::from_secs(30),
                Duration::from_secs(5),
            )
            .await
            .unwrap();
        assert!(!l.is_empty());
        got.extend(l);
    }
    first.ack(&got).await.unwrap();
    first.close().await.unwrap();
    drop(first);
    let second = KafkaQueue::open_uri(&u, QueueConfig::default())
        .await
        .unwrap();
    let mut rest = 0;
    loop {
        let l = second
            .lease(20, Duration::from_secs(30), Duration::from_secs(8))
            .await
            .unwrap();
        if l.is_empty() {
            break;
        }
        rest += l.len();
    }
    (got.len(), rest)
}

/// A member stops fetching (pauses its partitions) while plenty of records wait in its buffer. A
/// partition revoked from it while paused and assigned back later must be fetched again:
/// librdkafka keeps an application's pause on a partition across revoke and assign, so a member
/// that forgot it had paused that partition would hold it without ever reading it (the chaos test
/// on tansu once wedged this way: every worker idle, one partition's records never read).
/// Enqueues `n` records; returns how many distinct ones the first member ended up acking.
/// `create`: make the topic first (the mock cluster has no CreateTopics, and asking it takes its
/// 60 s request timeout; its topics are made beforehand with `MockCluster::create_topic`).
pub async fn paused_partition_comes_back(u: &str, n: usize, create: bool) -> usize {
    if create {
        kafka::create(u).await.unwrap();
    }
    let items = records(n);
    let vis = Duration::from_secs(60);
    let t0 = std::time::Instant::now();
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
    let mut acked = std::collections::BTreeSet::new();
    let until = std::time::Instant::now() + Duration::from_secs(60);
    let taken = loop {
        assert!(
            std::time::Instant::now() < until,
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
    let mut quiet_since = std::time::Instant::now();
    while acked.len() < n && quiet_since.elapsed() < Duration::from_secs(20) {
        let l = a.lease(100, vis, Duration::from_secs(1)).await.unwrap();
        if !l.is_empty() {
            quiet_since = std::time::Instant::now();
        }
        a.ack(&l).await.unwrap();
        acked.extend(l.iter().map(|l| l.id.clone()));
    }
    println!("{} records acked after {:?}", acked.len(), t0.elapsed());
    a.close().await.unwrap();
    acked.len()
}

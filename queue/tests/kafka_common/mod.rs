//! Kafka checks shared by the mock-cluster and tansu test files.
#![allow(dead_code)]

use std::time::Duration;

use spotbatch_queue::kafka::{self, KafkaQueue};
use spotbatch_queue::{LeaseQueue, NewItem, QueueConfig};

/// A member takes 7 of 20 records, acks them (commit at 7) and leaves; the next member of the group
/// gets exactly the other 13.
pub async fn resume_mid_partition(u: &str) -> (usize, usize) {
    kafka::create(u).await.unwrap();
    let items: Vec<NewItem> = (0..20)
        .map(|i| NewItem {
            id: format!("r{i:02}"),
            body: format!("{{\"n\":{i}}}").into_bytes(),
        })
        .collect();
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
pub async fn batched_resume(brokers: &str, topic: &str) -> (usize, usize) {
    use rdkafka::config::ClientConfig;
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let u = format!("kafka://{brokers}/{topic}?partitions=1&session_timeout_ms=6000");
    kafka::create(&u).await.ok();
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

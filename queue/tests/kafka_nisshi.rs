//! Kafka against nisshi 0.8.1 (née tansu), a Kafka-protocol broker run as a separate process
//! (started by `make test`, address in `SPOTBATCH_TEST_KAFKA_BROKERS`), with spotbatch's own
//! batched producer: the conformance suite, resuming inside a batch, the pause state across revoke
//! and assign, offset gaps over partition moves, and `--exit-when-empty`'s drained check after
//! many rebalances. librdkafka's mock cluster runs the same checks in `kafka_conformance.rs`.
#![cfg(feature = "kafka")]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use spotbatch_queue::conformance::{Allowances, QueueFactory};
use spotbatch_queue::kafka::{self, KafkaQueue};
use spotbatch_queue::{LeaseQueue, QueueConfig};

mod kafka_common;

fn brokers() -> String {
    std::env::var("SPOTBATCH_TEST_KAFKA_BROKERS").expect(
        "SPOTBATCH_TEST_KAFKA_BROKERS is not set: run the tests with `make test`, which starts nisshi",
    )
}

static NEXT: AtomicUsize = AtomicUsize::new(0);

fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "{prefix}-{}-{}-{}",
        std::process::id(),
        nanos % 1_000_000_000,
        NEXT.fetch_add(1, Ordering::SeqCst)
    )
}

fn uri(topic: &str, partitions: i32) -> String {
    format!(
        "kafka://{}/{topic}?partitions={partitions}&session_timeout_ms=6000",
        brokers()
    )
}

struct Nisshi;

#[async_trait]
impl QueueFactory for Nisshi {
    async fn fresh(&self, config: QueueConfig) -> Box<dyn LeaseQueue> {
        let u = uri(&unique("conf"), 2);
        kafka::create(&u).await.unwrap();
        Box::new(KafkaQueue::open_uri(&u, config).await.unwrap())
    }
    fn allowances(&self) -> Allowances {
        Allowances {
            short_visibility: Duration::from_millis(500),
            expiry_slack: Duration::from_millis(300),
            extend_after_expiry_may_succeed: false,
        }
    }
}

spotbatch_queue::conformance_tests!(Nisshi);

/// tansu 0.6 answered a fetch that starts inside a multi-record batch with nothing (hence the
/// one-record-per-batch producer spotbatch had for it); nisshi 0.8.1 resumes there like the mock
/// cluster and Apache Kafka: a member commits at 7 of a 20-record batch and leaves, the next gets
/// exactly the other 13.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nisshi_resumes_inside_a_batch() {
    assert_eq!(
        kafka_common::batched_resume(&brokers(), &unique("batched"), true).await,
        (7, 13)
    );
}

/// spotbatch's own batched producer, a partition moving after commits inside batches: nothing
/// lost and no offset gap on nisshi (tansu 0.6 skipped to the next batch here; the gap guard reads
/// the skipped records back).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_records_survive_partition_moves() {
    assert_eq!(
        kafka_common::batches_survive_partition_moves(&uri(&unique("moves"), 1), true).await,
        (0, 0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_revoked_while_paused_is_read_when_it_comes_back() {
    assert_eq!(
        kafka_common::paused_partition_comes_back(&uri(&unique("paused"), 2), 300, true).await,
        300,
        "every record acked by the member that got the partition back"
    );
}

/// `--exit-when-empty`'s check after many rebalances.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_member_sees_the_topic_drained_after_many_rebalances() {
    let retries =
        kafka_common::drained_after_many_rebalances(&uri(&unique("rebalances"), 4), true, 6).await;
    println!("commits retried: {retries}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handle_that_only_produces_is_not_a_group_member() {
    assert_eq!(
        kafka_common::producers_are_not_members(&uri(&unique("producer"), 4), true).await,
        40
    );
}

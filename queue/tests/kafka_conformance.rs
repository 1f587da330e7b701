//! Kafka on librdkafka's in-process mock cluster (each check gets its own cluster and topic): the
//! conformance suite, resuming inside a batch, the pause state across revoke and assign, offset
//! gaps over partition moves, `--exit-when-empty`'s drained check after many rebalances, commits
//! the broker refuses, and brokers that go away. nisshi, a Kafka-protocol broker run as a separate
//! process, runs the same checks in `kafka_nisshi.rs`.
#![cfg(feature = "kafka")]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use rdkafka::{Offset, TopicPartitionList};
use spotbatch_queue::conformance::{Allowances, QueueFactory};
use spotbatch_queue::kafka::KafkaQueue;
use spotbatch_queue::{LeaseQueue, QueueConfig, QueueError};

mod kafka_common;

static NEXT: AtomicUsize = AtomicUsize::new(0);

struct Mock;

#[async_trait]
impl QueueFactory for Mock {
    async fn fresh(&self, config: QueueConfig) -> Box<dyn LeaseQueue> {
        let topic = format!("conf-{}", NEXT.fetch_add(1, Ordering::SeqCst));
        let uri = format!(
            "kafka://{}/{topic}?session_timeout_ms=6000",
            leak(mock_with(&topic, 2)).bootstrap_servers()
        );
        Box::new(KafkaQueue::open_uri(&uri, config).await.unwrap())
    }
    fn allowances(&self) -> Allowances {
        Allowances {
            short_visibility: Duration::from_millis(500),
            expiry_slack: Duration::from_millis(300),
            extend_after_expiry_may_succeed: false,
        }
    }
}

spotbatch_queue::conformance_tests!(Mock);

/// A mock cluster of its own with `topic` (`partitions`) and its dead-letter topic.
fn mock_with(
    topic: &str,
    partitions: i32,
) -> MockCluster<'static, rdkafka::producer::DefaultProducerContext> {
    let cluster = MockCluster::new(1).expect("mock cluster");
    cluster.create_topic(topic, partitions, 1).unwrap();
    cluster.create_topic(&format!("{topic}-dlq"), 1, 1).unwrap();
    cluster
}

/// Keeps a cluster for the rest of the test process (queues opened on it outlive the check).
fn leak(
    cluster: MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
) -> &'static MockCluster<'static, rdkafka::producer::DefaultProducerContext> {
    Box::leak(Box::new(cluster))
}

fn uri_on(
    cluster: &MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    topic: &str,
    partitions: i32,
) -> String {
    format!(
        "kafka://{}/{topic}?partitions={partitions}&session_timeout_ms=6000",
        cluster.bootstrap_servers()
    )
}

/// Resuming a partition in the middle of a multi-record batch: a member commits at 7 of a 20-record
/// batch and leaves; the next member gets exactly the other 13.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumes_inside_a_batch_on_the_mock_cluster() {
    let cluster = leak(mock_with("batched", 1));
    assert_eq!(
        kafka_common::batched_resume(&cluster.bootstrap_servers(), "batched", false).await,
        (7, 13)
    );
}

/// The pause state re-applied on assign (a librdkafka behaviour, so needed on any broker).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_revoked_while_paused_is_read_when_it_comes_back_on_the_mock_cluster() {
    let cluster = leak(mock_with("paused", 2));
    assert_eq!(
        kafka_common::paused_partition_comes_back(&uri_on(cluster, "paused", 2), 300, false).await,
        300,
        "every record acked by the member that got the partition back"
    );
}

/// spotbatch's own batched producer, a partition moving after commits inside batches: nothing
/// lost, and the mock (which answers a fetch inside a batch correctly) shows no gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_records_survive_partition_moves_on_the_mock_cluster() {
    let cluster = leak(mock_with("moves", 1));
    assert_eq!(
        kafka_common::batches_survive_partition_moves(&uri_on(cluster, "moves", 1), false).await,
        (0, 0)
    );
}

/// `--exit-when-empty`'s check after many rebalances: the mock cluster was seen reporting stale
/// committed offsets there, so workers never saw the topic drained (the cause was ours: a commit
/// refused during a rebalance, retried after the partition had come back to the same member,
/// moved the committed offset back below what another member had committed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_member_sees_the_topic_drained_after_many_rebalances_on_the_mock_cluster() {
    let cluster = leak(mock_with("rebalances", 4));
    let retries =
        kafka_common::drained_after_many_rebalances(&uri_on(cluster, "rebalances", 4), false, 4)
            .await;
    println!("commits retried: {retries}");
}

/// Commits the broker refuses (as any broker does while its group rebalances) are retried, and
/// meanwhile the member's own acks count for `depth`: a member that acked everything sees
/// nothing pending at once, and the committed offsets reach the end once the broker accepts
/// commits again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_commits_are_retried_and_depth_counts_own_acks_on_the_mock_cluster() {
    kafka_common::logs();
    let cluster = leak(mock_with("refused", 2));
    let u = uri_on(cluster, "refused", 2);
    let q = KafkaQueue::open_uri(&u, QueueConfig::default())
        .await
        .unwrap();
    q.enqueue(&kafka_common::records(0, 40)).await.unwrap();
    // The next 30 commits are refused.
    cluster.request_errors(
        RDKafkaApiKey::OffsetCommit,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_REBALANCE_IN_PROGRESS; 30],
    );
    let mut acked = 0;
    let until = Instant::now() + Duration::from_secs(20);
    while acked < 40 {
        assert!(Instant::now() < until, "only {acked} of 40 leased");
        let l = q
            .lease(40, Duration::from_secs(60), Duration::from_secs(1))
            .await
            .unwrap();
        q.ack(&l).await.unwrap();
        acked += l.len();
    }
    let d = q.depth().await.unwrap();
    assert_eq!(
        d.pending(),
        0,
        "own acks count before the commits land: {d:?}"
    );
    // Another reader of the group's committed offsets sees the end once the retries get through.
    let reader: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap_servers())
        .set("group.id", "spotbatch-refused")
        .create()
        .unwrap();
    let until = Instant::now() + Duration::from_secs(30);
    let total = loop {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition("refused", 0);
        tpl.add_partition("refused", 1);
        let c = reader
            .committed_offsets(tpl, Duration::from_secs(5))
            .unwrap();
        let total: i64 = c
            .elements()
            .iter()
            .map(|e| match e.offset() {
                Offset::Offset(o) => o,
                _ => 0,
            })
            .sum();
        if total == 40 || Instant::now() >= until {
            break total;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(total, 40, "committed offsets reach the end");
    assert!(q.commit_retries() > 0, "the refused commits were retried");
    println!("commits retried: {}", q.commit_retries());
    q.close().await.unwrap();
}

/// Brokers that go away are reported as unreachable (so a worker can tell them from an empty
/// queue), both when opening a queue and while one is open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn brokers_gone_are_unreachable_not_empty_on_the_mock_cluster() {
    kafka_common::logs();
    let cluster = leak(mock_with("gone", 1));
    let u = uri_on(cluster, "gone", 1);
    let q = KafkaQueue::open_uri(&u, QueueConfig::default())
        .await
        .unwrap();
    assert_eq!(q.depth().await.unwrap().pending(), 0);
    cluster.broker_down(1).unwrap();
    let e = q.depth().await.unwrap_err();
    assert!(matches!(e, QueueError::Unreachable { .. }), "{e:?}");
    let e = KafkaQueue::open_uri(&u, QueueConfig::default())
        .await
        .unwrap_err();
    assert!(matches!(e, QueueError::Unreachable { .. }), "{e:?}");
    assert!(
        e.to_string().contains("cannot reach the Kafka brokers"),
        "{e}"
    );
    cluster.broker_up(1).unwrap();
}

/// A handle that only produces and reads the depth is not a group member.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handle_that_only_produces_is_not_a_group_member_on_the_mock_cluster() {
    let cluster = leak(mock_with("producer", 4));
    assert_eq!(
        kafka_common::producers_are_not_members(&uri_on(cluster, "producer", 4), false).await,
        40
    );
}

//! The conformance suite against Kafka, on librdkafka's in-process mock cluster (each check gets
//! its own cluster and topic). tansu, a Kafka-protocol broker run as a separate process, runs the
//! same suite in `kafka_tansu.rs`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use rdkafka::mocking::MockCluster;
use spotbatch_queue::conformance::{Allowances, QueueFactory};
use spotbatch_queue::kafka::KafkaQueue;
use spotbatch_queue::{LeaseQueue, QueueConfig};

mod kafka_common;

static NEXT: AtomicUsize = AtomicUsize::new(0);

struct Mock;

#[async_trait]
impl QueueFactory for Mock {
    async fn fresh(&self, config: QueueConfig) -> Box<dyn LeaseQueue> {
        let topic = format!("conf-{}", NEXT.fetch_add(1, Ordering::SeqCst));
        let uri = format!(
            "kafka://{}/{topic}?session_timeout_ms=6000",
            mock_with(&topic, 2)
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

/// A mock cluster of its own (it lives as long as the test process) with `topic` (`partitions`)
/// and its dead-letter topic; returns its bootstrap servers.
fn mock_with(topic: &str, partitions: i32) -> String {
    let cluster: &'static MockCluster<'static, _> =
        Box::leak(Box::new(MockCluster::new(1).expect("mock cluster")));
    cluster.create_topic(topic, partitions, 1).unwrap();
    cluster.create_topic(&format!("{topic}-dlq"), 1, 1).unwrap();
    cluster.bootstrap_servers()
}

/// Resuming a partition in the middle of a multi-record batch: a member commits at 7 of a 20-record
/// batch and leaves; the next member gets exactly the other 13.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumes_inside_a_batch_on_the_mock_cluster() {
    assert_eq!(
        kafka_common::batched_resume(&mock_with("batched", 1), "batched", false).await,
        (7, 13)
    );
}

/// The pause fix proven on a second broker (see `kafka_tansu.rs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_revoked_while_paused_is_read_when_it_comes_back_on_the_mock_cluster() {
    let u = format!(
        "kafka://{}/paused?session_timeout_ms=6000",
        mock_with("paused", 2)
    );
    assert_eq!(
        kafka_common::paused_partition_comes_back(&u, 300, false).await,
        300,
        "every record acked by the member that got the partition back"
    );
}

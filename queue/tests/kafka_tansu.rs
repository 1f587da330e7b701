//! Kafka against tansu, a Kafka-protocol broker run as a separate process (started by
//! `make test`, address in `SPOTBATCH_TEST_KAFKA_BROKERS`): the conformance suite, and resuming a
//! partition in the middle after a member leaves.
//!
//! Which broker proved what: the conformance suite runs on both; resuming mid-partition inside a
//! multi-record batch is proven on librdkafka's mock cluster (`kafka_conformance.rs`), because
//! tansu 0.6 answers a fetch that starts inside a batch with nothing (see
//! `tansu_cannot_resume_inside_a_batch`); on tansu, records are produced one per batch
//! (`single_record_batches=true`), and resuming mid-partition is proven that way here.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use spotbatch_queue::conformance::{Allowances, QueueFactory};
use spotbatch_queue::kafka::{self, KafkaQueue};
use spotbatch_queue::{LeaseQueue, QueueConfig};

mod kafka_common;
use kafka_common::{batched_resume, resume_mid_partition};

fn brokers() -> String {
    std::env::var("SPOTBATCH_TEST_KAFKA_BROKERS")
        .expect("SPOTBATCH_TEST_KAFKA_BROKERS is not set: run the tests with `make test`, which starts tansu")
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

fn uri(topic: &str, extra: &str) -> String {
    format!(
        "kafka://{}/{topic}?partitions=2&session_timeout_ms=6000&single_record_batches=true{extra}",
        brokers()
    )
}

struct Tansu;

#[async_trait]
impl QueueFactory for Tansu {
    async fn fresh(&self, config: QueueConfig) -> Box<dyn LeaseQueue> {
        let u = uri(&unique("conf"), "");
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

spotbatch_queue::conformance_tests!(Tansu);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tansu_resumes_mid_partition_with_single_record_batches() {
    // One partition so the 7 committed records and the 13 others share it.
    let u = format!(
        "kafka://{}/{}?partitions=1&session_timeout_ms=6000&single_record_batches=true",
        brokers(),
        unique("resume")
    );
    assert_eq!(resume_mid_partition(&u).await, (7, 13));
}

/// tansu 0.6 answers a fetch that starts inside a multi-record batch with nothing: a member that
/// takes over a partition after a commit inside a batch never gets the rest of that batch. The
/// same client and settings resume correctly on librdkafka's mock broker
/// (`kafka_conformance.rs`), so this is the broker's, not the client's; hence
/// `single_record_batches=true` for tansu. If tansu fixes it, this test says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tansu_cannot_resume_inside_a_batch() {
    assert_eq!(
        batched_resume(&brokers(), &unique("batched"), true).await,
        (7, 0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_revoked_while_paused_is_read_when_it_comes_back() {
    let u = uri(&unique("paused"), "");
    assert_eq!(
        kafka_common::paused_partition_comes_back(&u, 300, true).await,
        300,
        "every record acked by the member that got the partition back"
    );
}

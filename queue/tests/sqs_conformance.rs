//! The conformance suite against SQS: moto's server, which `make test` starts and names in
//! `SPOTBATCH_TEST_SQS_ENDPOINT`. Each check gets its own uniquely named queue and DLQ.
#![cfg(feature = "sqs")]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use spotbatch_queue::conformance::{Allowances, QueueFactory};
use spotbatch_queue::sqs::SqsQueue;
use spotbatch_queue::{LeaseQueue, NewItem, QueueConfig};

fn endpoint() -> String {
    std::env::var("SPOTBATCH_TEST_SQS_ENDPOINT").expect(
        "SPOTBATCH_TEST_SQS_ENDPOINT is not set: run the tests with `make test`, which starts moto",
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

fn uri(name: &str) -> String {
    format!("sqs://{name}?region=us-east-1&endpoint={}", endpoint())
}

struct Sqs;

#[async_trait]
impl QueueFactory for Sqs {
    async fn fresh(&self, config: QueueConfig) -> Box<dyn LeaseQueue> {
        let u = uri(&unique("conf"));
        SqsQueue::create(&u, true, config.max_attempts)
            .await
            .unwrap();
        Box::new(SqsQueue::open_uri(&u, config).await.unwrap())
    }
    fn allowances(&self) -> Allowances {
        Allowances {
            // SQS visibility timeouts are whole seconds.
            short_visibility: Duration::from_secs(1),
            expiry_slack: Duration::from_millis(1500),
            extend_after_expiry_may_succeed: false,
        }
    }
}

spotbatch_queue::conformance_tests!(Sqs);

#[tokio::test]
async fn missing_queue_and_unreachable_endpoint_are_clear_errors() {
    let err = SqsQueue::open_uri(&uri(&unique("nope")), QueueConfig::default())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("does not exist") && err.contains("spotbatch queue create"),
        "{err}"
    );
    // A port nothing listens on (port 9 is discard, closed on loopback here): unreachable, an
    // error of its own (a worker tells it from an empty queue).
    let err = SqsQueue::open_uri(
        "sqs://q?region=us-east-1&endpoint=http://127.0.0.1:9",
        QueueConfig::default(),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, spotbatch_queue::QueueError::Unreachable { .. }),
        "{err:?}"
    );
    let err = err.to_string();
    assert!(err.contains("cannot reach the SQS endpoint"), "{err}");
}

#[tokio::test]
async fn foreign_messages_are_delivered_as_they_are() {
    let u = uri(&unique("foreign"));
    SqsQueue::create(&u, true, 3).await.unwrap();
    let q = SqsQueue::open_uri(&u, QueueConfig::default())
        .await
        .unwrap();
    q.client()
        .send_message()
        .queue_url(q.url())
        .message_body("{\"hello\":\"world\"}")
        .send()
        .await
        .unwrap();
    let got = q
        .lease(10, Duration::from_secs(30), Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].body, b"{\"hello\":\"world\"}");
    q.dead_letter(&got[0], "not a spotbatch shard message")
        .await
        .unwrap();
    let dead = q.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].reason, "not a spotbatch shard message");
    assert_eq!(dead[0].body, b"{\"hello\":\"world\"}");
}

#[tokio::test]
async fn big_batches_are_split_and_oversized_items_refused() {
    let u = uri(&unique("big"));
    SqsQueue::create(&u, true, 3).await.unwrap();
    let q = SqsQueue::open_uri(&u, QueueConfig::default())
        .await
        .unwrap();
    // 12 items of 60 KB: more than one batch by count and by bytes.
    let items: Vec<NewItem> = (0..12)
        .map(|i| NewItem {
            id: format!("big-{i}"),
            body: vec![b'x'; 60_000],
        })
        .collect();
    q.enqueue(&items).await.unwrap();
    let mut got = 0;
    while got < 12 {
        let l = q
            .lease(10, Duration::from_secs(30), Duration::from_secs(2))
            .await
            .unwrap();
        assert!(!l.is_empty(), "only {got} of 12 came back");
        assert!(l.iter().all(|x| x.body.len() == 60_000));
        got += l.len();
        q.ack(&l).await.unwrap();
    }
    let err = q
        .enqueue(&[NewItem {
            id: "huge".into(),
            body: vec![b'y'; 300_000],
        }])
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("over SQS's") && err.contains("queue.shard_size"),
        "{err}"
    );
}

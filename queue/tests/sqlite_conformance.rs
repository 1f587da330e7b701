//! The conformance suite against the SQLite backend, plus SQLite-only behaviour.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use spotbatch_queue::conformance::{Allowances, QueueFactory};
use spotbatch_queue::sqlite::SqliteQueue;
use spotbatch_queue::{LeaseQueue, NewItem, QueueConfig};

/// All queues of one test process live in one file, each under its own name, which also proves
/// named queues in one file do not see each other's items.
struct Sqlite {
    dir: &'static tempfile::TempDir,
}

static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
static NEXT: AtomicUsize = AtomicUsize::new(0);

fn sqlite() -> Sqlite {
    Sqlite {
        dir: DIR.get_or_init(|| tempfile::tempdir().expect("temp dir")),
    }
}

#[async_trait]
impl QueueFactory for Sqlite {
    async fn fresh(&self, config: QueueConfig) -> Box<dyn LeaseQueue> {
        let name = format!(
            "q{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        Box::new(
            SqliteQueue::open(&self.dir.path().join("queues.db"), &name, config)
                .await
                .unwrap(),
        )
    }
    fn allowances(&self) -> Allowances {
        Allowances {
            short_visibility: Duration::from_millis(400),
            expiry_slack: Duration::from_millis(200),
            extend_after_expiry_may_succeed: false,
        }
    }
}

spotbatch_queue::conformance_tests!(sqlite());

#[tokio::test]
async fn two_connections_to_one_file_share_the_queue() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shared.db");
    let a = SqliteQueue::open(&path, "jobs", QueueConfig::default())
        .await
        .unwrap();
    let b = SqliteQueue::open(&path, "jobs", QueueConfig::default())
        .await
        .unwrap();
    a.enqueue(&[NewItem {
        id: "x".into(),
        body: b"1".to_vec(),
    }])
    .await
    .unwrap();
    let got = b
        .lease(5, Duration::from_secs(30), Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(
        got.len(),
        1,
        "a second connection sees the first one's item"
    );
    assert!(a
        .lease(5, Duration::from_secs(30), Duration::ZERO)
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn clean_release_does_not_count_as_a_failure() {
    let dir = tempfile::tempdir().unwrap();
    let q = SqliteQueue::open(
        &dir.path().join("q.db"),
        "drain",
        QueueConfig { max_attempts: 2 },
    )
    .await
    .unwrap();
    q.enqueue(&[NewItem {
        id: "s".into(),
        body: b"{}".to_vec(),
    }])
    .await
    .unwrap();
    for _ in 0..5 {
        let l = q
            .lease(1, Duration::from_secs(30), Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(
            l.len(),
            1,
            "a shard handed back cleanly is never dead-lettered"
        );
        q.release(&l, None).await.unwrap();
    }
    assert_eq!(q.depth().await.unwrap().dead, 0);
}

#[tokio::test]
async fn reclaim_after_a_crash_and_redrive_by_enqueue() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q.db");
    let q = SqliteQueue::open(&path, "default", QueueConfig { max_attempts: 1 })
        .await
        .unwrap();
    q.enqueue(&[NewItem {
        id: "s1".into(),
        body: b"{}".to_vec(),
    }])
    .await
    .unwrap();
    let held = q
        .lease(1, Duration::from_secs(600), Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(held.len(), 1);
    // The holder "dies"; a new owner of the file reclaims at once instead of waiting 10 minutes.
    let q2 = SqliteQueue::open(&path, "default", QueueConfig { max_attempts: 1 })
        .await
        .unwrap();
    assert_eq!(q2.reclaim_all_leases().await.unwrap(), 1);
    // With max_attempts 1 the crash used the only attempt: dead-lettered, naming the crash.
    assert!(q2
        .lease(1, Duration::from_secs(5), Duration::from_millis(200))
        .await
        .unwrap()
        .is_empty());
    let dead = q2.dead_letters(5).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert!(
        dead[0].reason.contains("died holding the lease"),
        "{}",
        dead[0].reason
    );
    // Enqueueing the same id again re-drives it out of the dead-letter queue.
    q2.enqueue(&[NewItem {
        id: "s1".into(),
        body: b"{}".to_vec(),
    }])
    .await
    .unwrap();
    assert_eq!(q2.dead_letters(5).await.unwrap().len(), 0);
    assert_eq!(
        q2.lease(1, Duration::from_secs(5), Duration::from_secs(1))
            .await
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn enqueue_ignores_an_id_already_waiting() {
    let dir = tempfile::tempdir().unwrap();
    let q = SqliteQueue::open(&dir.path().join("q.db"), "default", QueueConfig::default())
        .await
        .unwrap();
    let item = NewItem {
        id: "same".into(),
        body: b"{}".to_vec(),
    };
    q.enqueue(&[item.clone(), item.clone()]).await.unwrap();
    q.enqueue(&[item]).await.unwrap();
    assert_eq!(q.depth().await.unwrap().visible, 1);
}

#[tokio::test]
async fn released_at_tells_when_an_item_was_handed_back() {
    let dir = tempfile::tempdir().unwrap();
    let q = SqliteQueue::open(&dir.path().join("q.db"), "rec", QueueConfig::default())
        .await
        .unwrap();
    q.enqueue(&[NewItem {
        id: "s".into(),
        body: b"{}".to_vec(),
    }])
    .await
    .unwrap();
    let first = q
        .lease(1, Duration::from_secs(30), Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(first[0].released_at, None, "never handed back yet");
    let before = std::time::SystemTime::now();
    q.release(&first, None).await.unwrap();
    let again = q
        .lease(1, Duration::from_secs(30), Duration::from_secs(1))
        .await
        .unwrap();
    let back = again[0].released_at.expect("released_at after a release");
    assert!(back + Duration::from_millis(5) >= before && back <= std::time::SystemTime::now());
}

//! The conformance suite every [`LeaseQueue`] backend runs.
//!
//! Each check is a plain async function taking a [`QueueFactory`]; a backend's test file calls
//! them all through [`conformance_tests!`](crate::conformance_tests). Each check asks the factory
//! for a fresh, empty queue (backends give each one a unique name) so checks never see each
//! other's items.
//!
//! Where backends may legitimately differ, the factory's [`Allowances`] says so, and the check
//! reads the allowance in code rather than being skipped.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;

use crate::{LeaseQueue, NewItem, QueueConfig, QueueError};

/// Timings and allowed differences of one backend.
#[derive(Debug, Clone, Copy)]
pub struct Allowances {
    /// A visibility timeout short enough for tests yet long enough that a lease taken now is
    /// certainly still held after a few round trips (SQS has whole seconds; SQLite milliseconds).
    pub short_visibility: Duration,
    /// Extra time after a deadline before a backend is required to redeliver.
    pub expiry_slack: Duration,
    /// Whether an expired-but-not-yet-re-leased lease may still be extended. Strict backends say
    /// `false`: extending after the deadline fails with `LeaseLost`.
    pub extend_after_expiry_may_succeed: bool,
}

/// Makes fresh, empty queues for the suite.
#[async_trait]
pub trait QueueFactory: Send + Sync {
    /// A new, empty queue with its own unique name.
    async fn fresh(&self, config: QueueConfig) -> Box<dyn LeaseQueue>;
    /// This backend's timings and allowances.
    fn allowances(&self) -> Allowances;
}

const LONG: Duration = Duration::from_secs(60);
const WAIT: Duration = Duration::from_secs(2);

fn items(prefix: &str, n: usize) -> Vec<NewItem> {
    (0..n)
        .map(|i| NewItem {
            id: format!("{prefix}-{i:04}"),
            body: format!("{{\"n\":{i}}}").into_bytes(),
        })
        .collect()
}

/// Leases until `n` items are held or `wait` has passed. One lease call may return fewer items
/// than are visible (SQS's ReceiveMessage may; a Kafka member's records of several partitions
/// arrive a little apart), so a check that needs several items in hand gathers them.
async fn lease_n(
    q: &dyn LeaseQueue,
    n: usize,
    visibility: Duration,
    wait: Duration,
) -> Vec<crate::Lease> {
    let give_up = Instant::now() + wait;
    let mut got = Vec::new();
    while got.len() < n {
        let left = give_up.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        got.extend(q.lease(n - got.len(), visibility, left).await.unwrap());
    }
    got
}

fn ids(leases: &[crate::Lease]) -> Vec<String> {
    let mut v: Vec<String> = leases.iter().map(|l| l.id.clone()).collect();
    v.sort();
    v
}

/// Payload bytes come back exactly as enqueued, binary included, with delivery count 1 and a
/// deadline about `visibility` ahead.
pub async fn body_roundtrip(f: &dyn QueueFactory) {
    let q = f.fresh(QueueConfig::default()).await;
    let body: Vec<u8> = (0..=255u8).chain("ünïcødé ✓".bytes()).collect();
    q.enqueue(&[NewItem {
        id: "a".into(),
        body: body.clone(),
    }])
    .await
    .unwrap();
    let before = SystemTime::now();
    let got = q.lease(10, LONG, WAIT).await.unwrap();
    let after = SystemTime::now();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].id, "a");
    assert_eq!(got[0].body, body);
    assert_eq!(got[0].delivery_count, 1);
    // Visibility counts from when the lease is handed out (a Kafka handle joins its group on its
    // first lease, which can take seconds).
    let ahead = got[0].deadline.duration_since(before).unwrap_or_default();
    let past_return = got[0].deadline.duration_since(after).unwrap_or_default();
    assert!(
        past_return <= LONG + Duration::from_secs(1),
        "deadline {past_return:?} after the lease returned, visibility {LONG:?}"
    );
    assert!(
        ahead >= LONG - Duration::from_secs(5),
        "deadline {ahead:?} ahead, visibility {LONG:?}"
    );
}

/// A leased item is hidden from other consumers until its deadline.
pub async fn lease_hides_item(f: &dyn QueueFactory) {
    let q = f.fresh(QueueConfig::default()).await;
    q.enqueue(&items("hide", 3)).await.unwrap();
    let first = lease_n(&*q, 2, LONG, WAIT).await;
    assert_eq!(first.len(), 2, "asked for 2 of 3");
    let second = lease_n(&*q, 1, LONG, WAIT).await;
    assert_eq!(second.len(), 1, "only one item was still visible");
    assert!(!first.iter().any(|l| l.id == second[0].id));
    let third = q.lease(10, LONG, Duration::from_millis(300)).await.unwrap();
    assert!(
        third.is_empty(),
        "everything is leased, got {:?}",
        ids(&third)
    );
    let d = q.depth().await.unwrap();
    assert_eq!((d.visible, d.in_flight), (0, 3));
}

/// A lease that runs out makes the item visible again, delivered with a higher count.
pub async fn expiry_redelivers(f: &dyn QueueFactory) {
    let a = f.allowances();
    let q = f.fresh(QueueConfig { max_attempts: 10 }).await;
    q.enqueue(&items("exp", 1)).await.unwrap();
    let first = q.lease(1, a.short_visibility, WAIT).await.unwrap();
    assert_eq!(first.len(), 1);
    let again = q
        .lease(1, LONG, a.short_visibility + a.expiry_slack + WAIT)
        .await
        .unwrap();
    assert_eq!(ids(&again), ids(&first), "the expired item must come back");
    assert_eq!(again[0].delivery_count, first[0].delivery_count + 1);
    assert_ne!(
        again[0].token, first[0].token,
        "a new delivery gets a new token"
    );
    // The old holder's extension must fail: someone else owns the item now.
    match q.extend(&first[0], LONG).await {
        Err(QueueError::LeaseLost { item, .. }) => assert_eq!(item, first[0].id),
        other => panic!("extending a lease that was re-leased must be LeaseLost, got {other:?}"),
    }
}

/// Extending a lease postpones its expiry past the original deadline.
pub async fn extend_postpones_expiry(f: &dyn QueueFactory) {
    let a = f.allowances();
    let q = f.fresh(QueueConfig::default()).await;
    q.enqueue(&items("ext", 1)).await.unwrap();
    let lease = q
        .lease(1, a.short_visibility, WAIT)
        .await
        .unwrap()
        .remove(0);
    let new_deadline = q.extend(&lease, LONG).await.unwrap();
    assert!(
        new_deadline > lease.deadline,
        "extension must move the deadline later"
    );
    // Past the original deadline (plus slack) the item is still hidden.
    let waited = a.short_visibility + a.expiry_slack;
    let none = q.lease(1, LONG, waited).await.unwrap();
    assert!(
        none.is_empty(),
        "extended item was redelivered: {:?}",
        ids(&none)
    );
    // The holder can still extend and ack.
    q.extend(&lease, LONG).await.unwrap();
    q.ack(std::slice::from_ref(&lease)).await.unwrap();
    assert_eq!(q.depth().await.unwrap().pending(), 0);
}

/// Extending after the deadline fails unless the backend is allowed to accept it.
pub async fn extend_after_expiry(f: &dyn QueueFactory) {
    let a = f.allowances();
    let q = f.fresh(QueueConfig { max_attempts: 10 }).await;
    q.enqueue(&items("late", 1)).await.unwrap();
    let lease = q
        .lease(1, a.short_visibility, WAIT)
        .await
        .unwrap()
        .remove(0);
    tokio::time::sleep(a.short_visibility + a.expiry_slack).await;
    match q.extend(&lease, LONG).await {
        Err(QueueError::LeaseLost { .. }) => {}
        Ok(_) if a.extend_after_expiry_may_succeed => {}
        other => panic!("extending an expired lease must be LeaseLost, got {other:?}"),
    }
}

/// Release makes the item visible at once, to anyone.
pub async fn release_makes_visible_now(f: &dyn QueueFactory) {
    let q = f.fresh(QueueConfig::default()).await;
    q.enqueue(&items("rel", 2)).await.unwrap();
    let leases = lease_n(&*q, 2, LONG, WAIT).await;
    assert_eq!(leases.len(), 2);
    let t0 = Instant::now();
    q.release(&leases, None).await.unwrap();
    let back = lease_n(&*q, 2, LONG, WAIT).await;
    assert_eq!(ids(&back), ids(&leases));
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "released items took {:?} to reappear",
        t0.elapsed()
    );
    // Releasing the stale leases again does nothing to the new holder.
    q.release(&leases, None).await.unwrap();
    for l in &back {
        q.extend(l, LONG)
            .await
            .expect("the new holder keeps its lease");
    }
}

/// Ack removes the item for good; acking twice is fine.
pub async fn ack_is_idempotent(f: &dyn QueueFactory) {
    let a = f.allowances();
    let q = f.fresh(QueueConfig::default()).await;
    q.enqueue(&items("ack", 2)).await.unwrap();
    let leases = lease_n(&*q, 2, a.short_visibility, WAIT).await;
    assert_eq!(leases.len(), 2);
    q.ack(&leases).await.unwrap();
    q.ack(&leases).await.unwrap();
    let none = q
        .lease(10, LONG, a.short_visibility + a.expiry_slack)
        .await
        .unwrap();
    assert!(none.is_empty(), "acked items came back: {:?}", ids(&none));
    let d = q.depth().await.unwrap();
    assert_eq!((d.pending(), d.dead), (0, 0));
}

/// Many consumers leasing at once never hold the same item, and between them get every item.
pub async fn concurrent_consumers_never_share(f: &dyn QueueFactory) {
    const N: usize = 60;
    const CONSUMERS: usize = 4;
    let q: Arc<dyn LeaseQueue> = Arc::from(f.fresh(QueueConfig::default()).await);
    q.enqueue(&items("cc", N)).await.unwrap();
    let seen: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let mut tasks = Vec::new();
    for c in 0..CONSUMERS {
        let (q, seen) = (Arc::clone(&q), Arc::clone(&seen));
        tasks.push(tokio::spawn(async move {
            loop {
                let got = q.lease(3, LONG, Duration::from_millis(500)).await.unwrap();
                if got.is_empty() {
                    break;
                }
                {
                    let mut seen = seen.lock().unwrap();
                    for l in &got {
                        if let Some(other) = seen.insert(l.id.clone(), c) {
                            panic!(
                                "{} leased by consumer {other} and then {c} while held",
                                l.id
                            );
                        }
                    }
                }
                tokio::task::yield_now().await;
                q.ack(&got).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let leased = seen.lock().unwrap().len();
    assert_eq!(leased, N, "every item leased exactly once");
    assert_eq!(q.depth().await.unwrap().pending(), 0);
}

/// An item that fails `max_attempts` times lands in the dead-letter queue with its last error, and
/// is not delivered again.
pub async fn dead_letter_after_max_attempts(f: &dyn QueueFactory) {
    let q = f.fresh(QueueConfig { max_attempts: 2 }).await;
    q.enqueue(&items("poison", 1)).await.unwrap();
    q.enqueue(&items("fine", 1)).await.unwrap();
    for attempt in 1..=2 {
        // Both items the first time, the poison one alone (the other acked) the second.
        let got = lease_n(&*q, 3 - attempt, LONG, WAIT).await;
        let poison: Vec<_> = got
            .iter()
            .filter(|l| l.id.starts_with("poison"))
            .cloned()
            .collect();
        assert_eq!(poison.len(), 1, "attempt {attempt}: poison item delivered");
        q.release(
            &poison,
            Some(&format!("decode failed on attempt {attempt}")),
        )
        .await
        .unwrap();
        let fine: Vec<_> = got
            .into_iter()
            .filter(|l| l.id.starts_with("fine"))
            .collect();
        q.ack(&fine).await.unwrap();
    }
    let after = q.lease(10, LONG, Duration::from_millis(500)).await.unwrap();
    assert!(after.is_empty(), "dead item redelivered: {:?}", ids(&after));
    let dead = q.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].id, "poison-0000");
    assert_eq!(dead[0].reason, "decode failed on attempt 2");
    assert_eq!(dead[0].body, items("poison", 1)[0].body);
    let d = q.depth().await.unwrap();
    assert_eq!((d.pending(), d.dead), (0, 1));
}

/// A worker that keeps dying (its leases expire) exhausts the attempts too.
pub async fn expiries_count_as_attempts(f: &dyn QueueFactory) {
    let a = f.allowances();
    let q = f.fresh(QueueConfig { max_attempts: 2 }).await;
    q.enqueue(&items("crash", 1)).await.unwrap();
    let mut delivered = 0;
    let give_up = Instant::now() + (a.short_visibility + a.expiry_slack) * 4 + WAIT;
    while Instant::now() < give_up {
        let got = q
            .lease(1, a.short_visibility, Duration::from_millis(200))
            .await
            .unwrap();
        delivered += got.len();
        if q.depth().await.unwrap().dead == 1 {
            break;
        }
    }
    assert_eq!(delivered, 2, "delivered exactly max_attempts times");
    let dead = q.dead_letters(10).await.unwrap();
    assert_eq!(
        dead.len(),
        1,
        "the item is dead-lettered after its leases expired"
    );
    assert!(!dead[0].reason.is_empty());
}

/// Dead-lettering explicitly moves a held item at once, with the given reason; a stale lease cannot.
pub async fn explicit_dead_letter(f: &dyn QueueFactory) {
    let q = f.fresh(QueueConfig::default()).await;
    q.enqueue(&items("dl", 2)).await.unwrap();
    let leases = lease_n(&*q, 2, LONG, WAIT).await;
    q.dead_letter(&leases[0], "not a spotbatch message")
        .await
        .unwrap();
    let dead = q.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(
        (dead[0].id.as_str(), dead[0].reason.as_str()),
        (leases[0].id.as_str(), "not a spotbatch message")
    );
    q.ack(&leases[1..]).await.unwrap();
    let d = q.depth().await.unwrap();
    assert_eq!((d.pending(), d.dead), (0, 1));
}

/// Ids seen in a set: used by backends' own tests.
pub fn id_set(leases: &[crate::Lease]) -> HashSet<String> {
    leases.iter().map(|l| l.id.clone()).collect()
}

/// Expands to one `#[tokio::test]` per conformance check, each calling `$factory` for its queues.
///
/// ```ignore
/// spotbatch_queue::conformance_tests!(my_factory());
/// ```
#[macro_export]
macro_rules! conformance_tests {
    ($factory:expr) => {
        $crate::conformance_tests!(@each $factory;
            body_roundtrip, lease_hides_item, expiry_redelivers, extend_postpones_expiry,
            extend_after_expiry, release_makes_visible_now, ack_is_idempotent,
            concurrent_consumers_never_share, dead_letter_after_max_attempts,
            expiries_count_as_attempts, explicit_dead_letter);
    };
    (@each $factory:expr; $($check:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                let factory = $factory;
                $crate::conformance::$check(&factory).await;
            }
        )*
    };
}

//! The lease queues against a model: random interleavings of enqueue, lease by several
//! consumers, extend, ack, release with and without an error, dead-letter, expiry and depth, run
//! on the SQLite queue and on `MemoryQueue`, each step checked against what the model says.
//!
//! The model is the lease contract (the crate docs) with the SQLite backend's failure counting:
//! an expired lease and a release with an error are failed attempts, a clean release is not; an
//! item out of attempts is dead-lettered, with its last error, when a sweep (`lease`, `depth`)
//! finds it visible. Expiry is deterministic: a lease (or an extension) with a zero visibility
//! has run out by the next call, one of a minute never runs out during a case.
//!
//! What it checks: consumers never hold the same item (a lease is only handed out for an item
//! no live lease holds), delivery counts, bodies and `released_at` are the model's, a stale token
//! (expired, re-leased, acked) can neither extend nor dead-letter and its ack or release changes
//! nothing, depth and the dead-letter queue (ids, reasons, delivery counts) are the model's.

use std::collections::BTreeMap;
use std::time::Duration;

use proptest::prelude::*;
use spotbatch_queue::memory::MemoryQueue;
use spotbatch_queue::sqlite::SqliteQueue;
use spotbatch_queue::{Depth, Lease, LeaseQueue, NewItem, QueueConfig, QueueError};

const IDS: usize = 5;
const CONSUMERS: usize = 3;
const LONG: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Vis {
    /// Runs out by the next call.
    Zero,
    /// Never runs out during a case.
    Long,
}

impl Vis {
    fn duration(self) -> Duration {
        match self {
            Vis::Zero => Duration::ZERO,
            Vis::Long => LONG,
        }
    }
}

/// One step. `pick` chooses among the leases the consumer has been given (stale ones included).
#[derive(Debug, Clone)]
enum Op {
    Enqueue(usize),
    Lease {
        consumer: usize,
        max: usize,
        vis: Vis,
    },
    Extend {
        consumer: usize,
        pick: usize,
        vis: Vis,
    },
    Ack {
        consumer: usize,
        pick: usize,
    },
    Release {
        consumer: usize,
        pick: usize,
        error: bool,
    },
    DeadLetter {
        consumer: usize,
        pick: usize,
    },
    Depth,
}

fn vis() -> impl Strategy<Value = Vis> {
    prop_oneof![1 => Just(Vis::Zero), 3 => Just(Vis::Long)]
}

fn op() -> impl Strategy<Value = Op> {
    let c = 0..CONSUMERS;
    prop_oneof![
        3 => (0..IDS).prop_map(Op::Enqueue),
        4 => (c.clone(), 1..4usize, vis()).prop_map(|(consumer, max, vis)| Op::Lease { consumer, max, vis }),
        2 => (c.clone(), any::<usize>(), vis()).prop_map(|(consumer, pick, vis)| Op::Extend { consumer, pick, vis }),
        2 => (c.clone(), any::<usize>()).prop_map(|(consumer, pick)| Op::Ack { consumer, pick }),
        2 => (c.clone(), any::<usize>(), any::<bool>()).prop_map(|(consumer, pick, error)| Op::Release { consumer, pick, error }),
        1 => (c, any::<usize>()).prop_map(|(consumer, pick)| Op::DeadLetter { consumer, pick }),
        1 => Just(Op::Depth),
    ]
}

/// A lease the model handed out: its number, and whether it has run out.
#[derive(Debug, Clone, Copy)]
struct Held {
    lease: usize,
    expired: bool,
}

#[derive(Debug)]
struct Item {
    id: String,
    body: Vec<u8>,
    deliveries: u32,
    failures: u32,
    last_error: Option<String>,
    handed_back: bool,
    held: Option<Held>,
}

/// What the queue should hold.
#[derive(Debug, Default)]
struct Model {
    max_attempts: u32,
    next: u64,
    items: BTreeMap<u64, Item>,
    /// Dead letters by id: (body, reason, delivery count).
    dead: BTreeMap<String, (Vec<u8>, String, u32)>,
    leases: usize,
    enqueued: usize,
}

impl Model {
    fn enqueue(&mut self, id: &str) -> Vec<u8> {
        self.enqueued += 1;
        let body = format!("{id}/{}", self.enqueued).into_bytes();
        if !self.items.values().any(|it| it.id == id) {
            self.dead.remove(id);
            self.next += 1;
            self.items.insert(
                self.next,
                Item {
                    id: id.to_string(),
                    body: body.clone(),
                    deliveries: 0,
                    failures: 0,
                    last_error: None,
                    handed_back: false,
                    held: None,
                },
            );
        }
        body
    }

    /// Expired leases become failed attempts; visible items out of attempts are dead-lettered.
    fn sweep(&mut self) {
        for it in self.items.values_mut() {
            if it.held.is_some_and(|h| h.expired) {
                it.held = None;
                it.failures += 1;
                it.handed_back = true;
                it.last_error = Some(format!(
                    "lease expired without ack or release (delivery {})",
                    it.deliveries
                ));
            }
        }
        let max = self.max_attempts;
        let out: Vec<u64> = self
            .items
            .iter()
            .filter(|(_, it)| it.held.is_none() && it.failures >= max)
            .map(|(seq, _)| *seq)
            .collect();
        for seq in out {
            if let Some(it) = self.items.remove(&seq) {
                let reason = it.last_error.unwrap_or_else(|| "failed".into());
                self.dead.insert(it.id, (it.body, reason, it.deliveries));
            }
        }
    }

    /// The items leased, in queue order: (lease number, id, body, delivery count, handed back).
    fn lease(&mut self, max: usize, vis: Vis) -> Vec<(usize, String, Vec<u8>, u32, bool)> {
        self.sweep();
        let mut out = Vec::new();
        for it in self.items.values_mut() {
            if out.len() == max {
                break;
            }
            if it.held.is_some() {
                continue;
            }
            self.leases += 1;
            it.deliveries += 1;
            it.held = Some(Held {
                lease: self.leases,
                expired: vis == Vis::Zero,
            });
            out.push((
                self.leases,
                it.id.clone(),
                it.body.clone(),
                it.deliveries,
                it.handed_back,
            ));
        }
        out
    }

    /// The item lease number `lease` holds (expired or not), if it still does.
    fn held_by(&mut self, lease: usize) -> Option<(u64, &mut Item)> {
        self.items
            .iter_mut()
            .find(|(_, it)| it.held.is_some_and(|h| h.lease == lease))
            .map(|(seq, it)| (*seq, it))
    }

    fn depth(&mut self) -> Depth {
        self.sweep();
        let in_flight = self.items.values().filter(|it| it.held.is_some()).count() as u64;
        Depth {
            visible: self.items.len() as u64 - in_flight,
            in_flight,
            dead: self.dead.len() as u64,
        }
    }
}

async fn check_dead_letters(q: &dyn LeaseQueue, model: &Model) {
    let mut dead: Vec<(String, Vec<u8>, String, u32)> = q
        .dead_letters(100)
        .await
        .expect("dead letters")
        .into_iter()
        .map(|d| (d.id, d.body, d.reason, d.delivery_count))
        .collect();
    dead.sort();
    let want: Vec<(String, Vec<u8>, String, u32)> = model
        .dead
        .iter()
        .map(|(id, (body, reason, n))| (id.clone(), body.clone(), reason.clone(), *n))
        .collect();
    assert_eq!(dead, want, "the dead-letter queue");
}

/// Runs `ops` on `q` and on the model, checking every answer.
async fn run(q: &dyn LeaseQueue, max_attempts: u32, ops: &[Op]) {
    let mut model = Model {
        max_attempts,
        ..Model::default()
    };
    // Each consumer's leases, newest last, with the model's number for each; stale ones are kept
    // (up to eight) so that their tokens are used again.
    let mut held: Vec<Vec<(usize, Lease)>> = vec![Vec::new(); CONSUMERS];
    let pick = |held: &Vec<Vec<(usize, Lease)>>, c: usize, p: usize| {
        let h = &held[c];
        (!h.is_empty()).then(|| h[p % h.len()].clone())
    };
    for (step, op) in ops.iter().enumerate() {
        let at = format!("step {step} ({op:?})");
        match *op {
            Op::Enqueue(i) => {
                let id = format!("item-{i}");
                let body = model.enqueue(&id);
                q.enqueue(&[NewItem { id, body }]).await.expect("enqueue");
            }
            Op::Lease { consumer, max, vis } => {
                let got = q
                    .lease(max, vis.duration(), Duration::ZERO)
                    .await
                    .expect("lease");
                let want = model.lease(max, vis);
                let mut got_sorted: Vec<_> = got
                    .iter()
                    .map(|l| {
                        (
                            l.id.clone(),
                            l.body.clone(),
                            l.delivery_count,
                            l.released_at.is_some(),
                        )
                    })
                    .collect();
                got_sorted.sort();
                let mut want_sorted: Vec<_> = want
                    .iter()
                    .map(|(_, id, body, n, back)| (id.clone(), body.clone(), *n, *back))
                    .collect();
                want_sorted.sort();
                assert_eq!(got_sorted, want_sorted, "{at}: the items leased");
                for lease in got {
                    let (number, ..) = want
                        .iter()
                        .find(|w| w.1 == lease.id)
                        .expect("a leased item the model leased");
                    // No live lease of another consumer holds this item.
                    for (other, leases) in held.iter().enumerate() {
                        for (n, l) in leases {
                            if l.id == lease.id && *n != *number {
                                assert!(
                                    model.held_by(*n).is_none(),
                                    "{at}: consumer {other} still holds {}",
                                    l.id
                                );
                            }
                        }
                    }
                    held[consumer].push((*number, lease));
                }
                let h = &mut held[consumer];
                if h.len() > 8 {
                    h.drain(..h.len() - 8);
                }
            }
            Op::Extend {
                consumer,
                pick: p,
                vis,
            } => {
                let Some((n, lease)) = pick(&held, consumer, p) else {
                    continue;
                };
                let got = q.extend(&lease, vis.duration()).await;
                let live = match model.held_by(n) {
                    Some((_, it)) => match it.held {
                        Some(h) if !h.expired => {
                            it.held = Some(Held {
                                lease: n,
                                expired: vis == Vis::Zero,
                            });
                            true
                        }
                        _ => false,
                    },
                    None => false,
                };
                match got {
                    Ok(_) => assert!(live, "{at}: extended a lease that is not held"),
                    Err(QueueError::LeaseLost { .. }) => {
                        assert!(!live, "{at}: a held lease could not be extended")
                    }
                    Err(e) => panic!("{at}: {e}"),
                }
            }
            Op::Ack { consumer, pick: p } => {
                let Some((n, lease)) = pick(&held, consumer, p) else {
                    continue;
                };
                q.ack(std::slice::from_ref(&lease)).await.expect("ack");
                if let Some((seq, _)) = model.held_by(n) {
                    model.items.remove(&seq);
                }
            }
            Op::Release {
                consumer,
                pick: p,
                error,
            } => {
                let Some((n, lease)) = pick(&held, consumer, p) else {
                    continue;
                };
                let reason = format!("attempt failed\n at {step}");
                let error = error.then_some(reason.as_str());
                q.release(std::slice::from_ref(&lease), error)
                    .await
                    .expect("release");
                if let Some((_, it)) = model.held_by(n) {
                    it.held = None;
                    it.handed_back = true;
                    if error.is_some() {
                        it.failures += 1;
                        it.last_error = Some(format!("attempt failed at {step}"));
                    }
                }
            }
            Op::DeadLetter { consumer, pick: p } => {
                let Some((n, lease)) = pick(&held, consumer, p) else {
                    continue;
                };
                let got = q.dead_letter(&lease, "poison\tmessage").await;
                let moved = match model.held_by(n) {
                    Some((seq, _)) => {
                        let it = model.items.remove(&seq).expect("held");
                        model
                            .dead
                            .insert(it.id, (it.body, "poison message".into(), it.deliveries));
                        true
                    }
                    None => false,
                };
                match got {
                    Ok(()) => assert!(moved, "{at}: dead-lettered an item not held"),
                    Err(QueueError::LeaseLost { .. }) => {
                        assert!(!moved, "{at}: a held item could not be dead-lettered")
                    }
                    Err(e) => panic!("{at}: {e}"),
                }
            }
            Op::Depth => {
                let got = q.depth().await.expect("depth");
                assert_eq!(got, model.depth(), "{at}: depth");
                check_dead_letters(q, &model).await;
            }
        }
    }
    assert_eq!(q.depth().await.expect("depth"), model.depth(), "at the end");
    check_dead_letters(q, &model).await;
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn sqlite_queue_keeps_the_lease_model(
        max_attempts in 1u32..4,
        ops in proptest::collection::vec(op(), 1..60),
    ) {
        let dir = tempfile::tempdir().expect("a temp dir");
        runtime().block_on(async {
            let q = SqliteQueue::open(&dir.path().join("q.db"), "model", QueueConfig { max_attempts })
                .await
                .expect("open");
            run(&q, max_attempts, &ops).await;
        });
    }

    #[test]
    fn memory_queue_keeps_the_lease_model(
        max_attempts in 1u32..4,
        ops in proptest::collection::vec(op(), 1..60),
    ) {
        runtime().block_on(async {
            let q = MemoryQueue::new("model", QueueConfig { max_attempts });
            run(&q, max_attempts, &ops).await;
        });
    }
}

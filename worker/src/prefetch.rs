//! The prefetch deque and its pace: leased-but-unstarted shards wait in the [`Deque`] for their
//! turn to feed the pipeline (so the model never waits on the queue), and peers may take them from
//! there; [`Pace`] measures the worker's seconds per shard and lease round trip, from which the
//! number of shards to hold follows.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use spotbatch_proto::api::HandedShard;
use tokio::sync::oneshot;

use crate::handoff::{Given, Handoffs};

struct Waiting {
    body: Vec<u8>,
    delivery_count: u32,
    give: oneshot::Sender<Given>,
}

/// Leased shards waiting for their turn to feed the pipeline: what thieves take from.
#[derive(Default)]
pub(crate) struct Deque {
    inner: Mutex<(u64, BTreeMap<u64, Waiting>)>,
}

impl Deque {
    /// Puts a shard in; the receiver gets it back if a thief takes it.
    pub(crate) fn enter(
        &self,
        body: &[u8],
        delivery_count: u32,
    ) -> (u64, oneshot::Receiver<Given>) {
        let (give, rx) = oneshot::channel();
        let mut seq = 0;
        if let Ok(mut d) = self.inner.lock() {
            d.0 += 1;
            seq = d.0;
            d.1.insert(
                seq,
                Waiting {
                    body: body.to_vec(),
                    delivery_count,
                    give,
                },
            );
        }
        (seq, rx)
    }

    /// Takes the shard out for its owner; `false` when a thief took it first (its hand-off is on
    /// the receiver already).
    pub(crate) fn leave(&self, seq: u64) -> bool {
        self.inner
            .lock()
            .map(|mut d| d.1.remove(&seq).is_some())
            .unwrap_or(true)
    }

    /// Shards waiting.
    pub(crate) fn len(&self) -> usize {
        self.inner.lock().map(|d| d.1.len()).unwrap_or(0)
    }

    /// Takes up to `max` shards, newest first (at most half of them unless `all`), for `thief`:
    /// registers a hand-off for each in `handoffs` and gives it to its owner's task (which then
    /// waits for the thief's words instead of its turn).
    pub(crate) fn take(
        &self,
        max: usize,
        all: bool,
        thief: &str,
        handoffs: &Handoffs,
    ) -> Vec<HandedShard> {
        let Ok(mut d) = self.inner.lock() else {
            return Vec::new();
        };
        let n = if all {
            d.1.len()
        } else {
            d.1.len().div_ceil(2)
        }
        .min(max);
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let Some((_, w)) = d.1.pop_last() else { break };
            let (id, words) = handoffs.open();
            let given = Given {
                id: id.clone(),
                thief: thief.to_string(),
                words,
                at: Instant::now(),
            };
            if w.give.send(given).is_err() {
                // Its task has ended (lease lost): nothing to hand over.
                handoffs.forget(&id);
                continue;
            }
            out.push(HandedShard {
                handoff_id: id,
                task: w.body,
                delivery_count: w.delivery_count,
            });
        }
        out
    }
}

/// The worker's measured pace, from which the deque's depth follows.
#[derive(Default)]
pub(crate) struct Pace {
    shard_secs: Mutex<Option<f64>>,
    lease_secs: Mutex<Option<f64>>,
}

fn ewma(slot: &Mutex<Option<f64>>, x: f64) {
    if let Ok(mut s) = slot.lock() {
        *s = Some(match *s {
            Some(v) => 0.7 * v + 0.3 * x,
            None => x,
        });
    }
}

impl Pace {
    /// A shard took this long from its turn to feed to its rows written.
    pub(crate) fn shard_took(&self, d: Duration) {
        ewma(&self.shard_secs, d.as_secs_f64());
    }

    /// A lease call that brought work took this long.
    pub(crate) fn lease_took(&self, d: Duration) {
        ewma(&self.lease_secs, d.as_secs_f64());
    }

    /// Seconds per shard (moving average), once one has been done.
    pub(crate) fn shard_secs(&self) -> Option<f64> {
        self.shard_secs.lock().ok().and_then(|s| *s)
    }

    /// Shards to hold (one in work, the rest unstarted): enough unstarted ones to keep the model
    /// busy for a tenth of the lease timeout (1–30 s) and for three lease round trips, at least
    /// one, at most `max` in all. Before the first shard is measured: `max` (what a fleet's
    /// early worker takes more than its share, idle peers steal back).
    pub(crate) fn target(&self, max: usize, visibility: Duration) -> usize {
        let max = max.max(1);
        let Some(shard) = self.shard_secs().filter(|s| *s > 0.0) else {
            return max;
        };
        let lease = self.lease_secs.lock().ok().and_then(|s| *s).unwrap_or(0.0);
        let lookahead = (visibility.as_secs_f64() / 10.0)
            .clamp(1.0, 30.0)
            .max(3.0 * lease);
        let unstarted = (lookahead / shard).ceil().max(1.0) as usize;
        (1 + unstarted).clamp(max.min(2), max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handoff::Word;

    #[test]
    fn depth_follows_the_pace_and_the_lease_timeout() {
        let p = Pace::default();
        // Unmeasured: the most allowed.
        assert_eq!(p.target(8, Duration::from_secs(60)), 8);
        p.shard_took(Duration::from_secs(1));
        // A tenth of a 60 s lease at 1 s a shard: 6 unstarted + 1 in work.
        assert_eq!(p.target(16, Duration::from_secs(60)), 7);
        assert_eq!(p.target(4, Duration::from_secs(60)), 4);
        // Short leases: at least 1 s of work ahead, at least one unstarted.
        assert_eq!(p.target(16, Duration::from_secs(5)), 2);
        // Long leases: at most 30 s ahead.
        assert_eq!(p.target(64, Duration::from_secs(3600)), 31);
        // Slow lease calls: three round trips ahead.
        p.lease_took(Duration::from_secs(4));
        assert_eq!(p.target(64, Duration::from_secs(5)), 13);
        // A slower pace holds fewer.
        let slow = Pace::default();
        slow.shard_took(Duration::from_secs(10));
        assert_eq!(slow.target(16, Duration::from_secs(60)), 2);
    }

    #[test]
    fn a_thief_gets_at_most_half_newest_first_and_owners_hear_of_it() {
        let st = Handoffs::new("owner");
        let d = Deque::default();
        let mut waiting: Vec<_> = (0..5u8).map(|i| d.enter(&[i], u32::from(i) + 1)).collect();
        let taken = d.take(10, false, "thief", &st);
        assert_eq!(taken.len(), 3, "half of five, rounded up");
        let bodies: Vec<u8> = taken.iter().map(|h| h.task[0]).collect();
        assert_eq!(bodies, vec![4, 3, 2], "newest first");
        assert_eq!(taken[0].delivery_count, 5);
        assert_eq!(d.len(), 2);
        // The owners of the taken shards get their hand-offs; the others are still theirs.
        for (i, (seq, rx)) in waiting.iter_mut().enumerate() {
            if i >= 2 {
                let g = rx.try_recv().expect("told");
                assert_eq!(g.thief, "thief");
                assert!(!d.leave(*seq));
                // The thief's word reaches the owner's task.
                assert!(st.tell(&g.id, Word::Done));
                st.forget(&g.id);
                assert!(!st.tell(&g.id, Word::Done), "forgotten: NOT_FOUND");
            } else {
                assert!(rx.try_recv().is_err());
                assert!(d.leave(*seq));
            }
        }
        assert_eq!(d.take(10, true, "thief", &st).len(), 0);
        // `all` (a drain's offer) takes every one, up to `max`.
        let kept: Vec<_> = (0..4u8).map(|i| d.enter(&[i], 1)).collect();
        assert_eq!(d.take(3, true, "peer", &st).len(), 3);
        assert_eq!(d.len(), 1);
        // Owners' tasks that have ended (receivers gone) hand nothing over.
        drop(kept);
        drop(d.enter(&[9], 1));
        assert_eq!(d.take(5, true, "peer", &st).len(), 0);
        assert_eq!(d.len(), 0);
    }

    /// What the model says became of one shard put in the deque.
    enum Fate {
        /// Waiting in the deque, its owner's task alive.
        Waiting,
        /// Waiting in the deque, its owner's task ended (its lease was lost).
        Orphaned,
        /// Taken out by its owner for its turn.
        Left,
        /// Handed to a thief; the owner holds the hand-off.
        Given(Given),
        /// An orphan a take popped and dropped (the queue redelivers it: its lease is gone).
        Dropped,
    }

    #[derive(Debug, Clone)]
    enum DequeOp {
        Enter,
        /// The owner of the `n`th shard that is waiting or given (mod their count) takes its turn.
        Leave(usize),
        /// The owner of the `n`th waiting shard ends without taking it.
        OwnerGone(usize),
        /// A thief steals (at most half, up to `max`).
        Steal(usize),
        /// A drain's offer: every one, up to `max`.
        Drain(usize),
    }

    fn deque_op() -> impl proptest::strategy::Strategy<Value = DequeOp> {
        use proptest::prelude::*;
        prop_oneof![
            4 => Just(DequeOp::Enter),
            3 => any::<usize>().prop_map(DequeOp::Leave),
            1 => any::<usize>().prop_map(DequeOp::OwnerGone),
            2 => (1..5usize).prop_map(DequeOp::Steal),
            1 => (1..5usize).prop_map(DequeOp::Drain),
        ]
    }

    proptest::proptest! {
        /// Random enters, leaves, owner deaths, steals and drains against a model: no shard is
        /// lost or held twice — each is waiting, taken by its owner, or handed to exactly one
        /// thief whose owner heard of it; thieves get the newest first, half or all as asked.
        #[test]
        fn no_shard_is_lost_or_held_twice(ops in proptest::collection::vec(deque_op(), 1..80)) {
            let st = Handoffs::new("owner");
            let d = Deque::default();
            // Per shard: its seq, its owner's receiver (None once the owner's task ended), its fate.
            let mut shards: Vec<(u64, Option<oneshot::Receiver<Given>>, Fate)> = Vec::new();
            let mut handed = std::collections::HashSet::new();
            for op in ops {
                match op {
                    DequeOp::Enter => {
                        let n = shards.len() as u32;
                        let (seq, rx) = d.enter(&n.to_le_bytes(), n + 1);
                        shards.push((seq, Some(rx), Fate::Waiting));
                    }
                    DequeOp::Leave(i) => {
                        let owners: Vec<usize> = (0..shards.len())
                            .filter(|j| matches!(shards[*j].2, Fate::Waiting | Fate::Given(_)))
                            .collect();
                        if owners.is_empty() {
                            continue;
                        }
                        let j = owners[i % owners.len()];
                        let left = d.leave(shards[j].0);
                        match shards[j].2 {
                            Fate::Waiting => {
                                assert!(left, "its owner takes a waiting shard");
                                shards[j].2 = Fate::Left;
                            }
                            _ => assert!(!left, "a shard given to a thief is not its owner's to take"),
                        }
                    }
                    DequeOp::OwnerGone(i) => {
                        let waiting: Vec<usize> = (0..shards.len())
                            .filter(|j| matches!(shards[*j].2, Fate::Waiting))
                            .collect();
                        if waiting.is_empty() {
                            continue;
                        }
                        let j = waiting[i % waiting.len()];
                        shards[j].1 = None;
                        shards[j].2 = Fate::Orphaned;
                    }
                    DequeOp::Steal(max) | DequeOp::Drain(max) => {
                        let all = matches!(op, DequeOp::Drain(_));
                        let mut inside: Vec<usize> = (0..shards.len())
                            .filter(|j| matches!(shards[*j].2, Fate::Waiting | Fate::Orphaned))
                            .collect();
                        let n = if all { inside.len() } else { inside.len().div_ceil(2) }.min(max);
                        // Newest first; orphans are popped and dropped without counting.
                        let mut want = Vec::new();
                        while want.len() < n {
                            let Some(j) = inside.pop() else { break };
                            if matches!(shards[j].2, Fate::Orphaned) {
                                shards[j].2 = Fate::Dropped;
                            } else {
                                want.push(j);
                            }
                        }
                        let taken = d.take(max, all, "thief", &st);
                        let bodies: Vec<Vec<u8>> = taken.iter().map(|h| h.task.clone()).collect();
                        let want_bodies: Vec<Vec<u8>> =
                            want.iter().map(|j| (*j as u32).to_le_bytes().to_vec()).collect();
                        assert_eq!(bodies, want_bodies, "taken newest first, as many as asked");
                        for (h, j) in taken.iter().zip(&want) {
                            assert!(handed.insert(h.task.clone()), "a shard handed out twice");
                            assert_eq!(h.delivery_count, *j as u32 + 1);
                            let given = shards[*j]
                                .1
                                .as_mut()
                                .expect("a live owner")
                                .try_recv()
                                .expect("the owner hears of its shard's hand-off");
                            assert_eq!((given.id.as_str(), given.thief.as_str()), (h.handoff_id.as_str(), "thief"));
                            shards[*j].2 = Fate::Given(given);
                        }
                    }
                }
                // Every shard is in exactly one place.
                let inside = shards
                    .iter()
                    .filter(|s| matches!(s.2, Fate::Waiting | Fate::Orphaned))
                    .count();
                assert_eq!(d.len(), inside, "the deque holds what the model says");
                for (_, rx, fate) in &mut shards {
                    match fate {
                        Fate::Waiting | Fate::Left => assert!(
                            rx.as_mut().expect("a live owner").try_recv().is_err(),
                            "no hand-off for a shard not handed out"
                        ),
                        Fate::Given(g) => {
                            assert!(st.tell(&g.id, Word::Working), "the thief's words reach the owner");
                            assert!(matches!(g.words.try_recv(), Ok(Word::Working)));
                        }
                        Fate::Orphaned | Fate::Dropped => {}
                    }
                }
            }
        }
    }
}

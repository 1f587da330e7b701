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
}

//! The Kafka backend's per-item lease bookkeeping, with no I/O: which partitions this worker owns
//! (each ownership an epoch, so tokens of an earlier one stop working), the records fetched from
//! them, their leases, deliveries and failures, out-of-order acks and each partition's low-water
//! mark, expiry, release, the dead-letter decision, and the offsets waiting to be committed
//! (refused commits queued again at the partition's floor).
//!
//! [`super::KafkaQueue`] holds a [`Book`] behind a mutex and does the I/O around it: the consumer
//! feeds it fetched records and assignments, its calls return what must then be produced to the
//! dead-letter topic, and the committer thread commits what [`Book::take_commits`] hands out.
//! `queue/tests/kafka_book_model.rs` checks it against a model.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, SystemTime};

use super::part::{Arrival, Item, ItemState, Part};
use crate::{Lease, LeaseToken};

/// A record to produce to the dead-letter topic: out of attempts, or dead-lettered by its holder.
/// It stays held (never delivered again, never committed past) until [`Book::acked`] says it was
/// produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dead {
    /// Its partition.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// The record's id.
    pub id: String,
    /// The record's body.
    pub body: Vec<u8>,
    /// Why, on one line: the last error, or the holder's reason.
    pub reason: String,
    /// How many times it was delivered.
    pub deliveries: u32,
}

/// Offsets `start..end` of a partition that a fetch skipped, to read back (in ownership `epoch`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hole {
    /// The partition.
    pub partition: i32,
    /// The ownership that found it: a read-back for an earlier one is dropped.
    pub epoch: u64,
    /// The first offset skipped.
    pub start: i64,
    /// The offset received instead (exclusive end of the hole).
    pub end: i64,
}

/// What became of a fetched record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fetched {
    /// Taken to be leased (false: its partition is not owned, it is below the low-water mark, or
    /// it is held already).
    pub taken: bool,
    /// Offsets it skipped, to read back before the mark may pass them.
    pub hole: Option<Hole>,
}

/// One worker's records and leases, for the partitions it owns.
#[derive(Debug)]
pub struct Book {
    max_attempts: u32,
    parts: BTreeMap<i32, Part>,
    /// Records fetched and not yet leased: (partition, offset), oldest first.
    fresh: VecDeque<(i32, i64)>,
    next_epoch: u64,
    /// Offsets to commit (partition → next offset), taken by the committer.
    to_commit: HashMap<i32, i64>,
}

impl Book {
    /// An empty book; records are dead-lettered after `max_attempts` failures.
    pub fn new(max_attempts: u32) -> Self {
        Self {
            max_attempts,
            parts: BTreeMap::new(),
            fresh: VecDeque::new(),
            next_epoch: 0,
            to_commit: HashMap::new(),
        }
    }

    /// `partition` is now this worker's, starting at its committed offset (`None`: nothing
    /// committed, it starts wherever the log does). Already owned: nothing changes.
    pub fn assign(&mut self, partition: i32, start: Option<i64>) {
        self.next_epoch += 1;
        let epoch = self.next_epoch;
        self.parts
            .entry(partition)
            .or_insert_with(|| Part::assigned(epoch, start));
    }

    /// `partition` moves away: its leases stop working and its records are forgotten. Returns the
    /// offset to commit before it moves (see [`Book::take_commit`]).
    pub fn revoke(&mut self, partition: i32) -> Option<i64> {
        let next = self.take_commit(partition);
        self.parts.remove(&partition);
        self.fresh.retain(|(p, _)| *p != partition);
        next
    }

    /// The offset to commit for owned partition `p` before it moves or the worker leaves: its
    /// floor, whether or not an earlier commit of it landed (one may still be in flight, or have
    /// failed without its retry sent yet). None if this ownership has not moved it.
    pub fn take_commit(&mut self, p: i32) -> Option<i64> {
        self.to_commit.remove(&p);
        let part = self.parts.get_mut(&p)?;
        if let Some(next) = part.low_water() {
            part.advance(next);
        }
        (part.floor > part.start).then_some(part.floor)
    }

    /// [`Book::take_commit`] of every owned partition that has one.
    pub fn take_all_commits(&mut self) -> Vec<(i32, i64)> {
        let owned: Vec<i32> = self.parts.keys().copied().collect();
        owned
            .into_iter()
            .filter_map(|p| self.take_commit(p).map(|n| (p, n)))
            .collect()
    }

    /// Whether `partition` is owned, in ownership `epoch`.
    pub fn owns(&self, partition: i32, epoch: u64) -> bool {
        self.parts
            .get(&partition)
            .is_some_and(|part| part.epoch == epoch)
    }

    /// A record the consumer fetched. A record beyond the offset its partition expected leaves a
    /// [`Hole`], never committed across until [`Book::filled`].
    pub fn fetched(&mut self, partition: i32, offset: i64, id: String, body: Vec<u8>) -> Fetched {
        let Some(part) = self.parts.get_mut(&partition) else {
            return Fetched {
                taken: false,
                hole: None,
            };
        };
        let hole = match part.arrive(offset) {
            Arrival::Skipped { start, end } => Some(Hole {
                partition,
                epoch: part.epoch,
                start,
                end,
            }),
            Arrival::Next | Arrival::Again => None,
        };
        let mut taken = false;
        if offset >= part.floor {
            if let std::collections::btree_map::Entry::Vacant(slot) = part.items.entry(offset) {
                slot.insert(Item::fetched(id, body));
                self.fresh.push_back((partition, offset));
                taken = true;
            }
        }
        Fetched { taken, hole }
    }

    /// What reading `hole` back found (offset, id, body, in offset order): records the consumer
    /// never received become records to lease; offsets holding none are passed by the mark.
    /// Returns how many were added, or None when the partition is no longer that ownership's.
    pub fn filled(&mut self, hole: Hole, found: Vec<(i64, String, Vec<u8>)>) -> Option<usize> {
        let part = self
            .parts
            .get_mut(&hole.partition)
            .filter(|part| part.epoch == hole.epoch)?;
        let found = found
            .into_iter()
            .map(|(off, id, body)| (off, Item::fetched(id, body)))
            .collect();
        let added = part.fill(hole.start, hole.end, found);
        // Offsets read back as holding nothing may let the mark pass acks made meanwhile: else
        // it would wait for the next ack, and a partition whose last records were acked before
        // the read-back would never be committed to its end while it is owned.
        if let Some(next) = part.low_water() {
            part.advance(next);
            self.to_commit.insert(hole.partition, next);
        }
        let n = added.len();
        self.fresh
            .extend(added.into_iter().map(|off| (hole.partition, off)));
        Some(n)
    }

    /// Records fetched and not leased yet (the poller pauses the partitions while many wait).
    pub fn waiting(&self) -> usize {
        self.fresh.len()
    }

    /// Up to `max` leases until `deadline`, at `now`: records handed back (released or expired;
    /// an expiry is a failure) first, by partition and offset, then fresh ones, oldest first.
    /// Records out of attempts are returned to be dead-lettered instead, held meanwhile.
    pub fn lease(
        &mut self,
        max: usize,
        now: SystemTime,
        deadline: SystemTime,
    ) -> (Vec<Lease>, Vec<Dead>) {
        let (mut out, mut dead) = (Vec::new(), Vec::new());
        let Book {
            parts,
            fresh,
            max_attempts,
            ..
        } = self;
        'parts: for (p, part) in parts.iter_mut() {
            for (off, item) in part.items.iter_mut() {
                if out.len() >= max {
                    break 'parts;
                }
                let expired = matches!(
                    item.state,
                    ItemState::Leased { deadline } | ItemState::Burying { deadline } if deadline <= now
                );
                if expired {
                    item.failures += 1;
                    item.last_error = Some(format!(
                        "lease expired without ack or release (delivery {})",
                        item.deliveries
                    ));
                    item.state = ItemState::Waiting;
                }
                if matches!(item.state, ItemState::Waiting) && item.deliveries > 0 {
                    if item.failures >= *max_attempts {
                        dead.push(dead_of(*p, *off, item, None));
                        // Held while it is produced to the dead-letter topic, by no lease (the
                        // one that expired must not extend it): if that fails, the hold runs out
                        // and it is tried again.
                        item.state = ItemState::Burying { deadline };
                        continue;
                    }
                    out.push(deliver(item, *p, *off, part.epoch, deadline));
                }
            }
        }
        while out.len() < max {
            let Some((p, off)) = fresh.pop_front() else {
                break;
            };
            let Some(part) = parts.get_mut(&p) else {
                continue;
            };
            let epoch = part.epoch;
            let Some(item) = part.items.get_mut(&off) else {
                continue;
            };
            out.push(deliver(item, p, off, epoch, deadline));
        }
        (out, dead)
    }

    /// The record a lease names, if that lease still holds it (same ownership and delivery).
    fn held(&mut self, token: &LeaseToken) -> Option<(i32, i64, &mut Item)> {
        let (p, off, epoch, deliveries) = parse_token(token)?;
        let part = self.parts.get_mut(&p).filter(|part| part.epoch == epoch)?;
        let item = part
            .items
            .get_mut(&off)
            .filter(|i| i.deliveries == deliveries)?;
        matches!(item.state, ItemState::Leased { .. }).then_some((p, off, item))
    }

    /// Whether a lease still holds its record (same ownership and delivery, not handed back,
    /// acked or found expired; a lease past its deadline holds until a lease call finds it).
    pub fn holds(&self, token: &LeaseToken) -> bool {
        parse_token(token).is_some_and(|(p, off, epoch, deliveries)| {
            self.parts
                .get(&p)
                .filter(|part| part.epoch == epoch)
                .and_then(|part| part.items.get(&off))
                .is_some_and(|i| {
                    i.deliveries == deliveries && matches!(i.state, ItemState::Leased { .. })
                })
        })
    }

    /// Extends a held lease that has not run out to `now + visibility`; None when it is lost.
    pub fn extend(
        &mut self,
        token: &LeaseToken,
        now: SystemTime,
        visibility: Duration,
    ) -> Option<SystemTime> {
        let (_, _, item) = self.held(token)?;
        match item.state {
            ItemState::Leased { deadline } if deadline > now => {
                let d = now + visibility;
                item.state = ItemState::Leased { deadline: d };
                Some(d)
            }
            _ => None,
        }
    }

    /// Acks a lease of the current ownership, held or not (the work is written; a lease of an
    /// earlier ownership changes nothing: the new owner finds the done marker). Returns the
    /// partition's new low-water mark when it moved (queued for commit).
    pub fn ack(&mut self, token: &LeaseToken) -> Option<i64> {
        let (p, off, epoch, _) = parse_token(token)?;
        if !self.owns(p, epoch) {
            return None;
        }
        self.acked(p, off)
    }

    /// Marks the record at `offset` of owned `partition` done (acked, or produced to the
    /// dead-letter topic) and queues the partition's new low-water mark for commit, returned when
    /// it moved.
    pub fn acked(&mut self, partition: i32, offset: i64) -> Option<i64> {
        let part = self.parts.get_mut(&partition)?;
        if let Some(item) = part.items.get_mut(&offset) {
            item.state = ItemState::Acked;
        }
        let next = part.low_water()?;
        part.advance(next);
        self.to_commit.insert(partition, next);
        Some(next)
    }

    /// Hands a held lease back to be delivered again; with an error it is a failed attempt.
    /// Returns the record to dead-letter when it is out of attempts (None also when not held).
    pub fn release(&mut self, token: &LeaseToken, error: Option<&str>) -> Option<Dead> {
        let max = self.max_attempts;
        let (p, off, item) = self.held(token)?;
        item.state = ItemState::Waiting;
        if let Some(e) = error {
            item.failures += 1;
            item.last_error = Some(one_line(e));
        }
        (item.failures >= max).then(|| dead_of(p, off, item, None))
    }

    /// A held lease to dead-letter now, with `reason`: the record to produce (it stays held until
    /// then). None when the lease is not held.
    pub fn dead_letter(&mut self, token: &LeaseToken, reason: &str) -> Option<Dead> {
        let (p, off, item) = self.held(token)?;
        Some(dead_of(p, off, item, Some(reason)))
    }

    /// The offsets to commit now (partition, next offset), taken.
    pub fn take_commits(&mut self) -> Vec<(i32, i64)> {
        self.to_commit.drain().collect()
    }

    /// The broker refused a commit of `commits`: each partition still owned and moved in this
    /// ownership is queued again at its floor — never the refused offset (it is never below the
    /// floor), and never below where a partition revoked and assigned back meanwhile began.
    /// Returns what was queued again.
    pub fn commit_refused(&mut self, commits: &[(i32, i64)]) -> Vec<(i32, i64)> {
        let mut again = Vec::new();
        for (p, _) in commits {
            let Some(floor) = self
                .parts
                .get(p)
                .filter(|part| part.floor > part.start)
                .map(|part| part.floor)
            else {
                continue;
            };
            let at = self.to_commit.entry(*p).or_insert(floor);
            *at = (*at).max(floor);
            again.push((*p, floor));
        }
        again
    }

    /// Each owned partition's floor (every offset below it is done), for the empty check: this
    /// worker's acks count even if the broker has not shown their commit yet.
    pub fn floors(&self) -> HashMap<i32, i64> {
        self.parts
            .iter()
            .map(|(p, part)| (*p, part.floor))
            .collect()
    }

    /// Records held above the floors: (leased, done but not yet passed by the mark).
    pub fn held_counts(&self) -> (u64, u64) {
        let (mut leased, mut done) = (0, 0);
        for item in self.parts.values().flat_map(|part| part.items.values()) {
            match item.state {
                ItemState::Leased { .. } | ItemState::Burying { .. } => leased += 1,
                ItemState::Acked => done += 1,
                ItemState::Waiting => {}
            }
        }
        (leased, done)
    }
}

/// A lease's token: `PARTITION:OFFSET:EPOCH:DELIVERY`.
fn token(p: i32, off: i64, epoch: u64, deliveries: u32) -> LeaseToken {
    LeaseToken(format!("{p}:{off}:{epoch}:{deliveries}"))
}

fn parse_token(t: &LeaseToken) -> Option<(i32, i64, u64, u32)> {
    let mut it = t.0.split(':');
    Some((
        it.next()?.parse().ok()?,
        it.next()?.parse().ok()?,
        it.next()?.parse().ok()?,
        it.next()?.parse().ok()?,
    ))
}

/// Leases an item again (or for the first time): one more delivery, a new deadline and token.
fn deliver(item: &mut Item, p: i32, off: i64, epoch: u64, deadline: SystemTime) -> Lease {
    item.deliveries += 1;
    item.state = ItemState::Leased { deadline };
    Lease {
        id: item.id.clone(),
        body: item.body.clone(),
        token: token(p, off, epoch, item.deliveries),
        delivery_count: item.deliveries,
        deadline,
        released_at: None,
    }
}

/// The dead letter for an item: with `reason`, or its last error.
fn dead_of(p: i32, off: i64, item: &Item, reason: Option<&str>) -> Dead {
    Dead {
        partition: p,
        offset: off,
        id: item.id.clone(),
        body: item.body.clone(),
        reason: reason
            .map(one_line)
            .unwrap_or_else(|| item.last_error.clone().unwrap_or_default()),
        deliveries: item.deliveries,
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_millis(ms)
    }

    #[test]
    fn refused_commits_are_queued_again_at_the_floor_of_partitions_still_owned() {
        let mut book = Book::new(3);
        book.assign(0, Some(10));
        book.assign(1, Some(0));
        for off in 10..13 {
            assert!(book.fetched(0, off, format!("a{off}"), Vec::new()).taken);
        }
        assert!(book.fetched(1, 0, "b0".into(), Vec::new()).taken);
        let (leases, _) = book.lease(10, at(0), at(1000));
        assert_eq!(leases.len(), 4);
        assert_eq!(book.ack(&leases[1].token), None, "11 is not contiguous");
        assert_eq!(book.ack(&leases[0].token), Some(12));
        assert_eq!(book.ack(&leases[3].token), Some(1));
        let mut commits = book.take_commits();
        commits.sort_unstable();
        assert_eq!(commits, vec![(0, 12), (1, 1)]);
        assert!(book.take_commits().is_empty());
        // Refused: partition 1 moved away and came back at its committed offset 0 meanwhile (its
        // new ownership moved nothing, so nothing is committed for it); 0 moved on to 13.
        assert_eq!(book.revoke(1), Some(1));
        book.assign(1, Some(0));
        assert_eq!(book.ack(&leases[2].token), Some(13));
        assert_eq!(book.commit_refused(&commits), vec![(0, 13)]);
        assert_eq!(book.take_commits(), vec![(0, 13)]);
    }

    #[test]
    fn a_record_out_of_attempts_is_held_until_its_dead_letter_is_produced() {
        let mut book = Book::new(1);
        book.assign(0, None);
        book.fetched(0, 0, "r0".into(), b"body".to_vec());
        let (l, _) = book.lease(1, at(0), at(100));
        assert_eq!(l.len(), 1);
        // Expired: a failed attempt, the last one.
        let (again, dead) = book.lease(1, at(200), at(300));
        assert!(again.is_empty());
        assert_eq!(dead.len(), 1);
        assert_eq!(
            (
                dead[0].id.as_str(),
                dead[0].body.as_slice(),
                dead[0].deliveries
            ),
            ("r0", &b"body"[..], 1)
        );
        assert!(dead[0].reason.starts_with("lease expired"));
        // Not produced yet: neither delivered nor committed past, and the old lease is lost.
        assert!(book
            .extend(&l[0].token, at(200), Duration::from_secs(1))
            .is_none());
        let (none, no_dead) = book.lease(1, at(250), at(300));
        assert!(none.is_empty() && no_dead.is_empty());
        assert!(book.take_commits().is_empty());
        // The production failed and its hold ran out: dead-lettered again.
        assert_eq!(book.lease(1, at(400), at(500)).1.len(), 1);
        assert_eq!(book.acked(0, 0), Some(1));
        assert_eq!(book.take_commits(), vec![(0, 1)]);
    }
}

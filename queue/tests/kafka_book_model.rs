//! The Kafka backend's per-item lease bookkeeping against a model: [`Book`]
//! (`queue/src/kafka/book.rs`), the pure part of the backend that [`KafkaQueue`] holds behind a
//! mutex and does the I/O around (the consumer feeds it records and assignments, the committer
//! commits what it hands out, dead letters it returns are produced and then marked done). This
//! drives that type itself, through a hidden re-export.
//!
//! Properties, over random interleavings of fetch, a fetch that skips an offset (a broker fault,
//! or a transaction marker) and the read-back of the hole, a record fetched again, lease, extend,
//! ack (out of order), release with and without an error, expiry, dead-letter, committer rounds
//! whose commit lands or is refused, revoke (its commit landing or not) and assign:
//! - the committed offset of a partition never passes a record that was neither acked nor
//!   dead-lettered (a record in a hole not read back yet included);
//! - every record fetched or read back while its partition is owned is delivered until it is acked
//!   or dead-lettered (at the end, with every lease handed back and every hole read back, one
//!   lease call gets them all), and never while a live lease holds it; a record fetched again is
//!   not taken twice;
//! - a revoked partition's leases stop working: they cannot be extended, released or
//!   dead-lettered, and their acks commit nothing; a read-back for an ownership that ended is
//!   dropped;
//! - a live lease can be extended and released, an expired one not extended;
//! - delivery counts, and dead-lettering exactly when `max_attempts` deliveries have failed (an
//!   expiry or a release with an error; a clean release is no failure), are the model's;
//! - refused commits are not lost: after one more committer round, every owned partition's
//!   committed offset is its first record not finished.
//!
//! [`Book`]: spotbatch_queue::kafka::Book
//! [`KafkaQueue`]: spotbatch_queue::kafka::KafkaQueue
#![cfg(feature = "kafka")]

use std::time::{Duration, SystemTime};

use proptest::prelude::*;
use spotbatch_queue::kafka::{Book, Dead, Hole};
use spotbatch_queue::Lease;

const PARTS: i32 = 3;
const MAX: usize = 4;
const VISIBILITY: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
enum Op {
    /// The next record of a partition arrives from the consumer.
    Fetch(i32),
    /// The consumer skips the next offset and gets the one after it; `true`: the skipped offset
    /// holds no record (a transaction marker), `false`: the broker lost it (a fault).
    Skip(i32, bool),
    /// The `n`th hole not yet read back is read back.
    ReadBack(usize),
    /// The consumer fetches an earlier offset again.
    Refetch(i32, usize),
    Lease(usize),
    /// Extend the `n`th lease handed out (mod their count), stale ones included.
    Extend(usize),
    Ack(usize),
    Release(usize, bool),
    DeadLetter(usize),
    /// The clock jumps past every lease's deadline.
    Expire,
    /// The committer's round: its commit lands (`true`) or is refused.
    Commit(bool),
    /// The partition moves away; `true`: its commit on revoke lands.
    Revoke(i32, bool),
    Assign(i32),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..PARTS).prop_map(Op::Fetch),
        1 => (0..PARTS, any::<bool>()).prop_map(|(p, m)| Op::Skip(p, m)),
        1 => any::<usize>().prop_map(Op::ReadBack),
        1 => (0..PARTS, any::<usize>()).prop_map(|(p, n)| Op::Refetch(p, n)),
        3 => (1..=MAX).prop_map(Op::Lease),
        2 => any::<usize>().prop_map(Op::Extend),
        3 => any::<usize>().prop_map(Op::Ack),
        2 => (any::<usize>(), any::<bool>()).prop_map(|(n, e)| Op::Release(n, e)),
        1 => any::<usize>().prop_map(Op::DeadLetter),
        1 => Just(Op::Expire),
        2 => any::<bool>().prop_map(Op::Commit),
        1 => (0..PARTS, any::<bool>()).prop_map(|(p, c)| Op::Revoke(p, c)),
        1 => (0..PARTS).prop_map(Op::Assign),
    ]
}

/// What the model knows of one offset of the topic.
#[derive(Debug, Clone)]
struct Truth {
    /// A transaction marker: no record, nothing to deliver or finish.
    marker: bool,
    /// Acked or dead-lettered, ever: its output is written or it was given up on.
    finished: bool,
    /// The same, during this ownership of its partition (a new owner starts from the committed
    /// offset and may deliver records finished beyond it again: their done markers say so).
    finished_now: bool,
    /// Fetched or read back into the book during this ownership.
    held_now: bool,
    deliveries_this_ownership: u32,
    /// Deliveries this ownership ended by a clean release (every other delivery that ended was
    /// a failure: a release with an error, or an expiry).
    clean_releases: u32,
    /// The last delivery has not ended (acked, released, dead-lettered), and until when it runs.
    open: bool,
    deadline: SystemTime,
}

/// One partition as the model sees it.
#[derive(Debug, Clone, Default)]
struct Partition {
    /// The topic's offsets, appended as the consumer reaches them.
    topic: Vec<Truth>,
    committed: i64,
    owned: bool,
    /// Bumped at every assignment (the model's own count, not the book's epochs).
    ownership: u32,
    /// Where the current ownership began (the committed offset then).
    start: i64,
    /// Assigned without a committed offset and nothing received yet: the first record is
    /// trusted as where the log begins, so a skip there cannot be seen (nor modelled).
    unanchored: bool,
    /// Where the consumer reads next.
    position: i64,
    /// A record was acked or dead-lettered, or a hole read back, in this ownership: the mark
    /// may have moved (until then nothing is committed).
    moved: bool,
}

impl Default for Truth {
    fn default() -> Self {
        Truth {
            marker: false,
            finished: false,
            finished_now: false,
            held_now: false,
            deliveries_this_ownership: 0,
            clean_releases: 0,
            open: false,
            deadline: SystemTime::UNIX_EPOCH,
        }
    }
}

fn at(ms: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(ms)
}

/// Whether `l` is its record's last delivery in this ownership, not ended.
fn current_delivery(parts: &[Partition], l: &Lease, revoked: bool) -> bool {
    let truth = parts_truth(parts, l);
    !revoked && truth.open && l.delivery_count == truth.deliveries_this_ownership
}

fn parts_truth<'a>(parts: &'a [Partition], l: &Lease) -> &'a Truth {
    let (p, off) = record_of(l);
    &parts[p as usize].topic[off as usize]
}

/// The partition and offset a lease is for (the model's record ids are `P@OFFSET`).
fn record_of(l: &Lease) -> (i32, i64) {
    let (p, off) = l.id.split_once('@').expect("a model id");
    (p.parse().expect("partition"), off.parse().expect("offset"))
}

fn finish(parts: &mut [Partition], p: i32, off: i64) {
    let part = &mut parts[p as usize];
    part.moved = true;
    let r = &mut part.topic[off as usize];
    r.finished = true;
    r.finished_now = true;
    r.open = false;
}

/// A dead letter is produced (always, here) and then marked done, as the backend does.
fn bury(book: &mut Book, parts: &mut [Partition], d: &Dead) -> Result<(), TestCaseError> {
    prop_assert!(d.deliveries >= 1 && !d.reason.is_empty() && !d.reason.contains('\n'));
    prop_assert_eq!(&d.id, &format!("{}@{}", d.partition, d.offset));
    finish(parts, d.partition, d.offset);
    book.acked(d.partition, d.offset);
    Ok(())
}

/// Assigns `p` at its committed offset, as the consumer's rebalance callback does.
fn assign(book: &mut Book, parts: &mut [Partition], p: i32) {
    let part = &mut parts[p as usize];
    // No commit yet: nothing committed, the partition starts where the log does.
    let start = (part.committed > 0).then_some(part.committed);
    book.assign(p, start);
    part.owned = true;
    part.ownership += 1;
    part.start = part.committed;
    part.unanchored = start.is_none();
    // The consumer resumes from the committed offset; delivery counts restart.
    part.position = part.committed;
    part.moved = false;
    for r in &mut part.topic {
        r.deliveries_this_ownership = 0;
        r.clean_releases = 0;
        r.open = false;
        r.finished_now = r.marker;
        r.held_now = false;
    }
}

/// The consumer's next record of `part`: it passes offsets that hold no record (transaction
/// markers), and with `lose` also loses the next offset (a new one holds a marker or not, as
/// `marker` says). Returns the first offset passed, if any, and the record's offset.
fn next_record(part: &mut Partition, lose: bool, marker: bool) -> (Option<i64>, i64) {
    let first = part.position;
    let mut lose = lose;
    loop {
        let off = part.position;
        if off as usize == part.topic.len() {
            let m = lose && marker;
            part.topic.push(Truth {
                marker: m,
                finished: m,
                finished_now: m,
                deadline: SystemTime::UNIX_EPOCH,
                ..Truth::default()
            });
        }
        part.position += 1;
        if lose || part.topic[off as usize].marker {
            lose = false;
            continue;
        }
        return ((off > first).then_some(first), off);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn kafka_lease_bookkeeping_keeps_its_promises(
        max_attempts in 1u32..4,
        ops in proptest::collection::vec(op(), 1..150),
    ) {
        let mut book = Book::new(max_attempts);
        let mut parts = vec![Partition::default(); PARTS as usize];
        for p in 0..PARTS {
            assign(&mut book, &mut parts, p);
        }
        // Every lease handed out, with whether its partition was revoked since.
        let mut leases: Vec<(Lease, bool)> = Vec::new();
        // Holes not read back yet, with the model's ownership that found them.
        let mut holes: Vec<(Hole, u32)> = Vec::new();
        let mut now = 0u64;
        for op in ops {
            now += 1;
            match op {
                Op::Fetch(p) | Op::Skip(p, _) if parts[p as usize].owned => {
                    let ownership = parts[p as usize].ownership;
                    let part = &mut parts[p as usize];
                    // Without a committed offset the first record is trusted as the log's start:
                    // a record lost before it cannot be seen, so none is.
                    let (lose, marker) = match op {
                        Op::Skip(_, marker) => (!part.unanchored, marker),
                        _ => (false, false),
                    };
                    let (passed, off) = next_record(part, lose, marker);
                    let hole = passed.filter(|_| !part.unanchored);
                    part.unanchored = false;
                    part.topic[off as usize].held_now = true;
                    // Each record at or past the commit mark is fetched once per ownership.
                    let f = book.fetched(p, off, format!("{p}@{off}"), Vec::new());
                    prop_assert!(f.taken, "record {}@{} not taken", p, off);
                    match (f.hole, hole) {
                        (None, None) => {}
                        (Some(h), Some(start)) => {
                            prop_assert_eq!((h.partition, h.start, h.end), (p, start, off));
                            holes.push((h, ownership));
                        }
                        (got, _) => prop_assert!(false, "record {}@{}: hole {:?}, passed {:?}", p, off, got, passed),
                    }
                }
                Op::ReadBack(n) if !holes.is_empty() => {
                    let (hole, ownership) = holes.remove(n % holes.len());
                    let part = &mut parts[hole.partition as usize];
                    let current = part.owned && part.ownership == ownership;
                    let found: Vec<(i64, String, Vec<u8>)> = (hole.start..hole.end)
                        .filter(|o| !part.topic[*o as usize].marker)
                        .map(|o| (o, format!("{}@{o}", hole.partition), Vec::new()))
                        .collect();
                    let want = found.iter().filter(|(o, _, _)| !part.topic[*o as usize].held_now).count();
                    let added = book.filled(hole, found.clone());
                    if current {
                        prop_assert_eq!(added, Some(want));
                        part.moved = true;
                        for (o, _, _) in &found {
                            part.topic[*o as usize].held_now = true;
                        }
                    } else {
                        prop_assert_eq!(added, None, "a read-back for an ownership that ended");
                    }
                }
                Op::Refetch(p, n) if parts[p as usize].owned && parts[p as usize].position > 0 => {
                    let part = &mut parts[p as usize];
                    let off = (n % part.position as usize) as i64;
                    let truth = &mut part.topic[off as usize];
                    if truth.marker {
                        continue;
                    }
                    let f = book.fetched(p, off, format!("{p}@{off}"), Vec::new());
                    // Taken only if it is a record of an open hole (fetched early).
                    let want = !truth.held_now && off >= part.start;
                    prop_assert_eq!(f.taken, want, "record {}@{} fetched again", p, off);
                    prop_assert!(f.hole.is_none());
                    truth.held_now |= f.taken;
                }
                Op::Lease(max) => {
                    let (got, dead) = book.lease(max, at(now), at(now) + VISIBILITY);
                    prop_assert!(got.len() <= max);
                    for l in got {
                        let (p, off) = record_of(&l);
                        let truth = &mut parts[p as usize].topic[off as usize];
                        prop_assert!(!truth.marker && truth.held_now);
                        prop_assert!(!truth.finished_now, "a finished record is delivered again");
                        // Every earlier delivery has ended; those not cleanly released failed.
                        let failures = truth.deliveries_this_ownership - truth.clean_releases;
                        prop_assert!(failures < max_attempts, "delivered after {} failures", failures);
                        prop_assert!(!truth.open || truth.deadline <= at(now), "a live lease's record delivered again");
                        truth.deliveries_this_ownership += 1;
                        truth.open = true;
                        truth.deadline = l.deadline;
                        prop_assert_eq!(l.delivery_count, truth.deliveries_this_ownership);
                        // Nobody else holds it: every older lease of this record is stale.
                        for (old, _) in leases.iter().filter(|(o, _)| o.id == l.id) {
                            prop_assert!(
                                book.extend(&old.token, at(now), VISIBILITY).is_none(),
                                "two live leases on one record"
                            );
                        }
                        leases.push((l, false));
                    }
                    for d in &dead {
                        let truth = &parts[d.partition as usize].topic[d.offset as usize];
                        prop_assert_eq!(d.deliveries, truth.deliveries_this_ownership);
                        let failures = truth.deliveries_this_ownership - truth.clean_releases;
                        prop_assert!(failures >= max_attempts, "dead-lettered after {} failures", failures);
                        bury(&mut book, &mut parts, d)?;
                    }
                }
                Op::Extend(n) if !leases.is_empty() => {
                    let (l, revoked) = &leases[n % leases.len()];
                    let current = current_delivery(&parts, l, *revoked);
                    let live = current && parts_truth(&parts, l).deadline > at(now);
                    let extended = book.extend(&l.token, at(now), VISIBILITY);
                    prop_assert!(!(extended.is_some() && *revoked), "a revoked partition's lease was extended");
                    prop_assert_eq!(extended.is_some(), live, "extend of a lease live: {}", live);
                    if let Some(d) = extended {
                        let (p, off) = record_of(l);
                        parts[p as usize].topic[off as usize].deadline = d;
                    }
                }
                Op::Ack(n) if !leases.is_empty() => {
                    let (l, revoked) = leases[n % leases.len()].clone();
                    let mark = book.ack(&l.token);
                    if revoked {
                        prop_assert!(mark.is_none(), "an ack from a revoked ownership commits");
                    } else {
                        let (p, off) = record_of(&l);
                        finish(&mut parts, p, off);
                    }
                }
                Op::Release(n, error) if !leases.is_empty() => {
                    let (l, revoked) = leases[n % leases.len()].clone();
                    let current = current_delivery(&parts, &l, revoked);
                    let holds = book.holds(&l.token);
                    // Held: its delivery is the record's last and open; a live one always is (one
                    // past its deadline until a lease call finds it expired).
                    prop_assert!(!holds || current, "a lease holds that ended");
                    prop_assert!(holds || !current || parts_truth(&parts, &l).deadline <= at(now));
                    let dead = book.release(&l.token, error.then_some("failed\nhere"));
                    if holds {
                        let (p, off) = record_of(&l);
                        let truth = &mut parts[p as usize].topic[off as usize];
                        truth.open = false;
                        truth.clean_releases += u32::from(!error);
                        let failures = truth.deliveries_this_ownership - truth.clean_releases;
                        prop_assert_eq!(dead.is_some(), failures >= max_attempts, "released after {} failures", failures);
                    } else {
                        prop_assert!(dead.is_none());
                    }
                    if let Some(d) = dead {
                        prop_assert!(!revoked);
                        prop_assert_eq!(d.reason.as_str(), "failed here");
                        bury(&mut book, &mut parts, &d)?;
                    }
                }
                Op::DeadLetter(n) if !leases.is_empty() => {
                    let (l, revoked) = leases[n % leases.len()].clone();
                    let holds = book.holds(&l.token);
                    match book.dead_letter(&l.token, "poison\r\npill") {
                        Some(d) => {
                            prop_assert!(holds && !revoked, "a lease not held was dead-lettered");
                            prop_assert_eq!(d.reason.as_str(), "poison pill");
                            bury(&mut book, &mut parts, &d)?;
                        }
                        None => prop_assert!(!holds),
                    }
                }
                Op::Expire => now += 10 * VISIBILITY.as_millis() as u64,
                Op::Commit(lands) => {
                    let commits = book.take_commits();
                    if lands {
                        for (p, next) in commits {
                            prop_assert!(parts[p as usize].owned);
                            parts[p as usize].committed = next;
                        }
                    } else {
                        book.commit_refused(&commits);
                    }
                }
                Op::Revoke(p, lands) if parts[p as usize].owned => {
                    let part = &mut parts[p as usize];
                    let next = book.revoke(p);
                    if let (Some(next), true) = (next, lands) {
                        part.committed = next;
                    }
                    part.owned = false;
                    for l in leases.iter_mut().filter(|(l, _)| record_of(l).0 == p) {
                        l.1 = true;
                    }
                }
                Op::Assign(p) if !parts[p as usize].owned => assign(&mut book, &mut parts, p),
                _ => {}
            }
            // The committed offset never passes a record that is not finished.
            for (i, part) in parts.iter().enumerate() {
                for (off, r) in part.topic.iter().enumerate().take(part.committed as usize) {
                    prop_assert!(r.finished, "partition {} committed past unfinished offset {}", i, off);
                }
            }
        }
        // Every lease is handed back (released cleanly) and every hole read back; every
        // unfinished record of an owned partition is then delivered by one lease call.
        for (l, revoked) in &leases {
            let holds = book.holds(&l.token);
            prop_assert!(!holds || current_delivery(&parts, l, *revoked));
            let dead = book.release(&l.token, None);
            if holds {
                let (p, off) = record_of(l);
                let truth = &mut parts[p as usize].topic[off as usize];
                truth.open = false;
                truth.clean_releases += 1;
                let failures = truth.deliveries_this_ownership - truth.clean_releases;
                prop_assert_eq!(dead.is_some(), failures >= max_attempts);
            }
            if let Some(d) = dead {
                bury(&mut book, &mut parts, &d)?;
            }
        }
        for (hole, ownership) in holes {
            let part = &mut parts[hole.partition as usize];
            let found = (hole.start..hole.end)
                .filter(|o| !part.topic[*o as usize].marker)
                .map(|o| (o, format!("{}@{o}", hole.partition), Vec::new()))
                .collect();
            let added = book.filled(hole, found);
            prop_assert_eq!(added.is_some(), part.owned && part.ownership == ownership);
            part.moved |= added.is_some();
        }
        let (got, dead) = book.lease(usize::MAX, at(now), at(now) + VISIBILITY);
        for d in &dead {
            let truth = &parts[d.partition as usize].topic[d.offset as usize];
            prop_assert!(truth.deliveries_this_ownership - truth.clean_releases >= max_attempts);
            bury(&mut book, &mut parts, d)?;
        }
        let mut delivered: Vec<(i32, i64)> = got.iter().map(record_of).collect();
        delivered.sort_unstable();
        let mut want = Vec::new();
        for (i, part) in parts.iter().enumerate() {
            if !part.owned {
                continue;
            }
            for off in part.start..part.position {
                let r = &part.topic[off as usize];
                if !r.finished_now {
                    want.push((i as i32, off));
                }
            }
        }
        prop_assert_eq!(delivered, want, "every unfinished record is delivered again");
        // One more committer round: each owned partition is committed up to its first record not
        // finished in this ownership, refused commits included.
        for (p, next) in book.take_commits() {
            parts[p as usize].committed = next;
        }
        for (i, part) in parts.iter().enumerate() {
            if !part.owned {
                continue;
            }
            let first_open = (part.start..part.position)
                .find(|off| !part.topic[*off as usize].finished_now)
                .unwrap_or(part.position);
            let want = if part.moved { first_open } else { part.start };
            prop_assert_eq!(part.committed, want, "partition {} not committed up to its low-water mark", i);
        }
    }
}

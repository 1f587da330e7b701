//! The Kafka backend's per-item lease bookkeeping against a model — written against [`Book`], the
//! pure type this file proposes to extract from `queue/src/kafka.rs` (which is being reworked on
//! its own branch, so it is not touched here).
//!
//! Today that bookkeeping lives in `kafka.rs`'s `State` / `Part` / `Item`, `low_water`,
//! `deliver`, `mark_acked` and the bodies of `lease`, `extend`, `ack`, `release`, `dead_letter`
//! and the rebalance callbacks, interleaved with the consumer and producer calls. [`Book`] is the
//! same rules with no I/O: each call returns what the backend must then do (records to produce to
//! the dead-letter topic, offsets to commit). Once `kafka.rs` holds a `Mutex<Book>` and only does
//! the I/O, this test checks the real thing; until then it pins the rules the extraction must
//! keep.
//!
//! Properties, over random interleavings of fetch, lease, extend, ack (out of order), release
//! with and without an error, expiry, dead-letter, revoke and assign:
//! - the committed offset of a partition never passes a record that was neither acked nor
//!   dead-lettered;
//! - every record fetched while its partition is owned is delivered until it is acked or
//!   dead-lettered (at the end, with every lease handed back, one lease call gets them all);
//! - a revoked partition's leases stop working: they cannot be extended, released or
//!   dead-lettered, and their acks commit nothing;
//! - delivery counts and dead-lettering after `max_attempts` failures are the model's.

use std::collections::{BTreeMap, HashMap, VecDeque};

use proptest::prelude::*;

/// The proposed extraction.
mod book {
    use super::*;

    /// A lease's token: partition, offset, the partition's epoch and the delivery.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Token {
        pub partition: i32,
        pub offset: i64,
        pub epoch: u64,
        pub delivery: u32,
    }

    /// One delivery of a record.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Leased {
        pub token: Token,
        pub id: String,
        pub delivery_count: u32,
    }

    /// A record to produce to the dead-letter topic (then its offset counts as done).
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Dead {
        pub partition: i32,
        pub offset: i64,
        pub id: String,
        pub reason: String,
        pub delivery_count: u32,
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum State {
        Waiting,
        /// Leased until this time (milliseconds on the caller's clock).
        Leased(u64),
        Done,
    }

    #[derive(Debug)]
    struct Record {
        id: String,
        state: State,
        deliveries: u32,
        failures: u32,
        last_error: Option<String>,
    }

    #[derive(Debug)]
    struct Part {
        epoch: u64,
        /// Every offset below it is done.
        floor: i64,
        records: BTreeMap<i64, Record>,
    }

    /// One worker's leases on the records of the partitions it owns.
    #[derive(Debug)]
    pub struct Book {
        max_attempts: u32,
        parts: HashMap<i32, Part>,
        /// Fetched, never delivered: oldest first.
        fresh: VecDeque<(i32, i64)>,
        epochs: u64,
    }

    impl Book {
        pub fn new(max_attempts: u32) -> Self {
            Self {
                max_attempts,
                parts: HashMap::new(),
                fresh: VecDeque::new(),
                epochs: 0,
            }
        }

        /// The partition is now this worker's: tokens of earlier ownerships stay dead.
        pub fn assign(&mut self, partition: i32) {
            self.epochs += 1;
            let epoch = self.epochs;
            self.parts.entry(partition).or_insert(Part {
                epoch,
                floor: 0,
                records: BTreeMap::new(),
            });
        }

        /// The partition moves away: the offset to commit first, if any is new.
        pub fn revoke(&mut self, partition: i32) -> Option<i64> {
            let mark = self.parts.get(&partition).and_then(low_water);
            self.parts.remove(&partition);
            self.fresh.retain(|(p, _)| *p != partition);
            mark
        }

        /// A record the consumer fetched; `false` when it is not taken (partition not owned,
        /// already done, or already held).
        pub fn fetched(&mut self, partition: i32, offset: i64, id: &str) -> bool {
            let Some(part) = self.parts.get_mut(&partition) else {
                return false;
            };
            if offset < part.floor || part.records.contains_key(&offset) {
                return false;
            }
            part.records.insert(
                offset,
                Record {
                    id: id.to_string(),
                    state: State::Waiting,
                    deliveries: 0,
                    failures: 0,
                    last_error: None,
                },
            );
            self.fresh.push_back((partition, offset));
            true
        }

        /// Up to `max` leases until `until`, at `now`: records handed back (released or expired)
        /// first, then fresh ones; records out of attempts are returned to be dead-lettered.
        pub fn lease(&mut self, max: usize, now: u64, until: u64) -> (Vec<Leased>, Vec<Dead>) {
            let (mut out, mut dead) = (Vec::new(), Vec::new());
            let mut ids: Vec<i32> = self.parts.keys().copied().collect();
            ids.sort_unstable();
            for p in ids {
                let part = self.parts.get_mut(&p).expect("listed");
                for (off, r) in part.records.iter_mut() {
                    if out.len() >= max {
                        break;
                    }
                    if matches!(r.state, State::Leased(d) if d <= now) {
                        r.failures += 1;
                        r.last_error = Some(format!(
                            "lease expired without ack or release (delivery {})",
                            r.deliveries
                        ));
                        r.state = State::Waiting;
                    }
                    if r.state != State::Waiting || r.deliveries == 0 {
                        continue;
                    }
                    if r.failures >= self.max_attempts {
                        r.state = State::Done;
                        dead.push(dead_of(p, *off, r));
                        continue;
                    }
                    out.push(deliver(p, *off, part.epoch, r, until));
                }
            }
            while out.len() < max {
                let Some((p, off)) = self.fresh.pop_front() else {
                    break;
                };
                let Some(part) = self.parts.get_mut(&p) else {
                    continue;
                };
                if let Some(r) = part.records.get_mut(&off) {
                    out.push(deliver(p, off, part.epoch, r, until));
                }
            }
            (out, dead)
        }

        fn held(&mut self, t: Token) -> Option<&mut Record> {
            let part = self.parts.get_mut(&t.partition)?;
            if part.epoch != t.epoch {
                return None;
            }
            let r = part.records.get_mut(&t.offset)?;
            (r.deliveries == t.delivery && matches!(r.state, State::Leased(_))).then_some(r)
        }

        /// Pushes a live lease to `until`; `false` when it is not held or has run out.
        pub fn extend(&mut self, t: Token, now: u64, until: u64) -> bool {
            match self.held(t) {
                Some(r) if matches!(r.state, State::Leased(d) if d > now) => {
                    r.state = State::Leased(until);
                    true
                }
                _ => false,
            }
        }

        /// Marks the record done (a lease of the current ownership, held or not: the work is
        /// written). Returns the partition's new commit mark when it moved.
        pub fn ack(&mut self, t: Token) -> Option<i64> {
            let part = self.parts.get_mut(&t.partition)?;
            if part.epoch != t.epoch {
                return None;
            }
            if let Some(r) = part.records.get_mut(&t.offset) {
                r.state = State::Done;
            }
            let mark = low_water(part)?;
            part.records.retain(|off, _| *off >= mark);
            part.floor = part.floor.max(mark);
            Some(mark)
        }

        /// Hands a held lease back; with an error it is a failed attempt. Returns the record to
        /// dead-letter when it is out of attempts.
        pub fn release(&mut self, t: Token, error: Option<&str>) -> Option<Dead> {
            let max = self.max_attempts;
            let r = self.held(t)?;
            r.state = State::Waiting;
            if let Some(e) = error {
                r.failures += 1;
                r.last_error = Some(e.split_whitespace().collect::<Vec<_>>().join(" "));
            }
            (r.failures >= max).then(|| {
                r.state = State::Done;
                dead_of(t.partition, t.offset, r)
            })
        }

        /// Dead-letters a held lease now; `None` when it is not held.
        pub fn dead_letter(&mut self, t: Token, reason: &str) -> Option<Dead> {
            let r = self.held(t)?;
            r.state = State::Done;
            r.last_error = Some(reason.split_whitespace().collect::<Vec<_>>().join(" "));
            Some(dead_of(t.partition, t.offset, r))
        }
    }

    fn deliver(p: i32, off: i64, epoch: u64, r: &mut Record, until: u64) -> Leased {
        r.deliveries += 1;
        r.state = State::Leased(until);
        Leased {
            token: Token {
                partition: p,
                offset: off,
                epoch,
                delivery: r.deliveries,
            },
            id: r.id.clone(),
            delivery_count: r.deliveries,
        }
    }

    fn dead_of(p: i32, off: i64, r: &Record) -> Dead {
        Dead {
            partition: p,
            offset: off,
            id: r.id.clone(),
            reason: r.last_error.clone().unwrap_or_default(),
            delivery_count: r.deliveries,
        }
    }

    /// The first offset of the partition not done yet, when records at its start are done.
    fn low_water(part: &Part) -> Option<i64> {
        let mut mark = None;
        for (off, r) in &part.records {
            if r.state != State::Done {
                break;
            }
            mark = Some(off + 1);
        }
        mark
    }
}

use book::{Book, Token};

const PARTS: i32 = 3;
const MAX: usize = 4;

#[derive(Debug, Clone)]
enum Op {
    /// The next record of a partition arrives from the consumer.
    Fetch(i32),
    Lease(usize),
    /// Extend the `n`th lease handed out (mod their count), stale ones included.
    Extend(usize),
    Ack(usize),
    Release(usize, bool),
    DeadLetter(usize),
    /// The clock jumps past every lease's deadline.
    Expire,
    Revoke(i32),
    Assign(i32),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..PARTS).prop_map(Op::Fetch),
        3 => (1..=MAX).prop_map(Op::Lease),
        2 => any::<usize>().prop_map(Op::Extend),
        3 => any::<usize>().prop_map(Op::Ack),
        2 => (any::<usize>(), any::<bool>()).prop_map(|(n, e)| Op::Release(n, e)),
        1 => any::<usize>().prop_map(Op::DeadLetter),
        1 => Just(Op::Expire),
        1 => (0..PARTS).prop_map(Op::Revoke),
        1 => (0..PARTS).prop_map(Op::Assign),
    ]
}

/// What the model knows of one record of the topic.
#[derive(Debug, Clone, Default)]
struct Truth {
    /// Acked or dead-lettered, ever: its output is written or it was given up on.
    finished: bool,
    /// The same, during this ownership of its partition (a new owner starts from the committed
    /// offset and may deliver records finished beyond it again: their done markers say so).
    finished_now: bool,
    deliveries_this_ownership: u32,
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn kafka_lease_bookkeeping_keeps_its_promises(
        max_attempts in 1u32..4,
        ops in proptest::collection::vec(op(), 1..120),
    ) {
        let mut book = Book::new(max_attempts);
        for p in 0..PARTS {
            book.assign(p);
        }
        let mut owned = [true; PARTS as usize];
        // Per partition: the topic's records (appended by fetches) and the committed offset.
        let mut topic: Vec<Vec<Truth>> = vec![Vec::new(); PARTS as usize];
        let mut committed = [0i64; PARTS as usize];
        // Where the consumer reads next (after an assignment: from the committed offset).
        let mut position = [0i64; PARTS as usize];
        // Every lease handed out, with whether its partition was revoked since.
        let mut leases: Vec<(Token, bool)> = Vec::new();
        let mut now = 0u64;
        let visibility = 1_000;
        let finish = |topic: &mut Vec<Vec<Truth>>, p: i32, off: i64| {
            let r = &mut topic[p as usize][off as usize];
            r.finished = true;
            r.finished_now = true;
        };
        for op in ops {
            now += 1;
            match op {
                Op::Fetch(p) => {
                    let i = p as usize;
                    if !owned[i] {
                        continue;
                    }
                    let off = position[i];
                    if off as usize == topic[i].len() {
                        topic[i].push(Truth::default());
                    }
                    // Each record at or past the commit mark is fetched once per ownership.
                    let id = format!("{p}@{off}");
                    prop_assert!(book.fetched(p, off, &id), "record {} not taken", id);
                    position[i] += 1;
                }
                Op::Lease(max) => {
                    let (got, dead) = book.lease(max, now, now + visibility);
                    prop_assert!(got.len() <= max);
                    for l in &got {
                        let t = l.token;
                        let truth = &mut topic[t.partition as usize][t.offset as usize];
                        prop_assert!(!truth.finished_now, "a finished record is delivered again");
                        truth.deliveries_this_ownership += 1;
                        prop_assert_eq!(l.delivery_count, truth.deliveries_this_ownership);
                        prop_assert_eq!(&l.id, &format!("{}@{}", t.partition, t.offset));
                        // Nobody else holds it: every older lease of this record is stale.
                        for (old, _) in leases.iter().filter(|(o, _)| o.partition == t.partition && o.offset == t.offset) {
                            prop_assert!(!book.extend(*old, now, now + visibility), "two live leases on one record");
                        }
                        leases.push((t, false));
                    }
                    for d in &dead {
                        prop_assert!(d.delivery_count >= 1 && !d.reason.is_empty());
                        finish(&mut topic, d.partition, d.offset);
                    }
                }
                Op::Extend(n) if !leases.is_empty() => {
                    let (t, revoked) = leases[n % leases.len()];
                    let ok = book.extend(t, now, now + visibility);
                    prop_assert!(!(ok && revoked), "a revoked partition's lease was extended");
                }
                Op::Ack(n) if !leases.is_empty() => {
                    let (t, revoked) = leases[n % leases.len()];
                    let mark = book.ack(t);
                    if revoked {
                        prop_assert!(mark.is_none(), "an ack from a revoked ownership commits");
                    } else {
                        finish(&mut topic, t.partition, t.offset);
                    }
                    if let Some(m) = mark {
                        committed[t.partition as usize] = committed[t.partition as usize].max(m);
                    }
                }
                Op::Release(n, error) if !leases.is_empty() => {
                    let (t, revoked) = leases[n % leases.len()];
                    let dead = book.release(t, error.then_some("failed\nhere"));
                    if let Some(d) = dead {
                        prop_assert!(!revoked);
                        prop_assert_eq!(d.reason.as_str(), "failed here");
                        finish(&mut topic, d.partition, d.offset);
                    }
                }
                Op::DeadLetter(n) if !leases.is_empty() => {
                    let (t, revoked) = leases[n % leases.len()];
                    if let Some(d) = book.dead_letter(t, "poison") {
                        prop_assert!(!revoked, "a revoked partition's lease was dead-lettered");
                        finish(&mut topic, d.partition, d.offset);
                    }
                }
                Op::Expire => now += 10 * visibility,
                Op::Revoke(p) if owned[p as usize] => {
                    let i = p as usize;
                    if let Some(m) = book.revoke(p) {
                        committed[i] = committed[i].max(m);
                    }
                    owned[i] = false;
                    for l in leases.iter_mut().filter(|(t, _)| t.partition == p) {
                        l.1 = true;
                    }
                }
                Op::Assign(p) if !owned[p as usize] => {
                    let i = p as usize;
                    book.assign(p);
                    owned[i] = true;
                    // The consumer resumes from the committed offset; delivery counts restart.
                    position[i] = committed[i];
                    for r in &mut topic[i] {
                        r.deliveries_this_ownership = 0;
                        r.finished_now = false;
                    }
                }
                _ => {}
            }
            // The committed offset never passes a record that is not finished.
            for (i, records) in topic.iter().enumerate() {
                for (off, r) in records.iter().enumerate().take(committed[i] as usize) {
                    prop_assert!(r.finished, "partition {} committed past unfinished offset {}", i, off);
                }
            }
        }
        // Every lease is handed back (released cleanly); every fetched, unfinished record of an
        // owned partition is then delivered by one lease call for everything.
        for (t, _) in &leases {
            book.release(*t, None);
        }
        let (got, dead) = book.lease(usize::MAX, now, now + visibility);
        for d in &dead {
            finish(&mut topic, d.partition, d.offset);
        }
        let mut delivered: Vec<(i32, i64)> = got.iter().map(|l| (l.token.partition, l.token.offset)).collect();
        delivered.sort_unstable();
        let mut want = Vec::new();
        for p in 0..PARTS {
            let i = p as usize;
            if !owned[i] {
                continue;
            }
            for off in committed[i]..position[i] {
                if !topic[i][off as usize].finished_now {
                    want.push((p, off));
                }
            }
        }
        prop_assert_eq!(delivered, want, "every unfinished record is delivered again");
    }
}

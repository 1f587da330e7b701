//! One owned partition's records, with no I/O: the items it holds by offset, the low-water mark
//! (the contiguous run of done offsets that may be committed) and the offset-gap guard (holes the
//! broker skipped, never committed across until read back).

use std::collections::BTreeMap;
use std::time::SystemTime;

/// Where one record stands in this worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ItemState {
    /// Not leased: fresh (never delivered), released or expired.
    Waiting,
    /// Leased until `deadline`.
    Leased { deadline: SystemTime },
    /// Out of attempts, held until `deadline` while it is produced to the dead-letter topic (no
    /// lease holds it; if the production fails the hold runs out and it is tried again).
    Burying { deadline: SystemTime },
    /// Acked or dead-lettered: the low-water mark may pass it.
    Acked,
}

/// One record of an owned partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Item {
    pub(super) id: String,
    pub(super) body: Vec<u8>,
    pub(super) state: ItemState,
    pub(super) deliveries: u32,
    pub(super) failures: u32,
    pub(super) last_error: Option<String>,
}

impl Item {
    /// A record as fetched: not leased yet.
    pub(super) fn fetched(id: String, body: Vec<u8>) -> Self {
        Item {
            id,
            body,
            state: ItemState::Waiting,
            deliveries: 0,
            failures: 0,
            last_error: None,
        }
    }
}

/// One owned partition.
#[derive(Debug, Default)]
pub(super) struct Part {
    /// Bumped when the partition is revoked: old tokens stop working.
    pub(super) epoch: u64,
    /// Every offset below this is done (the low-water mark): a record fetched again below it is
    /// not delivered again.
    pub(super) floor: i64,
    /// The offset this ownership began at (the committed offset then): no commit of this ownership
    /// goes below it.
    pub(super) start: i64,
    /// The offset the next fetched record must have (None until the first record, when the
    /// partition had no committed offset to start from).
    next: Option<i64>,
    /// Offsets the broker skipped (start → end), being read back: never committed across.
    pub(super) holes: BTreeMap<i64, i64>,
    /// Offsets read back and found to hold no record (start → end): transaction markers, records
    /// removed by compaction or retention. The low-water mark passes them.
    absent: BTreeMap<i64, i64>,
    /// Records of this partition the worker holds, by offset (acked ones until the low-water mark
    /// passes them).
    pub(super) items: BTreeMap<i64, Item>,
}

/// Where a fetched record stands against what its partition expected.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Arrival {
    /// The record at the expected offset (or the first of a partition without a committed offset).
    Next,
    /// At or below an offset fetched before (the consumer fetched again from earlier).
    Again,
    /// Beyond the expected offset: the offsets from `start` to `end` (exclusive) were skipped.
    Skipped { start: i64, end: i64 },
}

impl Part {
    /// A partition just assigned, starting at its committed offset (`None`: no committed offset,
    /// so it starts wherever the log does).
    pub(super) fn assigned(epoch: u64, start: Option<i64>) -> Self {
        Part {
            epoch,
            floor: start.unwrap_or(0),
            start: start.unwrap_or(0),
            next: start,
            ..Part::default()
        }
    }

    /// Notes a fetched record's offset against the one expected. A skip is recorded as a hole.
    pub(super) fn arrive(&mut self, off: i64) -> Arrival {
        match self.next {
            None => {
                self.floor = self.floor.max(off);
                self.next = Some(off + 1);
                Arrival::Next
            }
            Some(n) if off < n => Arrival::Again,
            Some(n) if off == n => {
                self.next = Some(n + 1);
                Arrival::Next
            }
            Some(n) => {
                self.next = Some(off + 1);
                self.holes.insert(n, off);
                Arrival::Skipped { start: n, end: off }
            }
        }
    }

    /// The next offset to commit: past every offset from the floor on that was received and acked
    /// or read back as holding nothing (None if that is still the floor). A hole stops it.
    pub(super) fn low_water(&self) -> Option<i64> {
        let mut at = self.floor;
        loop {
            if let Some((_, &end)) = self.absent.range(..=at).next_back() {
                if end > at {
                    at = end;
                    continue;
                }
            }
            match self.items.get(&at) {
                Some(Item {
                    state: ItemState::Acked,
                    ..
                }) => at += 1,
                _ => break,
            }
        }
        (at > self.floor).then_some(at)
    }

    /// Moves the floor to `next` (from [`Part::low_water`]), forgetting what lies below it.
    pub(super) fn advance(&mut self, next: i64) {
        self.items.retain(|o, _| *o >= next);
        self.absent.retain(|_, end| *end > next);
        self.floor = self.floor.max(next);
    }

    /// Takes what reading a hole back found: its records (offset order) become items to lease,
    /// unless fetched meanwhile; the rest of the hole holds nothing. Returns the offsets added.
    pub(super) fn fill(&mut self, start: i64, end: i64, found: Vec<(i64, Item)>) -> Vec<i64> {
        self.holes.remove(&start);
        let mut added = Vec::new();
        let mut at = start;
        for (off, item) in found {
            if off < at || off >= end {
                continue;
            }
            if off > at {
                self.absent.insert(at, off);
            }
            at = off + 1;
            if off >= self.floor {
                if let std::collections::btree_map::Entry::Vacant(slot) = self.items.entry(off) {
                    slot.insert(item);
                    added.push(off);
                }
            }
        }
        if end > at {
            self.absent.insert(at, end);
        }
        added
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fetches `off` into `part` as the poller does; returns what the guard made of it.
    fn fetch(part: &mut Part, off: i64) -> Arrival {
        let arrival = part.arrive(off);
        if off >= part.floor {
            part.items
                .entry(off)
                .or_insert_with(|| Item::fetched(format!("r{off}"), Vec::new()));
        }
        arrival
    }

    fn ack(part: &mut Part, off: i64) -> Option<i64> {
        part.items.get_mut(&off).unwrap().state = ItemState::Acked;
        let next = part.low_water()?;
        part.advance(next);
        Some(next)
    }

    #[test]
    fn a_skipped_offset_is_never_committed_across() {
        // Assigned at committed offset 10; the broker answers with 10, then 13 (11 and 12 skipped).
        let mut part = Part::assigned(1, Some(10));
        assert_eq!(fetch(&mut part, 10), Arrival::Next);
        assert_eq!(
            fetch(&mut part, 13),
            Arrival::Skipped { start: 11, end: 13 }
        );
        assert_eq!(fetch(&mut part, 14), Arrival::Next);
        assert_eq!(ack(&mut part, 13), None, "13 is not contiguous with 10");
        assert_eq!(ack(&mut part, 14), None);
        assert_eq!(
            ack(&mut part, 10),
            Some(11),
            "the hole at 11 stops the mark"
        );
        assert_eq!(part.holes.get(&11), Some(&13));
        // Read back: 11 holds a record the consumer never got, 12 holds nothing (a marker).
        let added = part.fill(11, 13, vec![(11, Item::fetched("r11".into(), Vec::new()))]);
        assert_eq!(added, vec![11]);
        assert!(part.holes.is_empty());
        assert_eq!(part.low_water(), None, "11 is not acked yet");
        assert_eq!(
            ack(&mut part, 11),
            Some(15),
            "past 11, the empty 12, 13 and 14"
        );
    }

    #[test]
    fn a_gap_at_the_first_record_after_an_assignment_is_caught() {
        // The partition was committed at 7, inside a batch; the broker answers with the next batch.
        let mut part = Part::assigned(3, Some(7));
        assert_eq!(fetch(&mut part, 10), Arrival::Skipped { start: 7, end: 10 });
        assert_eq!(ack(&mut part, 10), None);
        // Read back finds all three: delivered, and the mark waits for them.
        let found = (7..10)
            .map(|o| (o, Item::fetched(format!("r{o}"), Vec::new())))
            .collect();
        assert_eq!(part.fill(7, 10, found), vec![7, 8, 9]);
        assert_eq!(ack(&mut part, 8), None);
        assert_eq!(ack(&mut part, 7), Some(9));
        assert_eq!(ack(&mut part, 9), Some(11));
    }

    #[test]
    fn records_fetched_again_and_a_start_without_a_commit_are_not_gaps() {
        // No committed offset: the first record (the log's start) is where the partition begins.
        let mut part = Part::assigned(1, None);
        assert_eq!(fetch(&mut part, 5), Arrival::Next);
        assert_eq!(fetch(&mut part, 6), Arrival::Next);
        // The consumer fetches again from earlier (a reset): nothing new, no hole.
        assert_eq!(fetch(&mut part, 5), Arrival::Again);
        assert!(part.holes.is_empty());
        assert_eq!(ack(&mut part, 5), Some(6));
        assert_eq!(ack(&mut part, 6), Some(7));
        // A hole read back as holding nothing (transaction markers) is passed.
        assert_eq!(fetch(&mut part, 9), Arrival::Skipped { start: 7, end: 9 });
        assert_eq!(ack(&mut part, 9), None);
        assert!(part.fill(7, 9, Vec::new()).is_empty());
        assert_eq!(part.low_water(), Some(10));
    }
}

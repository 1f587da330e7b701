//! The quote state of a CSV file with newlines in quoted fields, decided from nearby bytes only:
//! the [`Speculator`], and the sync points where its decision sets the state for every reader.
//!
//! **Why sync points.** Whether a byte is inside quotes follows from counting the quotes before
//! it, and no bytes after it can prove it: any window reads the same after a prefix with one more
//! quote. The speculation assumes valid RFC 4180 and a record shorter than the window; on a file
//! that breaks either (a stray quote, a quoted field over `max_line_bytes`) a guess at a range's
//! start and the count from the file's start disagree, and a file read in ranges gave records
//! that reading it whole did not (fuzz finding 6). So the speculation is part of the framing
//! itself, for every reader alike: at each *sync point* — the bytes `k * every - 1` for `k >= 1`,
//! `every` being `max_line_bytes` — the state is what the speculation there decides (left as
//! counted when it is [`Speculation::Ambiguous`]), and `"` toggles it in between. A whole-file
//! read and a range's read then agree by construction, for any bytes. On valid CSV whose records
//! fit `max_line_bytes` the speculation decides what counting does, so nothing changes there.
//!
//! A range starting at `start` needs the state before byte `start - 1`: the decision at the last
//! sync point at or before it and the quotes in between ([`quoted_before`]); sync points sit so
//! that ranges cut at multiples of `max_line_bytes` start exactly on one.

/// The RFC 4180 states of one interpretation of a CSV byte stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Csv {
    FieldStart,
    Unquoted,
    Quoted,
    /// Just after a `"` inside a quoted field: the closing quote, or the first of `""`.
    QuoteInQuoted,
    /// A `\r` after a closing quote: only `\n` may follow.
    CrAfterQuote,
    Invalid,
}

impl Csv {
    fn step(self, b: u8, delim: u8) -> Self {
        use Csv::*;
        match self {
            FieldStart | Unquoted if b == b'\n' || b == delim => FieldStart,
            FieldStart if b == b'"' => Quoted,
            FieldStart | Unquoted if b == b'"' => Invalid,
            FieldStart | Unquoted => Unquoted,
            Quoted if b == b'"' => QuoteInQuoted,
            Quoted => Quoted,
            QuoteInQuoted if b == b'"' => Quoted,
            QuoteInQuoted if b == b'\n' || b == delim => FieldStart,
            QuoteInQuoted if b == b'\r' => CrAfterQuote,
            CrAfterQuote if b == b'\n' => FieldStart,
            QuoteInQuoted | CrAfterQuote | Invalid => Invalid,
        }
    }
}

/// What [`Speculator`] concluded about a CSV byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Speculation {
    /// The first byte of the window is inside a quoted field (`true`) or not (`false`).
    Decided(bool),
    /// Both readings are valid CSV with plausible records: the state stays as counted.
    Ambiguous,
}

/// Decides whether a byte in the middle of a CSV file is inside a quoted field, from the bytes
/// that follow it only (after Ge et al., "Speculative Distributed CSV Data Parsing for Big Data
/// Analytics", SIGMOD 2019).
///
/// Both readings are run side by side from the window's first byte: "outside quotes" (starting at
/// a field start, the most permissive unquoted state) and "inside quotes". RFC 4180 forbids a `"`
/// inside an unquoted field and anything but `"`, the delimiter or a line end after a closing
/// quote, so one reading usually dies within a few bytes of the first quote; the survivor is the
/// answer. At the end of the file the reading left inside quotes dies. If both survive `limit`
/// bytes (the longest plausible record, `max_line_bytes`), a reading whose current record has not
/// ended within them is dropped, so quote-free stretches decide too. What is still open then is
/// [`Speculation::Ambiguous`]. It decides within `limit` bytes or at the end of the file.
///
/// The answer is right on valid CSV whose records fit `limit`; elsewhere it is a guess, which is
/// why it is applied at sync points ([`crate::speculate`]) by every reader alike.
#[derive(Debug, Clone)]
pub struct Speculator {
    delim: u8,
    limit: usize,
    seen: usize,
    outside: Csv,
    inside: Csv,
    outside_ended: bool,
    inside_ended: bool,
}

impl Speculator {
    /// A speculator for `delim`, deciding within `limit` bytes.
    pub fn new(delim: u8, limit: usize) -> Self {
        Self {
            delim,
            limit: limit.max(1),
            seen: 0,
            outside: Csv::FieldStart,
            inside: Csv::Quoted,
            outside_ended: false,
            inside_ended: false,
        }
    }

    /// Bytes seen so far.
    pub fn seen(&self) -> usize {
        self.seen
    }

    /// Pushes the next bytes; `Some` once decided (within them or at the limit).
    pub fn push(&mut self, bytes: &[u8]) -> Option<Speculation> {
        for &b in bytes {
            self.outside = self.outside.step(b, self.delim);
            self.inside = self.inside.step(b, self.delim);
            match (self.outside == Csv::Invalid, self.inside == Csv::Invalid) {
                (true, true) => return Some(Speculation::Ambiguous),
                (true, false) => return Some(Speculation::Decided(true)),
                (false, true) => return Some(Speculation::Decided(false)),
                (false, false) => {}
            }
            if b == b'\n' {
                self.outside_ended |= self.outside == Csv::FieldStart;
                self.inside_ended |= self.inside == Csv::FieldStart;
            }
            self.seen += 1;
            if self.seen >= self.limit {
                return Some(match (self.outside_ended, self.inside_ended) {
                    (true, false) => Speculation::Decided(false),
                    (false, true) => Speculation::Decided(true),
                    _ => Speculation::Ambiguous,
                });
            }
        }
        None
    }

    /// The end of the file came first: the reading still inside quotes is the wrong one.
    pub fn at_eof(&self) -> Speculation {
        match (self.outside, self.inside) {
            (Csv::Quoted, Csv::Quoted) => Speculation::Ambiguous,
            (Csv::Quoted, _) => Speculation::Decided(true),
            _ => Speculation::Decided(false),
        }
    }
}

/// The distance between sync points for records of at most `max_record_bytes`.
pub fn sync_every(max_record_bytes: usize) -> u64 {
    (max_record_bytes as u64).max(1)
}

/// Whether the byte at `pos` is a sync point (`pos = k * every - 1`, `k >= 1`, `pos > 0`).
pub fn is_sync(pos: u64, every: u64) -> bool {
    pos > 0 && pos.saturating_add(1).is_multiple_of(every)
}

/// The first sync point after `pos`.
pub fn next_sync(pos: u64, every: u64) -> u64 {
    // At least `every - 1 >= 0` and past `pos`, so never byte 0.
    (pos.saturating_add(1) / every + 1).saturating_mul(every) - 1
}

/// The last sync point at or before `pos`, if any.
pub fn sync_at_or_before(pos: u64, every: u64) -> Option<u64> {
    let p = (pos.saturating_add(1) / every * every).checked_sub(1)?;
    (p > 0).then_some(p)
}

/// The sync point before the sync point `p`, if any.
pub fn sync_before(p: u64, every: u64) -> Option<u64> {
    p.checked_sub(every).filter(|&q| q > 0)
}

/// The speculation at byte `at` of a whole file held in `data`.
pub fn speculate_at(data: &[u8], at: u64, delim: u8, max_record_bytes: usize) -> Speculation {
    let from = usize::try_from(at).unwrap_or(usize::MAX).min(data.len());
    let mut spec = Speculator::new(delim, max_record_bytes);
    spec.push(&data[from..]).unwrap_or_else(|| spec.at_eof())
}

/// Quotes in `data[from..until]`.
fn quotes(data: &[u8], from: u64, until: u64) -> u64 {
    let at = |p: u64| usize::try_from(p).unwrap_or(usize::MAX).min(data.len());
    let (from, until) = (at(from), at(until));
    if from >= until {
        return 0;
    }
    memchr::memchr_iter(b'"', &data[from..until]).count() as u64
}

/// Whether byte `at` of a whole file held in `data` is read inside quotes (the state before it),
/// by the rule every quote-aware reader follows: the decision at the last sync point at or before
/// `at` that is decided (or the file start, outside quotes), then `"` toggling.
pub fn quoted_before(data: &[u8], at: u64, delim: u8, max_record_bytes: usize) -> bool {
    let every = sync_every(max_record_bytes);
    let mut sync = sync_at_or_before(at, every);
    while let Some(p) = sync {
        if let Speculation::Decided(q) = speculate_at(data, p, delim, max_record_bytes) {
            return q ^ (quotes(data, p, at) % 2 == 1);
        }
        sync = sync_before(p, every);
    }
    quotes(data, 0, at) % 2 == 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn speculate(data: &[u8], at: usize, limit: usize) -> Speculation {
        speculate_at(data, at as u64, b',', limit)
    }

    /// Counting quotes from the start: the truth for valid CSV.
    fn counted(data: &[u8], at: usize) -> bool {
        memchr::memchr_iter(b'"', &data[..at]).count() % 2 == 1
    }

    #[test]
    fn speculation_agrees_with_counting_quotes_from_the_start() {
        let data: &[u8] = b"id,text\n1,\"hello, world\"\n2,\"two\nlines \"\"quoted\"\"\"\n3,plain\n4,\"\"\n5,\"a\r\nb\"\r\n";
        for at in 0..data.len() {
            match speculate(data, at, 1 << 20) {
                Speculation::Decided(q) => {
                    assert_eq!(q, counted(data, at), "at {at}: {:?}", &data[at..])
                }
                Speculation::Ambiguous => {}
            }
        }
        // Inside "hello, world" both readings cannot stay valid for long.
        assert_eq!(speculate(data, 12, 1 << 20), Speculation::Decided(true));
        // So the sync rule reads this valid file as counting does, at any spacing that its
        // records fit.
        for max in [20, 27, 64, 1 << 20] {
            for at in 0..=data.len() {
                assert_eq!(
                    quoted_before(data, at as u64, b',', max),
                    counted(data, at),
                    "at {at}, max {max}"
                );
            }
        }
    }

    #[test]
    fn quote_free_stretches_decide_at_the_limit() {
        let data = b"1,2\n3,4\n5,6\n7,8\n";
        assert_eq!(speculate(data, 2, 8), Speculation::Decided(false));
        // Quotes only next to line ends: both readings stay valid, with records that end.
        let amb = b"\"\n\"\n\"\n\"\n";
        assert_eq!(speculate(amb, 1, 4), Speculation::Ambiguous);
        // The end of the file settles it: the outside reading ends inside quotes.
        assert_eq!(speculate(amb, 1, 1 << 20), Speculation::Decided(true));
    }

    #[test]
    fn sync_points_sit_before_multiples_of_the_spacing() {
        let points: Vec<u64> = (0..20).filter(|&p| is_sync(p, 5)).collect();
        assert_eq!(points, vec![4, 9, 14, 19]);
        for every in [1, 2, 5, 7] {
            for pos in 0..40 {
                let next = next_sync(pos, every);
                assert!(next > pos && is_sync(next, every), "{pos} {every}");
                assert!((pos + 1..next).all(|p| !is_sync(p, every)));
                match sync_at_or_before(pos, every) {
                    Some(p) => {
                        assert!(p <= pos && is_sync(p, every));
                        assert!((p + 1..=pos).all(|q| !is_sync(q, every)));
                        if let Some(b) = sync_before(p, every) {
                            assert!(is_sync(b, every) && (b + 1..p).all(|q| !is_sync(q, every)));
                        }
                    }
                    None => assert!((0..=pos).all(|q| !is_sync(q, every))),
                }
            }
        }
    }

    #[test]
    fn quoted_before_follows_the_rule_byte_by_byte() {
        // The rule stepped forward over the whole file, against the backward search.
        let mut seed = 0x9E3779B97F4A7C15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..200 {
            let len = (next() % 60) as usize;
            let data: Vec<u8> = (0..len)
                .map(|_| b"\n\",\raabc"[(next() % 8) as usize])
                .collect();
            for max in [1, 2, 3, 5, 8, 100] {
                let every = sync_every(max);
                let mut state = false;
                for at in 0..=data.len() as u64 {
                    if is_sync(at, every) {
                        if let Speculation::Decided(q) = speculate_at(&data, at, b',', max) {
                            state = q;
                        }
                    }
                    assert_eq!(
                        quoted_before(&data, at, b',', max),
                        state,
                        "{data:?} {max} {at}"
                    );
                    if data.get(at as usize) == Some(&b'"') {
                        state = !state;
                    }
                }
            }
        }
    }
}

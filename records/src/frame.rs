//! Cutting a byte range of a line-oriented file into records: the split rule, CRLF, the BOM,
//! records over `max_line_bytes`, and (for CSV) newlines inside quoted fields.
//!
//! **The split rule.** A range `[start, end)` owns exactly the records whose first byte lies in it.
//! Record starts are offset 0 and every offset right after a record terminator (`\n`; for
//! quote-aware CSV, a `\n` outside quotes). So a range that starts at `start > 0` begins reading
//! at `start - 1` and skips through the first terminator at or after `start - 1` (a record that
//! starts exactly at `start` — the byte before it is `\n` — belongs to this range, not to the one
//! before); it then emits records while their start is `< end`, reading past `end` to finish the
//! last one. Ranges that partition a file therefore see every record exactly once.
//!
//! [`Framer`] is that rule as a push parser (feed it chunks in order, it emits [`Frame`]s), with no
//! I/O, so the fuzzers and the exhaustive split tests drive it directly; [`Speculator`] decides
//! whether a CSV range starts inside quotes.

/// A UTF-8 byte order mark.
const BOM: &[u8] = b"\xEF\xBB\xBF";

/// One record cut from the bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A record's bytes, without its terminator, a `\r` before it, or a BOM at offset 0.
    Record {
        /// Offset of the record's first byte in the file.
        offset: u64,
        /// Its bytes.
        bytes: Vec<u8>,
        /// Quote-aware framing only: the file ended inside a quoted field.
        open_quote: bool,
    },
    /// A record over the limit: skipped, never held. `len` counts its bytes without the terminator.
    TooLong {
        /// Offset of the record's first byte.
        offset: u64,
        /// Its length.
        len: u64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Looking for the first record start at or after the range start.
    Skip,
    /// At a record start (`pos`).
    AtStart,
    /// Inside the record that started at `cur_start`.
    InRecord,
    /// Every record of the range has been emitted.
    Done,
}

/// The split rule as a push parser. Feed it the file's bytes from [`Framer::position`] on, in
/// order, until [`Framer::is_done`]; call [`Framer::finish`] at the end of the file.
#[derive(Debug)]
pub struct Framer {
    end: u64,
    pos: u64,
    quotes: bool,
    in_quotes: bool,
    max: usize,
    state: State,
    cur_start: u64,
    cur_len: u64,
    buf: Vec<u8>,
    too_long: bool,
}

impl Framer {
    /// A framer for the records starting in `[start, end)`. `quotes`: `"` toggles a quoted state
    /// in which `\n` does not end a record (CSV with newlines in quoted fields); `in_quotes`: whether
    /// the byte at `start - 1` is inside quotes (see [`Speculator`]; ignored when `start` is 0).
    /// `max_record_bytes`: longer records become [`Frame::TooLong`].
    pub fn new(
        start: u64,
        end: u64,
        quotes: bool,
        in_quotes: bool,
        max_record_bytes: usize,
    ) -> Self {
        let (pos, state) = if start == 0 {
            (0, State::AtStart)
        } else {
            (start - 1, State::Skip)
        };
        Self {
            end,
            pos,
            quotes,
            in_quotes: quotes && start > 0 && in_quotes,
            max: max_record_bytes,
            state,
            cur_start: 0,
            cur_len: 0,
            buf: Vec::new(),
            too_long: false,
        }
    }

    /// The offset of the next byte the framer expects (at first, the range start or the byte
    /// before it).
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// Whether every record of the range has been emitted (stop reading).
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Feeds the next bytes (the ones at [`Framer::position`]); complete records go to `out`.
    pub fn feed(&mut self, mut chunk: &[u8], out: &mut Vec<Frame>) {
        while !chunk.is_empty() {
            match self.state {
                State::Done => return,
                State::Skip => match self.find_end(chunk) {
                    Some(i) => {
                        chunk = self.advance(chunk, i + 1);
                        self.state = State::AtStart;
                    }
                    None => chunk = self.advance(chunk, chunk.len()),
                },
                State::AtStart => {
                    if self.pos >= self.end {
                        self.state = State::Done;
                        return;
                    }
                    self.cur_start = self.pos;
                    self.cur_len = 0;
                    self.buf.clear();
                    self.too_long = false;
                    self.state = State::InRecord;
                }
                State::InRecord => match self.find_end(chunk) {
                    Some(i) => {
                        self.append(&chunk[..i]);
                        chunk = self.advance(chunk, i + 1);
                        self.emit(out, false);
                        self.state = State::AtStart;
                    }
                    None => {
                        self.append(chunk);
                        chunk = self.advance(chunk, chunk.len());
                    }
                },
            }
        }
        // A terminator right before `end`, or a skip that ran past it: nothing more starts here.
        if matches!(self.state, State::AtStart | State::Skip) && self.pos >= self.end {
            self.state = State::Done;
        }
    }

    /// The end of the file: a last record without a terminator is emitted.
    pub fn finish(&mut self, out: &mut Vec<Frame>) {
        if self.state == State::InRecord {
            let open = self.in_quotes;
            self.emit(out, open);
        }
        self.state = State::Done;
    }

    fn advance<'a>(&mut self, chunk: &'a [u8], n: usize) -> &'a [u8] {
        self.pos += n as u64;
        &chunk[n..]
    }

    /// Index of the record terminator in `chunk`, updating the quote state over what it passes.
    fn find_end(&mut self, chunk: &[u8]) -> Option<usize> {
        if !self.quotes {
            return memchr::memchr(b'\n', chunk);
        }
        let mut from = 0;
        while let Some(i) = memchr::memchr2(b'"', b'\n', &chunk[from..]) {
            let at = from + i;
            if chunk[at] == b'"' {
                self.in_quotes = !self.in_quotes;
            } else if !self.in_quotes {
                return Some(at);
            }
            from = at + 1;
        }
        None
    }

    fn append(&mut self, seg: &[u8]) {
        self.cur_len += seg.len() as u64;
        if self.too_long {
            return;
        }
        if self.buf.len() + seg.len() > self.max {
            self.too_long = true;
            self.buf = Vec::new();
        } else {
            self.buf.extend_from_slice(seg);
        }
    }

    fn emit(&mut self, out: &mut Vec<Frame>, open_quote: bool) {
        if self.too_long {
            out.push(Frame::TooLong {
                offset: self.cur_start,
                len: self.cur_len,
            });
            return;
        }
        let mut bytes = std::mem::take(&mut self.buf);
        if bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
        if self.cur_start == 0 && bytes.starts_with(BOM) {
            bytes.drain(..BOM.len());
        }
        out.push(Frame::Record {
            offset: self.cur_start,
            bytes,
            open_quote,
        });
    }
}

/// Cuts `data` (a whole file) for the range `[start, end)` in one go: the synchronous path the
/// fuzzers and the split tests use. `in_quotes` as in [`Framer::new`].
pub fn frame_range(
    data: &[u8],
    start: u64,
    end: u64,
    quotes: bool,
    in_quotes: bool,
    max_record_bytes: usize,
) -> Vec<Frame> {
    let mut f = Framer::new(start, end, quotes, in_quotes, max_record_bytes);
    let mut out = Vec::new();
    let from = usize::try_from(f.position())
        .unwrap_or(usize::MAX)
        .min(data.len());
    f.feed(&data[from..], &mut out);
    if !f.is_done() {
        f.finish(&mut out);
    }
    out
}

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

/// What [`Speculator`] concluded about a CSV range start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Speculation {
    /// The first byte of the window is inside a quoted field (`true`) or not (`false`).
    Decided(bool),
    /// Both readings are valid CSV with plausible records: count the quotes from the file start.
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
/// ended within them is dropped (that record would be an error row anyway), so quote-free
/// stretches decide too. What is still open then is [`Speculation::Ambiguous`].
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

/// Whether byte `at` of `data` is inside quotes, by counting quotes from the file start (the
/// reference the speculation must agree with, and its fallback).
pub fn quoted_at(data: &[u8], at: usize) -> bool {
    memchr::memchr_iter(b'"', &data[..at.min(data.len())]).count() % 2 == 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(frames: &[Frame]) -> Vec<(u64, String)> {
        frames
            .iter()
            .map(|f| match f {
                Frame::Record { offset, bytes, .. } => {
                    (*offset, String::from_utf8_lossy(bytes).into_owned())
                }
                Frame::TooLong { offset, len } => (*offset, format!("<too long: {len}>")),
            })
            .collect()
    }

    /// Every split size from 1 byte up: each record exactly once, in order, with its offset.
    fn check_all_splits(data: &[u8], quotes: bool, max: usize) {
        let whole = records(&frame_range(data, 0, data.len() as u64, quotes, false, max));
        for size in 1..=data.len() + 1 {
            let mut got = Vec::new();
            let mut start = 0;
            while start < data.len() {
                let end = (start + size).min(data.len());
                let inq = quotes && start > 0 && quoted_at(data, start - 1);
                got.extend(records(&frame_range(
                    data,
                    start as u64,
                    end as u64,
                    quotes,
                    inq,
                    max,
                )));
                start = end;
            }
            assert_eq!(
                got,
                whole,
                "split size {size} of {:?}",
                String::from_utf8_lossy(data)
            );
        }
    }

    #[test]
    fn lines_are_cut_at_newlines_with_crlf_bom_and_a_last_line_without_newline() {
        let data = b"\xEF\xBB\xBF{\"a\":1}\r\n\n{\"b\":2}\nlast";
        let got = records(&frame_range(data, 0, data.len() as u64, false, false, 100));
        assert_eq!(
            got,
            vec![
                (0, "{\"a\":1}".into()),
                (12, "".into()),
                (13, "{\"b\":2}".into()),
                (21, "last".into())
            ]
        );
    }

    #[test]
    fn a_line_starting_exactly_at_a_boundary_belongs_to_the_range_starting_there() {
        let data = b"aaa\nbbb\nccc\n";
        assert_eq!(
            records(&frame_range(data, 0, 4, false, false, 100)),
            vec![(0, "aaa".into())]
        );
        assert_eq!(
            records(&frame_range(data, 4, 5, false, false, 100)),
            vec![(4, "bbb".into())]
        );
        assert_eq!(records(&frame_range(data, 5, 8, false, false, 100)), vec![]);
        assert_eq!(records(&frame_range(data, 3, 4, false, false, 100)), vec![]);
    }

    #[test]
    fn every_line_exactly_once_for_every_split_size() {
        let cases: [&[u8]; 6] = [
            b"a\nbb\nccc\n\ndddd\r\neeeee",
            b"\n\n\nx\n\n",
            b"\xEF\xBB\xBFone\ntwo\n",
            b"no newline at all",
            b"x",
            b"long line that is over the limit\nshort\nanother long line over it\n",
        ];
        for data in cases {
            check_all_splits(data, false, 1 << 20);
            check_all_splits(data, false, 8);
        }
    }

    #[test]
    fn pseudo_random_files_for_every_split_size() {
        let mut seed = 0x2545F4914F6CDD1Du64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..60 {
            let len = (next() % 90) as usize;
            let data: Vec<u8> = (0..len)
                .map(|_| match next() % 8 {
                    0 => b'\n',
                    1 => b'"',
                    2 => b',',
                    3 => b'\r',
                    _ => b'a' + (next() % 3) as u8,
                })
                .collect();
            check_all_splits(&data, false, 1 << 20);
            check_all_splits(&data, false, 5);
            check_all_splits(&data, true, 1 << 20);
            check_all_splits(&data, true, 5);
        }
    }

    #[test]
    fn quoted_newlines_do_not_end_a_record_even_at_a_boundary() {
        let data = b"h1,h2\n1,\"a\nb\"\n2,\"\n\"\n3,\"x\"\"\ny\"\n";
        let whole = records(&frame_range(data, 0, data.len() as u64, true, false, 100));
        assert_eq!(
            whole,
            vec![
                (0, "h1,h2".into()),
                (6, "1,\"a\nb\"".into()),
                (14, "2,\"\n\"".into()),
                (20, "3,\"x\"\"\ny\"".into())
            ]
        );
        check_all_splits(data, true, 100);
    }

    #[test]
    fn long_records_become_too_long_frames_without_being_held() {
        let data = b"short\nthis one is long\nok\n";
        let got = frame_range(data, 0, data.len() as u64, false, false, 6);
        assert_eq!(
            records(&got),
            vec![
                (0, "short".into()),
                (6, "<too long: 16>".into()),
                (23, "ok".into())
            ]
        );
    }

    fn speculate(data: &[u8], at: usize, limit: usize) -> Speculation {
        let mut s = Speculator::new(b',', limit);
        s.push(&data[at..]).unwrap_or_else(|| s.at_eof())
    }

    #[test]
    fn speculation_agrees_with_counting_quotes_from_the_start() {
        let data: &[u8] = b"id,text\n1,\"hello, world\"\n2,\"two\nlines \"\"quoted\"\"\"\n3,plain\n4,\"\"\n5,\"a\r\nb\"\r\n";
        for at in 0..data.len() {
            match speculate(data, at, 1 << 20) {
                Speculation::Decided(q) => {
                    assert_eq!(q, quoted_at(data, at), "at {at}: {:?}", &data[at..])
                }
                Speculation::Ambiguous => {}
            }
        }
        // Inside "hello, world" both readings cannot stay valid for long.
        assert_eq!(speculate(data, 12, 1 << 20), Speculation::Decided(true));
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
}

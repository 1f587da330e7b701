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
//! For quote-aware CSV, "outside quotes" is the rule of [`crate::speculate`]: `"` toggles the
//! state, and at every sync point the speculation there sets it. A range is given the state
//! before byte `start - 1` ([`crate::speculate::quoted_before`]); the framer applies the sync
//! points it passes, holding the bytes after one (at most `max_record_bytes`) until the
//! speculation decides.
//!
//! [`Framer`] is that rule as a push parser (feed it chunks in order, it emits [`Frame`]s), with no
//! I/O, so the fuzzers and the exhaustive split tests drive it directly.

use crate::speculate::{next_sync, sync_every, Speculation, Speculator};

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

/// How `"` is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quoting {
    /// Every `\n` ends a record (JSONL; CSV with `quoted_newlines = false`).
    Lines,
    /// CSV whose quoted fields may hold newlines, with this field delimiter.
    Csv {
        /// The field delimiter (the speculation needs it).
        delimiter: u8,
    },
}

/// Bytes held after a sync point until the speculation there decides.
#[derive(Debug)]
struct Hold {
    spec: Speculator,
    bytes: Vec<u8>,
}

/// The split rule as a push parser. Feed it the file's bytes from [`Framer::position`] on, in
/// order, until [`Framer::is_done`]; call [`Framer::finish`] at the end of the file.
#[derive(Debug)]
pub struct Framer {
    end: u64,
    pos: u64,
    quoting: Quoting,
    in_quotes: bool,
    max: usize,
    /// Quote-aware framing only: the next sync point (`pos <= next_sync`).
    next_sync: u64,
    hold: Option<Hold>,
    state: State,
    cur_start: u64,
    cur_len: u64,
    buf: Vec<u8>,
    too_long: bool,
}

impl Framer {
    /// A framer for the records starting in `[start, end)`. `in_quotes`: quote-aware framing only,
    /// whether the byte at `start - 1` is read inside quotes
    /// ([`crate::speculate::quoted_before`]; ignored when `start` is 0). `max_record_bytes`:
    /// longer records become [`Frame::TooLong`]; also the spacing of sync points.
    pub fn new(
        start: u64,
        end: u64,
        quoting: Quoting,
        in_quotes: bool,
        max_record_bytes: usize,
    ) -> Self {
        let (pos, state) = if start == 0 {
            (0, State::AtStart)
        } else {
            (start - 1, State::Skip)
        };
        let quotes = quoting != Quoting::Lines;
        Self {
            end,
            pos,
            quoting,
            in_quotes: quotes && start > 0 && in_quotes,
            max: max_record_bytes,
            next_sync: next_sync(pos, sync_every(max_record_bytes)),
            hold: None,
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
        self.pos + self.hold.as_ref().map_or(0, |h| h.bytes.len() as u64)
    }

    /// Whether every record of the range has been emitted (stop reading).
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Feeds the next bytes (the ones at [`Framer::position`]); complete records go to `out`.
    pub fn feed(&mut self, chunk: &[u8], out: &mut Vec<Frame>) {
        match &mut self.hold {
            None => self.run(chunk, out),
            Some(h) => {
                h.bytes.extend_from_slice(chunk);
                if let Some(d) = h.spec.push(chunk) {
                    self.release(d, out);
                }
            }
        }
    }

    /// The end of the file: a sync point still undecided is decided as at the end of the file,
    /// and a last record without a terminator is emitted.
    pub fn finish(&mut self, out: &mut Vec<Frame>) {
        while let Some(h) = &self.hold {
            let d = h.spec.at_eof();
            self.release(d, out);
        }
        if self.state == State::InRecord {
            let open = self.in_quotes;
            self.emit(out, open);
        }
        self.state = State::Done;
    }

    /// The held sync point is decided: apply it and frame the held bytes.
    fn release(&mut self, d: Speculation, out: &mut Vec<Frame>) {
        if let Some(h) = self.hold.take() {
            self.settle(d);
            self.run(&h.bytes, out);
        }
    }

    /// Applies the decision at the sync point `pos`.
    fn settle(&mut self, d: Speculation) {
        if let Speculation::Decided(q) = d {
            self.in_quotes = q;
        }
        self.next_sync = next_sync(self.pos, sync_every(self.max));
    }

    /// Frames `chunk` (at `pos`), stopping at each sync point to decide it, and holding the
    /// rest when the bytes so far do not.
    fn run(&mut self, mut chunk: &[u8], out: &mut Vec<Frame>) {
        let Quoting::Csv { delimiter } = self.quoting else {
            self.step(chunk, out);
            return;
        };
        loop {
            if matches!(self.state, State::AtStart | State::Skip) && self.pos >= self.end {
                self.state = State::Done;
            }
            if chunk.is_empty() || self.state == State::Done {
                return;
            }
            if self.pos == self.next_sync {
                let mut spec = Speculator::new(delimiter, self.max);
                match spec.push(chunk) {
                    Some(d) => self.settle(d),
                    None => {
                        self.hold = Some(Hold {
                            spec,
                            bytes: chunk.to_vec(),
                        });
                        return;
                    }
                }
            }
            let n = usize::try_from(self.next_sync - self.pos)
                .unwrap_or(usize::MAX)
                .min(chunk.len());
            self.step(&chunk[..n], out);
            chunk = &chunk[n..];
        }
    }

    /// The split rule over `chunk` (at `pos`, no sync point inside it).
    fn step(&mut self, mut chunk: &[u8], out: &mut Vec<Frame>) {
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

    fn advance<'a>(&mut self, chunk: &'a [u8], n: usize) -> &'a [u8] {
        self.pos += n as u64;
        &chunk[n..]
    }

    /// Index of the record terminator in `chunk`, updating the quote state over what it passes.
    fn find_end(&mut self, chunk: &[u8]) -> Option<usize> {
        if self.quoting == Quoting::Lines {
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
    quoting: Quoting,
    in_quotes: bool,
    max_record_bytes: usize,
) -> Vec<Frame> {
    let mut f = Framer::new(start, end, quoting, in_quotes, max_record_bytes);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::speculate::quoted_before;

    const LINES: Quoting = Quoting::Lines;
    const CSV: Quoting = Quoting::Csv { delimiter: b',' };

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
    fn check_all_splits(data: &[u8], quoting: Quoting, max: usize) {
        let whole = records(&frame_range(
            data,
            0,
            data.len() as u64,
            quoting,
            false,
            max,
        ));
        for size in 1..=data.len() + 1 {
            let mut got = Vec::new();
            let mut start = 0;
            while start < data.len() {
                let end = (start + size).min(data.len());
                let inq = start > 0 && quoted_before(data, start as u64 - 1, b',', max);
                let (s, e) = (start as u64, end as u64);
                let range = records(&frame_range(data, s, e, quoting, inq, max));
                // Fed in chunks of any size (sync points held across them), the same records.
                for chunk in [1, 3, 7] {
                    let mut f = Framer::new(s, e, quoting, inq, max);
                    let mut out = Vec::new();
                    let mut at = f.position() as usize;
                    while !f.is_done() && at < data.len() {
                        let to = (at + chunk).min(data.len());
                        f.feed(&data[at..to], &mut out);
                        at = to;
                        assert!(f.is_done() || f.position() == at as u64);
                    }
                    if !f.is_done() {
                        f.finish(&mut out);
                    }
                    assert_eq!(records(&out), range, "{s}..{e} in chunks of {chunk}");
                }
                got.extend(range);
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
        let got = records(&frame_range(data, 0, data.len() as u64, LINES, false, 100));
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
            records(&frame_range(data, 0, 4, LINES, false, 100)),
            vec![(0, "aaa".into())]
        );
        assert_eq!(
            records(&frame_range(data, 4, 5, LINES, false, 100)),
            vec![(4, "bbb".into())]
        );
        assert_eq!(records(&frame_range(data, 5, 8, LINES, false, 100)), vec![]);
        assert_eq!(records(&frame_range(data, 3, 4, LINES, false, 100)), vec![]);
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
            check_all_splits(data, LINES, 1 << 20);
            check_all_splits(data, LINES, 8);
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
            check_all_splits(&data, LINES, 1 << 20);
            check_all_splits(&data, LINES, 5);
            check_all_splits(&data, CSV, 1 << 20);
            check_all_splits(&data, CSV, 5);
        }
    }

    #[test]
    fn quoted_newlines_do_not_end_a_record_even_at_a_boundary() {
        let data = b"h1,h2\n1,\"a\nb\"\n2,\"\n\"\n3,\"x\"\"\ny\"\n";
        let whole = records(&frame_range(data, 0, data.len() as u64, CSV, false, 100));
        assert_eq!(
            whole,
            vec![
                (0, "h1,h2".into()),
                (6, "1,\"a\nb\"".into()),
                (14, "2,\"\n\"".into()),
                (20, "3,\"x\"\"\ny\"".into())
            ]
        );
        check_all_splits(data, CSV, 100);
    }

    #[test]
    fn long_records_become_too_long_frames_without_being_held() {
        let data = b"short\nthis one is long\nok\n";
        let got = frame_range(data, 0, data.len() as u64, LINES, false, 6);
        assert_eq!(
            records(&got),
            vec![
                (0, "short".into()),
                (6, "<too long: 16>".into()),
                (23, "ok".into())
            ]
        );
    }
}

//! Reading one split: [`read_split`] opens it and yields its records in file order as a stream.
//! JSONL and CSV go through [`RangedBytes`] (ranged GETs, streamed bodies) and the [`Framer`],
//! holding at most one record (≤ `max_line_bytes`) and one chunk of the body at a time; Parquet
//! through [`crate::parquet_read`]. A [`ReadError`] ends the stream; row errors are records.
//!
//! [`read_bytes`] runs the JSONL/CSV path over a whole file in memory, with no I/O: the entry
//! point for fuzzing and the exhaustive split tests.

use std::collections::VecDeque;

use bytes::Bytes;
use futures::stream::{self, BoxStream, StreamExt};

use crate::decode::{check_plain_type, CsvDecoder, JsonDecoder};
use crate::error::ReadError;
use crate::frame::{frame_range, Frame, Framer, Quoting};
use crate::plan::{ByteSplit, Split};
use crate::record::{Projection, ReadOptions, Record};
use crate::source::{RangedBytes, Source};
use crate::speculate::{
    quoted_before, sync_at_or_before, sync_before, sync_every, Speculation, Speculator,
};

/// A split's records, in file order; a [`ReadError`] is the last item.
pub type RecordStream = BoxStream<'static, Result<Record, ReadError>>;

/// Opens `split` of `source` and streams its records with the fields of `proj`. Fails at once
/// when the file cannot be opened as asked (a missing column, a bad header or footer).
pub async fn read_split(
    source: &Source,
    split: &Split,
    proj: &Projection,
    opts: &ReadOptions,
) -> Result<RecordStream, ReadError> {
    match split {
        Split::Jsonl(b) => {
            let url = source.url_of(&b.key);
            for c in proj.id.iter().chain(&proj.columns) {
                check_plain_type(&url, &c.name, &c.ty)?;
            }
            let framer = Framer::new(b.start, b.end, Quoting::Lines, false, opts.max_line_bytes);
            let src = RangedBytes::new(source, &b.key, b.size, framer.position(), b.end);
            let dec = Decoder::Json(JsonDecoder::new(&b.key, proj, opts.max_line_bytes));
            Ok(ByteReader::new(src, framer, dec, Vec::new()).into_stream())
        }
        Split::Csv(b) => open_csv(source, b, proj, opts).await,
        Split::Parquet(r) => crate::parquet_read::open(source, r, proj, opts).await,
    }
}

enum Decoder {
    Json(JsonDecoder),
    Csv(CsvDecoder),
}

impl Decoder {
    fn decode(&self, f: Frame) -> Option<Record> {
        match self {
            Decoder::Json(d) => d.decode(f),
            Decoder::Csv(d) => d.decode(f),
        }
    }
}

struct ByteReader {
    src: RangedBytes,
    framer: Framer,
    decoder: Decoder,
    /// Bytes already fetched (the CSV speculation's window), fed before `src`.
    pending: VecDeque<Bytes>,
    frames: VecDeque<Frame>,
    finished: bool,
}

impl ByteReader {
    fn new(src: RangedBytes, framer: Framer, decoder: Decoder, pending: Vec<Bytes>) -> Self {
        Self {
            src,
            framer,
            decoder,
            pending: pending.into(),
            frames: VecDeque::new(),
            finished: false,
        }
    }

    async fn next(&mut self) -> Option<Result<Record, ReadError>> {
        loop {
            if let Some(f) = self.frames.pop_front() {
                match self.decoder.decode(f) {
                    Some(r) => return Some(Ok(r)),
                    None => continue,
                }
            }
            if self.finished || self.framer.is_done() {
                return None;
            }
            let chunk = match self.pending.pop_front() {
                Some(b) => Some(b),
                None => match self.src.next().await {
                    Ok(c) => c,
                    Err(e) => {
                        self.finished = true;
                        return Some(Err(e));
                    }
                },
            };
            let mut out = Vec::new();
            match chunk {
                Some(b) => self.framer.feed(&b, &mut out),
                None => {
                    self.framer.finish(&mut out);
                    self.finished = true;
                }
            }
            self.frames.extend(out);
        }
    }

    fn into_stream(self) -> RecordStream {
        stream::unfold(
            self,
            |mut r| async move { r.next().await.map(|item| (item, r)) },
        )
        .boxed()
    }
}

/// The first bytes read for a CSV header; doubled while the header is not complete.
const HEADER_FIRST: u64 = 64 * 1024;

/// The first bytes read to speculate at an earlier sync point (it usually decides within them).
const SPECULATE_FIRST: u64 = 64 * 1024;

/// How a CSV file is framed with these options.
fn csv_quoting(opts: &ReadOptions) -> Quoting {
    if opts.csv.quoted_newlines {
        Quoting::Csv {
            delimiter: opts.csv.delimiter,
        }
    } else {
        Quoting::Lines
    }
}

async fn open_csv(
    source: &Source,
    b: &ByteSplit,
    proj: &Projection,
    opts: &ReadOptions,
) -> Result<RecordStream, ReadError> {
    let url = source.url_of(&b.key);
    let max = opts.max_line_bytes;
    let quoting = csv_quoting(opts);
    let (header_offset, header) = read_header(source, b, quoting, max).await?;
    let dec = CsvDecoder::new(
        &b.key,
        &url,
        proj,
        opts.csv.delimiter,
        max,
        header_offset,
        &header,
    )?;
    let from = b.start.saturating_sub(1);
    let (in_quotes, src, pending) = match quoting {
        Quoting::Csv { delimiter } if b.start > 0 => {
            quote_state(source, b, from, delimiter, max).await?
        }
        _ => (
            false,
            RangedBytes::new(source, &b.key, b.size, from, b.end),
            Vec::new(),
        ),
    };
    let framer = Framer::new(b.start, b.end, quoting, in_quotes, max);
    Ok(ByteReader::new(src, framer, Decoder::Csv(dec), pending).into_stream())
}

/// Whether byte `at` of a CSV split's file is read inside quotes (the rule of
/// [`crate::speculate`], streamed): the speculation at the last sync point at or before `at`,
/// then the quotes up to `at`. Returns the split's source positioned after the bytes already read
/// from `at` on, which come back too (at most `max_line_bytes`, the speculation's window). When
/// that sync point is ambiguous, earlier ones are tried, down to the file start.
async fn quote_state(
    source: &Source,
    b: &ByteSplit,
    at: u64,
    delim: u8,
    max: usize,
) -> Result<(bool, RangedBytes, Vec<Bytes>), ReadError> {
    let every = sync_every(max);
    let Some(sync) = sync_at_or_before(at, every) else {
        // No sync point before `at`: count from the file start (less than `max` bytes).
        let quoted = count_quotes(source, b, 0, at).await? % 2 == 1;
        let src = RangedBytes::new(source, &b.key, b.size, at, b.end);
        return Ok((quoted, src, Vec::new()));
    };
    let mut src = RangedBytes::new(source, &b.key, b.size, sync, b.end);
    let mut spec = Speculator::new(delim, max);
    let mut decision = None;
    let mut counted = 0u64;
    let mut pending = Vec::new();
    while decision.is_none() || src.position() < at {
        let start = src.position();
        let Some(chunk) = src.next().await? else {
            break;
        };
        if decision.is_none() {
            decision = spec.push(&chunk);
        }
        let before = usize::try_from(at.saturating_sub(start))
            .unwrap_or(usize::MAX)
            .min(chunk.len());
        counted += memchr::memchr_iter(b'"', &chunk[..before]).count() as u64;
        if before < chunk.len() {
            pending.push(chunk.slice(before..));
        }
    }
    let (base, quotes) = match decision.unwrap_or_else(|| spec.at_eof()) {
        Speculation::Decided(q) => (q, counted),
        Speculation::Ambiguous => {
            let url = source.url_of(&b.key);
            tracing::warn!(file = %url, offset = at, "csv split start is ambiguous; reading back to an earlier sync point");
            let mut earlier = sync_before(sync, every);
            // None decided: the file start, outside quotes.
            let mut found = (false, 0);
            while let Some(p) = earlier {
                if let Speculation::Decided(q) = speculate(source, b, p, delim, max).await? {
                    found = (q, p);
                    break;
                }
                earlier = sync_before(p, every);
            }
            let (q, p) = found;
            (q, counted + count_quotes(source, b, p, sync).await?)
        }
    };
    Ok((base ^ (quotes % 2 == 1), src, pending))
}

/// The speculation at byte `at` of a split's file, streamed (at most `max` bytes are read).
async fn speculate(
    source: &Source,
    b: &ByteSplit,
    at: u64,
    delim: u8,
    max: usize,
) -> Result<Speculation, ReadError> {
    let first = at.saturating_add((max as u64).min(SPECULATE_FIRST));
    let mut src = RangedBytes::new(source, &b.key, b.size, at, first);
    let mut spec = Speculator::new(delim, max);
    while let Some(chunk) = src.next().await? {
        if let Some(d) = spec.push(&chunk) {
            return Ok(d);
        }
    }
    Ok(spec.at_eof())
}

/// The header: the file's first non-empty record, read with small ranged GETs from its start.
async fn read_header(
    source: &Source,
    b: &ByteSplit,
    quoting: Quoting,
    max: usize,
) -> Result<(u64, Vec<u8>), ReadError> {
    let url = source.url_of(&b.key);
    let mut framer = Framer::new(0, b.size.max(1), quoting, false, max);
    let mut src = RangedBytes::new(source, &b.key, b.size, 0, HEADER_FIRST);
    let mut out = Vec::new();
    loop {
        match src.next().await? {
            Some(chunk) => framer.feed(&chunk, &mut out),
            None => framer.finish(&mut out),
        }
        for f in out.drain(..) {
            match f {
                Frame::Record { bytes, .. } if bytes.is_empty() => {}
                Frame::Record { offset, bytes, .. } => return Ok((offset, bytes)),
                Frame::TooLong { len, .. } => {
                    return Err(ReadError::Header {
                        file: url,
                        reason: format!("{len} bytes, over max_line_bytes = {max}"),
                    })
                }
            }
        }
        if framer.is_done() {
            return Err(ReadError::Header {
                file: url,
                reason: "no header row".into(),
            });
        }
    }
}

/// Quotes in `[from, until)` of a split's file, streamed.
async fn count_quotes(
    source: &Source,
    b: &ByteSplit,
    from: u64,
    until: u64,
) -> Result<u64, ReadError> {
    let mut src = RangedBytes::new(source, &b.key, b.size, from, until);
    let mut n = 0u64;
    while src.position() < until {
        let start = src.position();
        let Some(chunk) = src.next().await? else {
            break;
        };
        let take = usize::try_from(until - start)
            .unwrap_or(usize::MAX)
            .min(chunk.len());
        n += memchr::memchr_iter(b'"', &chunk[..take]).count() as u64;
    }
    Ok(n)
}

/// The records of `split` (JSONL or CSV) of a whole file held in `data`, with no I/O: the same
/// framing, speculation and decoding as [`read_split`]. For fuzzing and tests.
pub fn read_bytes(
    data: &[u8],
    split: &Split,
    proj: &Projection,
    opts: &ReadOptions,
) -> Result<Vec<Record>, ReadError> {
    let max = opts.max_line_bytes;
    let (b, decoder, quoting) = match split {
        Split::Jsonl(b) => (
            b,
            Decoder::Json(JsonDecoder::new(&b.key, proj, max)),
            Quoting::Lines,
        ),
        Split::Csv(b) => {
            let quoting = csv_quoting(opts);
            let header = frame_range(data, 0, data.len() as u64, quoting, false, max)
                .into_iter()
                .find(|f| !matches!(f, Frame::Record { bytes, .. } if bytes.is_empty()));
            let (ho, hb) = match header {
                Some(Frame::Record { offset, bytes, .. }) => (offset, bytes),
                _ => {
                    return Err(ReadError::Header {
                        file: b.key.clone(),
                        reason: "no header row or one over max_line_bytes".into(),
                    })
                }
            };
            let dec = CsvDecoder::new(&b.key, &b.key, proj, opts.csv.delimiter, max, ho, &hb)?;
            (b, Decoder::Csv(dec), quoting)
        }
        Split::Parquet(_) => {
            return Err(ReadError::BadSplit {
                file: split.key().to_string(),
                reason: "read_bytes reads JSONL and CSV splits".into(),
            })
        }
    };
    let in_quotes = match quoting {
        Quoting::Csv { delimiter } if b.start > 0 => {
            quoted_before(data, b.start - 1, delimiter, max)
        }
        _ => false,
    };
    Ok(frame_range(data, b.start, b.end, quoting, in_quotes, max)
        .into_iter()
        .filter_map(|f| decoder.decode(f))
        .collect())
}

/// Every record of a Parquet file held in `data`, planned in splits of `max_rows` rows and read
/// through the same footer, row-group and projection code as a stored file (on an in-memory
/// store): the Parquet entry point for fuzzing. A footer that cannot be read is
/// [`ReadError::Parquet`].
pub async fn read_parquet_bytes(
    data: Bytes,
    max_rows: u64,
    proj: &Projection,
    opts: &ReadOptions,
) -> Result<Vec<Record>, ReadError> {
    use object_store::{ObjectStore, ObjectStoreExt};
    let store: std::sync::Arc<dyn ObjectStore> =
        std::sync::Arc::new(object_store::memory::InMemory::new());
    let size = data.len() as u64;
    let source = Source::new(store, object_store::path::Path::from("mem"), "mem://");
    source
        .store
        .put(&source.path("input.parquet"), data.into())
        .await
        .map_err(|e| ReadError::Store {
            file: source.url_of("input.parquet"),
            source: e,
        })?;
    let files = vec![crate::source::FileMeta {
        key: "input.parquet".into(),
        size,
    }];
    let plan_opts = crate::plan::PlanOptions {
        max_rows: max_rows.max(1),
        ..crate::plan::PlanOptions::default()
    };
    let splits = crate::plan::plan_all(&source, files, crate::plan::Format::Parquet, &plan_opts)
        .await
        .map_err(|e| match e {
            crate::error::PlanError::Footer { file, source, .. } => {
                ReadError::Parquet { file, source }
            }
            other => ReadError::BadSplit {
                file: "mem://input.parquet".into(),
                reason: other.to_string(),
            },
        })?;
    let mut out = Vec::new();
    for split in &splits {
        let mut records = read_split(&source, split, proj, opts).await?;
        while let Some(r) = records.next().await {
            out.push(r?);
        }
    }
    Ok(out)
}

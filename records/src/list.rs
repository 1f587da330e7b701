//! `[input] list = "URI"`: a file that lists the inputs (one object key or URI per entry) instead
//! of a prefix to list — a database export, an S3 Inventory report in CSV or Parquet. The file is
//! streamed (ranged GETs, one record or one Parquet batch at a time), never listed or held whole.
//!
//! Formats ([`ListFormat::from_key`] picks by extension): plain text, one entry per line (`.txt`
//! and anything else; blank lines skipped, surrounding whitespace trimmed); CSV (`.csv`): the named
//! column (a header row is then required) or the first column (with or without a header row);
//! Parquet (`.parquet`): the named column or the first string column.
//!
//! How an entry becomes an input ([`resolve`]): an entry with a URL scheme (`s3://b/k.png`,
//! `file:///data/x.png`) or an absolute path (`/data/x.png`, taken as `file://`) is a full
//! location; when it lies under the job's `input.uri` it becomes the key relative to it
//! ([`Resolved::Key`]), otherwise it stays a URL ([`Resolved::Url`], for the caller to open or
//! refuse). Anything else is a key relative to `input.uri` (a leading `./` dropped; `..` parts are
//! refused). URL paths are percent-decoded; plain keys are taken as written.

use arrow_schema::DataType;
use futures::stream::{self, BoxStream, StreamExt};
use url::Url;

use crate::decode::csv_fields;
use crate::error::{ReadError, RowError};
use crate::frame::{Frame, Framer, Quoting};
use crate::key::RecordKey;
use crate::plan::{RowSplit, Split};
use crate::record::{Projection, ReadOptions};
use crate::source::{RangedBytes, Source};

/// How a list file is laid out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListFormat {
    /// One entry per line.
    Lines,
    /// A CSV file.
    Csv {
        /// The column holding the entries (by header name); `None`: the first column.
        column: Option<String>,
        /// Whether the first record is a header (required with `column`).
        header: bool,
    },
    /// A Parquet file.
    Parquet {
        /// The column holding the entries; `None`: the first string column.
        column: Option<String>,
    },
}

impl ListFormat {
    /// By the key's extension: `.csv` (with a header row when `column` is given), `.parquet`,
    /// anything else lines.
    pub fn from_key(key: &str, column: Option<String>) -> Self {
        let lower = key.to_ascii_lowercase();
        if lower.ends_with(".csv") {
            let header = column.is_some();
            ListFormat::Csv { column, header }
        } else if lower.ends_with(".parquet") || lower.ends_with(".parq") {
            ListFormat::Parquet { column }
        } else {
            ListFormat::Lines
        }
    }
}

/// One entry of a list file: where it is in the list, and the entry or why it is unusable.
#[derive(Debug, Clone, PartialEq)]
pub struct ListEntry {
    /// The list file's key and the entry's position (byte offset or row index).
    pub at: RecordKey,
    /// The entry text (trimmed), or the row's error (invalid UTF-8, a null, a bad CSV row).
    pub entry: Result<String, RowError>,
}

/// Streams the entries of the list file `key` (of `size` bytes) in `source`.
pub async fn read_list(
    source: &Source,
    key: &str,
    size: u64,
    format: &ListFormat,
    opts: &ReadOptions,
) -> Result<BoxStream<'static, Result<ListEntry, ReadError>>, ReadError> {
    let max = opts.max_line_bytes;
    match format {
        ListFormat::Lines => {
            let st = LineList {
                src: RangedBytes::new(source, key, size, 0, size),
                framer: Framer::new(0, size.max(1), Quoting::Lines, false, max),
                file: key.to_string(),
                max,
                out: Vec::new(),
                done: false,
                csv: None,
            };
            Ok(st.into_stream())
        }
        ListFormat::Csv { column, header } => {
            let mut src = RangedBytes::new(source, key, size, 0, size);
            let quoting = if opts.csv.quoted_newlines {
                Quoting::Csv {
                    delimiter: opts.csv.delimiter,
                }
            } else {
                Quoting::Lines
            };
            let mut framer = Framer::new(0, size.max(1), quoting, false, max);
            let mut out = Vec::new();
            let mut index = 0;
            if *header {
                // The header is the first non-empty record.
                let url = source.url_of(key);
                let head = loop {
                    if let Some(pos) = out
                        .iter()
                        .position(|f| !matches!(f, Frame::Record { bytes, .. } if bytes.is_empty()))
                    {
                        let f = out.remove(pos);
                        out.drain(..pos);
                        break Some(f);
                    }
                    out.clear();
                    match src.next().await? {
                        Some(c) => framer.feed(&c, &mut out),
                        None if framer.is_done() => break None,
                        None => framer.finish(&mut out),
                    }
                };
                let names = match head {
                    Some(Frame::Record { bytes, .. }) => csv_fields(&bytes, opts.csv.delimiter)
                        .map(|(data, ends)| {
                            let mut from = 0;
                            ends.iter()
                                .map(|&e| {
                                    let n = String::from_utf8_lossy(&data[from..e]).into_owned();
                                    from = e;
                                    n
                                })
                                .collect::<Vec<_>>()
                        }),
                    _ => None,
                }
                .ok_or_else(|| ReadError::Header {
                    file: url.clone(),
                    reason: "no readable header row".into(),
                })?;
                if let Some(c) = column {
                    index = names.iter().position(|n| n == c).ok_or_else(|| {
                        ReadError::MissingColumn {
                            file: url.clone(),
                            column: c.clone(),
                        }
                    })?;
                }
            }
            let st = LineList {
                src,
                framer,
                file: key.to_string(),
                max,
                out,
                done: false,
                csv: Some((opts.csv.delimiter, index)),
            };
            Ok(st.into_stream())
        }
        ListFormat::Parquet { column } => {
            let url = source.url_of(key);
            let meta = crate::parquet_io::StoreReader::new(source, key, size)
                .footer()
                .await
                .map_err(|e| ReadError::Parquet {
                    file: url.clone(),
                    source: e,
                })?;
            let schema = parquet::arrow::parquet_to_arrow_schema(
                meta.file_metadata().schema_descr(),
                meta.file_metadata().key_value_metadata(),
            )
            .map_err(|e| ReadError::Parquet {
                file: url.clone(),
                source: e,
            })?;
            let name = match column {
                Some(c) => c.clone(),
                None => schema
                    .fields()
                    .iter()
                    .find(|f| crate::parquet_read::is_text_type(f.data_type()))
                    .map(|f| f.name().clone())
                    .ok_or_else(|| ReadError::ColumnType {
                        file: url.clone(),
                        column: "(first string column)".into(),
                        expected: "a string column".into(),
                        found: "none".into(),
                    })?,
            };
            let rows: u64 = meta
                .row_groups()
                .iter()
                .map(|g| u64::try_from(g.num_rows()).unwrap_or(0))
                .sum();
            if rows == 0 {
                return Ok(stream::empty().boxed());
            }
            let split = Split::Parquet(RowSplit {
                key: key.to_string(),
                size,
                row_groups: (0..meta.num_row_groups()).collect(),
                start: 0,
                end: rows,
            });
            let proj = Projection {
                text: Some(name),
                ..Projection::default()
            };
            let records = crate::reader::read_split(source, &split, &proj, opts).await?;
            Ok(records
                .map(|r| {
                    r.map(|rec| ListEntry {
                        entry: rec
                            .fields
                            .map(|f| f.text.unwrap_or_default().trim().to_string()),
                        at: rec.key,
                    })
                })
                .filter(|e| {
                    let keep = !matches!(e, Ok(ListEntry { entry: Ok(s), .. }) if s.is_empty());
                    async move { keep }
                })
                .boxed())
        }
    }
}

/// Lines or CSV records of a list file, streamed.
struct LineList {
    src: RangedBytes,
    framer: Framer,
    file: String,
    max: usize,
    out: Vec<Frame>,
    done: bool,
    /// CSV: the delimiter and the entry column's index.
    csv: Option<(u8, usize)>,
}

impl LineList {
    fn entry(&self, f: Frame) -> Option<ListEntry> {
        let (offset, bytes) = match f {
            Frame::TooLong { offset, len } => {
                let at = RecordKey::new(self.file.clone(), offset);
                return Some(ListEntry {
                    entry: Err(RowError::TooLong {
                        key: at.clone(),
                        len,
                        max: self.max,
                    }),
                    at,
                });
            }
            Frame::Record { offset, bytes, .. } => (offset, bytes),
        };
        let at = RecordKey::new(self.file.clone(), offset);
        let field = match self.csv {
            None => bytes,
            Some(_) if bytes.is_empty() => return None,
            Some((delim, index)) => match csv_fields(&bytes, delim) {
                Some((data, ends)) if index < ends.len() => {
                    let from = if index == 0 { 0 } else { ends[index - 1] };
                    data[from..ends[index]].to_vec()
                }
                Some((_, ends)) => {
                    return Some(ListEntry {
                        entry: Err(RowError::FieldCount {
                            key: at.clone(),
                            expected: index + 1,
                            found: ends.len(),
                        }),
                        at,
                    })
                }
                None => {
                    return Some(ListEntry {
                        entry: Err(RowError::Unterminated { key: at.clone() }),
                        at,
                    })
                }
            },
        };
        let entry = match std::str::from_utf8(&field) {
            Ok(s) if s.trim().is_empty() => return None,
            Ok(s) => Ok(s.trim().to_string()),
            Err(_) => Err(RowError::Utf8 {
                key: at.clone(),
                column: "*".into(),
            }),
        };
        Some(ListEntry { at, entry })
    }

    async fn next(&mut self) -> Option<Result<ListEntry, ReadError>> {
        loop {
            while !self.out.is_empty() {
                let f = self.out.remove(0);
                if let Some(e) = self.entry(f) {
                    return Some(Ok(e));
                }
            }
            if self.done {
                return None;
            }
            match self.src.next().await {
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
                Ok(Some(c)) => self.framer.feed(&c, &mut self.out),
                Ok(None) => {
                    self.framer.finish(&mut self.out);
                    self.done = true;
                }
            }
        }
    }

    fn into_stream(self) -> BoxStream<'static, Result<ListEntry, ReadError>> {
        stream::unfold(self, |mut s| async move { s.next().await.map(|e| (e, s)) }).boxed()
    }
}

/// Where a list entry points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolved {
    /// A key relative to the job's input prefix.
    Key(String),
    /// A location outside the input prefix.
    Url(Url),
}

/// Resolves a list entry against the job's input prefix `base` (see the module docs).
pub fn resolve(base: &Url, entry: &str) -> Result<Resolved, String> {
    let entry = entry.trim();
    let url = if entry.starts_with('/') {
        Some(Url::from_file_path(entry).map_err(|()| format!("{entry:?} is not a usable path"))?)
    } else {
        match Url::parse(entry) {
            // One-letter "schemes" are Windows drive letters, not URLs.
            Ok(u) if u.scheme().len() > 1 => Some(u),
            _ => None,
        }
    };
    match url {
        Some(u) => {
            let base_s = base.as_str().trim_end_matches('/');
            let under = u
                .as_str()
                .strip_prefix(base_s)
                .and_then(|rest| rest.strip_prefix('/'))
                .filter(|rest| !rest.is_empty());
            match under {
                Some(rest) if u.query().is_none() && u.fragment().is_none() => {
                    let key: Vec<String> = rest.split('/').map(percent_decode).collect();
                    check_key(&key.join("/"))
                }
                _ => Ok(Resolved::Url(u)),
            }
        }
        None => check_key(entry.trim_start_matches("./")),
    }
}

fn check_key(key: &str) -> Result<Resolved, String> {
    if key.is_empty() {
        return Err("an empty key".into());
    }
    if key.split('/').any(|p| p == ".." || p == ".") {
        return Err(format!("{key:?}: '.' and '..' parts are not allowed"));
    }
    Ok(Resolved::Key(key.to_string()))
}

/// Decodes the `%XX` escapes of a URL path segment (text that does not decode to UTF-8 is kept
/// as written).
pub fn percent_decode(part: &str) -> String {
    let b = part.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match (b[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap_or_else(|_| part.to_string())
}

/// Whether a column type can hold list entries.
pub fn is_entry_type(t: &DataType) -> bool {
    crate::parquet_read::is_text_type(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_resolve_against_the_input_prefix() {
        let base = Url::parse("s3://bucket/images/").unwrap();
        let k = |s: &str| resolve(&base, s);
        assert_eq!(k("a/1.png"), Ok(Resolved::Key("a/1.png".into())));
        assert_eq!(k("./a/1.png"), Ok(Resolved::Key("a/1.png".into())));
        assert_eq!(
            k("s3://bucket/images/a/x%20y.png"),
            Ok(Resolved::Key("a/x y.png".into()))
        );
        assert_eq!(
            k("s3://other/z.png"),
            Ok(Resolved::Url(Url::parse("s3://other/z.png").unwrap()))
        );
        assert_eq!(
            k("s3://bucket/imagesX/z.png"),
            Ok(Resolved::Url(
                Url::parse("s3://bucket/imagesX/z.png").unwrap()
            ))
        );
        assert!(k("../etc/passwd").is_err());
        assert!(k("").is_err());
        let local = Url::parse("file:///data/in/").unwrap();
        assert_eq!(
            resolve(&local, "/data/in/sub/ü.png"),
            Ok(Resolved::Key("sub/ü.png".into()))
        );
        assert_eq!(
            resolve(&local, "C:stuff"),
            Ok(Resolved::Key("C:stuff".into()))
        );
    }
}

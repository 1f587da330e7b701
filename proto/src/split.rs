//! The part of a record file one shard works: a byte range of a JSONL or CSV file (the records
//! whose first byte lies in it) or a row range of a Parquet file. Plain data for the queue
//! message; `spotbatch-records` plans and reads them.

use serde::{Deserialize, Serialize};

/// A record file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// One JSON object per line.
    Jsonl,
    /// RFC 4180 CSV with a header row.
    Csv,
    /// Apache Parquet.
    Parquet,
}

impl Format {
    /// The manifest's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Jsonl => "jsonl",
            Format::Csv => "csv",
            Format::Parquet => "parquet",
        }
    }
}

/// A contiguous part of one file: the unit of work of a shard. Serialises as
/// `{"format":"jsonl","key":…,"size":…,"start":…,"end":…}` or
/// `{"format":"parquet","key":…,"size":…,"row_groups":[…],"start":…,"end":…}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "format", rename_all = "lowercase", deny_unknown_fields)]
pub enum Split {
    /// Records of a JSONL file starting in a byte range.
    Jsonl(ByteSplit),
    /// Records of a CSV file starting in a byte range.
    Csv(ByteSplit),
    /// Rows of a Parquet file.
    Parquet(RowSplit),
}

/// The records whose first byte lies in `[start, end)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ByteSplit {
    /// The file's key, relative to the input root.
    pub key: String,
    /// The file's size when planned (a reader finding another size fails the shard).
    pub size: u64,
    /// First byte of the range.
    pub start: u64,
    /// One past its last byte.
    pub end: u64,
}

/// Rows `[start, end)` of a Parquet file (0-based row indices in the file), all inside
/// `row_groups` (consecutive).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RowSplit {
    /// The file's key, relative to the input root.
    pub key: String,
    /// The file's size when planned.
    pub size: u64,
    /// The row groups the rows are in.
    pub row_groups: Vec<usize>,
    /// First row (index in the file).
    pub start: u64,
    /// One past the last row.
    pub end: u64,
}

impl Split {
    /// The file's key.
    pub fn key(&self) -> &str {
        match self {
            Split::Jsonl(b) | Split::Csv(b) => &b.key,
            Split::Parquet(r) => &r.key,
        }
    }

    /// The file's size when planned.
    pub fn size(&self) -> u64 {
        match self {
            Split::Jsonl(b) | Split::Csv(b) => b.size,
            Split::Parquet(r) => r.size,
        }
    }

    /// The format.
    pub fn format(&self) -> Format {
        match self {
            Split::Jsonl(_) => Format::Jsonl,
            Split::Csv(_) => Format::Csv,
            Split::Parquet(_) => Format::Parquet,
        }
    }

    /// A stable name of exactly this part of this file, for shard ids:
    /// `KEY#bytes=START-END` or `KEY#rows=START-END`.
    pub fn id_input(&self) -> String {
        match self {
            Split::Jsonl(b) | Split::Csv(b) => format!("{}#bytes={}-{}", b.key, b.start, b.end),
            Split::Parquet(r) => format!("{}#rows={}-{}", r.key, r.start, r.end),
        }
    }

    /// Rows in the split when the footer says (Parquet); JSONL/CSV counts are unknown.
    pub fn rows(&self) -> Option<u64> {
        match self {
            Split::Parquet(r) => Some(r.end - r.start),
            _ => None,
        }
    }
}

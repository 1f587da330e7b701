//! The crate's errors, in two kinds that never mix: a [`RowError`] is one bad record (a value in
//! the stream, the rest of the split goes on), a [`ReadError`] ends a split (the shard fails and is
//! retried, then dead-lettered). Planning, list files and the Parquet writer have their own.
//! Every message names the file (and for rows the position, `FILE#POS`) and the column.

use crate::key::RecordKey;

/// One bad record. Its [`RecordKey`] names the file and the position; the reason is one line.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum RowError {
    /// Not valid JSON (including invalid UTF-8 inside a string).
    #[error("{key}: malformed JSON: {reason}")]
    Json {
        /// The record.
        key: RecordKey,
        /// serde_json's reason (with the column in the line).
        reason: String,
    },
    /// A JSON line that is valid JSON but not an object.
    #[error("{key}: not a JSON object (found {found})")]
    NotObject {
        /// The record.
        key: RecordKey,
        /// What it is.
        found: &'static str,
    },
    /// A CSV row whose field count differs from the header's.
    #[error("{key}: {found} fields, the header has {expected}")]
    FieldCount {
        /// The record.
        key: RecordKey,
        /// The header's field count.
        expected: usize,
        /// This row's.
        found: usize,
    },
    /// A CSV row ending inside a quoted field (at the end of the file).
    #[error("{key}: unterminated quoted field")]
    Unterminated {
        /// The record.
        key: RecordKey,
    },
    /// The text column is absent from a JSON object.
    #[error("{key}: column {column:?} is missing")]
    Missing {
        /// The record.
        key: RecordKey,
        /// The column.
        column: String,
    },
    /// The text column is null.
    #[error("{key}: column {column:?} is null")]
    Null {
        /// The record.
        key: RecordKey,
        /// The column.
        column: String,
    },
    /// A value of the wrong type (a non-string text, an id that does not fit the job's type).
    #[error("{key}: column {column:?}: expected {expected}, found {found}")]
    Type {
        /// The record.
        key: RecordKey,
        /// The column.
        column: String,
        /// The type wanted.
        expected: String,
        /// What was there.
        found: String,
    },
    /// Bytes that are not UTF-8 where text is needed.
    #[error("{key}: column {column:?}: invalid UTF-8")]
    Utf8 {
        /// The record.
        key: RecordKey,
        /// The column (`"*"` when the whole line is not UTF-8).
        column: String,
    },
    /// A line or record over `max_line_bytes`; skipped while streaming, never held whole.
    #[error("{key}: record is {len} bytes, over max_line_bytes = {max}")]
    TooLong {
        /// The record.
        key: RecordKey,
        /// Its length in bytes.
        len: u64,
        /// The limit.
        max: usize,
    },
}

impl RowError {
    /// The record the error is about.
    pub fn key(&self) -> &RecordKey {
        match self {
            RowError::Json { key, .. }
            | RowError::NotObject { key, .. }
            | RowError::FieldCount { key, .. }
            | RowError::Unterminated { key }
            | RowError::Missing { key, .. }
            | RowError::Null { key, .. }
            | RowError::Type { key, .. }
            | RowError::Utf8 { key, .. }
            | RowError::TooLong { key, .. } => key,
        }
    }
}

/// A decoder's or parser's message as one line of a log, a dead letter's reason or an error row:
/// such messages quote the file (a column name from an embedded schema, a value that failed a
/// cast), so its control characters (newlines, NUL) are escaped as `{:?}` would escape them.
pub fn escaped(message: &impl std::fmt::Display) -> String {
    let message = message.to_string();
    if !message.contains(char::is_control) {
        return message;
    }
    message
        .chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// An error that ends a split: the file cannot be read as asked. Names the file (its URL) and,
/// where there is one, the column.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// The store failed (or the object is gone).
    #[error("{file}: {source}")]
    Store {
        /// The file's URL.
        file: String,
        /// The store's error.
        #[source]
        source: object_store::Error,
    },
    /// The file changed since it was planned (its size differs).
    #[error("{file}: is {found} bytes, it was {planned} when the job was planned")]
    Changed {
        /// The file's URL.
        file: String,
        /// Size in the plan.
        planned: u64,
        /// Size now.
        found: u64,
    },
    /// Not a Parquet file, a corrupt one, or one using a codec this build lacks.
    #[error("{file}: cannot read Parquet: {}", escaped(.source))]
    Parquet {
        /// The file's URL.
        file: String,
        /// The reader's error.
        #[source]
        source: parquet::errors::ParquetError,
    },
    /// A named column is not in the file (Parquet schema, CSV header).
    #[error("{file}: has no column {column:?}")]
    MissingColumn {
        /// The file's URL.
        file: String,
        /// The column.
        column: String,
    },
    /// A column of the wrong type for the job (the text column is not a string column; the id or a
    /// carried column differs from the job's type; a type JSONL/CSV values cannot take).
    #[error("{file}: column {column:?} is {}, the job needs {expected}", escaped(.found))]
    ColumnType {
        /// The file's URL.
        file: String,
        /// The column.
        column: String,
        /// The type the job needs.
        expected: String,
        /// The file's type.
        found: String,
    },
    /// A CSV file whose header cannot be read.
    #[error("{file}: CSV header: {}", escaped(.reason))]
    Header {
        /// The file's URL.
        file: String,
        /// Why.
        reason: String,
    },
    /// The split does not fit the file (row groups or rows beyond the footer's).
    #[error("{file}: {}", escaped(.reason))]
    BadSplit {
        /// The file's URL.
        file: String,
        /// Why.
        reason: String,
    },
}

/// Why planning failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PlanError {
    /// Listing or a footer read failed.
    #[error("{url}: {source}")]
    Store {
        /// The prefix's or file's URL.
        url: String,
        /// The store's error.
        #[source]
        source: object_store::Error,
    },
    /// A Parquet footer that cannot be read.
    #[error("{file}: cannot read the Parquet footer: {}", escaped(.source))]
    Footer {
        /// The file's URL.
        file: String,
        /// Its key below the source (as listed).
        key: String,
        /// The reader's error.
        #[source]
        source: parquet::errors::ParquetError,
    },
    /// A bad option (`split_bytes` or `max_rows` of 0).
    #[error("{0}")]
    Options(String),
}

/// Why the Parquet writer failed. The part file is not written (the shard fails).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WriteError {
    /// The output schema is impossible (a column name used twice or taken by a result column).
    #[error("{file}: column {column:?}: {reason}")]
    Schema {
        /// The part's URL.
        file: String,
        /// The column.
        column: String,
        /// Why.
        reason: String,
    },
    /// A row whose value does not fit the schema (an embedding of another length, a carried value
    /// of another type).
    #[error("{file}: row {key}: column {column:?}: {reason}")]
    Row {
        /// The part's URL.
        file: String,
        /// The row's key.
        key: String,
        /// The column.
        column: String,
        /// Why.
        reason: String,
    },
    /// Arrow or Parquet failed to encode or write.
    #[error("{file}: {source}")]
    Parquet {
        /// The part's URL.
        file: String,
        /// The writer's error.
        #[source]
        source: parquet::errors::ParquetError,
    },
    /// Building a batch failed.
    #[error("{file}: {source}")]
    Arrow {
        /// The part's URL.
        file: String,
        /// Arrow's error.
        #[source]
        source: arrow_schema::ArrowError,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_that_quote_a_file_stay_on_one_line() {
        // Found by the records_parquet fuzz target (finding 11): a column name of an embedded
        // Arrow schema, quoted by parquet's error, carried a carriage return.
        let e = ReadError::Parquet {
            file: "mem:/x.parquet".into(),
            source: parquet::errors::ParquetError::General(
                "expected field named \u{0}\r\n got text".into(),
            ),
        };
        assert_eq!(
            e.to_string(),
            r"mem:/x.parquet: cannot read Parquet: Parquet error: expected field named \u{0}\r\n got text"
        );
        let e = PlanError::Footer {
            file: "f".into(),
            key: "f".into(),
            source: parquet::errors::ParquetError::General("a\nb".into()),
        };
        assert_eq!(
            e.to_string(),
            r"f: cannot read the Parquet footer: Parquet error: a\nb"
        );
        let e = ReadError::BadSplit {
            file: "f".into(),
            reason: "plain text, é".into(),
        };
        assert_eq!(e.to_string(), "f: plain text, é");
    }
}

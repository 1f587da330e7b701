//! What a reader yields: [`Record`]s (a key and the requested fields, or that row's error), and
//! what it is asked for: a [`Projection`] and [`ReadOptions`].

use arrow_schema::DataType;
use serde::{Deserialize, Serialize};

use crate::error::RowError;
use crate::key::RecordKey;
use crate::value::Value;

/// A column to carry, and the type it has in the job's output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Column {
    /// The input column (JSON field, CSV header name, Parquet top-level column).
    pub name: String,
    /// The job's type for it (from [`crate::schema::resolve`]); `None` keeps each value's own
    /// type (JSON's, CSV's string, Parquet's), which is only safe when nothing writes Parquet.
    pub ty: Option<DataType>,
}

impl Column {
    /// A column with no fixed type.
    pub fn named(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            ty: None,
        }
    }
}

/// The fields a reader extracts from each record; everything else is skipped unparsed (JSON) or
/// not fetched (Parquet).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Projection {
    /// The text column (`[preprocess] text_column`): must be a string; missing, null or not a
    /// string is that row's error.
    pub text: Option<String>,
    /// `[input] id_column`: carried in its input type; missing is null.
    pub id: Option<Column>,
    /// `[output] columns`: carried in their input types; missing is null.
    pub columns: Vec<Column>,
}

impl Projection {
    /// Every column name asked for, text first, each once.
    pub fn names(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        let all = self
            .text
            .iter()
            .map(String::as_str)
            .chain(self.id.iter().map(|c| c.name.as_str()))
            .chain(self.columns.iter().map(|c| c.name.as_str()));
        for n in all {
            if !out.contains(&n) {
                out.push(n);
            }
        }
        out
    }
}

/// The fields of one good record.
#[derive(Debug, Clone, PartialEq)]
pub struct Fields {
    /// The text, when the projection names a text column.
    pub text: Option<String>,
    /// The id, when the projection names one ([`Value::Null`] when the record lacks it).
    pub id: Option<Value>,
    /// The carried columns, in the projection's order.
    pub columns: Vec<Value>,
}

/// One record of a split: its key and its fields, or why this record cannot be used.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// The file and the record's position in it.
    pub key: RecordKey,
    /// The fields, or the row's error (which becomes an error row with this key).
    pub fields: Result<Fields, RowError>,
}

/// CSV dialect and splitting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsvOptions {
    /// Field delimiter (`,`).
    pub delimiter: u8,
    /// Whether quoted fields may contain newlines (RFC 4180; the default). Splits then find their
    /// first record by speculation at sync points ([`crate::speculate`]), reading back to an
    /// earlier one when the bytes cannot tell. `false` makes every line a record (the
    /// plain split rule, like pyarrow's `newlines_in_values=False` or Spark's default), for files
    /// with stray quotes in unquoted fields.
    pub quoted_newlines: bool,
}

impl Default for CsvOptions {
    fn default() -> Self {
        Self {
            delimiter: b',',
            quoted_newlines: true,
        }
    }
}

/// Reader limits and dialect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadOptions {
    /// A longer line or CSV record is an error row, skipped without being held (also the CSV
    /// speculation's window). Default 4 MiB.
    pub max_line_bytes: usize,
    /// CSV dialect.
    pub csv: CsvOptions,
    /// Parquet rows decoded at a time. Default 1024.
    pub batch_rows: usize,
}

impl Default for ReadOptions {
    fn default() -> Self {
        Self {
            max_line_bytes: 4 << 20,
            csv: CsvOptions::default(),
            batch_rows: 1024,
        }
    }
}

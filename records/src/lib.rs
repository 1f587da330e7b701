//! spotbatch's record formats: JSONL, CSV and Parquet inputs read in parts, list files, and the
//! Parquet part writer. A format library with no knowledge of queues or pipelines.
//!
//! - **Planning** from metadata only ([`discover`], [`plan()`]): object sizes cut JSONL/CSV files
//!   into byte ranges; Parquet footers (ranged reads of the footer alone) cut Parquet files into
//!   row-group runs of at most `max_rows` rows. A [`Split`] is serde data for the queue message,
//!   with [`Split::id_input`] for the shard id.
//! - **Reading** a split ([`read_split`]): its records in file order as a stream, each with its
//!   [`RecordKey`] (`FILE#POS`) and the projected fields, or that row's [`RowError`]; a
//!   [`ReadError`] ends the stream. Ranged GETs with streamed bodies, bounded memory: JSONL/CSV
//!   hold one record (≤ `max_line_bytes`) and one body chunk; Parquet one batch of the projected
//!   columns of the split's row groups. The split rule and CSV quoting are in [`frame`].
//! - **Types** ([`schema::resolve`]): every carried column gets one Arrow type for the whole job.
//! - **Lists** ([`list`]): `[input] list = "URI"` files of keys or URIs, streamed.
//! - **Writing** ([`PartWriter`]): one Parquet part file per shard, typed columns.
#![warn(missing_docs)]

pub mod decode;
pub mod error;
pub mod frame;
pub mod key;
pub mod list;
mod parquet_io;
mod parquet_read;
pub mod plan;
pub mod reader;
pub mod record;
pub mod schema;
pub mod source;
pub mod speculate;
pub mod value;
pub mod writer;

pub use error::{escaped, PlanError, ReadError, RowError, WriteError};
pub use key::RecordKey;
pub use list::{read_list, resolve as resolve_list_entry, ListEntry, ListFormat, Resolved};
pub use plan::{plan, plan_all, ByteSplit, Format, PlanOptions, RowSplit, Split};
pub use reader::{read_bytes, read_parquet_bytes, read_split, RecordStream};
pub use record::{Column, CsvOptions, Fields, Projection, ReadOptions, Record};
pub use source::{discover, source_for, FileMeta, RangedBytes, Source};
pub use value::{Mismatch, Value};
pub use writer::{PartRow, PartSchema, PartSummary, PartWriter, ResultKind, WriterOptions};

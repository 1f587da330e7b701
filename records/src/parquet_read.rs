//! Reading a Parquet split: only its row groups (and, for part of a row group, a row selection,
//! with the offset index so that only the pages holding the rows are fetched), only the projected
//! columns. A file that cannot be read, a missing column or a column of the wrong type is a
//! [`ReadError`] naming the file and column; a null text is that row's error.

use std::collections::VecDeque;

use arrow_array::cast::AsArray;
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::{DataType, Schema};
use futures::stream::{self, StreamExt};
use futures::FutureExt;
use parquet::arrow::arrow_reader::{ArrowReaderOptions, RowSelection, RowSelector};
use parquet::arrow::async_reader::ParquetRecordBatchStream;
use parquet::arrow::{ParquetRecordBatchStreamBuilder, ProjectionMask};
use parquet::file::metadata::PageIndexPolicy;

use crate::error::{ReadError, RowError};
use crate::key::RecordKey;
use crate::parquet_io::StoreReader;
use crate::plan::RowSplit;
use crate::reader::RecordStream;
use crate::record::{Column, Fields, Projection, ReadOptions, Record};
use crate::value::Value;

/// Whether a column can be the text column (read as UTF-8 strings).
pub(crate) fn is_text_type(t: &DataType) -> bool {
    match t {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => true,
        DataType::Dictionary(_, v) => is_text_type(v),
        _ => false,
    }
}

/// Checks that `schema` has the projection's columns in usable types; returns each projected
/// name's index in the schema (text first, as [`Projection::names`]).
pub(crate) fn check_schema(
    url: &str,
    schema: &Schema,
    proj: &Projection,
) -> Result<Vec<usize>, ReadError> {
    let index = |name: &str| {
        schema.index_of(name).map_err(|_| ReadError::MissingColumn {
            file: url.to_string(),
            column: name.to_string(),
        })
    };
    if let Some(t) = &proj.text {
        let ty = schema.field(index(t)?).data_type();
        if !is_text_type(ty) {
            return Err(ReadError::ColumnType {
                file: url.to_string(),
                column: t.clone(),
                expected: "a string column (Utf8, LargeUtf8, Utf8View or a dictionary of them)"
                    .into(),
                found: ty.to_string(),
            });
        }
    }
    for c in proj.id.iter().chain(&proj.columns) {
        let ty = schema.field(index(&c.name)?).data_type();
        if let Some(want) = &c.ty {
            if want != ty {
                return Err(ReadError::ColumnType {
                    file: url.to_string(),
                    column: c.name.clone(),
                    expected: want.to_string(),
                    found: ty.to_string(),
                });
            }
        }
    }
    proj.names().into_iter().map(index).collect()
}

/// Opens a Parquet split (see the module docs).
pub(crate) async fn open(
    source: &crate::source::Source,
    split: &RowSplit,
    proj: &Projection,
    opts: &ReadOptions,
) -> Result<RecordStream, ReadError> {
    let url = source.url_of(&split.key);
    let perr = |e| ReadError::Parquet {
        file: url.clone(),
        source: e,
    };
    let bad = |reason: String| ReadError::BadSplit {
        file: url.clone(),
        reason,
    };
    let reader = StoreReader::new(source, &split.key, split.size);
    let options = ArrowReaderOptions::new().with_offset_index_policy(PageIndexPolicy::Optional);
    let builder = ParquetRecordBatchStreamBuilder::new_with_options(reader, options)
        .await
        .map_err(perr)?;
    // Where the split's rows sit among its row groups.
    let meta = builder.metadata().clone();
    let groups = meta.row_groups();
    let (Some(&first), Some(&last)) = (split.row_groups.first(), split.row_groups.last()) else {
        return Err(bad("a split with no row groups".into()));
    };
    let contiguous = split.row_groups.windows(2).all(|w| w[1] == w[0] + 1);
    if last >= groups.len() || !contiguous {
        return Err(bad(format!(
            "row groups {:?} do not fit the file's {} (the file changed since planning?)",
            split.row_groups,
            groups.len()
        )));
    }
    let rows_before: u64 = groups[..first]
        .iter()
        .map(|g| u64::try_from(g.num_rows()).unwrap_or(0))
        .sum();
    let rows_in: u64 = groups[first..=last]
        .iter()
        .map(|g| u64::try_from(g.num_rows()).unwrap_or(0))
        .sum();
    if split.start < rows_before || split.end > rows_before + rows_in || split.start >= split.end {
        return Err(bad(format!(
            "rows {}..{} are not inside row groups {:?} (rows {}..{})",
            split.start,
            split.end,
            split.row_groups,
            rows_before,
            rows_before + rows_in
        )));
    }
    let indices = check_schema(&url, builder.schema(), proj)?;
    let mask = ProjectionMask::roots(builder.parquet_schema(), indices);
    let mut b = builder
        .with_row_groups(split.row_groups.clone())
        .with_projection(mask)
        .with_batch_size(opts.batch_rows.max(1));
    let (skip, take) = (split.start - rows_before, split.end - split.start);
    if skip > 0 || take < rows_in {
        let n = |x: u64| usize::try_from(x).unwrap_or(usize::MAX);
        let sel: Vec<RowSelector> = [
            RowSelector::skip(n(skip)),
            RowSelector::select(n(take)),
            RowSelector::skip(n(rows_in - skip - take)),
        ]
        .into_iter()
        .filter(|s| s.row_count > 0)
        .collect();
        b = b.with_row_selection(RowSelection::from(sel));
    }
    let stream = b.build().map_err(perr)?;
    let state = Batches {
        stream,
        url,
        file: split.key.clone(),
        proj: proj.clone(),
        next_row: split.start,
        end: split.end,
        row_groups: split.row_groups.clone(),
        records: VecDeque::new(),
        done: false,
    };
    Ok(stream::unfold(state, |mut s| async move { s.next().await.map(|r| (r, s)) }).boxed())
}

struct Batches {
    stream: ParquetRecordBatchStream<StoreReader>,
    url: String,
    file: String,
    proj: Projection,
    next_row: u64,
    /// One past the split's last row, as the footer's row counts place it.
    end: u64,
    row_groups: Vec<usize>,
    records: VecDeque<Record>,
    done: bool,
}

impl Batches {
    async fn next(&mut self) -> Option<Result<Record, ReadError>> {
        loop {
            if let Some(r) = self.records.pop_front() {
                return Some(Ok(r));
            }
            if self.done {
                return None;
            }
            // The parquet and arrow crates panic on some corrupt files (seen: a definition-level
            // run longer than its bitmap, an assertion in arrow-buffer): contained here, so a
            // file is an error for its shard, never a worker taken down (a panic also prints a
            // line on stderr through the panic hook).
            let next = std::panic::AssertUnwindSafe(self.stream.next())
                .catch_unwind()
                .await;
            let next = match next {
                Ok(next) => next,
                Err(panic) => {
                    self.done = true;
                    return Some(Err(ReadError::Parquet {
                        file: self.url.clone(),
                        source: parquet::errors::ParquetError::General(format!(
                            "the decoder failed on this file: {}",
                            panic_message(panic.as_ref())
                        )),
                    }));
                }
            };
            match next {
                None => {
                    self.done = true;
                    if self.next_row != self.end {
                        return Some(Err(self.miscounted()));
                    }
                }
                Some(Err(e)) => {
                    self.done = true;
                    return Some(Err(ReadError::Parquet {
                        file: self.url.clone(),
                        source: e,
                    }));
                }
                Some(Ok(batch)) => {
                    if let Err(e) = self.push_batch(&batch) {
                        self.done = true;
                        return Some(Err(e));
                    }
                }
            }
        }
    }

    /// The split's rows did not come out as the footer counts them (a row group holding fewer
    /// or more rows than it claims): its records' keys, positions in the file, would not be
    /// the ones another reading of the file gives them, so the split fails as a whole.
    fn miscounted(&self) -> ReadError {
        ReadError::BadSplit {
            file: self.url.clone(),
            reason: format!(
                "row groups {:?} hold rows up to {} where the footer counts rows up to {} (a row group's num_rows does not match its data)",
                self.row_groups, self.next_row, self.end
            ),
        }
    }

    fn push_batch(&mut self, batch: &RecordBatch) -> Result<(), ReadError> {
        if self.next_row + batch.num_rows() as u64 > self.end {
            self.next_row += batch.num_rows() as u64;
            return Err(self.miscounted());
        }
        let column = |name: &str| -> Result<ArrayRef, ReadError> {
            batch
                .column_by_name(name)
                .cloned()
                .ok_or_else(|| ReadError::MissingColumn {
                    file: self.url.clone(),
                    column: name.to_string(),
                })
        };
        let text = match &self.proj.text {
            None => None,
            Some(name) => {
                let col = column(name)?;
                let col = if col.data_type() == &DataType::Utf8 {
                    col
                } else {
                    arrow_cast::cast(&col, &DataType::Utf8).map_err(|e| ReadError::ColumnType {
                        file: self.url.clone(),
                        column: name.clone(),
                        expected: "text".into(),
                        found: e.to_string(),
                    })?
                };
                Some((name.clone(), col))
            }
        };
        let carried = |c: &Column| column(&c.name);
        let id = self.proj.id.as_ref().map(carried).transpose()?;
        let columns = self
            .proj
            .columns
            .iter()
            .map(carried)
            .collect::<Result<Vec<_>, _>>()?;
        for i in 0..batch.num_rows() {
            let key = RecordKey::new(self.file.clone(), self.next_row);
            self.next_row += 1;
            let text = match &text {
                None => Ok(None),
                Some((name, col)) if col.is_null(i) => Err(RowError::Null {
                    key: key.clone(),
                    column: name.clone(),
                }),
                Some((_, col)) => Ok(Some(col.as_string::<i32>().value(i).to_string())),
            };
            let fields = text.map(|text| Fields {
                text,
                id: id.as_ref().map(|c| Value::Arrow(c.slice(i, 1))),
                columns: columns
                    .iter()
                    .map(|c| Value::Arrow(c.slice(i, 1)))
                    .collect(),
            });
            self.records.push_back(Record { key, fields });
        }
        Ok(())
    }
}

/// A caught panic's message, on one line and at most 200 characters.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    let text = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".into());
    spotbatch_proto::manifest::one_line(&text)
        .chars()
        .take(200)
        .collect()
}

//! The Parquet part writer: one whole file per shard, at the key the caller gives, through
//! `AsyncArrowWriter` over `object_store`'s `BufWriter` (a single PUT when small, a multipart
//! upload otherwise; readers see the whole file or none of it).
//!
//! The columns, in order: `key` (Utf8, never null); the id column in its job type; the carried
//! columns in their job types; the result — `top_k` as a list of structs `{index: Int64, label:
//! Utf8, score: Float32}` (Int64, not UInt32: Spark, BigQuery and Athena have no unsigned types),
//! `embedding` as `FixedSizeList<Float32, dim>`, or `tensor` as a struct `{shape: List<Int64>,
//! data: List<Float32>}` (row-major); and `error` (nullable Utf8). A failed row has a null result
//! and its error. The schema depends on the [`PartSchema`] only, so every part of a job matches.
//! Written with zstd (level 1) by default: every Parquet reader in use reads it, and it shrinks
//! the key, label and text columns well beyond snappy; embeddings barely compress either way.

use std::sync::{Arc, Mutex};

use arrow_array::{
    Array, ArrayRef, BooleanArray, FixedSizeListArray, Float32Array, Float64Array, Int64Array,
    ListArray, RecordBatch, StringArray, StructArray,
};
use arrow_buffer::{NullBuffer, OffsetBuffer};
use arrow_schema::{DataType, Field, Fields, Schema, SchemaRef};
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::FutureExt;
use object_store::buffered::BufWriter;
use object_store::path::Path;
use object_store::ObjectStore;
use parquet::arrow::async_writer::AsyncFileWriter;
use parquet::arrow::AsyncArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use sha2::{Digest, Sha256};
use spotbatch_proto::RowValue;
use tokio::io::AsyncWriteExt;

use crate::error::WriteError;
use crate::value::Value;

/// The result column of a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResultKind {
    /// `top_k`: best classes first.
    TopK,
    /// `embedding`: vectors of `dim` floats.
    Embedding {
        /// The vector length (the model's output size).
        dim: usize,
    },
    /// `tensor`: one output tensor per row.
    Tensor,
}

/// What a job's part files hold besides `key` and `error`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartSchema {
    /// The id column's name and job type.
    pub id: Option<(String, DataType)>,
    /// Carried columns' names and job types, in output order.
    pub columns: Vec<(String, DataType)>,
    /// The result column.
    pub result: ResultKind,
}

fn top_k_item() -> Fields {
    Fields::from(vec![
        Field::new("index", DataType::Int64, false),
        Field::new("label", DataType::Utf8, false),
        Field::new("score", DataType::Float32, false),
    ])
}

fn tensor_fields() -> Fields {
    Fields::from(vec![
        Field::new(
            "shape",
            DataType::List(Arc::new(Field::new("item", DataType::Int64, false))),
            false,
        ),
        Field::new(
            "data",
            DataType::List(Arc::new(Field::new("item", DataType::Float32, false))),
            false,
        ),
    ])
}

impl PartSchema {
    /// The result column's name.
    pub fn result_name(&self) -> &'static str {
        match self.result {
            ResultKind::TopK => "top_k",
            ResultKind::Embedding { .. } => "embedding",
            ResultKind::Tensor => "tensor",
        }
    }

    /// The Arrow schema of the part files; a name used twice is an error naming it.
    pub fn arrow_schema(&self) -> Result<SchemaRef, (String, String)> {
        let result_type = match &self.result {
            ResultKind::TopK => DataType::List(Arc::new(Field::new(
                "item",
                DataType::Struct(top_k_item()),
                false,
            ))),
            ResultKind::Embedding { dim } => DataType::FixedSizeList(
                Arc::new(Field::new("item", DataType::Float32, false)),
                i32::try_from(*dim).map_err(|_| {
                    (
                        "embedding".to_string(),
                        format!("dimension {dim} is too large"),
                    )
                })?,
            ),
            ResultKind::Tensor => DataType::Struct(tensor_fields()),
        };
        let mut fields = vec![Field::new("key", DataType::Utf8, false)];
        for (name, ty) in self.id.iter().chain(&self.columns) {
            fields.push(Field::new(name, ty.clone(), true));
        }
        fields.push(Field::new(self.result_name(), result_type, true));
        fields.push(Field::new("error", DataType::Utf8, true));
        for (i, f) in fields.iter().enumerate() {
            if fields[..i].iter().any(|g| g.name() == f.name()) {
                return Err((
                    f.name().clone(),
                    "used twice (the id column, a carried column, key, error and the result \
                     column need distinct names)"
                        .into(),
                ));
            }
        }
        Ok(Arc::new(Schema::new(fields)))
    }
}

/// One output row.
#[derive(Debug, Clone, PartialEq)]
pub struct PartRow {
    /// The record's key (`FILE#POS`).
    pub key: String,
    /// The id value (when the schema has an id column).
    pub id: Option<Value>,
    /// The carried values, in the schema's order.
    pub columns: Vec<Value>,
    /// The result, `None` for a failed row.
    pub value: Option<RowValue>,
    /// Why the row failed, one line.
    pub error: Option<String>,
}

/// Writer settings.
#[derive(Debug, Clone)]
pub struct WriterOptions {
    /// Compression of every column. Default zstd level 1.
    pub compression: Compression,
    /// Rows per Arrow batch handed to the encoder. Default 1024.
    pub batch_rows: usize,
    /// Bytes buffered before switching from one PUT to a multipart upload. Default 10 MiB.
    pub buffer_bytes: usize,
}

impl Default for WriterOptions {
    fn default() -> Self {
        Self {
            compression: Compression::ZSTD(ZstdLevel::default()),
            batch_rows: 1024,
            buffer_bytes: 10 << 20,
        }
    }
}

/// What a finished part holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartSummary {
    /// Rows written.
    pub rows: u64,
    /// Rows with an error.
    pub errors: u64,
    /// The file's size.
    pub bytes: u64,
    /// Hex SHA-256 of the file (for the done marker).
    pub sha256: String,
}

/// Bytes to the object store, hashed on the way.
struct HashingSink {
    inner: BufWriter,
    hash: Arc<Mutex<(Sha256, u64)>>,
}

impl AsyncFileWriter for HashingSink {
    fn write(&mut self, bs: Bytes) -> BoxFuture<'_, parquet::errors::Result<()>> {
        if let Ok(mut h) = self.hash.lock() {
            h.0.update(&bs);
            h.1 += bs.len() as u64;
        }
        async move {
            self.inner.write_all(&bs).await?;
            Ok(())
        }
        .boxed()
    }

    fn complete(&mut self) -> BoxFuture<'_, parquet::errors::Result<()>> {
        async move {
            self.inner.flush().await?;
            self.inner.shutdown().await?;
            Ok(())
        }
        .boxed()
    }
}

/// Writes one part file (see the module docs).
pub struct PartWriter {
    url: String,
    schema: SchemaRef,
    part: PartSchema,
    writer: AsyncArrowWriter<HashingSink>,
    hash: Arc<Mutex<(Sha256, u64)>>,
    rows: Vec<PartRow>,
    batch_rows: usize,
    written: u64,
    errors: u64,
}

impl PartWriter {
    /// A writer of `path` in `store` (`url` names it in messages).
    pub fn create(
        store: Arc<dyn ObjectStore>,
        path: Path,
        url: impl Into<String>,
        part: &PartSchema,
        opts: &WriterOptions,
    ) -> Result<Self, WriteError> {
        let url = url.into();
        let schema = part
            .arrow_schema()
            .map_err(|(column, reason)| WriteError::Schema {
                file: url.clone(),
                column,
                reason,
            })?;
        let hash = Arc::new(Mutex::new((Sha256::new(), 0u64)));
        let sink = HashingSink {
            inner: BufWriter::with_capacity(store, path, opts.buffer_bytes.max(1)),
            hash: Arc::clone(&hash),
        };
        let props = WriterProperties::builder()
            .set_compression(opts.compression)
            .build();
        let writer = AsyncArrowWriter::try_new(sink, Arc::clone(&schema), Some(props)).map_err(
            |source| WriteError::Parquet {
                file: url.clone(),
                source,
            },
        )?;
        Ok(Self {
            url,
            schema,
            part: part.clone(),
            writer,
            hash,
            rows: Vec::new(),
            batch_rows: opts.batch_rows.max(1),
            written: 0,
            errors: 0,
        })
    }

    /// The part's Arrow schema.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// Adds a row (encoded a batch at a time).
    pub async fn write(&mut self, row: PartRow) -> Result<(), WriteError> {
        self.rows.push(row);
        if self.rows.len() >= self.batch_rows {
            self.flush_batch().await?;
        }
        Ok(())
    }

    async fn flush_batch(&mut self) -> Result<(), WriteError> {
        if self.rows.is_empty() {
            return Ok(());
        }
        let rows = std::mem::take(&mut self.rows);
        let batch = self.batch(&rows)?;
        self.writer
            .write(&batch)
            .await
            .map_err(|source| WriteError::Parquet {
                file: self.url.clone(),
                source,
            })?;
        self.written += rows.len() as u64;
        self.errors += rows.iter().filter(|r| r.error.is_some()).count() as u64;
        Ok(())
    }

    /// Writes what is buffered and the footer, and completes the upload: the file exists whole
    /// from here on.
    pub async fn finish(mut self) -> Result<PartSummary, WriteError> {
        self.flush_batch().await?;
        let url = self.url.clone();
        self.writer
            .close()
            .await
            .map_err(|source| WriteError::Parquet { file: url, source })?;
        let (sha, bytes) = match self.hash.lock() {
            Ok(h) => (hex::encode(h.0.clone().finalize()), h.1),
            Err(_) => (String::new(), 0),
        };
        Ok(PartSummary {
            rows: self.written,
            errors: self.errors,
            bytes,
            sha256: sha,
        })
    }

    fn row_err(&self, key: &str, column: &str, reason: String) -> WriteError {
        WriteError::Row {
            file: self.url.clone(),
            key: key.to_string(),
            column: column.to_string(),
            reason,
        }
    }

    fn batch(&self, rows: &[PartRow]) -> Result<RecordBatch, WriteError> {
        let mut cols: Vec<ArrayRef> = Vec::with_capacity(self.schema.fields().len());
        cols.push(Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.key.as_str()),
        )));
        if let Some((name, ty)) = &self.part.id {
            let vals: Vec<&Value> = rows
                .iter()
                .map(|r| r.id.as_ref().unwrap_or(&Value::Null))
                .collect();
            cols.push(self.column(rows, name, ty, &vals)?);
        }
        for (i, (name, ty)) in self.part.columns.iter().enumerate() {
            let vals: Vec<&Value> = rows
                .iter()
                .map(|r| r.columns.get(i).unwrap_or(&Value::Null))
                .collect();
            cols.push(self.column(rows, name, ty, &vals)?);
        }
        cols.push(self.result(rows)?);
        cols.push(Arc::new(StringArray::from_iter(
            rows.iter().map(|r| r.error.as_deref()),
        )));
        RecordBatch::try_new(Arc::clone(&self.schema), cols).map_err(|source| WriteError::Arrow {
            file: self.url.clone(),
            source,
        })
    }

    /// A carried column in its job type.
    fn column(
        &self,
        rows: &[PartRow],
        name: &str,
        ty: &DataType,
        vals: &[&Value],
    ) -> Result<ArrayRef, WriteError> {
        let conformed: Vec<Value> = vals
            .iter()
            .zip(rows)
            .map(|(v, r)| {
                (*v).clone()
                    .conform(ty)
                    .map_err(|m| self.row_err(&r.key, name, m.to_string()))
            })
            .collect::<Result<_, _>>()?;
        let arrow_err = |source| WriteError::Arrow {
            file: self.url.clone(),
            source,
        };
        if conformed.iter().any(|v| matches!(v, Value::Arrow(_))) {
            let parts: Vec<ArrayRef> = conformed
                .iter()
                .map(|v| match v {
                    Value::Arrow(a) => Arc::clone(a),
                    _ => arrow_array::new_null_array(ty, 1),
                })
                .collect();
            let refs: Vec<&dyn Array> = parts.iter().map(|a| a.as_ref()).collect();
            return arrow_select::concat::concat(&refs).map_err(arrow_err);
        }
        let vals = conformed.iter();
        Ok(match ty {
            DataType::Utf8 => Arc::new(StringArray::from_iter(vals.map(|v| match v {
                Value::Str(s) => Some(s.as_str()),
                _ => None,
            }))),
            DataType::Int64 => Arc::new(Int64Array::from_iter(vals.map(|v| match v {
                Value::Int(i) => Some(*i),
                _ => None,
            }))),
            DataType::Float64 => Arc::new(Float64Array::from_iter(vals.map(|v| match v {
                Value::Float(f) => Some(*f),
                _ => None,
            }))),
            DataType::Boolean => Arc::new(BooleanArray::from_iter(vals.map(|v| match v {
                Value::Bool(b) => Some(*b),
                _ => None,
            }))),
            // Only nulls (no Arrow value to take the type from): a null column of the type.
            other => arrow_array::new_null_array(other, rows.len()),
        })
    }

    fn result(&self, rows: &[PartRow]) -> Result<ArrayRef, WriteError> {
        let name = self.part.result_name();
        let wrong = |r: &PartRow| {
            self.row_err(
                &r.key,
                name,
                "the row's result is of another kind than the job's".into(),
            )
        };
        let nulls = NullBuffer::from_iter(rows.iter().map(|r| r.value.is_some()));
        let arrow_err = |source| WriteError::Arrow {
            file: self.url.clone(),
            source,
        };
        match &self.part.result {
            ResultKind::TopK => {
                let (mut index, mut label, mut score) = (Vec::new(), Vec::new(), Vec::new());
                let mut lens = Vec::with_capacity(rows.len());
                for r in rows {
                    match &r.value {
                        None => lens.push(0),
                        Some(RowValue::TopK(t)) => {
                            lens.push(t.len());
                            for s in t {
                                index.push(i64::try_from(s.index).unwrap_or(i64::MAX));
                                label.push(s.label.as_str());
                                score.push(s.score);
                            }
                        }
                        Some(_) => return Err(wrong(r)),
                    }
                }
                let items = StructArray::try_new(
                    top_k_item(),
                    vec![
                        Arc::new(Int64Array::from(index)),
                        Arc::new(StringArray::from(label)),
                        Arc::new(Float32Array::from(score)),
                    ],
                    None,
                )
                .map_err(arrow_err)?;
                let field = Arc::new(Field::new("item", DataType::Struct(top_k_item()), false));
                Ok(Arc::new(
                    ListArray::try_new(
                        field,
                        OffsetBuffer::from_lengths(lens),
                        Arc::new(items),
                        Some(nulls),
                    )
                    .map_err(arrow_err)?,
                ))
            }
            ResultKind::Embedding { dim } => {
                let mut values = Vec::with_capacity(rows.len() * dim);
                for r in rows {
                    match &r.value {
                        None => values.extend(std::iter::repeat_n(0.0f32, *dim)),
                        Some(RowValue::Embedding(v)) if v.len() == *dim => {
                            values.extend_from_slice(v)
                        }
                        Some(RowValue::Embedding(v)) => {
                            return Err(self.row_err(
                                &r.key,
                                name,
                                format!("{} values, the job's embeddings have {dim}", v.len()),
                            ))
                        }
                        Some(_) => return Err(wrong(r)),
                    }
                }
                let field = Arc::new(Field::new("item", DataType::Float32, false));
                Ok(Arc::new(
                    FixedSizeListArray::try_new(
                        field,
                        i32::try_from(*dim).unwrap_or(i32::MAX),
                        Arc::new(Float32Array::from(values)),
                        Some(nulls),
                    )
                    .map_err(arrow_err)?,
                ))
            }
            ResultKind::Tensor => {
                let (mut shape, mut data) = (Vec::new(), Vec::new());
                let (mut shape_lens, mut data_lens) = (Vec::new(), Vec::new());
                for r in rows {
                    match &r.value {
                        None => {
                            shape_lens.push(0);
                            data_lens.push(0);
                        }
                        Some(RowValue::Tensor { shape: s, data: d }) => {
                            shape_lens.push(s.len());
                            data_lens.push(d.len());
                            shape.extend(s.iter().map(|&x| i64::try_from(x).unwrap_or(i64::MAX)));
                            data.extend_from_slice(d);
                        }
                        Some(_) => return Err(wrong(r)),
                    }
                }
                let list = |ty: DataType, lens: Vec<usize>, values: ArrayRef| {
                    ListArray::try_new(
                        Arc::new(Field::new("item", ty, false)),
                        OffsetBuffer::from_lengths(lens),
                        values,
                        None,
                    )
                };
                let shape = list(
                    DataType::Int64,
                    shape_lens,
                    Arc::new(Int64Array::from(shape)),
                )
                .map_err(arrow_err)?;
                let data = list(
                    DataType::Float32,
                    data_lens,
                    Arc::new(Float32Array::from(data)),
                )
                .map_err(arrow_err)?;
                Ok(Arc::new(
                    StructArray::try_new(
                        tensor_fields(),
                        vec![Arc::new(shape), Arc::new(data)],
                        Some(nulls),
                    )
                    .map_err(arrow_err)?,
                ))
            }
        }
    }
}

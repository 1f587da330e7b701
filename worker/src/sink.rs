//! The row sink seam: a shard's rows → one part file in the job's output format, written whole at
//! the part's key (readers see all of it or none), its SHA-256 returned for the done marker.
//!
//! Two sinks: [`JsonlSink`], one JSON object per line; and [`ParquetSink`], typed columns through
//! `spotbatch-records`' part writer. Both carry a record job's id and carried columns after
//! `key`, by name.

use async_trait::async_trait;
use bytes::Bytes;
use spotbatch_proto::manifest::PostKind;
use spotbatch_proto::{sha256_hex, OutputRow};
use spotbatch_records::{PartRow, PartSchema, PartWriter, Value, WriterOptions};
use spotbatch_store::{OutputFormat, Prefix};

/// One row of a shard: computed now (with the record's carried values, in the job's carried
/// order: the id column first, then the `output.columns`), or carried over from a partial result
/// (its JSON line as it was written, so a resumed shard's JSONL part is byte-identical to one
/// written in one go).
#[derive(Debug, Clone, PartialEq)]
pub enum Row {
    /// Computed in this attempt.
    New(OutputRow, Vec<Value>),
    /// Kept from a partial result.
    Kept {
        /// The row's JSON line, without its newline.
        line: String,
        /// Whether it is an error row.
        error: bool,
    },
}

impl Row {
    /// A row without carried values.
    pub fn new(row: OutputRow) -> Self {
        Row::New(row, Vec::new())
    }

    /// Whether the row carries an error.
    pub fn is_error(&self) -> bool {
        match self {
            Row::New(r, _) => r.error.is_some(),
            Row::Kept { error, .. } => *error,
        }
    }

    /// The row as one JSON line (with its newline), carried values under `names`.
    pub fn write_json_line(&self, names: &[String], out: &mut Vec<u8>) -> Result<(), SinkError> {
        match self {
            Row::New(r, values) => {
                let carried: Vec<(&str, serde_json::Value)> = names
                    .iter()
                    .map(String::as_str)
                    .zip(values.iter().map(Value::to_json))
                    .collect();
                r.serialize_with(&mut serde_json::Serializer::new(&mut *out), &carried)
                    .map_err(|e| SinkError {
                        key: r.key.clone(),
                        message: e.to_string(),
                    })?
            }
            Row::Kept { line, .. } => out.extend_from_slice(line.as_bytes()),
        }
        out.push(b'\n');
        Ok(())
    }
}

/// A part could not be written.
#[derive(Debug, thiserror::Error)]
#[error("cannot write the part for {key}: {message}")]
pub struct SinkError {
    /// The row's key, or the part's.
    pub key: String,
    /// Why.
    pub message: String,
}

/// Writes a shard's rows as one part file.
#[async_trait]
pub trait RowSink: Send + Sync + std::fmt::Debug {
    /// The format it writes.
    fn format(&self) -> OutputFormat;
    /// Writes `rows`, in order, whole as the file `key` below `prefix`; returns its hex SHA-256.
    /// The same rows give the same bytes.
    async fn write(&self, prefix: &Prefix, key: &str, rows: &[Row]) -> Result<String, SinkError>;
}

/// One JSON object per line, exactly one line per row.
#[derive(Debug, Clone, Default)]
pub struct JsonlSink {
    /// The carried columns' names, in the rows' carried order.
    carried: Vec<String>,
}

impl JsonlSink {
    /// Rows whose carried values go under `carried`.
    pub fn new(carried: Vec<String>) -> Self {
        Self { carried }
    }

    /// The rows' bytes.
    pub fn encode(&self, rows: &[Row]) -> Result<Vec<u8>, SinkError> {
        let mut body = Vec::with_capacity(rows.len() * 128);
        for row in rows {
            row.write_json_line(&self.carried, &mut body)?;
        }
        Ok(body)
    }
}

#[async_trait]
impl RowSink for JsonlSink {
    fn format(&self) -> OutputFormat {
        OutputFormat::Jsonl
    }

    async fn write(&self, prefix: &Prefix, key: &str, rows: &[Row]) -> Result<String, SinkError> {
        let body = self.encode(rows)?;
        let sha = sha256_hex(&body);
        prefix
            .put(key, Bytes::from(body))
            .await
            .map_err(|e| SinkError {
                key: key.to_string(),
                message: e.to_string(),
            })?;
        Ok(sha)
    }
}

/// Apache Parquet with typed columns (see `spotbatch_records::writer`): `key`, the id and
/// carried columns in their job types, the result, `error`.
#[derive(Debug, Clone)]
pub struct ParquetSink {
    schema: PartSchema,
    kind: PostKind,
    /// The carried columns' names, in the rows' carried order.
    carried: Vec<String>,
}

impl ParquetSink {
    /// Parts of `schema`, for rows of `kind`.
    pub fn new(schema: PartSchema, kind: PostKind) -> Self {
        let carried = schema
            .id
            .iter()
            .chain(&schema.columns)
            .map(|(n, _)| n.clone())
            .collect();
        Self {
            schema,
            kind,
            carried,
        }
    }

    /// A row as the writer takes it; a kept row's line is read back.
    fn part_row(&self, row: &Row) -> Result<PartRow, SinkError> {
        let (r, mut values) = match row {
            Row::New(r, values) => (r.clone(), values.clone()),
            Row::Kept { line, .. } => {
                let names: Vec<&str> = self.carried.iter().map(String::as_str).collect();
                let (r, json) =
                    OutputRow::from_json_line(line, self.kind, &names).ok_or_else(|| {
                        SinkError {
                            key: line.chars().take(80).collect(),
                            message: "a kept row of the partial result does not read back".into(),
                        }
                    })?;
                (r, json.into_iter().map(Value::from_json).collect())
            }
        };
        values.resize(self.carried.len(), Value::Null);
        let id = self.schema.id.as_ref().map(|_| values.remove(0));
        Ok(PartRow {
            key: r.key,
            id,
            columns: values,
            value: r.value,
            error: r.error,
        })
    }
}

#[async_trait]
impl RowSink for ParquetSink {
    fn format(&self) -> OutputFormat {
        OutputFormat::Parquet
    }

    async fn write(&self, prefix: &Prefix, key: &str, rows: &[Row]) -> Result<String, SinkError> {
        let fail = |message: String| SinkError {
            key: key.to_string(),
            message,
        };
        let path = prefix.path_of(key).map_err(|e| fail(e.to_string()))?;
        let mut w = PartWriter::create(
            prefix.store(),
            path,
            prefix.url_of(key),
            &self.schema,
            &WriterOptions::default(),
        )
        .map_err(|e| fail(e.to_string()))?;
        for row in rows {
            w.write(self.part_row(row)?)
                .await
                .map_err(|e| fail(e.to_string()))?;
        }
        let summary = w.finish().await.map_err(|e| fail(e.to_string()))?;
        Ok(summary.sha256)
    }
}

/// Checks every [`RowSink`] must pass, run by each implementation's tests: the same rows give the
/// same file, and `decode` (the implementation's reader) reads back every row's key and whether
/// it is an error, in order — kept rows included.
pub mod conformance {
    use super::*;
    use spotbatch_proto::{RowValue, Scored};

    /// Rows of every kind: new and kept, results and errors, awkward keys.
    pub fn rows() -> Vec<Row> {
        vec![
            Row::new(OutputRow {
                key: "a/ünï 1.png".into(),
                kind: PostKind::Classify,
                value: Some(RowValue::TopK(vec![Scored {
                    index: 3,
                    label: "three".into(),
                    score: 0.5,
                }])),
                error: None,
            }),
            Row::new(OutputRow::failed(
                "b\"quoted\".png".into(),
                PostKind::Classify,
                "not an image\n(unrecognised format)",
            )),
            Row::Kept {
                line: r#"{"key":"c.png","top_k":[{"index":1,"label":"one","score":0.25}],"error":null}"#
                    .into(),
                error: false,
            },
        ]
    }

    /// Runs the checks with `decode`, which reads a part back as (key, is error) per row.
    pub async fn check(sink: &dyn RowSink, decode: impl Fn(&[u8]) -> Vec<(String, bool)>) {
        let prefix = Prefix::open(
            &url::Url::parse(&format!("memory://sink-{}/out/", rand::random::<u64>()))
                .expect("a memory URL"),
        )
        .expect("a memory store");
        let rows = rows();
        let a = sink.write(&prefix, "a", &rows).await.expect("rows write");
        let b = sink
            .write(&prefix, "b", &rows)
            .await
            .expect("rows write again");
        assert_eq!(a, b, "the same rows give the same bytes");
        let bytes = prefix.get("a", 1 << 30).await.expect("the part exists");
        assert_eq!(a, sha256_hex(&bytes), "the returned hash is the file's");
        let want: Vec<(String, bool)> = vec![
            ("a/ünï 1.png".into(), false),
            ("b\"quoted\".png".into(), true),
            ("c.png".into(), false),
        ];
        assert_eq!(decode(&bytes), want, "every row, in order");
        sink.write(&prefix, "empty", &[])
            .await
            .expect("no rows write");
        let empty = prefix.get("empty", 1 << 30).await.expect("the part exists");
        assert!(decode(&empty).is_empty());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_jsonl(bytes: &[u8]) -> Vec<(String, bool)> {
        String::from_utf8(bytes.to_vec())
            .expect("UTF-8")
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).expect("a JSON line");
                (
                    v["key"].as_str().expect("a key").to_string(),
                    !v["error"].is_null(),
                )
            })
            .collect()
    }

    fn decode_parquet(bytes: &[u8]) -> Vec<(String, bool)> {
        use arrow_array::cast::AsArray;
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
            Bytes::copy_from_slice(bytes),
        )
        .expect("a Parquet file")
        .build()
        .expect("a reader");
        let mut out = Vec::new();
        for batch in reader {
            let batch = batch.expect("a batch");
            let keys = batch.column_by_name("key").expect("key").as_string::<i32>();
            let errors = batch.column_by_name("error").expect("error");
            for i in 0..batch.num_rows() {
                out.push((keys.value(i).to_string(), !errors.is_null(i)));
            }
        }
        out
    }

    #[tokio::test]
    async fn jsonl_passes_the_sink_checks() {
        conformance::check(&JsonlSink::default(), decode_jsonl).await;
    }

    #[tokio::test]
    async fn parquet_passes_the_sink_checks() {
        let schema = PartSchema {
            id: None,
            columns: Vec::new(),
            result: spotbatch_records::ResultKind::TopK,
        };
        conformance::check(
            &ParquetSink::new(schema, PostKind::Classify),
            decode_parquet,
        )
        .await;
    }

    #[test]
    fn jsonl_keeps_kept_lines_byte_for_byte_and_errors_on_one_line() {
        let body = JsonlSink::default().encode(&conformance::rows()).unwrap();
        let text = String::from_utf8(body).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(
            lines[2],
            r#"{"key":"c.png","top_k":[{"index":1,"label":"one","score":0.25}],"error":null}"#
        );
        assert!(lines[1].contains(r#""error":"not an image (unrecognised format)""#));
    }

    #[test]
    fn carried_values_follow_the_key_under_their_names() {
        let row = Row::New(
            OutputRow {
                key: "d.jsonl#0".into(),
                kind: PostKind::Embedding,
                value: Some(spotbatch_proto::RowValue::Embedding(vec![1.0])),
                error: None,
            },
            vec![Value::Int(7), Value::Str("en".into())],
        );
        let body = JsonlSink::new(vec!["id".into(), "lang".into()])
            .encode(&[row])
            .unwrap();
        assert_eq!(
            String::from_utf8(body).unwrap(),
            "{\"key\":\"d.jsonl#0\",\"id\":7,\"lang\":\"en\",\"embedding\":[1.0],\"error\":null}\n"
        );
    }
}

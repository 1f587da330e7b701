//! The row sink seam: a shard's rows → one part file in the job's output format. A sink encodes
//! the rows whole (the part is written in one put, so readers see all of it or none) and says
//! which format it writes (the part's key follows from it, `spotbatch-store`'s layout).
//!
//! Today: [`JsonlSink`], one JSON object per line.

use spotbatch_proto::OutputRow;
use spotbatch_store::OutputFormat;

/// One row of a shard: computed now, or carried over from a partial result (its JSON line as it
/// was written, so a resumed shard's part is byte-identical to one written in one go).
#[derive(Debug, Clone, PartialEq)]
pub enum Row {
    /// Computed in this attempt.
    New(OutputRow),
    /// Kept from a partial result.
    Kept {
        /// The row's JSON line, without its newline.
        line: String,
        /// Whether it is an error row.
        error: bool,
    },
}

impl Row {
    /// Whether the row carries an error.
    pub fn is_error(&self) -> bool {
        match self {
            Row::New(r) => r.error.is_some(),
            Row::Kept { error, .. } => *error,
        }
    }

    /// The row as one JSON line (with its newline).
    pub fn write_json_line(&self, out: &mut Vec<u8>) -> Result<(), SinkError> {
        match self {
            Row::New(r) => serde_json::to_writer(&mut *out, r).map_err(|e| SinkError {
                key: r.key.clone(),
                message: e.to_string(),
            })?,
            Row::Kept { line, .. } => out.extend_from_slice(line.as_bytes()),
        }
        out.push(b'\n');
        Ok(())
    }
}

/// A row could not be encoded.
#[derive(Debug, thiserror::Error)]
#[error("cannot encode the row for {key}: {message}")]
pub struct SinkError {
    /// The row's key.
    pub key: String,
    /// Why.
    pub message: String,
}

/// Encodes a shard's rows as one part file.
pub trait RowSink: Send + Sync + std::fmt::Debug {
    /// The format it writes.
    fn format(&self) -> OutputFormat;
    /// The part file's bytes for `rows`, in order. The same rows give the same bytes.
    fn encode(&self, rows: &[Row]) -> Result<Vec<u8>, SinkError>;
}

/// One JSON object per line, exactly one line per row.
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonlSink;

impl RowSink for JsonlSink {
    fn format(&self) -> OutputFormat {
        OutputFormat::Jsonl
    }

    fn encode(&self, rows: &[Row]) -> Result<Vec<u8>, SinkError> {
        let mut body = Vec::with_capacity(rows.len() * 128);
        for row in rows {
            row.write_json_line(&mut body)?;
        }
        Ok(body)
    }
}

/// Checks every [`RowSink`] must pass, run by each implementation's tests: the same rows give the
/// same bytes, and `decode` (the implementation's reader, e.g. a Parquet reader) reads back every
/// row's key and whether it is an error, in order — kept rows included.
pub mod conformance {
    use super::*;
    use spotbatch_proto::manifest::PostKind;
    use spotbatch_proto::{RowValue, Scored};

    /// Rows of every kind: new and kept, results and errors, awkward keys.
    pub fn rows() -> Vec<Row> {
        vec![
            Row::New(OutputRow {
                key: "a/ünï 1.png".into(),
                kind: PostKind::Classify,
                value: Some(RowValue::TopK(vec![Scored {
                    index: 3,
                    label: "three".into(),
                    score: 0.5,
                }])),
                error: None,
            }),
            Row::New(OutputRow::failed(
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
    pub fn check(sink: &dyn RowSink, decode: impl Fn(&[u8]) -> Vec<(String, bool)>) {
        let rows = rows();
        let a = sink.encode(&rows).expect("rows encode");
        let b = sink.encode(&rows).expect("rows encode again");
        assert_eq!(a, b, "the same rows give the same bytes");
        let back = decode(&a);
        let want: Vec<(String, bool)> = vec![
            ("a/ünï 1.png".into(), false),
            ("b\"quoted\".png".into(), true),
            ("c.png".into(), false),
        ];
        assert_eq!(back, want, "every row, in order");
        let empty = sink.encode(&[]).expect("no rows encode");
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

    #[test]
    fn jsonl_passes_the_sink_checks() {
        conformance::check(&JsonlSink, decode_jsonl);
    }

    #[test]
    fn jsonl_keeps_kept_lines_byte_for_byte_and_errors_on_one_line() {
        let body = JsonlSink.encode(&conformance::rows()).unwrap();
        let text = String::from_utf8(body).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(
            lines[2],
            r#"{"key":"c.png","top_k":[{"index":1,"label":"one","score":0.25}],"error":null}"#
        );
        assert!(lines[1].contains(r#""error":"not an image (unrecognised format)""#));
    }
}

//! Turning one framed JSONL line or CSV record into a [`Record`]: only the projected fields are
//! materialised (other JSON fields are skipped unparsed), values are conformed to the job's
//! types, and every problem is that record's [`RowError`]. No I/O.
//!
//! Blank lines (only whitespace in JSONL, empty in CSV) are not records: they are skipped, as
//! pandas, pyarrow and Spark do, and get no row.

use std::fmt;

use arrow_schema::DataType;
use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, Visitor};

use crate::error::{ReadError, RowError};
use crate::frame::Frame;
use crate::key::RecordKey;
use crate::record::{Fields, Projection, Record};
use crate::value::Value;

/// Builds the [`Fields`] of a record from a lookup of its values by column name (`None`: the
/// record has no such field).
fn assemble(
    key: &RecordKey,
    proj: &Projection,
    mut get: impl FnMut(&str) -> Result<Option<Value>, RowError>,
) -> Result<Fields, RowError> {
    let text = match &proj.text {
        None => None,
        Some(col) => Some(match get(col)? {
            None => {
                return Err(RowError::Missing {
                    key: key.clone(),
                    column: col.clone(),
                })
            }
            Some(Value::Null) => {
                return Err(RowError::Null {
                    key: key.clone(),
                    column: col.clone(),
                })
            }
            Some(Value::Str(s)) => s,
            Some(other) => {
                return Err(RowError::Type {
                    key: key.clone(),
                    column: col.clone(),
                    expected: "a string".into(),
                    found: other.describe(),
                })
            }
        }),
    };
    let mut carried = |c: &crate::record::Column| -> Result<Value, RowError> {
        let v = get(&c.name)?.unwrap_or(Value::Null);
        match &c.ty {
            None => Ok(v),
            Some(ty) => v.conform(ty).map_err(|m| RowError::Type {
                key: key.clone(),
                column: c.name.clone(),
                expected: m.expected,
                found: m.found,
            }),
        }
    };
    let id = proj.id.as_ref().map(&mut carried).transpose()?;
    let columns = proj
        .columns
        .iter()
        .map(&mut carried)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Fields { text, id, columns })
}

/// The types JSONL and CSV values can be conformed to.
pub(crate) fn check_plain_type(
    file: &str,
    column: &str,
    ty: &Option<DataType>,
) -> Result<(), ReadError> {
    match ty {
        None | Some(DataType::Utf8 | DataType::Int64 | DataType::Float64 | DataType::Boolean) => {
            Ok(())
        }
        Some(other) => Err(ReadError::ColumnType {
            file: file.to_string(),
            column: column.to_string(),
            expected: other.to_string(),
            found: "a JSON or CSV value (Utf8, Int64, Float64 or Boolean)".into(),
        }),
    }
}

/// Decodes JSONL lines.
#[derive(Debug, Clone)]
pub struct JsonDecoder {
    file: String,
    max: usize,
    proj: Projection,
    names: Vec<String>,
}

impl JsonDecoder {
    /// A decoder for lines of `file` (its key), extracting `proj`; `max_line_bytes` is the limit
    /// the framer applied (for messages).
    pub fn new(file: &str, proj: &Projection, max_line_bytes: usize) -> Self {
        Self {
            file: file.to_string(),
            max: max_line_bytes,
            names: proj.names().into_iter().map(String::from).collect(),
            proj: proj.clone(),
        }
    }

    /// The record of a frame; `None` for a blank line.
    pub fn decode(&self, frame: Frame) -> Option<Record> {
        let (offset, bytes) = match frame {
            Frame::TooLong { offset, len } => {
                return Some(too_long(&self.file, offset, len, self.max))
            }
            Frame::Record { offset, bytes, .. } => (offset, bytes),
        };
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return None;
        }
        let key = RecordKey::new(self.file.clone(), offset);
        let fields = self.fields(&key, &bytes);
        Some(Record { key, fields })
    }

    fn fields(&self, key: &RecordKey, bytes: &[u8]) -> Result<Fields, RowError> {
        let text = std::str::from_utf8(bytes).map_err(|_| RowError::Utf8 {
            key: key.clone(),
            column: "*".into(),
        })?;
        let first = text.trim_start().as_bytes().first().copied();
        let found = match first {
            Some(b'{') => None,
            Some(b'[') => Some("an array"),
            Some(b'"') => Some("a string"),
            Some(b'-' | b'0'..=b'9') => Some("a number"),
            Some(b't' | b'f') => Some("a boolean"),
            Some(b'n') => Some("null"),
            _ => None,
        };
        // A valid non-object line is NotObject; anything invalid is reported by serde_json.
        if let Some(found) = found {
            if serde_json::from_str::<IgnoredAny>(text).is_ok() {
                return Err(RowError::NotObject {
                    key: key.clone(),
                    found,
                });
            }
        }
        let mut de = serde_json::Deserializer::from_str(text);
        let picked = Picker { names: &self.names }
            .deserialize(&mut de)
            .and_then(|v| de.end().map(|()| v))
            .map_err(|e| RowError::Json {
                key: key.clone(),
                reason: e.to_string(),
            })?;
        let mut picked: Vec<Option<serde_json::Value>> = picked;
        assemble(key, &self.proj, |name| {
            Ok(self
                .names
                .iter()
                .position(|n| n == name)
                .and_then(|i| picked[i].take())
                .map(Value::from_json))
        })
    }
}

/// Picks the named fields of a JSON object, skipping the others unparsed.
struct Picker<'a> {
    names: &'a [String],
}

impl<'de> DeserializeSeed<'de> for Picker<'_> {
    type Value = Vec<Option<serde_json::Value>>;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Picker<'_> {
    type Value = Vec<Option<serde_json::Value>>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = vec![None; self.names.len()];
        while let Some(k) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            match self.names.iter().position(|n| *n == k) {
                Some(i) => out[i] = Some(map.next_value()?),
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(out)
    }
}

fn too_long(file: &str, offset: u64, len: u64, max: usize) -> Record {
    let key = RecordKey::new(file, offset);
    Record {
        fields: Err(RowError::TooLong {
            key: key.clone(),
            len,
            max,
        }),
        key,
    }
}

/// Splits one CSV record (no terminator) into its fields, unquoting them: the field bytes and
/// each field's end in them. `None` when the quoting is broken (the record does not parse as
/// exactly one record).
pub(crate) fn csv_fields(record: &[u8], delimiter: u8) -> Option<(Vec<u8>, Vec<usize>)> {
    let mut rdr = csv_core::ReaderBuilder::new().delimiter(delimiter).build();
    let mut input = Vec::with_capacity(record.len() + 1);
    input.extend_from_slice(record);
    input.push(b'\n');
    let mut out = vec![0u8; record.len() + 1];
    let mut ends = vec![0usize; record.len() + 2];
    let (res, nin, nout, nend) = rdr.read_record(&input, &mut out, &mut ends);
    if res != csv_core::ReadRecordResult::Record || nin != input.len() {
        return None;
    }
    out.truncate(nout);
    ends.truncate(nend);
    Some((out, ends))
}

/// Decodes CSV records against the file's header.
#[derive(Debug, Clone)]
pub struct CsvDecoder {
    file: String,
    max: usize,
    proj: Projection,
    delimiter: u8,
    header_offset: u64,
    header: Vec<String>,
}

impl CsvDecoder {
    /// A decoder for `file` (its key, `url` for messages) whose header record is `header` at
    /// `header_offset`. A projected column missing from the header is fatal.
    pub fn new(
        file: &str,
        url: &str,
        proj: &Projection,
        delimiter: u8,
        max_line_bytes: usize,
        header_offset: u64,
        header: &[u8],
    ) -> Result<Self, ReadError> {
        let bad = |reason: &str| ReadError::Header {
            file: url.to_string(),
            reason: reason.to_string(),
        };
        let (bytes, ends) = csv_fields(header, delimiter).ok_or_else(|| bad("broken quoting"))?;
        let mut names = Vec::with_capacity(ends.len());
        let mut from = 0;
        for &e in &ends {
            let name = std::str::from_utf8(&bytes[from..e]).map_err(|_| bad("invalid UTF-8"))?;
            names.push(name.to_string());
            from = e;
        }
        for n in proj.names() {
            if !names.iter().any(|h| h == n) {
                return Err(ReadError::MissingColumn {
                    file: url.to_string(),
                    column: n.to_string(),
                });
            }
        }
        for c in proj.id.iter().chain(&proj.columns) {
            check_plain_type(url, &c.name, &c.ty)?;
        }
        Ok(Self {
            file: file.to_string(),
            max: max_line_bytes,
            proj: proj.clone(),
            delimiter,
            header_offset,
            header: names,
        })
    }

    /// The header's column names.
    pub fn header(&self) -> &[String] {
        &self.header
    }

    /// The record of a frame; `None` for an empty line or the header itself.
    pub fn decode(&self, frame: Frame) -> Option<Record> {
        let (offset, bytes, open_quote) = match frame {
            Frame::TooLong { offset, len } => {
                return Some(too_long(&self.file, offset, len, self.max))
            }
            Frame::Record {
                offset,
                bytes,
                open_quote,
            } => (offset, bytes, open_quote),
        };
        if bytes.is_empty() || offset == self.header_offset {
            return None;
        }
        let key = RecordKey::new(self.file.clone(), offset);
        let fields = if open_quote {
            Err(RowError::Unterminated { key: key.clone() })
        } else {
            self.fields(&key, &bytes)
        };
        Some(Record { key, fields })
    }

    fn fields(&self, key: &RecordKey, bytes: &[u8]) -> Result<Fields, RowError> {
        let (data, ends) = csv_fields(bytes, self.delimiter)
            .ok_or_else(|| RowError::Unterminated { key: key.clone() })?;
        if ends.len() != self.header.len() {
            return Err(RowError::FieldCount {
                key: key.clone(),
                expected: self.header.len(),
                found: ends.len(),
            });
        }
        let field = |name: &str| -> Result<Option<Value>, RowError> {
            let Some(i) = self.header.iter().position(|h| h == name) else {
                return Ok(None);
            };
            let from = if i == 0 { 0 } else { ends[i - 1] };
            let s = std::str::from_utf8(&data[from..ends[i]]).map_err(|_| RowError::Utf8 {
                key: key.clone(),
                column: name.to_string(),
            })?;
            Ok(Some(Value::Str(s.to_string())))
        };
        assemble(key, &self.proj, |name| {
            let v = field(name)?;
            // An empty CSV field is null for non-string columns (as pandas and pyarrow read it).
            let typed = self
                .proj
                .id
                .iter()
                .chain(&self.proj.columns)
                .find(|c| c.name == name)
                .and_then(|c| c.ty.as_ref())
                .is_some_and(|t| *t != DataType::Utf8);
            Ok(match v {
                Some(Value::Str(s)) if s.is_empty() && typed => Some(Value::Null),
                v => v,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Column;

    fn proj() -> Projection {
        Projection {
            text: Some("text".into()),
            id: Some(Column {
                name: "id".into(),
                ty: Some(DataType::Int64),
            }),
            columns: vec![Column::named("lang")],
        }
    }

    fn frame(offset: u64, s: &[u8]) -> Frame {
        Frame::Record {
            offset,
            bytes: s.to_vec(),
            open_quote: false,
        }
    }

    #[test]
    fn json_lines_give_fields_or_row_errors() {
        let d = JsonDecoder::new("a.jsonl", &proj(), 100);
        let r = d
            .decode(frame(
                7,
                br#"{"id": 3, "text": "hi", "big": {"x": [1,2,3]}, "lang": "en"}"#,
            ))
            .unwrap();
        assert_eq!(r.key.to_string(), "a.jsonl#7");
        let f = r.fields.unwrap();
        assert_eq!(f.text.as_deref(), Some("hi"));
        assert_eq!(f.id, Some(Value::Int(3)));
        assert_eq!(f.columns, vec![Value::Str("en".into())]);

        let err = |line: &[u8]| {
            d.decode(frame(0, line))
                .unwrap()
                .fields
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            err(br#"{"id": 1}"#),
            r#"a.jsonl#0: column "text" is missing"#
        );
        assert_eq!(
            err(br#"{"text": null}"#),
            r#"a.jsonl#0: column "text" is null"#
        );
        assert_eq!(
            err(br#"{"text": 5}"#),
            r#"a.jsonl#0: column "text": expected a string, found an integer"#
        );
        assert_eq!(
            err(br#"{"text": "x", "id": "abc"}"#),
            r#"a.jsonl#0: column "id": expected Int64, found "abc""#
        );
        assert_eq!(
            err(b"[1,2]"),
            "a.jsonl#0: not a JSON object (found an array)"
        );
        assert!(err(br#"{"text": "x""#).starts_with("a.jsonl#0: malformed JSON: EOF"));
        assert!(err(br#"{"text": "x"} trailing"#).contains("trailing characters"));
        assert_eq!(
            err(b"{\"text\": \"\xff\"}"),
            r#"a.jsonl#0: column "*": invalid UTF-8"#
        );
        assert!(d.decode(frame(0, b"  \t ")).is_none());
        let missing_id = d
            .decode(frame(0, br#"{"text": "x"}"#))
            .unwrap()
            .fields
            .unwrap();
        assert_eq!(missing_id.id, Some(Value::Null));
        assert_eq!(missing_id.columns, vec![Value::Null]);
    }

    #[test]
    fn csv_records_give_fields_or_row_errors() {
        let d = CsvDecoder::new(
            "a.csv",
            "mem://a.csv",
            &proj(),
            b',',
            100,
            0,
            b"id,text,lang",
        )
        .unwrap();
        let r = d
            .decode(frame(13, b"5,\"hello, \"\"you\"\"\nthere\",en"))
            .unwrap();
        let f = r.fields.unwrap();
        assert_eq!(f.text.as_deref(), Some("hello, \"you\"\nthere"));
        assert_eq!(f.id, Some(Value::Int(5)));
        assert_eq!(f.columns, vec![Value::Str("en".into())]);
        let err = |rec: &[u8]| {
            d.decode(frame(9, rec))
                .unwrap()
                .fields
                .unwrap_err()
                .to_string()
        };
        assert_eq!(err(b"1,x"), "a.csv#9: 2 fields, the header has 3");
        assert_eq!(
            err(b"x,y,z"),
            r#"a.csv#9: column "id": expected Int64, found "x""#
        );
        assert_eq!(
            err(b"1,\xff,en"),
            r#"a.csv#9: column "text": invalid UTF-8"#
        );
        let empty_id = d.decode(frame(9, b",t,")).unwrap().fields.unwrap();
        assert_eq!(empty_id.id, Some(Value::Null));
        assert_eq!(empty_id.columns, vec![Value::Str(String::new())]);
        assert!(
            d.decode(frame(0, b"id,text,lang")).is_none(),
            "the header is no record"
        );
        assert!(d.decode(frame(20, b"")).is_none());
        let open = Frame::Record {
            offset: 30,
            bytes: b"1,\"never closed".to_vec(),
            open_quote: true,
        };
        assert_eq!(
            d.decode(open).unwrap().fields.unwrap_err().to_string(),
            "a.csv#30: unterminated quoted field"
        );
        match CsvDecoder::new("a.csv", "mem://a.csv", &proj(), b',', 100, 0, b"id,body") {
            Err(e) => assert_eq!(e.to_string(), r#"mem://a.csv: has no column "text""#),
            Ok(_) => panic!("a missing column must be fatal"),
        }
    }
}

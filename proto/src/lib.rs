//! spotbatch's wire contracts and data model, versioned: the job [`manifest`], the queue message
//! for one shard ([`ShardTask`]), the output row ([`OutputRow`]) and the shard's done marker
//! ([`DoneMarker`]).
//!
//! Everything here is plain data with serde; no I/O beyond reading a manifest file.
#![warn(missing_docs)]

mod field;
pub mod manifest;
pub mod rfc3339;
pub mod split;
mod table;

/// The gRPC APIs, generated at build time: the coordinator's (`proto/coordinator.proto`) and the
/// workers' to each other for work stealing (`proto/peer.proto`).
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod api {
    tonic::include_proto!("spotbatch.v1");
}

use serde::{ser::SerializeMap, Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use manifest::{
    Deadline, FieldError, JobSpec, Manifest, ManifestError, RawManifest, ShardSize,
};

/// The version of a [`ShardTask`] naming its input keys (one object per item).
pub const TASK_VERSION: u32 = 1;
/// The version of a [`ShardTask`] naming a part of a record file ([`split::Split`]); builds that
/// only know version 1 refuse it rather than misread it.
pub const TASK_VERSION_SPLIT: u32 = 2;

/// One queue message: a shard of a job. Small and self-describing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardTask {
    /// [`TASK_VERSION`] (keys) or [`TASK_VERSION_SPLIT`] (a split): a message with another
    /// version is not ours to interpret.
    pub v: u32,
    /// The job id (`name-DIGEST`).
    pub job: String,
    /// The shard id ([`shard_id`]).
    pub shard: String,
    /// Position of the shard in the job's plan (0-based), for people reading logs.
    pub index: u32,
    /// Digest of the job's manifest, to find it and to check it is the right one.
    pub manifest_digest: String,
    /// Input keys, relative to the job's input prefix, in order (version 1; empty in version 2).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<String>,
    /// The part of a record file the shard is (version 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<split::Split>,
    /// Where the job's stored manifest is (`OUTPUT/JOB/_manifest.json`), for workers that were not
    /// given the manifest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest: Option<String>,
}

/// Why a queue message could not be read as a [`ShardTask`].
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    /// Not JSON, or not a spotbatch shard.
    #[error("not a spotbatch shard message ({0})")]
    Foreign(String),
    /// A spotbatch shard of a version this build does not know.
    #[error(
        "shard message version {0} is not supported (this build reads versions {TASK_VERSION} and {TASK_VERSION_SPLIT})"
    )]
    Version(u32),
}

impl ShardTask {
    /// The JSON body for the queue.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Reads a queue body, refusing foreign and unknown-version messages.
    pub fn from_bytes(body: &[u8]) -> Result<Self, TaskError> {
        #[derive(Deserialize)]
        struct Probe {
            v: Option<u32>,
        }
        // serde's messages quote the offending text (a field name may hold a newline): the
        // reason is logged and becomes the dead letter's, one line.
        let foreign = |e: serde_json::Error| TaskError::Foreign(manifest::one_line(&e.to_string()));
        let probe: Probe = serde_json::from_slice(body).map_err(foreign)?;
        match probe.v {
            Some(TASK_VERSION | TASK_VERSION_SPLIT) => {}
            Some(other) => return Err(TaskError::Version(other)),
            None => return Err(TaskError::Foreign("no version field \"v\"".into())),
        }
        let task: ShardTask = serde_json::from_slice(body).map_err(foreign)?;
        if task.shard.is_empty() || task.job.is_empty() {
            return Err(TaskError::Foreign("empty job or shard".into()));
        }
        match (task.v, task.keys.is_empty(), &task.split) {
            (TASK_VERSION, false, None) | (TASK_VERSION_SPLIT, true, Some(_)) => Ok(task),
            (TASK_VERSION, _, _) => Err(TaskError::Foreign(
                "a version 1 shard names its keys and no split".into(),
            )),
            _ => Err(TaskError::Foreign(
                "a version 2 shard names a split and no keys".into(),
            )),
        }
    }
}

/// A shard's id: a hash of the job id, its first and last keys and its size, so the same manifest
/// over the same inputs always yields the same shards.
pub fn shard_id(job: &str, keys: &[String]) -> String {
    let mut h = Sha256::new();
    for part in [
        job,
        keys.first().map(String::as_str).unwrap_or(""),
        keys.last().map(String::as_str).unwrap_or(""),
    ] {
        h.update(part.as_bytes());
        h.update([0u8]);
    }
    h.update((keys.len() as u64).to_le_bytes());
    hex::encode(&h.finalize()[..8])
}

/// A record shard's id: a hash of the job id and exactly the part of the file it is.
pub fn split_shard_id(job: &str, split: &split::Split) -> String {
    let mut h = Sha256::new();
    for part in [job, "split", &split.id_input()] {
        h.update(part.as_bytes());
        h.update([0u8]);
    }
    hex::encode(&h.finalize()[..8])
}

/// Compiles an input glob (`*` stays within one folder, `**` crosses folders).
pub fn compile_glob(glob: &str) -> Result<globset::GlobMatcher, globset::Error> {
    Ok(globset::GlobBuilder::new(glob)
        .literal_separator(true)
        .build()?
        .compile_matcher())
}

/// One scored class in a classify row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scored {
    /// Class index in the model's output.
    pub index: usize,
    /// The line of the labels file, or the index as a string.
    pub label: String,
    /// The score (after softmax when asked for).
    pub score: f32,
}

/// The result part of a row.
#[derive(Debug, Clone, PartialEq)]
pub enum RowValue {
    /// Classify: best classes first.
    TopK(Vec<Scored>),
    /// Embedding: the vector.
    Embedding(Vec<f32>),
    /// Raw: one item's output tensor.
    Tensor {
        /// Its shape (without the batch dimension).
        shape: Vec<usize>,
        /// Its values, row-major.
        data: Vec<f32>,
    },
}

/// One output row: exactly one per input key. Serialises as a JSON object with `key`, the kind's
/// field (`top_k`, `embedding` or `tensor`; `null` when the item failed) and `error`.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputRow {
    /// The input's key relative to the input prefix, `/`-separated.
    pub key: String,
    /// Which field the row carries.
    pub kind: manifest::PostKind,
    /// The result, or `None` when the item failed.
    pub value: Option<RowValue>,
    /// Why the item failed, one line; `None` on success.
    pub error: Option<String>,
}

impl OutputRow {
    /// A failed item.
    pub fn failed(key: String, kind: manifest::PostKind, error: impl AsRef<str>) -> Self {
        Self {
            key,
            kind,
            value: None,
            error: Some(manifest::one_line(error.as_ref())),
        }
    }
}

impl Serialize for OutputRow {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.serialize_with(s, &[])
    }
}

/// A row's JSON field for its kind.
fn result_field(kind: manifest::PostKind) -> &'static str {
    match kind {
        manifest::PostKind::Classify => "top_k",
        manifest::PostKind::Embedding => "embedding",
        manifest::PostKind::Raw => "tensor",
    }
}

impl OutputRow {
    /// Serialises the row as a JSON object: `key`, then the `carried` columns (the input's id and
    /// carried columns, by name), then the kind's field and `error`.
    pub fn serialize_with<S: serde::Serializer>(
        &self,
        s: S,
        carried: &[(&str, serde_json::Value)],
    ) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Tensor<'a> {
            shape: &'a [usize],
            data: &'a [f32],
        }
        let mut m = s.serialize_map(Some(3 + carried.len()))?;
        m.serialize_entry("key", &self.key)?;
        for (name, v) in carried {
            m.serialize_entry(name, v)?;
        }
        let field = result_field(self.kind);
        match &self.value {
            None => m.serialize_entry(field, &())?,
            Some(RowValue::TopK(t)) => m.serialize_entry(field, t)?,
            Some(RowValue::Embedding(v)) => m.serialize_entry(field, v)?,
            Some(RowValue::Tensor { shape, data }) => {
                m.serialize_entry(field, &Tensor { shape, data })?
            }
        }
        m.serialize_entry("error", &self.error)?;
        m.end()
    }

    /// Reads back a row written by [`OutputRow::serialize_with`] (a partial result's line), with
    /// the values of the `carried` names as written; `None` when the line is not such a row.
    pub fn from_json_line(
        line: &str,
        kind: manifest::PostKind,
        carried: &[&str],
    ) -> Option<(Self, Vec<serde_json::Value>)> {
        #[derive(Deserialize)]
        struct Tensor {
            shape: Vec<usize>,
            data: Vec<f32>,
        }
        let mut v: serde_json::Map<String, serde_json::Value> = serde_json::from_str(line).ok()?;
        let key = v.remove("key")?.as_str()?.to_string();
        let error = match v.remove("error") {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(e)) => Some(e),
            Some(_) => return None,
        };
        let value = match v.remove(result_field(kind)) {
            None | Some(serde_json::Value::Null) => None,
            Some(x) => Some(match kind {
                manifest::PostKind::Classify => RowValue::TopK(serde_json::from_value(x).ok()?),
                manifest::PostKind::Embedding => {
                    RowValue::Embedding(serde_json::from_value(x).ok()?)
                }
                manifest::PostKind::Raw => {
                    let t: Tensor = serde_json::from_value(x).ok()?;
                    RowValue::Tensor {
                        shape: t.shape,
                        data: t.data,
                    }
                }
            }),
        };
        let carried = carried
            .iter()
            .map(|n| v.remove(*n).unwrap_or(serde_json::Value::Null))
            .collect();
        Some((
            Self {
                key,
                kind,
                value,
                error,
            },
            carried,
        ))
    }
}

/// Written after a shard's part file, before its ack: the shard is finished.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DoneMarker {
    /// The job id.
    pub job: String,
    /// The shard id.
    pub shard: String,
    /// Rows written (one per input key).
    pub items: u64,
    /// Rows with an error.
    pub errors: u64,
    /// The part file, relative to the job's output prefix.
    pub part: String,
    /// Hex SHA-256 of the part file.
    pub sha256: String,
}

/// Hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_ids_are_stable_and_distinct() {
        let keys: Vec<String> = ["a.png", "b.png"].iter().map(|s| s.to_string()).collect();
        assert_eq!(shard_id("j", &keys), shard_id("j", &keys));
        assert_ne!(shard_id("j", &keys), shard_id("k", &keys));
        assert_ne!(shard_id("j", &keys), shard_id("j", &keys[..1]));
        assert_eq!(shard_id("j", &keys).len(), 16);
    }

    #[test]
    fn task_roundtrip_and_foreign_messages() {
        let t = ShardTask {
            v: TASK_VERSION,
            job: "j-1".into(),
            shard: "abc".into(),
            index: 0,
            manifest_digest: "d".into(),
            keys: vec!["ünï/ 1.png".into()],
            split: None,
            manifest: Some("s3://b/out/j-1/_manifest.json".into()),
        };
        assert_eq!(ShardTask::from_bytes(&t.to_bytes()).unwrap(), t);
        let s = ShardTask {
            v: TASK_VERSION_SPLIT,
            keys: Vec::new(),
            split: Some(split::Split::Jsonl(split::ByteSplit {
                key: "data/a.jsonl".into(),
                size: 100,
                start: 0,
                end: 50,
            })),
            ..t.clone()
        };
        assert_eq!(ShardTask::from_bytes(&s.to_bytes()).unwrap(), s);
        // A version 2 shard without its split, or a version 1 shard with one, is not ours.
        let mut bad = s.clone();
        bad.v = TASK_VERSION;
        assert!(matches!(
            ShardTask::from_bytes(&bad.to_bytes()),
            Err(TaskError::Foreign(_))
        ));
        assert!(matches!(
            ShardTask::from_bytes(b"\x00\xff garbage"),
            Err(TaskError::Foreign(_))
        ));
        assert!(matches!(
            ShardTask::from_bytes(br#"{"hello":"world"}"#),
            Err(TaskError::Foreign(_))
        ));
        assert!(matches!(
            ShardTask::from_bytes(br#"{"v":99,"x":1}"#),
            Err(TaskError::Version(99))
        ));
        // Found by fuzzing: serde quotes an unknown field's name, newline and all.
        let e = ShardTask::from_bytes(b"{\"v\":1,\"m\nifest\":1}").unwrap_err();
        assert!(matches!(e, TaskError::Foreign(_)));
        assert!(!e.to_string().contains('\n'), "one line: {e}");
    }

    #[test]
    fn rows_with_carried_columns_read_back_as_written() {
        let row = OutputRow {
            key: "docs.jsonl#120".into(),
            kind: manifest::PostKind::Embedding,
            value: Some(RowValue::Embedding(vec![0.5, -0.25])),
            error: None,
        };
        let carried = [
            ("id", serde_json::json!(42)),
            ("lang", serde_json::json!("en")),
        ];
        let mut out = Vec::new();
        row.serialize_with(&mut serde_json::Serializer::new(&mut out), &carried)
            .unwrap();
        let line = String::from_utf8(out).unwrap();
        assert_eq!(
            line,
            r#"{"key":"docs.jsonl#120","id":42,"lang":"en","embedding":[0.5,-0.25],"error":null}"#
        );
        let (back, values) =
            OutputRow::from_json_line(&line, manifest::PostKind::Embedding, &["id", "lang"])
                .unwrap();
        assert_eq!(back, row);
        assert_eq!(values, vec![serde_json::json!(42), serde_json::json!("en")]);
        assert!(OutputRow::from_json_line("not json", manifest::PostKind::Raw, &[]).is_none());
    }

    #[test]
    fn rows_serialise_with_the_kind_field_and_error() {
        let ok = OutputRow {
            key: "k".into(),
            kind: manifest::PostKind::Classify,
            value: Some(RowValue::TopK(vec![Scored {
                index: 3,
                label: "three".into(),
                score: 0.5,
            }])),
            error: None,
        };
        assert_eq!(
            serde_json::to_string(&ok).unwrap(),
            r#"{"key":"k","top_k":[{"index":3,"label":"three","score":0.5}],"error":null}"#
        );
        let bad = OutputRow::failed(
            "k".into(),
            manifest::PostKind::Embedding,
            "truncated\nimage",
        );
        assert_eq!(
            serde_json::to_string(&bad).unwrap(),
            r#"{"key":"k","embedding":null,"error":"truncated image"}"#
        );
    }
}

//! spotbatch's wire contracts and data model, versioned: the job [`manifest`], the queue message
//! for one shard ([`ShardTask`]), the output row ([`OutputRow`]) and the shard's done marker
//! ([`DoneMarker`]).
//!
//! Everything here is plain data with serde; no I/O beyond reading a manifest file.
#![warn(missing_docs)]

pub mod manifest;
mod table;

/// The gRPC APIs, generated at build time: the coordinator's (`proto/coordinator.proto`) and the
/// workers' to each other for work stealing (`proto/peer.proto`).
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod api {
    tonic::include_proto!("spotbatch.v1");
}

use serde::{ser::SerializeMap, Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use manifest::{FieldError, Manifest, ManifestError, RawManifest};

/// The version of [`ShardTask`] this build writes and reads.
pub const TASK_VERSION: u32 = 1;

/// One queue message: a shard of a job. Small and self-describing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardTask {
    /// Always [`TASK_VERSION`]: a message with another version is not ours to interpret.
    pub v: u32,
    /// The job id (`name-DIGEST`).
    pub job: String,
    /// The shard id ([`shard_id`]).
    pub shard: String,
    /// Position of the shard in the job's plan (0-based), for people reading logs.
    pub index: u32,
    /// Digest of the job's manifest, to find it and to check it is the right one.
    pub manifest_digest: String,
    /// Input keys, relative to the job's input prefix, in order.
    pub keys: Vec<String>,
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
        "shard message version {0} is not supported (this build reads version {TASK_VERSION})"
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
        let probe: Probe =
            serde_json::from_slice(body).map_err(|e| TaskError::Foreign(e.to_string()))?;
        match probe.v {
            Some(TASK_VERSION) => {}
            Some(other) => return Err(TaskError::Version(other)),
            None => return Err(TaskError::Foreign("no version field \"v\"".into())),
        }
        let task: ShardTask =
            serde_json::from_slice(body).map_err(|e| TaskError::Foreign(e.to_string()))?;
        if task.keys.is_empty() || task.shard.is_empty() || task.job.is_empty() {
            return Err(TaskError::Foreign("empty job, shard or key list".into()));
        }
        Ok(task)
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
        #[derive(Serialize)]
        struct Tensor<'a> {
            shape: &'a [usize],
            data: &'a [f32],
        }
        let mut m = s.serialize_map(Some(3))?;
        m.serialize_entry("key", &self.key)?;
        let field = match self.kind {
            manifest::PostKind::Classify => "top_k",
            manifest::PostKind::Embedding => "embedding",
            manifest::PostKind::Raw => "tensor",
        };
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
            manifest: Some("s3://b/out/j-1/_manifest.json".into()),
        };
        assert_eq!(ShardTask::from_bytes(&t.to_bytes()).unwrap(), t);
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

//! A job's output layout: the one place that spells the keys under a job's output prefix
//! (`output.uri/JOB_ID/`), and reads them back.
//!
//! - `part-SHARD.jsonl` (or `.parquet`): one row per input of the shard, written whole;
//! - `_done/SHARD.json`: the shard's [`DoneMarker`], written after its part file, before the ack;
//! - `_partial/SHARD.jsonl`: rows a drained worker finished before handing the shard back (the
//!   keys in it are the resume cursor); deleted once the shard is done;
//! - `_cost/WORKER.json`: a worker's [`Ledger`] for the job;
//! - `_manifest.json`: the manifest the job was planned from, every location resolved;
//! - `_schema.json`: a record job's columns with the types fixed at planning (every part file of
//!   the job has the same schema).

use bytes::Bytes;
use spotbatch_proto::{DoneMarker, Manifest};

use crate::ledger::Ledger;
use crate::storage::{Prefix, StorageError};

/// The format of a job's part files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutputFormat {
    /// One JSON object per line.
    #[default]
    Jsonl,
    /// Apache Parquet.
    Parquet,
}

impl OutputFormat {
    /// The part files' extension, without the dot.
    pub fn extension(self) -> &'static str {
        match self {
            OutputFormat::Jsonl => "jsonl",
            OutputFormat::Parquet => "parquet",
        }
    }
}

/// Where a job's results and state live.
#[derive(Debug, Clone)]
pub struct JobLayout {
    /// The job's output prefix (`output.uri/JOB_ID/`).
    pub prefix: Prefix,
}

/// Largest done marker or ledger read back (they are small JSON documents).
const MAX_STATE_FILE_BYTES: u64 = 16 << 20;

impl JobLayout {
    /// Key of the stored manifest.
    pub const MANIFEST_KEY: &'static str = "_manifest.json";
    /// Key of a record job's column types.
    pub const SCHEMA_KEY: &'static str = "_schema.json";
    const DONE_DIR: &'static str = "_done/";
    const PARTIAL_DIR: &'static str = "_partial/";
    const COST_DIR: &'static str = "_cost/";

    /// The layout for a manifest.
    pub fn for_manifest(m: &Manifest) -> Result<Self, StorageError> {
        Ok(Self {
            prefix: Prefix::open(&m.output)?,
        })
    }

    /// Key of a shard's JSONL part file.
    pub fn part_key(shard: &str) -> String {
        Self::part_key_as(shard, OutputFormat::Jsonl)
    }

    /// Key of a shard's part file in `format`.
    pub fn part_key_as(shard: &str, format: OutputFormat) -> String {
        format!("part-{shard}.{}", format.extension())
    }

    /// Key of a shard's done marker.
    pub fn done_key(shard: &str) -> String {
        format!("{}{shard}.json", Self::DONE_DIR)
    }

    /// Key of a shard's partial result (rows finished before a drain; its keys are the cursor).
    pub fn partial_key(shard: &str) -> String {
        format!("{}{shard}.jsonl", Self::PARTIAL_DIR)
    }

    /// Key of a worker's cost ledger; characters other than ASCII letters, digits, `-`, `_` and
    /// `.` in the worker's name become `_`.
    pub fn ledger_key(worker: &str) -> String {
        let safe: String = worker
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        format!("{}{safe}.json", Self::COST_DIR)
    }

    /// Whether `key` (relative to the job's prefix) is a done marker.
    pub fn is_done_key(key: &str) -> bool {
        key.strip_prefix(Self::DONE_DIR)
            .is_some_and(|rest| rest.ends_with(".json"))
    }

    /// Whether `key` (relative to the job's prefix) is a cost ledger.
    pub fn is_ledger_key(key: &str) -> bool {
        key.strip_prefix(Self::COST_DIR)
            .is_some_and(|rest| rest.ends_with(".json"))
    }

    /// Reads every done marker of the job. Markers that do not parse are reported as not done
    /// (the shard will be redone and the marker rewritten).
    pub async fn done_markers(&self) -> Result<Vec<DoneMarker>, StorageError> {
        let mut out = Vec::new();
        for listed in self.prefix.list().await? {
            if !Self::is_done_key(&listed.key) {
                continue;
            }
            if let Some(bytes) = self.prefix.get_opt(&listed.key).await? {
                match serde_json::from_slice::<DoneMarker>(&bytes) {
                    Ok(m) => out.push(m),
                    Err(e) => {
                        tracing::warn!(key = %listed.key, error = %e, "ignoring unreadable done marker")
                    }
                }
            }
        }
        Ok(out)
    }

    /// Stores the manifest beside the results (same content each time), for workers that find the
    /// job through a shard's reference.
    pub async fn store_manifest(&self, m: &Manifest) -> Result<(), StorageError> {
        self.prefix
            .put(Self::MANIFEST_KEY, Bytes::from(m.to_stored()))
            .await
    }

    /// Reads every cost ledger and done marker of the job (for `spotbatch cost` and `report`).
    pub async fn read_files(&self) -> Result<JobFiles, ReadError> {
        let mut files = JobFiles::default();
        for item in self.prefix.list().await? {
            let key = item.key;
            let (is_cost, is_done) = (Self::is_ledger_key(&key), Self::is_done_key(&key));
            if !is_cost && !is_done {
                continue;
            }
            let bytes = self
                .prefix
                .get(&key, MAX_STATE_FILE_BYTES)
                .await
                .map_err(|e| ReadError::Read {
                    key: key.clone(),
                    message: e.to_string(),
                })?;
            let bad = |e: serde_json::Error, what: &'static str| ReadError::Parse {
                key: key.clone(),
                what,
                message: e.to_string(),
            };
            if is_cost {
                files
                    .ledgers
                    .push(serde_json::from_slice(&bytes).map_err(|e| bad(e, "a cost ledger"))?);
            } else {
                files
                    .markers
                    .push(serde_json::from_slice(&bytes).map_err(|e| bad(e, "a done marker"))?);
            }
        }
        Ok(files)
    }
}

/// A job's ledgers and done markers, read back.
#[derive(Debug, Clone, Default)]
pub struct JobFiles {
    /// One per worker that worked on the job.
    pub ledgers: Vec<Ledger>,
    /// One per finished shard.
    pub markers: Vec<DoneMarker>,
}

/// Why a job's files could not be read back.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// Listing failed.
    #[error(transparent)]
    List(#[from] StorageError),
    /// One file could not be read.
    #[error("reading {key}: {message}")]
    Read {
        /// The file's key below the job's prefix.
        key: String,
        /// Why.
        message: String,
    },
    /// One file is not what its name says.
    #[error("{key}: not {what}: {message}")]
    Parse {
        /// The file's key below the job's prefix.
        key: String,
        /// What it should be.
        what: &'static str,
        /// The parser's complaint.
        message: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_spelled_once_and_recognised() {
        assert_eq!(JobLayout::part_key("ab"), "part-ab.jsonl");
        assert_eq!(
            JobLayout::part_key_as("ab", OutputFormat::Parquet),
            "part-ab.parquet"
        );
        assert!(JobLayout::is_done_key(&JobLayout::done_key("ab")));
        assert!(!JobLayout::is_done_key(&JobLayout::partial_key("ab")));
        assert!(JobLayout::is_ledger_key(&JobLayout::ledger_key("w 1/é")));
        assert_eq!(JobLayout::ledger_key("w 1/é"), "_cost/w_1__.json");
        assert!(!JobLayout::is_ledger_key("_cost/x.txt"));
    }
}

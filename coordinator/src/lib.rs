//! Planning and job state: list a job's inputs through object storage, cut them into
//! deterministic shards, enqueue the shards that are not done yet, and read progress back from
//! the done markers that workers write.
//!
//! Layout of a job's output prefix (`output.uri/JOB_ID/`):
//! - `part-SHARD.jsonl`: one row per input of the shard, written whole;
//! - `_done/SHARD.json`: the shard's [`DoneMarker`], written after its part file;
//! - `_manifest.json`: the manifest the job was planned from, locations resolved.
#![warn(missing_docs)]

pub mod client;
pub mod plan;
pub mod server;
pub mod service;
pub mod storage;

pub use plan::{enqueue_plan, plan_job, JobLayout, Plan, PlanError, SubmitReport};
pub use storage::{GetError, Listed, Prefix, StorageError};

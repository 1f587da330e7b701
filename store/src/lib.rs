//! Object storage and the one owner of a job's output layout.
//!
//! - [`storage`]: a prefix URL (`file:///…/`, `s3://bucket/prefix/`) becomes a [`Prefix`] (a store
//!   plus a root path); keys below it are `/`-separated strings, any Unicode.
//! - [`layout`]: where everything of a job lives under its output prefix (`output.uri/JOB_ID/`):
//!   part files, done markers, partial results, cost ledgers, the stored manifest. Nothing else
//!   spells these keys.
//! - [`ledger`]: a worker's cost ledger per job (`_cost/WORKER.json`) and prices.
//! - [`cost`] and [`timeline`]: what is computed from a job's ledgers and done markers (the cost
//!   report of `spotbatch cost`, the timeline of `spotbatch report`).
#![warn(missing_docs)]

pub mod cost;
pub mod layout;
pub mod ledger;
pub mod storage;
pub mod timeline;

pub use layout::{JobFiles, JobLayout, OutputFormat};
pub use ledger::{Capacity, Ledger, Prices, ShardEvent};
pub use storage::{GetError, Inputs, Listed, Prefix, Skipped, StorageError};

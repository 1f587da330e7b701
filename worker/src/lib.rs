//! The spotbatch worker: leases shards from the queue, runs their items through the model and
//! writes the rows, and gives unfinished work back the moment it is told to stop.
//!
//! Where things are (each module's first lines say what it owns):
//!
//! - the run and the lease loop: [`lease`] (with [`node`], the state its tasks share, and
//!   [`options`]); how it is told to stop: [`control`]; its live counters: [`progress`];
//! - a shard's life: [`shard`] (owner and thief sides, working it, its files); keeping its lease
//!   alive: [`keeper`]; the prefetch deque and pace: [`prefetch`]; hand-offs to peers:
//!   [`handoff`]; work stealing: [`steal`];
//! - the pipeline that keeps the model busy: [`pipeline`];
//! - the seams, each a trait with checks every implementation runs: the item source
//!   ([`source`]), the preprocessor ([`preprocess`]), the inference engine ([`engine`]), the row
//!   sink ([`sink`]), the notice source ([`notice`]);
//! - a job as a worker holds it: [`job`] (with [`model`] fitting the manifest to the model and
//!   [`postprocess`]); GPU preprocessing: [`gpu`], the machine's GPUs: [`device`];
//! - errors and their policy: [`error`]; what the machine costs: [`cost`]; the coordinator link:
//!   [`link`]; the checks `spotbatch validate` runs: [`validate`]; metrics: [`metrics`].
#![warn(missing_docs)]

mod backoff;
pub mod control;
pub mod cost;
pub mod device;
pub mod drain;
pub mod engine;
pub mod error;
pub mod gpu;
mod handoff;
pub mod job;
mod keeper;
pub mod lease;
pub mod link;
pub mod local;
pub mod metrics;
pub mod model;
mod node;
pub mod notice;
pub mod options;
mod pipeline;
pub mod postprocess;
mod prefetch;
pub mod preprocess;
pub mod process;
pub mod progress;
pub mod runtime;
mod shard;
pub mod sink;
pub mod source;
pub mod steal;
pub mod validate;

pub use control::Control;
pub use engine::{Device, EngineError, Float, InferenceEngine, OrtEngine, ORT_DYLIB_ENV};
pub use job::{JobContext, JobError, Jobs};
pub use lease::run_worker;
pub use options::{default_decode_threads, WorkerOptions};
pub use progress::{Progress, ShardOutcome};
pub use steal::Stealing;

//! The spotbatch worker: the lease loop and the pipeline (fetch → decode → preprocess → infer →
//! write → ack), the inference engines, and the checks `spotbatch validate` runs against a model.
#![warn(missing_docs)]

mod backoff;
pub mod cost;
pub mod engine;
pub mod gpu;
pub mod job;
pub mod link;
pub mod model;
pub mod notice;
pub mod pipeline;
pub mod postprocess;
pub mod preprocess;
pub mod steal;
pub mod validate;

pub use engine::{Device, EngineError, Float, InferenceEngine, OrtEngine, ORT_DYLIB_ENV};
pub use job::{JobContext, JobError, Jobs};
pub use pipeline::{run_worker, Progress, WorkerOptions};
pub use steal::Stealing;

//! The coordinator service: the gRPC API people submit jobs to and workers register with (jobs
//! planned and enqueued through `spotbatch-plan`, progress read back from the done markers
//! workers write, the worker registry and its heartbeats), and serving it. It is not on the data
//! path: workers lease from the queue directly and keep working while it is away.
#![warn(missing_docs)]

pub mod server;
pub mod service;

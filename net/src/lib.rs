//! Networking shared by every spotbatch process: gRPC clients that send the bearer token (over
//! TLS with a CA certificate when the URL says `https://`), the token check servers run, TLS
//! servers, and the metrics and health endpoints.
#![warn(missing_docs)]

pub mod auth;
pub mod client;
pub mod exporter;
pub mod server;

pub use auth::Auth;
pub use client::{channel, connect, describe, Bearer, Client, ConnectError, MAX_MESSAGE_BYTES};
pub use exporter::install_prometheus;
pub use server::{serve_http, with_tls, HttpError, ReadyFn};

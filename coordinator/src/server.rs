//! Serving the coordinator: gRPC (with the bearer-token check, size limits and optional TLS) on
//! one address, and `/metrics`, `/healthz`, `/readyz` over HTTP on another.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use spotbatch_proto::api::coordinator_server::CoordinatorServer;
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;

use spotbatch_net::{serve_http, with_tls, Auth, HttpError, ReadyFn, MAX_MESSAGE_BYTES};

use crate::service::{Api, CoordinatorService};

/// Errors serving.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The gRPC server failed (bind, TLS set-up).
    #[error("gRPC server on {addr}: {source}")]
    Grpc {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: tonic::transport::Error,
    },
    /// The HTTP listener failed.
    #[error(transparent)]
    Http(#[from] HttpError),
}

/// Where and how to serve.
pub struct ServeOptions {
    /// gRPC address.
    pub listen: SocketAddr,
    /// HTTP address for metrics and health.
    pub http: Option<SocketAddr>,
    /// Bearer-token check.
    pub auth: Auth,
    /// PEM certificate chain and key, for TLS.
    pub tls: Option<(Vec<u8>, Vec<u8>)>,
    /// Renders the Prometheus exposition.
    pub metrics: Arc<dyn Fn() -> String + Send + Sync>,
}

/// Why the coordinator could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Its queue could not be opened.
    #[error(transparent)]
    Queue(#[from] spotbatch_queue::QueueError),
    /// Its state could not be read.
    #[error(transparent)]
    State(#[from] crate::service::ServiceError),
}

/// Opens the coordinator's queue (`config.queue_uri`) and its state prefix, rebuilding every job.
pub async fn start(
    config: crate::service::CoordinatorConfig,
    state: &url::Url,
) -> Result<Arc<CoordinatorService>, StartError> {
    let queue = spotbatch_queue::open(
        &config.queue_uri,
        spotbatch_queue::QueueConfig {
            max_attempts: config.max_attempts,
        },
    )
    .await?;
    Ok(CoordinatorService::open(config, Arc::from(queue), state).await?)
}

/// Serves until `stop` is cancelled. Progress is refreshed from storage every two seconds.
pub async fn serve(
    svc: Arc<CoordinatorService>,
    opts: ServeOptions,
    stop: CancellationToken,
) -> Result<(), ServeError> {
    let refresher = {
        let svc = Arc::clone(&svc);
        let stop = stop.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_secs(2)) => svc.refresh_all().await,
                }
            }
        })
    };
    if let Some(addr) = opts.http {
        let svc = Arc::clone(&svc);
        let ready: ReadyFn = Arc::new(move || {
            let svc = Arc::clone(&svc);
            Box::pin(async move { svc.ready().await })
        });
        serve_http(addr, Arc::clone(&opts.metrics), ready, stop.clone()).await?;
    }
    let auth = opts.auth.clone();
    let api = CoordinatorServer::new(Api(Arc::clone(&svc)))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(16 * MAX_MESSAGE_BYTES);
    let api = tonic::service::interceptor::InterceptedService::new(api, move |r| auth.check(r));
    let mut builder = with_tls(
        Server::builder()
            .timeout(Duration::from_secs(60))
            .concurrency_limit_per_connection(64),
        opts.tls,
    )
    .map_err(|source| ServeError::Grpc {
        addr: opts.listen,
        source,
    })?;
    tracing::info!(addr = %opts.listen, "gRPC listening");
    let r = builder
        .add_service(api)
        .serve_with_shutdown(opts.listen, async move { stop.cancelled().await })
        .await
        .map_err(|source| ServeError::Grpc {
            addr: opts.listen,
            source,
        });
    refresher.abort();
    r
}

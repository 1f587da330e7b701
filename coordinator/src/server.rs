//! Serving the coordinator: gRPC (with the bearer-token check, size limits and optional TLS) on
//! one address, and `/metrics`, `/healthz`, `/readyz` over HTTP on another.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use spotbatch_proto::api::coordinator_server::CoordinatorServer;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Identity, Server, ServerTlsConfig};

use crate::service::{Api, Auth, CoordinatorService, MAX_MESSAGE_BYTES};

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
    #[error("HTTP server on {addr}: {source}")]
    Http {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
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

/// `builder` serving over TLS when given a PEM certificate chain and key (checked here, so a bad
/// pair is an error before anything is served), as it is otherwise. The coordinator and a
/// worker's peer service both set up their servers with it.
pub fn with_tls(
    builder: Server,
    tls: Option<(Vec<u8>, Vec<u8>)>,
) -> Result<Server, tonic::transport::Error> {
    match tls {
        Some((cert, key)) => {
            builder.tls_config(ServerTlsConfig::new().identity(Identity::from_pem(cert, key)))
        }
        None => Ok(builder),
    }
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

/// Answers whether the process is ready.
pub type ReadyFn = Arc<
    dyn Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send>> + Send + Sync,
>;

/// Serves `/metrics` (Prometheus text), `/healthz` and `/readyz` on `addr` until `stop`; every
/// spotbatch process that runs for long (coordinator, worker) serves these.
pub async fn serve_http(
    addr: SocketAddr,
    metrics: Arc<dyn Fn() -> String + Send + Sync>,
    ready: ReadyFn,
    stop: CancellationToken,
) -> Result<SocketAddr, ServeError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Http { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| ServeError::Http { addr, source })?;
    let app = axum::Router::new()
        .route("/healthz", axum::routing::get(|| async { "ok\n" }))
        .route(
            "/readyz",
            axum::routing::get(move || {
                let ready = Arc::clone(&ready);
                async move {
                    if ready().await {
                        (axum::http::StatusCode::OK, "ready\n")
                    } else {
                        (axum::http::StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
                    }
                }
            }),
        )
        .route(
            "/metrics",
            axum::routing::get(move || {
                let m = Arc::clone(&metrics);
                async move { m() }
            }),
        );
    tracing::info!(addr = %bound, "HTTP (metrics, health) listening");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await;
    });
    Ok(bound)
}

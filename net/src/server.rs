//! Serving: TLS set-up for gRPC servers, and `/metrics`, `/healthz`, `/readyz` over HTTP, which
//! every long-running spotbatch process (coordinator, worker) serves.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tonic::transport::{Identity, Server, ServerTlsConfig};

/// The HTTP listener could not be started.
#[derive(Debug, thiserror::Error)]
#[error("HTTP server on {addr}: {source}")]
pub struct HttpError {
    /// The address.
    pub addr: SocketAddr,
    /// The cause.
    pub source: std::io::Error,
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
) -> Result<SocketAddr, HttpError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| HttpError { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| HttpError { addr, source })?;
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

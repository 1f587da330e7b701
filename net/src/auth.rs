//! The bearer-token check every spotbatch gRPC server runs (the coordinator's API and a worker's
//! `Peer` service): `authorization: Bearer TOKEN`, compared in constant time, refusals logged
//! without the token.

use std::sync::Arc;

use tonic::{Request, Status};

/// Checks `authorization: Bearer TOKEN` in constant time; `None` disables the check.
#[derive(Clone)]
pub struct Auth {
    token: Option<Arc<Vec<u8>>>,
}

impl Auth {
    /// Requires `token` on every call.
    pub fn token(token: &str) -> Self {
        Self {
            token: Some(Arc::new(token.as_bytes().to_vec())),
        }
    }

    /// No check (`--insecure-no-auth`).
    pub fn none() -> Self {
        Self { token: None }
    }

    /// The tonic interceptor.
    #[allow(clippy::result_large_err)]
    pub fn check(&self, req: Request<()>) -> Result<Request<()>, Status> {
        let Some(want) = &self.token else {
            return Ok(req);
        };
        let got = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::as_bytes);
        let ok = got.is_some_and(|g| subtle::ConstantTimeEq::ct_eq(g, want.as_slice()).into());
        if ok {
            Ok(req)
        } else {
            // Logged without the token.
            tracing::warn!(
                peer = ?req.remote_addr(),
                had_token = got.is_some(),
                "rejected a request without a valid bearer token"
            );
            metrics::counter!("spotbatch_api_unauthenticated_total").increment(1);
            Err(Status::unauthenticated("missing or invalid bearer token"))
        }
    }
}

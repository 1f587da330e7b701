//! Connecting to a coordinator: `http://` or `https://` (with a CA certificate), sending the
//! bearer token on every call.

use std::time::Duration;

use spotbatch_proto::api::coordinator_client::CoordinatorClient;
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

/// Largest gRPC message a spotbatch server accepts (requests above it get `OUT_OF_RANGE` /
/// `RESOURCE_EXHAUSTED`); clients accept replies up to 16 times this.
pub const MAX_MESSAGE_BYTES: usize = 1024 * 1024;

/// Adds `authorization: Bearer TOKEN`.
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// A coordinator client.
pub type Client = CoordinatorClient<InterceptedService<Channel, Bearer>>;

/// Errors connecting.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The URL is not usable.
    #[error("coordinator URL {url}: {message}")]
    Url {
        /// The URL.
        url: String,
        /// What is wrong.
        message: String,
    },
    /// The connection failed.
    #[error("cannot reach the coordinator at {url}: {source}")]
    Connect {
        /// The URL.
        url: String,
        /// The cause.
        source: tonic::transport::Error,
    },
}

/// A failed call in words for a person: the status message with its causes, and what to check
/// when it looks like a TLS mismatch: plain text sent to a TLS port gets the connection closed or
/// garbage back (which error depends on timing), and a server certificate the given CA did not
/// sign is refused.
pub fn describe(s: &tonic::Status) -> String {
    // A transport failure's message is only "transport error"; the why is in its sources.
    let mut msg = s.message().to_string();
    let mut source = std::error::Error::source(s);
    while let Some(e) = source {
        let text = e.to_string();
        if text != "transport error" && !msg.contains(&text) {
            msg = format!("{msg}: {text}");
        }
        source = e.source();
    }
    const NOT_GRPC: [&str; 5] = [
        "operation was canceled",
        "h2 protocol error",
        "broken pipe",
        "connection reset",
        "frame with invalid size",
    ];
    if msg.contains("certificate") {
        format!("{msg} (is --tls-ca the CA that signed the server's certificate?)")
    } else if s.code() == tonic::Code::Cancelled || NOT_GRPC.iter().any(|p| msg.contains(p)) {
        format!(
            "{msg}: the server did not answer as a plain-text gRPC server would (if it serves \
             TLS, use an https:// URL and --tls-ca)"
        )
    } else {
        msg
    }
}

/// Connects lazily (the first call connects; a coordinator that is down is retried on each call).
pub fn connect(
    url: &str,
    token: Option<&str>,
    ca_pem: Option<&[u8]>,
) -> Result<Client, ConnectError> {
    let (channel, bearer) = channel(url, token, ca_pem)?;
    Ok(CoordinatorClient::with_interceptor(channel, bearer)
        .max_decoding_message_size(16 * MAX_MESSAGE_BYTES))
}

/// A lazily connecting channel to a spotbatch gRPC server (the coordinator, or a worker's `Peer`
/// service) and the interceptor that sends the bearer token on every call.
pub fn channel(
    url: &str,
    token: Option<&str>,
    ca_pem: Option<&[u8]>,
) -> Result<(Channel, Bearer), ConnectError> {
    let bad = |message: String| ConnectError::Url {
        url: url.to_string(),
        message,
    };
    let mut ep = Endpoint::from_shared(url.to_string())
        .map_err(|e| bad(e.to_string()))?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30));
    if url.starts_with("https://") {
        let ca = ca_pem.ok_or_else(|| bad("https needs a CA certificate (--tls-ca)".into()))?;
        ep = ep
            .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)))
            .map_err(|source| ConnectError::Connect {
                url: url.to_string(),
                source,
            })?;
    } else if !url.starts_with("http://") {
        return Err(bad("must start with http:// or https://".into()));
    }
    let token = match token {
        Some(t) => Some(
            format!("Bearer {t}")
                .parse()
                .map_err(|_| bad("the token has characters a header cannot carry".into()))?,
        ),
        None => None,
    };
    Ok((ep.connect_lazy(), Bearer(token)))
}

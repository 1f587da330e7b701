//! Preemption notices: every source (signals, AWS, GCP, Azure metadata services) is one small
//! implementation of [`NoticeSource`], and all of them feed one drain signal.
//!
//! Metadata services are polled with their documented requests; every base URL is configurable so
//! tests point them at loopback servers. Metadata errors are retried with backoff and never stop
//! the worker: a source that cannot reach its service just keeps trying.

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::backoff::Backoff;

mod parse;

pub use parse::{
    parse_aws_instance_action, parse_aws_rebalance, parse_azure_events, parse_gcp_preempted,
    ResponseError,
};

/// What a notice asks of the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoticeAction {
    /// Drain: stop leasing, hand work back, exit by the deadline.
    Drain,
    /// Stop leasing new work but finish what is held (an AWS rebalance recommendation, by policy).
    StopLeasing,
}

/// A notice that the machine is going away.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    /// `signal`, `aws`, `gcp` or `azure`.
    pub source: &'static str,
    /// What happened, in the source's words (`SIGTERM`, `terminate`, `rebalance`, `Preempt`…).
    pub kind: String,
    /// When the machine goes.
    pub deadline: SystemTime,
    /// What to do.
    pub action: NoticeAction,
    /// The source's id for the event (Azure's `EventId`), for acknowledging it.
    pub event_id: Option<String>,
}

/// One source of notices.
#[async_trait]
pub trait NoticeSource: Send + Sync {
    /// The source's name, for logs and metrics.
    fn name(&self) -> &'static str;
    /// Waits for the next notice. Errors talking to the metadata service are retried inside.
    async fn next(&mut self) -> Notice;
    /// Tells the platform the worker is done with the event (Azure: start it early).
    async fn acknowledge(&self, _notice: &Notice) {}
}

/// A metadata service that is polled: one look at a time.
#[async_trait]
trait Polled: NoticeSource {
    /// How long to wait between looks.
    fn interval(&self) -> Duration;
    /// One look: a notice, nothing yet, or an error to retry.
    async fn poll_once(&mut self) -> Result<Option<Notice>, String>;
}

/// Looks every `interval` until a notice; errors are retried with backoff, never given up on.
async fn poll_until_notice<P: Polled + ?Sized>(source: &mut P) -> Notice {
    let mut backoff = Backoff::new();
    loop {
        match source.poll_once().await {
            Ok(Some(n)) => return n,
            Ok(None) => {
                backoff.reset();
                tokio::time::sleep(source.interval()).await;
            }
            Err(e) => {
                warn!(source = source.name(), error = %e, "metadata request failed; retrying");
                backoff.wait().await;
            }
        }
    }
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .no_proxy()
        .build()
        .unwrap_or_default()
}

/// SIGTERM (what Kubernetes sends) and SIGINT: deadline = now + the grace period.
pub struct SignalSource {
    grace: Duration,
    term: Option<tokio::signal::unix::Signal>,
}

impl SignalSource {
    /// Listens for SIGTERM and SIGINT.
    pub fn new(grace: Duration) -> Self {
        Self {
            grace,
            term: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok(),
        }
    }
}

#[async_trait]
impl NoticeSource for SignalSource {
    fn name(&self) -> &'static str {
        "signal"
    }
    async fn next(&mut self) -> Notice {
        let kind = match self.term.as_mut() {
            Some(t) => tokio::select! {
                _ = t.recv() => "SIGTERM",
                _ = tokio::signal::ctrl_c() => "SIGINT",
            },
            None => {
                let _ = tokio::signal::ctrl_c().await;
                "SIGINT"
            }
        };
        Notice {
            source: "signal",
            kind: kind.to_string(),
            deadline: SystemTime::now() + self.grace,
            action: NoticeAction::Drain,
            event_id: None,
        }
    }
}

/// AWS EC2 instance metadata (IMDSv2): spot instance-action and rebalance recommendations.
pub struct AwsSource {
    base: String,
    poll: Duration,
    rebalance: Option<NoticeAction>,
    client: reqwest::Client,
    token: Option<String>,
    rebalance_seen: bool,
}

impl AwsSource {
    /// `base` is normally `http://169.254.169.254`. `rebalance`: what a rebalance recommendation
    /// does (`None`: ignore it).
    pub fn new(base: &str, poll: Duration, rebalance: Option<NoticeAction>) -> Self {
        Self {
            base: base.trim_end_matches('/').to_string(),
            poll,
            rebalance,
            client: http(),
            token: None,
            rebalance_seen: false,
        }
    }

    async fn token(&mut self) -> Result<String, String> {
        if let Some(t) = &self.token {
            return Ok(t.clone());
        }
        let r = self
            .client
            .put(format!("{}/latest/api/token", self.base))
            .header("X-aws-ec2-metadata-token-ttl-seconds", "21600")
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !r.status().is_success() {
            return Err(format!("token request answered {}", r.status()));
        }
        let t = r.text().await.map_err(|e| e.to_string())?;
        self.token = Some(t.clone());
        Ok(t)
    }

    /// GETs a metadata path: `Ok(None)` on 404, the body on 200.
    async fn get(&mut self, path: &str) -> Result<Option<String>, String> {
        let token = self.token().await?;
        let r = self
            .client
            .get(format!("{}{path}", self.base))
            .header("X-aws-ec2-metadata-token", token)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        match r.status().as_u16() {
            200 => Ok(Some(r.text().await.map_err(|e| e.to_string())?)),
            404 => Ok(None),
            401 => {
                self.token = None; // expired: fetch a new one next time
                Err("token refused (401)".into())
            }
            s => Err(format!("{path} answered {s}")),
        }
    }
}

#[async_trait]
impl Polled for AwsSource {
    fn interval(&self) -> Duration {
        self.poll
    }

    async fn poll_once(&mut self) -> Result<Option<Notice>, String> {
        if let Some(body) = self.get("/latest/meta-data/spot/instance-action").await? {
            return Ok(Some(parse_aws_instance_action(&body)?));
        }
        if let (Some(action), false) = (self.rebalance, self.rebalance_seen) {
            if let Some(body) = self
                .get("/latest/meta-data/events/recommendations/rebalance")
                .await?
            {
                let notice = parse_aws_rebalance(&body, action, SystemTime::now())?;
                self.rebalance_seen = true;
                return Ok(Some(notice));
            }
        }
        Ok(None)
    }
}

#[async_trait]
impl NoticeSource for AwsSource {
    fn name(&self) -> &'static str {
        "aws"
    }
    async fn next(&mut self) -> Notice {
        poll_until_notice(self).await
    }
}

/// GCP metadata server: `instance/preempted`, watched with `wait_for_change`.
pub struct GcpSource {
    base: String,
    grace: Duration,
    client: reqwest::Client,
}

impl GcpSource {
    /// `base` is normally `http://metadata.google.internal`; `grace` is the deadline after the
    /// notice (GCP gives 30 s).
    pub fn new(base: &str, grace: Duration) -> Self {
        Self {
            base: base.trim_end_matches('/').to_string(),
            grace,
            client: reqwest::Client::builder()
                .no_proxy()
                .build()
                .unwrap_or_default(),
        }
    }
}

#[async_trait]
impl NoticeSource for GcpSource {
    fn name(&self) -> &'static str {
        "gcp"
    }
    async fn next(&mut self) -> Notice {
        let mut backoff = Backoff::new();
        let url = format!(
            "{}/computeMetadata/v1/instance/preempted?wait_for_change=true",
            self.base
        );
        loop {
            let r = self
                .client
                .get(&url)
                .header("Metadata-Flavor", "Google")
                .send()
                .await;
            let body = match r {
                Ok(r) if r.status().is_success() => r.text().await.map_err(|e| e.to_string()),
                Ok(r) => Err(format!("preempted answered {}", r.status())),
                Err(e) => Err(e.to_string()),
            };
            match body {
                Ok(b) => match parse_gcp_preempted(&b, SystemTime::now(), self.grace) {
                    Some(notice) => return notice,
                    None => backoff.reset(), // FALSE: the wait ended without a change; watch again
                },
                Err(e) => {
                    warn!(source = "gcp", error = %e, "metadata request failed; retrying");
                    backoff.wait().await;
                }
            }
        }
    }
}

/// Azure Scheduled Events: a `Preempt` event naming this VM.
pub struct AzureSource {
    base: String,
    poll: Duration,
    vm_name: Option<String>,
    client: reqwest::Client,
}

const AZURE_API: &str = "api-version=2020-07-01";

impl AzureSource {
    /// `base` is normally `http://169.254.169.254`; `vm_name` is looked up from the instance
    /// metadata when not given.
    pub fn new(base: &str, poll: Duration, vm_name: Option<String>) -> Self {
        Self {
            base: base.trim_end_matches('/').to_string(),
            poll,
            vm_name,
            client: http(),
        }
    }

    async fn vm_name(&mut self) -> Result<String, String> {
        if let Some(n) = &self.vm_name {
            return Ok(n.clone());
        }
        let r = self
            .client
            .get(format!(
                "{}/metadata/instance/compute/name?api-version=2021-02-01&format=text",
                self.base
            ))
            .header("Metadata", "true")
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !r.status().is_success() {
            return Err(format!("instance name answered {}", r.status()));
        }
        let n = r
            .text()
            .await
            .map_err(|e| e.to_string())?
            .trim()
            .to_string();
        self.vm_name = Some(n.clone());
        Ok(n)
    }
}

#[async_trait]
impl Polled for AzureSource {
    fn interval(&self) -> Duration {
        self.poll
    }

    async fn poll_once(&mut self) -> Result<Option<Notice>, String> {
        let me = self.vm_name().await?;
        let r = self
            .client
            .get(format!(
                "{}/metadata/scheduledevents?{AZURE_API}",
                self.base
            ))
            .header("Metadata", "true")
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !r.status().is_success() {
            return Err(format!("scheduledevents answered {}", r.status()));
        }
        let body = r
            .bytes()
            .await
            .map_err(|e| format!("scheduledevents: {e}"))?;
        Ok(parse_azure_events(&body, &me, SystemTime::now())?)
    }
}

#[async_trait]
impl NoticeSource for AzureSource {
    fn name(&self) -> &'static str {
        "azure"
    }
    async fn next(&mut self) -> Notice {
        poll_until_notice(self).await
    }
    async fn acknowledge(&self, notice: &Notice) {
        let Some(id) = &notice.event_id else { return };
        let body = serde_json::json!({"StartRequests": [{"EventId": id}]});
        let r = self
            .client
            .post(format!(
                "{}/metadata/scheduledevents?{AZURE_API}",
                self.base
            ))
            .header("Metadata", "true")
            .json(&body)
            .send()
            .await;
        match r {
            Ok(r) if r.status().is_success() => {
                info!(event = %id, "acknowledged the Azure preemption event")
            }
            Ok(r) => {
                warn!(event = %id, status = %r.status(), "Azure refused the event acknowledgement")
            }
            Err(e) => warn!(event = %id, error = %e, "could not acknowledge the Azure event"),
        }
    }
}

/// Which cloud's metadata service answers, asked with each one's documented request (1 s each).
pub async fn probe(aws: &str, gcp: &str, azure: &str) -> Option<&'static str> {
    let c = reqwest::Client::builder()
        .timeout(Duration::from_secs(1))
        .no_proxy()
        .build()
        .ok()?;
    let aws_ok = c
        .put(format!("{}/latest/api/token", aws.trim_end_matches('/')))
        .header("X-aws-ec2-metadata-token-ttl-seconds", "60")
        .send();
    let gcp_ok = c
        .get(format!(
            "{}/computeMetadata/v1/instance/id",
            gcp.trim_end_matches('/')
        ))
        .header("Metadata-Flavor", "Google")
        .send();
    let azure_ok = c
        .get(format!(
            "{}/metadata/instance?api-version=2021-02-01",
            azure.trim_end_matches('/')
        ))
        .header("Metadata", "true")
        .send();
    let (a, g, z) = tokio::join!(aws_ok, gcp_ok, azure_ok);
    let ok = |r: Result<reqwest::Response, reqwest::Error>| {
        r.map(|r| r.status().is_success()).unwrap_or(false)
    };
    if ok(a) {
        Some("aws")
    } else if ok(g) {
        Some("gcp")
    } else if ok(z) {
        Some("azure")
    } else {
        None
    }
}

/// Waits until one of `sources` gives a notice; counts it and returns it with the index of the
/// source that gave it. `None` when `stop` is cancelled first (the worker ended on its own).
pub async fn watch(
    sources: &mut [Box<dyn NoticeSource>],
    stop: &CancellationToken,
) -> Option<(Notice, usize)> {
    if sources.is_empty() {
        stop.cancelled().await;
        return None;
    }
    let first = {
        let futs = sources
            .iter_mut()
            .enumerate()
            .map(|(i, s)| Box::pin(async move { (i, s.next().await) }));
        tokio::select! {
            (r, _, rest) = futures::future::select_all(futs) => { drop(rest); r }
            _ = stop.cancelled() => return None,
        }
    };
    let (i, notice) = first;
    metrics::counter!("spotbatch_preemption_notices_total", "source" => notice.source).increment(1);
    Some((notice, i))
}

/// RFC 3339 (`2026-11-22T21:40:00Z`) to a time.
pub fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    chrono::DateTime::parse_from_rfc3339(s.trim())
        .ok()
        .map(SystemTime::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse() {
        let t = parse_rfc3339("2026-11-22T21:40:00Z").unwrap();
        assert_eq!(
            t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs(),
            1_795_383_600
        );
        assert!(parse_rfc3339("yesterday").is_none());
    }
}

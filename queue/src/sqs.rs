//! The SQS backend: SQS's visibility timeout is the lease.
//!
//! | lease contract | SQS |
//! | --- | --- |
//! | lease | `ReceiveMessage` (≤ 10 a call, long polling, `VisibilityTimeout`) |
//! | extend | `ChangeMessageVisibility` |
//! | release | `ChangeMessageVisibilityBatch` to 0 |
//! | ack | `DeleteMessageBatch` |
//! | delivery count | `ApproximateReceiveCount` |
//! | dead-letter | the queue's redrive policy (`maxReceiveCount` = max attempts) for workers that die; an explicit move (send to the DLQ with the reason, then delete) for failures and foreign messages |
//!
//! Where SQS differs from the contract, the conformance suite says so: SQS counts every receive
//! towards `maxReceiveCount`, clean hand-backs included, and its clock has whole seconds.
//!
//! SQS (and moto) accept `ChangeMessageVisibility` with an old receipt handle even after the
//! message was delivered to someone else. So the backend keeps each lease's deadline itself and
//! refuses to extend one whose deadline has passed (`LeaseLost`): a worker that stalled past its
//! deadline stops, rather than computing on a shard another worker may now own.
//!
//! Item ids and reasons travel as message attributes (`spotbatch-id`, `spotbatch-reason`); a body
//! that is not valid SQS text is sent base64-encoded (`spotbatch-encoding`). Messages from others
//! have none of these and are delivered as they are, so the worker can dead-letter them.
//!
//! Retry policy, per operation: the SDK's standard mode (exponential backoff with jitter, on
//! throttling and transient errors) with 4 attempts for most calls; extensions get 8, because a
//! lost lease wastes the work done on it; acks get 1, because an item whose ack failed is
//! redelivered, found done, and acked then.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use aws_sdk_sqs::config::retry::RetryConfig;
use aws_sdk_sqs::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry, Message,
    MessageAttributeValue, MessageSystemAttributeName, QueueAttributeName,
    SendMessageBatchRequestEntry,
};
use aws_sdk_sqs::Client;
use base64::Engine as _;

use crate::{
    DeadLetter, Depth, Lease, LeaseQueue, LeaseToken, NewItem, QueueConfig, QueueError, Result,
};

const BACKEND: &str = "sqs";

/// An item to send, with extra message attributes.
type Outgoing = (NewItem, Vec<(&'static str, String)>);
const ATTR_ID: &str = "spotbatch-id";
const ATTR_REASON: &str = "spotbatch-reason";
const ATTR_ENCODING: &str = "spotbatch-encoding";
const ATTR_COUNT: &str = "spotbatch-deliveries";
/// SQS's message size limit (256 KiB), minus room for our attributes.
const MAX_BODY: usize = 256 * 1024 - 1024;

/// Where an SQS queue is and how to reach it, parsed from a queue URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqsTarget {
    /// The queue's name.
    pub name: String,
    /// The queue URL when the URI was one.
    pub url: Option<String>,
    /// Region override.
    pub region: Option<String>,
    /// Endpoint override (a local SQS-compatible server).
    pub endpoint: Option<String>,
}

/// Parses `sqs://NAME[?region=R&endpoint=URL]` or a queue URL
/// (`https://sqs.REGION.amazonaws.com/ACCOUNT/NAME`, or `http://HOST:PORT/ACCOUNT/NAME` locally).
pub fn parse_uri(uri: &str) -> Result<SqsTarget> {
    let invalid = |reason: String| QueueError::InvalidUri {
        uri: uri.to_string(),
        reason,
    };
    if let Some(rest) = uri.strip_prefix("sqs://") {
        let (name, query) = rest
            .split_once('?')
            .map_or((rest, None), |(n, q)| (n, Some(q)));
        check_name(name).map_err(invalid)?;
        let mut t = SqsTarget {
            name: name.to_string(),
            url: None,
            region: None,
            endpoint: None,
        };
        for pair in query
            .into_iter()
            .flat_map(|q| q.split('&'))
            .filter(|p| !p.is_empty())
        {
            match pair.split_once('=') {
                Some(("region", r)) if !r.is_empty() => t.region = Some(r.to_string()),
                Some(("endpoint", e)) if e.starts_with("http://") || e.starts_with("https://") => {
                    t.endpoint = Some(e.to_string())
                }
                _ => {
                    return Err(invalid(format!(
                        "unknown or empty parameter {pair:?} (known: region, endpoint=http(s)://…)"
                    )))
                }
            }
        }
        return Ok(t);
    }
    if uri.starts_with("https://") || uri.starts_with("http://") {
        let url = url::Url::parse(uri).map_err(|e| invalid(e.to_string()))?;
        let segs: Vec<&str> = url
            .path_segments()
            .map(|s| s.filter(|x| !x.is_empty()).collect())
            .unwrap_or_default();
        let [_, name] = segs.as_slice() else {
            return Err(invalid("a queue URL ends in /ACCOUNT/NAME".into()));
        };
        check_name(name).map_err(invalid)?;
        let host = url.host_str().unwrap_or("");
        let region = host
            .strip_prefix("sqs.")
            .and_then(|h| h.split('.').next())
            .map(str::to_string);
        let endpoint = format!(
            "{}://{}",
            url.scheme(),
            &uri[url.scheme().len() + 3..]
                .split('/')
                .next()
                .unwrap_or(host)
        );
        return Ok(SqsTarget {
            name: name.to_string(),
            url: Some(uri.to_string()),
            region,
            endpoint: Some(endpoint),
        });
    }
    Err(invalid("expected sqs://NAME or a queue URL".into()))
}

fn check_name(name: &str) -> std::result::Result<(), String> {
    let base = name.strip_suffix(".fifo").unwrap_or(name);
    if (1..=80).contains(&name.len())
        && base
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        Ok(())
    } else {
        Err(format!(
            "{name:?}: an SQS queue name is 1-80 letters, digits, '-' or '_'"
        ))
    }
}

/// Builds an SQS client from the standard AWS environment and config, with the target's overrides.
pub async fn client(target: &SqsTarget) -> Client {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
    if let Some(r) = &target.region {
        loader = loader.region(aws_config::Region::new(r.clone()));
    }
    if let Some(e) = &target.endpoint {
        loader = loader.endpoint_url(e);
    }
    let shared = loader.load().await;
    let conf = aws_sdk_sqs::config::Builder::from(&shared)
        .retry_config(RetryConfig::standard().with_max_attempts(4))
        .build();
    Client::from_conf(conf)
}

/// An SQS queue and its dead-letter queue.
#[derive(Debug, Clone)]
pub struct SqsQueue {
    client: Client,
    name: String,
    url: String,
    dlq_url: Option<String>,
    config: QueueConfig,
    calls: Arc<AtomicU64>,
    /// Deadline of every lease handed out and not yet given back, by receipt handle.
    deadlines: Arc<Mutex<HashMap<String, SystemTime>>>,
}

impl SqsQueue {
    /// Opens an existing queue (and finds its dead-letter queue from the redrive policy, or
    /// `NAME-dlq`). A missing queue, an unreachable endpoint or missing credentials each give one
    /// clear error.
    pub async fn open_uri(uri: &str, config: QueueConfig) -> Result<Self> {
        let target = parse_uri(uri)?;
        let client = client(&target).await;
        let calls = Arc::new(AtomicU64::new(0));
        let url = match &target.url {
            Some(u) => u.clone(),
            None => queue_url(&client, &target.name, &calls).await?,
        };
        let mut q = Self {
            client,
            name: target.name.clone(),
            url,
            dlq_url: None,
            config,
            calls,
            deadlines: Arc::default(),
        };
        q.dlq_url = q.find_dlq().await?;
        Ok(q)
    }

    /// Creates the queue (and, with `dlq`, `NAME-dlq` plus a redrive policy of `max_attempts`
    /// receives). Existing queues are updated to match. Returns the queue URL.
    pub async fn create(uri: &str, dlq: bool, max_attempts: u32) -> Result<String> {
        let target = parse_uri(uri)?;
        let client = client(&target).await;
        let err = |e: String| backend_err(&target.name, e);
        let url = client
            .create_queue()
            .queue_name(&target.name)
            .send()
            .await
            .map_err(|e| sdk_err(&target.name, &e, &target.name))?
            .queue_url
            .unwrap_or_default();
        if dlq {
            let dlq_name = format!("{}-dlq", target.name);
            let dlq_url = client
                .create_queue()
                .queue_name(&dlq_name)
                .attributes(QueueAttributeName::MessageRetentionPeriod, "1209600")
                .send()
                .await
                .map_err(|e| sdk_err(&target.name, &e, &dlq_name))?
                .queue_url
                .unwrap_or_default();
            let arn = client
                .get_queue_attributes()
                .queue_url(&dlq_url)
                .attribute_names(QueueAttributeName::QueueArn)
                .send()
                .await
                .map_err(|e| sdk_err(&target.name, &e, &dlq_name))?
                .attributes
                .and_then(|a| a.get(&QueueAttributeName::QueueArn).cloned())
                .ok_or_else(|| err(format!("{dlq_name}: no QueueArn attribute")))?;
            let policy =
                format!(r#"{{"deadLetterTargetArn":"{arn}","maxReceiveCount":"{max_attempts}"}}"#);
            client
                .set_queue_attributes()
                .queue_url(&url)
                .attributes(QueueAttributeName::RedrivePolicy, policy)
                .send()
                .await
                .map_err(|e| sdk_err(&target.name, &e, &target.name))?;
        }
        Ok(url)
    }

    /// SQS API requests made through this handle (for the benchmark's calls-per-item figure).
    pub fn api_calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// The queue URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The SDK client (tests use it to put foreign messages on the queue).
    pub fn client(&self) -> &Client {
        &self.client
    }

    fn track(&self, token: &str, deadline: Option<SystemTime>) {
        if let Ok(mut d) = self.deadlines.lock() {
            match deadline {
                Some(t) => {
                    d.insert(token.to_string(), t);
                }
                None => {
                    d.remove(token);
                }
            }
        }
    }

    fn deadline_of(&self, token: &str) -> Option<SystemTime> {
        self.deadlines
            .lock()
            .ok()
            .and_then(|d| d.get(token).copied())
    }

    fn count(&self, op: &'static str) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("spotbatch_sqs_requests_total", "op" => op).increment(1);
    }

    fn err(&self, e: String) -> QueueError {
        backend_err(&self.name, e)
    }

    async fn find_dlq(&self) -> Result<Option<String>> {
        self.count("GetQueueAttributes");
        let attrs = self
            .client
            .get_queue_attributes()
            .queue_url(&self.url)
            .attribute_names(QueueAttributeName::RedrivePolicy)
            .send()
            .await
            .map_err(|e| sdk_err(&self.name, &e, &self.name))?
            .attributes
            .unwrap_or_default();
        let dlq_name = attrs
            .get(&QueueAttributeName::RedrivePolicy)
            .and_then(|p| p.split("deadLetterTargetArn").nth(1))
            .and_then(|rest| rest.split('"').find(|s| s.starts_with("arn:")))
            .and_then(|arn| arn.rsplit(':').next().map(str::to_string))
            .unwrap_or_else(|| format!("{}-dlq", self.name));
        match queue_url(&self.client, &dlq_name, &self.calls).await {
            Ok(u) => Ok(Some(u)),
            Err(_) => Ok(None),
        }
    }

    fn dlq(&self) -> Result<&str> {
        self.dlq_url.as_deref().ok_or_else(|| {
            self.err(format!(
                "queue {} has no dead-letter queue; create one with `spotbatch queue create sqs://{} --dlq`",
                self.name, self.name
            ))
        })
    }

    fn to_lease(&self, m: &Message, deadline: SystemTime) -> Option<Lease> {
        let token = m.receipt_handle()?.to_string();
        let attrs = m.message_attributes();
        let attr = |k: &str| {
            attrs
                .and_then(|a| a.get(k))
                .and_then(|v| v.string_value())
                .map(str::to_string)
        };
        let id = attr(ATTR_ID).or_else(|| m.message_id().map(str::to_string))?;
        let body = decode_body(m.body().unwrap_or(""), attr(ATTR_ENCODING).as_deref());
        let delivery_count = m
            .attributes()
            .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
            .and_then(|c| c.parse().ok())
            .unwrap_or(1);
        Some(Lease {
            id,
            body,
            token: LeaseToken(token),
            delivery_count,
            deadline,
            released_at: None,
        })
    }

    /// Sends items to `url` in batches of 10, with extra attributes on each.
    async fn send(&self, url: &str, items: &[Outgoing]) -> Result<()> {
        // A batch holds at most 10 messages and 256 KiB in all.
        let mut batches: Vec<&[Outgoing]> = Vec::new();
        let (mut start, mut bytes) = (0, 0);
        for (i, (item, _)) in items.iter().enumerate() {
            let size = item.body.len() * 4 / 3 + 512;
            if i > start && (i - start == 10 || bytes + size > MAX_BODY) {
                batches.push(&items[start..i]);
                (start, bytes) = (i, 0);
            }
            bytes += size;
        }
        if start < items.len() {
            batches.push(&items[start..]);
        }
        for chunk in batches {
            let mut req = self.client.send_message_batch().queue_url(url);
            for (i, (item, extra)) in chunk.iter().enumerate() {
                let (body, encoding) = encode_body(&item.body);
                if body.len() > MAX_BODY {
                    return Err(self.err(format!(
                        "item {} is {} bytes, over SQS's {MAX_BODY}-byte message limit (for shards: lower queue.shard_size)",
                        item.id,
                        body.len()
                    )));
                }
                let mut entry = SendMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .message_body(body)
                    .message_attributes(ATTR_ID, string_attr(&item.id));
                if let Some(enc) = encoding {
                    entry = entry.message_attributes(ATTR_ENCODING, string_attr(enc));
                }
                for (k, v) in extra {
                    entry = entry.message_attributes(*k, string_attr(v));
                }
                req = req.entries(entry.build().map_err(|e| self.err(e.to_string()))?);
            }
            self.count("SendMessageBatch");
            let out = req
                .send()
                .await
                .map_err(|e| sdk_err(&self.name, &e, &self.name))?;
            if let Some(f) = out.failed().first() {
                return Err(self.err(format!(
                    "SendMessageBatch refused an entry: {} {}",
                    f.code(),
                    f.message().unwrap_or("")
                )));
            }
        }
        Ok(())
    }

    async fn change_visibility(&self, leases: &[Lease], secs: i32) -> Result<()> {
        for chunk in leases.chunks(10) {
            let entries = chunk
                .iter()
                .enumerate()
                .map(|(i, l)| {
                    ChangeMessageVisibilityBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(&l.token.0)
                        .visibility_timeout(secs)
                        .build()
                        .map_err(|e| self.err(e.to_string()))
                })
                .collect::<Result<Vec<_>>>()?;
            self.count("ChangeMessageVisibilityBatch");
            // Entries that fail (a stale receipt handle) are leases no longer held: a no-op.
            self.client
                .change_message_visibility_batch()
                .queue_url(&self.url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|e| sdk_err(&self.name, &e, &self.name))?;
        }
        Ok(())
    }

    /// Moves a held message to the DLQ with `reason`: checks the lease is still held, sends the
    /// copy, then deletes the original.
    async fn move_to_dlq(&self, lease: &Lease, reason: &str) -> Result<()> {
        let dlq = self.dlq()?.to_string();
        self.count("ChangeMessageVisibility");
        if let Err(e) = self
            .client
            .change_message_visibility()
            .queue_url(&self.url)
            .receipt_handle(&lease.token.0)
            .visibility_timeout(30)
            .send()
            .await
        {
            return Err(self.lost_or(lease, &e));
        }
        let item = NewItem {
            id: lease.id.clone(),
            body: lease.body.clone(),
        };
        let extra = vec![
            (ATTR_REASON, one_line(reason)),
            (ATTR_COUNT, lease.delivery_count.to_string()),
        ];
        self.send(&dlq, &[(item, extra)]).await?;
        self.count("DeleteMessage");
        self.client
            .delete_message()
            .queue_url(&self.url)
            .receipt_handle(&lease.token.0)
            .send()
            .await
            .map_err(|e| sdk_err(&self.name, &e, &self.name))?;
        Ok(())
    }

    fn lost_or<E: ProvideErrorMetadata + std::error::Error + 'static, R: std::fmt::Debug>(
        &self,
        lease: &Lease,
        e: &SdkError<E, R>,
    ) -> QueueError {
        let code = e.code().unwrap_or("");
        if code.contains("ReceiptHandleIsInvalid")
            || code.contains("MessageNotInflight")
            || code.contains("InvalidParameterValue")
        {
            QueueError::LeaseLost {
                queue: self.name.clone(),
                item: lease.id.clone(),
            }
        } else {
            sdk_err(&self.name, e, &self.name)
        }
    }

    async fn approximate(&self, url: &str) -> Result<(u64, u64)> {
        self.count("GetQueueAttributes");
        let attrs = self
            .client
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesDelayed)
            .send()
            .await
            .map_err(|e| sdk_err(&self.name, &e, &self.name))?
            .attributes
            .unwrap_or_default();
        let get = |k: QueueAttributeName| {
            attrs
                .get(&k)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        Ok((
            get(QueueAttributeName::ApproximateNumberOfMessages),
            get(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
                + get(QueueAttributeName::ApproximateNumberOfMessagesDelayed),
        ))
    }
}

#[async_trait]
impl LeaseQueue for SqsQueue {
    fn name(&self) -> &str {
        &self.name
    }

    async fn enqueue(&self, items: &[NewItem]) -> Result<()> {
        let items: Vec<_> = items.iter().map(|i| (i.clone(), Vec::new())).collect();
        self.send(&self.url, &items).await
    }

    async fn lease(&self, max: usize, visibility: Duration, wait: Duration) -> Result<Vec<Lease>> {
        let mut out = Vec::new();
        let give_up = Instant::now() + wait;
        let secs = visibility.as_secs().clamp(1, 43_200) as i32;
        while out.len() < max {
            let remaining = give_up.saturating_duration_since(Instant::now());
            // Long-poll only while nothing has arrived; then take what is there.
            let wait_secs = if out.is_empty() {
                remaining.as_secs_f64().ceil().min(20.0) as i32
            } else {
                0
            };
            let asked = (max - out.len()).min(10) as i32;
            let started = SystemTime::now();
            self.count("ReceiveMessage");
            let resp = self
                .client
                .receive_message()
                .queue_url(&self.url)
                .max_number_of_messages(asked)
                .visibility_timeout(secs)
                .wait_time_seconds(wait_secs)
                .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
                .message_attribute_names("All")
                .send()
                .await
                .map_err(|e| sdk_err(&self.name, &e, &self.name))?;
            let messages = resp.messages();
            // The deadline counts from before the call: never later than SQS's own.
            let deadline = started + Duration::from_secs(secs as u64);
            for m in messages {
                let Some(lease) = self.to_lease(m, deadline) else {
                    continue;
                };
                if lease.delivery_count > self.config.max_attempts && self.dlq_url.is_some() {
                    // No redrive policy caught it (or it is set higher): give up on it here.
                    let reason = format!(
                        "delivered {} times without success (max_attempts = {}); its workers died or lost the lease",
                        lease.delivery_count, self.config.max_attempts
                    );
                    self.move_to_dlq(&lease, &reason).await?;
                    continue;
                }
                self.track(&lease.token.0, Some(lease.deadline));
                out.push(lease);
            }
            // Done when time is up, or when something arrived and nothing more is waiting.
            if Instant::now() >= give_up || (!out.is_empty() && messages.len() < asked as usize) {
                break;
            }
        }
        Ok(out)
    }

    async fn extend(&self, lease: &Lease, visibility: Duration) -> Result<SystemTime> {
        let secs = visibility.as_secs().clamp(1, 43_200) as i32;
        let started = SystemTime::now();
        let known = self.deadline_of(&lease.token.0).unwrap_or(lease.deadline);
        if started >= known {
            self.track(&lease.token.0, None);
            return Err(QueueError::LeaseLost {
                queue: self.name.clone(),
                item: lease.id.clone(),
            });
        }
        self.count("ChangeMessageVisibility");
        let r = self
            .client
            .change_message_visibility()
            .queue_url(&self.url)
            .receipt_handle(&lease.token.0)
            .visibility_timeout(secs)
            .customize()
            .config_override(
                aws_sdk_sqs::config::Builder::default()
                    .retry_config(RetryConfig::standard().with_max_attempts(8)),
            )
            .send()
            .await;
        match r {
            Ok(_) => {
                let deadline = started + Duration::from_secs(secs as u64);
                self.track(&lease.token.0, Some(deadline));
                Ok(deadline)
            }
            Err(e) => Err(self.lost_or(lease, &e)),
        }
    }

    async fn ack(&self, leases: &[Lease]) -> Result<()> {
        for l in leases {
            self.track(&l.token.0, None);
        }
        for chunk in leases.chunks(10) {
            let entries = chunk
                .iter()
                .enumerate()
                .map(|(i, l)| {
                    DeleteMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(&l.token.0)
                        .build()
                        .map_err(|e| self.err(e.to_string()))
                })
                .collect::<Result<Vec<_>>>()?;
            self.count("DeleteMessageBatch");
            // Failed entries are receipt handles already gone: acking twice is fine.
            self.client
                .delete_message_batch()
                .queue_url(&self.url)
                .set_entries(Some(entries))
                .customize()
                .config_override(
                    aws_sdk_sqs::config::Builder::default()
                        .retry_config(RetryConfig::standard().with_max_attempts(1)),
                )
                .send()
                .await
                .map_err(|e| sdk_err(&self.name, &e, &self.name))?;
        }
        Ok(())
    }

    async fn release(&self, leases: &[Lease], error: Option<&str>) -> Result<()> {
        for l in leases {
            self.track(&l.token.0, None);
        }
        // A failure on the last allowed attempt goes to the DLQ now, with its reason (SQS keeps no
        // last error, and the redrive policy would move it without one).
        let (last, rest): (Vec<Lease>, Vec<Lease>) = leases.iter().cloned().partition(|l| {
            error.is_some()
                && l.delivery_count >= self.config.max_attempts
                && self.dlq_url.is_some()
        });
        for l in &last {
            match self.move_to_dlq(l, error.unwrap_or("failed")).await {
                Ok(()) | Err(QueueError::LeaseLost { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        self.change_visibility(&rest, 0).await
    }

    fn requests(&self) -> Option<u64> {
        Some(self.api_calls())
    }

    async fn dead_letter(&self, lease: &Lease, reason: &str) -> Result<()> {
        self.track(&lease.token.0, None);
        self.move_to_dlq(lease, reason).await
    }

    async fn depth(&self) -> Result<Depth> {
        let (visible, in_flight) = self.approximate(&self.url).await?;
        let dead = match &self.dlq_url {
            Some(u) => {
                let (v, f) = self.approximate(u).await?;
                v + f
            }
            None => 0,
        };
        Ok(Depth {
            visible,
            in_flight,
            dead,
        })
    }

    async fn dead_letters(&self, max: usize) -> Result<Vec<DeadLetter>> {
        let Some(dlq) = self.dlq_url.clone() else {
            return Ok(Vec::new());
        };
        // Peek: receive with a zero visibility timeout, until no new message shows up.
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        let mut quiet_rounds = 0;
        while out.len() < max && quiet_rounds < 3 {
            self.count("ReceiveMessage");
            let resp = self
                .client
                .receive_message()
                .queue_url(&dlq)
                .max_number_of_messages(10)
                .visibility_timeout(0)
                .wait_time_seconds(0)
                .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
                .message_attribute_names("All")
                .send()
                .await
                .map_err(|e| sdk_err(&self.name, &e, &self.name))?;
            let mut new = 0;
            for m in resp.messages() {
                let key = m.message_id().unwrap_or("").to_string();
                if !seen.insert(key) {
                    continue;
                }
                new += 1;
                let attrs = m.message_attributes();
                let attr = |k: &str| {
                    attrs
                        .and_then(|a| a.get(k))
                        .and_then(|v| v.string_value())
                        .map(str::to_string)
                };
                let deliveries = attr(ATTR_COUNT).and_then(|c| c.parse().ok());
                out.push(DeadLetter {
                    id: attr(ATTR_ID)
                        .or_else(|| m.message_id().map(str::to_string))
                        .unwrap_or_default(),
                    body: decode_body(m.body().unwrap_or(""), attr(ATTR_ENCODING).as_deref()),
                    reason: attr(ATTR_REASON).unwrap_or_else(|| {
                        format!(
                            "moved by the redrive policy after {} receives without success",
                            self.config.max_attempts
                        )
                    }),
                    delivery_count: deliveries.unwrap_or(self.config.max_attempts),
                });
            }
            quiet_rounds = if new == 0 { quiet_rounds + 1 } else { 0 };
        }
        out.truncate(max);
        Ok(out)
    }
}

async fn queue_url(client: &Client, name: &str, calls: &AtomicU64) -> Result<String> {
    calls.fetch_add(1, Ordering::Relaxed);
    client
        .get_queue_url()
        .queue_name(name)
        .send()
        .await
        .map_err(|e| sdk_err(name, &e, name))?
        .queue_url
        .ok_or_else(|| backend_err(name, "GetQueueUrl returned no URL"))
}

/// One line saying what went wrong, with a hint for the usual causes.
fn explain<E: ProvideErrorMetadata + std::error::Error + 'static, R: std::fmt::Debug>(
    e: &SdkError<E, R>,
    name: &str,
) -> String {
    let code = e.code().unwrap_or("");
    let detail = one_line(&DisplayErrorContext(e).to_string());
    if code.contains("NonExistentQueue") || code.contains("QueueDoesNotExist") {
        return format!("queue {name} does not exist (create it with `spotbatch queue create sqs://{name} --dlq`)");
    }
    match e {
        SdkError::DispatchFailure(d) if d.is_io() || d.is_timeout() => {
            format!("cannot reach the SQS endpoint (check the endpoint/region and the network): {detail}")
        }
        _ if detail.contains("credentials") || detail.contains("Credentials") => {
            format!("no usable AWS credentials (set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or a profile): {detail}")
        }
        _ => detail,
    }
}

/// An SDK error as a queue error for `queue`, explained for `name`: [`QueueError::Unreachable`]
/// when the endpoint could not be reached (so a caller can tell an outage from an empty queue),
/// else a backend error. Every dispatch failure but a user (configuration) error is an outage:
/// no response came back, whether the connection was refused, timed out or was closed before an
/// answer ("connection closed before message completed", which a cut link or a load balancer
/// dropping the endpoint gives).
fn sdk_err<E: ProvideErrorMetadata + std::error::Error + 'static, R: std::fmt::Debug>(
    queue: &str,
    e: &SdkError<E, R>,
    name: &str,
) -> QueueError {
    let message = explain(e, name);
    match e {
        SdkError::DispatchFailure(d) if !d.is_user() => QueueError::Unreachable {
            queue: queue.to_string(),
            backend: BACKEND,
            source: message.into(),
        },
        SdkError::TimeoutError(_) => QueueError::Unreachable {
            queue: queue.to_string(),
            backend: BACKEND,
            source: message.into(),
        },
        _ => backend_err(queue, message),
    }
}

fn backend_err(queue: &str, e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> QueueError {
    QueueError::Backend {
        queue: queue.to_string(),
        backend: BACKEND,
        source: e.into(),
    }
}

fn string_attr(v: &str) -> MessageAttributeValue {
    MessageAttributeValue::builder()
        .data_type("String")
        .string_value(v)
        .build()
        .unwrap_or_else(|_| {
            MessageAttributeValue::builder()
                .data_type("String")
                .build()
                .expect("data type set")
        })
}

/// SQS bodies are text of a restricted character set; anything else goes base64-encoded (the
/// returned encoding goes in the message's `spotbatch-encoding` attribute).
pub fn encode_body(body: &[u8]) -> (String, Option<&'static str>) {
    match std::str::from_utf8(body) {
        Ok(s) if !s.is_empty() && s.chars().all(sqs_char) => (s.to_string(), None),
        _ => (
            base64::engine::general_purpose::STANDARD.encode(body),
            Some("base64"),
        ),
    }
}

/// A received message's payload: its body text, base64-decoded when its `spotbatch-encoding`
/// attribute says `base64` (a body that is not valid base64 is taken as it is: the shard decoder
/// then refuses it and it is dead-lettered).
pub fn decode_body(body: &str, encoding: Option<&str>) -> Vec<u8> {
    match encoding {
        Some("base64") => base64::engine::general_purpose::STANDARD
            .decode(body)
            .unwrap_or_else(|_| body.as_bytes().to_vec()),
        _ => body.as_bytes().to_vec(),
    }
}

fn sqs_char(c: char) -> bool {
    matches!(c, '\u{9}' | '\u{A}' | '\u{D}' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..='\u{10FFFF}')
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_forms() {
        let t = parse_uri("sqs://jobs").unwrap();
        assert_eq!(
            (t.name.as_str(), t.url, t.region, t.endpoint),
            ("jobs", None, None, None)
        );
        let t = parse_uri("sqs://jobs-1?region=eu-west-1&endpoint=http://127.0.0.1:5000").unwrap();
        assert_eq!(t.region.as_deref(), Some("eu-west-1"));
        assert_eq!(t.endpoint.as_deref(), Some("http://127.0.0.1:5000"));
        let t = parse_uri("https://sqs.us-east-2.amazonaws.com/123456789012/work").unwrap();
        assert_eq!(
            (t.name.as_str(), t.region.as_deref()),
            ("work", Some("us-east-2"))
        );
        assert_eq!(
            t.endpoint.as_deref(),
            Some("https://sqs.us-east-2.amazonaws.com")
        );
        let t = parse_uri("http://127.0.0.1:5000/123456789012/work").unwrap();
        assert_eq!(t.endpoint.as_deref(), Some("http://127.0.0.1:5000"));
        assert!(parse_uri("sqs://bad name").is_err());
        assert!(parse_uri("sqs://q?colour=red").is_err());
        assert!(parse_uri("https://example.com/q").is_err());
    }

    #[test]
    fn bodies_round_trip() {
        for body in [
            b"{\"v\":1}".to_vec(),
            (0..=255u8).collect(),
            Vec::new(),
            "ünï ✓".as_bytes().to_vec(),
        ] {
            let (text, enc) = encode_body(&body);
            assert_eq!(decode_body(&text, enc), body);
        }
        assert_eq!(encode_body(b"{}").1, None);
    }
}

//! The lease queue: spotbatch's one seam between planning and work.
//!
//! This crate owns the [`LeaseQueue`] trait, the rules every backend keeps (written on the trait
//! and its methods), the backends themselves ([`sqlite`] today; SQS and Kafka follow), and the
//! [`conformance`] suite that every backend's tests run.
//!
//! # The lease contract
//!
//! * An item is *visible* until a consumer leases it. A lease hides it for a visibility timeout;
//!   the lease's [`Lease::deadline`] says until when. Until then no other consumer can lease it.
//! * If the holder neither [acks](LeaseQueue::ack), [extends](LeaseQueue::extend) nor
//!   [releases](LeaseQueue::release) the lease before its deadline, the item becomes visible again
//!   and is redelivered with a higher [`Lease::delivery_count`]. A worker that was `kill -9`-ed is
//!   covered this way.
//! * Delivery is at-least-once. spotbatch makes *outputs* effectively-once by writing each shard to
//!   a deterministic key, so a redelivered item is harmless.
//! * An item whose delivery count reaches the queue's `max_attempts` without an ack is moved to the
//!   dead-letter queue, with its last recorded error, instead of being delivered again.
#![warn(missing_docs)]

use std::fmt;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;

pub mod conformance;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod memory;
pub mod sqlite;
#[cfg(feature = "sqs")]
pub mod sqs;

/// What can go wrong talking to a queue. Every variant names the queue (and the item where there
/// is one) it concerns.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QueueError {
    /// The queue URI could not be understood.
    #[error("queue uri {uri:?}: {reason}")]
    InvalidUri {
        /// The URI as given.
        uri: String,
        /// Why it was refused.
        reason: String,
    },
    /// The lease is no longer held: it expired and may now belong to another consumer, or the item
    /// was acked or dead-lettered. Work on the item must stop.
    #[error("queue {queue}: lease on item {item} is no longer held (expired, acked or re-leased)")]
    LeaseLost {
        /// The queue's name.
        queue: String,
        /// The item's id.
        item: String,
    },
    /// The queue's service could not be reached (every Kafka broker down or unreachable, a
    /// connection refused or timed out): not an answer about the queue's contents, so an empty
    /// queue is never reported this way. A caller may wait and try again, or give up after a time
    /// of its choosing.
    #[error("queue {queue}: {backend} unreachable: {source}")]
    Unreachable {
        /// The queue's name.
        queue: String,
        /// Which backend (`sqlite`, `sqs`, `kafka`).
        backend: &'static str,
        /// What failed to connect.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The backend failed.
    #[error("queue {queue}: {backend} error: {source}")]
    Backend {
        /// The queue's name.
        queue: String,
        /// Which backend (`sqlite`, `sqs`, `kafka`).
        backend: &'static str,
        /// The backend's own error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Result alias for queue operations.
pub type Result<T, E = QueueError> = std::result::Result<T, E>;

/// An item to put on the queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewItem {
    /// A stable id (for spotbatch: the shard id). Backends that can deduplicate by id do so; callers
    /// must not rely on it.
    pub id: String,
    /// The payload: small, self-describing bytes (for spotbatch: a JSON `ShardTask`).
    pub body: Vec<u8>,
}

/// An opaque proof of holding a lease. Only the holder can extend, ack or release with it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LeaseToken(pub String);

/// One leased item.
#[derive(Debug, Clone)]
pub struct Lease {
    /// The item's id.
    pub id: String,
    /// The item's payload, exactly as enqueued.
    pub body: Vec<u8>,
    /// The token for extend/ack/release.
    pub token: LeaseToken,
    /// How many times this item has been delivered, this delivery included (1 on first delivery).
    pub delivery_count: u32,
    /// When the lease runs out unless extended. Backends report a conservative (never later than
    /// the true) deadline.
    pub deadline: SystemTime,
    /// When the item was last handed back (released, or its lease expired), where the backend
    /// knows it: the time from then to this lease is the recovery time.
    pub released_at: Option<SystemTime>,
}

/// A dead-lettered item, with the reason it was given up on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The item's id.
    pub id: String,
    /// The item's payload.
    pub body: Vec<u8>,
    /// The last error recorded for it, one line.
    pub reason: String,
    /// Deliveries it had.
    pub delivery_count: u32,
}

/// How many items a queue holds, by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Depth {
    /// Items that can be leased now.
    pub visible: u64,
    /// Items currently leased (or delayed).
    pub in_flight: u64,
    /// Items in the dead-letter queue.
    pub dead: u64,
}

impl Depth {
    /// Items still to be worked: visible plus in flight.
    pub fn pending(&self) -> u64 {
        self.visible + self.in_flight
    }
}

/// A queue with visibility-timeout leases. See the crate docs for the contract.
///
/// Retry policy belongs to each backend and each operation; the trait's callers do not retry.
#[async_trait]
pub trait LeaseQueue: Send + Sync + fmt::Debug {
    /// The queue's name, for logs and errors.
    fn name(&self) -> &str;

    /// Adds items, visible at once.
    ///
    /// Enqueueing an id that is already waiting or leased may be ignored (SQLite) or may add a
    /// duplicate (SQS); both are correct because work is idempotent. Enqueueing an id that sits in
    /// the dead-letter queue re-drives it where the backend can tell (SQLite).
    async fn enqueue(&self, items: &[NewItem]) -> Result<()>;

    /// [`LeaseQueue::enqueue`], saying how many items were new where the backend can tell (an id
    /// already waiting or leased is not added again: SQLite); `None` where it cannot.
    async fn enqueue_counted(&self, items: &[NewItem]) -> Result<Option<usize>> {
        self.enqueue(items).await.map(|()| None)
    }

    /// Leases up to `max` visible items for `visibility`, waiting up to `wait` for at least one.
    /// Returns an empty list when none became visible in time. Items that reach `max_attempts`
    /// deliveries without an ack are dead-lettered here instead of being returned.
    async fn lease(&self, max: usize, visibility: Duration, wait: Duration) -> Result<Vec<Lease>>;

    /// Pushes a held lease's deadline to now + `visibility` and returns the new deadline.
    /// Fails with [`QueueError::LeaseLost`] if the lease is no longer held: the caller must stop
    /// working on the item, because someone else may now own it.
    async fn extend(&self, lease: &Lease, visibility: Duration) -> Result<SystemTime>;

    /// Removes finished items. Idempotent: acking twice, or acking an item that is already gone,
    /// succeeds. Call only after the item's output is durable.
    async fn ack(&self, leases: &[Lease]) -> Result<()>;

    /// Gives leases back: the items become visible again at once. `error` (one line) is recorded as
    /// the item's last error and becomes the dead-letter reason if it never succeeds. Releasing a
    /// lease that is no longer held is a no-op.
    async fn release(&self, leases: &[Lease], error: Option<&str>) -> Result<()>;

    /// Moves a held item to the dead-letter queue now, with `reason` (one line).
    async fn dead_letter(&self, lease: &Lease, reason: &str) -> Result<()>;

    /// Counts items by state.
    async fn depth(&self) -> Result<Depth>;

    /// Lists dead-lettered items (at most `max`).
    async fn dead_letters(&self, max: usize) -> Result<Vec<DeadLetter>>;

    /// Requests made to a remote service through this handle, where the backend counts them.
    fn requests(&self) -> Option<u64> {
        None
    }

    /// Called when the worker stops using the queue, after its leases were acked or released:
    /// backends with coarse ownership hand it back now (Kafka commits and leaves the group, so
    /// its partitions move within seconds). Others need nothing.
    async fn close(&self) -> Result<()> {
        Ok(())
    }
}

/// Configuration shared by every backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueConfig {
    /// Deliveries after which an un-acked item is dead-lettered.
    pub max_attempts: u32,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self { max_attempts: 3 }
    }
}

/// The error for a queue scheme whose backend this build left out.
#[allow(dead_code)] // used only in builds without one of the features
fn not_built(uri: &str, feature: &str) -> QueueError {
    QueueError::InvalidUri {
        uri: uri.to_string(),
        reason: format!(
            "this build has no {feature} queues (built without the `{feature}` feature)"
        ),
    }
}

/// Opens a queue from its URI: `sqlite://PATH[?queue=NAME]`, `sqs://NAME[?region=…&endpoint=…]`,
/// an SQS queue URL, or `kafka://BROKER[,BROKER…]/TOPIC[?partitions=N&group=G]`.
///
/// Relative SQLite paths are taken as given (callers resolve them against the manifest's folder
/// first).
pub async fn open(uri: &str, config: QueueConfig) -> Result<Box<dyn LeaseQueue>> {
    let scheme = uri.split_once("://").map(|(s, _)| s).unwrap_or("");
    match scheme {
        "sqlite" => Ok(Box::new(sqlite::SqliteQueue::open_uri(uri, config).await?)),
        #[cfg(feature = "sqs")]
        "sqs" | "http" | "https" => Ok(Box::new(sqs::SqsQueue::open_uri(uri, config).await?)),
        #[cfg(feature = "kafka")]
        "kafka" => Ok(Box::new(kafka::KafkaQueue::open_uri(uri, config).await?)),
        #[cfg(not(feature = "sqs"))]
        "sqs" | "http" | "https" => Err(not_built(uri, "sqs")),
        #[cfg(not(feature = "kafka"))]
        "kafka" => Err(not_built(uri, "kafka")),
        _ => Err(QueueError::InvalidUri {
            uri: uri.to_string(),
            reason: "expected sqlite://PATH, sqs://NAME, an SQS queue URL or kafka://BROKERS/TOPIC"
                .to_string(),
        }),
    }
}

/// What [`create`] made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Created {
    /// A SQLite queue file (dead letters live in the same file).
    Sqlite,
    /// A Kafka topic and its `TOPIC-dlq`.
    Kafka {
        /// The topic.
        topic: String,
        /// Its partitions.
        partitions: u32,
    },
    /// An SQS queue, and its dead-letter queue when asked for.
    Sqs {
        /// The queue's URL.
        url: String,
        /// Receives before the redrive policy moves a message to the DLQ, when there is one.
        dlq_after: Option<u32>,
    },
}

/// Creates the queue `uri` names (idempotent): a SQLite file, a Kafka topic with its DLQ topic,
/// or an SQS queue (with `dlq`, `NAME-dlq` and a redrive policy after `max_attempts` receives).
pub async fn create(uri: &str, dlq: bool, max_attempts: u32) -> Result<Created> {
    let scheme = uri.split_once("://").map(|(s, _)| s).unwrap_or("");
    match scheme {
        "sqlite" => {
            open(uri, QueueConfig { max_attempts }).await?;
            Ok(Created::Sqlite)
        }
        #[cfg(feature = "kafka")]
        "kafka" => {
            kafka::create(uri).await?;
            let t = kafka::parse_uri(uri)?;
            Ok(Created::Kafka {
                topic: t.topic,
                partitions: u32::try_from(t.partitions).unwrap_or(0),
            })
        }
        #[cfg(feature = "sqs")]
        _ if scheme != "kafka" => Ok(Created::Sqs {
            url: sqs::SqsQueue::create(uri, dlq, max_attempts).await?,
            dlq_after: dlq.then_some(max_attempts),
        }),
        _ => {
            let _ = dlq;
            Err(QueueError::InvalidUri {
                uri: uri.to_string(),
                reason: "this build has no such queue backend (sqlite:// always; sqs:// and kafka:// with their features)".into(),
            })
        }
    }
}

/// Milliseconds since the Unix epoch for `t` (0 for times before it).
pub(crate) fn unix_millis(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The time `ms` milliseconds after the Unix epoch.
pub(crate) fn from_unix_millis(ms: i64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

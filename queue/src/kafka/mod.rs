//! The Kafka backend: Kafka has no per-message visibility timeout, so this backend provides one.
//!
//! - **Coarse lease**: partition ownership. Workers form a consumer group (`group.protocol=classic`,
//!   `cooperative-sticky`); a partition belongs to one worker at a time.
//! - **Per-item leases** live in the worker: each record fetched from an owned partition is leased
//!   to the pipeline with its own deadline, token and delivery count. Expired or released items are
//!   delivered again *by the same worker* while it owns the partition (this granularity is the
//!   suite's documented Kafka allowance).
//! - **Acks may come out of order**; only the contiguous low-water mark of each partition is
//!   committed. After a rebalance the new owner starts from the committed offset and may see shards
//!   that were already finished beyond it: the worker checks their done markers in object storage
//!   and acks them without work. Offset-commit metadata is not relied on (not every Kafka-protocol
//!   broker keeps it).
//! - **Offset-gap guard**: a partition is assigned at its committed offset, read explicitly, and
//!   every fetched record must come at the next offset. A record further on leaves a *hole* that is
//!   never committed across until the partition is read again from its start by a separate reader:
//!   offsets that hold no record there (transaction markers, compaction) are passed, records the
//!   group consumer never received are delivered after all, and the gap is counted
//!   (`spotbatch_kafka_offset_gaps_total`) and logged with the partition and offsets. (tansu 0.6
//!   answered a fetch inside a multi-record batch with the next batch, which a backend committing
//!   past what it received turned into silent loss.)
//! - **Polling never stops**: a poller thread keeps calling `poll` (so `max.poll.interval.ms` never
//!   evicts a worker busy on a long shard) and pauses the partitions while enough records wait.
//! - **Release** on drain ([`LeaseQueue::close`]): commit what is contiguous, then leave the group so
//!   the partitions move within seconds, not after the session timeout. A worker that dies is
//!   covered by the session timeout.
//! - **Dead letters**: an item that fails `max_attempts` times, or a record that is not ours, is
//!   produced to `TOPIC-dlq` with the reason in a header, then committed past.
//!
//! The files: `book.rs` ([`Book`]) is the per-item bookkeeping with no I/O (partitions owned, records, leases,
//! low-water marks, the dead-letter decision, offsets to commit), over one partition's records and
//! the gap guard in `part.rs`; `group.rs` the consumer group (rebalance callbacks, read-back, the
//! poller and committer threads); `target.rs` the URI, topic creation and errors; this file the
//! queue itself, doing the I/O around a `Mutex` of the book.

mod book;
mod group;
mod part;
mod target;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::Notify;

/// The bookkeeping, public for `queue/tests/kafka_book_model.rs` only (not an API).
#[doc(hidden)]
pub use book::{Book, Dead, Fetched, Hole};
use group::{header, Ctx, State, H_COUNT, H_ID, H_REASON};
use target::{backend_err, kafka_err};
pub use target::{create, parse_uri, KafkaTarget};

use crate::{DeadLetter, Depth, Lease, LeaseQueue, NewItem, QueueConfig, QueueError, Result};

/// A Kafka topic as a lease queue, for one worker (one consumer-group member).
pub struct KafkaQueue {
    target: KafkaTarget,
    consumer: Arc<BaseConsumer<Ctx>>,
    producer: FutureProducer,
    state: Arc<Mutex<State>>,
    notify: Arc<Notify>,
    stop: Arc<AtomicBool>,
    poller: Mutex<Option<std::thread::JoinHandle<()>>>,
    gaps: Arc<AtomicU64>,
    retries: Arc<AtomicU64>,
    /// Whether this handle has joined the consumer group (on its first lease).
    joined: tokio::sync::Mutex<bool>,
}

impl std::fmt::Debug for KafkaQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaQueue")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

impl KafkaQueue {
    /// Opens the topic in `uri`: a missing topic or unreachable brokers are clear errors. The
    /// consumer group is joined on the first lease ([`KafkaQueue::join`]), not here: a handle
    /// that only produces or reads the depth (`enqueue`, `submit`, the coordinator, `queue depth`)
    /// must not be a member, or it would take a share of the partitions it never reads, and its
    /// joining and leaving would move every worker's partitions twice.
    pub async fn open_uri(uri: &str, config: QueueConfig) -> Result<Self> {
        let target = parse_uri(uri)?;
        let err = |e: String| backend_err(&target.topic, e);
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", &target.brokers)
            .set("linger.ms", "0")
            .set("message.timeout.ms", "30000")
            // A missing topic is an error to report, not one to create by accident.
            .set("allow.auto.create.topics", "false")
            .create()
            .map_err(|e| err(e.to_string()))?;
        // The topic must exist (and the brokers answer) before joining the group.
        let meta_target = target.clone();
        let p = producer.clone();
        tokio::task::spawn_blocking(move || {
            let t = &meta_target;
            let m = p
                .client()
                .fetch_metadata(Some(&t.topic), Duration::from_secs(10))
                .map_err(|e| {
                    kafka_err(&t.topic, &e, &format!("cannot reach the Kafka brokers {}", t.brokers))
                })?;
            let exists = m
                .topics()
                .first()
                .is_some_and(|mt| mt.error().is_none() && !mt.partitions().is_empty());
            if exists {
                Ok(())
            } else {
                Err(backend_err(
                    &t.topic,
                    format!(
                        "topic {} does not exist (create it with `spotbatch queue create kafka://{}/{}`)",
                        t.topic, t.brokers, t.topic
                    ),
                ))
            }
        })
        .await
        .map_err(|e| err(e.to_string()))??;
        let state = Arc::new(Mutex::new(State::new(config.max_attempts)));
        let notify = Arc::new(Notify::new());
        let stop: Arc<AtomicBool> = Arc::default();
        let gaps: Arc<AtomicU64> = Arc::default();
        let retries: Arc<AtomicU64> = Arc::default();
        let ctx = Ctx {
            topic: target.topic.clone(),
            brokers: target.brokers.clone(),
            state: Arc::clone(&state),
            notify: Arc::clone(&notify),
            stop: Arc::clone(&stop),
            gaps: Arc::clone(&gaps),
        };
        let client_id = format!(
            "spotbatch-{}-{}",
            std::process::id(),
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_nanos() % 1_000_000_000_000)
                .unwrap_or_default()
        );
        let consumer: BaseConsumer<Ctx> = ClientConfig::new()
            .set("bootstrap.servers", &target.brokers)
            .set("client.id", &client_id)
            .set("group.id", &target.group)
            .set("group.protocol", "classic")
            .set("partition.assignment.strategy", "cooperative-sticky")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", target.session_timeout_ms.to_string())
            // Frequent heartbeats: members learn of a rebalance (a drained worker leaving) quickly.
            .set(
                "heartbeat.interval.ms",
                (target.session_timeout_ms / 10)
                    .clamp(100, 1000)
                    .to_string(),
            )
            .set("max.poll.interval.ms", "300000")
            // Short broker-side waits: a record on one partition is not held back by another
            // partition's empty long-poll.
            .set("fetch.wait.max.ms", "50")
            .create_with_context(ctx)
            .map_err(|e| err(e.to_string()))?;
        Ok(Self {
            target,
            consumer: Arc::new(consumer),
            producer,
            state,
            notify,
            stop,
            poller: Mutex::new(None),
            gaps,
            retries,
            joined: tokio::sync::Mutex::new(false),
        })
    }

    /// Joins the consumer group (once): subscribes, starts the poller and the committer, and
    /// waits (up to 30 s) for the first assignment so the first lease finds work at once.
    async fn join(&self) -> Result<()> {
        let mut joined = self.joined.lock().await;
        if *joined {
            return Ok(());
        }
        let topic = &self.target.topic;
        self.consumer
            .subscribe(&[topic])
            .map_err(|e| backend_err(topic, e.to_string()))?;
        let poller = group::start_poller(
            Arc::clone(&self.consumer),
            Arc::clone(&self.state),
            Arc::clone(&self.stop),
            topic.clone(),
        );
        if let Ok(mut p) = self.poller.lock() {
            *p = poller;
        }
        group::start_committer(
            Arc::clone(&self.consumer),
            Arc::clone(&self.state),
            Arc::clone(&self.stop),
            Arc::clone(&self.retries),
            topic.clone(),
        );
        *joined = true;
        let until = Instant::now() + Duration::from_secs(30);
        while Instant::now() < until {
            let notified = self.notify.notified();
            if self.state()?.assigned_once {
                break;
            }
            let _ = tokio::time::timeout(Duration::from_millis(100), notified).await;
        }
        Ok(())
    }

    /// How many offset gaps this member found: fetches that skipped records it then read back
    /// (also counted in `spotbatch_kafka_offset_gaps_total`).
    pub fn offset_gaps(&self) -> u64 {
        self.gaps.load(Ordering::Relaxed)
    }

    /// How many partition commits this member tried again after the broker refused them (any
    /// broker does while its group rebalances; also counted in
    /// `spotbatch_kafka_commit_retries_total`).
    pub fn commit_retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }

    fn state(&self) -> Result<MutexGuard<'_, State>> {
        self.state
            .lock()
            .map_err(|_| backend_err(&self.target.topic, "state lock poisoned"))
    }

    /// Produces `dead` to the dead-letter topic, then marks it done (the mark may pass it).
    async fn bury(&self, dead: Dead) -> Result<()> {
        self.produce_dlq(&dead.id, &dead.body, &dead.reason, dead.deliveries)
            .await?;
        self.state()?.book.acked(dead.partition, dead.offset);
        Ok(())
    }

    async fn produce_dlq(
        &self,
        id: &str,
        body: &[u8],
        reason: &str,
        deliveries: u32,
    ) -> Result<()> {
        let topic = format!("{}-dlq", self.target.topic);
        let count = deliveries.to_string();
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: H_ID,
                value: Some(id),
            })
            .insert(Header {
                key: H_REASON,
                value: Some(reason),
            })
            .insert(Header {
                key: H_COUNT,
                value: Some(&count),
            });
        self.producer
            .send(
                FutureRecord::to(&topic)
                    .key(id)
                    .payload(body)
                    .headers(headers),
                Duration::from_secs(30),
            )
            .await
            .map(|_| ())
            .map_err(|(e, _)| {
                backend_err(
                    &topic,
                    format!("cannot produce to the dead-letter topic: {e}"),
                )
            })
    }

    fn watermarks(&self, topic: &str) -> Result<Vec<(i32, i64, i64)>> {
        let meta = self
            .consumer
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .map_err(|e| {
                kafka_err(
                    topic,
                    &e,
                    &format!("cannot reach the Kafka brokers {}", self.target.brokers),
                )
            })?;
        let mut out = Vec::new();
        for t in meta.topics() {
            for p in t.partitions() {
                let (lo, hi) = self
                    .consumer
                    .fetch_watermarks(topic, p.id(), Duration::from_secs(10))
                    .map_err(|e| kafka_err(topic, &e, "cannot read the partitions' offsets"))?;
                out.push((p.id(), lo, hi));
            }
        }
        Ok(out)
    }
}

#[async_trait]
impl LeaseQueue for KafkaQueue {
    fn name(&self) -> &str {
        &self.target.topic
    }

    async fn enqueue(&self, items: &[NewItem]) -> Result<()> {
        let sends = items.iter().map(|item| {
            let headers = OwnedHeaders::new().insert(Header {
                key: H_ID,
                value: Some(item.id.as_str()),
            });
            self.producer.send(
                FutureRecord::to(&self.target.topic)
                    .key(&item.id)
                    .payload(&item.body)
                    .headers(headers),
                Duration::from_secs(30),
            )
        });
        for r in futures::future::join_all(sends).await {
            r.map_err(|(e, _)| backend_err(&self.target.topic, format!("cannot produce: {e}")))?;
        }
        Ok(())
    }

    async fn lease(&self, max: usize, visibility: Duration, wait: Duration) -> Result<Vec<Lease>> {
        self.join().await?;
        let give_up = Instant::now() + wait;
        let mut out = Vec::new();
        let mut lingered = false;
        loop {
            let notified = self.notify.notified();
            let now = SystemTime::now();
            let (got, exhausted) =
                self.state()?
                    .book
                    .lease(max.saturating_sub(out.len()), now, now + visibility);
            out.extend(got);
            for dead in exhausted {
                self.bury(dead).await?;
            }
            if out.len() >= max || Instant::now() >= give_up || (!out.is_empty() && lingered) {
                return Ok(out);
            }
            // Records of several partitions arrive a little apart: once something is here, wait
            // a moment for more so a lease for many gets many.
            let nap = if out.is_empty() {
                Duration::from_millis(100)
            } else {
                Duration::from_millis(50)
            };
            lingered |= !out.is_empty();
            let nap = give_up.saturating_duration_since(Instant::now()).min(nap);
            let _ = tokio::time::timeout(nap, notified).await;
        }
    }

    async fn extend(&self, lease: &Lease, visibility: Duration) -> Result<SystemTime> {
        let now = SystemTime::now();
        let extended = self
            .state
            .lock()
            .ok()
            .and_then(|mut st| st.book.extend(&lease.token, now, visibility));
        extended.ok_or_else(|| QueueError::LeaseLost {
            queue: self.target.topic.clone(),
            item: lease.id.clone(),
        })
    }

    async fn ack(&self, leases: &[Lease]) -> Result<()> {
        // Acking a lease no longer held is fine: the item is done, and a new owner of the
        // partition finds its done marker.
        if let Ok(mut st) = self.state.lock() {
            for l in leases {
                st.book.ack(&l.token);
            }
        }
        Ok(())
    }

    async fn release(&self, leases: &[Lease], error: Option<&str>) -> Result<()> {
        let dead: Vec<Dead> = match self.state.lock() {
            Ok(mut st) => leases
                .iter()
                .filter_map(|l| st.book.release(&l.token, error))
                .collect(),
            Err(_) => Vec::new(),
        };
        for d in dead {
            self.bury(d).await?;
        }
        self.notify.notify_waiters();
        Ok(())
    }

    async fn dead_letter(&self, lease: &Lease, reason: &str) -> Result<()> {
        let held = self
            .state
            .lock()
            .ok()
            .and_then(|mut st| st.book.dead_letter(&lease.token, reason));
        let Some(dead) = held else {
            return Err(QueueError::LeaseLost {
                queue: self.target.topic.clone(),
                item: lease.id.clone(),
            });
        };
        self.bury(dead).await
    }

    async fn depth(&self) -> Result<Depth> {
        let consumer = Arc::clone(&self.consumer);
        let topic = self.target.topic.clone();
        let marks = self.watermarks(&topic)?;
        let mut tpl = TopicPartitionList::new();
        for (p, _, _) in &marks {
            tpl.add_partition(&topic, *p);
        }
        let committed = tokio::task::spawn_blocking(move || {
            consumer.committed_offsets(tpl, Duration::from_secs(10))
        })
        .await
        .map_err(|e| backend_err(&self.target.topic, e))?
        .map_err(|e| kafka_err(&self.target.topic, &e, "cannot read the committed offsets"))?;
        // Owned partitions: what this worker has acked counts even if the broker has not shown the
        // commit yet (a commit can be lost in a rebalance; librdkafka's mock cluster was seen
        // reporting stale committed offsets).
        let floors: HashMap<i32, i64> = self.state()?.book.floors();
        let mut lag = 0i64;
        for (p, lo, hi) in &marks {
            let c = committed
                .find_partition(&topic, *p)
                .and_then(|e| match e.offset() {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                })
                .unwrap_or(*lo)
                .max(floors.get(p).copied().unwrap_or(0));
            lag += (hi - c.max(*lo)).max(0);
        }
        let (in_flight, done_uncommitted) = self.state()?.book.held_counts();
        let dead: i64 = self
            .watermarks(&format!("{topic}-dlq"))
            .map(|m| m.iter().map(|(_, lo, hi)| hi - lo).sum())
            .unwrap_or(0);
        let held = i64::try_from(in_flight.saturating_add(done_uncommitted)).unwrap_or(i64::MAX);
        let visible = lag.saturating_sub(held).max(0);
        Ok(Depth {
            visible: visible as u64,
            in_flight,
            dead: dead.max(0) as u64,
        })
    }

    async fn dead_letters(&self, max: usize) -> Result<Vec<DeadLetter>> {
        let topic = format!("{}-dlq", self.target.topic);
        let marks = self.watermarks(&topic)?;
        let brokers = self.target.brokers.clone();
        let t2 = topic.clone();
        tokio::task::spawn_blocking(move || -> Result<Vec<DeadLetter>> {
            let reader: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", &brokers)
                .set(
                    "group.id",
                    format!("spotbatch-dlq-reader-{}", std::process::id()),
                )
                .set("enable.auto.commit", "false")
                .create()
                .map_err(|e| backend_err(&t2, e))?;
            let mut tpl = TopicPartitionList::new();
            let mut remaining: HashMap<i32, i64> = HashMap::new();
            for (p, lo, hi) in &marks {
                if hi > lo {
                    let _ = tpl.add_partition_offset(&t2, *p, Offset::Offset(*lo));
                    remaining.insert(*p, *hi);
                }
            }
            let mut out = Vec::new();
            if remaining.is_empty() {
                return Ok(out);
            }
            reader.assign(&tpl).map_err(|e| backend_err(&t2, e))?;
            let until = Instant::now() + Duration::from_secs(20);
            while !remaining.is_empty() && out.len() < max && Instant::now() < until {
                if let Some(Ok(m)) = reader.poll(Duration::from_millis(200)) {
                    if remaining
                        .get(&m.partition())
                        .is_some_and(|hi| m.offset() + 1 >= *hi)
                    {
                        remaining.remove(&m.partition());
                    }
                    out.push(DeadLetter {
                        id: header(&m, H_ID)
                            .unwrap_or_else(|| format!("{}@{}", m.partition(), m.offset())),
                        body: m.payload().map(<[u8]>::to_vec).unwrap_or_default(),
                        reason: header(&m, H_REASON).unwrap_or_else(|| "dead-lettered".into()),
                        delivery_count: header(&m, H_COUNT)
                            .and_then(|c| c.parse().ok())
                            .unwrap_or(0),
                    });
                }
            }
            Ok(out)
        })
        .await
        .map_err(|e| backend_err(&topic, e))?
    }

    async fn close(&self) -> Result<()> {
        if !*self.joined.lock().await {
            // Never a member: nothing owned, nothing to commit, no group to leave.
            return Ok(());
        }
        // Commit every owned partition's floor (trying again for a while if the broker refuses,
        // as it does while the group rebalances), then leave the group so the partitions move now.
        let consumer = Arc::clone(&self.consumer);
        let state = Arc::clone(&self.state);
        let topic = self.target.topic.clone();
        let stop = Arc::clone(&self.stop);
        let poller = self.poller.lock().ok().and_then(|mut p| p.take());
        tokio::task::spawn_blocking(move || {
            let until = Instant::now() + Duration::from_secs(5);
            loop {
                let commits = match state.lock() {
                    Ok(mut st) => st.book.take_all_commits(),
                    Err(_) => Vec::new(),
                };
                if commits.is_empty() {
                    break;
                }
                let mut tpl = TopicPartitionList::new();
                for (p, next) in &commits {
                    let _ = tpl.add_partition_offset(&topic, *p, Offset::Offset(*next));
                }
                match consumer.commit(&tpl, CommitMode::Sync) {
                    Ok(()) => break,
                    Err(e) if Instant::now() < until => {
                        tracing::debug!(error = %e, "kafka commit on close refused; trying again");
                        std::thread::sleep(Duration::from_millis(200));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, offsets = ?commits, "kafka commit on close failed; the next owner redoes from the last commit");
                        break;
                    }
                }
            }
            // Stop the poller, then close the consumer here: it leaves the group (so the partitions
            // move now, not after the session timeout) and finishes before the process can exit.
            stop.store(true, Ordering::Relaxed);
            if let Some(p) = poller {
                let _ = p.join();
            }
            if consumer.close_queue().is_ok() {
                let until = Instant::now() + Duration::from_secs(10);
                while !consumer.closed() && Instant::now() < until {
                    let _ = consumer.poll(Duration::from_millis(100));
                }
            }
        })
        .await
        .map_err(|e| backend_err(&self.target.topic, e))
    }
}

impl Drop for KafkaQueue {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

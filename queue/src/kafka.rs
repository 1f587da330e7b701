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
//! - **Polling never stops**: a poller thread keeps calling `poll` (so `max.poll.interval.ms` never
//!   evicts a worker busy on a long shard) and pauses the partitions while enough records wait.
//! - **Release** on drain ([`LeaseQueue::close`]): commit what is contiguous, then leave the group so
//!   the partitions move within seconds, not after the session timeout. A worker that dies is
//!   covered by the session timeout.
//! - **Dead letters**: an item that fails `max_attempts` times, or a record that is not ours, is
//!   produced to `TOPIC-dlq` with the reason in a header, then committed past.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaResult;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::Notify;

use crate::{
    DeadLetter, Depth, Lease, LeaseQueue, LeaseToken, NewItem, QueueConfig, QueueError, Result,
};

const BACKEND: &str = "kafka";
const H_ID: &str = "spotbatch-id";
const H_REASON: &str = "spotbatch-reason";
const H_COUNT: &str = "spotbatch-deliveries";
/// Records waiting to be leased before the partitions are paused.
const BUFFER_HIGH: usize = 64;

/// Where a Kafka queue is: `kafka://BROKER[,BROKER…]/TOPIC?partitions=N&group=G`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaTarget {
    /// Bootstrap servers, comma-separated.
    pub brokers: String,
    /// The topic.
    pub topic: String,
    /// Partitions to create the topic with.
    pub partitions: i32,
    /// The consumer group.
    pub group: String,
    /// Session timeout (how soon a dead worker's partitions move).
    pub session_timeout_ms: u32,
    /// Produce every record as its own batch: for brokers that cannot resume a partition in the
    /// middle of a multi-record batch (tansu 0.6).
    pub single_record_batches: bool,
}

/// Parses a Kafka queue URI.
pub fn parse_uri(uri: &str) -> Result<KafkaTarget> {
    let invalid = |reason: String| QueueError::InvalidUri {
        uri: uri.to_string(),
        reason,
    };
    let rest = uri
        .strip_prefix("kafka://")
        .ok_or_else(|| invalid("expected kafka://BROKER[,BROKER…]/TOPIC".into()))?;
    let (rest, query) = rest
        .split_once('?')
        .map_or((rest, None), |(r, q)| (r, Some(q)));
    let (brokers, topic) = rest
        .split_once('/')
        .ok_or_else(|| invalid("expected kafka://BROKER[,BROKER…]/TOPIC".into()))?;
    if brokers.is_empty() || brokers.split(',').any(|b| !b.contains(':')) {
        return Err(invalid("brokers are HOST:PORT, comma-separated".into()));
    }
    if topic.is_empty()
        || topic.len() > 200
        || !topic
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(invalid(format!(
            "{topic:?}: a topic is 1-200 letters, digits, '.', '_' or '-'"
        )));
    }
    let mut t = KafkaTarget {
        brokers: brokers.to_string(),
        topic: topic.to_string(),
        partitions: 8,
        group: format!("spotbatch-{topic}"),
        session_timeout_ms: 10_000,
        single_record_batches: false,
    };
    for pair in query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .filter(|p| !p.is_empty())
    {
        match pair.split_once('=') {
            Some(("partitions", n)) => {
                t.partitions = n
                    .parse()
                    .ok()
                    .filter(|n| (1..=10_000).contains(n))
                    .ok_or_else(|| invalid("partitions= takes 1..=10000".into()))?
            }
            Some(("group", g)) if !g.is_empty() => t.group = g.to_string(),
            Some(("session_timeout_ms", s)) => {
                t.session_timeout_ms = s
                    .parse()
                    .ok()
                    .filter(|s| (1000..=300_000).contains(s))
                    .ok_or_else(|| invalid("session_timeout_ms= takes 1000..=300000".into()))?
            }
            Some(("single_record_batches", v)) => {
                t.single_record_batches = v
                    .parse()
                    .map_err(|_| invalid("single_record_batches= takes true or false".into()))?
            }
            _ => {
                return Err(invalid(format!(
                    "unknown parameter {pair:?} (known: partitions, group, session_timeout_ms, single_record_batches)"
                )))
            }
        }
    }
    Ok(t)
}

/// Creates the topic and its dead-letter topic (`TOPIC-dlq`); existing topics are fine.
pub async fn create(uri: &str) -> Result<()> {
    let t = parse_uri(uri)?;
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &t.brokers)
        .create()
        .map_err(|e| backend_err(&t.topic, e))?;
    let dlq = format!("{}-dlq", t.topic);
    let topics = [
        NewTopic::new(&t.topic, t.partitions, TopicReplication::Fixed(1)),
        NewTopic::new(&dlq, 1, TopicReplication::Fixed(1)),
    ];
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(15)));
    let results = admin.create_topics(&topics, &opts).await.map_err(|e| {
        backend_err(
            &t.topic,
            format!("cannot create topics on {}: {e}", t.brokers),
        )
    })?;
    for r in results {
        if let Err((topic, code)) = r {
            if code != rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists {
                return Err(backend_err(&topic, format!("cannot create topic: {code}")));
            }
        }
    }
    Ok(())
}

#[derive(Debug)]
enum ItemState {
    Waiting,
    Leased { deadline: SystemTime },
    Acked,
}

#[derive(Debug)]
struct Item {
    id: String,
    body: Vec<u8>,
    state: ItemState,
    deliveries: u32,
    failures: u32,
    last_error: Option<String>,
}

#[derive(Debug, Default)]
struct Part {
    /// Bumped when the partition is revoked: old tokens stop working.
    epoch: u64,
    /// Every offset below this is done (the low-water mark): a record fetched again below it is
    /// not delivered again.
    floor: i64,
    /// Records of this partition the worker holds, by offset (acked ones until the low-water mark
    /// passes them).
    items: BTreeMap<i64, Item>,
}

#[derive(Debug, Default)]
struct State {
    parts: HashMap<i32, Part>,
    /// Records fetched and not yet leased: (partition, offset), oldest first.
    fresh: VecDeque<(i32, i64)>,
    next_epoch: u64,
    assigned_once: bool,
    paused: bool,
    /// Offsets to commit (partition → next offset), taken by the poller.
    to_commit: HashMap<i32, i64>,
}

impl State {
    /// The offset to commit for `p` now: the furthest of what waits for the poller and the
    /// contiguous acked mark (taken out of `to_commit`).
    fn take_commit(&mut self, p: i32) -> Option<i64> {
        let pending = self.to_commit.remove(&p);
        pending.max(self.parts.get(&p).and_then(low_water))
    }
}

struct Ctx {
    topic: String,
    state: Arc<Mutex<State>>,
    notify: Arc<Notify>,
}

impl ClientContext for Ctx {}

impl ConsumerContext for Ctx {
    /// A failed asynchronous commit (common while a rebalance is in progress) is queued again for
    /// the partitions still owned: otherwise the last offsets of a partition, committed once when
    /// its final item was acked, would stay uncommitted and the topic would never look drained.
    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        let Err(e) = result else {
            return;
        };
        let Ok(mut st) = self.state.lock() else {
            return;
        };
        let mut again = Vec::new();
        for el in offsets.elements_for_topic(&self.topic) {
            let (p, Offset::Offset(next)) = (el.partition(), el.offset()) else {
                continue;
            };
            if st.parts.contains_key(&p) {
                let e = st.to_commit.entry(p).or_insert(next);
                *e = (*e).max(next);
                again.push((p, next));
            }
        }
        tracing::debug!(error = %e, retry = ?again, "kafka commit failed; retrying");
    }

    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let parts: Vec<i32> = tpl
                .elements_for_topic(&self.topic)
                .iter()
                .map(|e| e.partition())
                .collect();
            tracing::info!(topic = %self.topic, partitions = ?parts, "kafka partitions revoked");
            let Ok(mut st) = self.state.lock() else {
                return;
            };
            let mut commit = TopicPartitionList::new();
            for e in tpl.elements_for_topic(&self.topic) {
                let p = e.partition();
                // Commit what is contiguous (including what the poller has not committed yet)
                // before the partition moves.
                let next = st.take_commit(p);
                st.parts.remove(&p);
                if let Some(next) = next {
                    let _ = commit.add_partition_offset(&self.topic, p, Offset::Offset(next));
                }
                st.fresh.retain(|(fp, _)| *fp != p);
            }
            drop(st);
            if commit.count() > 0 {
                let _ = consumer.commit(&commit, CommitMode::Sync);
            }
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            let Ok(mut st) = self.state.lock() else {
                return;
            };
            for e in tpl.elements_for_topic(&self.topic) {
                st.next_epoch += 1;
                let epoch = st.next_epoch;
                st.parts.entry(e.partition()).or_insert_with(|| Part {
                    epoch,
                    floor: 0,
                    items: BTreeMap::new(),
                });
            }
            st.assigned_once = true;
            let paused = st.paused;
            drop(st);
            // New partitions follow the buffer's pause state. librdkafka keeps an application's
            // pause on a partition across revoke and assign, so this also clears a pause left from
            // an earlier time this member owned it (else it would never be fetched again).
            let r = if paused {
                consumer.pause(tpl)
            } else {
                consumer.resume(tpl)
            };
            if let Err(e) = r {
                tracing::warn!(error = %e, paused, "kafka pause state of assigned partitions not set");
            }
            let parts: Vec<i32> = tpl
                .elements_for_topic(&self.topic)
                .iter()
                .map(|e| e.partition())
                .collect();
            tracing::info!(topic = %self.topic, partitions = ?parts, "kafka partitions assigned");
            self.notify.notify_waiters();
        }
    }
}

/// Rejoins the group when this member has held no partitions for a while although the group has no
/// more members than the topic has partitions. A balanced assignor never leaves a member idle then,
/// so the group is wedged: seen on tansu 0.6, where after a member's session expired the
/// cooperative-sticky rebalance revoked the survivor's partitions and assigned it nothing, with
/// no follow-up round, so the topic was never drained. Leaving and joining again starts a fresh
/// round that hands every partition out.
#[derive(Default)]
struct Watchdog {
    empty_since: Option<Instant>,
    checked_at: Option<Instant>,
}

impl Watchdog {
    /// How long a member may hold nothing before the group is examined.
    const GRACE: Duration = Duration::from_secs(3);

    fn check(&mut self, consumer: &BaseConsumer<Ctx>, topic: &str, group: &str, client_id: &str) {
        let empty = consumer
            .assignment()
            .map(|a| a.count() == 0)
            .unwrap_or(false);
        if !empty {
            self.empty_since = None;
            return;
        }
        let since = *self.empty_since.get_or_insert_with(Instant::now);
        if since.elapsed() < Self::GRACE
            || self.checked_at.is_some_and(|t| t.elapsed() < Self::GRACE)
        {
            return;
        }
        self.checked_at = Some(Instant::now());
        let timeout = Duration::from_secs(2);
        let members = match consumer.client().fetch_group_list(Some(group), timeout) {
            Ok(list) => list
                .groups()
                .iter()
                // Only a settled group that counts this member in.
                .find(|g| g.name() == group && g.state() == "Stable")
                // (Brokers name members CLIENT_ID-UUID; tansu reports no client id.)
                .filter(|g| {
                    g.members().iter().any(|m| {
                        m.client_id() == client_id
                            || m.id()
                                .strip_prefix(client_id)
                                .is_some_and(|r| r.starts_with('-'))
                    })
                })
                .map(|g| g.members().len()),
            Err(e) => {
                tracing::debug!(error = %e, "kafka group description failed");
                None
            }
        };
        let partitions = consumer
            .client()
            .fetch_metadata(Some(topic), timeout)
            .ok()
            .and_then(|m| m.topics().first().map(|t| t.partitions().len()));
        let (Some(members), Some(partitions)) = (members, partitions) else {
            return;
        };
        if members == 0 || members > partitions {
            return;
        }
        tracing::warn!(
            %topic, %group, members, partitions,
            "kafka group left this member without partitions; rejoining"
        );
        consumer.unsubscribe();
        if let Err(e) = consumer.subscribe(&[topic]) {
            tracing::warn!(error = %e, "kafka resubscribe failed");
        }
        self.empty_since = None;
    }
}

/// The next offset to commit for a partition: the first one not acked yet (None if nothing new).
fn low_water(part: &Part) -> Option<i64> {
    let mut next = None;
    for (off, item) in &part.items {
        match item.state {
            ItemState::Acked => next = Some(off + 1),
            _ => break,
        }
    }
    next
}

/// A Kafka topic as a lease queue, for one worker (one consumer-group member).
pub struct KafkaQueue {
    target: KafkaTarget,
    config: QueueConfig,
    consumer: Arc<BaseConsumer<Ctx>>,
    producer: FutureProducer,
    state: Arc<Mutex<State>>,
    notify: Arc<Notify>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    poller: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Unique per consumer, so this member can find itself in the group's description.
    client_id: String,
}

impl std::fmt::Debug for KafkaQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaQueue")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

impl KafkaQueue {
    /// Joins the consumer group of the topic in `uri` and waits (up to 30 s) for partitions.
    /// A missing topic or unreachable brokers are clear errors.
    pub async fn open_uri(uri: &str, config: QueueConfig) -> Result<Self> {
        let target = parse_uri(uri)?;
        let err = |e: String| backend_err(&target.topic, e);
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", &target.brokers)
            .set("linger.ms", "0")
            .set("message.timeout.ms", "30000")
            // A missing topic is an error to report, not one to create by accident.
            .set("allow.auto.create.topics", "false")
            .set(
                "batch.num.messages",
                if target.single_record_batches {
                    "1"
                } else {
                    "10000"
                },
            )
            .create()
            .map_err(|e| err(e.to_string()))?;
        // The topic must exist (and the brokers answer) before joining the group.
        let meta_target = target.clone();
        let meta = {
            let p = producer.clone();
            tokio::task::spawn_blocking(move || {
                p.client()
                    .fetch_metadata(Some(&meta_target.topic), Duration::from_secs(10))
                    .map_err(|e| format!("cannot reach the Kafka brokers {}: {e}", meta_target.brokers))
                    .and_then(|m| {
                        let t = m.topics().first().ok_or("no topic metadata")?;
                        if t.error().is_some() || t.partitions().is_empty() {
                            Err(format!(
                                "topic {} does not exist (create it with `spotbatch queue create kafka://{}/{}`)",
                                meta_target.topic, meta_target.brokers, meta_target.topic
                            ))
                        } else {
                            Ok(())
                        }
                    })
            })
            .await
            .map_err(|e| err(e.to_string()))?
        };
        meta.map_err(err)?;
        let state: Arc<Mutex<State>> = Arc::default();
        let notify = Arc::new(Notify::new());
        let ctx = Ctx {
            topic: target.topic.clone(),
            state: Arc::clone(&state),
            notify: Arc::clone(&notify),
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
        consumer
            .subscribe(&[&target.topic])
            .map_err(|e| err(e.to_string()))?;
        let q = Self {
            target,
            config,
            consumer: Arc::new(consumer),
            producer,
            state,
            notify,
            stop: Arc::default(),
            poller: Mutex::new(None),
            client_id,
        };
        q.start_poller();
        // Wait for the first assignment so the first lease finds work at once.
        let until = Instant::now() + Duration::from_secs(30);
        while Instant::now() < until {
            let notified = q.notify.notified();
            if q.state.lock().map(|s| s.assigned_once).unwrap_or(false) {
                break;
            }
            let _ = tokio::time::timeout(Duration::from_millis(100), notified).await;
        }
        Ok(q)
    }

    /// The poller: polls continuously (keeping group membership alive however long a shard takes),
    /// buffers records of owned partitions, pauses while enough wait, and commits low-water marks.
    fn start_poller(&self) {
        let consumer = Arc::clone(&self.consumer);
        let state = Arc::clone(&self.state);
        let notify = Arc::clone(&self.notify);
        let stop = Arc::clone(&self.stop);
        let topic = self.target.topic.clone();
        let group = self.target.group.clone();
        let client_id = self.client_id.clone();
        let handle = std::thread::Builder::new()
            .name("kafka-poller".into())
            .spawn(move || {
                let mut watchdog = Watchdog::default();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let polled = consumer.poll(Duration::from_millis(50));
                    watchdog.check(&consumer, &topic, &group, &client_id);
                    let mut st = match state.lock() {
                        Ok(s) => s,
                        Err(_) => return,
                    };
                    if let Some(Ok(m)) = polled {
                        let (p, off) = (m.partition(), m.offset());
                        let body = m.payload().map(<[u8]>::to_vec).unwrap_or_default();
                        let id = header(&m, H_ID).unwrap_or_else(|| format!("{p}@{off}"));
                        let State { parts, fresh, .. } = &mut *st;
                        if let Some(part) = parts.get_mut(&p).filter(|part| off >= part.floor) {
                            if let std::collections::btree_map::Entry::Vacant(slot) = part.items.entry(off) {
                                slot.insert(Item {
                                    id,
                                    body,
                                    state: ItemState::Waiting,
                                    deliveries: 0,
                                    failures: 0,
                                    last_error: None,
                                });
                                fresh.push_back((p, off));
                                notify.notify_waiters();
                            }
                        }
                    } else if let Some(Err(e)) = polled {
                        tracing::debug!(error = %e, "kafka poll error");
                    }
                    // Pause while plenty waits; resume when it runs low.
                    let waiting = st.fresh.len();
                    if let Ok(assigned) = consumer.assignment() {
                        if waiting >= BUFFER_HIGH && !st.paused {
                            let _ = consumer.pause(&assigned);
                            st.paused = true;
                        } else if waiting < BUFFER_HIGH / 2 && st.paused {
                            let _ = consumer.resume(&assigned);
                            st.paused = false;
                        }
                    }
                    let commits: Vec<(i32, i64)> = st.to_commit.drain().collect();
                    drop(st);
                    if !commits.is_empty() {
                        let mut tpl = TopicPartitionList::new();
                        for (p, next) in commits {
                            let _ = tpl.add_partition_offset(&topic, p, Offset::Offset(next));
                        }
                        if let Err(e) = consumer.commit(&tpl, CommitMode::Async) {
                            tracing::warn!(error = %e, "kafka commit failed; the next ack commits again");
                        }
                    }
                }
            })
            .ok();
        if let Ok(mut p) = self.poller.lock() {
            *p = handle;
        }
    }

    fn token(p: i32, off: i64, epoch: u64, deliveries: u32) -> LeaseToken {
        LeaseToken(format!("{p}:{off}:{epoch}:{deliveries}"))
    }

    fn parse_token(t: &LeaseToken) -> Option<(i32, i64, u64, u32)> {
        let mut it = t.0.split(':');
        Some((
            it.next()?.parse().ok()?,
            it.next()?.parse().ok()?,
            it.next()?.parse().ok()?,
            it.next()?.parse().ok()?,
        ))
    }

    /// Runs `f` on the held item a lease names, if it is still held by that lease.
    fn with_held<T>(&self, lease: &Lease, f: impl FnOnce(&mut Item, i32, i64) -> T) -> Option<T> {
        let (p, off, epoch, deliveries) = Self::parse_token(&lease.token)?;
        let mut st = self.state.lock().ok()?;
        let part = st.parts.get_mut(&p).filter(|part| part.epoch == epoch)?;
        let item = part
            .items
            .get_mut(&off)
            .filter(|i| i.deliveries == deliveries)?;
        match item.state {
            ItemState::Leased { .. } => Some(f(item, p, off)),
            _ => None,
        }
    }

    /// Marks an item acked and queues the partition's new low-water mark for commit.
    fn mark_acked(&self, p: i32, off: i64) {
        let Ok(mut st) = self.state.lock() else {
            return;
        };
        let Some(part) = st.parts.get_mut(&p) else {
            return;
        };
        if let Some(item) = part.items.get_mut(&off) {
            item.state = ItemState::Acked;
        }
        if let Some(next) = low_water(part) {
            part.items.retain(|o, _| *o >= next);
            part.floor = part.floor.max(next);
            st.to_commit.insert(p, next);
        }
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
            .map_err(|e| backend_err(topic, e))?;
        let mut out = Vec::new();
        for t in meta.topics() {
            for p in t.partitions() {
                let (lo, hi) = self
                    .consumer
                    .fetch_watermarks(topic, p.id(), Duration::from_secs(10))
                    .map_err(|e| backend_err(topic, e))?;
                out.push((p.id(), lo, hi));
            }
        }
        Ok(out)
    }
}

/// Leases an item again (or for the first time): one more delivery, a new deadline and token.
fn deliver(item: &mut Item, p: i32, off: i64, epoch: u64, deadline: SystemTime) -> Lease {
    item.deliveries += 1;
    item.state = ItemState::Leased { deadline };
    Lease {
        id: item.id.clone(),
        body: item.body.clone(),
        token: KafkaQueue::token(p, off, epoch, item.deliveries),
        delivery_count: item.deliveries,
        deadline,
        released_at: None,
    }
}

fn header(m: &impl Message, key: &str) -> Option<String> {
    let h = m.headers()?;
    h.iter()
        .find(|h| h.key == key)
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).to_string())
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
        let give_up = Instant::now() + wait;
        let mut out = Vec::new();
        let mut lingered = false;
        loop {
            let notified = self.notify.notified();
            let now = SystemTime::now();
            let deadline = now + visibility;
            let mut exhausted = Vec::new();
            {
                let mut st = self
                    .state
                    .lock()
                    .map_err(|_| backend_err(&self.target.topic, "state lock poisoned"))?;
                let State { parts, fresh, .. } = &mut *st;
                // Items released or expired first (oldest offset first), then fresh records.
                'parts: for (p, part) in parts.iter_mut() {
                    for (off, item) in part.items.iter_mut() {
                        if out.len() >= max {
                            break 'parts;
                        }
                        let expired =
                            matches!(item.state, ItemState::Leased { deadline } if deadline <= now);
                        if expired {
                            item.failures += 1;
                            item.last_error = Some(format!(
                                "lease expired without ack or release (delivery {})",
                                item.deliveries
                            ));
                            item.state = ItemState::Waiting;
                        }
                        if matches!(item.state, ItemState::Waiting) && item.deliveries > 0 {
                            if item.failures >= self.config.max_attempts {
                                exhausted.push((
                                    *p,
                                    *off,
                                    item.id.clone(),
                                    item.body.clone(),
                                    item.last_error.clone().unwrap_or_default(),
                                    item.deliveries,
                                ));
                                item.state = ItemState::Leased { deadline };
                                continue;
                            }
                            out.push(deliver(item, *p, *off, part.epoch, deadline));
                        }
                    }
                }
                while out.len() < max {
                    let Some((p, off)) = fresh.pop_front() else {
                        break;
                    };
                    let Some(part) = parts.get_mut(&p) else {
                        continue;
                    };
                    let epoch = part.epoch;
                    let Some(item) = part.items.get_mut(&off) else {
                        continue;
                    };
                    out.push(deliver(item, p, off, epoch, deadline));
                }
            }
            for (p, off, id, body, reason, deliveries) in exhausted {
                self.produce_dlq(&id, &body, &reason, deliveries).await?;
                self.mark_acked(p, off);
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
        let r = self.with_held(lease, |item, _, _| match item.state {
            ItemState::Leased { deadline } if deadline > now => {
                let d = now + visibility;
                item.state = ItemState::Leased { deadline: d };
                Some(d)
            }
            _ => None,
        });
        r.flatten().ok_or_else(|| QueueError::LeaseLost {
            queue: self.target.topic.clone(),
            item: lease.id.clone(),
        })
    }

    async fn ack(&self, leases: &[Lease]) -> Result<()> {
        for l in leases {
            // Acking a lease no longer held is fine: the item is done, and a new owner of the
            // partition finds its done marker.
            if let Some((p, off, epoch, _)) = Self::parse_token(&l.token) {
                let owned = self
                    .state
                    .lock()
                    .map(|st| st.parts.get(&p).is_some_and(|part| part.epoch == epoch))
                    .unwrap_or(false);
                if owned {
                    self.mark_acked(p, off);
                }
            }
        }
        Ok(())
    }

    async fn release(&self, leases: &[Lease], error: Option<&str>) -> Result<()> {
        let mut dead = Vec::new();
        for l in leases {
            let max = self.config.max_attempts;
            let r = self.with_held(l, |item, p, off| {
                item.state = ItemState::Waiting;
                if let Some(e) = error {
                    item.failures += 1;
                    item.last_error = Some(e.split_whitespace().collect::<Vec<_>>().join(" "));
                }
                (item.failures >= max).then(|| {
                    (
                        p,
                        off,
                        item.id.clone(),
                        item.body.clone(),
                        item.last_error.clone().unwrap_or_default(),
                        item.deliveries,
                    )
                })
            });
            if let Some(Some(d)) = r {
                dead.push(d);
            }
        }
        for (p, off, id, body, reason, deliveries) in dead {
            self.produce_dlq(&id, &body, &reason, deliveries).await?;
            self.mark_acked(p, off);
        }
        self.notify.notify_waiters();
        Ok(())
    }

    async fn dead_letter(&self, lease: &Lease, reason: &str) -> Result<()> {
        let held = self.with_held(lease, |item, p, off| (p, off, item.deliveries));
        let Some((p, off, deliveries)) = held else {
            return Err(QueueError::LeaseLost {
                queue: self.target.topic.clone(),
                item: lease.id.clone(),
            });
        };
        let reason = reason.split_whitespace().collect::<Vec<_>>().join(" ");
        self.produce_dlq(&lease.id, &lease.body, &reason, deliveries)
            .await?;
        self.mark_acked(p, off);
        Ok(())
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
        .map_err(|e| backend_err(&self.target.topic, e))?;
        // Owned partitions: what this worker has acked counts even if the broker has not shown the
        // commit yet (a commit can be lost in a rebalance; librdkafka's mock cluster was seen
        // reporting stale committed offsets).
        let floors: HashMap<i32, i64> = self
            .state
            .lock()
            .map_err(|_| backend_err(&topic, "state lock poisoned"))?
            .parts
            .iter()
            .map(|(p, part)| (*p, part.floor))
            .collect();
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
        let (in_flight, done_uncommitted) = {
            let st = self
                .state
                .lock()
                .map_err(|_| backend_err(&topic, "state lock poisoned"))?;
            let mut leased = 0i64;
            let mut acked = 0i64;
            for part in st.parts.values() {
                for item in part.items.values() {
                    match item.state {
                        ItemState::Leased { .. } => leased += 1,
                        ItemState::Acked => acked += 1,
                        ItemState::Waiting => {}
                    }
                }
            }
            (leased, acked)
        };
        let dead: i64 = self
            .watermarks(&format!("{topic}-dlq"))
            .map(|m| m.iter().map(|(_, lo, hi)| hi - lo).sum())
            .unwrap_or(0);
        let visible = (lag - in_flight - done_uncommitted).max(0);
        Ok(Depth {
            visible: visible as u64,
            in_flight: in_flight as u64,
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
        // Commit what is contiguous, then leave the group so the partitions move now.
        let commits: Vec<(i32, i64)> = {
            let mut st = self
                .state
                .lock()
                .map_err(|_| backend_err(&self.target.topic, "state lock poisoned"))?;
            let mut parts: Vec<i32> = st
                .parts
                .keys()
                .chain(st.to_commit.keys())
                .copied()
                .collect();
            parts.sort_unstable();
            parts.dedup();
            parts
                .into_iter()
                .filter_map(|p| st.take_commit(p).map(|n| (p, n)))
                .collect()
        };
        let consumer = Arc::clone(&self.consumer);
        let topic = self.target.topic.clone();
        let stop = Arc::clone(&self.stop);
        let poller = self.poller.lock().ok().and_then(|mut p| p.take());
        tokio::task::spawn_blocking(move || {
            if !commits.is_empty() {
                let mut tpl = TopicPartitionList::new();
                for (p, next) in commits {
                    let _ = tpl.add_partition_offset(&topic, p, Offset::Offset(next));
                }
                let _ = consumer.commit(&tpl, CommitMode::Sync);
            }
            // Stop the poller, then close the consumer here: it leaves the group (so the partitions
            // move now, not after the session timeout) and finishes before the process can exit.
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
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
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

fn backend_err(queue: &str, e: impl std::fmt::Display) -> QueueError {
    QueueError::Backend {
        queue: queue.to_string(),
        backend: BACKEND,
        source: e.to_string().into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_forms() {
        let t = parse_uri("kafka://127.0.0.1:9092,h2:9093/shards?partitions=4&group=g1").unwrap();
        assert_eq!(t.brokers, "127.0.0.1:9092,h2:9093");
        assert_eq!(
            (t.topic.as_str(), t.partitions, t.group.as_str()),
            ("shards", 4, "g1")
        );
        let t = parse_uri("kafka://b:1/t").unwrap();
        assert_eq!((t.partitions, t.group.as_str()), (8, "spotbatch-t"));
        assert!(parse_uri("kafka://b/t").is_err());
        assert!(parse_uri("kafka://b:1/").is_err());
        assert!(parse_uri("kafka://b:1/t?partitions=0").is_err());
        assert!(parse_uri("kafka://b:1/t?colour=red").is_err());
    }
}

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

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaRespErr;
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
            _ => {
                return Err(invalid(format!(
                    "unknown parameter {pair:?} (known: partitions, group, session_timeout_ms)"
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

impl Item {
    /// A record as fetched: not leased yet.
    fn fetched(id: String, body: Vec<u8>) -> Self {
        Item {
            id,
            body,
            state: ItemState::Waiting,
            deliveries: 0,
            failures: 0,
            last_error: None,
        }
    }
}

/// One owned partition.
#[derive(Debug, Default)]
struct Part {
    /// Bumped when the partition is revoked: old tokens stop working.
    epoch: u64,
    /// Every offset below this is done (the low-water mark): a record fetched again below it is
    /// not delivered again.
    floor: i64,
    /// The offset this ownership began at (the committed offset then): no commit of this ownership
    /// goes below it.
    start: i64,
    /// The offset the next fetched record must have (None until the first record, when the
    /// partition had no committed offset to start from).
    next: Option<i64>,
    /// Offsets the broker skipped (start → end), being read back: never committed across.
    holes: BTreeMap<i64, i64>,
    /// Offsets read back and found to hold no record (start → end): transaction markers, records
    /// removed by compaction or retention. The low-water mark passes them.
    absent: BTreeMap<i64, i64>,
    /// Records of this partition the worker holds, by offset (acked ones until the low-water mark
    /// passes them).
    items: BTreeMap<i64, Item>,
}

/// Where a fetched record stands against what its partition expected.
#[derive(Debug, PartialEq, Eq)]
enum Arrival {
    /// The record at the expected offset (or the first of a partition without a committed offset).
    Next,
    /// At or below an offset fetched before (the consumer fetched again from earlier).
    Again,
    /// Beyond the expected offset: the offsets from `start` to `end` (exclusive) were skipped.
    Skipped { start: i64, end: i64 },
}

impl Part {
    /// A partition just assigned, starting at its committed offset (`None`: no committed offset,
    /// so it starts wherever the log does).
    fn assigned(epoch: u64, start: Option<i64>) -> Self {
        Part {
            epoch,
            floor: start.unwrap_or(0),
            start: start.unwrap_or(0),
            next: start,
            ..Part::default()
        }
    }

    /// Notes a fetched record's offset against the one expected. A skip is recorded as a hole.
    fn arrive(&mut self, off: i64) -> Arrival {
        match self.next {
            None => {
                self.floor = self.floor.max(off);
                self.next = Some(off + 1);
                Arrival::Next
            }
            Some(n) if off < n => Arrival::Again,
            Some(n) if off == n => {
                self.next = Some(n + 1);
                Arrival::Next
            }
            Some(n) => {
                self.next = Some(off + 1);
                self.holes.insert(n, off);
                Arrival::Skipped { start: n, end: off }
            }
        }
    }

    /// The next offset to commit: past every offset from the floor on that was received and acked
    /// or read back as holding nothing (None if that is still the floor). A hole stops it.
    fn low_water(&self) -> Option<i64> {
        let mut at = self.floor;
        loop {
            if let Some((_, &end)) = self.absent.range(..=at).next_back() {
                if end > at {
                    at = end;
                    continue;
                }
            }
            match self.items.get(&at) {
                Some(Item {
                    state: ItemState::Acked,
                    ..
                }) => at += 1,
                _ => break,
            }
        }
        (at > self.floor).then_some(at)
    }

    /// Moves the floor to `next` (from [`Part::low_water`]), forgetting what lies below it.
    fn advance(&mut self, next: i64) {
        self.items.retain(|o, _| *o >= next);
        self.absent.retain(|_, end| *end > next);
        self.floor = self.floor.max(next);
    }

    /// Takes what reading a hole back found: its records (offset order) become items to lease,
    /// unless fetched meanwhile; the rest of the hole holds nothing. Returns the offsets added.
    fn fill(&mut self, start: i64, end: i64, found: Vec<(i64, Item)>) -> Vec<i64> {
        self.holes.remove(&start);
        let mut added = Vec::new();
        let mut at = start;
        for (off, item) in found {
            if off < at || off >= end {
                continue;
            }
            if off > at {
                self.absent.insert(at, off);
            }
            at = off + 1;
            if off >= self.floor {
                if let std::collections::btree_map::Entry::Vacant(slot) = self.items.entry(off) {
                    slot.insert(item);
                    added.push(off);
                }
            }
        }
        if end > at {
            self.absent.insert(at, end);
        }
        added
    }
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
    /// The offset to commit for owned partition `p` before it moves or the worker leaves: its
    /// floor, whether or not an earlier commit of it landed (one may still be in flight, or have
    /// failed without its retry sent yet). None if this ownership has not moved it.
    fn take_commit(&mut self, p: i32) -> Option<i64> {
        self.to_commit.remove(&p);
        let part = self.parts.get_mut(&p)?;
        if let Some(next) = part.low_water() {
            part.advance(next);
        }
        (part.floor > part.start).then_some(part.floor)
    }
}

/// What the consumer's callbacks and the gap readers share with the queue.
struct Ctx {
    topic: String,
    brokers: String,
    state: Arc<Mutex<State>>,
    notify: Arc<Notify>,
    stop: Arc<AtomicBool>,
    /// Gaps found (records a fetch skipped), for [`KafkaQueue::offset_gaps`].
    gaps: Arc<AtomicU64>,
}

impl ClientContext for Ctx {}

impl ConsumerContext for Ctx {
    /// Assigns partitions at their committed offsets, read here, so the offset-gap guard knows
    /// where each must resume; otherwise as rdkafka's default handler.
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        if err == RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS {
            let starts = self.start_offsets(consumer, tpl);
            let r = if cooperative {
                consumer.incremental_assign(tpl)
            } else {
                consumer.assign(tpl)
            };
            if let Err(e) = r {
                tracing::warn!(error = %e, "kafka assignment failed");
            }
            self.assigned(consumer, tpl, &starts);
            return;
        }
        if err != RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS {
            tracing::warn!(error = ?err, "kafka rebalance error; giving up the partitions");
        }
        self.revoking(consumer, tpl);
        let r = if cooperative {
            consumer.incremental_unassign(tpl)
        } else {
            consumer.unassign()
        };
        if let Err(e) = r {
            tracing::warn!(error = %e, "kafka unassignment failed");
        }
    }
}

impl Ctx {
    /// Reads the committed offsets of the partitions in `tpl` and sets them as the offsets to
    /// start at. Returns each partition's start (None: nothing committed, so it starts at the
    /// beginning of the log). If they cannot be read, the partitions start where the consumer
    /// finds them and their first records are trusted.
    fn start_offsets(
        &self,
        consumer: &BaseConsumer<Self>,
        tpl: &mut TopicPartitionList,
    ) -> HashMap<i32, Option<i64>> {
        let mut starts = HashMap::new();
        let ours: Vec<i32> = tpl
            .elements_for_topic(&self.topic)
            .iter()
            .map(|e| e.partition())
            .collect();
        if ours.is_empty() {
            return starts;
        }
        let mut ask = TopicPartitionList::new();
        for p in &ours {
            ask.add_partition(&self.topic, *p);
        }
        let committed = match consumer.committed_offsets(ask, Duration::from_secs(10)) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, partitions = ?ours, "kafka committed offsets not read; the partitions start unchecked");
                return starts;
            }
        };
        for p in ours {
            let at = committed
                .find_partition(&self.topic, p)
                .and_then(|e| match e.offset() {
                    Offset::Offset(o) if o >= 0 => Some(o),
                    _ => None,
                });
            let set = tpl.set_partition_offset(
                &self.topic,
                p,
                at.map_or(Offset::Beginning, Offset::Offset),
            );
            if set.is_ok() {
                starts.insert(p, at);
            }
        }
        starts
    }

    fn assigned(
        &self,
        consumer: &BaseConsumer<Self>,
        tpl: &TopicPartitionList,
        starts: &HashMap<i32, Option<i64>>,
    ) {
        let Ok(mut st) = self.state.lock() else {
            return;
        };
        let mut parts = Vec::new();
        for e in tpl.elements_for_topic(&self.topic) {
            let p = e.partition();
            st.next_epoch += 1;
            let epoch = st.next_epoch;
            let start = starts.get(&p).copied().flatten();
            st.parts
                .entry(p)
                .or_insert_with(|| Part::assigned(epoch, start));
            parts.push((p, start));
        }
        st.assigned_once = true;
        let paused = st.paused;
        drop(st);
        // New partitions follow the buffer's pause state. librdkafka keeps an application's pause
        // on a partition across revoke and assign (a client behaviour, whatever the broker), so
        // this also clears a pause left from an earlier time this member owned it: else it would
        // never be fetched again.
        let r = if paused {
            consumer.pause(tpl)
        } else {
            consumer.resume(tpl)
        };
        if let Err(e) = r {
            tracing::warn!(error = %e, paused, "kafka pause state of assigned partitions not set");
        }
        // (The partitions last: tests and benches read `partitions=[]` at the end of the line.)
        let starts: Vec<Option<i64>> = parts.iter().map(|(_, s)| *s).collect();
        let parts: Vec<i32> = parts.iter().map(|(p, _)| *p).collect();
        tracing::info!(topic = %self.topic, ?starts, partitions = ?parts, "kafka partitions assigned");
        self.notify.notify_waiters();
    }

    fn revoking(&self, consumer: &BaseConsumer<Self>, tpl: &TopicPartitionList) {
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
        for p in parts {
            // Commit what is contiguous (including what the poller has not committed yet) before
            // the partition moves.
            let next = st.take_commit(p);
            st.parts.remove(&p);
            if let Some(next) = next {
                let _ = commit.add_partition_offset(&self.topic, p, Offset::Offset(next));
            }
            st.fresh.retain(|(fp, _)| *fp != p);
        }
        drop(st);
        if commit.count() > 0 {
            if let Err(e) = consumer.commit(&commit, CommitMode::Sync) {
                tracing::debug!(error = %e, "kafka commit on revoke failed; the next owner redoes from the last commit");
            }
        }
    }

    /// Takes a fetched record of an owned partition into the buffer. A record beyond the offset
    /// expected leaves a hole, read back by [`read_back`] on its own thread.
    fn take_record(self: &Arc<Self>, st: &mut State, p: i32, off: i64, id: String, body: Vec<u8>) {
        let State { parts, fresh, .. } = st;
        let Some(part) = parts.get_mut(&p) else {
            return;
        };
        if let Arrival::Skipped { start, end } = part.arrive(off) {
            tracing::info!(topic = %self.topic, partition = p, expected = start, got = end, "kafka fetch skipped offsets; reading them back before committing past them");
            let ctx = Arc::clone(self);
            let epoch = part.epoch;
            let spawned = std::thread::Builder::new()
                .name("kafka-read-back".into())
                .spawn(move || ctx.read_back(p, epoch, start, end));
            if let Err(e) = spawned {
                // The hole stays: the partition is not committed past it, and the next owner
                // starts before it.
                tracing::warn!(error = %e, partition = p, "cannot start a kafka read-back thread");
            }
        }
        if off >= part.floor {
            if let std::collections::btree_map::Entry::Vacant(slot) = part.items.entry(off) {
                slot.insert(Item::fetched(id, body));
                fresh.push_back((p, off));
                self.notify.notify_waiters();
            }
        }
    }

    /// Reads a hole of partition `p` back (from the start of the log, a batch boundary on any
    /// broker) until it succeeds or the partition is no longer this ownership's.
    fn read_back(&self, p: i32, epoch: u64, start: i64, end: i64) {
        let mut delay = Duration::from_secs(1);
        loop {
            let owned = |st: &State| st.parts.get(&p).is_some_and(|part| part.epoch == epoch);
            if self.stop.load(Ordering::Relaxed) || !self.state.lock().is_ok_and(|st| owned(&st)) {
                return;
            }
            match read_range(&self.brokers, &self.topic, p, start, end) {
                Ok((log_start, found)) => {
                    let Ok(mut st) = self.state.lock() else {
                        return;
                    };
                    if !owned(&st) {
                        return;
                    }
                    let missed = found.len();
                    let deleted = (log_start.min(end) - start).max(0);
                    let State { parts, fresh, .. } = &mut *st;
                    let Some(part) = parts.get_mut(&p) else {
                        return;
                    };
                    let added = part.fill(start, end, found);
                    fresh.extend(added.iter().map(|off| (p, *off)));
                    drop(st);
                    if missed > 0 || deleted > 0 {
                        self.gaps.fetch_add(1, Ordering::Relaxed);
                        metrics::counter!("spotbatch_kafka_offset_gaps_total").increment(1);
                        tracing::warn!(
                            topic = %self.topic, partition = p, expected = start, got = end, missed, deleted,
                            "kafka offset gap: the broker skipped records the group consumer never received; they are delivered from a read-back and nothing was committed past them"
                        );
                    } else {
                        tracing::info!(topic = %self.topic, partition = p, from = start, to = end, "kafka skipped offsets hold no records (transaction markers or compaction)");
                    }
                    self.notify.notify_waiters();
                    return;
                }
                Err(e) => {
                    tracing::warn!(topic = %self.topic, partition = p, from = start, to = end, error = %e, retry_in_s = delay.as_secs(), "kafka read-back failed; the partition is not committed past the skipped offsets");
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(Duration::from_secs(30));
                }
            }
        }
    }
}

/// Reads partition `p` of `topic` from the start of its log with a consumer of its own and returns
/// the log's first offset and the records found at offsets `start..end`. A rare path (a broker
/// skipped offsets); its cost is reading the partition up to the gap.
fn read_range(
    brokers: &str,
    topic: &str,
    p: i32,
    start: i64,
    end: i64,
) -> std::result::Result<(i64, Vec<(i64, Item)>), String> {
    // A group id only because librdkafka assigns no partitions without one: it never joins the
    // group nor commits.
    let reader: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set(
            "group.id",
            format!("spotbatch-read-back-{}", std::process::id()),
        )
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .create()
        .map_err(|e| e.to_string())?;
    let (log_start, _) = reader
        .fetch_watermarks(topic, p, Duration::from_secs(10))
        .map_err(|e| e.to_string())?;
    let mut found = Vec::new();
    if log_start >= end {
        return Ok((log_start, found));
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, p, Offset::Offset(log_start))
        .map_err(|e| e.to_string())?;
    reader.assign(&tpl).map_err(|e| e.to_string())?;
    // However long the partition, as long as records keep coming.
    let quiet = Duration::from_secs(20);
    let mut until = Instant::now() + quiet;
    while Instant::now() < until {
        match reader.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                until = Instant::now() + quiet;
                let off = m.offset();
                if off >= end {
                    return Ok((log_start, found));
                }
                if off >= start {
                    let body = m.payload().map(<[u8]>::to_vec).unwrap_or_default();
                    let id = header(&m, H_ID).unwrap_or_else(|| format!("{p}@{off}"));
                    found.push((off, Item::fetched(id, body)));
                }
            }
            Some(Err(KafkaError::PartitionEOF(_))) => return Ok((log_start, found)),
            Some(Err(e)) => tracing::debug!(error = %e, "kafka read-back poll error"),
            None => {}
        }
    }
    Err(format!(
        "partition {p}: no record for {} s before offset {end}",
        quiet.as_secs()
    ))
}

/// A Kafka topic as a lease queue, for one worker (one consumer-group member).
pub struct KafkaQueue {
    target: KafkaTarget,
    config: QueueConfig,
    consumer: Arc<BaseConsumer<Ctx>>,
    producer: FutureProducer,
    state: Arc<Mutex<State>>,
    notify: Arc<Notify>,
    stop: Arc<AtomicBool>,
    poller: Mutex<Option<std::thread::JoinHandle<()>>>,
    gaps: Arc<AtomicU64>,
    retries: Arc<AtomicU64>,
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
        let state: Arc<Mutex<State>> = Arc::default();
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
            stop,
            poller: Mutex::new(None),
            gaps,
            retries,
        };
        q.start_poller();
        q.start_committer();
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
        let stop = Arc::clone(&self.stop);
        let topic = self.target.topic.clone();
        let handle = std::thread::Builder::new()
            .name("kafka-poller".into())
            .spawn(move || {
                let ctx = Arc::clone(consumer.context());
                while !stop.load(Ordering::Relaxed) {
                    let polled = consumer.poll(Duration::from_millis(50));
                    let mut st = match state.lock() {
                        Ok(s) => s,
                        Err(_) => return,
                    };
                    match polled {
                        Some(Ok(m)) if m.topic() == topic => {
                            let (p, off) = (m.partition(), m.offset());
                            let body = m.payload().map(<[u8]>::to_vec).unwrap_or_default();
                            let id = header(&m, H_ID).unwrap_or_else(|| format!("{p}@{off}"));
                            ctx.take_record(&mut st, p, off, id, body);
                        }
                        Some(Err(e)) => tracing::debug!(error = %e, "kafka poll error"),
                        _ => {}
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
                }
            })
            .ok();
        if let Ok(mut p) = self.poller.lock() {
            *p = handle;
        }
    }

    /// The committer: commits the partitions' new low-water marks as acks move them, each commit
    /// synchronously on this thread (so its result is known: librdkafka reports a manual
    /// asynchronous commit's result only to an `offset_commit_cb`, which rdkafka does not set, so a
    /// refused asynchronous commit would be lost without a word). A refused commit is tried again
    /// at the partition's floor then, for the partitions still owned: any Kafka broker refuses
    /// commits while its group rebalances (`REBALANCE_IN_PROGRESS`), and the last offsets of a
    /// partition are committed once, when its final item is acked, so without the retry they would
    /// stay uncommitted and the topic would never look drained to the other members.
    fn start_committer(&self) {
        let consumer = Arc::clone(&self.consumer);
        let state = Arc::clone(&self.state);
        let stop = Arc::clone(&self.stop);
        let retries = Arc::clone(&self.retries);
        let topic = self.target.topic.clone();
        let spawned = std::thread::Builder::new()
            .name("kafka-committer".into())
            .spawn(move || {
                let mut refused = false;
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(if refused { 200 } else { 20 }));
                    let commits: Vec<(i32, i64)> = match state.lock() {
                        Ok(mut st) => st.to_commit.drain().collect(),
                        Err(_) => return,
                    };
                    if commits.is_empty() {
                        continue;
                    }
                    let mut tpl = TopicPartitionList::new();
                    for (p, next) in &commits {
                        let _ = tpl.add_partition_offset(&topic, *p, Offset::Offset(*next));
                    }
                    let Err(e) = consumer.commit(&tpl, CommitMode::Sync) else {
                        refused = false;
                        continue;
                    };
                    refused = true;
                    let Ok(mut st) = state.lock() else {
                        return;
                    };
                    let mut again = Vec::new();
                    for (p, _) in commits {
                        // At the floor now, never the refused offset: it is never below it, and a
                        // partition revoked and assigned back meanwhile must not be committed
                        // below where its new ownership began.
                        let Some(floor) = st
                            .parts
                            .get(&p)
                            .filter(|part| part.floor > part.start)
                            .map(|part| part.floor)
                        else {
                            continue;
                        };
                        let at = st.to_commit.entry(p).or_insert(floor);
                        *at = (*at).max(floor);
                        again.push((p, floor));
                    }
                    drop(st);
                    retries.fetch_add(again.len() as u64, Ordering::Relaxed);
                    metrics::counter!("spotbatch_kafka_commit_retries_total")
                        .increment(again.len() as u64);
                    tracing::debug!(error = %e, retry = ?again, "kafka commit refused; trying again");
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start the kafka committer thread; offsets are committed on revoke and close only");
        }
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
        if let Some(next) = part.low_water() {
            part.advance(next);
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
        .map_err(|e| kafka_err(&self.target.topic, &e, "cannot read the committed offsets"))?;
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
                let commits: Vec<(i32, i64)> = match state.lock() {
                    Ok(mut st) => {
                        let parts: Vec<i32> = st.parts.keys().copied().collect();
                        parts
                            .into_iter()
                            .filter_map(|p| st.take_commit(p).map(|n| (p, n)))
                            .collect()
                    }
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

fn backend_err(queue: &str, e: impl std::fmt::Display) -> QueueError {
    QueueError::Backend {
        queue: queue.to_string(),
        backend: BACKEND,
        source: e.to_string().into(),
    }
}

/// A client error as a queue error: [`QueueError::Unreachable`] when no broker answered (so a
/// caller can tell brokers that are gone from a queue that is empty), else a backend error.
fn kafka_err(queue: &str, e: &KafkaError, what: &str) -> QueueError {
    use rdkafka::types::RDKafkaErrorCode as C;
    let message = format!("{what}: {e}");
    match e.rdkafka_error_code() {
        Some(
            C::AllBrokersDown
            | C::BrokerTransportFailure
            | C::Resolve
            | C::OperationTimedOut
            | C::RequestTimedOut
            | C::NetworkException,
        ) => QueueError::Unreachable {
            queue: queue.to_string(),
            backend: BACKEND,
            source: message.into(),
        },
        _ => backend_err(queue, message),
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
        assert!(parse_uri("kafka://b:1/t?single_record_batches=true").is_err());
    }

    /// Fetches `off` into `part` as the poller does; returns what the guard made of it.
    fn fetch(part: &mut Part, off: i64) -> Arrival {
        let arrival = part.arrive(off);
        if off >= part.floor {
            part.items
                .entry(off)
                .or_insert_with(|| Item::fetched(format!("r{off}"), Vec::new()));
        }
        arrival
    }

    fn ack(part: &mut Part, off: i64) -> Option<i64> {
        part.items.get_mut(&off).unwrap().state = ItemState::Acked;
        let next = part.low_water()?;
        part.advance(next);
        Some(next)
    }

    #[test]
    fn a_skipped_offset_is_never_committed_across() {
        // Assigned at committed offset 10; the broker answers with 10, then 13 (11 and 12 skipped).
        let mut part = Part::assigned(1, Some(10));
        assert_eq!(fetch(&mut part, 10), Arrival::Next);
        assert_eq!(
            fetch(&mut part, 13),
            Arrival::Skipped { start: 11, end: 13 }
        );
        assert_eq!(fetch(&mut part, 14), Arrival::Next);
        assert_eq!(ack(&mut part, 13), None, "13 is not contiguous with 10");
        assert_eq!(ack(&mut part, 14), None);
        assert_eq!(
            ack(&mut part, 10),
            Some(11),
            "the hole at 11 stops the mark"
        );
        assert_eq!(part.holes.get(&11), Some(&13));
        // Read back: 11 holds a record the consumer never got, 12 holds nothing (a marker).
        let added = part.fill(11, 13, vec![(11, Item::fetched("r11".into(), Vec::new()))]);
        assert_eq!(added, vec![11]);
        assert!(part.holes.is_empty());
        assert_eq!(part.low_water(), None, "11 is not acked yet");
        assert_eq!(
            ack(&mut part, 11),
            Some(15),
            "past 11, the empty 12, 13 and 14"
        );
    }

    #[test]
    fn a_gap_at_the_first_record_after_an_assignment_is_caught() {
        // The partition was committed at 7, inside a batch; the broker answers with the next batch.
        let mut part = Part::assigned(3, Some(7));
        assert_eq!(fetch(&mut part, 10), Arrival::Skipped { start: 7, end: 10 });
        assert_eq!(ack(&mut part, 10), None);
        // Read back finds all three: delivered, and the mark waits for them.
        let found = (7..10)
            .map(|o| (o, Item::fetched(format!("r{o}"), Vec::new())))
            .collect();
        assert_eq!(part.fill(7, 10, found), vec![7, 8, 9]);
        assert_eq!(ack(&mut part, 8), None);
        assert_eq!(ack(&mut part, 7), Some(9));
        assert_eq!(ack(&mut part, 9), Some(11));
    }

    #[test]
    fn records_fetched_again_and_a_start_without_a_commit_are_not_gaps() {
        // No committed offset: the first record (the log's start) is where the partition begins.
        let mut part = Part::assigned(1, None);
        assert_eq!(fetch(&mut part, 5), Arrival::Next);
        assert_eq!(fetch(&mut part, 6), Arrival::Next);
        // The consumer fetches again from earlier (a reset): nothing new, no hole.
        assert_eq!(fetch(&mut part, 5), Arrival::Again);
        assert!(part.holes.is_empty());
        assert_eq!(ack(&mut part, 5), Some(6));
        assert_eq!(ack(&mut part, 6), Some(7));
        // A hole read back as holding nothing (transaction markers) is passed.
        assert_eq!(fetch(&mut part, 9), Arrival::Skipped { start: 7, end: 9 });
        assert_eq!(ack(&mut part, 9), None);
        assert!(part.fill(7, 9, Vec::new()).is_empty());
        assert_eq!(part.low_water(), Some(10));
    }
}

//! The consumer-group side of the Kafka backend, the I/O around the [`Book`]: the rebalance
//! callbacks (partitions assigned at their committed offsets, read by the member itself; pause
//! state re-applied; contiguous offsets committed on revoke), reading a skipped hole back with a
//! consumer of its own, the poller thread and the committer thread.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::Notify;

use super::book::{Book, Hole};

/// Record header: the item's id.
pub(super) const H_ID: &str = "spotbatch-id";
/// Dead-letter header: why.
pub(super) const H_REASON: &str = "spotbatch-reason";
/// Dead-letter header: deliveries.
pub(super) const H_COUNT: &str = "spotbatch-deliveries";
/// Records waiting to be leased before the partitions are paused.
const BUFFER_HIGH: usize = 64;

/// What the queue, the consumer's callbacks, the poller and the committer share.
#[derive(Debug)]
pub(super) struct State {
    pub(super) book: Book,
    /// The first assignment came (the queue's opening waits for it).
    pub(super) assigned_once: bool,
    /// The owned partitions are paused (enough records wait).
    pub(super) paused: bool,
}

impl State {
    pub(super) fn new(max_attempts: u32) -> Self {
        Self {
            book: Book::new(max_attempts),
            assigned_once: false,
            paused: false,
        }
    }
}

/// What the consumer's callbacks and the gap readers share with the queue.
pub(super) struct Ctx {
    pub(super) topic: String,
    pub(super) brokers: String,
    pub(super) state: Arc<Mutex<State>>,
    pub(super) notify: Arc<Notify>,
    pub(super) stop: Arc<AtomicBool>,
    /// Gaps found (records a fetch skipped), for [`super::KafkaQueue::offset_gaps`].
    pub(super) gaps: Arc<AtomicU64>,
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
            let start = starts.get(&p).copied().flatten();
            st.book.assign(p, start);
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
            // Commit what is contiguous (including what the committer has not committed yet)
            // before the partition moves.
            if let Some(next) = st.book.revoke(p) {
                let _ = commit.add_partition_offset(&self.topic, p, Offset::Offset(next));
            }
        }
        drop(st);
        if commit.count() > 0 {
            if let Err(e) = consumer.commit(&commit, CommitMode::Sync) {
                tracing::debug!(error = %e, "kafka commit on revoke failed; the next owner redoes from the last commit");
            }
        }
    }

    /// Takes a fetched record of an owned partition into the book. A record beyond the offset
    /// expected leaves a hole, read back by [`Ctx::read_back`] on its own thread.
    fn take_record(self: &Arc<Self>, st: &mut State, p: i32, off: i64, id: String, body: Vec<u8>) {
        let fetched = st.book.fetched(p, off, id, body);
        if let Some(hole) = fetched.hole {
            tracing::info!(topic = %self.topic, partition = p, expected = hole.start, got = hole.end, "kafka fetch skipped offsets; reading them back before committing past them");
            let ctx = Arc::clone(self);
            let spawned = std::thread::Builder::new()
                .name("kafka-read-back".into())
                .spawn(move || ctx.read_back(hole));
            if let Err(e) = spawned {
                // The hole stays: the partition is not committed past it, and the next owner
                // starts before it.
                tracing::warn!(error = %e, partition = p, "cannot start a kafka read-back thread");
            }
        }
        if fetched.taken {
            self.notify.notify_waiters();
        }
    }

    /// Reads a hole back (from the start of the log, a batch boundary on any broker) until it
    /// succeeds or the partition is no longer this ownership's.
    fn read_back(&self, hole: Hole) {
        let Hole {
            partition: p,
            epoch,
            start,
            end,
        } = hole;
        let mut delay = Duration::from_secs(1);
        loop {
            if self.stop.load(Ordering::Relaxed)
                || !self.state.lock().is_ok_and(|st| st.book.owns(p, epoch))
            {
                return;
            }
            match read_range(&self.brokers, &self.topic, p, start, end) {
                Ok((log_start, found)) => {
                    let missed = found.len();
                    let deleted = (log_start.min(end) - start).max(0);
                    let Ok(mut st) = self.state.lock() else {
                        return;
                    };
                    if st.book.filled(hole, found).is_none() {
                        return;
                    }
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

/// A record read back: offset, id, body.
type Found = Vec<(i64, String, Vec<u8>)>;

/// Reads partition `p` of `topic` from the start of its log with a consumer of its own and returns
/// the log's first offset and the records found at offsets `start..end`. A rare path (a broker
/// skipped offsets); its cost is reading the partition up to the gap.
fn read_range(
    brokers: &str,
    topic: &str,
    p: i32,
    start: i64,
    end: i64,
) -> std::result::Result<(i64, Found), String> {
    // A group id only because librdkafka assigns no partitions without one: it never joins the
    // group nor commits.
    let reader: BaseConsumer = rdkafka::config::ClientConfig::new()
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
                    found.push((off, id, body));
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

/// A header's value as text.
pub(super) fn header(m: &impl Message, key: &str) -> Option<String> {
    let h = m.headers()?;
    h.iter()
        .find(|h| h.key == key)
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).to_string())
}

/// The poller: polls continuously (keeping group membership alive however long a shard takes),
/// takes records of owned partitions into the book, and pauses while enough wait.
pub(super) fn start_poller(
    consumer: Arc<BaseConsumer<Ctx>>,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    topic: String,
) -> Option<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
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
                let waiting = st.book.waiting();
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
        .ok()
}

/// The committer: commits the partitions' new low-water marks as acks move them, each commit
/// synchronously on this thread (so its result is known: librdkafka reports a manual
/// asynchronous commit's result only to an `offset_commit_cb`, which rdkafka does not set, so a
/// refused asynchronous commit would be lost without a word). A refused commit is tried again
/// at the partition's floor then, for the partitions still owned ([`Book::commit_refused`]): any
/// Kafka broker refuses commits while its group rebalances (`REBALANCE_IN_PROGRESS`), and the last
/// offsets of a partition are committed once, when its final item is acked, so without the retry
/// they would stay uncommitted and the topic would never look drained to the other members.
pub(super) fn start_committer(
    consumer: Arc<BaseConsumer<Ctx>>,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    retries: Arc<AtomicU64>,
    topic: String,
) {
    let spawned = std::thread::Builder::new()
        .name("kafka-committer".into())
        .spawn(move || {
            let mut refused = false;
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(if refused { 200 } else { 20 }));
                let commits = match state.lock() {
                    Ok(mut st) => st.book.take_commits(),
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
                let again = match state.lock() {
                    Ok(mut st) => st.book.commit_refused(&commits),
                    Err(_) => return,
                };
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

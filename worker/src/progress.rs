//! [`Progress`]: a worker's live counters (items, shards, what it holds), shared with whoever shows
//! progress (the CLI's bar, the coordinator link's heartbeats), and the shard outcomes it reports.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use spotbatch_proto::ShardTask;

/// Live counters, shared with whoever shows progress.
#[derive(Debug, Default)]
pub struct Progress {
    /// Rows written without error.
    pub items_ok: AtomicU64,
    /// Rows written with an error.
    pub items_failed: AtomicU64,
    /// Rows made by the pipeline, as they come (also in shards not written yet): what a progress
    /// display counts, since a shard of a record job can hold thousands of rows.
    pub rows_made: AtomicU64,
    /// Error rows among them.
    pub rows_made_failed: AtomicU64,
    /// Shards written and acked.
    pub shards_done: AtomicU64,
    /// Shards found already done when leased (acked without work).
    pub shards_skipped: AtomicU64,
    /// Shard attempts that failed and were released.
    pub attempts_failed: AtomicU64,
    /// Shards held right now (waiting or in work).
    pub shards_in_flight: AtomicUsize,
    /// Leased shards waiting for their turn (what peers may steal).
    pub unstarted: AtomicUsize,
    /// Shards in work right now: shard → job (reported in coordinator heartbeats).
    pub current: std::sync::Mutex<std::collections::BTreeMap<String, String>>,
    /// Shard outcomes not reported yet; collected only when `collect_outcomes` is set.
    pub outcomes: std::sync::Mutex<Vec<ShardOutcome>>,
    /// Whether to collect outcomes (a coordinator link drains them).
    pub collect_outcomes: std::sync::atomic::AtomicBool,
    /// Jobs cancelled at the coordinator: their shards are acked without work.
    pub cancelled: std::sync::RwLock<std::collections::HashSet<String>>,
    /// A cloud's interruption notice (not a signal) started a drain: reported in heartbeats,
    /// where the coordinator counts it as a spot interruption with notice.
    pub interrupted: std::sync::atomic::AtomicBool,
}

/// What became of a shard a worker leased.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardOutcome {
    /// The job.
    pub job: String,
    /// The shard.
    pub shard: String,
    /// `done`, `skipped`, `failed`, `released`, `lease_lost` or `cancelled`.
    pub outcome: &'static str,
    /// Rows written.
    pub items: u64,
    /// Error rows.
    pub errors: u64,
    /// Why (failures).
    pub reason: String,
}

impl Progress {
    pub(crate) fn record(
        &self,
        task: &ShardTask,
        outcome: &'static str,
        items: u64,
        errors: u64,
        reason: &str,
    ) {
        if !self.collect_outcomes.load(Ordering::Relaxed) {
            return;
        }
        if let Ok(mut o) = self.outcomes.lock() {
            // Bounded: a coordinator away for long loses the oldest reports, not memory.
            if o.len() >= 10_000 {
                o.remove(0);
            }
            o.push(ShardOutcome {
                job: task.job.clone(),
                shard: task.shard.clone(),
                outcome,
                items,
                errors,
                reason: reason.to_string(),
            });
        }
    }

    /// The shard is held (waiting or in work): counted and reported in heartbeats.
    pub(crate) fn hold(&self, task: &ShardTask) {
        self.shards_in_flight.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut c) = self.current.lock() {
            c.insert(task.shard.clone(), task.job.clone());
        }
    }

    pub(crate) fn unhold(&self, task: &ShardTask) {
        let held = self
            .current
            .lock()
            .map(|mut c| c.remove(&task.shard).is_some())
            .unwrap_or(false);
        if held {
            self.shards_in_flight.fetch_sub(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn is_cancelled(&self, job: &str) -> bool {
        self.cancelled
            .read()
            .map(|c| c.contains(job))
            .unwrap_or(false)
    }

    /// The jobs of the shards held.
    pub(crate) fn held_jobs(&self) -> Vec<String> {
        self.current
            .lock()
            .map(|c| c.values().cloned().collect())
            .unwrap_or_default()
    }
}

//! [`Node`]: the state a running worker's tasks share — its queue and jobs, its pipeline, the
//! shards it holds (the prefetch deque, the task tracker), its pace, what it costs, how it is told
//! to stop, and stealing when on — and the rule for how many shards it holds.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use spotbatch_queue::LeaseQueue;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::control::Control;
use crate::cost::CostMeter;
use crate::job::Jobs;
use crate::options::WorkerOptions;
use crate::pipeline::Pipeline;
use crate::prefetch::{Deque, Pace};
use crate::progress::Progress;
use crate::steal::StealState;

/// State shared by a worker's tasks.
pub(crate) struct Node {
    pub(crate) queue: Arc<dyn LeaseQueue>,
    pub(crate) jobs: Jobs,
    pub(crate) opts: WorkerOptions,
    pub(crate) progress: Arc<Progress>,
    pub(crate) control: Control,
    pub(crate) pipeline: Pipeline,
    /// One shard feeds the pipeline at a time; the others wait here, unstarted.
    pub(crate) feed: Semaphore,
    /// What the machine costs, charged to jobs.
    pub(crate) cost: Arc<CostMeter>,
    /// The leased shards waiting for their turn to feed (what peers may steal).
    pub(crate) deque: Deque,
    /// Shards waiting for their turn to feed: the deque's and stolen ones.
    pub(crate) waiting: AtomicUsize,
    /// Measured pace, setting how many shards to hold.
    pub(crate) pace: Pace,
    /// Work stealing, when on.
    pub(crate) steal: Option<Arc<StealState>>,
    /// Every shard task (leased or stolen); its length is the shards held.
    pub(crate) tasks: TaskTracker,
    /// A shard task ended: a slot is free.
    pub(crate) slot_freed: tokio::sync::Notify,
    /// A drain's offers to peers are over: the drain may release what is left.
    pub(crate) offers_done: CancellationToken,
}

impl Node {
    /// The lease length: `--visibility-timeout-secs`, else the manifests' (all jobs of a worker
    /// share a queue, so the largest), else 60 s.
    pub(crate) fn visibility(&self) -> Duration {
        let secs = match self.opts.visibility {
            Some(v) => v.as_secs().max(1),
            None => self.jobs.max_visibility_secs().unwrap_or(60),
        };
        Duration::from_secs(secs)
    }

    /// Shards to hold now, from the measured pace, `--prefetch` and the lease timeout.
    pub(crate) fn target(&self) -> usize {
        self.pace
            .target(self.opts.prefetch.max(1), self.visibility())
    }

    /// Publishes how many leased shards wait unstarted.
    pub(crate) fn count_unstarted(&self) {
        let n = self.deque.len();
        self.progress.unstarted.store(n, Ordering::Relaxed);
        metrics::gauge!("spotbatch_unstarted_shards").set(n as f64);
    }

    /// Free slots: how many more shards to hold.
    pub(crate) fn room(&self) -> usize {
        self.target().saturating_sub(self.tasks.len())
    }
}

//! [`Control`]: how a worker is told to stop — the two-phase drain with a deadline (stop leasing,
//! release what has not started, finish or checkpoint what has by the cutoff), or at once.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio_util::sync::CancellationToken;

/// How a worker is told to stop: the two-phase drain with a deadline, or at once.
#[derive(Debug, Clone, Default)]
pub struct Control {
    /// Stop leasing new shards (the drain's first step; alone, an AWS rebalance recommendation).
    pub stop_leasing: CancellationToken,
    pub(crate) drain: CancellationToken,
    drain_state: Arc<std::sync::Mutex<Option<(SystemTime, Instant)>>>,
    /// Stop now: release every lease at once and write nothing more.
    pub stop: CancellationToken,
}

impl Control {
    /// Starts draining: stop leasing; release unstarted shards at once; finish the in-flight
    /// shard if `deadline` allows, else write what is finished as a partial result and release it.
    pub fn drain(&self, deadline: SystemTime) {
        if let Ok(mut d) = self.drain_state.lock() {
            d.get_or_insert((deadline, Instant::now()));
        }
        self.stop_leasing.cancel();
        self.drain.cancel();
    }

    /// Stops at once: every lease released, nothing more written.
    pub fn stop_now(&self) {
        self.stop_leasing.cancel();
        self.drain.cancel();
        self.stop.cancel();
    }

    /// Whether a drain (or stop) was asked for.
    pub fn is_draining(&self) -> bool {
        self.drain.is_cancelled()
    }

    /// When in-flight work must stop so that it can be written and released by the deadline: a
    /// quarter of the time left is kept for that, at most 2 s.
    pub(crate) fn cutoff(&self) -> Instant {
        let deadline = self.drain_state.lock().ok().and_then(|d| d.map(|(t, _)| t));
        let left = deadline
            .and_then(|t| t.duration_since(SystemTime::now()).ok())
            .unwrap_or_default();
        Instant::now() + left - (left / 4).min(Duration::from_secs(2))
    }

    pub(crate) fn since_notice(&self) -> Option<Duration> {
        self.drain_state.lock().ok()?.map(|(_, at)| at.elapsed())
    }
}

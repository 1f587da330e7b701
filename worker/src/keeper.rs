//! Lease keeping: while a shard is held, its claim is kept alive — the queue lease extended every
//! third of the visibility timeout (the owner), or the hand-off kept alive by reports to its owner
//! (a thief) — and the work on it stops the moment the claim is lost (as quickwit's
//! `visibility.rs`: never compute on an item someone else may own now).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use spotbatch_queue::{Lease, LeaseQueue, QueueError};
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// Keeps a shard's claim alive while it is held: extends the queue lease (the owner), or sends
/// `working` reports to the owner (a thief). `lost` fires when the claim is gone.
pub(crate) struct Keeper {
    lost: CancellationToken,
    reason: Arc<Mutex<String>>,
    task: tokio::task::JoinHandle<()>,
}

impl Keeper {
    /// Runs `f`, which resolves (with the reason) only when the claim is lost.
    pub(crate) fn spawn<F>(f: F) -> Self
    where
        F: std::future::Future<Output = String> + Send + 'static,
    {
        let lost = CancellationToken::new();
        let reason = Arc::new(Mutex::new(String::new()));
        let task = {
            let (lost, reason) = (lost.clone(), Arc::clone(&reason));
            tokio::spawn(async move {
                let why = f.await;
                if let Ok(mut r) = reason.lock() {
                    *r = why;
                }
                lost.cancel();
            })
        };
        Self { lost, reason, task }
    }

    /// Extends `lease` every third of `visibility` (see [`heartbeat`] for the retry policy).
    pub(crate) fn queue(
        queue: Arc<dyn spotbatch_queue::LeaseQueue>,
        lease: spotbatch_queue::Lease,
        visibility: Duration,
    ) -> Self {
        Self::spawn(async move { heartbeat(queue.as_ref(), &lease, visibility).await })
    }

    /// Resolves when the claim is lost, with the reason.
    pub(crate) async fn lost(&self) -> String {
        self.lost.cancelled().await;
        self.reason.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

impl Drop for Keeper {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Extends the lease every third of the visibility timeout. Returns only when the lease is lost
/// (or cannot be extended before it runs out), with the reason.
///
/// Retry policy: extensions retry aggressively (every second until the deadline), because losing
/// a lease wastes the work done on it; a `LeaseLost` answer is final.
pub(crate) async fn heartbeat(
    queue: &dyn LeaseQueue,
    lease: &Lease,
    visibility: Duration,
) -> String {
    let period = (visibility / 3).max(Duration::from_millis(100));
    let mut deadline = lease.deadline;
    loop {
        tokio::time::sleep(period).await;
        loop {
            match queue.extend(lease, visibility).await {
                Ok(d) => {
                    deadline = d;
                    break;
                }
                Err(e @ QueueError::LeaseLost { .. }) => return e.to_string(),
                Err(e) => {
                    if std::time::SystemTime::now() + Duration::from_secs(1) >= deadline {
                        return format!("could not extend the lease before it ran out: {e}");
                    }
                    warn!(item = %lease.id, error = %e, "lease extension failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }
}

//! The lease loop and a worker's run: start the pipeline (and the peer service when stealing),
//! then lease up to the shards the worker should hold, spawn a task for each (the shard's life is
//! [`crate::shard::owner`]'s), steal from peers when idle, stop leasing on a drain, and at the end
//! wait for every shard task, write the cost ledgers and hand back what the queue holds for us.
//!
//! A queue that cannot be reached is tried again with backoff (the machine may outlive the
//! outage), never in the way of a stop.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use spotbatch_proto::api::HandedShard;
use spotbatch_queue::{LeaseQueue, QueueError};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::warn;

use crate::control::Control;
use crate::cost::CostMeter;
use crate::job::Jobs;
use crate::node::Node;
use crate::options::WorkerOptions;
use crate::pipeline::Pipeline;
use crate::prefetch::{Deque, Pace};
use crate::progress::Progress;
use crate::shard::owner::handle_lease;
use crate::shard::thief::handle_stolen;
use crate::steal::{Host, PeerConn, StealState, Stealing};

/// Runs a worker until the queue is empty (with `exit_when_empty`), or until `control` drains or
/// stops it (see [`Control`]).
pub async fn run_worker(
    queue: Arc<dyn LeaseQueue>,
    jobs: Jobs,
    opts: WorkerOptions,
    progress: Arc<Progress>,
    control: Control,
    steal: Option<Stealing>,
) -> Result<(), QueueError> {
    let pipeline = Pipeline::start(&opts).map_err(|e| QueueError::Backend {
        queue: queue.name().to_string(),
        backend: "worker",
        source: format!("cannot start a pipeline thread: {e}").into(),
    })?;
    // Always on: without prices it keeps the shard timeline that `spotbatch report` charts.
    let cost = Arc::new(CostMeter::new(&opts.id, opts.prices.clone()));
    let (steal, listener) = match steal {
        Some(s) => {
            let (st, listener) = StealState::new(s);
            (Some(Arc::new(st)), Some(listener))
        }
        None => (None, None),
    };
    let node = Arc::new(Node {
        queue,
        jobs,
        progress,
        control,
        pipeline,
        feed: Semaphore::new(1),
        opts,
        cost,
        deque: Deque::default(),
        waiting: AtomicUsize::new(0),
        pace: Pace::default(),
        steal,
        tasks: TaskTracker::new(),
        slot_freed: tokio::sync::Notify::new(),
        offers_done: CancellationToken::new(),
    });
    let peer_stop = CancellationToken::new();
    let peer_server = match (listener, &node.steal) {
        (Some(listener), Some(st)) => Some(crate::steal::serve(
            Arc::new(NodeHost(Arc::clone(&node))),
            Arc::clone(st),
            listener,
            st.token.clone(),
            peer_stop.clone(),
        )),
        _ => None,
    };
    // A drain first offers unstarted shards to idle peers, then releases the rest.
    let offers = {
        let node = Arc::clone(&node);
        tokio::spawn(async move {
            node.control.drain.cancelled().await;
            if let Some(st) = &node.steal {
                // Bounded: the release of what is not offered waits for this.
                let cutoff = node.control.cutoff();
                let host = NodeHost(Arc::clone(&node));
                let offers = crate::steal::offer_unstarted(&host, st, cutoff);
                let _ = tokio::time::timeout(Duration::from_secs(3), offers).await;
            }
            node.offers_done.cancel();
        })
    };
    let meter = {
        let (m, progress) = (Arc::clone(&node.cost), Arc::clone(&node.progress));
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(1));
            every.tick().await;
            loop {
                every.tick().await;
                m.tick(&progress.held_jobs());
            }
        })
    };
    let mut result = lease_loop(Arc::clone(&node)).await;
    meter.abort();
    offers.abort();
    peer_stop.cancel();
    if let Some(p) = peer_server {
        let _ = p.await;
    }
    node.cost.tick(&node.progress.held_jobs());
    if let Some(since) = node.control.since_notice() {
        node.cost
            .notice(spotbatch_store::ledger::now_ms().saturating_sub(since.as_millis() as u64));
    }
    for job in node.cost.jobs() {
        if let Some(layout) = node.jobs.layout_of(&job) {
            node.cost.write_ledger(&job, &layout).await;
        }
    }
    // Every lease is acked or released by now: hand back what the queue holds for us.
    if let Err(e) = node.queue.close().await {
        warn!(worker = %node.opts.id, error = %e, "closing the queue failed");
        if result.is_ok() {
            result = Err(e);
        }
    }
    // Closing the decode queue lets the threads drain and exit.
    node.pipeline.close().await;
    result
}

async fn lease_loop(node: Arc<Node>) -> Result<(), QueueError> {
    let mut next_steal = Instant::now();
    let mut lease_backoff = crate::backoff::Backoff::new();
    let mut unreachable = Unreachable::default();
    let result = loop {
        if node.control.stop_leasing.is_cancelled() {
            break Ok(());
        }
        let target = node.target();
        metrics::gauge!("spotbatch_prefetch_depth").set(target as f64);
        let free = target.saturating_sub(node.tasks.len());
        if free == 0 {
            // Wait for a slot (or stop).
            tokio::select! {
                _ = node.slot_freed.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                _ = node.control.stop_leasing.cancelled() => break Ok(()),
            }
            continue;
        }
        if node.opts.exit_when_empty && node.tasks.is_empty() {
            match node.queue.depth().await {
                Ok(d) if d.pending() == 0 => break Ok(()),
                Ok(_) => unreachable.clear(),
                Err(e) => {
                    if let Some(gave_up) = unreachable.seen(&e, &node.opts) {
                        break Err(gave_up);
                    }
                    warn!(worker = %node.opts.id, error = %e, "queue depth failed")
                }
            }
        }
        let visibility = node.visibility();
        // While our own shards are in work, look again soon: a slot frees when one finishes.
        let wait = if node.tasks.is_empty() {
            node.opts.lease_wait
        } else {
            node.opts.lease_wait.min(Duration::from_millis(100))
        };
        let t0 = Instant::now();
        let leases = tokio::select! {
            r = node.queue.lease(free, visibility, wait) => r,
            _ = node.control.stop_leasing.cancelled() => break Ok(()),
        };
        let leases = match leases {
            Ok(l) => {
                lease_backoff.reset();
                // An empty answer is no proof the service is there: a Kafka consumer polls its
                // local queue and answers "nothing" while every broker is down. Work is.
                if !l.is_empty() {
                    unreachable.clear();
                }
                l
            }
            Err(e) => {
                if let Some(gave_up) = unreachable.seen(&e, &node.opts) {
                    break Err(gave_up);
                }
                let delay = lease_backoff.next_delay();
                warn!(worker = %node.opts.id, error = %e, retry_in_ms = delay.as_millis() as u64, "lease failed; retrying");
                metrics::counter!("spotbatch_lease_errors_total").increment(1);
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = node.control.stop_leasing.cancelled() => break Ok(()),
                }
                continue;
            }
        };
        if !leases.is_empty() {
            node.pace.lease_took(t0.elapsed());
            for lease in leases {
                let n = Arc::clone(&node);
                spawn_shard(&node, async move { handle_lease(&n, lease).await });
            }
            continue;
        }
        // Nothing for us in the queue and nothing waiting to start: idle, so steal.
        let idle = node.waiting.load(Ordering::Relaxed) == 0;
        if let (Some(st), true) = (&node.steal, idle && Instant::now() >= next_steal) {
            match crate::steal::steal(st, free).await {
                Some((owner, shards)) => {
                    let conn = match st.conn(&owner) {
                        Ok(c) => c,
                        Err(e) => {
                            warn!(error = %e, "cannot reach the shards' owner");
                            continue;
                        }
                    };
                    for h in shards {
                        spawn_stolen(&node, h, conn.clone(), st.handoff_timeout);
                    }
                    next_steal = Instant::now();
                }
                None => next_steal = Instant::now() + Duration::from_secs(1),
            }
        }
    };
    // Interrupted or finished: let every shard task release or finish.
    node.tasks.close();
    node.tasks.wait().await;
    result
}

/// Since when the queue's service has been unreachable, for `WorkerOptions::give_up_unreachable`.
#[derive(Default)]
struct Unreachable {
    since: Option<Instant>,
}

impl Unreachable {
    fn clear(&mut self) {
        self.since = None;
    }

    /// Notes a failed call; gives the error to exit with once a worker that is to exit when the
    /// queue is empty has not reached the service for the allowed time.
    fn seen(&mut self, e: &QueueError, opts: &WorkerOptions) -> Option<QueueError> {
        let QueueError::Unreachable {
            queue,
            backend,
            source,
        } = e
        else {
            return None;
        };
        let since = *self.since.get_or_insert_with(Instant::now);
        let limit = opts.give_up_unreachable.filter(|_| opts.exit_when_empty)?;
        (since.elapsed() >= limit).then(|| QueueError::Unreachable {
            queue: queue.clone(),
            backend,
            source: format!(
                "gave up after {} s without reaching it (--give-up-after-secs): {source}",
                limit.as_secs()
            )
            .into(),
        })
    }
}

/// Runs a shard task on the worker's tracker; its end frees a slot.
fn spawn_shard<F>(node: &Arc<Node>, f: F)
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let n = Arc::clone(node);
    node.tasks.spawn(async move {
        f.await;
        n.slot_freed.notify_one();
    });
}

/// Works a shard handed over by a peer (stolen, or offered by a draining peer).
fn spawn_stolen(node: &Arc<Node>, h: HandedShard, owner: PeerConn, timeout: Duration) {
    let n = Arc::clone(node);
    spawn_shard(
        node,
        async move { handle_stolen(&n, h, owner, timeout).await },
    );
}

/// The worker as the work-stealing service sees it.
struct NodeHost(Arc<Node>);

impl Host for NodeHost {
    fn hand_over(&self, max: usize, all: bool, thief: &str) -> Vec<HandedShard> {
        match &self.0.steal {
            Some(st) => self.0.deque.take(max, all, thief, &st.handoffs),
            None => Vec::new(),
        }
    }

    fn unstarted(&self) -> usize {
        self.0.deque.len()
    }

    fn room(&self) -> usize {
        self.0.room()
    }

    fn is_draining(&self) -> bool {
        self.0.control.is_draining()
    }

    fn stops_leasing(&self) -> bool {
        self.0.control.stop_leasing.is_cancelled()
    }

    fn shard_secs(&self) -> Option<f64> {
        self.0.pace.shard_secs()
    }

    fn work_handed(&self, h: HandedShard, owner: PeerConn, timeout: Duration) {
        spawn_stolen(&self.0, h, owner, timeout);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unreachable() -> QueueError {
        QueueError::Unreachable {
            queue: "t".into(),
            backend: "kafka",
            source: "no broker answered".into(),
        }
    }

    fn opts(exit_when_empty: bool, limit: Option<Duration>) -> WorkerOptions {
        WorkerOptions {
            exit_when_empty,
            give_up_unreachable: limit,
            ..WorkerOptions::default()
        }
    }

    #[test]
    fn a_worker_to_exit_when_empty_gives_up_once_the_service_stays_unreachable() {
        let o = opts(true, Some(Duration::from_millis(30)));
        let mut u = Unreachable::default();
        assert!(
            u.seen(&unreachable(), &o).is_none(),
            "not at the first failure"
        );
        std::thread::sleep(Duration::from_millis(40));
        let e = u
            .seen(&unreachable(), &o)
            .expect("gives up after the limit");
        assert!(e.to_string().contains("gave up after 0 s"), "{e}");
        assert!(matches!(e, QueueError::Unreachable { .. }));
        // An answer in between starts the count again.
        let mut u = Unreachable::default();
        assert!(u.seen(&unreachable(), &o).is_none());
        std::thread::sleep(Duration::from_millis(40));
        u.clear();
        assert!(u.seen(&unreachable(), &o).is_none());
    }

    #[test]
    fn other_errors_and_workers_waiting_for_work_never_give_up() {
        let other = QueueError::Backend {
            queue: "t".into(),
            backend: "kafka",
            source: "refused".into(),
        };
        let mut u = Unreachable::default();
        let o = opts(true, Some(Duration::ZERO));
        assert!(
            u.seen(&other, &o).is_none(),
            "only an unreachable service counts"
        );
        for o in [opts(false, Some(Duration::ZERO)), opts(true, None)] {
            let mut u = Unreachable::default();
            assert!(u.seen(&unreachable(), &o).is_none());
            assert!(u.seen(&unreachable(), &o).is_none());
        }
    }
}

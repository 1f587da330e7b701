//! How a worker runs: [`WorkerOptions`] and their defaults.

use std::time::Duration;

/// How a worker runs.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// Names the worker in logs and metrics.
    pub id: String,
    /// Shards held at once (one in work, the rest leased-but-unstarted so the model never waits).
    pub prefetch: usize,
    /// Threads decoding and preprocessing inputs.
    pub decode_threads: usize,
    /// Inputs fetched at once per shard.
    pub fetch_concurrency: usize,
    /// How long one `lease` call waits for work.
    pub lease_wait: Duration,
    /// Stop when the queue has nothing visible or in flight (for `run`); otherwise wait for work.
    pub exit_when_empty: bool,
    /// Testing knob: sleep this long after every inference batch, to make a worker slow.
    pub throttle_batch: Option<Duration>,
    /// Lease length; default: the longest of the known jobs' `queue.visibility_timeout_secs`,
    /// else 60 s.
    pub visibility: Option<Duration>,
    /// Measurement knob: append the key of every item the model ran on to this file (the chaos
    /// test counts work redone from it, also for workers that were SIGKILLed).
    pub processed_log: Option<std::path::PathBuf>,
    /// What this worker's machine costs; `None`: cost is not accounted.
    pub prices: Option<spotbatch_store::Prices>,
    /// With `exit_when_empty`: how long the queue's service (Kafka brokers, an SQS endpoint) may
    /// stay unreachable before the worker gives up with an error. `None`: it keeps trying (a
    /// worker waiting for work keeps trying whatever this is).
    pub give_up_unreachable: Option<Duration>,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        Self {
            id: format!("worker-{}", std::process::id()),
            prefetch: 2,
            decode_threads: default_decode_threads(),
            fetch_concurrency: 16,
            lease_wait: Duration::from_secs(1),
            exit_when_empty: true,
            throttle_batch: None,
            visibility: None,
            processed_log: None,
            prices: None,
            give_up_unreachable: Some(Duration::from_secs(300)),
        }
    }
}

/// Half the cores for decoding, at least one: the model's own threads take the rest.
pub fn default_decode_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get() / 2)
        .unwrap_or(1)
        .max(1)
}

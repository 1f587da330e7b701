//! A shard's life on a worker, from lease to ack: the owner's side ([`owner`]: wait for its turn
//! in the deque or hand it to a peer, work it, then ack, release or dead-letter by the outcome),
//! the thief's side ([`thief`]: work a shard a peer handed over and report back), working it
//! ([`run`]: skip it if done, resume a partial result, feed the pipeline, write), and its files
//! ([`output`]: the part, the done marker, the partial result).

mod account;
pub(crate) mod output;
pub(crate) mod owner;
pub(crate) mod run;
pub(crate) mod thief;
mod turn;

use crate::error::{Policy, ShardError};

/// What happened to one held shard.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Written and marked done.
    Done { items: u64, errors: u64 },
    /// Its done marker existed: nothing to do.
    AlreadyDone,
    /// The attempt failed; the error's policy says what becomes of the shard.
    Failed(ShardError),
    /// Drained before it started: handed back untouched.
    Unstarted,
    /// Drained mid-shard: the finished rows were written as a partial result.
    Partial { done: usize, total: usize },
    /// A peer worked it and reported it done.
    HandedOver,
}

impl Outcome {
    /// Its name in ledgers and reports, and the rows it wrote.
    pub(crate) fn summary(&self) -> (&'static str, u64) {
        match self {
            Outcome::Done { items, .. } => ("done", *items),
            Outcome::AlreadyDone => ("skipped", 0),
            Outcome::Failed(e) => match e.policy() {
                Policy::Stop => ("lease_lost", 0),
                Policy::Release => ("interrupted", 0),
                Policy::ErrorRow | Policy::Retry | Policy::DeadLetter => ("failed", 0),
            },
            Outcome::Unstarted => ("released", 0),
            Outcome::Partial { done, .. } => ("partial", *done as u64),
            Outcome::HandedOver => ("handed_over", 0),
        }
    }
}

//! The hot path's errors, typed, each carrying its policy: what becomes of the item or the shard.
//!
//! | error | policy |
//! | --- | --- |
//! | [`ShardError::Item`]: one bad input (not an image, too large, missing, a malformed row, the model failing on it alone) | [`Policy::ErrorRow`]: its row carries the reason, the shard goes on |
//! | [`ShardError::Storage`], [`ShardError::Read`], [`ShardError::Job`], [`ShardError::Pipeline`], [`ShardError::Output`], [`ShardError::Peer`] | [`Policy::Retry`]: the attempt fails, the shard is released with the reason; the queue dead-letters it after `max_attempts` |
//! | [`ShardError::LeaseLost`] | [`Policy::Stop`]: someone else may own the shard now; write nothing, touch nothing on the queue |
//! | [`ShardError::Stopped`] | [`Policy::Release`]: handed back without counting an attempt |
//! | [`ShardError::Foreign`] | [`Policy::DeadLetter`]: a message that can never succeed goes to the dead-letter queue at once |

use spotbatch_proto::TaskError;
use spotbatch_store::{GetError, StorageError};

use crate::engine::EngineError;

/// What becomes of an item or a shard when something goes wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// The item's row carries the error; the shard goes on.
    ErrorRow,
    /// This attempt fails: the shard is released with the error (an attempt counted towards the
    /// dead-letter queue).
    Retry,
    /// The claim on the shard is gone: stop, write nothing, leave the queue alone.
    Stop,
    /// Hand the shard back without counting an attempt (the worker is stopping).
    Release,
    /// The message can never succeed: dead-letter it now.
    DeadLetter,
}

/// Why one item has no result (its row says so, in one line).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ItemError {
    /// The input is not usable: not an image, corrupt, the wrong size, a malformed row.
    #[error("{0}")]
    Input(String),
    /// The input could not be read: missing, or over `input.max_bytes`.
    #[error("{0}")]
    Read(String),
    /// The model failed on this item alone.
    #[error("{0}")]
    Inference(String),
    /// Its output could not be turned into a row.
    #[error("{0}")]
    Output(String),
}

/// Why a shard (or one of its items) could not be worked, with its [`Policy`].
#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    /// One item's problem.
    #[error("{key}: {error}")]
    Item {
        /// The item's key.
        key: String,
        /// What is wrong with it.
        error: ItemError,
    },
    /// Reading inputs or writing outputs failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A record file could not be read (unreadable, changed, lacking a named column).
    #[error("{0}")]
    Read(String),
    /// The job could not be prepared on this worker (model, labels, manifest).
    #[error(transparent)]
    Job(#[from] JobError),
    /// The pipeline could not run the shard (the model failed on every item, a thread stopped).
    #[error("{0}")]
    Pipeline(String),
    /// The rows could not be written out.
    #[error("{0}")]
    Output(String),
    /// A peer that was handed the shard reported its attempt failed.
    #[error("{0}")]
    Peer(String),
    /// The lease (or the hand-off from the shard's owner) is lost.
    #[error("{0}")]
    LeaseLost(String),
    /// The worker stops at once.
    #[error("the worker is stopping")]
    Stopped,
    /// The message is not a spotbatch shard this build can read.
    #[error(transparent)]
    Foreign(#[from] TaskError),
}

impl ShardError {
    /// What becomes of the item or the shard.
    pub fn policy(&self) -> Policy {
        match self {
            ShardError::Item { .. } => Policy::ErrorRow,
            ShardError::Storage(_)
            | ShardError::Read(_)
            | ShardError::Job(_)
            | ShardError::Pipeline(_)
            | ShardError::Output(_)
            | ShardError::Peer(_) => Policy::Retry,
            ShardError::LeaseLost(_) => Policy::Stop,
            ShardError::Stopped => Policy::Release,
            ShardError::Foreign(_) => Policy::DeadLetter,
        }
    }

    /// An input that could not be read: missing or oversized inputs are the item's problem (an
    /// error row); anything else is the store's (the attempt fails and is retried).
    pub fn from_get(key: &str, e: GetError) -> Self {
        match e {
            e @ GetError::TooLarge { .. }
            | e @ GetError::Storage(StorageError::NotFound { .. }) => ShardError::Item {
                key: key.to_string(),
                error: ItemError::Read(e.to_string()),
            },
            GetError::Storage(e) => ShardError::Storage(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_carries_its_policy() {
        let item = ShardError::Item {
            key: "k".into(),
            error: ItemError::Input("not an image".into()),
        };
        assert_eq!(item.policy(), Policy::ErrorRow);
        assert_eq!(ShardError::Pipeline("x".into()).policy(), Policy::Retry);
        assert_eq!(ShardError::Peer("x".into()).policy(), Policy::Retry);
        assert_eq!(ShardError::LeaseLost("x".into()).policy(), Policy::Stop);
        assert_eq!(ShardError::Stopped.policy(), Policy::Release);
        let foreign = ShardError::Foreign(TaskError::Foreign("garbage".into()));
        assert_eq!(foreign.policy(), Policy::DeadLetter);
    }

    #[test]
    fn missing_and_oversized_inputs_are_the_items_problem_other_storage_errors_the_shards() {
        let too_large = ShardError::from_get("a.png", GetError::TooLarge { size: 10, max: 5 });
        assert_eq!(too_large.policy(), Policy::ErrorRow);
        assert_eq!(
            too_large.to_string(),
            "a.png: input is 10 bytes, over input.max_bytes = 5"
        );
        let missing = ShardError::from_get(
            "a.png",
            GetError::Storage(StorageError::NotFound {
                url: "file:///x/a.png".into(),
            }),
        );
        assert_eq!(missing.policy(), Policy::ErrorRow);
        let down = ShardError::from_get(
            "a.png",
            GetError::Storage(StorageError::Unsupported {
                url: "x".into(),
                reason: "down".into(),
            }),
        );
        assert_eq!(down.policy(), Policy::Retry);
    }
}

/// Why a job could not be prepared on this worker (every shard of it fails the same way).
#[derive(Debug, Clone, thiserror::Error)]
pub enum JobError {
    /// A file the job needs could not be read.
    #[error("{field}: {message}")]
    File {
        /// The manifest field naming the file.
        field: &'static str,
        /// What went wrong, with the URL.
        message: String,
    },
    /// The model could not be loaded or does not fit the manifest.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The shard names a job this worker was not given.
    #[error("job {job} (manifest {digest}) is not known to this worker")]
    Unknown {
        /// The job id.
        job: String,
        /// Its manifest digest.
        digest: String,
    },
}

//! A hand-off as its owner sees it: a leased shard given to a peer (stolen from the deque, or
//! offered by a draining owner), and the words the peer sends about it. The owner keeps the queue
//! lease until the peer's last word.

use std::time::Instant;

use tokio::sync::mpsc;

/// What a thief says about a shard it was handed.
#[derive(Debug)]
pub(crate) enum Word {
    /// Still on it: the hand-off stays alive.
    Working,
    /// Written (or found already written): the owner acks.
    Done,
    /// The attempt failed: the owner releases the shard with this error.
    Failed(String),
    /// Given back unfinished (the thief drains or stops): the owner takes it back.
    Released,
}

/// A shard given to a thief, as its owner's task sees it.
pub(crate) struct Given {
    pub(crate) id: String,
    pub(crate) thief: String,
    pub(crate) words: mpsc::UnboundedReceiver<Word>,
    pub(crate) at: Instant,
}

/// The hand-offs a worker has given and not yet seen end, by id: where each thief's words go.
/// Later words about a forgotten hand-off are refused (the shard was taken back).
#[derive(Debug)]
pub(crate) struct Handoffs {
    /// Hand-off ids start with the giving worker's id.
    owner: String,
    open: std::sync::Mutex<std::collections::HashMap<String, mpsc::UnboundedSender<Word>>>,
}

impl Handoffs {
    /// The registry of the worker `owner`.
    pub(crate) fn new(owner: &str) -> Self {
        Self {
            owner: owner.to_string(),
            open: Default::default(),
        }
    }

    /// Opens a hand-off: its id, and where the thief's words arrive.
    pub(crate) fn open(&self) -> (String, mpsc::UnboundedReceiver<Word>) {
        let id = format!("{}-{}", self.owner, rand::random::<u64>());
        let (tx, rx) = mpsc::unbounded_channel();
        if let Ok(mut h) = self.open.lock() {
            h.insert(id.clone(), tx);
        }
        (id, rx)
    }

    /// Forgets a hand-off: later words about it are refused.
    pub(crate) fn forget(&self, id: &str) {
        if let Ok(mut h) = self.open.lock() {
            h.remove(id);
        }
    }

    /// Passes a thief's word to the owner's task; `false` when the hand-off is not known (any
    /// more).
    pub(crate) fn tell(&self, id: &str, word: Word) -> bool {
        self.open
            .lock()
            .ok()
            .and_then(|h| h.get(id).map(|tx| tx.send(word).is_ok()))
            .unwrap_or(false)
    }
}

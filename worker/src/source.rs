//! The item source seam: what a shard's items are and how they are read. A source turns a shard
//! into a stream of its items, in the shard's order, each with its [`Payload`] (or the item's own
//! error, which becomes its error row); an error that concerns the whole shard (the store is down)
//! ends the stream and fails the attempt. Items whose rows are kept from a partial result are
//! named but not read.
//!
//! Today: [`ObjectSource`], one object per item, the shard naming their keys.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt};
use spotbatch_proto::ShardTask;
use spotbatch_store::Prefix;

use crate::error::ShardError;

/// One item's input as its source read it.
#[derive(Debug, Clone)]
pub enum Payload {
    /// A whole object (an image file).
    Object(Bytes),
}

/// One item of a shard.
#[derive(Debug)]
pub struct SourceItem {
    /// Its key: what its row is named by.
    pub key: String,
    /// What was read; `None` when its row is kept from a partial result (not read again).
    pub payload: Option<Payload>,
}

/// A shard's items in order; `Err(ShardError::Item { .. })` is one item's problem (its error
/// row), any other error ends the shard's attempt.
pub type ItemStream = BoxStream<'static, Result<SourceItem, ShardError>>;

/// Reads a shard's items.
pub trait ItemSource: Send + Sync + std::fmt::Debug {
    /// The items of `task`, in order, reading at most `concurrency` at once; the keys in `kept`
    /// are named but not read.
    fn read(&self, task: &ShardTask, kept: Arc<HashSet<String>>, concurrency: usize) -> ItemStream;
}

/// One object per item: the shard's keys, below the job's input prefix.
#[derive(Debug, Clone)]
pub struct ObjectSource {
    prefix: Prefix,
    max_bytes: u64,
}

impl ObjectSource {
    /// Objects below `prefix`; larger than `max_bytes` is the item's error, without reading it.
    pub fn new(prefix: Prefix, max_bytes: u64) -> Self {
        Self { prefix, max_bytes }
    }
}

impl ItemSource for ObjectSource {
    fn read(&self, task: &ShardTask, kept: Arc<HashSet<String>>, concurrency: usize) -> ItemStream {
        let (prefix, max_bytes) = (self.prefix.clone(), self.max_bytes);
        // Each fetch is a task of its own: it goes on while the pipeline has no room for its
        // result yet (an object store's request needs polling to progress), and its time is the
        // store's alone, not the wait for room. Dropped unfinished (a drain), it is aborted.
        futures::stream::iter(task.keys.clone())
            .map(move |key| {
                let prefix = prefix.clone();
                let skip = kept.contains(&key);
                tokio_util::task::AbortOnDropHandle::new(tokio::spawn(async move {
                    if skip {
                        return Ok(SourceItem { key, payload: None });
                    }
                    let t0 = Instant::now();
                    let r = prefix.get(&key, max_bytes).await;
                    metrics::histogram!("spotbatch_stage_seconds", "stage" => "fetch")
                        .record(t0.elapsed().as_secs_f64());
                    match r {
                        Ok(bytes) => Ok(SourceItem {
                            key,
                            payload: Some(Payload::Object(bytes)),
                        }),
                        Err(e) => Err(ShardError::from_get(&key, e)),
                    }
                }))
            })
            .buffered(concurrency.max(1))
            .map(|joined| match joined {
                Ok(item) => item,
                // A fetch that panicked: the attempt fails and is retried.
                Err(e) => Err(ShardError::Pipeline(format!(
                    "reading an input failed: {e}"
                ))),
            })
            .boxed()
    }
}

/// Checks every [`ItemSource`] must pass, run by each implementation's tests: every item of the
/// shard once, in order; kept items named and not read; an unreadable item is that item's error
/// and the items after it still come.
pub mod conformance {
    use super::*;

    /// Reads `task` from `source`: `want` is every item's key in order, with the payload bytes
    /// expected (`None`: the item's own error); the keys in `kept` must come without a payload.
    pub async fn check(
        source: &dyn ItemSource,
        task: &ShardTask,
        want: &[(String, Option<Vec<u8>>)],
        kept: &[&str],
    ) {
        let kept_set: Arc<HashSet<String>> = Arc::new(kept.iter().map(|k| k.to_string()).collect());
        for concurrency in [1, 4] {
            let got: Vec<Result<SourceItem, ShardError>> = source
                .read(task, Arc::clone(&kept_set), concurrency)
                .collect()
                .await;
            assert_eq!(got.len(), want.len(), "one entry per item");
            for (g, (key, bytes)) in got.iter().zip(want) {
                match (g, bytes) {
                    (Ok(item), _) if kept_set.contains(key) => {
                        assert_eq!(&item.key, key);
                        assert!(item.payload.is_none(), "{key} is kept: not read");
                    }
                    (Ok(item), Some(b)) => {
                        assert_eq!(&item.key, key, "in order");
                        let Some(Payload::Object(got)) = &item.payload else {
                            panic!("{key}: no payload");
                        };
                        assert_eq!(got.as_ref(), b.as_slice(), "{key}'s bytes");
                    }
                    (Err(ShardError::Item { key: k, .. }), None) => assert_eq!(k, key),
                    (other, _) => panic!("{key}: unexpected {other:?}"),
                }
            }
        }
    }
}

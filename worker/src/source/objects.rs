//! One object per item: the shard names the keys below the job's input prefix; each is fetched
//! whole (refused unread when over `input.max_bytes`), several at a time.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use futures::stream::StreamExt;
use spotbatch_proto::ShardTask;
use spotbatch_store::Prefix;

use super::{ItemSource, ItemStream, Payload, SourceItem};
use crate::error::ShardError;

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

//! The item source seam: what a shard's items are and how they are read. A source turns a shard
//! into a stream of its items, in the shard's order, each with its [`Payload`] (or the item's own
//! error, which becomes its error row); an error that concerns the whole shard (the store is down)
//! ends the stream and fails the attempt. Items whose rows are kept from a partial result are
//! named but not read.
//!
//! Two sources: [`objects::ObjectSource`], one object per item, the shard naming their keys; and
//! [`records::RecordSource`], the rows of a part of a JSONL, CSV or Parquet file, the shard naming
//! the part (a split).

pub mod objects;
pub mod records;

pub use objects::ObjectSource;
pub use records::RecordSource;

use std::collections::HashSet;
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt};
use spotbatch_proto::ShardTask;

use crate::error::ShardError;

/// One item's input as its source read it.
#[derive(Debug, Clone)]
pub enum Payload {
    /// A whole object (an image file, or a document).
    Object(Bytes),
    /// A record's fields (its text, id and carried columns).
    Record(spotbatch_records::Fields),
    /// A record's text, once its carried columns are set aside for its row.
    Text(String),
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

/// Checks every [`ItemSource`] must pass, run by each implementation's tests: every item of the
/// shard once, in order; kept items named and not read; an unreadable item (a record: a row that
/// does not parse) is that item's error and the items after it still come.
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
                        let got: &[u8] = match &item.payload {
                            Some(Payload::Object(got)) => got.as_ref(),
                            Some(Payload::Record(f)) => {
                                f.text.as_deref().map(str::as_bytes).unwrap_or_default()
                            }
                            Some(Payload::Text(t)) => t.as_bytes(),
                            None => panic!("{key}: no payload"),
                        };
                        assert_eq!(got, b.as_slice(), "{key}'s bytes (a record's text)");
                    }
                    (Err(ShardError::Item { key: k, .. }), None) => assert_eq!(k, key),
                    (other, _) => panic!("{key}: unexpected {other:?}"),
                }
            }
        }
    }
}

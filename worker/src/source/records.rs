//! The rows of a part of a record file: the shard names a split (a byte range of a JSONL or CSV
//! file, a row range of a Parquet file), read with ranged GETs in bounded memory by
//! `spotbatch-records`. Each row is an item keyed `FILE#POS`; a row that does not parse (malformed
//! JSON, a wrong field count, a missing or non-string text, invalid UTF-8) is that item's error
//! row; a file that cannot be read, or lacks a named column, fails the shard's attempt with the
//! reason naming the file and column.

use std::collections::HashSet;
use std::sync::Arc;

use futures::stream::StreamExt;
use spotbatch_proto::ShardTask;
use spotbatch_records::{Projection, ReadOptions, Source};

use super::{ItemSource, ItemStream, Payload, SourceItem};
use crate::error::{ItemError, ShardError};

/// Rows of record files below one source, with the job's projection and dialect.
#[derive(Debug, Clone)]
pub struct RecordSource {
    source: Source,
    projection: Projection,
    opts: ReadOptions,
}

impl RecordSource {
    /// Rows of the files below `source`, each read as `projection` says.
    pub fn new(source: Source, projection: Projection, opts: ReadOptions) -> Self {
        Self {
            source,
            projection,
            opts,
        }
    }

    /// The job's columns.
    pub fn projection(&self) -> &Projection {
        &self.projection
    }
}

impl ItemSource for RecordSource {
    fn read(
        &self,
        task: &ShardTask,
        kept: Arc<HashSet<String>>,
        _concurrency: usize,
    ) -> ItemStream {
        let Some(split) = task.split.clone() else {
            let e = ShardError::Pipeline(format!(
                "shard {} names no part of a record file (a files job's shard on a record job?)",
                task.shard
            ));
            return futures::stream::once(async move { Err(e) }).boxed();
        };
        let this = self.clone();
        let opened = async move {
            spotbatch_records::read_split(&this.source, &split, &this.projection, &this.opts)
                .await
                .map_err(|e| ShardError::Read(e.to_string()))
        };
        futures::stream::once(opened)
            .flat_map(move |records| match records {
                Err(e) => futures::stream::once(async move { Err(e) }).boxed(),
                Ok(records) => {
                    let kept = Arc::clone(&kept);
                    records
                        .map(move |r| match r {
                            Err(e) => Err(ShardError::Read(e.to_string())),
                            Ok(rec) => {
                                let key = rec.key.to_string();
                                match rec.fields {
                                    _ if kept.contains(&key) => {
                                        Ok(SourceItem { key, payload: None })
                                    }
                                    Ok(fields) => Ok(SourceItem {
                                        key,
                                        payload: Some(Payload::Record(fields)),
                                    }),
                                    Err(e) => Err(ShardError::Item {
                                        key,
                                        error: ItemError::Input(e.to_string()),
                                    }),
                                }
                            }
                        })
                        .boxed()
                }
            })
            .boxed()
    }
}

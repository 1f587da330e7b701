//! A shard's files, through the job's layout and row sink: the part file (written whole), then the
//! done marker (after the part, before the ack), the partial result a drain leaves (always JSONL:
//! its keys are the resume cursor), and reading that partial result back.

use std::collections::HashMap;

use bytes::Bytes;
use spotbatch_proto::{DoneMarker, ShardTask};
use spotbatch_store::{JobLayout, StorageError};

use crate::error::ShardError;
use crate::sink::{JsonlSink, Row, RowSink};

/// Rows and error rows written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Written {
    pub(crate) items: u64,
    pub(crate) errors: u64,
}

fn count(rows: &[Row]) -> Written {
    Written {
        items: rows.len() as u64,
        errors: rows.iter().filter(|r| r.is_error()).count() as u64,
    }
}

/// Writes a finished shard: its part file whole, then its done marker, then deletes its partial
/// result. A redelivered shard rewrites the same bytes.
pub(crate) async fn write_done(
    layout: &JobLayout,
    sink: &dyn RowSink,
    task: &ShardTask,
    rows: &[Row],
) -> Result<Written, ShardError> {
    let written = count(rows);
    let key = JobLayout::part_key_as(&task.shard, sink.format());
    let sha256 = sink
        .write(&layout.prefix, &key, rows)
        .await
        .map_err(|e| ShardError::Output(e.to_string()))?;
    let marker = DoneMarker {
        job: task.job.clone(),
        shard: task.shard.clone(),
        items: written.items,
        errors: written.errors,
        part: key.clone(),
        sha256,
    };
    let marker = serde_json::to_vec(&marker).map_err(|e| ShardError::Output(e.to_string()))?;
    layout
        .prefix
        .put(&JobLayout::done_key(&task.shard), Bytes::from(marker))
        .await?;
    layout
        .prefix
        .delete(&JobLayout::partial_key(&task.shard))
        .await?;
    Ok(written)
}

/// Writes the rows a drained shard finished as its partial result (no done marker): JSON lines,
/// carried values under `carried` (the job's carried columns' names).
pub(crate) async fn write_partial(
    layout: &JobLayout,
    carried: &[String],
    task: &ShardTask,
    rows: &[Row],
) -> Result<Written, ShardError> {
    let body = JsonlSink::new(carried.to_vec())
        .encode(rows)
        .map_err(|e| ShardError::Output(e.to_string()))?;
    layout
        .prefix
        .put(&JobLayout::partial_key(&task.shard), Bytes::from(body))
        .await?;
    Ok(count(rows))
}

/// Reads a shard's partial result: each kept row by key. A line that does not parse is not
/// kept: that item is simply done again.
pub(crate) async fn read_partial(
    layout: &JobLayout,
    shard: &str,
) -> Result<HashMap<String, Row>, StorageError> {
    let mut kept = HashMap::new();
    let Some(bytes) = layout
        .prefix
        .get_opt(&JobLayout::partial_key(shard))
        .await?
    else {
        return Ok(kept);
    };
    for line in String::from_utf8_lossy(&bytes).lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if let Some(key) = v.get("key").and_then(|k| k.as_str()) {
            let error = !v.get("error").is_none_or(|e| e.is_null());
            kept.insert(
                key.to_string(),
                Row::Kept {
                    line: line.to_string(),
                    error,
                },
            );
        }
    }
    Ok(kept)
}

//! The post thread: turns each finished batch into rows (each item post-processed by its own
//! job: top-k, embeddings, raw tensors) and sends every row to its shard, so the model's thread
//! goes straight on to the next batch.

use std::time::Instant;

use spotbatch_proto::OutputRow;

use super::{Decoded, ToShard};
use crate::engine::BatchOutput;
use crate::error::ItemError;
use crate::preprocess::ModelInput;

/// A batch the model has run, on its way to the post thread for its rows.
pub(crate) struct Ran {
    pub(crate) out: BatchOutput,
    pub(crate) batch: Vec<Decoded>,
}

/// Post-processes each item of a batch the model ran and sends its row.
pub(crate) fn send_rows(r: Ran) {
    let t0 = Instant::now();
    for (i, d) in r.batch.into_iter().enumerate() {
        send_row(&r.out, i, d);
    }
    metrics::histogram!("spotbatch_stage_seconds", "stage" => "postprocess")
        .record(t0.elapsed().as_secs_f64());
}

/// Sends item `i`'s row: its output post-processed by its own job, or the error.
pub(crate) fn send_row(out: &BatchOutput, i: usize, d: Decoded) {
    let kind = d.work.ctx.post.kind();
    let row = match item_value(out, i, &d) {
        Ok(value) => OutputRow {
            key: d.key,
            kind,
            value: Some(value),
            error: None,
        },
        Err(reason) => OutputRow::failed(d.key, kind, reason.to_string()),
    };
    d.work.send(ToShard::Row(d.idx, row));
}

/// Item `i`'s output, post-processed by its own job.
fn item_value(
    out: &BatchOutput,
    i: usize,
    d: &Decoded,
) -> Result<spotbatch_proto::RowValue, ItemError> {
    let run_n = out.shape.first().copied().unwrap_or(1).max(1);
    let per = out.data.len() / run_n;
    let values = out
        .data
        .get(i * per..(i + 1) * per)
        .ok_or_else(|| ItemError::Output("model returned no output for this item".into()))?;
    let post = &d.work.ctx.post;
    match &d.input {
        ModelInput::Tokens(t) => post.apply_text(values, &out.shape[1..], t.len()),
        _ => post.apply(values, &out.shape[1..]),
    }
    .map_err(ItemError::Output)
}

//! The decode threads: each item's payload through its job's preprocessor (decoding, resizing,
//! normalising images), on plain threads so the async side never waits on the CPU. A bad input
//! becomes its error row here, straight to its shard; a preprocessor that panics on an input is
//! that input's error too.

use std::panic::AssertUnwindSafe;
use std::time::Instant;

use spotbatch_proto::OutputRow;

use super::{Decoded, Fetched, ToShard};

pub(crate) fn decode_loop(
    rx: async_channel::Receiver<Fetched>,
    tx: crossbeam_channel::Sender<Decoded>,
) {
    while let Ok(item) = rx.recv_blocking() {
        if item.work.cancel.is_cancelled() {
            continue;
        }
        let t0 = Instant::now();
        let pre = &item.work.ctx.runtime.pre;
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| pre.prepare(&item.payload)))
            .unwrap_or_else(|_| {
                Err(crate::error::ItemError::Input(
                    "the image decoder crashed on this input".into(),
                ))
            });
        metrics::histogram!("spotbatch_stage_seconds", "stage" => "decode")
            .record(t0.elapsed().as_secs_f64());
        match result {
            Ok(input) => {
                let d = Decoded {
                    work: item.work,
                    idx: item.idx,
                    key: item.key,
                    input,
                };
                if tx.send(d).is_err() {
                    return;
                }
            }
            Err(reason) => {
                let row =
                    OutputRow::failed(item.key, item.work.ctx.post.kind(), reason.to_string());
                item.work.send(ToShard::Row(item.idx, row));
            }
        }
    }
}

//! How decoded items become batches, per model runtime (items of any shard and any job that share
//! the runtime batch together):
//!
//! - images (and other fixed-size inputs): fill up to `model.batch_size`, or until the oldest item
//!   has waited `model.max_batch_delay_ms`;
//! - texts: length-aware, in a bounded window (`spotbatch_text::LengthBatcher`: 16 batches'
//!   worth): each batch is the run of items of the most similar length, so little of it is
//!   padding; an item is never held for ever (it leaves within a bounded number of batches), and
//!   when no item has arrived for `model.max_batch_delay_ms` (the input stalled: the end of a
//!   shard, a slow store) the next batch is cut from what is held, so the model does not wait.

use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Instant;

use spotbatch_text::{BatcherConfig, LengthBatcher};

use super::Decoded;
use crate::runtime::ModelRuntime;

enum Pending {
    Fill {
        items: Vec<Decoded>,
        until: Option<Instant>,
    },
    Length {
        batcher: Box<LengthBatcher<Decoded>>,
        last: Instant,
    },
}

/// The batches being formed for one model runtime.
pub(crate) struct Batching {
    pub(crate) rt: Arc<ModelRuntime>,
    pending: Pending,
}

impl Batching {
    /// Batching for `rt`: by length for texts, by arrival otherwise.
    pub(crate) fn new(rt: Arc<ModelRuntime>) -> Self {
        let pending = if rt.tokenizer.is_some() {
            let size = NonZeroUsize::new(rt.batch_size.max(1)).unwrap_or(NonZeroUsize::MIN);
            Pending::Length {
                batcher: Box::new(LengthBatcher::new(BatcherConfig::new(size))),
                last: Instant::now(),
            }
        } else {
            Pending::Fill {
                items: Vec::new(),
                until: None,
            }
        };
        Self { rt, pending }
    }

    /// Takes an item that arrived `now`; returns a batch when one is complete.
    pub(crate) fn push(&mut self, d: Decoded, now: Instant) -> Option<Vec<Decoded>> {
        match &mut self.pending {
            Pending::Fill { items, until } => {
                until.get_or_insert(now + self.rt.max_batch_delay);
                items.push(d);
                (items.len() >= self.rt.batch_size).then(|| {
                    *until = None;
                    std::mem::take(items)
                })
            }
            Pending::Length { batcher, last } => {
                *last = now;
                let len = d.input.len_for_batching();
                batcher.push(d, len, now)
            }
        }
    }

    /// When a batch will be due although no item arrives; `None` when nothing is held.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        match &self.pending {
            Pending::Fill { until, .. } => *until,
            Pending::Length { batcher, last } => {
                let stall = (!batcher.is_empty()).then(|| *last + self.rt.max_batch_delay);
                [batcher.deadline(), stall].into_iter().flatten().min()
            }
        }
    }

    /// A batch that is due by `now` (its oldest item waited long enough, or the input stalled).
    pub(crate) fn due(&mut self, now: Instant) -> Option<Vec<Decoded>> {
        match &mut self.pending {
            Pending::Fill { items, until } => until.filter(|u| *u <= now).map(|_| {
                *until = None;
                std::mem::take(items)
            }),
            Pending::Length { batcher, last } => batcher.poll(now).or_else(|| {
                (now >= *last + self.rt.max_batch_delay)
                    .then(|| batcher.flush(now))
                    .flatten()
            }),
        }
    }

    /// The next batch from what is held (the input has ended); `None` once nothing is.
    pub(crate) fn flush(&mut self, now: Instant) -> Option<Vec<Decoded>> {
        match &mut self.pending {
            Pending::Fill { items, until } => {
                *until = None;
                (!items.is_empty()).then(|| std::mem::take(items))
            }
            Pending::Length { batcher, .. } => batcher.flush(now),
        }
    }
}

//! `queue.shard_size = "auto"`: the shard size chosen once per job, when it is first planned.
//!
//! The choice is [`spotbatch_fleet::shard::suggest`] (Young–Daly: τ* = √(2 o M), with o the
//! per-shard overhead and M the mean time between hard kills) from one worker's measured time per
//! item, when the caller has one ([`ShardHints`]: the coordinator passes its live workers' median
//! rate), and the hard-kill rate of the interruption prior for an unknown instance type
//! (2.3 %/h, one in ten without a notice). Without a measured time it is the default (256). It is
//! bounded by [`MAX_AUTO_SHARD_ITEMS`] and, for a job of files (whose shard message lists its
//! keys), by what fits one queue message. The size chosen is written into the stored manifest
//! (`_manifest.json`, [`Plan::resolved_manifest`]); a job planned again reads it back
//! ([`ShardHow::Kept`]), so its shards, and the done markers named after them, stay the same.

use spotbatch_fleet::shard::{suggest, ShardInputs, ShardLimits, ShardSuggestion};
use spotbatch_fleet::InterruptionPrior;
use spotbatch_proto::{Manifest, ShardSize};
use spotbatch_store::JobLayout;

use crate::{Plan, PlanError};

pub use spotbatch_fleet::shard::SHARD_OVERHEAD_S;

/// The largest shard `"auto"` chooses, in items (the manifest's limit for a number).
pub const MAX_AUTO_SHARD_ITEMS: u64 = spotbatch_fleet::shard::MAX_AUTO_ITEMS;

/// The bytes of keys one shard message may carry when `"auto"` sizes a job of files: SQS takes
/// 256 KiB a message, Kafka's default `message.max.bytes` is 1 MiB.
const MAX_KEY_BYTES_PER_SHARD: u64 = 192 * 1024;

/// What `"auto"` may be chosen from, measured by the caller.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ShardHints {
    /// One worker's time per item, seconds.
    pub seconds_per_item: Option<f64>,
    /// Workers expected to share the job.
    pub workers: Option<u32>,
}

/// Where a plan's shard size came from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ShardHow {
    /// The manifest's number.
    Manifest,
    /// `"auto"`, read back from the job's stored manifest (planned before).
    Kept,
    /// `"auto"`, chosen now.
    Suggested(ShardSuggestion),
}

/// A plan's shard size.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ShardChoice {
    /// Items (keys, or rows of record files) per shard.
    pub items: usize,
    /// Where it came from.
    pub how: ShardHow,
}

/// The suggestion for a job of `items_total` items (when known), from `hints`.
pub fn suggest_shard_size(hints: &ShardHints, items_total: Option<u64>) -> ShardSuggestion {
    suggest_within(hints, items_total, MAX_AUTO_SHARD_ITEMS)
}

fn suggest_within(hints: &ShardHints, items_total: Option<u64>, max_items: u64) -> ShardSuggestion {
    let prior = InterruptionPrior::default();
    suggest(
        &ShardInputs {
            seconds_per_item: hints.seconds_per_item,
            shard_overhead_s: SHARD_OVERHEAD_S,
            hard_kills_per_hour: prior.per_hour * prior.hard_share,
            items_total,
            workers: hints.workers,
        },
        &ShardLimits {
            max_items: max_items.max(1),
            ..ShardLimits::default()
        },
    )
}

/// The most keys of this job's that one shard message can carry.
pub(crate) fn keys_per_message(keys: &[String]) -> u64 {
    // A key is written as a JSON string: quotes, a comma, and escapes at most doubling it.
    let longest = keys
        .iter()
        .map(|k| 2 * k.len() as u64 + 3)
        .max()
        .unwrap_or(1);
    (MAX_KEY_BYTES_PER_SHARD / longest).max(1)
}

/// The shard size of `m`'s plan: the manifest's number, the one chosen when the job was first
/// planned, or one chosen now (see the module documentation).
pub(crate) async fn choose(
    m: &Manifest,
    hints: &ShardHints,
    items_total: Option<u64>,
    max_items: u64,
) -> Result<ShardChoice, PlanError> {
    if let ShardSize::Items(items) = m.raw.queue.shard_size {
        return Ok(ShardChoice {
            items,
            how: ShardHow::Manifest,
        });
    }
    let layout = JobLayout::for_manifest(m)?;
    if let Some(bytes) = layout.prefix.get_opt(JobLayout::MANIFEST_KEY).await? {
        // Only the identity and the size are read back (the rest is the manifest's, checked
        // already). One that does not read, or is another job's, is not guessed around: shards
        // planned from it may have done markers under this prefix.
        let stored: StoredSize = serde_json::from_slice(&bytes)
            .map_err(|e| PlanError::Stored(format!("{}: {e}", JobLayout::MANIFEST_KEY)))?;
        if stored.job_id != m.job_id {
            return Err(PlanError::Stored(format!(
                "{} is job {}'s, not {}'s",
                JobLayout::MANIFEST_KEY,
                stored.job_id,
                m.job_id
            )));
        }
        if let ShardSize::Items(items) = stored.manifest.queue.shard_size {
            return Ok(ShardChoice {
                items,
                how: ShardHow::Kept,
            });
        }
    }
    let s = suggest_within(hints, items_total, max_items.min(MAX_AUTO_SHARD_ITEMS));
    Ok(ShardChoice {
        items: usize::try_from(s.items).unwrap_or(usize::MAX).max(1),
        how: ShardHow::Suggested(s),
    })
}

/// What [`choose`] reads of a stored manifest ([`Manifest::to_stored`]).
#[derive(serde::Deserialize)]
struct StoredSize {
    job_id: String,
    manifest: StoredRaw,
}

#[derive(serde::Deserialize)]
struct StoredRaw {
    #[serde(default)]
    queue: StoredQueue,
}

#[derive(serde::Deserialize, Default)]
struct StoredQueue {
    #[serde(default)]
    shard_size: ShardSize,
}

impl Plan {
    /// `m` with the shard size this plan used (`"auto"` resolved to its number), its identity
    /// unchanged: what is stored beside the results.
    pub fn resolved_manifest(&self, m: &Manifest) -> Manifest {
        let mut resolved = m.clone();
        resolved.raw.queue.shard_size = ShardSize::Items(self.shard_size.items);
        resolved
    }
}

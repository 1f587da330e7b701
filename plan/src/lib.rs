//! From a manifest to shards on the queue: list the job's inputs through object storage (or read
//! them from `input.list`), cut them into deterministic shards (a shard's id is a hash of the job
//! and its keys, so the same manifest over the same inputs always yields the same shards), and
//! enqueue the shards whose done marker does not exist yet.
//!
//! Record inputs (`input.format = jsonl | csv | parquet`) are planned from metadata only: object
//! sizes cut JSONL/CSV files into byte ranges of `input.split_bytes`, Parquet footers cut Parquet
//! files into row-group runs of at most `queue.shard_size` rows; a shard is one such part of one
//! file. The carried columns' types are fixed here (`_schema.json`), so every part file of a job
//! has the same schema.
//!
//! `queue.shard_size = "auto"` is chosen here, once per job: by the Young–Daly rule of
//! [`spotbatch_fleet::shard::suggest`] from one worker's time per item (when the caller measured
//! one, [`ShardHints`]) and the hard-kill rate of the interruption prior for an unknown instance
//! type; without a measured time, the default (256). The size chosen is written into the stored
//! manifest (`_manifest.json`), and a job planned again keeps it, so its shards stay the same.
#![warn(missing_docs)]

use std::collections::HashSet;

use futures::StreamExt;
use object_store::ObjectStoreExt;
pub use spotbatch_fleet::shard::{ShardBound, ShardSuggestion};
use spotbatch_proto::{
    shard_id, split_shard_id, DoneMarker, Manifest, ShardTask, TASK_VERSION, TASK_VERSION_SPLIT,
};
use spotbatch_queue::{LeaseQueue, NewItem, QueueError};
use spotbatch_records::{Column, Projection, ReadOptions};

use spotbatch_store::{JobLayout, Prefix, Skipped, StorageError};

mod size;
pub use size::{
    suggest_shard_size, ShardChoice, ShardHints, ShardHow, MAX_AUTO_SHARD_ITEMS, SHARD_OVERHEAD_S,
};

/// What can go wrong while planning or enqueueing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PlanError {
    /// Listing inputs or reading job state failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The queue refused the shards.
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// Nothing matched.
    #[error("input.uri {url}: no inputs{}", .glob.as_ref().map(|g| format!(" match input.glob {g:?}")).unwrap_or_default())]
    NoInputs {
        /// The input prefix.
        url: String,
        /// The glob, if any.
        glob: Option<String>,
    },
    /// The manifest's glob does not compile (validation catches this first).
    #[error("input.glob: {0}")]
    Glob(String),
    /// Record files could not be planned (a footer that does not read).
    #[error("input.uri: {0}")]
    Records(#[from] spotbatch_records::PlanError),
    /// The first record file does not have the columns the manifest names.
    #[error("input.uri: {0}")]
    Columns(#[from] spotbatch_records::ReadError),
    /// The input list could not be read.
    #[error("input.list: {0}")]
    List(String),
    /// The job's stored manifest (`_manifest.json`, which keeps the shard size `"auto"` chose)
    /// does not read back.
    #[error("queue.shard_size = \"auto\": the job's stored manifest: {0}")]
    Stored(String),
}

/// A job cut into shards.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The job id.
    pub job_id: String,
    /// Shards in key order.
    pub shards: Vec<ShardTask>,
    /// Inputs in the job (record jobs: the Parquet rows; JSONL/CSV rows are not known before
    /// they are read, see `items_known`).
    pub total_items: u64,
    /// Whether `total_items` counts every input (false for JSONL/CSV record jobs).
    pub items_known: bool,
    /// A record job's columns with their types fixed for the whole job.
    pub schema: Option<Projection>,
    /// Entries that are not inputs, each with why, for a warning (the job runs without them):
    /// below the input prefix (symlink loops, dangling symlinks, unreadable folders…), or lines
    /// of `input.list` that name no usable input (keyed by their place in the list).
    pub skipped: Vec<Skipped>,
    /// Items per shard, and where the number came from.
    pub shard_size: ShardChoice,
}

/// How a record job reads its rows, from its manifest: the text column, the id column and the
/// carried columns (types not yet fixed), and the reader's dialect.
pub fn projection(m: &Manifest) -> (Projection, ReadOptions) {
    let i = &m.raw.input;
    let proj = Projection {
        text: Some(m.text_column().to_string()),
        id: i.id_column.as_ref().map(Column::named),
        columns: m.raw.output.columns.iter().map(Column::named).collect(),
    };
    let mut opts = ReadOptions::default();
    if let Some(d) = i.csv_delimiter.as_deref().and_then(|d| d.bytes().next()) {
        opts.csv.delimiter = d;
    }
    opts.csv.quoted_newlines = i.csv_quoted_newlines;
    (proj, opts)
}

/// The record source of a job: the input prefix, or the folder of the one data file it names.
pub async fn record_source(m: &Manifest) -> Result<spotbatch_records::Source, StorageError> {
    let input = Prefix::open(&m.input)?;
    Ok(
        spotbatch_records::source_for(input.store(), input.root().clone(), input.url().as_str())
            .await,
    )
}

/// Keys of outputs that lie inside the input folder (an output folder below the input one): never
/// read back as inputs.
fn outputs_below(m: &Manifest) -> Option<String> {
    m.output
        .join("..")
        .ok()
        .and_then(|root| {
            root.as_str()
                .strip_prefix(m.input.as_str())
                .map(spotbatch_store::storage::url_decode)
        })
        .filter(|rel| !rel.is_empty())
}

/// Lists the job's inputs (or reads `input.list`) and cuts them into shards of
/// `queue.shard_size`, in key order; record jobs are planned from metadata (see the crate docs).
/// `"auto"` without hints: see [`plan_job_with`].
pub async fn plan_job(m: &Manifest) -> Result<Plan, PlanError> {
    plan_job_with(m, &ShardHints::default()).await
}

/// [`plan_job`], with what `queue.shard_size = "auto"` may be chosen from.
pub async fn plan_job_with(m: &Manifest, hints: &ShardHints) -> Result<Plan, PlanError> {
    if m.is_records() {
        return plan_records(m, hints).await;
    }
    let (keys, skipped) = match &m.list {
        Some(list) => list_keys(m, list).await?,
        None => listed_keys(m).await?,
    };
    if keys.is_empty() {
        return Err(PlanError::NoInputs {
            url: m.input.to_string(),
            glob: m.raw.input.glob.clone(),
        });
    }
    let manifest_url = stored_manifest_url(m);
    let shard_size = size::choose(
        m,
        hints,
        Some(keys.len() as u64),
        size::keys_per_message(&keys),
    )
    .await?;
    let shards = keys
        .chunks(shard_size.items.max(1))
        .enumerate()
        .map(|(i, chunk)| ShardTask {
            v: TASK_VERSION,
            job: m.job_id.clone(),
            shard: shard_id(&m.job_id, chunk),
            index: u32::try_from(i).unwrap_or(u32::MAX),
            manifest_digest: m.digest.clone(),
            keys: chunk.to_vec(),
            split: None,
            manifest: manifest_url.clone(),
        })
        .collect();
    Ok(Plan {
        job_id: m.job_id.clone(),
        shards,
        total_items: keys.len() as u64,
        items_known: true,
        schema: None,
        skipped,
        shard_size,
    })
}

fn stored_manifest_url(m: &Manifest) -> Option<String> {
    m.output
        .join(JobLayout::MANIFEST_KEY)
        .ok()
        .map(|u| u.to_string())
}

/// The keys below the input prefix that match the glob, sorted, and the entries there that are
/// not inputs (whatever the glob: a folder that could not be walked may hold matching files).
async fn listed_keys(m: &Manifest) -> Result<(Vec<String>, Vec<Skipped>), PlanError> {
    let input = Prefix::open(&m.input)?;
    let glob = match &m.raw.input.glob {
        Some(g) => {
            Some(spotbatch_proto::compile_glob(g).map_err(|e| PlanError::Glob(e.to_string()))?)
        }
        None => None,
    };
    // Never read our own outputs back as inputs when the output folder sits inside the input one.
    let outputs_below = outputs_below(m);
    let ours = |k: &str| {
        outputs_below
            .as_ref()
            .is_some_and(|rel| k.starts_with(rel.as_str()))
    };
    let listed = input.list_inputs().await?;
    let skipped = listed
        .skipped
        .into_iter()
        .filter(|s| !ours(&s.key))
        .collect();
    let keys = listed
        .files
        .into_iter()
        .map(|l| l.key)
        .filter(|k| glob.as_ref().is_none_or(|g| g.is_match(k)))
        .filter(|k| !ours(k))
        .collect();
    Ok((keys, skipped))
}

/// The keys `input.list` names, in its order, each once; entries that name no usable input
/// (outside `input.uri`, `..`, unreadable) are left out with why.
async fn list_keys(
    m: &Manifest,
    list: &url::Url,
) -> Result<(Vec<String>, Vec<Skipped>), PlanError> {
    let bad = |e: String| PlanError::List(format!("{list}: {e}"));
    let (folder, key) = Prefix::open_object(list).map_err(|e| bad(e.to_string()))?;
    let size = folder
        .store()
        .head(&folder.path_of(&key).map_err(|e| bad(e.to_string()))?)
        .await
        .map_err(|e| bad(e.to_string()))?
        .size;
    let source = spotbatch_records::Source::new(
        folder.store(),
        folder.root().clone(),
        folder.url().as_str(),
    );
    let format = spotbatch_records::ListFormat::from_key(&key, None);
    let mut entries =
        spotbatch_records::read_list(&source, &key, size, &format, &ReadOptions::default())
            .await
            .map_err(|e| bad(e.to_string()))?;
    let (mut keys, mut skipped, mut seen) = (Vec::new(), Vec::new(), HashSet::new());
    while let Some(e) = entries.next().await {
        let e = e.map_err(|e| bad(e.to_string()))?;
        match e.entry.map_err(|r| r.to_string()).and_then(|entry| {
            spotbatch_records::resolve_list_entry(&m.input, &entry).map(|r| (entry, r))
        }) {
            Ok((_, spotbatch_records::Resolved::Key(k))) => {
                if seen.insert(k.clone()) {
                    keys.push(k);
                }
            }
            Ok((entry, spotbatch_records::Resolved::Url(_))) => skipped.push(Skipped {
                key: e.at.to_string(),
                reason: format!(
                    "{entry:?} is outside input.uri ({}): list inputs below it, or make it the input.uri",
                    m.input
                ),
            }),
            Err(why) => skipped.push(Skipped {
                key: e.at.to_string(),
                reason: why,
            }),
        }
    }
    Ok((keys, skipped))
}

/// Plans a record job from its files' metadata, and fixes its column types.
async fn plan_records(m: &Manifest, hints: &ShardHints) -> Result<Plan, PlanError> {
    let Some(format) = m.raw.input.format.records() else {
        return Err(PlanError::Glob("not a record job".into()));
    };
    let input = Prefix::open(&m.input)?;
    let glob = match &m.raw.input.glob {
        Some(g) => {
            Some(spotbatch_proto::compile_glob(g).map_err(|e| PlanError::Glob(e.to_string()))?)
        }
        None => None,
    };
    let (source, files) = spotbatch_records::discover(
        input.store(),
        input.root().clone(),
        input.url().as_str(),
        glob.as_ref(),
    )
    .await?;
    let outputs_below = outputs_below(m);
    let files: Vec<_> = files
        .into_iter()
        .filter(|f| {
            outputs_below
                .as_ref()
                .is_none_or(|rel| !f.key.starts_with(rel.as_str()))
        })
        .collect();
    let Some(first) = files.first().cloned() else {
        return Err(PlanError::NoInputs {
            url: m.input.to_string(),
            glob: m.raw.input.glob.clone(),
        });
    };
    let shard_size = size::choose(m, hints, None, MAX_AUTO_SHARD_ITEMS).await?;
    let opts = spotbatch_records::PlanOptions {
        split_bytes: m.raw.input.split_bytes,
        max_rows: shard_size.items.max(1) as u64,
        ..Default::default()
    };
    // A Parquet file whose footer cannot be read (truncated, not Parquet, hostile) is left out
    // with a warning, as any entry that is not an input: one bad file does not stop the job.
    let mut splits = Vec::new();
    let mut skipped = Vec::new();
    let mut planned = spotbatch_records::plan(&source, files, format, &opts);
    while let Some(split) = planned.next().await {
        match split {
            Ok(s) => splits.push(s),
            Err(spotbatch_records::PlanError::Footer { key, source, .. }) => {
                skipped.push(Skipped {
                    key,
                    reason: format!(
                        "cannot read the Parquet footer: {}",
                        spotbatch_records::escaped(&source)
                    ),
                })
            }
            Err(e) => return Err(e.into()),
        }
    }
    // The columns are checked (Parquet schema, CSV header) and typed on the first file that
    // planned (every file when none did: its error is the job's).
    let first = splits
        .first()
        .map_or(first, |s| spotbatch_records::FileMeta {
            key: s.key().to_string(),
            size: s.size(),
        });
    let (proj, read_opts) = projection(m);
    let schema =
        spotbatch_records::schema::resolve(&source, format, &first, &proj, &read_opts).await?;
    let manifest_url = stored_manifest_url(m);
    let items_known = format == spotbatch_records::Format::Parquet;
    let total_items = splits.iter().filter_map(|s| s.rows()).sum();
    let shards = splits
        .into_iter()
        .enumerate()
        .map(|(i, split)| ShardTask {
            v: TASK_VERSION_SPLIT,
            job: m.job_id.clone(),
            shard: split_shard_id(&m.job_id, &split),
            index: u32::try_from(i).unwrap_or(u32::MAX),
            manifest_digest: m.digest.clone(),
            keys: Vec::new(),
            split: Some(split),
            manifest: manifest_url.clone(),
        })
        .collect();
    Ok(Plan {
        job_id: m.job_id.clone(),
        shards,
        total_items,
        items_known,
        schema: Some(schema),
        skipped,
        shard_size,
    })
}

/// Stores what workers read beside the results: the manifest (for workers that find the job
/// through a shard's reference; with the shard size `"auto"` chose) and a record job's column
/// types.
pub async fn store_plan(layout: &JobLayout, m: &Manifest, plan: &Plan) -> Result<(), PlanError> {
    layout.store_manifest(&plan.resolved_manifest(m)).await?;
    if let Some(schema) = &plan.schema {
        let bytes = serde_json::to_vec_pretty(schema).unwrap_or_default();
        layout
            .prefix
            .put(JobLayout::SCHEMA_KEY, bytes::Bytes::from(bytes))
            .await?;
    }
    Ok(())
}

/// What [`enqueue_plan`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubmitReport {
    /// Shards put on the queue.
    pub enqueued: usize,
    /// How many of them were new on the queue, where the queue can tell (SQLite does not add a
    /// shard that is already waiting or leased there again); `None` where it cannot.
    pub new: Option<usize>,
    /// Shards skipped because their done marker exists.
    pub already_done: usize,
    /// Items in the skipped shards.
    pub done_items: u64,
    /// Error rows in the skipped shards.
    pub done_errors: u64,
}

/// Enqueues every shard of `plan` whose done marker does not exist yet.
pub async fn enqueue_plan(
    queue: &dyn LeaseQueue,
    layout: &JobLayout,
    plan: &Plan,
) -> Result<SubmitReport, PlanError> {
    let done = layout.done_markers().await?;
    let planned: HashSet<&str> = plan.shards.iter().map(|s| s.shard.as_str()).collect();
    let done: Vec<&DoneMarker> = done
        .iter()
        .filter(|d| planned.contains(d.shard.as_str()))
        .collect();
    let done_ids: HashSet<&str> = done.iter().map(|d| d.shard.as_str()).collect();
    let todo: Vec<NewItem> = plan
        .shards
        .iter()
        .filter(|s| !done_ids.contains(s.shard.as_str()))
        .map(|s| NewItem {
            id: s.shard.clone(),
            body: s.to_bytes(),
        })
        .collect();
    let mut new = Some(0);
    for chunk in todo.chunks(500) {
        let added = queue.enqueue_counted(chunk).await?;
        new = new.zip(added).map(|(a, b)| a + b);
    }
    Ok(SubmitReport {
        enqueued: todo.len(),
        new: if todo.is_empty() { Some(0) } else { new },
        already_done: done.len(),
        done_items: done.iter().map(|d| d.items).sum(),
        done_errors: done.iter().map(|d| d.errors).sum(),
    })
}

#[cfg(test)]
mod tests;

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
mod tests {
    use super::*;
    use bytes::Bytes;
    use spotbatch_proto::ShardSize;
    use spotbatch_queue::memory::MemoryQueue;
    use spotbatch_queue::QueueConfig;

    /// A manifest over `memory://NAME/`: `keys` under `in/`, output under `in/out/` (inside the
    /// input folder, as a careless user might put it).
    async fn setup(name: &str, keys: &[&str], extra: &str) -> Manifest {
        let input =
            Prefix::open(&url::Url::parse(&format!("memory://{name}/in/")).unwrap()).unwrap();
        for k in keys {
            input.put(k, Bytes::from_static(b"x")).await.unwrap();
        }
        let text = format!(
            "name = \"{name}\"\n[input]\nuri = \"memory://{name}/in/\"\n{extra}\n[model]\nuri = \"m.onnx\"\n[output]\nuri = \"memory://{name}/in/out/\"\n[queue]\nshard_size = 2\n"
        );
        Manifest::parse(&text, std::path::Path::new("/")).unwrap()
    }

    /// A Parquet file of `n` rows: `id` Int64 and `text` Utf8.
    fn parquet_file(n: i64) -> Vec<u8> {
        use arrow_array::{Int64Array, RecordBatch, StringArray};
        use arrow_schema::{DataType, Field, Schema};
        let schema = std::sync::Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("text", DataType::Utf8, false),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                std::sync::Arc::new(Int64Array::from_iter_values(0..n)),
                std::sync::Arc::new(StringArray::from_iter_values(
                    (0..n).map(|i| format!("t{i}")),
                )),
            ],
        )
        .unwrap();
        let mut out = Vec::new();
        let mut w = parquet::arrow::ArrowWriter::try_new(&mut out, schema, None).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
        out
    }

    #[tokio::test]
    async fn parquet_files_whose_footer_cannot_be_read_are_left_out_with_their_reason() {
        let name = "p-bad-footer";
        let input =
            Prefix::open(&url::Url::parse(&format!("memory://{name}/in/")).unwrap()).unwrap();
        let good = parquet_file(5);
        // A truncated copy sorts first: the columns are checked on the first file that planned.
        for (k, v) in [
            ("a-truncated.parquet", good[..good.len() - 3].to_vec()),
            ("b.parquet", good.clone()),
            ("c-not-parquet.parquet", b"not parquet\nat all".to_vec()),
            ("d.parquet", good.clone()),
        ] {
            input.put(k, Bytes::from(v)).await.unwrap();
        }
        let text = format!(
            "name = \"{name}\"\n[input]\nuri = \"memory://{name}/in/\"\nformat = \"parquet\"\nid_column = \"id\"\n[model]\nuri = \"m.onnx\"\n[preprocess]\nkind = \"text\"\ntokenizer = \"tokenizer.json\"\n[output]\nuri = \"memory://{name}/out/\"\n[queue]\nshard_size = 100\n"
        );
        let m = Manifest::parse(&text, std::path::Path::new("/")).unwrap();
        let plan = plan_job(&m).await.unwrap();
        let files: Vec<&str> = plan
            .shards
            .iter()
            .map(|s| s.split.as_ref().unwrap().key())
            .collect();
        assert_eq!(files, ["b.parquet", "d.parquet"]);
        assert_eq!(plan.total_items, 10);
        let skipped: Vec<(&str, &str)> = plan
            .skipped
            .iter()
            .map(|s| (s.key.as_str(), s.reason.as_str()))
            .collect();
        assert_eq!(skipped.len(), 2, "{skipped:?}");
        assert_eq!(skipped[0].0, "a-truncated.parquet");
        assert_eq!(skipped[1].0, "c-not-parquet.parquet");
        for (key, reason) in &skipped {
            assert!(
                reason.starts_with("cannot read the Parquet footer: ") && !reason.contains('\n'),
                "{key}: {reason}"
            );
        }
        // Every file unreadable: the job cannot be planned, and says why.
        let input = Prefix::open(&url::Url::parse("memory://p-all-bad/in/").unwrap()).unwrap();
        input
            .put("x.parquet", Bytes::from_static(b"nope"))
            .await
            .unwrap();
        let m =
            Manifest::parse(&text.replace(name, "p-all-bad"), std::path::Path::new("/")).unwrap();
        let e = plan_job(&m).await.unwrap_err();
        assert!(e.to_string().contains("x.parquet"), "{e}");
    }

    #[tokio::test]
    async fn shards_follow_key_order_and_are_the_same_every_time() {
        let m = setup(
            "p-order",
            &["c.png", "a.png", "b.png", "d/e.png", "f.png"],
            "",
        )
        .await;
        let plan = plan_job(&m).await.unwrap();
        let keys: Vec<Vec<String>> = plan.shards.iter().map(|s| s.keys.clone()).collect();
        assert_eq!(
            keys,
            vec![
                vec!["a.png".to_string(), "b.png".into()],
                vec!["c.png".into(), "d/e.png".into()],
                vec!["f.png".into()]
            ]
        );
        assert_eq!(plan.total_items, 5);
        assert_eq!(plan.shards[1].index, 1);
        let again = plan_job(&m).await.unwrap();
        assert_eq!(
            plan.shards.iter().map(|s| &s.shard).collect::<Vec<_>>(),
            again.shards.iter().map(|s| &s.shard).collect::<Vec<_>>()
        );
    }

    #[tokio::test]
    async fn the_glob_filters_and_outputs_inside_the_inputs_are_never_inputs() {
        let m = setup(
            "p-glob",
            &["a.png", "b.jpg", "out/j/x.png", "sub/c.png"],
            "glob = \"**/*.png\"",
        )
        .await;
        // An earlier run's output below the input folder must not be read back as input.
        let plan = plan_job(&m).await.unwrap();
        let all: Vec<String> = plan.shards.iter().flat_map(|s| s.keys.clone()).collect();
        assert_eq!(all, vec!["a.png".to_string(), "sub/c.png".into()]);
        let none = setup("p-none", &["a.txt"], "glob = \"*.png\"").await;
        let err = plan_job(&none).await.unwrap_err().to_string();
        assert!(err.contains("no inputs") && err.contains("*.png"), "{err}");
    }

    /// `"auto"`: the default size without a measured time; Young–Daly with one (bounded by a few
    /// shards per worker); chosen once, then kept from the stored manifest whatever the hints.
    #[tokio::test]
    async fn auto_shard_size_is_chosen_once_and_kept() {
        let keys: Vec<String> = (0..1000).map(|i| format!("k{i:04}")).collect();
        let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        let fixed = setup("p-auto", &refs, "").await;
        let text = fixed
            .to_toml()
            .replace("shard_size = 2", "shard_size = \"auto\"");
        let m = Manifest::parse(&text, std::path::Path::new("/")).unwrap();
        assert_eq!(m.raw.queue.shard_size, ShardSize::Auto);

        // Nothing measured: the default.
        let plan = plan_job(&m).await.unwrap();
        assert_eq!(plan.shard_size.items, 256);
        assert!(matches!(
            plan.shard_size.how,
            ShardHow::Suggested(s) if s.bound == spotbatch_fleet::shard::ShardBound::Unmeasured
        ));
        assert_eq!(plan.shards.len(), 4);

        // A measured time: Young–Daly at the prior's hard-kill rate (2.3 %/h, one in ten
        // without a notice): τ* = √(2 · 2 s · 3600 s / 0.0023) ≈ 2502 s, above the 30-minute
        // cap, so 1800 s of work: 3600 items at 0.5 s an item.
        let measured = ShardHints {
            seconds_per_item: Some(0.5),
            workers: None,
        };
        let capped = suggest_shard_size(&measured, Some(1_000_000));
        assert_eq!(capped.bound, spotbatch_fleet::shard::ShardBound::MaxSeconds);
        assert_eq!(capped.items, 3600);
        assert!(capped.redone_fraction > 0.0 && capped.redone_fraction < 0.01);
        // With two workers, at least 4 shards each: 1000 / 8 = 125.
        let hints = ShardHints {
            seconds_per_item: Some(0.5),
            workers: Some(2),
        };
        let plan = plan_job_with(&m, &hints).await.unwrap();
        assert_eq!(plan.shard_size.items, 125);
        assert_eq!(plan.shards.len(), 8);

        // Stored with the size chosen; planned again (other hints), the same shards.
        let layout = JobLayout::for_manifest(&m).unwrap();
        store_plan(&layout, &m, &plan).await.unwrap();
        let stored = layout
            .prefix
            .get_opt(JobLayout::MANIFEST_KEY)
            .await
            .unwrap()
            .unwrap();
        let stored = Manifest::from_stored(&stored).unwrap();
        assert_eq!(stored.raw.queue.shard_size, ShardSize::Items(125));
        assert_eq!(stored.job_id, m.job_id);
        let again = plan_job(&m).await.unwrap();
        assert_eq!(again.shard_size.how, ShardHow::Kept);
        assert_eq!(
            plan.shards.iter().map(|s| &s.shard).collect::<Vec<_>>(),
            again.shards.iter().map(|s| &s.shard).collect::<Vec<_>>()
        );
        // A number is the manifest's.
        let plan = plan_job_with(&fixed, &hints).await.unwrap();
        assert_eq!(
            (plan.shard_size.items, plan.shard_size.how),
            (2, ShardHow::Manifest)
        );
    }

    #[tokio::test]
    async fn enqueue_skips_the_shards_already_done() {
        let m = setup("p-done", &["a", "b", "c", "d"], "").await;
        let plan = plan_job(&m).await.unwrap();
        let layout = JobLayout::for_manifest(&m).unwrap();
        let marker = DoneMarker {
            job: m.job_id.clone(),
            shard: plan.shards[0].shard.clone(),
            items: 2,
            errors: 1,
            part: JobLayout::part_key(&plan.shards[0].shard),
            sha256: String::new(),
        };
        layout
            .prefix
            .put(
                &JobLayout::done_key(&marker.shard),
                Bytes::from(serde_json::to_vec(&marker).unwrap()),
            )
            .await
            .unwrap();
        let q = MemoryQueue::new("p-done", QueueConfig::default());
        let r = enqueue_plan(&q, &layout, &plan).await.unwrap();
        assert_eq!(
            r,
            SubmitReport {
                enqueued: 1,
                new: None,
                already_done: 1,
                done_items: 2,
                done_errors: 1
            }
        );
        assert_eq!(q.depth().await.unwrap().visible, 1);
    }
}

//! From a manifest to shards on the queue: list the job's inputs through object storage, cut them
//! into deterministic shards (a shard's id is a hash of the job and its keys, so the same
//! manifest over the same inputs always yields the same shards), and enqueue the shards whose
//! done marker does not exist yet.
#![warn(missing_docs)]

use std::collections::HashSet;

use spotbatch_proto::{shard_id, DoneMarker, Manifest, ShardTask, TASK_VERSION};
use spotbatch_queue::{LeaseQueue, NewItem, QueueError};

use spotbatch_store::{JobLayout, Prefix, Skipped, StorageError};

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
}

/// A job cut into shards.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The job id.
    pub job_id: String,
    /// Shards in key order.
    pub shards: Vec<ShardTask>,
    /// Inputs in the job.
    pub total_items: u64,
    /// Entries below the input prefix that are not inputs (symlink loops, dangling symlinks…),
    /// each with why: for a warning, the job runs without them.
    pub skipped: Vec<Skipped>,
}

/// Lists the job's inputs and cuts them into shards of `queue.shard_size`, in key order.
pub async fn plan_job(m: &Manifest) -> Result<Plan, PlanError> {
    let input = Prefix::open(&m.input)?;
    let glob = match &m.raw.input.glob {
        Some(g) => {
            Some(spotbatch_proto::compile_glob(g).map_err(|e| PlanError::Glob(e.to_string()))?)
        }
        None => None,
    };
    // Never read our own outputs back as inputs when the output folder sits inside the input one.
    let outputs_below = m
        .output
        .join("..")
        .ok()
        .and_then(|root| {
            root.as_str()
                .strip_prefix(m.input.as_str())
                .map(spotbatch_store::storage::url_decode)
        })
        .filter(|rel| !rel.is_empty());
    let listed = input.list_inputs().await?;
    let ours = |k: &str| {
        outputs_below
            .as_ref()
            .is_some_and(|rel| k.starts_with(rel.as_str()))
    };
    // Whatever the glob: a folder that could not be walked may hold matching files.
    let skipped: Vec<Skipped> = listed
        .skipped
        .into_iter()
        .filter(|s| !ours(&s.key))
        .collect();
    let keys: Vec<String> = listed
        .files
        .into_iter()
        .map(|l| l.key)
        .filter(|k| glob.as_ref().is_none_or(|g| g.is_match(k)))
        .filter(|k| !ours(k))
        .collect();
    if keys.is_empty() {
        return Err(PlanError::NoInputs {
            url: m.input.to_string(),
            glob: m.raw.input.glob.clone(),
        });
    }
    let manifest_url = m
        .output
        .join(JobLayout::MANIFEST_KEY)
        .ok()
        .map(|u| u.to_string());
    let shards = keys
        .chunks(m.raw.queue.shard_size)
        .enumerate()
        .map(|(i, chunk)| ShardTask {
            v: TASK_VERSION,
            job: m.job_id.clone(),
            shard: shard_id(&m.job_id, chunk),
            index: u32::try_from(i).unwrap_or(u32::MAX),
            manifest_digest: m.digest.clone(),
            keys: chunk.to_vec(),
            manifest: manifest_url.clone(),
        })
        .collect();
    Ok(Plan {
        job_id: m.job_id.clone(),
        shards,
        total_items: keys.len() as u64,
        skipped,
    })
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

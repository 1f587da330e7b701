//! The planner against in-memory stores: key order, globs, "auto" shard sizes, enqueueing what
//! is not done, record files whose footers cannot be read.

use super::*;
use bytes::Bytes;
use spotbatch_proto::ShardSize;
use spotbatch_queue::memory::MemoryQueue;
use spotbatch_queue::QueueConfig;

/// A manifest over `memory://NAME/`: `keys` under `in/`, output under `in/out/` (inside the
/// input folder, as a careless user might put it).
async fn setup(name: &str, keys: &[&str], extra: &str) -> Manifest {
    let input = Prefix::open(&url::Url::parse(&format!("memory://{name}/in/")).unwrap()).unwrap();
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
    let input = Prefix::open(&url::Url::parse(&format!("memory://{name}/in/")).unwrap()).unwrap();
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
    let m = Manifest::parse(&text.replace(name, "p-all-bad"), std::path::Path::new("/")).unwrap();
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

//! A ~100 MB JSONL file read in 1 MiB splits through ranged GETs of the local filesystem: every
//! line once, nothing fetched twice over, and the process's peak memory stays far below the
//! file's size. Its own test binary, so the peak (VmHWM) is this test's.

mod common;

use std::io::Write;
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::ObjectStore;
use spotbatch_records::{
    discover, plan_all, read_split, Format, PlanOptions, Projection, ReadOptions,
};

fn vm_hwm_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100_mb_jsonl_file_is_read_in_small_splits_with_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.jsonl");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    let (mut lines, mut long, mut size) = (0u64, 0u64, 0u64);
    let filler = "lorem ipsum dolor sit amet ".repeat(80);
    while size < 100 << 20 {
        let line = if lines % 20_000 == 19_999 {
            long += 1;
            // Over max_line_bytes (1 MiB): an error row, streamed past, never held.
            format!("{{\"id\":{lines},\"text\":\"{}\"}}\n", "y".repeat(3 << 20))
        } else {
            let n = (lines * 7919 % 2000) as usize;
            format!("{{\"id\":{lines},\"text\":\"{}\"}}\n", &filler[..n])
        };
        f.write_all(line.as_bytes()).unwrap();
        size += line.len() as u64;
        lines += 1;
    }
    f.flush().unwrap();
    drop(f);
    let before = vm_hwm_kib();

    let stats = Arc::new(common::Stats::default());
    let store: Arc<dyn ObjectStore> = Arc::new(common::Counting {
        inner: Arc::new(LocalFileSystem::new()),
        stats: Arc::clone(&stats),
    });
    let file = Path::from_absolute_path(&path).unwrap();
    let (source, files) = discover(store, file, "file:///big.jsonl", None)
        .await
        .unwrap();
    assert_eq!(files[0].size, size);
    let split_bytes = 1 << 20;
    let splits = plan_all(
        &source,
        files,
        Format::Jsonl,
        &PlanOptions {
            split_bytes,
            ..PlanOptions::default()
        },
    )
    .await
    .unwrap();
    let proj = Projection {
        text: Some("text".into()),
        ..Projection::default()
    };
    let opts = ReadOptions {
        max_line_bytes: 1 << 20,
        ..ReadOptions::default()
    };
    // Four splits at a time, as a worker with prefetch would.
    let counts: Vec<(u64, u64, Vec<u64>)> = futures::stream::iter(splits.iter())
        .map(|s| {
            let (source, proj, opts) = (source.clone(), proj.clone(), opts.clone());
            async move {
                let mut records = read_split(&source, s, &proj, &opts).await?;
                let (mut ok, mut too_long, mut offsets) = (0u64, 0u64, Vec::new());
                while let Some(r) = records.next().await {
                    let r = r?;
                    offsets.push(r.key.pos);
                    match r.fields {
                        Ok(_) => ok += 1,
                        Err(spotbatch_records::RowError::TooLong { .. }) => too_long += 1,
                        Err(e) => panic!("{e}"),
                    }
                }
                Ok::<_, spotbatch_records::ReadError>((ok, too_long, offsets))
            }
        })
        .buffered(4)
        .try_collect()
        .await
        .unwrap();
    let ok: u64 = counts.iter().map(|c| c.0).sum();
    let too_long: u64 = counts.iter().map(|c| c.1).sum();
    let offsets: Vec<u64> = counts.into_iter().flat_map(|c| c.2).collect();
    assert_eq!(
        (ok + too_long, too_long),
        (lines, long),
        "every line exactly once"
    );
    assert!(
        offsets.windows(2).all(|w| w[0] < w[1]),
        "in file order, no repeats"
    );
    let fetched = stats.bytes();
    let peak_growth_mib = (vm_hwm_kib().saturating_sub(before)) as f64 / 1024.0;
    eprintln!(
        "{} MB, {} splits, {lines} lines: fetched {:.3}x the file, peak RSS grew {peak_growth_mib:.1} MiB",
        size >> 20,
        splits.len(),
        fetched as f64 / size as f64
    );
    // Each split reads its range and, past its end, only what finishes its last line (the long
    // lines make a few splits read a few MiB on).
    assert!(fetched < size + size / 4, "fetched {fetched} of {size}");
    assert!(
        peak_growth_mib < 40.0,
        "peak RSS grew {peak_growth_mib} MiB reading a 100 MB file"
    );
}

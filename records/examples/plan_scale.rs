//! Planning at scale: times planning a Parquet dataset from its footers. The dataset comes from
//! `gen_parquet.py` beside this file (pyarrow, as users write them; default 10 million rows in 100
//! files, row groups of 10 000 rows).
//!
//! ```sh
//! .venv/bin/python records/examples/gen_parquet.py /tmp/pq
//! cargo build --release -p spotbatch-records --example plan_scale
//! /usr/bin/time -v target/release/examples/plan_scale plan /tmp/pq 10000
//! # or against S3 (credentials and AWS_ENDPOINT_URL from the environment):
//! plan_scale plan s3://bucket/prefix 10000
//! ```

use std::sync::Arc;
use std::time::Instant;

use object_store::path::Path;
use object_store::ObjectStore;
use spotbatch_records::{discover, plan_all, Format, PlanOptions};

fn usage() -> ! {
    eprintln!("usage: plan_scale plan DIR|s3://BUCKET/PREFIX [MAX_ROWS]");
    std::process::exit(2)
}

fn arg(args: &[String], i: usize, default: usize) -> usize {
    args.get(i)
        .map_or(default, |a| a.parse().unwrap_or_else(|_| usage()))
}

async fn plan(target: &str, max_rows: u64) {
    let (store, root): (Arc<dyn ObjectStore>, Path) =
        if let Some(rest) = target.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            let mut b = object_store::aws::AmazonS3Builder::from_env().with_bucket_name(bucket);
            if let Ok(e) = std::env::var("AWS_ENDPOINT_URL") {
                b = b.with_allow_http(e.starts_with("http://")).with_endpoint(e);
            }
            (Arc::new(b.build().expect("s3 store")), Path::from(prefix))
        } else {
            let abs = std::fs::canonicalize(target).unwrap_or_else(|e| panic!("{target}: {e}"));
            (
                Arc::new(object_store::local::LocalFileSystem::new()),
                Path::from_absolute_path(abs).expect("path"),
            )
        };
    let t = Instant::now();
    let (source, files) = discover(store, root, target, None).await.expect("list");
    let listed = t.elapsed();
    let n_files = files.len();
    let splits = plan_all(
        &source,
        files,
        Format::Parquet,
        &PlanOptions {
            max_rows,
            ..PlanOptions::default()
        },
    )
    .await
    .expect("plan");
    let total = t.elapsed();
    let rows: u64 = splits.iter().filter_map(|s| s.rows()).sum();
    let message_bytes: usize = splits
        .iter()
        .map(|s| serde_json::to_vec(s).map_or(0, |v| v.len()))
        .sum();
    println!(
        "planned {rows} rows in {n_files} files into {} splits of <= {max_rows} rows: list {:.3} s, total {:.3} s ({} bytes of split JSON)",
        splits.len(),
        listed.as_secs_f64(),
        total.as_secs_f64(),
        message_bytes
    );
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("plan") => {
            let target = args.get(2).unwrap_or_else(|| usage());
            plan(target, arg(&args, 3, 10_000) as u64).await;
        }
        _ => usage(),
    }
}

//! Padding efficiency (real tokens / padded tokens) of the length-aware batcher on a JSONL corpus,
//! against batches cut in file order and against sorting the whole input (the ideal).
//!
//! usage: cargo run --release -p spotbatch-text --example padding -- CORPUS.jsonl TOKENIZER.json
//!        [MAX_LENGTH=128] [BATCH=32]
//! Prints a table and, last, one JSON line (benches/text.py reads it).

use std::num::NonZeroUsize;
use std::time::Instant;

use spotbatch_text::{BatcherConfig, LengthBatcher, TextTokenizer};

fn efficiency(batches: &[Vec<usize>]) -> f64 {
    let real: usize = batches.iter().flatten().sum();
    let padded: usize = batches
        .iter()
        .map(|b| b.len() * b.iter().max().copied().unwrap_or(0))
        .sum();
    real as f64 / padded.max(1) as f64
}

fn windowed(lengths: &[usize], cfg: BatcherConfig) -> (f64, u64) {
    let now = Instant::now();
    let mut batcher = LengthBatcher::new(cfg);
    let mut batches = Vec::new();
    let mut arrived_after = Vec::with_capacity(lengths.len());
    for (i, &len) in lengths.iter().enumerate() {
        arrived_after.push(batches.len() as u64);
        batches.extend(batcher.push(i, len, now));
    }
    while let Some(b) = batcher.flush(now) {
        batches.push(b);
    }
    let mut worst = 0;
    for (k, b) in batches.iter().enumerate() {
        for &i in b {
            worst = worst.max(k as u64 - arrived_after[i]);
        }
    }
    let as_lengths: Vec<Vec<usize>> = batches
        .iter()
        .map(|b| b.iter().map(|&i| lengths[i]).collect())
        .collect();
    (efficiency(&as_lengths), worst)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [corpus, tokenizer, rest @ ..] = args.as_slice() else {
        return Err("usage: padding CORPUS.jsonl TOKENIZER.json [MAX_LENGTH] [BATCH]".into());
    };
    let max_length: usize = rest.first().map_or(Ok(128), |s| s.parse())?;
    let batch: usize = rest.get(1).map_or(Ok(32), |s| s.parse())?;
    let batch_size = NonZeroUsize::new(batch).ok_or("BATCH must be at least 1")?;
    let tok = TextTokenizer::from_file(tokenizer, max_length)?;
    let t0 = Instant::now();
    let mut lengths = Vec::new();
    for line in std::fs::read_to_string(corpus)?.lines() {
        let row: serde_json::Value = serde_json::from_str(line)?;
        if let Some(text) = row.get("text").and_then(|t| t.as_str()) {
            lengths.push(tok.encode(text)?.len());
        }
    }
    let tokenize_s = t0.elapsed().as_secs_f64();
    let file_order: Vec<Vec<usize>> = lengths.chunks(batch).map(<[usize]>::to_vec).collect();
    let mut sorted = lengths.clone();
    sorted.sort_unstable();
    let full_sort: Vec<Vec<usize>> = sorted.chunks(batch).map(<[usize]>::to_vec).collect();
    let default = BatcherConfig::new(batch_size);
    println!(
        "{} docs, {:.1} tokens each on average (max_length {max_length}), tokenized in {tokenize_s:.2} s ({:.0} docs/s, one thread)",
        lengths.len(),
        lengths.iter().sum::<usize>() as f64 / lengths.len().max(1) as f64,
        lengths.len() as f64 / tokenize_s
    );
    println!("padding efficiency, batches of {batch}:");
    println!("  file order          {:.4}", efficiency(&file_order));
    println!("  whole input sorted  {:.4}", efficiency(&full_sort));
    let mut rows = Vec::new();
    for factor in [4, 8, 16, 32, 64] {
        let window = NonZeroUsize::new(batch * factor).ok_or("window")?;
        let cfg = BatcherConfig {
            window,
            max_wait_batches: 4 * factor as u64,
            ..default
        };
        let (eff, worst) = windowed(&lengths, cfg);
        println!(
            "  window {:5} ({factor:2} batches), due after {:3} batches: {eff:.4}  (longest wait {worst} batches)",
            window,
            cfg.max_wait_batches
        );
        rows.push(
            serde_json::json!({"window": window.get(), "max_wait_batches": cfg.max_wait_batches,
                                      "efficiency": eff, "longest_wait_batches": worst}),
        );
    }
    let (eff, worst) = windowed(&lengths, default);
    println!(
        "{}",
        serde_json::json!({"docs": lengths.len(), "batch": batch, "max_length": max_length,
                           "file_order": efficiency(&file_order), "full_sort": efficiency(&full_sort),
                           "batcher": eff, "batcher_window": default.window.get(),
                           "batcher_longest_wait_batches": worst, "windows": rows,
                           "rust_tokenize_docs_per_s": lengths.len() as f64 / tokenize_s})
    );
    Ok(())
}

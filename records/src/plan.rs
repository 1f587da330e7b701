//! Planning record inputs from metadata only: JSONL and CSV files are cut into byte ranges from
//! their sizes; Parquet files into row-group runs (at most `max_rows` rows, a larger row group
//! cut into row ranges) from their footers, read with ranged GETs of the footer alone.

use futures::stream::{self, BoxStream, StreamExt, TryStreamExt};
pub use spotbatch_proto::split::{ByteSplit, Format, RowSplit, Split};

use crate::error::PlanError;
use crate::source::{FileMeta, Source};

/// Planning knobs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanOptions {
    /// JSONL/CSV: bytes per split (`input.split_bytes`). Default 8 MiB.
    pub split_bytes: u64,
    /// Parquet: rows per split at most (`queue.shard_size`). Default 10 000.
    pub max_rows: u64,
    /// Parquet footers read at once. Default 16.
    pub concurrency: usize,
}

impl Default for PlanOptions {
    fn default() -> Self {
        Self {
            split_bytes: 8 << 20,
            max_rows: 10_000,
            concurrency: 16,
        }
    }
}

/// The splits of `files`, in file order then position order. JSONL/CSV splits come from the sizes
/// alone; Parquet footers are read `concurrency` at a time (only the footer: one or two ranged
/// GETs of the file's end), and dropped once cut. Empty files have no splits.
pub fn plan(
    source: &Source,
    files: Vec<FileMeta>,
    format: Format,
    opts: &PlanOptions,
) -> BoxStream<'static, Result<Split, PlanError>> {
    if opts.split_bytes == 0 || opts.max_rows == 0 || opts.concurrency == 0 {
        let e = PlanError::Options(format!(
            "split_bytes ({}), max_rows ({}) and concurrency ({}) must be at least 1",
            opts.split_bytes, opts.max_rows, opts.concurrency
        ));
        return stream::once(async move { Err(e) }).boxed();
    }
    match format {
        Format::Jsonl | Format::Csv => {
            let step = opts.split_bytes;
            stream::iter(files)
                .flat_map(move |f| {
                    let FileMeta { key, size } = f;
                    stream::iter((0..size.div_ceil(step)).map(move |i| {
                        let b = ByteSplit {
                            key: key.clone(),
                            size,
                            start: i * step,
                            end: ((i + 1) * step).min(size),
                        };
                        Ok(match format {
                            Format::Csv => Split::Csv(b),
                            _ => Split::Jsonl(b),
                        })
                    }))
                })
                .boxed()
        }
        Format::Parquet => {
            let source = source.clone();
            let max_rows = opts.max_rows;
            stream::iter(files)
                .map(move |f| {
                    let source = source.clone();
                    async move { parquet_splits(&source, f, max_rows).await }
                })
                .buffered(opts.concurrency)
                .map_ok(|v| stream::iter(v.into_iter().map(Ok)))
                .try_flatten()
                .boxed()
        }
    }
}

/// [`plan`], collected.
pub async fn plan_all(
    source: &Source,
    files: Vec<FileMeta>,
    format: Format,
    opts: &PlanOptions,
) -> Result<Vec<Split>, PlanError> {
    plan(source, files, format, opts).try_collect().await
}

async fn parquet_splits(
    source: &Source,
    f: FileMeta,
    max_rows: u64,
) -> Result<Vec<Split>, PlanError> {
    let meta = crate::parquet_io::StoreReader::new(source, &f.key, f.size)
        .footer()
        .await
        .map_err(|e| PlanError::Footer {
            file: source.url_of(&f.key),
            key: f.key.clone(),
            source: e,
        })?;
    let counts: Vec<u64> = meta
        .row_groups()
        .iter()
        .map(|rg| u64::try_from(rg.num_rows()).unwrap_or(0))
        .collect();
    Ok(cut_row_groups(&counts, max_rows)
        .into_iter()
        .map(|(row_groups, start, end)| {
            Split::Parquet(RowSplit {
                key: f.key.clone(),
                size: f.size,
                row_groups,
                start,
                end,
            })
        })
        .collect())
}

/// Cuts row groups of `counts` rows into runs of whole consecutive row groups of at most
/// `max_rows` rows; a row group over `max_rows` is cut alone into ranges of at most `max_rows`.
/// Returns (row groups, first row, end row) with file-level row indices.
pub(crate) fn cut_row_groups(counts: &[u64], max_rows: u64) -> Vec<(Vec<usize>, u64, u64)> {
    let mut out = Vec::new();
    let mut run: Vec<usize> = Vec::new();
    let (mut run_start, mut run_rows, mut first_row) = (0u64, 0u64, 0u64);
    for (i, &n) in counts.iter().enumerate() {
        if n > 0 && run_rows + n > max_rows && !run.is_empty() {
            out.push((std::mem::take(&mut run), run_start, run_start + run_rows));
            run_rows = 0;
        }
        if n > max_rows {
            let mut s = first_row;
            while s < first_row + n {
                let e = (s + max_rows).min(first_row + n);
                out.push((vec![i], s, e));
                s = e;
            }
        } else if n > 0 {
            if run.is_empty() {
                run_start = first_row;
            }
            run.push(i);
            run_rows += n;
        }
        first_row += n;
    }
    if !run.is_empty() {
        out.push((run, run_start, run_start + run_rows));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_groups_are_grouped_and_cut() {
        assert_eq!(
            cut_row_groups(&[3, 3, 3, 10, 0, 2], 6),
            vec![
                (vec![0, 1], 0, 6),
                (vec![2], 6, 9),
                (vec![3], 9, 15),
                (vec![3], 15, 19),
                (vec![5], 19, 21),
            ]
        );
        assert_eq!(cut_row_groups(&[], 5), vec![]);
        // Every row exactly once, in order, for many shapes.
        for max in 1..8 {
            let counts = [1, 7, 0, 2, 2, 9, 3];
            let cuts = cut_row_groups(&counts, max);
            let mut next = 0;
            for (groups, s, e) in &cuts {
                assert_eq!(*s, next);
                assert!(e - s <= max && e > s);
                assert!(!groups.is_empty());
                next = *e;
            }
            assert_eq!(next, counts.iter().sum::<u64>());
        }
    }

    #[test]
    fn splits_serialise_and_name_their_range() {
        let s = Split::Parquet(RowSplit {
            key: "a/b.parquet".into(),
            size: 10,
            row_groups: vec![2, 3],
            start: 100,
            end: 200,
        });
        let j = serde_json::to_string(&s).unwrap();
        assert_eq!(
            j,
            r#"{"format":"parquet","key":"a/b.parquet","size":10,"row_groups":[2,3],"start":100,"end":200}"#
        );
        assert_eq!(serde_json::from_str::<Split>(&j).unwrap(), s);
        assert_eq!(s.id_input(), "a/b.parquet#rows=100-200");
        let b = Split::Csv(ByteSplit {
            key: "x.csv".into(),
            size: 9,
            start: 0,
            end: 9,
        });
        assert_eq!(
            serde_json::from_str::<Split>(&serde_json::to_string(&b).unwrap()).unwrap(),
            b
        );
        assert_eq!(b.id_input(), "x.csv#bytes=0-9");
    }
}

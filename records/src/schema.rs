//! Fixing a job's column types before any shard runs, so every part file of the job has the same
//! Parquet schema (`read_parquet('OUT/JOB/*.parquet')` needs that).
//!
//! [`resolve`] fills in the type of every carried column (`id_column`, `[output] columns`) that the
//! manifest does not declare:
//! - **Parquet**: the column's Arrow type in the first file's footer; a later file with another
//!   type fails its shards with [`ReadError::ColumnType`].
//! - **CSV**: `Utf8` (a declared `Int64`, `Float64` or `Boolean` parses the field; an empty field
//!   is then null; a field that does not parse is that row's error).
//! - **JSONL**: sampled from the first file's first records (at most [`JSONL_SAMPLE_BYTES`], one
//!   ranged GET): the widest type of the non-null values seen — integers `Int64`, any other
//!   number (or integers and numbers mixed) `Float64`, booleans `Boolean`, strings, objects and
//!   arrays `Utf8` (objects and arrays as their JSON text), a mix of kinds or nothing seen `Utf8`.
//!   Every later value is conformed to that type ([`crate::Value::conform`]): a string column
//!   takes any value as its JSON text, `Float64` takes integers; anything else that does not fit
//!   (a string in an `Int64` column) is that row's error, never a silently different schema.
//!   Declare the type in the manifest to avoid surprises from a sample.
//!
//! The resolved types go into the plan (the stored manifest), so every worker uses the same ones.

use arrow_schema::DataType;
use parquet::arrow::parquet_to_arrow_schema;

use crate::error::ReadError;
use crate::plan::{ByteSplit, Format, Split};
use crate::record::{Column, Projection, ReadOptions};
use crate::source::{FileMeta, Source};
use crate::value::Value;

/// Bytes of the first JSONL file sampled for types.
pub const JSONL_SAMPLE_BYTES: u64 = 1 << 20;

/// `proj` with every carried column's type fixed for the job (see the module docs), after checking
/// that the first file has the columns (Parquet schema, CSV header).
pub async fn resolve(
    source: &Source,
    format: Format,
    first: &FileMeta,
    proj: &Projection,
    opts: &ReadOptions,
) -> Result<Projection, ReadError> {
    let url = source.url_of(&first.key);
    let mut out = proj.clone();
    match format {
        Format::Parquet => {
            let perr = |e| ReadError::Parquet {
                file: url.clone(),
                source: e,
            };
            let meta = crate::parquet_io::StoreReader::new(source, &first.key, first.size)
                .footer()
                .await
                .map_err(perr)?;
            let schema = parquet_to_arrow_schema(
                meta.file_metadata().schema_descr(),
                meta.file_metadata().key_value_metadata(),
            )
            .map_err(perr)?;
            crate::parquet_read::check_schema(&url, &schema, proj)?;
            for c in out.id.iter_mut().chain(out.columns.iter_mut()) {
                if c.ty.is_none() {
                    let i = schema
                        .index_of(&c.name)
                        .map_err(|_| ReadError::MissingColumn {
                            file: url.clone(),
                            column: c.name.clone(),
                        })?;
                    c.ty = Some(schema.field(i).data_type().clone());
                }
            }
        }
        Format::Csv => {
            // Opening the first split reads the header and checks the columns and types.
            let split = Split::Csv(ByteSplit {
                key: first.key.clone(),
                size: first.size,
                start: 0,
                end: first.size.min(1),
            });
            drop(crate::reader::read_split(source, &split, proj, opts).await?);
            for c in out.id.iter_mut().chain(out.columns.iter_mut()) {
                c.ty.get_or_insert(DataType::Utf8);
            }
        }
        Format::Jsonl => {
            let untyped = Projection {
                text: None,
                id: proj.id.as_ref().map(|c| Column::named(&c.name)),
                columns: proj
                    .columns
                    .iter()
                    .map(|c| Column::named(&c.name))
                    .collect(),
            };
            let split = Split::Jsonl(ByteSplit {
                key: first.key.clone(),
                size: first.size,
                start: 0,
                end: first.size.min(JSONL_SAMPLE_BYTES),
            });
            let mut seen: Vec<Option<DataType>> = vec![None; 1 + proj.columns.len()];
            let mut conflict = vec![false; seen.len()];
            use futures::StreamExt;
            let mut records = crate::reader::read_split(source, &split, &untyped, opts).await?;
            while let Some(r) = records.next().await {
                let Ok(fields) = r?.fields else { continue };
                let values =
                    std::iter::once(fields.id.unwrap_or(Value::Null)).chain(fields.columns);
                for (i, v) in values.enumerate() {
                    if let Some(t) = v.natural_type() {
                        seen[i] = Some(match (seen[i].take(), t) {
                            (None, t) => t,
                            (Some(a), b) if a == b => a,
                            (
                                Some(DataType::Int64 | DataType::Float64),
                                DataType::Int64 | DataType::Float64,
                            ) => DataType::Float64,
                            (Some(_), _) => {
                                conflict[i] = true;
                                DataType::Utf8
                            }
                        });
                    }
                }
            }
            let typed = |c: &mut Column, i: usize| {
                if c.ty.is_none() {
                    c.ty = Some(if conflict[i] {
                        DataType::Utf8
                    } else {
                        seen[i].clone().unwrap_or(DataType::Utf8)
                    });
                }
            };
            if let Some(c) = out.id.as_mut() {
                typed(c, 0);
            }
            for (i, c) in out.columns.iter_mut().enumerate() {
                typed(c, i + 1);
            }
            for c in out.id.iter().chain(&out.columns) {
                crate::decode::check_plain_type(&url, &c.name, &c.ty)?;
            }
        }
    }
    Ok(out)
}

//! Parquet inputs (planning from footers, reading splits), list files, type resolution and the
//! part writer, read back by arrow-rs here and by pyarrow and duckdb (`SPOTBATCH_PYTHON`).

mod common;

use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, Int32Type};
use arrow_array::{Array, ArrayRef, Date32Array, Int32Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use bytes::Bytes;
use common::{collect, mem_source};
use futures::StreamExt;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::ObjectStore;
use parquet::arrow::ArrowWriter;
use parquet::file::properties::WriterProperties;
use spotbatch_proto::{RowValue, Scored};
use spotbatch_records::{
    discover, plan_all, read_list, read_split, schema, Column, FileMeta, Format, ListFormat,
    PartRow, PartSchema, PartWriter, PlanError, PlanOptions, Projection, ReadError, ReadOptions,
    ResultKind, Split, Value, WriterOptions,
};

/// A Parquet file of `n` rows: id Int32, text Utf8 (every 7th null), day Date32, and a wide
/// `blob` column nobody asks for; row groups of `group` rows.
fn parquet_file(n: usize, group: usize) -> Vec<u8> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int32, false),
        Field::new("text", DataType::Utf8, true),
        Field::new("day", DataType::Date32, true),
        Field::new("blob", DataType::Utf8, false),
    ]));
    let props = WriterProperties::builder()
        .set_max_row_group_row_count(Some(group))
        .build();
    let mut out = Vec::new();
    let mut w = ArrowWriter::try_new(&mut out, Arc::clone(&schema), Some(props)).unwrap();
    let ids: Vec<i32> = (0..n as i32).collect();
    let texts: Vec<Option<String>> = (0..n)
        .map(|i| (i % 7 != 3).then(|| format!("text {i}")))
        .collect();
    let blob: Vec<String> = (0..n).map(|i| format!("{i:0>5000}")).collect();
    let batch = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int32Array::from(ids)),
            Arc::new(StringArray::from(texts)),
            Arc::new(Date32Array::from_iter_values(
                (0..n as i32).map(|i| 19000 + i),
            )),
            Arc::new(StringArray::from(blob)),
        ],
    )
    .unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    out
}

fn proj() -> Projection {
    common::text_id_projection(&["day"])
}

#[tokio::test]
async fn parquet_splits_follow_row_groups_and_read_every_row_once() {
    let file = parquet_file(100, 30);
    let (source, stats) = mem_source(&[("t.parquet", &file), ("u.parquet", &file)]).await;
    let files = vec![
        FileMeta {
            key: "t.parquet".into(),
            size: file.len() as u64,
        },
        FileMeta {
            key: "u.parquet".into(),
            size: file.len() as u64,
        },
    ];
    let opts = PlanOptions {
        max_rows: 20,
        ..PlanOptions::default()
    };
    let planned = plan_all(&source, files, Format::Parquet, &opts)
        .await
        .unwrap();
    // Row groups of 30, 30, 30, 10 rows, each over 20 rows but the last: cut 20 + 10.
    let ranges: Vec<(u64, u64)> = planned
        .iter()
        .filter(|s| s.key() == "t.parquet")
        .map(|s| match s {
            Split::Parquet(r) => (r.start, r.end),
            _ => unreachable!(),
        })
        .collect();
    assert_eq!(
        ranges,
        vec![
            (0, 20),
            (20, 30),
            (30, 50),
            (50, 60),
            (60, 80),
            (80, 90),
            (90, 100)
        ]
    );
    // Planning read only the footers: one bounded GET of 64 KiB at each file's end.
    let fetched = stats.bytes();
    assert!(
        fetched < 2 * file.len() as u64 / 4,
        "{fetched} of {}",
        2 * file.len()
    );
    for (_, r) in stats.gets() {
        assert!(r.is_some(), "planning never GETs a whole file");
    }

    let mut rows = Vec::new();
    for split in planned.iter().filter(|s| s.key() == "t.parquet") {
        stats.reset();
        rows.extend(
            collect(
                read_split(&source, split, &proj(), &ReadOptions::default())
                    .await
                    .unwrap(),
            )
            .await,
        );
        // Only the projected columns of the split's row group are fetched, not the blob column.
        assert!(
            stats.bytes() < file.len() as u64 / 3,
            "{} of {}",
            stats.bytes(),
            file.len()
        );
    }
    assert_eq!(rows.len(), 100);
    for (i, r) in rows.iter().enumerate() {
        assert_eq!(r.key.to_string(), format!("t.parquet#{i}"));
        match &r.fields {
            Ok(f) => {
                assert_eq!(f.text.as_deref(), Some(format!("text {i}").as_str()));
                let Some(Value::Arrow(id)) = &f.id else {
                    panic!("{:?}", f.id)
                };
                assert_eq!(id.as_primitive::<Int32Type>().value(0), i as i32);
                let Value::Arrow(day) = &f.columns[0] else {
                    panic!()
                };
                assert_eq!(day.data_type(), &DataType::Date32);
            }
            Err(e) => {
                assert_eq!(i % 7, 3);
                assert_eq!(
                    e.to_string(),
                    format!("t.parquet#{i}: column \"text\" is null")
                );
            }
        }
    }
}

#[tokio::test]
async fn parquet_fatal_errors_name_the_file_and_column() {
    let file = parquet_file(10, 10);
    let (source, _) =
        mem_source(&[("t.parquet", &file), ("bad.parquet", b"not parquet at all")]).await;
    let split = Split::Parquet(spotbatch_records::RowSplit {
        key: "t.parquet".into(),
        size: file.len() as u64,
        row_groups: vec![0],
        start: 0,
        end: 10,
    });
    let missing = Projection {
        text: Some("body".into()),
        ..Projection::default()
    };
    let e = read_split(&source, &split, &missing, &ReadOptions::default())
        .await
        .err()
        .unwrap();
    assert_eq!(
        e.to_string(),
        r#"mem://data/t.parquet: has no column "body""#
    );
    let not_text = Projection {
        text: Some("id".into()),
        ..Projection::default()
    };
    let e = read_split(&source, &split, &not_text, &ReadOptions::default())
        .await
        .err()
        .unwrap();
    assert!(matches!(e, ReadError::ColumnType { .. }), "{e}");
    assert!(e.to_string().contains(r#"column "id" is Int32"#), "{e}");
    let typed = Projection {
        text: Some("text".into()),
        id: Some(Column {
            name: "id".into(),
            ty: Some(DataType::Int64),
        }),
        columns: vec![],
    };
    let e = read_split(&source, &split, &typed, &ReadOptions::default())
        .await
        .err()
        .unwrap();
    assert_eq!(
        e.to_string(),
        r#"mem://data/t.parquet: column "id" is Int32, the job needs Int64"#
    );
    let bad = vec![FileMeta {
        key: "bad.parquet".into(),
        size: 18,
    }];
    let e = plan_all(&source, bad, Format::Parquet, &PlanOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(e, PlanError::Footer { .. }));
    assert!(
        e.to_string()
            .starts_with("mem://data/bad.parquet: cannot read the Parquet footer"),
        "{e}"
    );
}

#[tokio::test]
async fn the_parquet_bytes_entry_point_reads_whole_files_and_refuses_broken_ones() {
    let file = parquet_file(25, 10);
    let all = spotbatch_records::read_parquet_bytes(
        Bytes::from(file.clone()),
        4,
        &proj(),
        &ReadOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!(all.len(), 25);
    assert_eq!(all[24].key.to_string(), "input.parquet#24");
    for cut in [0, 1, 4, 8, file.len() / 2, file.len() - 1] {
        let e = spotbatch_records::read_parquet_bytes(
            Bytes::from(file[..cut].to_vec()),
            4,
            &proj(),
            &ReadOptions::default(),
        )
        .await;
        assert!(
            matches!(e, Err(ReadError::Parquet { .. })),
            "cut at {cut}: {:?}",
            e.map(|r| r.len())
        );
    }
}

#[tokio::test]
async fn job_types_are_fixed_from_footers_headers_and_a_jsonl_sample() {
    let file = parquet_file(10, 10);
    let jsonl = b"{\"id\":1,\"n\":1,\"s\":\"a\",\"o\":{\"x\":1},\"b\":true}\n{\"id\":2,\"n\":2.5,\"s\":3}\n{\"id\":\"later\",\"text\":\"t\"}\n";
    let (source, _) = mem_source(&[
        ("t.parquet", &file),
        ("a.jsonl", jsonl),
        ("a.csv", b"id,text\n1,x\n"),
    ])
    .await;
    let meta = |k: &str, n: usize| FileMeta {
        key: k.into(),
        size: n as u64,
    };
    let ro = ReadOptions::default();
    let p = schema::resolve(
        &source,
        Format::Parquet,
        &meta("t.parquet", file.len()),
        &proj(),
        &ro,
    )
    .await
    .unwrap();
    assert_eq!(p.id.unwrap().ty, Some(DataType::Int32));
    assert_eq!(p.columns[0].ty, Some(DataType::Date32));

    let jp = Projection {
        text: Some("text".into()),
        id: Some(Column::named("id")),
        columns: ["n", "s", "o", "b", "absent"]
            .into_iter()
            .map(Column::named)
            .collect(),
    };
    let j = schema::resolve(
        &source,
        Format::Jsonl,
        &meta("a.jsonl", jsonl.len()),
        &jp,
        &ro,
    )
    .await
    .unwrap();
    let types: Vec<DataType> =
        j.id.iter()
            .chain(&j.columns)
            .map(|c| c.ty.clone().unwrap())
            .collect();
    // id: Int64 then a string -> Utf8; n: Int64 and Float64 -> Float64; s: string and number -> Utf8.
    assert_eq!(
        types,
        vec![
            DataType::Utf8,
            DataType::Float64,
            DataType::Utf8,
            DataType::Utf8,
            DataType::Boolean,
            DataType::Utf8
        ]
    );
    let cp = Projection {
        text: Some("text".into()),
        id: Some(Column::named("id")),
        columns: vec![],
    };
    let c = schema::resolve(&source, Format::Csv, &meta("a.csv", 12), &cp, &ro)
        .await
        .unwrap();
    assert_eq!(c.id.unwrap().ty, Some(DataType::Utf8));
    let missing = Projection {
        text: Some("body".into()),
        ..Projection::default()
    };
    assert!(
        schema::resolve(&source, Format::Csv, &meta("a.csv", 12), &missing, &ro)
            .await
            .is_err()
    );
}

#[tokio::test]
async fn list_files_stream_their_entries() {
    let text = b"a/1.png\r\n\n  b/2.png  \n\xff\xfe\nlast.png";
    let csv = b"bucket,key,size\nb,\"x/1,comma.png\",3\nb,x/2.png,4\n";
    let table = {
        let schema = Arc::new(Schema::new(vec![
            Field::new("n", DataType::Int64, false),
            Field::new("uri", DataType::Utf8, true),
        ]));
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(arrow_array::Int64Array::from(vec![1, 2, 3])),
                Arc::new(StringArray::from(vec![
                    Some("s3://b/p/1.png"),
                    None,
                    Some("p/3.png"),
                ])),
            ],
        )
        .unwrap();
        let mut out = Vec::new();
        let mut w = ArrowWriter::try_new(&mut out, schema, None).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
        out
    };
    let (source, _) = mem_source(&[("l.txt", text), ("l.csv", csv), ("l.parquet", &table)]).await;
    let ro = ReadOptions::default();
    let entries = |key: &'static str, size: usize, f: ListFormat| {
        let source = source.clone();
        let ro = ro.clone();
        async move {
            let mut s = read_list(&source, key, size as u64, &f, &ro).await.unwrap();
            let mut out = Vec::new();
            while let Some(e) = s.next().await {
                let e = e.unwrap();
                out.push((e.at.to_string(), e.entry.map_err(|e| e.to_string())));
            }
            out
        }
    };
    assert_eq!(
        entries("l.txt", text.len(), ListFormat::from_key("l.txt", None)).await,
        vec![
            ("l.txt#0".into(), Ok("a/1.png".into())),
            ("l.txt#10".into(), Ok("b/2.png".into())),
            (
                "l.txt#22".into(),
                Err(r#"l.txt#22: column "*": invalid UTF-8"#.into())
            ),
            ("l.txt#25".into(), Ok("last.png".into())),
        ]
    );
    assert_eq!(
        entries(
            "l.csv",
            csv.len(),
            ListFormat::from_key("l.csv", Some("key".into()))
        )
        .await,
        vec![
            ("l.csv#16".into(), Ok("x/1,comma.png".into())),
            ("l.csv#36".into(), Ok("x/2.png".into())),
        ]
    );
    assert_eq!(
        entries(
            "l.parquet",
            table.len(),
            ListFormat::from_key("l.parquet", None)
        )
        .await,
        vec![
            ("l.parquet#0".into(), Ok("s3://b/p/1.png".into())),
            (
                "l.parquet#1".into(),
                Err(r#"l.parquet#1: column "uri" is null"#.into())
            ),
            ("l.parquet#2".into(), Ok("p/3.png".into())),
        ]
    );
}

#[tokio::test]
async fn discover_lists_a_folder_with_a_glob_or_takes_one_file() {
    let dir = tempfile::tempdir().unwrap();
    for k in ["a/x.jsonl", "a/y.jsonl", "a/z.csv", "b/w.jsonl"] {
        let p = dir.path().join(k);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, b"{}\n").unwrap();
    }
    let store: Arc<dyn ObjectStore> = Arc::new(LocalFileSystem::new());
    let root = Path::from_absolute_path(dir.path()).unwrap();
    let glob = spotbatch_proto::compile_glob("**/*.jsonl").unwrap();
    let (source, files) = discover(Arc::clone(&store), root.clone(), "file:///d", Some(&glob))
        .await
        .unwrap();
    let keys: Vec<&str> = files.iter().map(|f| f.key.as_str()).collect();
    assert_eq!(keys, vec!["a/x.jsonl", "a/y.jsonl", "b/w.jsonl"]);
    assert_eq!(source.root, root);
    let one = root.clone().join("a").join("y.jsonl");
    let (source, files) = discover(store, one, "file:///d/a/y.jsonl", None)
        .await
        .unwrap();
    assert_eq!(
        files,
        vec![FileMeta {
            key: "y.jsonl".into(),
            size: 3
        }]
    );
    assert_eq!(source.url_of("y.jsonl"), "file:///d/a/y.jsonl");
}

fn row(key: &str, value: Option<RowValue>, id: Value, col: Value) -> PartRow {
    PartRow {
        key: key.into(),
        id: Some(id),
        columns: vec![col],
        error: value.is_none().then(|| format!("{key}: broken")),
        value,
    }
}

/// Writes parts of every result kind to a folder and reads them back with arrow-rs.
async fn write_parts(dir: &std::path::Path) -> Vec<(String, PartSchema)> {
    let store: Arc<dyn ObjectStore> = Arc::new(LocalFileSystem::new());
    let root = Path::from_absolute_path(dir).unwrap();
    let day = |d: i32| Value::Arrow(Arc::new(Date32Array::from(vec![d])) as ArrayRef);
    let mut out = Vec::new();
    // A classify job from JSONL: id Int64, carried `lang` Utf8, two shards.
    let topk = PartSchema {
        id: Some(("doc_id".into(), DataType::Int64)),
        columns: vec![("lang".into(), DataType::Utf8)],
        result: ResultKind::TopK,
    };
    for (shard, rows) in [
        (
            "part-a.parquet",
            vec![
                row(
                    "a.jsonl#0",
                    Some(RowValue::TopK(vec![
                        Scored {
                            index: 3,
                            label: "three".into(),
                            score: 0.75,
                        },
                        Scored {
                            index: 8,
                            label: "eight".into(),
                            score: 0.25,
                        },
                    ])),
                    Value::Int(7),
                    Value::Str("en".into()),
                ),
                row("a.jsonl#40", None, Value::Null, Value::Null),
            ],
        ),
        (
            "part-b.parquet",
            vec![row(
                "b.jsonl#0",
                Some(RowValue::TopK(vec![Scored {
                    index: 1,
                    label: "one".into(),
                    score: 1.0,
                }])),
                Value::Int(9),
                Value::Str("fr".into()),
            )],
        ),
    ] {
        let mut w = PartWriter::create(
            Arc::clone(&store),
            root.clone().join("classify").join(shard),
            shard,
            &topk,
            &WriterOptions::default(),
        )
        .unwrap();
        for r in rows {
            w.write(r).await.unwrap();
        }
        let sum = w.finish().await.unwrap();
        let bytes = std::fs::read(dir.join("classify").join(shard)).unwrap();
        assert_eq!(sum.bytes, bytes.len() as u64);
        assert_eq!(sum.sha256, spotbatch_proto::sha256_hex(&bytes));
    }
    out.push(("classify".into(), topk));
    // An embedding job from Parquet: id Int32 and a Date32 carried in their own types.
    let emb = PartSchema {
        id: Some(("id".into(), DataType::Int32)),
        columns: vec![("day".into(), DataType::Date32)],
        result: ResultKind::Embedding { dim: 3 },
    };
    let id = |i: i32| Value::Arrow(Arc::new(Int32Array::from(vec![i])) as ArrayRef);
    let mut w = PartWriter::create(
        Arc::clone(&store),
        root.clone().join("embed").join("part-0.parquet"),
        "embed",
        &emb,
        &WriterOptions {
            batch_rows: 2,
            ..WriterOptions::default()
        },
    )
    .unwrap();
    w.write(row(
        "t.parquet#0",
        Some(RowValue::Embedding(vec![0.5, -1.0, 2.0])),
        id(10),
        day(19000),
    ))
    .await
    .unwrap();
    w.write(row(
        "t.parquet#1",
        None,
        id(11),
        Value::Arrow(arrow_array::new_null_array(&DataType::Date32, 1)),
    ))
    .await
    .unwrap();
    w.write(row(
        "t.parquet#2",
        Some(RowValue::Embedding(vec![1.0, 0.0, 0.0])),
        id(12),
        day(19002),
    ))
    .await
    .unwrap();
    let sum = w.finish().await.unwrap();
    assert_eq!((sum.rows, sum.errors), (3, 1));
    out.push(("embed".into(), emb));
    // A raw job.
    let raw = PartSchema {
        id: None,
        columns: vec![],
        result: ResultKind::Tensor,
    };
    let mut w = PartWriter::create(
        Arc::clone(&store),
        root.clone().join("raw").join("part-0.parquet"),
        "raw",
        &raw,
        &WriterOptions::default(),
    )
    .unwrap();
    w.write(PartRow {
        key: "r#0".into(),
        id: None,
        columns: vec![],
        value: Some(RowValue::Tensor {
            shape: vec![2, 2],
            data: vec![1.0, 2.0, 3.0, 4.0],
        }),
        error: None,
    })
    .await
    .unwrap();
    w.write(PartRow {
        key: "r#9".into(),
        id: None,
        columns: vec![],
        value: None,
        error: Some("bad".into()),
    })
    .await
    .unwrap();
    w.finish().await.unwrap();
    out.push(("raw".into(), raw));
    out
}

#[tokio::test]
async fn parts_read_back_with_their_schema_and_values() {
    let dir = tempfile::tempdir().unwrap();
    let kinds = write_parts(dir.path()).await;
    for (name, part) in &kinds {
        for entry in std::fs::read_dir(dir.path().join(name)).unwrap() {
            let bytes = Bytes::from(std::fs::read(entry.unwrap().path()).unwrap());
            let reader =
                parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes)
                    .unwrap()
                    .build()
                    .unwrap();
            for batch in reader {
                let batch = batch.unwrap();
                assert_eq!(batch.schema(), part.arrow_schema().unwrap(), "{name}");
            }
        }
    }
    let bytes = Bytes::from(std::fs::read(dir.path().join("embed/part-0.parquet")).unwrap());
    let mut reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes)
        .unwrap()
        .build()
        .unwrap();
    let b = reader.next().unwrap().unwrap();
    let emb = b.column_by_name("embedding").unwrap().as_fixed_size_list();
    assert!(emb.is_null(1) && !emb.is_null(0));
    assert_eq!(
        emb.value(2).as_primitive::<Float32Type>().values(),
        &[1.0, 0.0, 0.0]
    );
    assert_eq!(
        b.column_by_name("id")
            .unwrap()
            .as_primitive::<Int32Type>()
            .value(2),
        12
    );
    assert_eq!(
        b.column_by_name("error")
            .unwrap()
            .as_string::<i32>()
            .value(1),
        "t.parquet#1: broken"
    );
    // A schema clash and a wrong-length embedding are typed errors naming the column.
    let store: Arc<dyn ObjectStore> = Arc::new(LocalFileSystem::new());
    let root = Path::from_absolute_path(dir.path()).unwrap();
    let clash = PartSchema {
        id: Some(("key".into(), DataType::Utf8)),
        columns: vec![],
        result: ResultKind::TopK,
    };
    let e = PartWriter::create(
        Arc::clone(&store),
        root.clone().join("x.parquet"),
        "x",
        &clash,
        &WriterOptions::default(),
    )
    .err()
    .unwrap();
    assert!(
        e.to_string().starts_with(r#"x: column "key": used twice"#),
        "{e}"
    );
    let mut w = PartWriter::create(
        store,
        root.clone().join("y.parquet"),
        "y",
        &kinds[1].1,
        &WriterOptions::default(),
    )
    .unwrap();
    w.write(row(
        "k#1",
        Some(RowValue::Embedding(vec![1.0])),
        Value::Null,
        Value::Null,
    ))
    .await
    .unwrap();
    let e = w.finish().await.unwrap_err();
    assert_eq!(
        e.to_string(),
        r#"y: row k#1: column "embedding": 1 values, the job's embeddings have 3"#
    );
}

/// pyarrow and duckdb read the parts of a job as one table with the right types and values.
#[tokio::test]
async fn pyarrow_and_duckdb_read_the_parts() {
    let python = std::env::var("SPOTBATCH_PYTHON").expect(
        "SPOTBATCH_PYTHON is not set: run the tests with `make test` (or source scripts/env.sh)",
    );
    let dir = tempfile::tempdir().unwrap();
    write_parts(dir.path()).await;
    let script = r#"
import json, sys, duckdb, pyarrow.dataset as ds
root = sys.argv[1]
out = {}
for job in ["classify", "embed", "raw"]:
    t = ds.dataset(f"{root}/{job}", format="parquet").to_table()
    out[job + "_pyarrow"] = {"schema": [f"{f.name}: {f.type}" for f in t.schema], "rows": t.num_rows}
    con = duckdb.connect()
    rel = con.sql(f"select * from read_parquet('{root}/{job}/*.parquet') order by key")
    out[job + "_duckdb"] = {"types": [f"{n}: {t}" for n, t in zip(rel.columns, rel.types)],
                            "rows": json.loads(json.dumps(rel.fetchall(), default=str))}
print(json.dumps(out))
"#;
    let o = std::process::Command::new(python)
        .arg("-c")
        .arg(script)
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        v["classify_pyarrow"]["schema"],
        serde_json::json!([
            "key: string",
            "doc_id: int64",
            "lang: string",
            "top_k: list<item: struct<index: int64 not null, label: string not null, score: float not null> not null>",
            "error: string"
        ])
    );
    assert_eq!(v["classify_pyarrow"]["rows"], 3);
    assert_eq!(
        v["classify_duckdb"]["rows"],
        serde_json::json!([
            ["a.jsonl#0", 7, "en", [{"index": 3, "label": "three", "score": 0.75}, {"index": 8, "label": "eight", "score": 0.25}], null],
            ["a.jsonl#40", null, null, null, "a.jsonl#40: broken"],
            ["b.jsonl#0", 9, "fr", [{"index": 1, "label": "one", "score": 1.0}], null]
        ])
    );
    assert_eq!(
        v["embed_pyarrow"]["schema"],
        serde_json::json!([
            "key: string",
            "id: int32",
            "day: date32[day]",
            "embedding: fixed_size_list<item: float not null>[3]",
            "error: string"
        ])
    );
    assert_eq!(
        v["embed_duckdb"]["types"],
        serde_json::json!([
            "key: VARCHAR",
            "id: INTEGER",
            "day: DATE",
            "embedding: FLOAT[]",
            "error: VARCHAR"
        ])
    );
    assert_eq!(
        v["embed_duckdb"]["rows"],
        serde_json::json!([
            ["t.parquet#0", 10, "2022-01-08", [0.5, -1.0, 2.0], null],
            ["t.parquet#1", 11, null, null, "t.parquet#1: broken"],
            ["t.parquet#2", 12, "2022-01-10", [1.0, 0.0, 0.0], null]
        ])
    );
    assert_eq!(
        v["raw_duckdb"]["rows"],
        serde_json::json!([
            ["r#0", {"shape": [2, 2], "data": [1.0, 2.0, 3.0, 4.0]}, null],
            ["r#9", null, "bad"]
        ])
    );
}

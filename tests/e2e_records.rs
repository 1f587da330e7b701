//! Records and documents through the binary: rows of JSONL, CSV and Parquet files embedded with
//! all-MiniLM-L6-v2 (real weights, ONNX built by `examples/text/minilm.py`, which `make test`
//! runs), checked against a float64 numpy forward pass of the same weights; every row exactly once
//! across many small splits; malformed rows as error rows; Parquet output read back by pyarrow and
//! duckdb; kill -9 and resume on a record job; `input.list`; and what `validate` catches up front.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;

/// The text model's folder (`make test` builds it before the tests).
fn model_dir() -> PathBuf {
    let dir = root().join("examples/text/model");
    assert!(
        dir.join("minilm.onnx").is_file() && dir.join("tokenizer.json").is_file(),
        "{} lacks minilm.onnx / tokenizer.json: run the tests with `make test` (it runs examples/text/minilm.py)",
        dir.display()
    );
    dir
}

/// The demo corpus (`make test` writes it with examples/text/make_corpus.py).
fn corpus(name: &str) -> PathBuf {
    let p = root().join("examples/text/data").join(name);
    assert!(
        p.is_file(),
        "{} is missing: run the tests with `make test` (it runs examples/text/make_corpus.py)",
        p.display()
    );
    p
}

/// The first `n` lines of the demo corpus, as a JSONL file in `dir`.
fn first_docs(dir: &Path, n: usize) -> PathBuf {
    let text = std::fs::read_to_string(corpus("docs.jsonl")).expect("the corpus");
    let lines: Vec<&str> = text.lines().take(n).collect();
    let p = dir.join("docs.jsonl");
    std::fs::write(&p, lines.join("\n") + "\n").expect("write the docs");
    p
}

/// A text manifest over `input` (a file or folder) with extra lines per section.
fn manifest(
    dir: &Path,
    input: &Path,
    input_extra: &str,
    output_extra: &str,
    extra: &str,
) -> PathBuf {
    let m = model_dir();
    let text = format!(
        r#"name = "docs"
[input]
uri = "{input}"
format = "jsonl"
id_column = "id"
{input_extra}
[model]
uri = "{model}"
batch_size = 16
[preprocess]
kind = "text"
tokenizer = "{tok}"
max_length = 128
[postprocess]
kind = "embedding"
pooling = "mean"
normalize = true
[output]
uri = "{out}"
{output_extra}
[queue]
uri = "sqlite://{db}"
shard_size = 64
{extra}"#,
        input = input.display(),
        model = m.join("minilm.onnx").display(),
        tok = m.join("tokenizer.json").display(),
        out = dir.join("out").display(),
        db = dir.join("queue.db").display(),
    );
    let p = dir.join("job.toml");
    std::fs::write(&p, text).expect("write the manifest");
    p
}

/// The job's output folder (the one folder under `out/`).
fn job_out(dir: &Path) -> PathBuf {
    let mut jobs: Vec<PathBuf> = std::fs::read_dir(dir.join("out"))
        .expect("the output folder")
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(jobs.len(), 1, "one job folder: {jobs:?}");
    jobs.remove(0)
}

/// Every JSONL row of the job by key.
fn rows(dir: &Path) -> BTreeMap<String, serde_json::Value> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(job_out(dir))
        .expect("the job folder")
        .flatten()
    {
        let name = e.file_name().to_string_lossy().to_string();
        if !(name.starts_with("part-") && name.ends_with(".jsonl")) {
            continue;
        }
        for line in std::fs::read_to_string(e.path()).expect("a part").lines() {
            let v: serde_json::Value = serde_json::from_str(line).expect("a JSON row");
            let key = v["key"].as_str().expect("a key").to_string();
            assert!(out.insert(key.clone(), v).is_none(), "{key}: two rows");
        }
    }
    out
}

/// The checker's JSON summary (its last line).
fn check_embeddings(out: &Path, input: &Path, sample: usize) -> serde_json::Value {
    let o = Command::new(python())
        .arg(root().join("examples/text/check_embeddings.py"))
        .arg(out)
        .arg(input)
        .args(["--sample", &sample.to_string()])
        .output()
        .expect("run the checker");
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "embeddings differ from the numpy reference:\n{stdout}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_str(stdout.lines().last().unwrap_or_default()).expect("a JSON summary")
}

#[test]
fn jsonl_rows_embed_like_a_numpy_forward_pass_of_the_same_weights() {
    let dir = tempfile::tempdir().unwrap();
    let input = first_docs(dir.path(), 120);
    let m = manifest(dir.path(), &input, "split_bytes = 16384", "", "");
    let out = run_ok(spotbatch().args(["run", "--progress", "none"]).arg(&m));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("120 items in"), "{stdout}");
    let rows = rows(dir.path());
    assert_eq!(rows.len(), 120);
    // Keys are FILE#BYTE-OFFSET; the id column is carried under its name.
    let first = rows.values().next().unwrap();
    assert!(first["key"].as_str().unwrap().starts_with("docs.jsonl#"));
    assert!(first["id"].is_i64(), "{first}");
    assert_eq!(first["embedding"].as_array().unwrap().len(), 384);
    let summary = check_embeddings(&job_out(dir.path()), &input, 40);
    assert!(
        summary["min_cosine"].as_f64().unwrap() >= 0.99999,
        "{summary}"
    );
}

#[test]
fn parquet_in_parquet_out_reads_back_with_pyarrow_and_duckdb() {
    let dir = tempfile::tempdir().unwrap();
    // The first 100 docs as Parquet in two row groups, with a carried column.
    let input = dir.path().join("docs.parquet");
    let py = format!(
        r#"
import json, pyarrow as pa, pyarrow.parquet as pq
rows = [json.loads(l) for l in open({src:?}).read().splitlines()[:100]]
t = pa.table({{"id": [r["id"] for r in rows], "text": [r["text"] for r in rows], "source": [r["source"] for r in rows]}})
pq.write_table(t, {dst:?}, row_group_size=50)
"#,
        src = corpus("docs.jsonl").display().to_string(),
        dst = input.display().to_string()
    );
    assert!(Command::new(python())
        .args(["-c", &py])
        .status()
        .unwrap()
        .success());
    let m = manifest(
        dir.path(),
        &input,
        "",
        "format = \"parquet\"\ncolumns = [\"source\"]",
        "",
    );
    std::fs::write(
        &m,
        std::fs::read_to_string(&m)
            .unwrap()
            .replace("format = \"jsonl\"", "format = \"parquet\""),
    )
    .unwrap();
    let out = run_ok(spotbatch().args(["run", "--progress", "none"]).arg(&m));
    assert!(String::from_utf8_lossy(&out.stdout).contains("100 of 100 items"));
    let job = job_out(dir.path());
    let read = format!(
        r#"
import json, duckdb, pyarrow.dataset as ds
d = duckdb.sql("select * from read_parquet('{job}/*.parquet')")
cols = dict(zip(d.columns, [str(t) for t in d.types]))
n = duckdb.sql("select count(*), count(distinct key), count(error) from read_parquet('{job}/*.parquet')").fetchall()[0]
t = ds.dataset("{job}", format="parquet").to_table()
print(json.dumps({{"duckdb_types": cols, "duckdb_counts": list(n), "pyarrow_rows": t.num_rows,
  "pyarrow_schema": {{f.name: str(f.type) for f in t.schema}},
  "ids": sorted(t.column("id").to_pylist())[:3]}}))
"#,
        job = job.display()
    );
    let o = Command::new(python()).args(["-c", &read]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value =
        serde_json::from_slice(o.stdout.trim_ascii_end()).expect("the reader's summary");
    assert_eq!(v["duckdb_counts"], serde_json::json!([100, 100, 0]), "{v}");
    assert_eq!(
        v["pyarrow_rows"], 100,
        "the job's rows and nothing else: {v}"
    );
    let schema = &v["pyarrow_schema"];
    assert_eq!(schema["key"], "string");
    assert_eq!(schema["id"], "int64", "the id in its input type: {v}");
    assert_eq!(schema["source"], "string");
    assert!(
        schema["embedding"]
            .as_str()
            .unwrap()
            .starts_with("fixed_size_list<"),
        "{v}"
    );
    assert_eq!(schema["error"], "string");
    // Parquet has no fixed-size list: duckdb reads it as a list (pyarrow restores the size).
    assert_eq!(v["duckdb_types"]["embedding"], "FLOAT[]", "{v}");
    let summary = check_embeddings(&job, &input, 30);
    assert!(
        summary["min_cosine"].as_f64().unwrap() >= 0.99999,
        "{summary}"
    );
}

#[test]
fn every_line_and_every_csv_record_exactly_once_across_many_small_splits() {
    let dir = tempfile::tempdir().unwrap();
    // JSONL: 1 KiB splits (the smallest allowed), with CRLF line ends and no final newline.
    let text = std::fs::read_to_string(corpus("docs.jsonl")).unwrap();
    let docs: Vec<&str> = text.lines().take(60).collect();
    let input = dir.path().join("docs.jsonl");
    std::fs::write(&input, docs.join("\r\n")).unwrap();
    let m = manifest(dir.path(), &input, "split_bytes = 1024", "", "");
    run_ok(spotbatch().args(["run", "--progress", "none"]).arg(&m));
    let rows = rows(dir.path());
    let want: Vec<i64> = docs
        .iter()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["id"]
                .as_i64()
                .unwrap()
        })
        .collect();
    let mut got: Vec<i64> = rows.values().map(|r| r["id"].as_i64().unwrap()).collect();
    got.sort_unstable();
    let mut want_sorted = want.clone();
    want_sorted.sort_unstable();
    assert_eq!(got, want_sorted, "every line once");
    assert!(rows.values().all(|r| r["error"].is_null()));
    let shards = std::fs::read_dir(job_out(dir.path()).join("_done"))
        .unwrap()
        .count();
    assert!(shards > 10, "many small splits: {shards}");

    // CSV with quoted fields holding newlines and commas, in 1 KiB splits.
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("docs.csv");
    let mut csv = String::from("id,text\n");
    for (i, l) in docs.iter().enumerate() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        let t = v["text"].as_str().unwrap().replace('"', "\"\"");
        csv.push_str(&format!("{i},\"{t}\nsecond line, with a comma\"\n"));
    }
    std::fs::write(&input, csv).unwrap();
    let m = manifest(dir.path(), &input, "split_bytes = 1024", "", "");
    std::fs::write(
        &m,
        std::fs::read_to_string(&m)
            .unwrap()
            .replace("format = \"jsonl\"", "format = \"csv\""),
    )
    .unwrap();
    run_ok(spotbatch().args(["run", "--progress", "none"]).arg(&m));
    let rows = crate::rows(dir.path());
    let mut ids: Vec<String> = rows
        .values()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    ids.sort_by_key(|s| s.parse::<usize>().unwrap());
    let want: Vec<String> = (0..docs.len()).map(|i| i.to_string()).collect();
    assert_eq!(ids, want, "every CSV record once (CSV values are strings)");
    assert!(rows.values().all(|r| r["error"].is_null()), "{rows:?}");
}

#[test]
fn malformed_rows_become_error_rows_and_the_job_completes() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("bad.jsonl");
    std::fs::copy(corpus("bad.jsonl"), &input).unwrap();
    let expect: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(corpus("bad.expect.json")).unwrap()).unwrap();
    let m = manifest(dir.path(), &input, "", "", "");
    let out = run_ok(spotbatch().args(["run", "--progress", "none"]).arg(&m));
    let rows = rows(dir.path());
    let errors: Vec<&serde_json::Value> = rows.values().filter(|r| !r["error"].is_null()).collect();
    let want_errors = expect
        .as_array()
        .expect("the expectation's rows")
        .iter()
        .filter(|r| r["error"].as_bool() == Some(true))
        .count();
    assert_eq!(errors.len(), want_errors, "{rows:#?}");
    for e in &errors {
        let msg = e["error"].as_str().unwrap();
        assert!(!msg.contains('\n'));
        assert!(e["key"].as_str().unwrap().starts_with("bad.jsonl#"), "{e}");
    }
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("{want_errors} error rows")));
}

#[test]
fn a_record_job_killed_and_resumed_has_every_row_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let input = first_docs(dir.path(), 96);
    let m = manifest(dir.path(), &input, "split_bytes = 4096", "", "");
    let mut child = spotbatch()
        .args(["run", "--progress", "none", "--throttle-batch-ms", "150"])
        .arg(&m)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Kill it once a few shards are done.
    let done = |d: &Path| {
        std::fs::read_dir(d.join("out"))
            .ok()
            .and_then(|mut j| j.next())
            .and_then(|j| j.ok())
            .and_then(|j| std::fs::read_dir(j.path().join("_done")).ok())
            .map_or(0, Iterator::count)
    };
    for _ in 0..600 {
        if done(dir.path()) >= 2 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap();
    let _ = child.wait();
    assert!(
        done(dir.path()) >= 2,
        "some shards were done before the kill"
    );
    run_ok(spotbatch().args(["run", "--progress", "none"]).arg(&m));
    let rows = rows(dir.path());
    assert_eq!(rows.len(), 96, "every row once");
    let ids: std::collections::BTreeSet<i64> =
        rows.values().map(|r| r["id"].as_i64().unwrap()).collect();
    assert_eq!(ids.len(), 96);
}

#[test]
fn a_list_names_the_inputs_instead_of_a_listing() {
    let job = JobDir::digits(10);
    let keys = job.input_keys();
    let listed: Vec<&String> = keys.iter().step_by(3).collect();
    let list = job.path().join("list.txt");
    let mut text: String = listed.iter().map(|k| format!("{k}\n")).collect();
    text.push_str("s3://elsewhere/x.png\n");
    std::fs::write(&list, text).unwrap();
    let m = job.manifest(&[(
        "glob = \"**/*.png\"",
        &format!("list = \"{}\"", list.display()),
    )]);
    let out = run_ok(spotbatch().args(["run", "--progress", "none"]).arg(&m));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("s3://elsewhere/x.png") && stderr.contains("outside input.uri"),
        "the unusable entry is named: {stderr}"
    );
    let rows = job.rows();
    let mut got: Vec<&String> = rows.keys().collect();
    got.sort();
    let mut want = listed.clone();
    want.sort();
    assert_eq!(got, want, "exactly the listed inputs");
}

#[test]
fn validate_catches_missing_columns_unusable_tokenizers_and_models_it_cannot_feed() {
    let dir = tempfile::tempdir().unwrap();
    let input = first_docs(dir.path(), 5);
    let check = |m: &Path| {
        let o = spotbatch().arg("validate").arg(m).output().unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stderr).to_string(),
        )
    };
    let good = manifest(dir.path(), &input, "", "", "");
    let o = run_ok(spotbatch().arg("validate").arg(&good));
    assert!(String::from_utf8_lossy(&o.stdout).contains("ok"));
    let text = std::fs::read_to_string(&good).unwrap();
    let cases: HashMap<&str, (String, &str)> = HashMap::from([
        (
            "a text column the rows lack",
            (
                text.replace("kind = \"text\"", "kind = \"text\"\ntext_column = \"body\""),
                "body",
            ),
        ),
        (
            "a tokenizer that is not one",
            (
                text.replace("tokenizer.json", "minilm.onnx"),
                "preprocess.tokenizer:",
            ),
        ),
        (
            "an image model",
            (
                text.replace(
                    &model_dir().join("minilm.onnx").display().to_string(),
                    &root()
                        .join("examples/digits/model.onnx")
                        .display()
                        .to_string(),
                ),
                "model.uri: the model takes \"pixels\", which a tokenizer does not feed",
            ),
        ),
        (
            "a per-token output without pooling",
            (
                text.replace("pooling = \"mean\"", "pooling = \"none\""),
                "postprocess.pooling:",
            ),
        ),
        (
            "records without a text kind",
            (
                text.replace("kind = \"text\"\n", "")
                    .replace("tokenizer = ", "# ")
                    .replace("max_length = 128", ""),
                "preprocess.kind:",
            ),
        ),
    ]);
    for (what, (manifest_text, want)) in cases {
        std::fs::write(&good, &manifest_text).unwrap();
        let (code, err) = check(&good);
        assert_eq!(code, Some(2), "{what}: exit 2\n{err}");
        assert!(err.contains(want), "{what}: wants {want:?} in\n{err}");
        assert!(
            err.lines().count() <= 3,
            "{what}: one line per problem\n{err}"
        );
    }
}

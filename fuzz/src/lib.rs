//! The fuzz targets: one function per decoder of bytes spotbatch does not control, each asserting
//! its property on any input — no panic, and malformed input yields the typed error its caller
//! turns into an error row, a dead letter or a one-line message. Hangs and memory are bounded by
//! the fuzzer's `-timeout` and `-rss_limit_mb` (`make fuzz`).
//!
//! `fuzz_targets/NAME.rs` hands libFuzzer's input to the function `NAME` here (`cargo fuzz run
//! NAME`, through `make fuzz`); `tests/fuzz_replay.rs` runs every file of `corpus/NAME/` through
//! it on the stable toolchain (`make test`), so seeds and the inputs of fixed crashes stay checked.
//!
//! | target | decoder | malformed input becomes |
//! | --- | --- | --- |
//! | [`manifest`] | `Manifest::parse` (TOML + validation) | one [`FieldError`] per problem, naming its field |
//! | [`stored_manifest`] | `Manifest::from_stored` (`_manifest.json`) | [`FieldError`]s → the shard's `JobError` (retried, then dead-lettered) |
//! | [`shard_task`] | `ShardTask::from_bytes` (SQLite, Kafka payloads, hand-offs) | `TaskError` → [`Policy::DeadLetter`] |
//! | [`sqs_message`] | the SQS body decoding, then `ShardTask::from_bytes` | the same; and every body sent comes back as it was |
//! | [`queue_uri`] | the SQLite, SQS and Kafka queue URIs | `QueueError::InvalidUri` |
//! | [`state_files`] | done markers and cost ledgers read back, then the cost report and timeline | `ReadError::Parse` naming the file |
//! | [`partial`] | a drained shard's partial result (`_partial/SHARD.jsonl`) | the line is not kept (its item is redone) |
//! | [`notices`] | AWS, GCP and Azure metadata answers | a one-line [`ResponseError`] (logged, asked again) |
//! | [`image`] | `ImagePreprocessor::prepare` under `preprocess.max_pixels` | `ItemError::Input` → [`Policy::ErrorRow`] |
//! | [`records_text`] | JSONL and CSV files cut into byte-range splits, framed and decoded | a `RowError` per record (an error row), or a one-line `ReadError` for a CSV without a header |
//! | [`records_parquet`] | Parquet files: footer, row groups, projection | a one-line `ReadError` (the shard fails and is retried, then dead-lettered) |
//!
//! [`ResponseError`]: spotbatch_worker::notice::ResponseError

use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use serde_json::Value;
use spotbatch_proto::{FieldError, Manifest, ShardTask};
use spotbatch_queue::QueueError;
use spotbatch_store::layout::ReadError;
use spotbatch_store::JobFiles;
use spotbatch_worker::error::{ItemError, Policy, ShardError};
use spotbatch_worker::model::InputPlan;
use spotbatch_worker::notice::{self, NoticeAction};
use spotbatch_worker::preprocess::{ImagePreprocessor, ImageTarget, ModelInput, Preprocessor};
use spotbatch_worker::sink::{JsonlSink, Row};
use spotbatch_worker::source::Payload;

/// A target: takes any bytes, panics when its property does not hold.
pub type Target = fn(&[u8]);

/// Every target by name (the name of its `fuzz_targets/` file and `corpus/` folder).
pub const TARGETS: &[(&str, Target)] = &[
    ("manifest", manifest),
    ("stored_manifest", stored_manifest),
    ("shard_task", shard_task),
    ("sqs_message", sqs_message),
    ("queue_uri", queue_uri),
    ("state_files", state_files),
    ("partial", partial),
    ("notices", notices),
    ("image", image),
    ("records_text", records_text),
    ("records_parquet", records_parquet),
];

/// A message that ends up in a log line, a dead letter's reason or a row: one line, not empty.
fn assert_one_line(what: &str, message: &str) {
    assert!(!message.trim().is_empty(), "{what}: empty message");
    assert!(
        !message.contains(['\n', '\r']),
        "{what}: not one line: {message:?}"
    );
}

/// A manifest's problems: at least one, each one line.
fn assert_field_errors(errs: &[FieldError]) {
    assert!(!errs.is_empty(), "a refused manifest names a problem");
    for e in errs {
        assert_one_line("manifest problem", &e.to_string());
    }
}

/// Manifest text (`spotbatch run/validate/submit`): parse and validate. A valid manifest's
/// canonical TOML and stored form read back to the same job.
pub fn manifest(data: &[u8]) {
    // `Manifest::load` refuses a file that is not UTF-8 before parsing it.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let base = Path::new("/jobs/j");
    match Manifest::parse(text, base) {
        Ok(m) => {
            let again = Manifest::parse(&m.to_toml(), base).expect("the canonical TOML parses");
            assert_eq!(again, m, "the canonical TOML is the same manifest");
            let stored = Manifest::from_stored(&m.to_stored()).expect("the stored form reads back");
            assert_eq!(
                (&stored.job_id, &stored.digest, &stored.output),
                (&m.job_id, &m.digest, &m.output)
            );
            assert_eq!((&stored.input, &stored.model), (&m.input, &m.model));
        }
        Err(errs) => assert_field_errors(&errs),
    }
}

/// A stored manifest (`OUTPUT/JOB/_manifest.json`, fetched by a worker from a shard's reference).
/// What reads back stores again with the same job and locations (its location strings written
/// as URLs), and that stored form is a fixed point.
pub fn stored_manifest(data: &[u8]) {
    match Manifest::from_stored(data) {
        Ok(m) => {
            let again = Manifest::from_stored(&m.to_stored()).expect("stores again");
            let job = |m: &Manifest| {
                (
                    m.job_id.clone(),
                    m.digest.clone(),
                    m.input.clone(),
                    m.model.clone(),
                    m.labels.clone(),
                    m.output.clone(),
                    m.queue_uri.clone(),
                )
            };
            assert_eq!(job(&again), job(&m), "the same job, in the same places");
            let third = Manifest::from_stored(&again.to_stored()).expect("stores again");
            assert_eq!(third, again, "the stored form is a fixed point");
        }
        Err(errs) => assert_field_errors(&errs),
    }
}

/// One queue payload as the worker reads it (SQLite bodies, Kafka record payloads, shards handed
/// over by peers): a shard, or a message that is dead-lettered at once.
pub fn shard_task(data: &[u8]) {
    match ShardTask::from_bytes(data) {
        Ok(task) => {
            assert!(!task.keys.is_empty() && !task.shard.is_empty() && !task.job.is_empty());
            let again = ShardTask::from_bytes(&task.to_bytes()).expect("a shard reads back");
            assert_eq!(again, task);
        }
        Err(e) => {
            let e = ShardError::from(e);
            assert_eq!(e.policy(), Policy::DeadLetter);
            assert_one_line("dead-letter reason", &e.to_string());
        }
    }
}

/// An SQS message: the first byte picks its `spotbatch-encoding` attribute (none, `base64`, or
/// one this build does not know), the rest is its body text. The payload goes to the shard
/// decoder; and any payload sent comes back byte for byte.
pub fn sqs_message(data: &[u8]) {
    let (encoding, body) = match data.split_first() {
        Some((b, rest)) => (
            match b % 3 {
                0 => None,
                1 => Some("base64"),
                _ => Some("gzip"),
            },
            rest,
        ),
        None => (None, data),
    };
    // SQS bodies are text; SDK strings are UTF-8.
    let text = String::from_utf8_lossy(body);
    shard_task(&spotbatch_queue::sqs::decode_body(&text, encoding));
    let (sent, encoding) = spotbatch_queue::sqs::encode_body(data);
    assert_eq!(
        spotbatch_queue::sqs::decode_body(&sent, encoding),
        data,
        "an SQS body comes back as it was sent"
    );
}

/// A queue URI (from a manifest or the command line), read by each backend's parser.
pub fn queue_uri(data: &[u8]) {
    let Ok(uri) = std::str::from_utf8(data) else {
        return;
    };
    let check = |r: Result<(), QueueError>| {
        if let Err(e) = r {
            assert!(
                matches!(&e, QueueError::InvalidUri { uri: u, .. } if u == uri),
                "a bad queue uri is InvalidUri: {e}"
            );
        }
    };
    check(
        spotbatch_queue::sqlite::parse_uri(uri).map(|(path, queue)| {
            assert!(!path.as_os_str().is_empty() && !queue.is_empty());
        }),
    );
    check(spotbatch_queue::sqs::parse_uri(uri).map(|t| {
        assert!((1..=80).contains(&t.name.len()));
    }));
    check(spotbatch_queue::kafka::parse_uri(uri).map(|t| {
        assert!(!t.brokers.is_empty() && !t.topic.is_empty());
        assert!((1..=10_000).contains(&t.partitions));
    }));
}

/// A job's files as `spotbatch cost` and `spotbatch report` read them back: files separated by
/// 0xFF bytes (never in JSON text), each one's first byte picking its key (a done marker, a cost
/// ledger, or another file of the job), then the cost report and timeline computed from them.
pub fn state_files(data: &[u8]) {
    let mut files = JobFiles::default();
    for file in data.split(|b| *b == 0xFF) {
        let Some((kind, bytes)) = file.split_first() else {
            continue;
        };
        let key = match kind % 3 {
            0 => "_done/0123456789abcdef.json",
            1 => "_cost/worker-1.json",
            _ => "part-0123456789abcdef.jsonl",
        };
        match files.add(key, bytes) {
            Ok(state) => assert_eq!(state, kind % 3 != 2, "{key}: recognised by its key"),
            Err(ReadError::Parse {
                key: k, message, ..
            }) => {
                assert_eq!(k, key, "the error names the file");
                assert_one_line("parse error", &message);
            }
            Err(e) => panic!("reading bytes gave a storage error: {e}"),
        }
    }
    let report = spotbatch_store::cost::report("job-1", &files.ledgers, &files.markers);
    let timeline = spotbatch_store::timeline::build("job-1", &files.ledgers, &files.markers);
    serde_json::to_string(&report).expect("the cost report serialises");
    serde_json::to_string(&timeline).expect("the timeline serialises");
}

/// A drained shard's partial result, read back on resume: the rows kept are JSON lines with their
/// key, and written out again (in the part file, or the next partial result) read back the same.
pub fn partial(data: &[u8]) {
    let kept = spotbatch_worker::parse_partial(data);
    let mut rows = Vec::with_capacity(kept.len());
    for (key, row) in &kept {
        let Row::Kept { line, error } = row else {
            panic!("a partial result gives kept rows");
        };
        assert!(!line.contains('\n'), "a kept row is one line");
        let v: Value = serde_json::from_str(line).expect("a kept row is JSON");
        assert_eq!(v.get("key").and_then(Value::as_str), Some(key.as_str()));
        assert_eq!(*error, !v.get("error").is_none_or(Value::is_null));
        rows.push(row.clone());
    }
    let written = JsonlSink::new(Vec::new())
        .encode(&rows)
        .expect("kept rows encode");
    let again = spotbatch_worker::parse_partial(&written);
    assert_eq!(again.len(), kept.len(), "every kept row reads back");
    for (key, row) in &again {
        let (Some(Row::Kept { line: a, error: ea }), Row::Kept { line: b, error: eb }) =
            (kept.get(key), row)
        else {
            panic!("{key:?}: read back a row that was not kept");
        };
        let (a, b): (Value, Value) = (
            serde_json::from_str(a).expect("JSON"),
            serde_json::from_str(b).expect("JSON"),
        );
        assert_eq!((a, ea), (b, eb), "{key:?}: reads back the same");
    }
}

/// A metadata service's answer: the first byte picks the request (AWS instance-action, AWS
/// rebalance recommendation, GCP `preempted`, Azure Scheduled Events), the rest is its body.
pub fn notices(data: &[u8]) {
    let Some((which, body)) = data.split_first() else {
        return;
    };
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let text = String::from_utf8_lossy(body);
    let checked = |r: Result<Option<notice::Notice>, notice::ResponseError>| match r {
        Ok(n) => n,
        Err(e) => {
            assert_one_line("metadata error", &e.to_string());
            None
        }
    };
    let n = match which % 4 {
        0 => checked(notice::parse_aws_instance_action(&text).map(Some)),
        1 => checked(notice::parse_aws_rebalance(&text, NoticeAction::StopLeasing, now).map(Some))
            .inspect(|n| assert_eq!(n.action, NoticeAction::StopLeasing)),
        2 => notice::parse_gcp_preempted(&text, now, Duration::from_secs(30))
            .inspect(|n| assert_eq!(n.deadline, now + Duration::from_secs(30))),
        _ => checked(notice::parse_azure_events(body, "vm-7", now))
            .inspect(|n| assert!(n.event_id.is_some(), "an Azure notice has its event id")),
    };
    if let Some(n) = n {
        assert!(["aws", "gcp", "azure"].contains(&n.source));
    }
}

/// One image preprocessor configuration and its pixel limit.
struct ImageCase {
    prep: ImagePreprocessor,
    max_pixels: u64,
}

/// The configurations images are fed to: gray and colour, tensors and pixels (the GPU path),
/// resizing or not, the default pixel limit and a small one.
fn image_cases() -> &'static [ImageCase] {
    static CASES: OnceLock<Vec<ImageCase>> = OnceLock::new();
    CASES.get_or_init(|| {
        let case = |pre: &str, size: (u32, u32), target: ImageTarget| {
            let text = format!(
                "name = \"f\"\n[input]\nuri = \"i\"\n[model]\nuri = \"m.onnx\"\n[output]\nuri = \"o\"\n[preprocess]\n{pre}\n"
            );
            let m = Manifest::parse(&text, Path::new("/x")).expect("a fuzz manifest");
            let plan = InputPlan {
                width: size.0,
                height: size.1,
                item_shape: vec![],
                item_len: 0,
                fixed_batch: None,
            };
            ImageCase {
                prep: ImagePreprocessor::new(&m, &plan).with_target(target),
                max_pixels: m.raw.preprocess.max_pixels,
            }
        };
        vec![
            case(
                "color = \"gray\"\nresize = [8, 8]",
                (8, 8),
                ImageTarget::Tensor,
            ),
            case(
                "color = \"rgb\"\nlayout = \"nhwc\"\nresize = [16, 12]",
                (16, 12),
                ImageTarget::Pixels,
            ),
            case("color = \"bgr\"", (8, 8), ImageTarget::Tensor),
            case(
                "color = \"rgb\"\nresize = [8, 8]\nmax_pixels = 256",
                (8, 8),
                ImageTarget::Tensor,
            ),
        ]
    })
}

/// An input file through the image preprocessor (the input's length picks the configuration, so
/// the seeds are plain image files): model input of the right size, or the item's error row.
pub fn image(data: &[u8]) {
    let cases = image_cases();
    let case = &cases[data.len() % cases.len()];
    let payload = Payload::Object(bytes::Bytes::copy_from_slice(data));
    match case.prep.prepare(&payload) {
        Ok(ModelInput::Values(v)) => {
            assert_eq!(v.len(), case.prep.item_len());
            assert!(v.iter().all(|x| x.is_finite()));
        }
        Ok(ModelInput::Pixels(p)) => {
            let pixels = u64::from(p.width) * u64::from(p.height);
            assert!(pixels > 0 && pixels <= case.max_pixels, "within max_pixels");
            assert_eq!(p.rgb.len() as u64, pixels * 3);
        }
        Ok(ModelInput::Tokens(_)) => panic!("an image preprocessor made tokens"),
        Err(e) => {
            assert!(
                matches!(e, ItemError::Input(_)),
                "an undecodable image: {e:?}"
            );
            let e = ShardError::Item {
                key: "k".into(),
                error: e,
            };
            assert_eq!(e.policy(), Policy::ErrorRow);
            assert_one_line("error row", &e.to_string());
        }
    }
}

/// The projection the record targets read: text `text`, id `id`, one carried column `lang`.
fn record_projection() -> spotbatch_records::Projection {
    use spotbatch_records::Column;
    spotbatch_records::Projection {
        text: Some("text".into()),
        id: Some(Column::named("id")),
        columns: vec![Column::named("lang")],
    }
}

/// The records as comparable lines (key and fields or error), checking each error is one line.
fn record_lines(records: &[spotbatch_records::Record]) -> Vec<String> {
    records
        .iter()
        .map(|r| {
            if let Err(e) = &r.fields {
                assert_one_line("row error", &e.to_string());
            }
            format!("{} {:?}", r.key, r.fields)
        })
        .collect()
}

/// A JSONL or CSV file (the first byte picks the format, CSV's quoted newlines, a small
/// `max_line_bytes` or not, and into how many byte ranges the file is cut; the rest is the file):
/// every record is read exactly once whichever ranges the file is cut into (the same records, in
/// the same order, as one range over the whole file), malformed rows become row errors of one
/// line, and a CSV without a usable header is a one-line `ReadError`.
pub fn records_text(data: &[u8]) {
    use spotbatch_proto::split::{ByteSplit, Split};
    let Some((&knobs, file)) = data.split_first() else {
        return;
    };
    let csv = knobs & 1 == 1;
    let mut opts = spotbatch_records::ReadOptions::default();
    opts.csv.quoted_newlines = knobs & 2 == 0;
    if knobs & 4 != 0 {
        opts.max_line_bytes = 64;
    }
    let pieces = 1 + usize::from(knobs >> 3) % 7;
    let proj = record_projection();
    let size = file.len() as u64;
    let split = |start: u64, end: u64| {
        let b = ByteSplit {
            key: if csv { "f.csv" } else { "f.jsonl" }.into(),
            size,
            start,
            end,
        };
        if csv {
            Split::Csv(b)
        } else {
            Split::Jsonl(b)
        }
    };
    let whole = match spotbatch_records::read_bytes(file, &split(0, size), &proj, &opts) {
        Ok(records) => record_lines(&records),
        Err(e) => {
            assert!(csv, "only a CSV header fails a whole read: {e}");
            assert_one_line("read error", &e.to_string());
            return;
        }
    };
    let step = size.div_ceil(pieces as u64).max(1);
    let mut pieced = Vec::new();
    let mut start = 0;
    while start < size {
        let end = (start + step).min(size);
        let records = spotbatch_records::read_bytes(file, &split(start, end), &proj, &opts)
            .expect("a range reads when the whole file does");
        pieced.extend(record_lines(&records));
        start = end;
    }
    assert_eq!(
        pieced, whole,
        "records read in {pieces} ranges differ from one range"
    );
}

/// A Parquet file (the first byte picks the rows per split, the rest is the file): its rows, or
/// a one-line `ReadError`; row errors are one line; and the same rows whatever the split size.
pub fn records_parquet(data: &[u8]) {
    #[cfg(feature = "libfuzzer")]
    let_decoder_panics_unwind();
    let Some((&knob, file)) = data.split_first() else {
        return;
    };
    let rt = record_runtime();
    let proj = record_projection();
    let opts = spotbatch_records::ReadOptions::default();
    let bytes = bytes::Bytes::copy_from_slice(file);
    let read = |max_rows: u64| {
        rt.block_on(spotbatch_records::read_parquet_bytes(
            bytes.clone(),
            max_rows,
            &proj,
            &opts,
        ))
    };
    match read(u64::MAX) {
        Ok(records) => {
            let whole = record_lines(&records);
            let small = read(1 + u64::from(knob % 16))
                .expect("a file that reads in one split reads in several");
            assert_eq!(
                record_lines(&small),
                whole,
                "the same rows in smaller splits"
            );
        }
        Err(e) => assert_one_line("read error", &e.to_string()),
    }
}

/// Under libFuzzer every panic aborts (its hook), before the reader's `catch_unwind` could contain
/// it; the reader contains panics of the parquet and arrow crates on corrupt files (finding 7), so
/// those unwind as they do in a worker, and the property is checked on the error they become.
/// Any other panic still aborts.
#[cfg(feature = "libfuzzer")]
fn let_decoder_panics_unwind() {
    static SET: std::sync::Once = std::sync::Once::new();
    SET.call_once(|| {
        let fuzzer_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let contained = info.location().is_some_and(|l| {
                let f = l.file();
                // The registry's crates, and parquet as carried in vendor/ (see its README).
                f.contains("/parquet-") || f.contains("/arrow-") || f.contains("vendor/parquet/")
            });
            if !contained {
                fuzzer_hook(info);
            }
        }));
    });
}

/// One current-thread runtime for the Parquet target (the reader is async).
fn record_runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime")
    })
}

//! Manifest validation: one test per kind of mistake, each checking the field named and the message.

use std::path::Path;

use spotbatch_proto::manifest::{Color, Layout, PostKind};
use spotbatch_proto::{Deadline, FieldError, Manifest, ShardSize};

const GOOD: &str = r#"
name = "digits"
[input]
uri = "./images"
glob = "**/*.png"
[model]
uri = "./model.onnx"
input = "pixels"
output = "probs"
batch_size = 32
[preprocess]
resize = [8, 8]
color = "gray"
layout = "nchw"
scale = 0.00392156862745098
mean = [0.0]
std = [1.0]
[postprocess]
kind = "classify"
top_k = 3
labels = "./labels.txt"
softmax = false
[output]
uri = "./out"
[queue]
uri = "sqlite://./queue.db"
shard_size = 256
visibility_timeout_secs = 60
max_attempts = 3
"#;

fn errors(text: &str) -> Vec<FieldError> {
    Manifest::parse(text, Path::new("/jobs/demo")).expect_err("manifest should be refused")
}

fn only(text: &str) -> FieldError {
    let errs = errors(text);
    assert_eq!(errs.len(), 1, "expected one problem, got {errs:?}");
    errs.into_iter().next().unwrap()
}

#[test]
fn the_documented_example_is_valid_and_resolved() {
    let m = Manifest::parse(GOOD, Path::new("/jobs/demo")).unwrap();
    assert_eq!(m.input.as_str(), "file:///jobs/demo/images/");
    assert_eq!(m.model.as_str(), "file:///jobs/demo/model.onnx");
    assert_eq!(
        m.labels.as_ref().unwrap().as_str(),
        "file:///jobs/demo/labels.txt"
    );
    assert!(
        m.output
            .as_str()
            .starts_with("file:///jobs/demo/out/digits-"),
        "{}",
        m.output
    );
    assert_eq!(m.queue_uri, "sqlite:///jobs/demo/queue.db");
    assert_eq!(m.raw.preprocess.color, Color::Gray);
    assert_eq!(m.raw.preprocess.layout, Layout::Nchw);
    assert_eq!(m.raw.postprocess.kind, PostKind::Classify);
    assert_eq!((m.mean.clone(), m.std.clone()), (vec![0.0], vec![1.0]));
    assert!(m.job_id.starts_with("digits-") && m.job_id.len() == "digits-".len() + 12);
}

#[test]
fn job_id_is_stable_and_ignores_how_the_job_is_run() {
    let a = Manifest::parse(GOOD, Path::new("/jobs/demo")).unwrap();
    // Comments, formatting, folder location, queue settings and batch size do not change the job.
    let moved = Manifest::parse(
        &format!(
            "# a comment\n{}",
            GOOD.replace("batch_size = 32", "batch_size = 8").replace(
                "visibility_timeout_secs = 60",
                "visibility_timeout_secs = 120"
            )
        ),
        Path::new("/elsewhere"),
    )
    .unwrap();
    assert_eq!(a.job_id, moved.job_id);
    // What changes the rows changes the job.
    let other = Manifest::parse(
        &GOOD.replace("top_k = 3", "top_k = 4"),
        Path::new("/jobs/demo"),
    )
    .unwrap();
    assert_ne!(a.job_id, other.job_id);
}

#[test]
fn defaults_fill_optional_sections() {
    let m = Manifest::parse("name = \"x\"\n[input]\nuri = \"in\"\n[model]\nuri = \"m.onnx\"\n[output]\nuri = \"s3://bucket/out\"\n", Path::new("/w")).unwrap();
    assert_eq!(m.raw.model.batch_size, 32);
    assert_eq!(m.raw.queue.shard_size, ShardSize::Items(256));
    assert_eq!(m.deadline, None);
    assert!(m.raw.job.is_unset());
    assert_eq!(m.raw.queue.visibility_timeout_secs, 60);
    assert_eq!(m.raw.queue.max_attempts, 3);
    assert_eq!(m.queue_uri, "sqlite:///w/queue.db");
    assert_eq!(m.raw.preprocess.color, Color::Rgb);
    assert_eq!(m.mean, vec![0.0; 3]);
    assert_eq!(m.std, vec![1.0; 3]);
    assert!(m.output.as_str().starts_with("s3://bucket/out/x-"));
}

#[test]
fn unknown_key_names_the_field() {
    let e = only(&GOOD.replace("top_k = 3", "top_k = 3\ntopk = 3"));
    assert_eq!(e.field, "postprocess.topk");
    // In the manifest's terms (keys), with the key meant.
    assert_eq!(e.message, "unknown key (did you mean top_k?)", "{e}");
}

#[test]
fn unknown_top_level_section() {
    let e = only(&format!("{GOOD}\n[extra]\nx = 1\n"));
    assert_eq!(e.field, "extra");
    assert!(e.message.contains("unknown key"), "{e}");
}

#[test]
fn wrong_type_names_the_field() {
    let e = only(&GOOD.replace("batch_size = 32", "batch_size = \"big\""));
    assert_eq!(e.field, "model.batch_size");
    assert_eq!(
        e.message, "expected a whole number, 0 or more, found \"big\"",
        "{e}"
    );
}

#[test]
fn bad_enum_value() {
    let e = only(&GOOD.replace("color = \"gray\"", "color = \"cmyk\""));
    assert_eq!(e.field, "preprocess.color");
    assert!(e.message.contains("cmyk"), "{e}");
}

#[test]
fn missing_required_field() {
    let e = only(&GOOD.replace("uri = \"./model.onnx\"", ""));
    assert_eq!(e.field, "model.uri");
    assert_eq!(e.message, "missing");
    let e = only(&GOOD.replace("name = \"digits\"", ""));
    assert_eq!(e.field, "name");
}

#[test]
fn mean_std_length_must_match_channels() {
    let errs = errors(
        &GOOD
            .replace("mean = [0.0]", "mean = [0.485, 0.456, 0.406]")
            .replace("std = [1.0]", "std = [0.2, 0.2]"),
    );
    let lines: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
    assert_eq!(
        lines,
        vec![
            "preprocess.mean: has 3 values, but color = \"gray\" has 1 channel".to_string(),
            "preprocess.std: has 2 values, but color = \"gray\" has 1 channel".to_string(),
        ]
    );
}

#[test]
fn every_problem_is_reported_at_once_one_line_each() {
    let bad = GOOD
        .replace("name = \"digits\"", "name = \"bad name!\"")
        .replace("batch_size = 32", "batch_size = 0")
        .replace("shard_size = 256", "shard_size = 0")
        .replace("std = [1.0]", "std = [0.0]")
        .replace("resize = [8, 8]", "resize = [0, 8]");
    let errs = errors(&bad);
    let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
    for f in [
        "name",
        "model.batch_size",
        "queue.shard_size",
        "preprocess.std",
        "preprocess.resize",
    ] {
        assert!(fields.contains(&f), "{f} not reported in {fields:?}");
    }
    assert!(errs.iter().all(|e| !e.to_string().contains('\n')));
}

#[test]
fn resize_must_be_two_numbers() {
    let e = only(&GOOD.replace("resize = [8, 8]", "resize = [8, 8, 8]"));
    assert_eq!(e.field, "preprocess.resize");
}

#[test]
fn options_for_other_kinds_are_refused() {
    let e = only(&GOOD.replace("kind = \"classify\"", "kind = \"embedding\""));
    // labels/softmax=false: labels is set, so it is named.
    assert_eq!(e.field, "postprocess.labels");
}

#[test]
fn bad_locations() {
    let e = only(&GOOD.replace("uri = \"./out\"", "uri = \"ftp://host/out\""));
    assert_eq!(e.field, "output.uri");
    assert!(e.message.contains("unsupported scheme"), "{e}");
    let e = only(&GOOD.replace("sqlite://./queue.db", "redis://q"));
    assert_eq!(e.field, "queue.uri");
    let e = only(&GOOD.replace("glob = \"**/*.png\"", "glob = \"[*.png\""));
    assert_eq!(e.field, "input.glob");
}

#[test]
fn toml_syntax_error_names_the_line() {
    let e = only("name = \"x\"\n[input\nuri = 1\n");
    assert_eq!(e.field, "");
    assert!(e.message.starts_with("line 2:"), "{e}");
}

#[test]
fn load_prefixes_every_line_with_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("job.toml");
    std::fs::write(
        &path,
        GOOD.replace("top_k = 3", "top_k = 0")
            .replace("max_attempts = 3", "max_attempts = 0"),
    )
    .unwrap();
    let msg = Manifest::load(&path).unwrap_err().to_string();
    let lines: Vec<&str> = msg.lines().collect();
    assert_eq!(lines.len(), 2, "{msg}");
    assert!(
        lines
            .iter()
            .all(|l| l.starts_with(&format!("{}: ", path.display()))),
        "{msg}"
    );
    assert!(
        msg.contains("postprocess.top_k: must be at least 1"),
        "{msg}"
    );
    let missing = Manifest::load(&dir.path().join("nope.toml"))
        .unwrap_err()
        .to_string();
    assert!(missing.contains("nope.toml: cannot read"), "{missing}");
}

#[test]
fn stored_manifest_round_trips_with_its_identity() {
    let m = Manifest::parse(GOOD, Path::new("/jobs/demo")).unwrap();
    let back = Manifest::from_stored(&m.to_stored()).unwrap();
    assert_eq!(back.job_id, m.job_id);
    assert_eq!(back.digest, m.digest);
    assert_eq!(back.input, m.input);
    assert_eq!(back.model, m.model);
    assert_eq!(back.labels, m.labels);
    assert_eq!(back.output, m.output);
    assert_eq!(back.queue_uri, m.queue_uri);
    assert_eq!(back.mean, m.mean);
    assert!(Manifest::from_stored(b"{\"x\":1}").is_err());
}

/// Found by fuzzing: a stored manifest's job id names its output prefix, and was taken as it
/// stood; `name-0123#x` put the outputs in another folder (`#` starts a URL fragment).
#[test]
fn stored_manifest_refuses_a_job_id_that_is_not_its_name_and_digest() {
    let m = Manifest::parse(GOOD, Path::new("/jobs/demo")).unwrap();
    let stored = String::from_utf8(m.to_stored()).unwrap();
    for (from, to, field) in [
        (m.job_id.clone(), format!("{}#x", m.job_id), "job_id"),
        (m.job_id.clone(), "../../elsewhere".to_string(), "job_id"),
        (
            m.digest.clone(),
            format!("{}/..", &m.digest[..61]),
            "digest",
        ),
    ] {
        let errs = Manifest::from_stored(stored.replace(&from, &to).as_bytes()).unwrap_err();
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].field, field, "{errs:?}");
    }
}

/// Found by fuzzing: a stored manifest writes local locations as file URLs, percent-encoded; read
/// back they named another folder (`my images` became `my%20images`), so a worker loading the
/// stored manifest looked for its inputs, model and outputs in the wrong places.
#[test]
fn stored_manifest_keeps_local_paths_that_urls_escape() {
    let text = GOOD
        .replace("./images", "./my images/100%/ünï?")
        .replace("./model.onnx", "./models #2/model.onnx")
        .replace("./out", "./out put");
    let m = Manifest::parse(&text, Path::new("/jobs/my demo")).unwrap();
    assert_eq!(
        m.input.to_file_path().unwrap(),
        Path::new("/jobs/my demo/my images/100%/ünï?")
    );
    let back = Manifest::from_stored(&m.to_stored()).unwrap();
    assert_eq!(back.input, m.input);
    assert_eq!(back.model, m.model);
    assert_eq!(back.labels, m.labels);
    assert_eq!(back.output, m.output);
    // A file URL written by hand is read the same way.
    let by_url = GOOD.replace("./images", "file:///data/my%20images");
    let m = Manifest::parse(&by_url, Path::new("/jobs")).unwrap();
    assert_eq!(
        m.input.to_file_path().unwrap(),
        Path::new("/data/my images")
    );
}

/// `[model]`'s CUDA provider settings: parsed, checked, kept by a stored manifest, absent from
/// it when unset, and no part of the job's identity (they change how rows are computed).
#[test]
fn cuda_settings_are_parsed_checked_and_not_part_of_the_job() {
    use spotbatch_proto::manifest::ConvAlgoSearch;
    let plain = Manifest::parse(GOOD, Path::new("/jobs/demo")).unwrap();
    assert_eq!(plain.raw.model.cudnn_conv_algo_search, None);
    assert_eq!(plain.raw.model.tf32, None);
    assert_eq!(plain.raw.model.gpu_mem_limit_mb, None);
    let stored = String::from_utf8(plain.to_stored()).unwrap();
    for key in ["cudnn_conv_algo_search", "tf32", "gpu_mem_limit_mb"] {
        assert!(!stored.contains(key), "{key} stored while unset: {stored}");
    }

    let text = GOOD.replace(
        "batch_size = 32",
        "batch_size = 32\ncudnn_conv_algo_search = \"heuristic\"\ntf32 = false\ngpu_mem_limit_mb = 2048",
    );
    let m = Manifest::parse(&text, Path::new("/jobs/demo")).unwrap();
    assert_eq!(
        m.raw.model.cudnn_conv_algo_search,
        Some(ConvAlgoSearch::Heuristic)
    );
    assert_eq!(m.raw.model.tf32, Some(false));
    assert_eq!(m.raw.model.gpu_mem_limit_mb, Some(2048));
    assert_eq!(m.job_id, plain.job_id);
    let back = Manifest::from_stored(&m.to_stored()).unwrap();
    assert_eq!(
        (
            back.raw.model.cudnn_conv_algo_search,
            back.raw.model.tf32,
            back.raw.model.gpu_mem_limit_mb
        ),
        (Some(ConvAlgoSearch::Heuristic), Some(false), Some(2048))
    );
    for (value, want) in [
        ("exhaustive", ConvAlgoSearch::Exhaustive),
        ("default", ConvAlgoSearch::Default),
    ] {
        let m = Manifest::parse(
            &GOOD.replace(
                "batch_size = 32",
                &format!("batch_size = 32\ncudnn_conv_algo_search = \"{value}\""),
            ),
            Path::new("/jobs/demo"),
        )
        .unwrap();
        assert_eq!(m.raw.model.cudnn_conv_algo_search, Some(want));
    }

    let e = only(&GOOD.replace(
        "batch_size = 32",
        "batch_size = 32\ncudnn_conv_algo_search = \"fastest\"",
    ));
    assert_eq!(e.field, "model.cudnn_conv_algo_search");
    assert!(
        e.message.contains("fastest") && e.message.contains("heuristic"),
        "{e}"
    );
    let e = only(&GOOD.replace("batch_size = 32", "batch_size = 32\ntf32 = \"no\""));
    assert_eq!(e.field, "model.tf32");
    for mb in ["0", "16777217"] {
        let e = only(&GOOD.replace(
            "batch_size = 32",
            &format!("batch_size = 32\ngpu_mem_limit_mb = {mb}"),
        ));
        assert_eq!(e.field, "model.gpu_mem_limit_mb");
        assert!(e.message.contains("out of range"), "{e}");
    }
    let e = only(&GOOD.replace("batch_size = 32", "batch_size = 32\ngpu_mem_limit_mb = -1"));
    assert_eq!(e.field, "model.gpu_mem_limit_mb");
}

/// Issue 21, item 9: every problem of a table, not only the first; checks of the readable values
/// beside the keys that cannot be read; suggestions; enum values in any case.
#[test]
fn every_problem_of_a_table_is_reported_with_the_key_meant() {
    let errs = errors(
        &GOOD
            .replace(
                "batch_size = 32",
                "batch_size = 0\nbatchsize = 8\nthreads = 2",
            )
            .replace("resize = [8, 8]", "resize = \"8x8\"")
            .replace("layout = \"nchw\"", "layout = \"NCHW\"")
            .replace("[postprocess]", "[postprocessing]"),
    );
    let lines: Vec<String> = errs.iter().map(ToString::to_string).collect();
    assert_eq!(lines.len(), 5, "{lines:#?}");
    assert_eq!(
        lines[0],
        "postprocessing: unknown key (did you mean postprocess?)"
    );
    assert_eq!(
        lines[1],
        "model.batchsize: unknown key (did you mean batch_size?)"
    );
    assert!(
        lines[2].starts_with("model.threads: unknown key (known keys: uri, "),
        "{}",
        lines[2]
    );
    assert_eq!(
        lines[3],
        "preprocess.resize: expected a list of 2 values, found \"8x8\""
    );
    assert_eq!(lines[4], "model.batch_size: 0 is out of range 1..=65536");
}

#[test]
fn enum_values_and_devices_are_taken_in_any_case() {
    let m = Manifest::parse(
        &GOOD
            .replace("color = \"gray\"", "color = \"GRAY\"")
            .replace("layout = \"nchw\"", "layout = \"NCHW\"")
            .replace("kind = \"classify\"", "kind = \"Classify\"")
            .replace("batch_size = 32", "batch_size = 32\ndevice = \"CPU\""),
        Path::new("/jobs/demo"),
    )
    .unwrap();
    assert_eq!(m.raw.preprocess.color, Color::Gray);
    assert_eq!(m.raw.preprocess.layout, Layout::Nchw);
    assert_eq!(m.raw.postprocess.kind, PostKind::Classify);
    assert_eq!(m.device(), spotbatch_proto::manifest::DeviceSpec::Cpu);
    // The same job as written in lower case.
    let lower = Manifest::parse(
        &GOOD.replace("batch_size = 32", "batch_size = 32\ndevice = \"cpu\""),
        Path::new("/jobs/demo"),
    )
    .unwrap();
    assert_eq!(m.job_id, lower.job_id);
    let e = only(&GOOD.replace("color = \"gray\"", "color = \"grey\""));
    assert_eq!(
        e.to_string(),
        "preprocess.color: \"grey\" is not one of: rgb, bgr, gray (did you mean gray?)"
    );
}

#[test]
fn a_table_of_the_wrong_kind_says_what_it_found() {
    // A top-level key (before the first table: after [postprocess] it would be one of its keys).
    let text = format!(
        "output = \"./out\"\n{}",
        GOOD.replace("[output]\nuri = \"./out\"\n", "")
    );
    let e = only(&text);
    assert_eq!(
        e.to_string(),
        "output: expected a [output] table, found \"./out\""
    );
}

/// Issue 23: `[job]`: a deadline as a time (TOML date-time or text, with its zone) or as hours
/// after submission, and the on-demand cap. None of it is part of the job (it changes when rows
/// are made, not what they are); a manifest without it stores and prints as before.
#[test]
fn a_deadline_is_a_time_or_hours_and_not_part_of_the_job() {
    let plain = Manifest::parse(GOOD, Path::new("/jobs/demo")).unwrap();
    for (table, want) in [
        (
            "[job]\ndeadline = 2026-12-01T06:00:00Z\nmax_on_demand_workers = 4\n",
            Deadline::At(1_796_104_800.0),
        ),
        (
            "[job]\ndeadline = \"2026-12-01T07:00:00+01:00\"\n",
            Deadline::At(1_796_104_800.0),
        ),
        (
            "[job]\ndeadline_hours = 6\n",
            Deadline::AfterSubmission(6.0),
        ),
        (
            "[job]\ndeadline_hours = 0.5\n",
            Deadline::AfterSubmission(0.5),
        ),
    ] {
        let m = Manifest::parse(&format!("{GOOD}{table}"), Path::new("/jobs/demo"))
            .unwrap_or_else(|e| panic!("{table}: {e:?}"));
        assert_eq!(m.deadline, Some(want), "{table}");
        assert_eq!(m.job_id, plain.job_id, "{table}");
        // The canonical TOML and the stored form keep it.
        let again = Manifest::parse(&m.to_toml(), Path::new("/jobs/demo")).unwrap();
        assert_eq!(again, m, "{table}");
        let back = Manifest::from_stored(&m.to_stored()).unwrap();
        assert_eq!((back.deadline, &back.raw.job), (m.deadline, &m.raw.job));
        assert_eq!(back.job_id, m.job_id);
    }
    assert_eq!(Deadline::AfterSubmission(2.0).unix_s(1_000.0), 8_200.0);
    assert_eq!(Deadline::At(5.0).unix_s(1_000.0), 5.0);
    let m = Manifest::parse(
        &format!("{GOOD}[job]\ndeadline_hours = 1\nmax_on_demand_workers = 3\n"),
        Path::new("/jobs/demo"),
    )
    .unwrap();
    assert_eq!(m.raw.job.max_on_demand_workers, Some(3));
    // Without [job]: nothing of it in the stored or canonical form.
    let stored = String::from_utf8(plain.to_stored()).unwrap();
    assert!(!stored.contains("\"job\""), "{stored}");
    assert!(!plain.to_toml().contains("[job]"), "{}", plain.to_toml());
}

#[test]
fn a_bad_deadline_is_named_one_line_each() {
    for (table, field, says) in [
        (
            "deadline = \"tomorrow\"",
            "job.deadline",
            "not an RFC 3339 time",
        ),
        (
            "deadline = 2026-12-01T06:00:00",
            "job.deadline",
            "no time zone",
        ),
        ("deadline = 2026-12-01", "job.deadline", "without a time"),
        (
            "deadline = \"2026-02-30T06:00:00Z\"",
            "job.deadline",
            "not a date",
        ),
        ("deadline = 5", "job.deadline", "expected an RFC 3339 time"),
        ("deadline_hours = 0", "job.deadline_hours", "out of range"),
        (
            "deadline_hours = -2.5",
            "job.deadline_hours",
            "out of range",
        ),
        (
            "deadline_hours = 10000",
            "job.deadline_hours",
            "out of range",
        ),
        (
            "deadline_hours = \"6h\"",
            "job.deadline_hours",
            "expected a number",
        ),
        (
            "deadline_hours = 2\ndeadline = 2026-12-01T06:00:00Z",
            "job.deadline_hours",
            "not both",
        ),
        (
            "max_on_demand_workers = 2",
            "job.max_on_demand_workers",
            "with a deadline",
        ),
        (
            "deadline_hours = 2\nmax_on_demand_workers = -1",
            "job.max_on_demand_workers",
            "expected a whole number",
        ),
        (
            "deadline_hours = 2\nmax_on_demand_workers = 20000",
            "job.max_on_demand_workers",
            "out of range",
        ),
        (
            "deadlin = 2026-12-01T06:00:00Z",
            "job.deadlin",
            "did you mean deadline?",
        ),
        (
            "deadline_hours = 2\nmax_ondemand_workers = 2",
            "job.max_ondemand_workers",
            "did you mean max_on_demand_workers?",
        ),
    ] {
        let e = only(&format!("{GOOD}[job]\n{table}\n"));
        assert_eq!(e.field, field, "{table}: {e}");
        assert!(e.message.contains(says), "{table}: {e}");
        assert!(!e.to_string().contains('\n'));
    }
    let e = only(&format!("{GOOD}[jobs]\ndeadline_hours = 2\n"));
    assert_eq!(e.to_string(), "jobs: unknown key (did you mean job?)");
    let e = only(&GOOD.replacen("name = ", "job = 3\nname = ", 1));
    assert_eq!(e.to_string(), "job: expected a [job] table, found 3");
}

/// `queue.shard_size = "auto"`: accepted (any case), stored and printed as "auto", its own job
/// (the shards differ from a fixed size's); a number is the job it always was.
#[test]
fn shard_size_auto_is_accepted_and_numbers_stay_the_same_job() {
    let plain = Manifest::parse(GOOD, Path::new("/jobs/demo")).unwrap();
    assert_eq!(plain.raw.queue.shard_size, ShardSize::Items(256));
    // The digest of a numbered size is what it was when the field was a plain number.
    let default = Manifest::parse(
        &GOOD.replace("shard_size = 256\n", ""),
        Path::new("/jobs/demo"),
    )
    .unwrap();
    assert_eq!(default.job_id, plain.job_id);
    for spelled in ["\"auto\"", "\"AUTO\""] {
        let m = Manifest::parse(
            &GOOD.replace("shard_size = 256", &format!("shard_size = {spelled}")),
            Path::new("/jobs/demo"),
        )
        .unwrap();
        assert_eq!(m.raw.queue.shard_size, ShardSize::Auto);
        assert_eq!(m.raw.queue.shard_size.items(), None);
        assert_ne!(m.job_id, plain.job_id);
        assert!(
            m.to_toml().contains("shard_size = \"auto\""),
            "{}",
            m.to_toml()
        );
        assert_eq!(
            Manifest::parse(&m.to_toml(), Path::new("/jobs/demo")).unwrap(),
            m
        );
        let back = Manifest::from_stored(&m.to_stored()).unwrap();
        assert_eq!(back.raw.queue.shard_size, ShardSize::Auto);
        assert_eq!(back.job_id, m.job_id);
    }
    for (value, says) in [
        (
            "\"automatic\"",
            "expected a whole number of inputs or \"auto\", found \"automatic\"",
        ),
        (
            "-3",
            "expected a whole number of inputs or \"auto\", found -3",
        ),
        (
            "2.5",
            "expected a whole number of inputs or \"auto\", found 2.5",
        ),
        ("0", "0 is out of range 1..=1000000 (or \"auto\")"),
    ] {
        let e = only(&GOOD.replace("shard_size = 256", &format!("shard_size = {value}")));
        assert_eq!(
            e.to_string(),
            format!("queue.shard_size: {says}"),
            "{value}"
        );
    }
}

//! The first hour of a new user (issue 21): every command tried with the mistakes a newcomer
//! makes, through the binary. One test per numbered item of the issue; each failed before its fix.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::coord::{free_addr, sb, status_json, submit, Coord, TOKEN};
use common::*;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_string()
}

fn out_of(cmd: &mut Command) -> Output {
    cmd.output().expect("spawn spotbatch")
}

/// The job id `validate` prints for a manifest.
fn job_id(manifest: &Path) -> String {
    let out = run_ok(spotbatch().arg("validate").arg(manifest));
    let stdout = text(&out.stdout);
    stdout
        .split("job ")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .unwrap_or_else(|| panic!("no job id in {stdout}"))
        .to_string()
}

/// A job whose every shard fails when its done marker is written (a file stands where the
/// `_done/` folder goes): nothing `validate` can see, so `run` starts and dead-letters them.
fn failing_job(shard_size: u32) -> (JobDir, PathBuf, String) {
    let job = JobDir::digits(30);
    let manifest = job.manifest(&[
        ("shard_size = 64", &format!("shard_size = {shard_size}")),
        ("max_attempts = 3", "max_attempts = 2"),
    ]);
    let id = job_id(&manifest);
    let folder = job.path().join("out").join(&id);
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::write(folder.join("_done"), b"in the way").unwrap();
    (job, manifest, id)
}

/// Item 1: a file name that is not UTF-8, a name with a newline, a symlink loop, a dangling
/// symlink and a folder loop in the input folder: the odd names are read (keys escaped so they
/// name the file), the rest are warnings naming them, and the job runs.
#[test]
fn item1_odd_names_and_broken_symlinks_do_not_stop_the_job() {
    use std::os::unix::ffi::OsStrExt;
    let job = JobDir::digits(30);
    let good = job.input_keys();
    let images = job.images();
    let png = images.join(&good[0]);
    std::fs::copy(
        &png,
        images.join(std::ffi::OsStr::from_bytes(b"caf\xe9.png")),
    )
    .unwrap();
    std::fs::copy(&png, images.join("new\nline.png")).unwrap();
    std::os::unix::fs::symlink("loop-b.png", images.join("loop-a.png")).unwrap();
    std::os::unix::fs::symlink("loop-a.png", images.join("loop-b.png")).unwrap();
    std::os::unix::fs::symlink("nowhere.png", images.join("gone.png")).unwrap();
    std::os::unix::fs::symlink("..", images.join("3").join("up")).unwrap();
    let manifest = job.manifest(&[]);

    let v = out_of(spotbatch().arg("validate").arg(&manifest));
    let (stdout, stderr) = (text(&v.stdout), text(&v.stderr));
    assert_eq!(v.status.code(), Some(0), "{stdout}{stderr}");
    assert!(
        stdout.contains(&format!("{} inputs", good.len() + 2)),
        "{stdout}"
    );
    for (key, why) in [
        ("loop-a.png", "symlink loop"),
        ("loop-b.png", "symlink loop"),
        ("gone.png", "dangling symlink"),
        ("3/up", "a folder above it"),
    ] {
        assert!(
            stderr.lines().any(|l| l.contains(&format!(
                "warning: input.uri: {key} is not an input (left out): "
            )) && l.contains(why)),
            "{key}: {stderr}"
        );
    }
    // Every line names the manifest: no raw newline from a file name splits one.
    let prefix = format!("{}: ", manifest.display());
    assert!(stderr.lines().all(|l| l.starts_with(&prefix)), "{stderr}");

    let r = out_of(
        spotbatch()
            .arg("run")
            .arg(&manifest)
            .args(["--progress", "none"]),
    );
    assert_eq!(r.status.code(), Some(0), "{}", text(&r.stderr));
    let rows = job.rows();
    assert_eq!(rows.len(), good.len() + 2, "{rows:?}");
    for key in ["caf\\xE9.png", "new\nline.png"] {
        let row = rows
            .get(key)
            .unwrap_or_else(|| panic!("no row for {key:?}: {rows:?}"));
        assert!(row["error"].is_null(), "{key:?}: {row}");
        assert_eq!(row["top_k"][0], rows[&good[0]]["top_k"][0], "same pixels");
    }
}

/// Item 2: `queue dlq` and `queue depth` on a SQLite file without `?queue=` cover every queue in
/// it, named (`run` keeps one per job); a queue name that is not there is an error.
#[test]
fn item2_dlq_and_depth_cover_every_queue_in_a_sqlite_file() {
    let (job, manifest, id) = failing_job(8);
    let r = out_of(
        spotbatch()
            .arg("run")
            .arg(&manifest)
            .args(["--progress", "none"]),
    );
    assert_eq!(r.status.code(), Some(1), "{}", text(&r.stderr));
    let file = format!("sqlite://{}", job.path().join("queue.db").display());

    let dlq = run_ok(spotbatch().args(["queue", "dlq", &file]));
    let lines: Vec<String> = text(&dlq.stdout).lines().map(str::to_string).collect();
    assert_eq!(lines.len(), 3, "{lines:?}");
    for l in &lines {
        assert!(l.starts_with(&format!("{id}: job {id} shard ")), "{l}");
        assert!(l.contains("2 deliveries"), "{l}");
    }
    assert!(text(&dlq.stderr).contains(&format!("{id}: 3 dead-lettered")));

    let depth = run_ok(spotbatch().args(["queue", "depth", &file]));
    assert_eq!(
        text(&depth.stdout).trim(),
        format!("{id}: visible 0 in_flight 0 dead 3")
    );
    let typo = out_of(spotbatch().args(["queue", "depth", &format!("{file}?queue=nope")]));
    assert_eq!(typo.status.code(), Some(1));
    assert!(
        text(&typo.stderr).contains("no queue \"nope\"") && text(&typo.stderr).contains(&id),
        "{}",
        text(&typo.stderr)
    );
}

/// Item 3: read-only commands do not create the queue file they are pointed at.
#[test]
fn item3_read_only_commands_refuse_a_missing_queue_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("typo.db");
    let uri = format!("sqlite://{}", missing.display());
    for args in [
        vec!["queue", "depth", &uri],
        vec!["queue", "dlq", &uri],
        vec!["worker", "--queue", &uri, "--exit-when-empty"],
    ] {
        let out = out_of(spotbatch().args(&args));
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(
            text(&out.stderr).contains("no such queue file"),
            "{args:?}: {}",
            text(&out.stderr)
        );
        assert!(!missing.exists(), "{args:?} created {}", missing.display());
    }
}

/// A coordinator on a SQLite queue in `dir`, with `--max-attempts 2`.
fn coordinator(dir: &Path) -> (Coord, String) {
    let queue = format!("sqlite://{}", dir.join("q.db").display());
    let c = Coord::start_with(
        dir,
        &queue,
        free_addr(),
        free_addr(),
        &["--max-attempts", "2"],
    );
    let url = c.url();
    (c, url)
}

/// A worker of `coord` run until the queue is empty.
fn coordinator_worker(coord: &str, dir: &Path) -> Output {
    out_of(
        sb(Some(TOKEN))
            .args([
                "worker",
                "--coordinator",
                coord,
                "--exit-when-empty",
                "--steal",
                "off",
            ])
            .current_dir(dir),
    )
}

/// Item 4: `status` exits as `run` does (1 for a failed job), and the items of dead-lettered
/// shards are counted; item 13: a worker that exited cleanly is not counted dead.
#[test]
fn item4_status_exits_1_on_a_failed_job_and_counts_its_dead_items() {
    let job = JobDir::digits(30);
    // The coordinator can see the model file exists, not that it loads: the workers find out.
    std::fs::write(job.path().join("model.onnx"), b"not an onnx model").unwrap();
    let manifest = job.manifest(&[
        ("shard_size = 64", "shard_size = 8"),
        ("max_attempts = 3\n", ""),
    ]);
    let (_c, url) = coordinator(job.path());
    let (id, _) = submit(&url, &manifest);
    let w = coordinator_worker(&url, job.path());
    assert!(w.status.success(), "{}", text(&w.stderr));

    let watch = out_of(sb(Some(TOKEN)).args(["status", &id, "--watch", "--coordinator", &url]));
    let line = text(&watch.stdout);
    assert_eq!(watch.status.code(), Some(1), "{line}");
    assert!(line.contains(&format!("{id}: failed")), "{line}");
    assert!(
        line.contains("0/18 items (0 error rows, 18 in dead-lettered shards)"),
        "{line}"
    );
    assert!(line.contains("3 dead-lettered"), "{line}");
    // The worker said goodbye: exited, not dead (and "0 workers", "1 exited").
    assert!(line.contains("0 workers alive, 1 exited"), "{line}");
    assert!(
        !line.contains("dead,") && !line.ends_with(" dead\n"),
        "{line}"
    );
    let plain = out_of(sb(Some(TOKEN)).args(["status", &id, "--coordinator", &url]));
    assert_eq!(plain.status.code(), Some(1));
    let s = status_json(&url, &id);
    assert_eq!(s["items"]["dead"], 18, "{s}");
    assert_eq!(s["workers"][0]["exited"], true, "{s}");
}

/// Item 5: failed attempts reach the workers' ledgers, so `report` and `cost` have something to
/// say about a job whose every shard was dead-lettered.
#[test]
fn item5_failed_attempts_are_in_the_ledgers_report_and_cost() {
    let job = JobDir::digits(30);
    let manifest = job.manifest(&[("shard_size = 64", "shard_size = 8")]);
    let id = job_id(&manifest);
    run_ok(spotbatch().arg("enqueue").arg(&manifest));
    // The model breaks after the job was checked and enqueued.
    std::fs::write(job.path().join("model.onnx"), b"not an onnx model").unwrap();
    let queue = format!("sqlite://{}", job.path().join("queue.db").display());
    let w = out_of(
        spotbatch()
            .args([
                "worker",
                "--queue",
                &queue,
                "--exit-when-empty",
                "--max-attempts",
                "2",
            ])
            .args(["--price-per-hour", "1.2", "--on-demand-price-per-hour", "4"]),
    );
    assert!(w.status.success(), "{}", text(&w.stderr));
    assert!(
        text(&w.stderr).contains("6 failed attempts"),
        "{}",
        text(&w.stderr)
    );

    let page = job.path().join("report.html");
    let r = out_of(
        spotbatch()
            .args(["report", &id, "--output"])
            .arg(job.path().join("out"))
            .arg("--html")
            .arg(&page),
    );
    assert!(r.status.success(), "{}", text(&r.stderr));
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(
        html.contains("<tr class=\"failed bad\"><td>failed attempts</td><td>6</td></tr>"),
        "{html}"
    );
    assert!(
        html.contains("<td>shards failed, not done</td><td>3 (dead-lettered unless retried)</td>"),
        "{html}"
    );
    assert!(
        html.contains("<td>redelivered shards</td><td>3</td>"),
        "{html}"
    );
    let cost = out_of(spotbatch().arg("cost").arg(&manifest));
    let said = text(&cost.stdout);
    assert!(cost.status.success(), "{said}{}", text(&cost.stderr));
    assert!(
        said.contains("0 items (0 error rows), 1 worker ledger"),
        "{said}"
    );
    assert!(
        said.contains("failures          6 failed attempts; 3 shards not done"),
        "{said}"
    );
}

/// Item 6: `run` and `enqueue` refuse up front exactly what `validate` refuses, with the same
/// line and exit code, and start nothing; a folder given as the model is called a folder, and a
/// size that does not fit is blamed on the size.
#[test]
fn item6_run_and_enqueue_refuse_up_front_what_validate_refuses() {
    let job = JobDir::digits(30);
    let model = job.path().join("model.onnx");
    let demo_model = root().join("examples/digits/model.onnx");
    type Case<'a> = (
        &'a str,
        Box<dyn Fn() + 'a>,
        Vec<(&'a str, &'a str)>,
        &'a str,
    );
    let cases: Vec<Case> = vec![
        (
            "missing",
            Box::new(|| {
                let _ = std::fs::remove_file(&model);
            }),
            vec![],
            "model.uri: file://",
        ),
        (
            "a folder",
            Box::new(|| {
                let _ = std::fs::remove_file(&model);
                std::fs::create_dir_all(&model).unwrap();
            }),
            vec![],
            "model.onnx: is a folder, not a file",
        ),
        (
            "not onnx",
            Box::new(|| {
                let _ = std::fs::remove_dir(&model);
                std::fs::write(&model, b"not an onnx model").unwrap();
            }),
            vec![],
            "model.uri: not a loadable ONNX model",
        ),
        (
            "the wrong size",
            Box::new(|| std::fs::copy(&demo_model, &model).map(|_| ()).unwrap()),
            vec![("resize = [8, 8]", "resize = [16, 16]")],
            "preprocess.resize: ",
        ),
    ];
    for (what, break_it, edits, said) in cases {
        break_it();
        let manifest = job.manifest(&edits);
        let v = out_of(spotbatch().arg("validate").arg(&manifest));
        assert_eq!(v.status.code(), Some(2), "{what}: validate");
        let refused = text(&v.stderr);
        assert!(refused.contains(said), "{what}: {refused}");
        for cmd in ["run", "enqueue"] {
            let out = out_of(spotbatch().arg(cmd).arg(&manifest));
            assert_eq!(
                out.status.code(),
                Some(2),
                "{what}: {cmd}: {}",
                text(&out.stderr)
            );
            assert_eq!(
                text(&out.stderr),
                refused,
                "{what}: {cmd} says what validate says"
            );
            assert!(
                !job.path().join("out").exists(),
                "{what}: {cmd} started the job"
            );
            assert!(
                !job.path().join("queue.db").exists(),
                "{what}: {cmd} made a queue"
            );
        }
    }
}

/// Item 7: `submit` refuses a model file that does not exist, and says when the coordinator does
/// not use a setting the manifest asks for.
#[test]
fn item7_submit_checks_the_files_and_says_what_the_coordinator_overrides() {
    let job = JobDir::digits(30);
    let (_c, url) = coordinator(job.path());
    std::fs::rename(
        job.path().join("model.onnx"),
        job.path().join("elsewhere.onnx"),
    )
    .unwrap();
    let manifest = job.manifest(&[]);
    let out = out_of(
        sb(Some(TOKEN))
            .args(["submit", "--coordinator", &url])
            .arg(&manifest),
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stdout));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&format!("{}: model.uri: file://", manifest.display()))
            && stderr.contains("model.onnx: not found"),
        "{stderr}"
    );
    let manifest = job.manifest(&[
        ("./model.onnx", "./elsewhere.onnx"),
        ("max_attempts = 3", "max_attempts = 5"),
    ]);
    let (id, said) = submit(&url, &manifest);
    assert!(!id.is_empty());
    let name = manifest.display();
    assert!(
        said.contains(&format!(
            "{name}: note: queue.uri: the coordinator's queue sqlite://"
        )),
        "{said}"
    );
    assert!(
        said.contains(&format!(
            "{name}: note: queue.max_attempts: 5 is not used: the coordinator's workers dead-letter a shard after 2 failed attempts"
        )),
        "{said}"
    );
}

/// Item 8: `validate` (and so `run`) finds the output problems `run` would fail on, and says
/// them without a temporary file's name.
#[test]
fn item8_validate_finds_output_folders_that_cannot_be_written() {
    let job = JobDir::digits(30);
    std::fs::write(job.path().join("a-file"), b"x").unwrap();
    for (output, said) in [
        ("/proc/spotbatch-out", "cannot write in /proc"),
        ("./a-file/out", "a-file is a file, not a folder"),
    ] {
        let manifest = job.manifest(&[("uri = \"./out\"", &format!("uri = \"{output}\""))]);
        for cmd in ["validate", "run"] {
            let out = out_of(spotbatch().arg(cmd).arg(&manifest));
            let stderr = text(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{cmd} {output}: {stderr}");
            assert!(
                stderr.contains(&format!("{}: output.uri: ", manifest.display()))
                    && stderr.contains(said),
                "{cmd} {output}: {stderr}"
            );
            assert!(!stderr.contains('#'), "a temporary file's name: {stderr}");
        }
    }
}

/// Item 9: `validate` reports every problem of a table, in the manifest's terms, suggests the
/// key meant, and takes enum values in any case.
#[test]
fn item9_validate_reports_every_problem_in_the_manifests_terms() {
    let job = JobDir::digits(30);
    let manifest = job.manifest(&[
        (
            "batch_size = 32",
            "batch_size = 0\nbatchsize = 8\nthreads = 2",
        ),
        ("resize = [8, 8]", "resize = \"8x8\""),
        ("layout = \"nchw\"", "layout = \"NCHW\""),
        ("color = \"gray\"", "color = \"Gray\""),
    ]);
    let out = out_of(spotbatch().arg("validate").arg(&manifest));
    assert_eq!(out.status.code(), Some(2));
    let p = format!("{}: ", manifest.display());
    let lines: Vec<String> = text(&out.stderr)
        .lines()
        .map(|l| l.strip_prefix(&p).unwrap_or(l).to_string())
        .collect();
    assert_eq!(
        lines.len(),
        4,
        "every problem, one line each; NCHW and Gray accepted: {lines:?}"
    );
    assert_eq!(
        lines[0],
        "model.batchsize: unknown key (did you mean batch_size?)"
    );
    assert!(
        lines[1].starts_with("model.threads: unknown key (known keys: uri, input, output, batch_size, intra_op_threads,"),
        "{}",
        lines[1]
    );
    assert_eq!(
        lines[2],
        "preprocess.resize: expected a list of 2 values, found \"8x8\""
    );
    assert_eq!(lines[3], "model.batch_size: 0 is out of range 1..=65536");
}

/// Item 10: each thing is said once: a worker's SIGTERM in one line, the device warning with its
/// reason once, nothing from `validate` about devices, ONNX Runtime's chatter not at info, and a
/// warning on a terminal above the progress bar, not at the end of its line.
#[test]
fn item10_each_thing_is_said_once() {
    let job = JobDir::digits(30);
    let manifest = job.manifest(&[("shard_size = 64", "shard_size = 4")]);
    let v = run_ok(
        spotbatch()
            .arg("validate")
            .arg(&manifest)
            .env("SPOTBATCH_DEVICE", "cuda"),
    );
    assert_eq!(
        text(&v.stderr),
        "",
        "validate runs nothing: no device warning"
    );

    let r = run_ok(
        spotbatch()
            .arg("run")
            .arg(&manifest)
            .args(["--progress", "none"])
            .env("SPOTBATCH_LOG", "info"),
    );
    let log = text(&r.stderr);
    let device: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("running inference on"))
        .collect();
    if spotbatch_worker::device::cuda_device_count().is_ok_and(|n| n > 0) {
        assert!(device.is_empty(), "{log}");
    } else {
        assert_eq!(device.len(), 1, "{log}");
        assert!(
            !device[0].contains("reason="),
            "the reason once: {}",
            device[0]
        );
    }
    assert!(
        !log.lines()
            .any(|l| l.contains(" ort::") || l.contains(" ort:")),
        "ONNX Runtime's info chatter at info: {log}"
    );
    assert!(log.lines().count() < 30, "{log}");

    // A worker's SIGTERM: one line says it.
    let job2 = JobDir::digits(3);
    let manifest2 = job2.manifest(&[("shard_size = 64", "shard_size = 10")]);
    run_ok(spotbatch().arg("enqueue").arg(&manifest2));
    let queue = format!("sqlite://{}", job2.path().join("queue.db").display());
    let mut w = spotbatch()
        .args(["worker", "--queue", &queue, "--throttle-batch-ms", "300"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let until = Instant::now() + Duration::from_secs(30);
    while job2.done_markers() < 1 {
        assert!(Instant::now() < until, "no progress");
        std::thread::sleep(Duration::from_millis(20));
    }
    sigterm(&w);
    assert!(wait_bounded(&mut w, Duration::from_secs(30)).is_some_and(|s| s.success()));
    let stderr = stderr_text(&mut w);
    let term: Vec<&str> = stderr.lines().filter(|l| l.contains("SIGTERM")).collect();
    assert_eq!(term.len(), 1, "{stderr}");

    // On a terminal (a pty from script(1)), the WARN line starts a line of its own.
    let cmd = format!(
        "{} run {} --progress bar --throttle-batch-ms 30",
        BIN,
        job.manifest(&[("top_k = 3", "top_k = 2")]).display()
    );
    let tty = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .env("ORT_DYLIB_PATH", ort_lib())
        .env("SPOTBATCH_DEVICE", "auto")
        .env_remove("SPOTBATCH_LOG")
        .output()
        .expect("script(1) runs the command on a pty");
    let screen = text(&tty.stdout);
    if let Some(at) = screen.find("WARN") {
        let before = &screen[..at];
        // What precedes the WARN on its line: nothing, or the colour escape of the level.
        let line_start = before.rfind(['\n', '\r']).map_or(0, |i| i + 1);
        let on_line = &before[line_start..];
        let visible: String = on_line
            .split('\x1b')
            .enumerate()
            .map(|(i, part)| {
                if i == 0 {
                    part
                } else {
                    part.split_once(|c: char| c.is_ascii_alphabetic())
                        .map_or("", |x| x.1)
                }
            })
            .collect();
        assert!(
            !(visible.contains("items/s") || visible.contains("ETA") || visible.contains("/18")),
            "the warning lands on the bar's line: {on_line:?}"
        );
    }
}

/// Item 11: a worker says each shard it finishes (at info, with its rate) and, when stderr is not
/// a terminal, a progress line now and then while it works.
#[test]
fn item11_a_worker_says_what_it_is_doing() {
    let job = JobDir::digits(3);
    let manifest = job.manifest(&[
        ("shard_size = 64", "shard_size = 30"),
        ("batch_size = 32", "batch_size = 10"),
    ]);
    run_ok(spotbatch().arg("enqueue").arg(&manifest));
    let queue = format!("sqlite://{}", job.path().join("queue.db").display());
    let w = run_ok(
        spotbatch()
            .args(["worker", "--queue", &queue, "--exit-when-empty"])
            .args(["--throttle-batch-ms", "250", "--progress-secs", "1"])
            .env("SPOTBATCH_LOG", "spotbatch_worker=info"),
    );
    let log = text(&w.stderr);
    let done: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("INFO") && l.contains("shard done"))
        .collect();
    assert_eq!(done.len(), 6, "180 inputs in shards of 30: {log}");
    assert!(done.iter().all(|l| l.contains("items_per_s=")), "{log}");
    let progress: Vec<&str> = log
        .lines()
        .filter(|l| l.starts_with("progress: "))
        .collect();
    assert!(
        progress.len() >= 2,
        "a line every second of a ~5 s run: {log}"
    );
    assert!(
        progress.iter().any(|l| l.contains("shards done")),
        "{progress:?}"
    );
}

/// Item 12: `cost` and `report` take `--output` with or without its trailing slash, say when the
/// ledgers have no prices, and say how to name a job by its id.
#[test]
fn item12_cost_and_report_find_the_job_and_say_what_is_missing() {
    let job = JobDir::digits(30);
    let manifest = job.manifest(&[]);
    let id = job_id(&manifest);
    run_ok(
        spotbatch()
            .arg("run")
            .arg(&manifest)
            .args(["--progress", "none"]),
    );
    let out = format!("file://{}", job.path().join("out").display());
    let report = out_of(
        spotbatch()
            .args(["report", &id, "--output", &out, "--html"])
            .arg(job.path().join("r.html")),
    );
    assert!(report.status.success(), "{}", text(&report.stderr));
    let cost = out_of(spotbatch().args(["cost", &id, "--output", &out]));
    assert_eq!(cost.status.code(), Some(1));
    let said = text(&cost.stderr);
    assert!(
        said.contains("1 worker ledger under") && said.contains("none with prices"),
        "{said}"
    );
    let cost = out_of(spotbatch().args(["cost", &id]));
    let said = text(&cost.stderr);
    assert!(
        said.contains("no such manifest file") && said.contains("--output"),
        "{said}"
    );
    let other = out_of(spotbatch().args(["cost", "other-0123", "--output", &out]));
    let said = text(&other.stderr);
    assert!(said.contains("nothing of this job ran there"), "{said}");
}

/// Item 13: Ctrl-C on `run` keeps the finished rows of the shard in work as a worker's SIGTERM
/// does; the rerun resumes from them and leaves no empty `_partial/` folder.
#[test]
fn item13_ctrl_c_on_run_keeps_finished_rows_and_leaves_no_empty_folder() {
    // 540 inputs in 2 shards of 270, batches of 4 at 200 ms each: ~14 s a shard, so the drain's
    // 5 s cannot finish them.
    let job = JobDir::digits(1);
    let manifest = job.manifest(&[
        ("batch_size = 32", "batch_size = 4"),
        ("shard_size = 64", "shard_size = 270"),
    ]);
    let child = spotbatch()
        .arg("run")
        .arg(&manifest)
        .args(["--progress", "none", "--throttle-batch-ms", "200"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", text(&out.stderr));
    let partial = job.job_out().join("_partial");
    let kept = std::fs::read_dir(&partial).map(|d| d.count()).unwrap_or(0);
    assert!(
        kept >= 1,
        "the shard in work kept its rows: {}",
        text(&out.stderr)
    );
    run_ok(
        spotbatch()
            .arg("run")
            .arg(&manifest)
            .args(["--progress", "none"]),
    );
    job.one_row_per_input();
    assert!(
        !partial.exists(),
        "an empty _partial/ folder was left behind"
    );
}

/// Item 13: the small things agree across commands: plurals, rates, exit codes for the same
/// mistake, Kafka in the messages that list queues, --coordinator named, one prefetch default,
/// `report --html`, and a second `enqueue` saying nothing new was enqueued.
#[test]
fn item13_messages_and_defaults_agree_across_commands() {
    let job = JobDir::digits(30);
    let manifest = job.manifest(&[]);
    let out = run_ok(
        spotbatch()
            .arg("run")
            .arg(&manifest)
            .args(["--progress", "none"]),
    );
    let said = text(&out.stdout);
    assert!(
        said.contains("18 of 18 items in 1/1 shards, 0 error rows"),
        "{said}"
    );
    let rate = said
        .split('(')
        .nth(1)
        .and_then(|r| r.split(" items/s").next())
        .unwrap();
    assert!(
        !rate.contains('.') || rate.split('.').nth(1).unwrap().len() <= 2,
        "{said}"
    );
    let v = run_ok(spotbatch().arg("validate").arg(&manifest));
    assert!(
        text(&v.stdout).contains("18 inputs in 1 shard;"),
        "{}",
        text(&v.stdout)
    );

    // The same mistake (a model that is not there), the same exit code everywhere.
    let broken = job.manifest(&[("./model.onnx", "./nope.onnx")]);
    let queue = format!("sqlite://{}", job.path().join("queue.db").display());
    for args in [
        vec!["validate".to_string()],
        vec!["run".to_string()],
        vec!["enqueue".to_string()],
        vec![
            "worker".into(),
            "--queue".into(),
            queue.clone(),
            "--exit-when-empty".into(),
            "--manifest".into(),
        ],
    ] {
        let out = out_of(spotbatch().args(&args).arg(&broken));
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }

    let unknown = out_of(spotbatch().args(["queue", "depth", "redis://q"]));
    assert!(
        text(&unknown.stderr).contains("kafka://"),
        "{}",
        text(&unknown.stderr)
    );
    let help = run_ok(spotbatch().args(["queue", "create", "--help"]));
    assert!(text(&help.stdout).contains("kafka://"));
    let bare = out_of(spotbatch().arg("worker"));
    assert_eq!(bare.status.code(), Some(2));
    assert!(
        text(&bare.stderr).contains("--coordinator"),
        "{}",
        text(&bare.stderr)
    );
    let default_of = |cmd: &str| {
        let help = text(&run_ok(spotbatch().args([cmd, "--help"])).stdout);
        let at = help.find("--prefetch").expect("--prefetch");
        help[at..]
            .split("[default: ")
            .nth(1)
            .unwrap()
            .split(']')
            .next()
            .unwrap()
            .to_string()
    };
    assert_eq!(default_of("run"), default_of("worker"));
    let help = text(&run_ok(spotbatch().args(["report", "--help"])).stdout);
    assert!(help.contains("--html"), "{help}");

    // Enqueueing the same job twice: nothing new the second time.
    let job2 = JobDir::digits(30);
    let m2 = job2.manifest(&[("shard_size = 64", "shard_size = 6")]);
    let first = text(&run_ok(spotbatch().arg("enqueue").arg(&m2)).stdout);
    assert!(first.contains(": 3 shards enqueued on"), "{first}");
    let again = text(&run_ok(spotbatch().arg("enqueue").arg(&m2)).stdout);
    assert!(
        again.contains(": 0 new shards enqueued on") && again.contains("(3 already waiting there)"),
        "{again}"
    );
}

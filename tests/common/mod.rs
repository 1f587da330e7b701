//! Helpers for the end-to-end tests: they drive the real `spotbatch` binary against real ONNX
//! Runtime (the library `make test` installs; its path comes from `ORT_DYLIB_PATH`).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub mod coord;
pub mod metadata;

pub const BIN: &str = env!("CARGO_BIN_EXE_spotbatch");

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `ORT_DYLIB_PATH`, which `make test` always sets. Missing is a failure, not a skip.
pub fn ort_lib() -> String {
    std::env::var("ORT_DYLIB_PATH")
        .expect("ORT_DYLIB_PATH is not set: run the tests with `make test`")
}

/// The project's Python (with onnxruntime and Pillow), which `make test` always sets.
pub fn python() -> String {
    std::env::var("SPOTBATCH_PYTHON")
        .expect("SPOTBATCH_PYTHON is not set: run the tests with `make test`")
}

/// A `spotbatch` command with ONNX Runtime configured.
pub fn spotbatch() -> Command {
    let mut c = Command::new(BIN);
    c.env("ORT_DYLIB_PATH", ort_lib())
        .env_remove("SPOTBATCH_LOG");
    c
}

pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("spawn spotbatch");
    assert!(
        out.status.success(),
        "spotbatch failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A job folder: the demo's model and labels, a copy of (some of) its images, and a manifest.
pub struct JobDir {
    pub dir: tempfile::TempDir,
}

impl JobDir {
    /// Copies the demo model and labels, and every `step`-th demo image (all with `step` 1).
    pub fn digits(step: usize) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let demo = root().join("examples/digits");
        for f in ["model.onnx", "labels.txt"] {
            std::fs::copy(demo.join(f), dir.path().join(f)).expect("copy demo file");
        }
        let mut all = Vec::new();
        collect_files(&demo.join("images"), &mut all);
        all.sort();
        for (i, src) in all.iter().enumerate() {
            if i % step != 0 {
                continue;
            }
            let rel = src.strip_prefix(demo.join("images")).unwrap();
            let dst = dir.path().join("images").join(rel);
            std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
            std::fs::copy(src, dst).unwrap();
        }
        Self { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn images(&self) -> PathBuf {
        self.path().join("images")
    }

    /// Writes `job.toml` from the demo manifest with `edits` (from, to) applied.
    pub fn manifest(&self, edits: &[(&str, &str)]) -> PathBuf {
        let mut text = std::fs::read_to_string(root().join("examples/digits/job.toml")).unwrap();
        for (from, to) in edits {
            assert!(text.contains(from), "manifest has no {from:?}");
            text = text.replace(from, to);
        }
        let path = self.path().join("job.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    /// The single job folder under `out/`.
    pub fn job_out(&self) -> PathBuf {
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(self.path().join("out"))
            .expect("out/ exists")
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_dir())
            .collect();
        assert_eq!(dirs.len(), 1, "one job folder expected: {dirs:?}");
        dirs.pop().unwrap()
    }

    /// Every row of every part file, keyed by input key; panics on a duplicate key.
    pub fn rows(&self) -> BTreeMap<String, serde_json::Value> {
        let mut rows = BTreeMap::new();
        for entry in std::fs::read_dir(self.job_out()).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            if !(name.starts_with("part-") && name.ends_with(".jsonl")) {
                continue;
            }
            for line in std::fs::read_to_string(&path).unwrap().lines() {
                let row: serde_json::Value = serde_json::from_str(line).expect("row is JSON");
                let key = row["key"].as_str().expect("row has a key").to_string();
                assert!(
                    rows.insert(key.clone(), row).is_none(),
                    "duplicate row for {key}"
                );
            }
        }
        rows
    }

    /// Every row, keyed by input key, after checking that every input has exactly one (`rows()`
    /// panics on a duplicate; a missing or unknown key fails here).
    pub fn one_row_per_input(&self) -> BTreeMap<String, serde_json::Value> {
        let rows = self.rows();
        assert_eq!(
            rows.keys().cloned().collect::<Vec<_>>(),
            self.input_keys(),
            "every input exactly one row"
        );
        rows
    }

    /// Done markers written so far, over every job folder under `out/`.
    pub fn done_markers(&self) -> usize {
        let Ok(jobs) = std::fs::read_dir(self.path().join("out")) else {
            return 0;
        };
        jobs.filter_map(|j| std::fs::read_dir(j.ok()?.path().join("_done")).ok())
            .map(|d| d.count())
            .sum()
    }

    /// Keys of every input file under images/, `/`-separated.
    pub fn input_keys(&self) -> Vec<String> {
        let mut files = Vec::new();
        collect_files(&self.images(), &mut files);
        let mut keys: Vec<String> = files
            .iter()
            .map(|p| {
                p.strip_prefix(self.images())
                    .unwrap()
                    .to_string_lossy()
                    .replace('\\', "/")
            })
            .collect();
        keys.sort();
        keys
    }
}

pub fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            collect_files(&p, out);
        } else {
            out.push(p);
        }
    }
}

/// Waits for a child process at most `limit`; past it the child is killed and `None` returned, so
/// no test hangs on a worker that never exits.
pub fn wait_bounded(
    child: &mut std::process::Child,
    limit: std::time::Duration,
) -> Option<std::process::ExitStatus> {
    let until = std::time::Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("wait for a child process") {
            return Some(status);
        }
        if std::time::Instant::now() >= until {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Everything a child process wrote to its piped stderr (read after it has exited).
pub fn stderr_text(child: &mut std::process::Child) -> String {
    use std::io::Read;
    let mut err = String::new();
    child
        .stderr
        .take()
        .expect("stderr piped")
        .read_to_string(&mut err)
        .expect("read stderr");
    err
}

/// `GET path` over plain HTTP/1.1: (status, body), or `None` when nothing answers.
pub fn http_get(addr: std::net::SocketAddr, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let timeout = std::time::Duration::from_millis(500);
    let mut s = std::net::TcpStream::connect_timeout(&addr, timeout).ok()?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let code = out.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, out.split_once("\r\n\r\n")?.1.to_string()))
}

/// Waits (at most 30 s) until `GET /readyz` on `addr` answers 200. `what` names the process for
/// the failure message, with anything that helps (its log); it is only called on failure.
pub fn wait_ready(addr: std::net::SocketAddr, what: impl Fn() -> String) {
    let until = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while http_get(addr, "/readyz").map(|r| r.0) != Some(200) {
        assert!(std::time::Instant::now() < until, "{} not ready", what());
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// A name no other test run uses (queues, topics): `PREFIX-PID-NANOS`.
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos();
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        nanos % 1_000_000_000_000
    )
}

/// Sends SIGTERM to a child process (a preemption's first signal).
pub fn sigterm(c: &std::process::Child) {
    let st = Command::new("kill")
        .args(["-TERM", &c.id().to_string()])
        .status()
        .expect("kill");
    assert!(st.success());
}

/// The numbers logged as `FIELD=N` on the log lines that contain `message`, in order (a line
/// whose field is missing or not a number is left out).
pub fn log_numbers(log: &str, message: &str, field: &str) -> Vec<u64> {
    let key = format!("{field}=");
    log.lines()
        .filter(|l| l.contains(message))
        .filter_map(|l| {
            l.split(&key)
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect()
}

/// One stage's line of a `spotbatch run --timings` report as (count, mean ms, total s); `None`
/// when the stage did not run. A line that is there but not in the report's format fails.
pub fn timing(report: &str, stage: &str) -> Option<(u64, f64, f64)> {
    let line = report
        .lines()
        .find(|l| l.trim_start().starts_with(&format!("{stage} ")))?;
    // name, count, unit, ×, mean, ms, =, total, s
    let f: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(f.len(), 9, "{line}");
    assert_eq!((f[3], f[5], f[6], f[8]), ("×", "ms", "=", "s"), "{line}");
    let number = |s: &str| -> f64 { s.parse().unwrap_or_else(|_| panic!("{s} in {line}")) };
    Some((number(f[1]) as u64, number(f[4]), number(f[7])))
}

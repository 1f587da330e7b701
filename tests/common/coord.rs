//! A coordinator as a real process on loopback, and the CLI calls the end-to-end tests make to it.

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{run_ok, spotbatch, wait_ready};

pub const TOKEN: &str = "s3cret-token-for-tests";

pub fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// `spotbatch` with the token and, for SQS, moto's endpoint and credentials.
pub fn sb(token: Option<&str>) -> Command {
    let mut c = spotbatch();
    if let Ok(ep) = std::env::var("SPOTBATCH_TEST_SQS_ENDPOINT") {
        c.env("AWS_ENDPOINT_URL", ep);
    }
    c.env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", "us-east-1")
        .env_remove("SPOTBATCH_COORDINATOR");
    match token {
        Some(t) => c.env("SPOTBATCH_TOKEN", t),
        None => c.env_remove("SPOTBATCH_TOKEN"),
    };
    c
}

pub struct Coord {
    pub child: Child,
    pub grpc: SocketAddr,
    pub http: SocketAddr,
}

impl Coord {
    pub fn url(&self) -> String {
        format!("http://{}", self.grpc)
    }

    pub fn start(dir: &Path, queue: &str, grpc: SocketAddr, http: SocketAddr) -> Self {
        Self::start_with(dir, queue, grpc, http, &[])
    }

    /// [`Coord::start`] with more flags (`--max-attempts 2`).
    pub fn start_with(
        dir: &Path,
        queue: &str,
        grpc: SocketAddr,
        http: SocketAddr,
        flags: &[&str],
    ) -> Self {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("coordinator.log"))
            .unwrap();
        let child = sb(Some(TOKEN))
            .args(["coordinator", "--queue", queue, "--heartbeat-ms", "300"])
            .args(flags)
            .arg("--listen")
            .arg(grpc.to_string())
            .arg("--http")
            .arg(http.to_string())
            .arg("--state")
            .arg(dir.join("state"))
            .env(
                "SPOTBATCH_LOG",
                "spotbatch_coordinator=info,spotbatch_net=info",
            )
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let c = Self { child, grpc, http };
        wait_ready(http, || {
            format!(
                "coordinator: {}",
                std::fs::read_to_string(dir.join("coordinator.log")).unwrap_or_default()
            )
        });
        c
    }
}

impl Drop for Coord {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn submit(coord: &str, manifest: &Path) -> (String, String) {
    let out = run_ok(
        sb(Some(TOKEN))
            .args(["submit", "--coordinator", coord])
            .arg(manifest),
    );
    (
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// (`status` exits 1 for a failed job, as `run` does, and prints the status all the same.)
pub fn status_json(coord: &str, job: &str) -> serde_json::Value {
    let out = sb(Some(TOKEN))
        .args(["status", job, "--json", "--coordinator", coord])
        .output()
        .expect("spawn spotbatch");
    assert!(
        matches!(out.status.code(), Some(0 | 1)),
        "status --json failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("status --json prints JSON")
}

/// Makes a CA (`ca.pem`) and a server certificate for 127.0.0.1 (`server.pem`, `server.key`) in
/// `dir` with the openssl command line.
pub fn make_tls(dir: &Path) {
    let sh = |args: &str| {
        let out = Command::new("sh")
            .arg("-c")
            .arg(args)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    sh("openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=test-ca -keyout ca.key -out ca.pem");
    sh("openssl req -newkey rsa:2048 -nodes -subj /CN=127.0.0.1 -keyout server.key -out server.csr");
    sh("printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\\nbasicConstraints=CA:FALSE\\n' > ext.cnf && \
        openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -extfile ext.cnf -out server.pem");
}

/// Polls `status --json` until the job is done (asserting it gets there within `within`); the
/// last status.
pub fn wait_done(url: &str, job_id: &str, within: Duration) -> serde_json::Value {
    let until = Instant::now() + within;
    let s = loop {
        let s = status_json(url, job_id);
        if s["state"] == "done" || Instant::now() > until {
            break s;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(s["state"], "done", "{s}");
    s
}

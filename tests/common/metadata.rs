//! Loopback stand-ins for the clouds' metadata services (the one thing that cannot exist here),
//! speaking their documented formats: AWS IMDSv2 (token required), GCP (`Metadata-Flavor`,
//! `wait_for_change`), Azure Scheduled Events (`Metadata: true`, acknowledgements recorded).
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A request as the fake saw it.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub headers: HashMap<String, String>,
    pub body: String,
}

type Handler = dyn Fn(&Request) -> (u16, String) + Send + Sync;

/// A tiny HTTP/1.1 server on 127.0.0.1 that answers each request with `handler` and closes the
/// connection. Runs on plain threads until the test process ends.
pub struct Fake {
    pub url: String,
    pub seen: Arc<Mutex<Vec<Request>>>,
}

impl Fake {
    pub fn start(handler: impl Fn(&Request) -> (u16, String) + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen: Arc<Mutex<Vec<Request>>> = Arc::default();
        let handler: Arc<Handler> = Arc::new(handler);
        let seen2 = Arc::clone(&seen);
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (h, s) = (Arc::clone(&handler), Arc::clone(&seen2));
                std::thread::spawn(move || serve(stream, &*h, &s));
            }
        });
        Self { url, seen }
    }

    pub fn requests(&self) -> Vec<Request> {
        self.seen.lock().unwrap().clone()
    }
}

fn serve(stream: TcpStream, handler: &Handler, seen: &Mutex<Vec<Request>>) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let path = parts.next().unwrap_or("").to_string();
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let len: usize = headers
        .get("content-length")
        .and_then(|l| l.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    let _ = reader.read_exact(&mut body);
    let req = Request {
        method,
        path,
        headers,
        body: String::from_utf8_lossy(&body).to_string(),
    };
    seen.lock().unwrap().push(req.clone());
    let (status, body) = handler(&req);
    let reason = match status {
        200 => "OK",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        _ => "Error",
    };
    let mut out = stream;
    let _ = write!(
        out,
        "HTTP/1.1 {status} {reason}\r\nContent-Length: {}\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

/// AWS IMDSv2: `PUT /latest/api/token` (TTL header required) gives a token; every GET must carry
/// it or gets 401; `spot/instance-action` and `events/recommendations/rebalance` are 404 until set.
#[derive(Clone, Default)]
pub struct AwsState {
    pub action: Arc<Mutex<Option<String>>>,
    pub rebalance: Arc<Mutex<Option<String>>>,
    /// Answer this many requests with 500 first (metadata errors must be retried).
    pub fail_first: Arc<Mutex<usize>>,
}

pub const AWS_TOKEN: &str = "AQAEAtest-token==";

pub fn aws(state: AwsState) -> Fake {
    Fake::start(move |r| {
        {
            let mut f = state.fail_first.lock().unwrap();
            if *f > 0 {
                *f -= 1;
                return (500, "internal error".into());
            }
        }
        if r.method == "PUT" && r.path == "/latest/api/token" {
            return match r.headers.get("x-aws-ec2-metadata-token-ttl-seconds") {
                Some(_) => (200, AWS_TOKEN.into()),
                None => (400, "missing TTL header".into()),
            };
        }
        if r.headers
            .get("x-aws-ec2-metadata-token")
            .map(String::as_str)
            != Some(AWS_TOKEN)
        {
            return (401, String::new());
        }
        let slot = match r.path.as_str() {
            "/latest/meta-data/spot/instance-action" => &state.action,
            "/latest/meta-data/events/recommendations/rebalance" => &state.rebalance,
            _ => return (404, String::new()),
        };
        match slot.lock().unwrap().clone() {
            Some(body) => (200, body),
            None => (404, String::new()),
        }
    })
}

/// An AWS instance-action body: terminate in `secs` seconds.
pub fn aws_terminate_in(secs: u64) -> String {
    let t = chrono_like_rfc3339(std::time::SystemTime::now() + Duration::from_secs(secs));
    format!(r#"{{"action":"terminate","time":"{t}"}}"#)
}

/// RFC 3339 in UTC, whole seconds, as IMDS writes it.
pub fn chrono_like_rfc3339(t: std::time::SystemTime) -> String {
    let secs = t.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    spotbatch_proto::rfc3339::format(secs as f64)
}

/// GCP: `instance/preempted?wait_for_change=true` (with `Metadata-Flavor: Google`, else 403)
/// answers `TRUE` once preempted, else holds the request up to 2 s and answers `FALSE`.
pub fn gcp(preempted: Arc<Mutex<bool>>) -> Fake {
    Fake::start(move |r| {
        if r.headers.get("metadata-flavor").map(String::as_str) != Some("Google") {
            return (403, "Missing Metadata-Flavor:Google header".into());
        }
        if r.path.starts_with("/computeMetadata/v1/instance/preempted") {
            let until = Instant::now() + Duration::from_secs(2);
            while Instant::now() < until {
                if *preempted.lock().unwrap() {
                    return (200, "TRUE".into());
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            return (200, "FALSE".into());
        }
        if r.path.starts_with("/computeMetadata/v1/instance/id") {
            return (200, "1234567890".into());
        }
        (404, String::new())
    })
}

/// Azure: instance name and Scheduled Events (with `Metadata: true`, else 400); POSTed
/// acknowledgements are kept in `acks`.
pub fn azure(vm: &'static str, events: Arc<Mutex<String>>, acks: Arc<Mutex<Vec<String>>>) -> Fake {
    Fake::start(move |r| {
        if r.headers.get("metadata").map(String::as_str) != Some("true") {
            return (400, "Bad request: Metadata header required".into());
        }
        if r.path.starts_with("/metadata/instance/compute/name") {
            return (200, vm.into());
        }
        if r.path.starts_with("/metadata/instance") {
            return (200, "{}".into());
        }
        if r.path.starts_with("/metadata/scheduledevents") {
            if r.method == "POST" {
                acks.lock().unwrap().push(r.body.clone());
                return (200, String::new());
            }
            return (200, events.lock().unwrap().clone());
        }
        (404, String::new())
    })
}

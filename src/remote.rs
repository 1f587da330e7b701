//! The coordinator command and the commands that talk to one (`submit`, `status`, `jobs`,
//! `cancel`). The token comes from `SPOTBATCH_TOKEN`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use spotbatch_coordinator::server::{serve, start, ServeOptions};
use spotbatch_coordinator::service::CoordinatorConfig;
use spotbatch_net::Auth;
use spotbatch_net::{describe, Client};
use spotbatch_proto::api::{
    CancelRequest, JobStatus, ListJobsRequest, StatusRequest, SubmitRequest,
};
use tokio_util::sync::CancellationToken;

use crate::say::{self, count};

#[derive(Args)]
pub struct CoordinatorArgs {
    /// gRPC address.
    #[arg(long, default_value = "127.0.0.1:7070")]
    listen: SocketAddr,
    /// HTTP address for /metrics, /healthz and /readyz.
    #[arg(long, default_value = "127.0.0.1:9464")]
    http: SocketAddr,
    /// The queue every job's shards go to (`sqs://…`, `kafka://…`, `sqlite://…`).
    #[arg(long)]
    queue: String,
    /// Where job records live: an object-store prefix (`file:///…/` or `s3://bucket/prefix/`).
    #[arg(long)]
    state: String,
    /// Serve without the bearer-token check (otherwise SPOTBATCH_TOKEN must be set).
    #[arg(long)]
    insecure_no_auth: bool,
    /// TLS certificate chain (PEM); with --tls-key, the API is served over TLS.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// How often workers heartbeat (ms); three missed and a worker is marked dead.
    #[arg(long, default_value_t = 2000)]
    heartbeat_ms: u64,
    /// Failures before a shard is dead-lettered (told to workers).
    #[arg(long, default_value_t = 3)]
    max_attempts: u32,
    /// Output prefixes jobs may write under (repeatable); none means any.
    #[arg(long = "allow-output")]
    allow_output: Vec<String>,
}

#[derive(Args, Clone)]
pub struct ClientArgs {
    /// The coordinator's URL.
    #[arg(
        long,
        env = "SPOTBATCH_COORDINATOR",
        default_value = "http://127.0.0.1:7070"
    )]
    coordinator: String,
    /// CA certificate (PEM) for an https:// coordinator.
    #[arg(long)]
    tls_ca: Option<PathBuf>,
}

#[derive(Args)]
pub struct SubmitArgs {
    /// The job manifest (TOML).
    manifest: PathBuf,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Args)]
pub struct StatusArgs {
    /// The job id.
    job: String,
    /// Redraw a progress bar until the job ends.
    #[arg(long)]
    watch: bool,
    /// Print the status as JSON.
    #[arg(long, conflicts_with = "watch")]
    json: bool,
    #[command(flatten)]
    client: ClientArgs,
}

pub fn token() -> Option<String> {
    std::env::var("SPOTBATCH_TOKEN")
        .ok()
        .filter(|t| !t.is_empty())
}

/// The CA certificate (PEM) of `--tls-ca`, if given.
pub fn read_ca(ca: Option<&Path>) -> anyhow::Result<Option<Vec<u8>>> {
    ca.map(read_pem).transpose()
}

/// A PEM certificate chain and key given as a pair of flags (clap makes each require the other).
pub fn read_identity(
    cert: Option<&Path>,
    key: Option<&Path>,
) -> anyhow::Result<Option<(Vec<u8>, Vec<u8>)>> {
    match (cert, key) {
        (Some(c), Some(k)) => Ok(Some((read_pem(c)?, read_pem(k)?))),
        _ => Ok(None),
    }
}

fn read_pem(p: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(p).with_context(|| format!("reading {}", p.display()))
}

/// A client for `url`, with the token from SPOTBATCH_TOKEN.
pub fn client(url: &str, ca: Option<&Path>) -> anyhow::Result<Client> {
    let ca = read_ca(ca)?;
    Ok(spotbatch_net::connect(
        url,
        token().as_deref(),
        ca.as_deref(),
    )?)
}

fn status_error(s: tonic::Status) -> anyhow::Error {
    match s.code() {
        tonic::Code::Unauthenticated => {
            anyhow::anyhow!("the coordinator refused the token (set SPOTBATCH_TOKEN)")
        }
        tonic::Code::Unavailable => anyhow::anyhow!("coordinator unavailable: {}", describe(&s)),
        _ => anyhow::anyhow!("{}", describe(&s)),
    }
}

pub async fn coordinator(args: CoordinatorArgs) -> anyhow::Result<ExitCode> {
    let auth = match (token(), args.insecure_no_auth) {
        (_, true) => {
            tracing::warn!("serving without authentication (--insecure-no-auth)");
            Auth::none()
        }
        (Some(t), false) => Auth::token(&t),
        (None, false) => {
            bail!("set SPOTBATCH_TOKEN (the bearer token clients must send), or pass --insecure-no-auth")
        }
    };
    let handle = install_metrics()?;
    let state = url_of(&args.state).context("--state")?;
    let mut allowed = Vec::new();
    for p in &args.allow_output {
        allowed.push(url_of(p).with_context(|| format!("--allow-output {p}"))?);
    }
    let svc = start(
        CoordinatorConfig {
            queue_uri: args.queue.clone(),
            max_attempts: args.max_attempts,
            heartbeat_interval: Duration::from_millis(args.heartbeat_ms.max(100)),
            missed_heartbeats: 3,
            allowed_outputs: allowed,
        },
        &state,
    )
    .await?;
    let tls = read_identity(args.tls_cert.as_deref(), args.tls_key.as_deref())?;
    let stop = CancellationToken::new();
    {
        // SIGTERM or Ctrl-C stops serving (the one signal source every command uses).
        let stop = stop.clone();
        tokio::spawn(async move {
            use spotbatch_worker::notice::NoticeSource;
            spotbatch_worker::notice::SignalSource::new(Duration::ZERO)
                .next()
                .await;
            stop.cancel();
        });
    }
    eprintln!(
        "coordinator: gRPC on {}{}, HTTP on {}, queue {}, state {}",
        args.listen,
        if tls.is_some() { " (TLS)" } else { "" },
        args.http,
        args.queue,
        state
    );
    serve(
        svc,
        ServeOptions {
            listen: args.listen,
            http: Some(args.http),
            auth,
            tls,
            metrics: Arc::new(move || handle.render()),
        },
        stop,
    )
    .await?;
    Ok(ExitCode::SUCCESS)
}

/// A URL from a URL or a local folder path (made absolute, with a trailing slash).
fn url_of(s: &str) -> anyhow::Result<url::Url> {
    if s.contains("://") {
        return Ok(url::Url::parse(s)?);
    }
    let abs = std::path::absolute(s)?;
    url::Url::from_directory_path(&abs)
        .map_err(|_| anyhow::anyhow!("{} is not a usable folder path", abs.display()))
}

pub async fn submit(args: SubmitArgs) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(&args.manifest)
        .with_context(|| format!("reading {}", args.manifest.display()))?;
    let folder = std::path::absolute(&args.manifest)?
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("/"));
    let base = url::Url::from_directory_path(&folder)
        .map_err(|_| anyhow::anyhow!("{} is not a usable folder", folder.display()))?;
    let mut c = client(&args.client.coordinator, args.client.tls_ca.as_deref())?;
    let reply = match c
        .submit(SubmitRequest {
            manifest_toml: text,
            base_url: base.to_string(),
        })
        .await
    {
        Ok(r) => r.into_inner(),
        Err(s) if s.code() == tonic::Code::InvalidArgument => {
            // One line per problem, each naming the field, as `validate` prints them.
            let name = args.manifest.display();
            for line in s.message().lines() {
                eprintln!("{name}: {line}");
            }
            return Ok(ExitCode::from(2));
        }
        Err(s) => return Err(status_error(s)),
    };
    println!("{}", reply.job_id);
    eprintln!(
        "{}: {} ({} enqueued, {} already done), {} → {}",
        reply.job_id,
        count(reply.shards_total, "shard"),
        reply.shards_enqueued,
        reply.shards_already_done,
        count(reply.items_total, "input"),
        reply.output
    );
    let name = args.manifest.display();
    for note in &reply.notes {
        eprintln!("{name}: note: {note}");
    }
    Ok(ExitCode::SUCCESS)
}

fn status_json(s: &JobStatus) -> serde_json::Value {
    serde_json::json!({
        "job": s.job_id,
        "state": s.state,
        "items": {"total": s.items_total, "done": s.items_done, "failed": s.items_failed, "dead": s.items_dead},
        "shards": {"total": s.shards_total, "done": s.shards_done},
        "rate_items_per_s": s.rate,
        "eta_s": if s.eta_seconds < 0.0 { serde_json::Value::Null } else { serde_json::json!(s.eta_seconds) },
        "in_flight": s.in_flight.iter().map(|f| serde_json::json!({"shard": f.shard, "worker": f.worker})).collect::<Vec<_>>(),
        "dead_lettered": s.dead_lettered.iter().map(|d| serde_json::json!({"shard": d.shard, "reason": d.reason, "deliveries": d.deliveries})).collect::<Vec<_>>(),
        "workers": s.workers.iter().map(|w| serde_json::json!({
            "id": w.worker_id, "alive": w.alive, "exited": w.exited, "capacity": w.capacity, "device": w.device,
            "items_per_s": w.items_per_second, "shards": w.shards, "unstarted": w.unstarted,
        })).collect::<Vec<_>>(),
        "output": s.output,
    })
}

fn status_line(s: &JobStatus) -> String {
    let eta = if s.eta_seconds < 0.0 {
        "ETA unknown".to_string()
    } else {
        format!("ETA {:.0} s", s.eta_seconds)
    };
    let dead_items = if s.items_dead > 0 {
        format!(", {} in dead-lettered shards", s.items_dead)
    } else {
        String::new()
    };
    let alive = s.workers.iter().filter(|w| w.alive).count() as u64;
    let exited = s.workers.iter().filter(|w| w.exited).count() as u64;
    let dead = s.workers.len() as u64 - alive - exited;
    let mut workers = format!("{} alive", count(alive, "worker"));
    if exited > 0 {
        workers.push_str(&format!(", {exited} exited"));
    }
    if dead > 0 {
        workers.push_str(&format!(", {dead} dead"));
    }
    format!(
        "{}: {} — {}/{} items ({}{dead_items}), {}/{} shards, {} items/s, {eta}; {} in flight, {} dead-lettered, {workers}",
        s.job_id,
        s.state,
        s.items_done,
        s.items_total,
        count(s.items_failed, "error row"),
        s.shards_done,
        s.shards_total,
        say::rate(s.rate),
        s.in_flight.len(),
        s.dead_lettered.len(),
    )
}

/// `status`'s exit code, as `run`'s: 0 done (or still running), 1 failed or cancelled.
fn status_code(s: &JobStatus) -> ExitCode {
    match s.state.as_str() {
        "failed" | "cancelled" => ExitCode::from(1),
        _ => ExitCode::SUCCESS,
    }
}

pub async fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let mut c = client(&args.client.coordinator, args.client.tls_ca.as_deref())?;
    let get = |c: &mut Client| {
        let mut c = c.clone();
        let job = args.job.clone();
        async move {
            c.status(StatusRequest { job_id: job })
                .await
                .map(tonic::Response::into_inner)
                .map_err(status_error)
        }
    };
    let print_dead = |s: &JobStatus| {
        for d in &s.dead_lettered {
            println!(
                "  dead-lettered shard {} after {}: {}",
                d.shard,
                count(d.deliveries, "delivery"),
                d.reason
            );
        }
    };
    if args.json {
        let s = get(&mut c).await?;
        println!("{}", serde_json::to_string_pretty(&status_json(&s))?);
        return Ok(status_code(&s));
    }
    if !args.watch {
        let s = get(&mut c).await?;
        println!("{}", status_line(&s));
        print_dead(&s);
        return Ok(status_code(&s));
    }
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} items  {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    crate::say::set_bar(Some(bar.clone()));
    let end = loop {
        let s = match get(&mut c).await {
            Ok(s) => s,
            Err(e) => {
                crate::say::set_bar(None);
                return Err(e);
            }
        };
        bar.set_length(s.items_total);
        bar.set_position(s.items_done);
        bar.set_message(format!(
            "{} · {} items/s · {} · {} · {} dead-lettered",
            s.state,
            say::rate(s.rate),
            if s.eta_seconds < 0.0 {
                "ETA ?".into()
            } else {
                format!("ETA {:.0} s", s.eta_seconds)
            },
            count(s.items_failed, "error row"),
            count(s.dead_lettered.len() as u64, "shard"),
        ));
        if s.state != "running" {
            break s;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    crate::say::set_bar(None);
    bar.finish();
    println!("{}", status_line(&end));
    print_dead(&end);
    Ok(status_code(&end))
}

pub async fn jobs(args: ClientArgs) -> anyhow::Result<ExitCode> {
    let mut c = client(&args.coordinator, args.tls_ca.as_deref())?;
    let list = c
        .list_jobs(ListJobsRequest {})
        .await
        .map_err(status_error)?
        .into_inner();
    for j in list.jobs {
        println!(
            "{}\t{}\t{}/{} items",
            j.job_id, j.state, j.items_done, j.items_total
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn cancel(job: &str, args: ClientArgs) -> anyhow::Result<ExitCode> {
    let mut c = client(&args.coordinator, args.tls_ca.as_deref())?;
    let r = c
        .cancel(CancelRequest {
            job_id: job.to_string(),
        })
        .await
        .map_err(status_error)?
        .into_inner();
    println!(
        "{job}: cancelled{}",
        if r.was_running {
            ""
        } else {
            " (it was not running)"
        }
    );
    Ok(ExitCode::SUCCESS)
}

/// Installs the Prometheus recorder (see `spotbatch_net::exporter`).
pub fn install_metrics() -> anyhow::Result<metrics_exporter_prometheus::PrometheusHandle> {
    spotbatch_net::install_prometheus().context("installing the metrics recorder")
}

#[cfg(test)]
mod tests {
    use super::*;
    use spotbatch_proto::api::{DeadShard, ShardInFlight, WorkerInfo};

    fn status(eta: f64) -> JobStatus {
        JobStatus {
            job_id: "j-1".into(),
            state: "running".into(),
            items_total: 100,
            items_done: 40,
            items_failed: 2,
            shards_total: 10,
            shards_done: 4,
            rate: 12.5,
            eta_seconds: eta,
            in_flight: vec![ShardInFlight {
                shard: "s5".into(),
                worker: "w".into(),
            }],
            dead_lettered: vec![DeadShard {
                shard: "s9".into(),
                reason: "bad model".into(),
                deliveries: 3,
            }],
            workers: vec![
                WorkerInfo {
                    worker_id: "w".into(),
                    alive: true,
                    ..Default::default()
                },
                WorkerInfo {
                    worker_id: "gone".into(),
                    alive: false,
                    ..Default::default()
                },
                WorkerInfo {
                    worker_id: "left".into(),
                    alive: false,
                    exited: true,
                    ..Default::default()
                },
            ],
            output: "file:///o/j-1/".into(),
            submitted_unix_ms: 0,
            items_dead: 10,
        }
    }

    #[test]
    fn the_status_line_says_progress_rate_eta_and_who_is_alive() {
        assert_eq!(
            status_line(&status(48.0)),
            "j-1: running — 40/100 items (2 error rows, 10 in dead-lettered shards), 4/10 shards, 12.5 items/s, ETA 48 s; 1 in flight, 1 dead-lettered, 1 worker alive, 1 exited, 1 dead"
        );
        assert!(status_line(&status(-1.0)).contains("ETA unknown"));
        // A failed or cancelled job exits 1, as `run` does for dead letters.
        let mut s = status(0.0);
        assert_eq!(status_code(&s), ExitCode::SUCCESS);
        s.state = "failed".into();
        assert_eq!(status_code(&s), ExitCode::from(1));
    }

    #[test]
    fn status_json_has_every_field_and_null_for_an_unknown_eta() {
        let v = status_json(&status(-1.0));
        assert!(v["eta_s"].is_null());
        assert_eq!(v["items"]["failed"], 2);
        assert_eq!(v["dead_lettered"][0]["reason"], "bad model");
        assert_eq!(v["workers"][1]["alive"], false);
        assert_eq!(status_json(&status(3.0))["eta_s"], 3.0);
    }
}

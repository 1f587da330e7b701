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
use spotbatch_coordinator::service::{CoordinatorConfig, FleetConfig};
use spotbatch_net::Auth;
use spotbatch_net::{describe, Client};
use spotbatch_proto::api::{
    CancelRequest, FleetStatus, JobStatus, ListJobsRequest, StatusRequest, SubmitRequest,
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
    /// Most spot workers the fleet asks for (the spot Deployment's maxReplicaCount).
    #[arg(long, default_value_t = 100)]
    max_spot_workers: u32,
    /// On-demand workers a job with a deadline may add when its manifest does not say
    /// (job.max_on_demand_workers).
    #[arg(long, default_value_t = 10)]
    max_on_demand_workers: u32,
    /// The workers' instance type: the interruption prior and the prices the fleet policy uses
    /// (the built-in table, e.g. g5.xlarge).
    #[arg(long, env = "SPOTBATCH_INSTANCE_TYPE")]
    instance_type: Option<String>,
    /// The workers' region, for the interruption prior (e.g. us-east-1).
    #[arg(long, env = "SPOTBATCH_REGION")]
    region: Option<String>,
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
            fleet: FleetConfig {
                max_spot_workers: args.max_spot_workers,
                max_on_demand_workers: args.max_on_demand_workers,
                instance_type: args.instance_type.clone(),
                region: args.region.clone(),
            },
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
        "fleet": s.fleet.as_ref().map(fleet_json),
    })
}

/// A negative figure is unknown: null.
fn known(v: f64) -> serde_json::Value {
    if v < 0.0 || !v.is_finite() {
        serde_json::Value::Null
    } else {
        serde_json::json!(v)
    }
}

fn fleet_json(f: &FleetStatus) -> serde_json::Value {
    serde_json::json!({
        "mode": f.mode,
        "deadline_unix_s": known(f.deadline_unix_s),
        "projected_finish_unix_s": known(f.projected_finish_unix_s),
        "miss_risk": known(f.miss_risk),
        "desired": {"spot": f.desired_spot, "on_demand": f.desired_on_demand},
        "running": {"spot": f.running_spot, "on_demand": f.running_on_demand},
        "max_on_demand_workers": f.max_on_demand_workers,
        "triggers": f.triggers,
        "interruptions_per_hour": f.interruptions_per_hour,
        "items_per_s_per_worker": {
            "spot": known(if f.spot_items_per_second > 0.0 { f.spot_items_per_second } else { -1.0 }),
            "on_demand": known(if f.on_demand_items_per_second > 0.0 { f.on_demand_items_per_second } else { -1.0 }),
        },
        "expected_cost_dollars": known(f.expected_cost),
        "shard_size": f.shard_size,
        "suggested_shard_size": if f.suggested_shard_size > 0 { serde_json::json!(f.suggested_shard_size) } else { serde_json::Value::Null },
    })
}

/// Seconds as people read them: `45 s`, `12 min`, `3.5 h`.
fn span(s: f64) -> String {
    let s = s.abs();
    if s < 120.0 {
        format!("{s:.0} s")
    } else if s < 7_200.0 {
        format!("{:.0} min", s / 60.0)
    } else {
        format!("{:.1} h", s / 3_600.0)
    }
}

/// The fleet part of `status` at `now` (Unix seconds): the deadline, the projected finish and
/// its risk, desired against running workers by capacity, what triggered on-demand, the shard
/// size.
fn fleet_line(f: &FleetStatus, now: f64) -> String {
    let mut parts = Vec::new();
    if f.deadline_unix_s >= 0.0 {
        let left = f.deadline_unix_s - now;
        parts.push(format!(
            "deadline {} ({})",
            spotbatch_proto::rfc3339::format(f.deadline_unix_s),
            if left >= 0.0 {
                format!("in {}", span(left))
            } else {
                format!("{} ago", span(left))
            }
        ));
    } else {
        parts.push("no deadline".to_string());
    }
    if f.mode == "done" {
        parts.push("finished".into());
    } else if f.projected_finish_unix_s >= 0.0 {
        let mut p = format!(
            "projected finish {} (in {})",
            spotbatch_proto::rfc3339::format(f.projected_finish_unix_s),
            span((f.projected_finish_unix_s - now).max(0.0))
        );
        if f.deadline_unix_s >= 0.0 {
            let margin = f.deadline_unix_s - f.projected_finish_unix_s;
            p.push_str(&format!(
                ", {} {}",
                span(margin),
                if margin >= 0.0 { "early" } else { "late" }
            ));
        }
        parts.push(p);
    } else {
        parts.push("projected finish unknown (no rate yet)".into());
    }
    if f.miss_risk >= 0.0 {
        parts.push(format!("miss risk {:.1} %", f.miss_risk * 100.0));
    }
    let mut want = format!(
        "want {} spot + {} on-demand (max {}), running {} + {}",
        f.desired_spot,
        f.desired_on_demand,
        f.max_on_demand_workers,
        f.running_spot,
        f.running_on_demand
    );
    want.push_str(&format!(" [{}", f.mode));
    for t in &f.triggers {
        want.push_str(&format!(", {t}"));
    }
    want.push(']');
    parts.push(want);
    if f.interruptions_per_hour > 0.0 {
        parts.push(format!(
            "{:.2} % of spot workers interrupted per hour",
            f.interruptions_per_hour * 100.0
        ));
    }
    if !f.shard_size.is_empty() {
        let mut s = format!("shard size {}", f.shard_size);
        if f.suggested_shard_size > 0 {
            s.push_str(&format!(" (suggested now: {})", f.suggested_shard_size));
        }
        parts.push(s);
    }
    if f.expected_cost >= 0.0 {
        parts.push(format!("${:.2} expected to finish", f.expected_cost));
    }
    format!("fleet: {}", parts.join("; "))
}

fn now_unix_s() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn print_fleet(s: &JobStatus) {
    if let Some(f) = &s.fleet {
        println!("  {}", fleet_line(f, now_unix_s()));
    }
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
        print_fleet(&s);
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
    print_fleet(&end);
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
            fleet: None,
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

    fn fleet(mode: &str) -> FleetStatus {
        FleetStatus {
            mode: mode.into(),
            deadline_unix_s: 1_796_104_800.0,
            projected_finish_unix_s: 1_796_101_200.0,
            miss_risk: 0.004,
            desired_spot: 6,
            desired_on_demand: 2,
            running_spot: 4,
            running_on_demand: 1,
            triggers: vec!["deadline_risk".into()],
            interruptions_per_hour: 0.041,
            spot_items_per_second: 120.0,
            on_demand_items_per_second: 0.0,
            expected_cost: -1.0,
            shard_size: "auto → 3600".into(),
            suggested_shard_size: 2400,
            max_on_demand_workers: 4,
        }
    }

    #[test]
    fn the_fleet_line_says_deadline_finish_risk_and_workers() {
        let now = 1_796_104_800.0 - 7_200.0;
        assert_eq!(
            fleet_line(&fleet("deadline"), now),
            "fleet: deadline 2026-12-01T06:00:00Z (in 2.0 h); projected finish 2026-12-01T05:00:00Z (in 60 min), 60 min early; miss risk 0.4 %; want 6 spot + 2 on-demand (max 4), running 4 + 1 [deadline, deadline_risk]; 4.10 % of spot workers interrupted per hour; shard size auto → 3600 (suggested now: 2400)"
        );
        let mut late = fleet("late");
        late.projected_finish_unix_s = late.deadline_unix_s + 90.0;
        late.expected_cost = 12.5;
        let line = fleet_line(&late, late.deadline_unix_s + 30.0);
        assert!(
            line.contains("(30 s ago)") && line.contains("90 s late"),
            "{line}"
        );
        assert!(line.ends_with("$12.50 expected to finish"), "{line}");
        let mut depth = fleet("depth");
        depth.deadline_unix_s = -1.0;
        depth.miss_risk = -1.0;
        depth.projected_finish_unix_s = -1.0;
        depth.triggers.clear();
        let line = fleet_line(&depth, now);
        assert!(
            line.starts_with(
                "fleet: no deadline; projected finish unknown (no rate yet); want 6 spot"
            ),
            "{line}"
        );
        assert!(!line.contains("miss risk"), "{line}");
        let mut s = status(1.0);
        s.fleet = Some(fleet("deadline"));
        let v = status_json(&s);
        assert_eq!(v["fleet"]["desired"]["on_demand"], 2);
        assert_eq!(v["fleet"]["miss_risk"], 0.004);
        assert!(v["fleet"]["expected_cost_dollars"].is_null());
        assert!(v["fleet"]["items_per_s_per_worker"]["on_demand"].is_null());
        assert_eq!(v["fleet"]["suggested_shard_size"], 2400);
        assert!(status_json(&status(1.0))["fleet"].is_null());
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

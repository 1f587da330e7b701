//! The `spotbatch` command: argument parsing and user-facing output. The work happens in the
//! crates (`spotbatch-proto`, `-queue`, `-plan`, `-coordinator`, `-worker`). Here: `main`, the
//! exit codes, `worker` and `queue`; the arguments are in `args`, `validate`/`run`/`enqueue` in
//! `local`, the coordinator's client commands in `remote`, `cost` and `report` in theirs.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Parser;
use spotbatch_proto::manifest::DeviceSpec;
use spotbatch_proto::ShardTask;
use spotbatch_queue::QueueConfig;
use spotbatch_worker::notice::NoticeAction;
use spotbatch_worker::validate::Checks;
use spotbatch_worker::{drain, process, Progress, WorkerOptions};
use tokio_util::sync::CancellationToken;

use say::count;

#[macro_use]
mod say;
mod args;
mod cost;
mod local;
mod remote;
mod report;
mod timings;

use args::*;
use local::{check_job, enqueue, load_manifest, run, validate};

/// An explicit `--device cuda[:N]` on a machine without that GPU stops here (exit 2), before
/// anything is leased: a CUDA request never falls back to the CPU.
fn check_device(asked: Option<DeviceSpec>) -> Option<ExitCode> {
    let Some(DeviceSpec::Cuda(n)) = asked else {
        return None;
    };
    let why = match spotbatch_worker::device::cuda_device_count() {
        Ok(count) if (n as usize) < count => return None,
        Ok(count) => format!("no GPU {n} on this machine ({count} found)"),
        Err(e) => format!("no GPU: {e}"),
    };
    eprintln!("error: --device cuda:{n}: {why}; use --device cpu or auto");
    Some(ExitCode::from(2))
}

/// Exit codes, the same for the same mistake in every command.
mod exit {
    use std::process::ExitCode;

    /// The manifest, what it names, or the command line is wrong: nothing was started.
    pub fn invalid() -> ExitCode {
        ExitCode::from(2)
    }

    /// The job failed (dead-lettered shards, a failed or cancelled job) or an error stopped the
    /// command.
    pub fn failed() -> ExitCode {
        ExitCode::from(1)
    }

    /// Interrupted (Ctrl-C): run the same command again to resume.
    pub fn interrupted() -> ExitCode {
        ExitCode::from(130)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = say::log_filter(std::env::var("SPOTBATCH_LOG").ok().as_deref());
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&filter).unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(say::Stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    // Both rustls back ends are linked (the AWS SDK brings aws-lc); the coordinator's TLS uses ring.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return exit::failed();
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run(args) => run(args).await,
            Command::Validate { manifest } => validate(&manifest).await,
            Command::Enqueue { manifest, queue } => enqueue(&manifest, queue).await,
            Command::Worker(args) => worker(*args).await,
            Command::Queue(cmd) => queue_command(cmd).await,
            Command::Coordinator(args) => remote::coordinator(args).await,
            Command::Submit(args) => remote::submit(args).await,
            Command::Status(args) => remote::status(args).await,
            Command::Jobs(args) => remote::jobs(args).await,
            Command::Cancel { job, client } => remote::cancel(&job, client).await,
            Command::Cost(cmd) => cost::run(cmd).await,
            Command::Report(cmd) => report::run(cmd).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            say!("error: {e:#}");
            exit::failed()
        }
    }
}

/// A `sqlite://` queue a command reads must exist: opening it would create an empty one.
fn existing_sqlite(uri: &str) -> anyhow::Result<()> {
    if !uri.starts_with("sqlite://") {
        return Ok(());
    }
    let (path, _) = spotbatch_queue::sqlite::parse_uri(uri)?;
    if !path.exists() {
        bail!(
            "{uri}: no such queue file {} (`spotbatch enqueue`, `run` or `queue create` makes one)",
            path.display()
        );
    }
    Ok(())
}

/// The queues a command about `uri` covers: the one it names, or for a SQLite file without
/// `?queue=NAME`, every queue in the file (`run` keeps one per job there). `None`: just `uri`.
async fn sqlite_queues(uri: &str) -> anyhow::Result<Option<Vec<String>>> {
    if !uri.starts_with("sqlite://") {
        return Ok(None);
    }
    existing_sqlite(uri)?;
    let (path, named) = spotbatch_queue::sqlite::parse_uri(uri)?;
    let names = spotbatch_queue::sqlite::queue_names(&path).await?;
    if uri.contains("queue=") {
        if !names.contains(&named) && !names.is_empty() {
            bail!(
                "{uri}: no queue {named:?} in {} (it holds {})",
                path.display(),
                names.join(", ")
            );
        }
        return Ok(None);
    }
    if names.is_empty() || names == ["default"] {
        return Ok(None);
    }
    let base = uri.split('?').next().unwrap_or(uri);
    Ok(Some(
        names
            .into_iter()
            .map(|n| format!("{base}?queue={n}"))
            .collect(),
    ))
}

async fn worker(args: WorkerArgs) -> anyhow::Result<ExitCode> {
    if let Some(code) = check_device(args.device) {
        return Ok(code);
    }
    let mut manifests = Vec::new();
    for path in &args.manifests {
        match load_manifest(path) {
            Ok(m) => manifests.push(m),
            Err(code) => return Ok(code),
        }
    }
    if let Some(q) = &args.queue {
        if let Err(e) = existing_sqlite(q) {
            say!("error: --queue {e:#}");
            return Ok(exit::invalid());
        }
    }
    spotbatch_worker::engine::ort_environment()?;
    // The jobs it is given must be workable here: refuse up front what `validate` refuses.
    for (path, m) in args.manifests.iter().zip(&manifests) {
        let checks = Checks {
            inputs: false,
            device: args.device,
            here: true,
        };
        if let Err(code) = check_job(path, m, checks).await {
            return Ok(code);
        }
    }
    let coordinator = match &args.coordinator {
        Some(url) => Some(process::CoordinatorSettings {
            url: url.clone(),
            client: remote::client(url, args.tls_ca.as_deref())?,
            ca: remote::read_ca(args.tls_ca.as_deref())?,
            token: remote::token(),
            capacity_type: args.cost.capacity_label().to_string(),
        }),
        None => None,
    };
    let peers = match (args.steal, &coordinator) {
        (Toggle::On, Some(_)) => Some(process::PeerSettings {
            listen: args.peer_listen,
            advertise: args.peer_advertise.clone(),
            tls: remote::read_identity(
                args.peer_tls_cert.as_deref(),
                args.peer_tls_key.as_deref(),
            )?,
            handoff_timeout: Duration::from_millis(args.handoff_timeout_ms),
        }),
        _ => None,
    };
    let metrics = match args.metrics_addr {
        Some(addr) => {
            let handle = remote::install_metrics()?;
            Some(process::MetricsSettings {
                addr,
                render: Arc::new(move || handle.render()),
                linger: Duration::from_millis(args.metrics_linger_ms),
            })
        }
        None => None,
    };
    let a = &args.notices;
    let notices = drain::NoticeSettings {
        cloud: match a.notices {
            NoticeMode::None => drain::Cloud::None,
            NoticeMode::Auto => drain::Cloud::Auto,
            NoticeMode::Aws => drain::Cloud::Aws,
            NoticeMode::Gcp => drain::Cloud::Gcp,
            NoticeMode::Azure => drain::Cloud::Azure,
        },
        signal_grace: Duration::from_secs(a.grace_period_secs),
        gcp_grace: Duration::from_secs(a.gcp_grace_period_secs),
        rebalance: match a.rebalance {
            RebalancePolicy::Ignore => None,
            RebalancePolicy::StopLeasing => Some(NoticeAction::StopLeasing),
            RebalancePolicy::Drain => Some(NoticeAction::Drain),
        },
        poll: Duration::from_millis(a.notice_poll_ms),
        aws_url: a.aws_metadata_url.clone(),
        gcp_url: a.gcp_metadata_url.clone(),
        azure_url: a.azure_metadata_url.clone(),
        azure_vm_name: a.azure_vm_name.clone(),
    };
    let progress = Arc::new(Progress::default());
    let finished = CancellationToken::new();
    let display = spawn_progress(
        args.progress,
        Arc::clone(&progress),
        None,
        0,
        0,
        Duration::from_secs(args.progress_secs),
        finished.clone(),
    );
    let cfg = process::ProcessConfig {
        queue: args.queue.clone(),
        coordinator,
        peers,
        metrics,
        manifests,
        max_attempts: args.max_attempts,
        worker: WorkerOptions {
            id: args.id.clone().unwrap_or_default(),
            prefetch: usize::from(args.prefetch),
            decode_threads: args
                .decode_threads
                .unwrap_or_else(spotbatch_worker::default_decode_threads),
            exit_when_empty: args.exit_when_empty,
            throttle_batch: args.throttle_batch_ms.map(Duration::from_millis),
            visibility: args.visibility_timeout_secs.map(Duration::from_secs),
            processed_log: args.debug_processed_log.clone(),
            prices: args.cost.prices()?,
            give_up_unreachable: (args.give_up_after_secs > 0)
                .then(|| Duration::from_secs(args.give_up_after_secs)),
            ..WorkerOptions::default()
        },
        ort_threads: args.ort_threads,
        device: args.device,
        notices,
        progress: Some(progress),
    };
    let s = process::run(cfg, |e| match e {
        process::ProcessEvent::Metrics(id, bound) => {
            say!("{id}: metrics on http://{bound}/metrics")
        }
        process::ProcessEvent::Drain(drain::DrainEvent::StopLeasing(n)) => say!(
            "{} notice ({}): no new work will be leased",
            n.source,
            n.kind
        ),
        process::ProcessEvent::Drain(drain::DrainEvent::Draining(n, left)) => say!(
            "{} notice ({}): draining, deadline in {:.1} s (a second signal stops at once)",
            n.source,
            n.kind,
            left.as_secs_f64()
        ),
        process::ProcessEvent::Drain(drain::DrainEvent::Stopping(_)) => {
            say!("second signal: stopping now")
        }
        process::ProcessEvent::Drain(drain::DrainEvent::Exit(_)) => std::process::exit(130),
    })
    .await;
    finished.cancel();
    let _ = display.await;
    let s = s?;
    let p = &s.progress;
    let items = p.items_ok.load(Ordering::Relaxed) + p.items_failed.load(Ordering::Relaxed);
    say!(
        "{}: {} done ({} skipped as already done, {}), {} ({}) in {:.1} s{}{}",
        s.id,
        count(p.shards_done.load(Ordering::Relaxed), "shard"),
        p.shards_skipped.load(Ordering::Relaxed),
        count(p.attempts_failed.load(Ordering::Relaxed), "failed attempt"),
        count(items, "item"),
        count(p.items_failed.load(Ordering::Relaxed), "error row"),
        s.elapsed.as_secs_f64(),
        s.queue_requests
            .map(|n| format!(", {}", count(n, "queue request")))
            .unwrap_or_default(),
        if s.drained {
            "; drained, leases released"
        } else {
            ""
        },
    );
    Ok(ExitCode::SUCCESS)
}

async fn queue_command(cmd: QueueCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        QueueCommand::Create {
            uri,
            dlq,
            max_attempts,
        } => match spotbatch_queue::create(&uri, dlq, max_attempts).await? {
            spotbatch_queue::Created::Kafka { topic, partitions } => {
                println!(
                    "{topic}: topic with {} and {topic}-dlq ready",
                    count(partitions as u64, "partition")
                )
            }
            spotbatch_queue::Created::Sqlite => {
                println!("{uri}: ready (SQLite queues keep their dead letters in the same file)")
            }
            spotbatch_queue::Created::Sqs { url, dlq_after } => {
                let extra = dlq_after
                    .map(|n| format!(", dead-letter queue after {}", count(n as u64, "receive")))
                    .unwrap_or_default();
                println!("{url}{extra}");
            }
        },
        QueueCommand::Dlq { uri } => {
            let uris = sqlite_queues(&uri).await?;
            let named = uris.is_some();
            for uri in uris.unwrap_or_else(|| vec![uri.clone()]) {
                let q = spotbatch_queue::open(&uri, QueueConfig::default()).await?;
                let dead = q.dead_letters(10_000).await?;
                let queue = if named {
                    format!("{}: ", q.name())
                } else {
                    String::new()
                };
                for d in &dead {
                    let what = match ShardTask::from_bytes(&d.body) {
                        Ok(t) => format!(
                            "job {} shard {} (#{}, {})",
                            t.job,
                            t.shard,
                            t.index,
                            count(t.keys.len() as u64, "key")
                        ),
                        Err(_) => format!(
                            "item {} ({} bytes, not a spotbatch shard)",
                            d.id,
                            d.body.len()
                        ),
                    };
                    println!(
                        "{queue}{what}: {}: {}",
                        count(d.delivery_count, "delivery"),
                        d.reason
                    );
                }
                say!("{}: {} dead-lettered", q.name(), dead.len());
            }
        }
        QueueCommand::Depth { uri } => match sqlite_queues(&uri).await? {
            Some(uris) => {
                for uri in uris {
                    let q = spotbatch_queue::open(&uri, QueueConfig::default()).await?;
                    let d = q.depth().await?;
                    println!(
                        "{}: visible {} in_flight {} dead {}",
                        q.name(),
                        d.visible,
                        d.in_flight,
                        d.dead
                    );
                }
            }
            None => {
                let q = spotbatch_queue::open(&uri, QueueConfig::default()).await?;
                let d = q.depth().await?;
                println!(
                    "visible {} in_flight {} dead {}",
                    d.visible, d.in_flight, d.dead
                );
            }
        },
    }
    Ok(ExitCode::SUCCESS)
}

/// Shows progress until `finished`: a bar (or, without a total, a line redrawn) on a terminal,
/// else a line every `every` when something changed.
fn spawn_progress(
    mode: ProgressMode,
    p: Arc<Progress>,
    total: Option<u64>,
    done_before: u64,
    errors_before: u64,
    every: Duration,
    finished: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let bar = match mode {
        ProgressMode::Bar => true,
        ProgressMode::Auto => std::io::stderr().is_terminal(),
        ProgressMode::Plain | ProgressMode::None => false,
    };
    let quiet = mode == ProgressMode::None;
    tokio::spawn(async move {
        let started = Instant::now();
        // Rows as the pipeline makes them (a record job's shard holds thousands).
        let counts = |p: &Progress| {
            let made = p.rows_made.load(Ordering::Relaxed);
            let failed = p.rows_made_failed.load(Ordering::Relaxed);
            (made, errors_before + failed)
        };
        let eta = |left: u64, rate: f64| {
            if rate > 0.0 {
                format!("ETA {:.0} s", left as f64 / rate)
            } else {
                "ETA ?".into()
            }
        };
        if bar {
            let pb = match total {
                Some(t) => indicatif::ProgressBar::new(t).with_style(
                    indicatif::ProgressStyle::with_template(
                        "{bar:40.cyan/blue} {pos}/{len} items  {msg}",
                    )
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
                ),
                None => indicatif::ProgressBar::new_spinner(),
            };
            pb.set_position(done_before);
            say::set_bar(Some(pb.clone()));
            loop {
                let (n, errors) = counts(&p);
                let rate = n as f64 / started.elapsed().as_secs_f64().max(1e-9);
                let shards = count(p.shards_in_flight.load(Ordering::Relaxed) as u64, "shard");
                pb.set_position(done_before + n);
                pb.set_message(match total {
                    Some(t) => format!(
                        "{} items/s  {}  {}, {shards} in work",
                        say::rate(rate),
                        eta(t.saturating_sub(done_before + n), rate),
                        count(errors, "error row")
                    ),
                    None => format!(
                        "{} done, {} ({}), {} items/s, {shards} held",
                        count(p.shards_done.load(Ordering::Relaxed), "shard"),
                        count(n, "item"),
                        count(errors, "error row"),
                        say::rate(rate)
                    ),
                });
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                    _ = finished.cancelled() => break,
                }
            }
            say::set_bar(None);
            pb.finish_and_clear();
        } else if !quiet {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            let mut last = (0u64, Instant::now(), u64::MAX);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = finished.cancelled() => break,
                }
                let (n, errors) = counts(&p);
                let shards_done = p.shards_done.load(Ordering::Relaxed);
                if total.is_none() && (n, shards_done) == (last.0, last.2) {
                    continue;
                }
                let now = Instant::now();
                let rate =
                    (n - last.0.min(n)) as f64 / now.duration_since(last.1).as_secs_f64().max(1e-9);
                last = (n, now, shards_done);
                match total {
                    Some(t) => say!(
                        "progress: {}/{t} items, {} items/s, {}, {}",
                        done_before + n,
                        say::rate(rate),
                        eta(t.saturating_sub(done_before + n), rate),
                        count(errors, "error row")
                    ),
                    None => say!(
                        "progress: {} done, {} ({}), {} items/s, {} held",
                        count(shards_done, "shard"),
                        count(n, "item"),
                        count(errors, "error row"),
                        say::rate(rate),
                        count(p.shards_in_flight.load(Ordering::Relaxed) as u64, "shard")
                    ),
                }
            }
        }
    })
}

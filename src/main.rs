//! The `spotbatch` command: argument parsing and user-facing output. The work happens in the
//! crates (`spotbatch-proto`, `-queue`, `-coordinator`, `-worker`).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::{Parser, Subcommand, ValueEnum};
use spotbatch_plan::{enqueue_plan, plan_job};
use spotbatch_proto::manifest::DeviceSpec;
use spotbatch_proto::{Manifest, ManifestError, ShardTask};
use spotbatch_queue::QueueConfig;
use spotbatch_store::JobLayout;
use spotbatch_worker::notice::{self, NoticeAction};
use spotbatch_worker::{drain, process, Control, Progress, WorkerOptions};
use tokio_util::sync::CancellationToken;

mod cost;
mod remote;
mod report;
mod timings;

#[derive(Parser)]
#[command(
    name = "spotbatch",
    version,
    about = "Batch inference that makes spot-instance interruption a non-event"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a job on this machine: plan, embedded queue, workers, all in one process. Running the
    /// same manifest again resumes: finished shards are skipped.
    Run(RunArgs),
    /// Check a manifest, its files and its model; print each problem on one line naming the field.
    Validate {
        /// The job manifest (TOML).
        manifest: PathBuf,
    },
    /// Plan a job and put its shards on its queue (`queue.uri`, or --queue) for workers elsewhere.
    /// Idempotent: shards already done are not enqueued again.
    Enqueue {
        /// The job manifest (TOML).
        manifest: PathBuf,
        /// The queue to use instead of the manifest's `queue.uri`.
        #[arg(long)]
        queue: Option<String>,
    },
    /// Work shards from a queue until told to stop (SIGTERM/SIGINT: leases released, exit 0).
    Worker(Box<WorkerArgs>),
    /// Manage queues.
    #[command(subcommand)]
    Queue(QueueCommand),
    /// The long-lived coordinator: gRPC API (submit, status, workers) plus /metrics, /healthz and
    /// /readyz over HTTP. Job records live under --state, so a restart anywhere resumes them.
    Coordinator(remote::CoordinatorArgs),
    /// Submit a job to a coordinator; prints the job id. Submitting again is idempotent.
    Submit(remote::SubmitArgs),
    /// A job's progress at a coordinator.
    Status(remote::StatusArgs),
    /// List the coordinator's jobs.
    Jobs(remote::ClientArgs),
    /// What a job cost: dollars spent, saved against on-demand, per 1000 items, and what
    /// interruptions cost, from the workers' ledgers beside its output.
    Cost(cost::CostCmd),
    /// Write a self-contained HTML page with a job's charts: throughput over time, shards per
    /// worker with preemptions and recoveries, cost.
    Report(report::ReportCmd),
    /// Cancel a job: workers drop its remaining shards.
    Cancel {
        /// The job id.
        job: String,
        #[command(flatten)]
        client: remote::ClientArgs,
    },
}

#[derive(Subcommand)]
enum QueueCommand {
    /// Create a queue: for SQS the queue and, with --dlq, NAME-dlq and a redrive policy.
    Create {
        /// `sqs://NAME[?region=…&endpoint=…]` or `sqlite://PATH`.
        uri: String,
        /// Also create the dead-letter queue and point the redrive policy at it.
        #[arg(long)]
        dlq: bool,
        /// Receives after which SQS moves a message to the dead-letter queue.
        #[arg(long, default_value_t = 3)]
        max_attempts: u32,
    },
    /// List the dead-letter queue: each shard with its deliveries and the reason.
    Dlq {
        /// The queue URI.
        uri: String,
    },
    /// Show how many items are visible, in flight and dead-lettered.
    Depth {
        /// The queue URI.
        uri: String,
    },
}

#[derive(clap::Args)]
struct WorkerArgs {
    /// The queue to work (`sqs://NAME…`, an SQS URL, `kafka://…`, or `sqlite://PATH[?queue=NAME]`).
    #[arg(
        long,
        required_unless_present = "coordinator",
        conflicts_with = "coordinator"
    )]
    queue: Option<String>,
    /// Register with this coordinator (it names the queue), heartbeat and report shard outcomes.
    /// Token from SPOTBATCH_TOKEN.
    #[arg(long, env = "SPOTBATCH_COORDINATOR")]
    coordinator: Option<String>,
    /// CA certificate (PEM) for an https:// coordinator and https:// peers.
    #[arg(long)]
    tls_ca: Option<PathBuf>,
    /// Serve /metrics, /healthz and /readyz here (e.g. 0.0.0.0:9464) for Prometheus and probes.
    #[arg(long)]
    metrics_addr: Option<std::net::SocketAddr>,
    /// With --metrics-addr: keep serving /metrics this long after the work stops, so the last
    /// scrape sees the final counts (a drain's notices and released leases). Keep it under the
    /// preemption deadline and a few scrape intervals long.
    #[arg(long, default_value_t = 0)]
    metrics_linger_ms: u64,
    /// Manifests of the jobs to serve; jobs not given are loaded from the stored manifest each
    /// shard refers to.
    #[arg(long = "manifest")]
    manifests: Vec<PathBuf>,
    /// Exit when the queue has nothing visible or in flight, instead of waiting for more work.
    #[arg(long)]
    exit_when_empty: bool,
    /// Most shards held at once (one in work, the rest leased but unstarted). Within it the
    /// depth adapts: enough unstarted shards for a tenth of the lease timeout at the measured pace.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    prefetch: u16,
    /// Threads decoding images (default: half the cores).
    #[arg(long)]
    decode_threads: Option<usize>,
    /// ONNX Runtime intra-op threads (default: each manifest's).
    #[arg(long)]
    ort_threads: Option<usize>,
    /// Where models run: auto (CUDA when a GPU and the CUDA provider are present, else the CPU
    /// with a warning), cpu, cuda or cuda:N (an error without that GPU). Default: each manifest's
    /// model.device, else auto.
    #[arg(long, env = "SPOTBATCH_DEVICE", value_parser = parse_device)]
    device: Option<DeviceSpec>,
    /// Lease length in seconds (default: the manifests' queue.visibility_timeout_secs, else 60).
    #[arg(long)]
    visibility_timeout_secs: Option<u64>,
    /// Work stealing between workers (needs --coordinator): an idle worker takes unstarted
    /// shards from the busiest peer; a draining one offers its unstarted shards to idle peers.
    #[arg(long, value_enum, default_value_t = Toggle::On, env = "SPOTBATCH_STEAL")]
    steal: Toggle,
    /// Where this worker serves peers' stealing calls (gRPC; port 0 picks one).
    #[arg(long, default_value = "0.0.0.0:0", env = "SPOTBATCH_PEER_LISTEN")]
    peer_listen: std::net::SocketAddr,
    /// How peers reach it (http://HOST:PORT; in Kubernetes the pod IP). Default: the listen
    /// address, or the host name when listening on every interface.
    #[arg(long, env = "SPOTBATCH_PEER_ADVERTISE")]
    peer_advertise: Option<String>,
    /// Serve peers over TLS with this PEM certificate chain (and --peer-tls-key); peers reach it
    /// at https://… and check it against their --tls-ca.
    #[arg(long, requires = "peer_tls_key")]
    peer_tls_cert: Option<PathBuf>,
    /// The PEM key for --peer-tls-cert.
    #[arg(long, requires = "peer_tls_cert")]
    peer_tls_key: Option<PathBuf>,
    /// A thief silent this long (it reports every quarter of it) loses a handed-over shard back
    /// to its owner.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(500..))]
    handoff_timeout_ms: u64,
    /// Failed attempts before a shard is dead-lettered (default: the first manifest's, else 3).
    #[arg(long)]
    max_attempts: Option<u32>,
    /// Names this worker in logs (default: worker-PID).
    #[arg(long)]
    id: Option<String>,
    /// Testing knob: pause this many milliseconds after every inference batch.
    #[arg(long, hide = true)]
    throttle_batch_ms: Option<u64>,
    /// Measurement knob: append the key of every item inferred to this file.
    #[arg(long, hide = true)]
    debug_processed_log: Option<PathBuf>,
    #[command(flatten)]
    notices: NoticeArgs,
    #[command(flatten)]
    cost: cost::CostArgs,
}

/// Where preemption notices come from. SIGTERM and SIGINT are always watched.
#[derive(clap::Args)]
struct NoticeArgs {
    /// Cloud metadata service to watch for preemption notices (`auto` probes which one answers).
    #[arg(long, value_enum, default_value_t = NoticeMode::None)]
    notices: NoticeMode,
    /// Deadline after SIGTERM/SIGINT (set below the pod's terminationGracePeriodSeconds).
    #[arg(long, default_value_t = 25)]
    grace_period_secs: u64,
    /// Deadline after a GCP preemption notice (GCP gives 30 s).
    #[arg(long, default_value_t = 30)]
    gcp_grace_period_secs: u64,
    /// What an AWS rebalance recommendation does.
    #[arg(long, value_enum, default_value_t = RebalancePolicy::StopLeasing)]
    rebalance: RebalancePolicy,
    /// How often metadata services are polled, in milliseconds.
    #[arg(long, default_value_t = 2000)]
    notice_poll_ms: u64,
    /// AWS instance metadata base URL.
    #[arg(long, default_value = "http://169.254.169.254")]
    aws_metadata_url: String,
    /// GCP metadata base URL.
    #[arg(long, default_value = "http://metadata.google.internal")]
    gcp_metadata_url: String,
    /// Azure instance metadata base URL.
    #[arg(long, default_value = "http://169.254.169.254")]
    azure_metadata_url: String,
    /// This VM's name as Azure Scheduled Events list it (default: asked from the metadata service).
    #[arg(long)]
    azure_vm_name: Option<String>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum NoticeMode {
    /// Signals only.
    None,
    /// Probe AWS, GCP and Azure metadata services and watch the one that answers.
    Auto,
    /// AWS IMDSv2 spot instance-action and rebalance recommendation.
    Aws,
    /// GCP `instance/preempted`.
    Gcp,
    /// Azure Scheduled Events (`Preempt`).
    Azure,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Toggle {
    On,
    Off,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum RebalancePolicy {
    /// Ignore rebalance recommendations.
    Ignore,
    /// Stop leasing new work; finish what is held.
    StopLeasing,
    /// Drain as for an interruption notice.
    Drain,
}

#[derive(clap::Args)]
struct RunArgs {
    /// The job manifest (TOML).
    manifest: PathBuf,
    /// Workers in this process, each with its own model session.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    workers: u16,
    /// Shards each worker holds at once (one in work, the rest waiting).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=64))]
    prefetch: u16,
    /// Threads per worker decoding images (default: half the cores).
    #[arg(long)]
    decode_threads: Option<usize>,
    /// ONNX Runtime intra-op threads (default: the manifest's model.intra_op_threads; 0 = one per core).
    #[arg(long)]
    ort_threads: Option<usize>,
    /// Where models run: auto (CUDA when a GPU and the CUDA provider are present, else the CPU
    /// with a warning), cpu, cuda or cuda:N (an error without that GPU). Default: each manifest's
    /// model.device, else auto.
    #[arg(long, env = "SPOTBATCH_DEVICE", value_parser = parse_device)]
    device: Option<DeviceSpec>,
    /// How to show progress.
    #[arg(long, value_enum, default_value_t = ProgressMode::Auto)]
    progress: ProgressMode,
    /// Testing knob: pause this many milliseconds after every inference batch.
    #[arg(long, hide = true)]
    throttle_batch_ms: Option<u64>,
    /// At the end, print where the time went (on stderr): per stage (fetch, decode, GPU
    /// preprocessing, inference, post-processing, writing) how often it ran, its mean and its
    /// total, and how busy the model was.
    #[arg(long)]
    timings: bool,
    #[command(flatten)]
    cost: cost::CostArgs,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ProgressMode {
    /// A bar on a terminal, plain lines otherwise.
    Auto,
    /// Always a bar.
    Bar,
    /// A line every few seconds.
    Plain,
    /// Only the summary.
    None,
}

fn parse_device(s: &str) -> Result<DeviceSpec, String> {
    DeviceSpec::parse(s)
}

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

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SPOTBATCH_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
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
            return ExitCode::from(1);
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
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// Loads a manifest or prints its problems, one per line.
fn load_manifest(path: &Path) -> Result<Manifest, ExitCode> {
    Manifest::load(path).map_err(|e| {
        match &e {
            ManifestError::Invalid { .. } => eprintln!("{e}"),
            ManifestError::Read { .. } => eprintln!("error: {e}"),
        }
        ExitCode::from(2)
    })
}

async fn validate(path: &Path) -> anyhow::Result<ExitCode> {
    let m = match load_manifest(path) {
        Ok(m) => m,
        Err(code) => return Ok(code),
    };
    match spotbatch_worker::validate::check(&m).await {
        Ok(s) => {
            let inputs = if s.inputs_known {
                format!("{} inputs", s.inputs)
            } else {
                "rows not counted before they are read".to_string()
            };
            println!(
                "{}: ok — job {}, {inputs} in {} shards; model input {}, output {}",
                path.display(),
                m.job_id,
                s.shards,
                s.model_input,
                s.model_output
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(errs) => {
            for e in errs {
                eprintln!("{}: {e}", path.display());
            }
            Ok(ExitCode::from(2))
        }
    }
}

async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let m = match load_manifest(&args.manifest) {
        Ok(m) => m,
        Err(code) => return Ok(code),
    };
    if let Some(code) = check_device(args.device) {
        return Ok(code);
    }
    let prices = args.cost.prices()?;
    let timings = if args.timings {
        Some(timings::Timings::install()?)
    } else {
        None
    };
    // Without ONNX Runtime every shard would fail; say so once instead.
    spotbatch_worker::engine::ort_environment()?;
    let started = Instant::now();
    let prepared = spotbatch_worker::local::prepare(&m).await?;
    if prepared.reclaimed > 0 {
        eprintln!(
            "resuming: {} shard(s) left in work by an interrupted run are back on the queue",
            prepared.reclaimed
        );
    }
    let (total_items, shards) = (prepared.plan.total_items, prepared.plan.shards.len());
    // JSONL/CSV rows are not counted before they are read.
    let total = prepared.plan.items_known.then_some(total_items);
    let of_total = total.map(|t| format!(" of {t}")).unwrap_or_default();
    for s in &prepared.plan.skipped {
        eprintln!("warning: input.list: {s} (left out)");
    }
    let submitted = prepared.submitted.clone();
    if submitted.already_done > 0 {
        eprintln!(
            "resuming: {} of {shards} shards already done ({} items), skipped",
            submitted.already_done, submitted.done_items
        );
    }
    let progress = Arc::new(Progress::default());
    let control = Control::default();
    let finished = CancellationToken::new();
    // Ctrl-C or SIGTERM stops at once, releasing every lease; a second exits now.
    tokio::spawn(drain::watch(
        vec![Box::new(notice::SignalSource::new(Duration::ZERO))],
        control.clone(),
        drain::FirstSignal::Stop,
        finished.clone(),
        |e| match e {
            drain::DrainEvent::Stopping(_) => {
                eprintln!("stopping: releasing leases (press Ctrl-C again to exit at once)")
            }
            drain::DrainEvent::Exit(_) => std::process::exit(130),
            _ => {}
        },
    ));
    let display = spawn_progress(
        args.progress,
        Arc::clone(&progress),
        total,
        submitted.done_items,
        submitted.done_errors,
        finished.clone(),
    );
    let opts = spotbatch_worker::local::LocalOptions {
        workers: usize::from(args.workers),
        prefetch: usize::from(args.prefetch),
        decode_threads: args.decode_threads,
        ort_threads: args.ort_threads,
        device: args.device,
        throttle_batch: args.throttle_batch_ms.map(Duration::from_millis),
        prices,
    };
    let output = m.output.clone();
    let result = prepared
        .run(&opts, Arc::clone(&progress), control.clone())
        .await;
    finished.cancel();
    let _ = display.await;
    let end = result?;
    let elapsed = started.elapsed().as_secs_f64();
    if end.interrupted {
        eprintln!(
            "interrupted: leases released; {}{of_total} items done ({} of {shards} shards). Run the same command again to resume.",
            end.items,
            end.done.len(),
        );
        return Ok(ExitCode::from(130));
    }
    let rate = if elapsed > 0.0 {
        end.processed as f64 / elapsed
    } else {
        0.0
    };
    println!(
        "{}: {}{of_total} items in {}/{shards} shards, {} error rows; {} items processed in {elapsed:.1} s ({rate:.0} items/s) → {output}",
        m.job_id,
        end.items,
        end.done.len(),
        end.errors,
        end.processed,
    );
    if let Some(t) = &timings {
        eprint!("{}", t.report(elapsed, usize::from(args.workers)));
    }
    if !end.dead.is_empty() {
        for d in &end.dead {
            let index = d.index.map(|i| i.to_string()).unwrap_or_else(|| "?".into());
            let keys = d
                .keys
                .as_ref()
                .map(|(a, b)| format!("{a}..{b}"))
                .unwrap_or_else(|| "?".into());
            eprintln!(
                "dead-lettered: shard {} (#{index}, keys {keys}) after {} deliveries: {}",
                d.id, d.deliveries, d.reason
            );
        }
        eprintln!(
            "{}: {} shard(s) dead-lettered; fix the cause and run again to retry them",
            m.job_id,
            end.dead.len()
        );
        return Ok(ExitCode::from(1));
    }
    if end.done.len() < shards {
        bail!(
            "{}: {} shards are neither done nor dead-lettered",
            m.job_id,
            shards - end.done.len()
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn enqueue(path: &Path, queue: Option<String>) -> anyhow::Result<ExitCode> {
    let m = match load_manifest(path) {
        Ok(m) => m,
        Err(code) => return Ok(code),
    };
    let uri = queue.unwrap_or_else(|| m.queue_uri.clone());
    let q = spotbatch_queue::open(
        &uri,
        QueueConfig {
            max_attempts: m.raw.queue.max_attempts,
        },
    )
    .await?;
    let plan = plan_job(&m).await?;
    for s in &plan.skipped {
        eprintln!("warning: input.list: {s} (left out)");
    }
    let layout = JobLayout::for_manifest(&m)?;
    spotbatch_plan::store_plan(&layout, &m, &plan).await?;
    let report = enqueue_plan(q.as_ref(), &layout, &plan).await?;
    println!(
        "{}: {} shards enqueued on {uri}, {} already done; {} inputs → {}",
        m.job_id, report.enqueued, report.already_done, plan.total_items, m.output
    );
    Ok(ExitCode::SUCCESS)
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
    spotbatch_worker::engine::ort_environment()?;
    let coordinator = match &args.coordinator {
        Some(url) => Some(process::CoordinatorSettings {
            url: url.clone(),
            client: remote::client(url, args.tls_ca.as_deref())?,
            ca: remote::read_ca(args.tls_ca.as_deref())?,
            token: remote::token(),
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
            ..WorkerOptions::default()
        },
        ort_threads: args.ort_threads,
        device: args.device,
        notices,
    };
    let s = process::run(cfg, |e| match e {
        process::ProcessEvent::Metrics(id, bound) => {
            eprintln!("{id}: metrics on http://{bound}/metrics")
        }
        process::ProcessEvent::Drain(drain::DrainEvent::StopLeasing(n)) => eprintln!(
            "{} notice ({}): no new work will be leased",
            n.source, n.kind
        ),
        process::ProcessEvent::Drain(drain::DrainEvent::Draining(n, left)) => eprintln!(
            "{} notice ({}): draining, deadline in {:.1} s (a second signal stops at once)",
            n.source,
            n.kind,
            left.as_secs_f64()
        ),
        process::ProcessEvent::Drain(drain::DrainEvent::Stopping(_)) => {
            eprintln!("second signal: stopping now")
        }
        process::ProcessEvent::Drain(drain::DrainEvent::Exit(_)) => std::process::exit(130),
    })
    .await?;
    let p = &s.progress;
    eprintln!(
        "{}: {} shards done ({} skipped as already done, {} failed attempts), {} items ({} error rows) in {:.1} s{}{}",
        s.id,
        p.shards_done.load(Ordering::Relaxed),
        p.shards_skipped.load(Ordering::Relaxed),
        p.attempts_failed.load(Ordering::Relaxed),
        p.items_ok.load(Ordering::Relaxed) + p.items_failed.load(Ordering::Relaxed),
        p.items_failed.load(Ordering::Relaxed),
        s.elapsed.as_secs_f64(),
        s.queue_requests.map(|n| format!(", {n} queue requests")).unwrap_or_default(),
        if s.drained { "; drained, leases released" } else { "" },
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
                println!("{topic}: topic with {partitions} partitions and {topic}-dlq ready")
            }
            spotbatch_queue::Created::Sqlite => {
                println!("{uri}: ready (SQLite queues keep their dead letters in the same file)")
            }
            spotbatch_queue::Created::Sqs { url, dlq_after } => {
                let extra = dlq_after
                    .map(|n| format!(", dead-letter queue after {n} receives"))
                    .unwrap_or_default();
                println!("{url}{extra}");
            }
        },
        QueueCommand::Dlq { uri } => {
            let q = spotbatch_queue::open(&uri, QueueConfig::default()).await?;
            let dead = q.dead_letters(10_000).await?;
            for d in &dead {
                let what = match ShardTask::from_bytes(&d.body) {
                    Ok(t) => format!(
                        "job {} shard {} (#{}, {} keys)",
                        t.job,
                        t.shard,
                        t.index,
                        t.keys.len()
                    ),
                    Err(_) => format!(
                        "item {} ({} bytes, not a spotbatch shard)",
                        d.id,
                        d.body.len()
                    ),
                };
                println!("{what}: {} deliveries: {}", d.delivery_count, d.reason);
            }
            eprintln!("{}: {} dead-lettered", q.name(), dead.len());
        }
        QueueCommand::Depth { uri } => {
            let q = spotbatch_queue::open(&uri, QueueConfig::default()).await?;
            let d = q.depth().await?;
            println!(
                "visible {} in_flight {} dead {}",
                d.visible, d.in_flight, d.dead
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn spawn_progress(
    mode: ProgressMode,
    p: Arc<Progress>,
    total: Option<u64>,
    done_before: u64,
    errors_before: u64,
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
        if bar {
            let (pb, template) = match total {
                Some(t) => (
                    indicatif::ProgressBar::new(t),
                    "{bar:40.cyan/blue} {pos}/{len} items  {per_sec}  ETA {eta}  {msg}",
                ),
                None => (
                    indicatif::ProgressBar::new_spinner(),
                    "{spinner} {pos} items  {per_sec}  {msg}",
                ),
            };
            pb.set_style(
                indicatif::ProgressStyle::with_template(template)
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            pb.set_position(done_before);
            loop {
                let (n, errors) = counts(&p);
                pb.set_position(done_before + n);
                pb.set_message(format!(
                    "{errors} errors, {} shards in work",
                    p.shards_in_flight.load(Ordering::Relaxed)
                ));
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                    _ = finished.cancelled() => break,
                }
            }
            pb.finish_and_clear();
        } else if !quiet {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = finished.cancelled() => break,
                }
                let (n, errors) = counts(&p);
                let secs = started.elapsed().as_secs_f64();
                let rate = n as f64 / secs.max(1e-9);
                let done = done_before + n;
                match total {
                    Some(total) => {
                        let left = total.saturating_sub(done);
                        let eta = if rate > 0.0 {
                            format!("{:.0} s", left as f64 / rate)
                        } else {
                            "?".into()
                        };
                        eprintln!(
                            "progress: {done}/{total} items, {rate:.0} items/s, ETA {eta}, {errors} errors"
                        );
                    }
                    None => eprintln!("progress: {done} items, {rate:.0} items/s, {errors} errors"),
                }
            }
        }
    })
}

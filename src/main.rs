//! The `spotbatch` command: argument parsing and user-facing output. The work happens in the
//! crates (`spotbatch-proto`, `-queue`, `-coordinator`, `-worker`).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand, ValueEnum};
use spotbatch_coordinator::{enqueue_plan, plan_job, JobLayout};
use spotbatch_proto::manifest::DeviceSpec;
use spotbatch_proto::{Manifest, ManifestError, ShardTask};
use spotbatch_queue::sqlite::SqliteQueue;
use spotbatch_queue::{LeaseQueue, QueueConfig};
use spotbatch_worker::notice::{self, NoticeAction, NoticeSource};
use spotbatch_worker::pipeline::Control;
use spotbatch_worker::{run_worker, Jobs, Progress, WorkerOptions};
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

/// The device a worker reports to the coordinator: the one asked for, or what `auto` finds.
fn device_label(asked: Option<DeviceSpec>) -> String {
    match asked.unwrap_or_default() {
        DeviceSpec::Auto => match spotbatch_worker::gpu::cuda_device_count() {
            Ok(n) if n > 0 => "cuda:0".into(),
            _ => "cpu".into(),
        },
        other => other.to_string(),
    }
}

/// An explicit `--device cuda[:N]` on a machine without that GPU stops here (exit 2), before
/// anything is leased: a CUDA request never falls back to the CPU.
fn check_device(asked: Option<DeviceSpec>) -> Option<ExitCode> {
    let Some(DeviceSpec::Cuda(n)) = asked else {
        return None;
    };
    let why = match spotbatch_worker::gpu::cuda_device_count() {
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
            println!(
                "{}: ok — job {}, {} inputs in {} shards; model input {}, output {}",
                path.display(),
                m.job_id,
                s.inputs,
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

/// The SQLite queue for a job run locally: the manifest's file, and unless the URI names a queue,
/// one queue per job so jobs sharing a file never take each other's shards.
async fn open_local_queue(m: &Manifest) -> anyhow::Result<SqliteQueue> {
    let (path, named) = spotbatch_queue::sqlite::parse_uri(&m.queue_uri)?;
    let queue = if m.queue_uri.contains("queue=") {
        named
    } else {
        m.job_id.clone()
    };
    let config = QueueConfig {
        max_attempts: m.raw.queue.max_attempts,
    };
    Ok(SqliteQueue::open(&path, &queue, config).await?)
}

/// Holds an exclusive lock on `<queue file>.lock` while a `run` uses the queue.
fn lock_queue_file(db: &Path) -> anyhow::Result<std::fs::File> {
    let lock_path = PathBuf::from(format!("{}.lock", db.display()));
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("cannot open {}", lock_path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => bail!(
            "{}: another `spotbatch run` is using this queue; wait for it or point queue.uri elsewhere",
            db.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => Err(e).with_context(|| format!("cannot lock {}", lock_path.display())),
    }
}

async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let m = match load_manifest(&args.manifest) {
        Ok(m) => m,
        Err(code) => return Ok(code),
    };
    if !m.queue_uri.starts_with("sqlite://") {
        bail!("queue.uri: `spotbatch run` uses the embedded SQLite queue; {} is for distributed workers", m.queue_uri);
    }
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
    let queue = open_local_queue(&m).await?;
    let _lock = lock_queue_file(queue.path())?;
    // We hold the file: any lease still in it belongs to a run that was killed.
    let reclaimed = queue.reclaim_all_leases().await?;
    if reclaimed > 0 {
        eprintln!("resuming: {reclaimed} shard(s) left in work by an interrupted run are back on the queue");
    }
    let started = Instant::now();
    let plan = plan_job(&m).await?;
    let layout = JobLayout::for_manifest(&m)?;
    layout.store_manifest(&m).await?;
    let report = enqueue_plan(&queue, &layout, &plan).await?;
    if report.already_done > 0 {
        eprintln!(
            "resuming: {} of {} shards already done ({} items), skipped",
            report.already_done,
            plan.shards.len(),
            report.done_items
        );
    }
    let queue: Arc<dyn LeaseQueue> = Arc::new(queue);
    let progress = Arc::new(Progress::default());
    let control = Control::default();
    spawn_signal_handler(control.clone());

    let mut workers = tokio::task::JoinSet::new();
    for i in 0..args.workers {
        let opts = WorkerOptions {
            id: format!("run-{}-{i}", std::process::id()),
            prefetch: usize::from(args.prefetch),
            decode_threads: args
                .decode_threads
                .unwrap_or_else(spotbatch_worker::pipeline::default_decode_threads),
            exit_when_empty: true,
            throttle_batch: args.throttle_batch_ms.map(Duration::from_millis),
            prices: prices.clone(),
            ..WorkerOptions::default()
        };
        let jobs = Jobs::new([m.clone()], args.ort_threads).with_device(args.device);
        workers.spawn(run_worker(
            Arc::clone(&queue),
            jobs,
            opts,
            Arc::clone(&progress),
            control.clone(),
            None,
        ));
    }
    let finished = CancellationToken::new();
    let display = spawn_progress(
        args.progress,
        Arc::clone(&progress),
        plan.total_items,
        report.done_items,
        report.done_errors,
        finished.clone(),
    );
    let mut worker_error = None;
    while let Some(r) = workers.join_next().await {
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => worker_error = Some(anyhow::Error::from(e)),
            Err(e) => worker_error = Some(anyhow::anyhow!("a worker crashed: {e}")),
        }
    }
    finished.cancel();
    let _ = display.await;
    if let Some(e) = worker_error {
        return Err(e);
    }
    let done = layout.done_markers().await?;
    let planned: std::collections::HashSet<&str> =
        plan.shards.iter().map(|s| s.shard.as_str()).collect();
    let done: Vec<_> = done
        .into_iter()
        .filter(|d| planned.contains(d.shard.as_str()))
        .collect();
    let items: u64 = done.iter().map(|d| d.items).sum();
    let errors: u64 = done.iter().map(|d| d.errors).sum();
    let elapsed = started.elapsed().as_secs_f64();
    let processed =
        progress.items_ok.load(Ordering::Relaxed) + progress.items_failed.load(Ordering::Relaxed);
    if control.stop.is_cancelled() {
        eprintln!(
            "interrupted: leases released; {items} of {} items done ({} of {} shards). Run the same command again to resume.",
            plan.total_items,
            done.len(),
            plan.shards.len()
        );
        return Ok(ExitCode::from(130));
    }
    let dead = queue.dead_letters(1000).await?;
    let rate = if elapsed > 0.0 {
        processed as f64 / elapsed
    } else {
        0.0
    };
    println!(
        "{}: {items} of {} items in {}/{} shards, {errors} error rows; {processed} items processed in {elapsed:.1} s ({rate:.0} items/s) → {}",
        m.job_id,
        plan.total_items,
        done.len(),
        plan.shards.len(),
        m.output
    );
    if let Some(t) = &timings {
        eprint!("{}", t.report(elapsed, usize::from(args.workers)));
    }
    if !dead.is_empty() {
        for d in &dead {
            let (index, keys) = match ShardTask::from_bytes(&d.body) {
                Ok(t) => (
                    t.index.to_string(),
                    format!(
                        "{}..{}",
                        t.keys.first().cloned().unwrap_or_default(),
                        t.keys.last().cloned().unwrap_or_default()
                    ),
                ),
                Err(_) => ("?".into(), "?".into()),
            };
            eprintln!(
                "dead-lettered: shard {} (#{index}, keys {keys}) after {} deliveries: {}",
                d.id, d.delivery_count, d.reason
            );
        }
        eprintln!(
            "{}: {} shard(s) dead-lettered; fix the cause and run again to retry them",
            m.job_id,
            dead.len()
        );
        return Ok(ExitCode::from(1));
    }
    if (done.len() as u64) < plan.shards.len() as u64 {
        bail!(
            "{}: {} shards are neither done nor dead-lettered",
            m.job_id,
            plan.shards.len() - done.len()
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
    let layout = JobLayout::for_manifest(&m)?;
    layout.store_manifest(&m).await?;
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
    let mut id = args
        .id
        .clone()
        .unwrap_or_else(|| format!("worker-{}", std::process::id()));
    let mut max_attempts = args
        .max_attempts
        .or_else(|| manifests.first().map(|m| m.raw.queue.max_attempts))
        .unwrap_or(3);
    // With a coordinator: register (it names the queue), then heartbeat in the background.
    let mut link = None;
    let mut stealing = None;
    let queue_uri = match (&args.coordinator, &args.queue) {
        (Some(url), _) => {
            // Stealing: serve peers before registering, so the address registered answers.
            let peer = match args.steal {
                Toggle::On => {
                    let incoming = tonic::transport::server::TcpIncoming::bind(args.peer_listen)
                        .map_err(|e| anyhow::anyhow!("--peer-listen {}: {e}", args.peer_listen))?;
                    let bound = incoming.local_addr()?;
                    let tls = remote::read_identity(
                        args.peer_tls_cert.as_deref(),
                        args.peer_tls_key.as_deref(),
                    )?;
                    let over_tls = tls.is_some();
                    let advertise = args
                        .peer_advertise
                        .clone()
                        .unwrap_or_else(|| default_advertise(bound, over_tls));
                    let scheme = if over_tls { "https://" } else { "http://" };
                    if !advertise.starts_with(scheme) {
                        bail!(
                            "--peer-advertise {advertise}: peers reach this worker at {scheme}HOST:PORT{}",
                            if over_tls { " (it serves peers over TLS)" } else { "" }
                        );
                    }
                    let server = spotbatch_worker::steal::peer_server(tls).map_err(|e| {
                        anyhow::anyhow!(
                            "--peer-tls-cert/--peer-tls-key: not a usable certificate and key: {:#}",
                            anyhow::Error::new(e)
                        )
                    })?;
                    Some((incoming, advertise, server))
                }
                Toggle::Off => None,
            };
            let me = spotbatch_worker::link::Identity {
                name: id.clone(),
                capacity: u32::from(args.prefetch),
                device: device_label(args.device),
                peer_address: peer.as_ref().map(|p| p.1.clone()).unwrap_or_default(),
            };
            let mut client = remote::client(url, args.tls_ca.as_deref())?;
            let reg = spotbatch_worker::link::register(&mut client, &me, Duration::from_secs(60))
                .await
                .map_err(|s| {
                    anyhow::anyhow!(
                        "registering with the coordinator at {url}: {}",
                        spotbatch_coordinator::client::describe(&s)
                    )
                })?;
            tracing::info!(worker = %reg.worker_id, queue = %reg.queue_uri, "registered with the coordinator");
            if args.max_attempts.is_none() {
                max_attempts = reg.max_attempts;
            }
            id = reg.worker_id.clone();
            if let Some((incoming, advertise, server)) = peer {
                let ca = remote::read_ca(args.tls_ca.as_deref())?;
                tracing::info!(worker = %id, peer = %advertise, "work stealing on");
                stealing = Some(spotbatch_worker::Stealing {
                    coordinator: client.clone(),
                    worker_id: reg.worker_id.clone(),
                    advertise,
                    incoming,
                    token: remote::token(),
                    handoff_timeout: Duration::from_millis(args.handoff_timeout_ms),
                    server,
                    ca,
                });
            }
            link = Some((
                client,
                me,
                reg.worker_id,
                Duration::from_millis(u64::from(reg.heartbeat_interval_ms.max(100))),
            ));
            reg.queue_uri
        }
        (None, Some(q)) => q.clone(),
        (None, None) => bail!("give --queue or --coordinator"),
    };
    let queue: Arc<dyn LeaseQueue> =
        Arc::from(spotbatch_queue::open(&queue_uri, QueueConfig { max_attempts }).await?);
    let http_stop = CancellationToken::new();
    let _http_guard = http_stop.clone().drop_guard();
    if let Some(addr) = args.metrics_addr {
        let handle = remote::install_metrics()?;
        spotbatch_worker::pipeline::register_metrics();
        spotbatch_worker::steal::register_metrics();
        if spotbatch_worker::gpu::spawn_nvml_metrics(Duration::from_secs(2)) {
            tracing::info!("GPU utilisation and memory from NVML every 2 s");
        }
        let ready_q = Arc::clone(&queue);
        let bound = spotbatch_coordinator::server::serve_http(
            addr,
            Arc::new(move || handle.render()),
            Arc::new(move || {
                let q = Arc::clone(&ready_q);
                Box::pin(async move { q.depth().await.is_ok() })
            }),
            http_stop.clone(),
        )
        .await?;
        eprintln!("{id}: metrics on http://{bound}/metrics");
    }
    let opts = WorkerOptions {
        id: id.clone(),
        prefetch: usize::from(args.prefetch),
        decode_threads: args
            .decode_threads
            .unwrap_or_else(spotbatch_worker::pipeline::default_decode_threads),
        exit_when_empty: args.exit_when_empty,
        throttle_batch: args.throttle_batch_ms.map(Duration::from_millis),
        visibility: args.visibility_timeout_secs.map(Duration::from_secs),
        processed_log: args.debug_processed_log.clone(),
        prices: args.cost.prices()?,
        ..WorkerOptions::default()
    };
    let progress = Arc::new(Progress::default());
    let control = Control::default();
    let finished = CancellationToken::new();
    let sources = notice_sources(&args.notices).await?;
    let watcher = tokio::spawn(watch_notices(sources, control.clone(), finished.clone()));
    tracing::info!(worker = %id, queue = %queue_uri, "worker started");
    let link_stop = CancellationToken::new();
    let mut first_beat = None;
    let link = link.map(|(client, me, wid, every)| {
        let (tx, rx) = tokio::sync::oneshot::channel();
        first_beat = Some(rx);
        tokio::spawn(spotbatch_worker::link::heartbeat_loop(
            client,
            me,
            wid,
            every,
            Arc::clone(&progress),
            link_stop.clone(),
            Some(tx),
        ))
    });
    if let Some(rx) = first_beat {
        // Learn the cancelled jobs before leasing (bounded: the coordinator may be slow or gone).
        let _ = tokio::time::timeout(Duration::from_secs(5), rx).await;
    }
    let started = Instant::now();
    let result = run_worker(
        Arc::clone(&queue),
        Jobs::new(manifests, args.ort_threads).with_device(args.device),
        opts,
        Arc::clone(&progress),
        control.clone(),
        stealing,
    )
    .await;
    finished.cancel();
    link_stop.cancel();
    if let Some(l) = link {
        // One last heartbeat reports the final outcomes (bounded: the coordinator may be gone).
        let _ = tokio::time::timeout(Duration::from_secs(5), l).await;
    }
    if let Ok(Some((n, source))) = watcher.await {
        // Drained: tell the platform it may go ahead (Azure starts the event early).
        source.acknowledge(&n).await;
    }
    result?;
    if args.metrics_addr.is_some() && args.metrics_linger_ms > 0 {
        tokio::time::sleep(Duration::from_millis(args.metrics_linger_ms)).await;
    }
    let p = &progress;
    eprintln!(
        "{id}: {} shards done ({} skipped as already done, {} failed attempts), {} items ({} error rows) in {:.1} s{}{}",
        p.shards_done.load(Ordering::Relaxed),
        p.shards_skipped.load(Ordering::Relaxed),
        p.attempts_failed.load(Ordering::Relaxed),
        p.items_ok.load(Ordering::Relaxed) + p.items_failed.load(Ordering::Relaxed),
        p.items_failed.load(Ordering::Relaxed),
        started.elapsed().as_secs_f64(),
        queue.requests().map(|n| format!(", {n} queue requests")).unwrap_or_default(),
        if control.is_draining() { "; drained, leases released" } else { "" },
    );
    Ok(ExitCode::SUCCESS)
}

/// `http(s)://HOST:PORT` for a peer listener: its own IP, or the host name when it listens on
/// every interface.
fn default_advertise(bound: std::net::SocketAddr, tls: bool) -> String {
    let scheme = if tls { "https" } else { "http" };
    if !bound.ip().is_unspecified() {
        return format!("{scheme}://{bound}");
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "127.0.0.1".into());
    format!("{scheme}://{host}:{}", bound.port())
}

async fn queue_command(cmd: QueueCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        QueueCommand::Create {
            uri,
            dlq,
            max_attempts,
        } => {
            if uri.starts_with("kafka://") {
                spotbatch_queue::kafka::create(&uri).await?;
                let t = spotbatch_queue::kafka::parse_uri(&uri)?;
                println!(
                    "{}: topic with {} partitions and {}-dlq ready",
                    t.topic, t.partitions, t.topic
                );
            } else if uri.starts_with("sqlite://") {
                spotbatch_queue::open(&uri, QueueConfig { max_attempts }).await?;
                println!("{uri}: ready (SQLite queues keep their dead letters in the same file)");
            } else {
                let url = spotbatch_queue::sqs::SqsQueue::create(&uri, dlq, max_attempts).await?;
                let extra = if dlq {
                    format!(", dead-letter queue after {max_attempts} receives")
                } else {
                    String::new()
                };
                println!("{url}{extra}");
            }
        }
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

/// `run`: first Ctrl-C or SIGTERM stops at once, releasing every lease; a second exits now.
fn spawn_signal_handler(control: Control) {
    tokio::spawn(async move {
        let mut signals = notice::SignalSource::new(Duration::ZERO);
        signals.next().await;
        eprintln!("stopping: releasing leases (press Ctrl-C again to exit at once)");
        control.stop_now();
        signals.next().await;
        std::process::exit(130);
    });
}

/// The notice sources a worker watches: signals always, and the cloud's metadata service.
async fn notice_sources(a: &NoticeArgs) -> anyhow::Result<Vec<Box<dyn NoticeSource>>> {
    let mut sources: Vec<Box<dyn NoticeSource>> = vec![Box::new(notice::SignalSource::new(
        Duration::from_secs(a.grace_period_secs),
    ))];
    let poll = Duration::from_millis(a.notice_poll_ms.max(50));
    let rebalance = match a.rebalance {
        RebalancePolicy::Ignore => None,
        RebalancePolicy::StopLeasing => Some(NoticeAction::StopLeasing),
        RebalancePolicy::Drain => Some(NoticeAction::Drain),
    };
    let cloud = match a.notices {
        NoticeMode::None => None,
        NoticeMode::Aws => Some("aws"),
        NoticeMode::Gcp => Some("gcp"),
        NoticeMode::Azure => Some("azure"),
        NoticeMode::Auto => {
            let found = notice::probe(
                &a.aws_metadata_url,
                &a.gcp_metadata_url,
                &a.azure_metadata_url,
            )
            .await;
            match found {
                Some(c) => tracing::info!(
                    cloud = c,
                    "metadata service found; watching it for preemption notices"
                ),
                None => tracing::warn!(
                    "--notices auto: no cloud metadata service answered; watching signals only"
                ),
            }
            found
        }
    };
    match cloud {
        Some("aws") => sources.push(Box::new(notice::AwsSource::new(
            &a.aws_metadata_url,
            poll,
            rebalance,
        ))),
        Some("gcp") => sources.push(Box::new(notice::GcpSource::new(
            &a.gcp_metadata_url,
            Duration::from_secs(a.gcp_grace_period_secs),
        ))),
        Some("azure") => sources.push(Box::new(notice::AzureSource::new(
            &a.azure_metadata_url,
            poll,
            a.azure_vm_name.clone(),
        ))),
        _ => {}
    }
    Ok(sources)
}

/// Turns notices into the worker's drain: a rebalance recommendation (by policy) stops leasing; an
/// interruption notice drains by its deadline; a signal after that stops at once. Returns the
/// notice that started the drain and its source (to acknowledge the event afterwards).
async fn watch_notices(
    mut sources: Vec<Box<dyn NoticeSource>>,
    control: Control,
    finished: CancellationToken,
) -> Option<(notice::Notice, Box<dyn NoticeSource>)> {
    loop {
        let (n, i) = notice::watch(&mut sources, &finished).await?;
        let left = n
            .deadline
            .duration_since(std::time::SystemTime::now())
            .unwrap_or_default();
        tracing::warn!(source = n.source, kind = %n.kind, deadline_in_ms = left.as_millis() as u64, "preemption notice");
        match n.action {
            NoticeAction::StopLeasing => {
                eprintln!(
                    "{} notice ({}): no new work will be leased",
                    n.source, n.kind
                );
                control.stop_leasing.cancel();
            }
            NoticeAction::Drain => {
                eprintln!(
                    "{} notice ({}): draining, deadline in {:.1} s (a second signal stops at once)",
                    n.source,
                    n.kind,
                    left.as_secs_f64()
                );
                control.drain(n.deadline);
                let control = control.clone();
                tokio::spawn(async move {
                    notice::SignalSource::new(Duration::ZERO).next().await;
                    eprintln!("second signal: stopping now");
                    control.stop_now();
                });
                let source = sources.swap_remove(i);
                return Some((n, source));
            }
        }
    }
}

fn spawn_progress(
    mode: ProgressMode,
    p: Arc<Progress>,
    total: u64,
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
        let counts = |p: &Progress| {
            let ok = p.items_ok.load(Ordering::Relaxed);
            let failed = p.items_failed.load(Ordering::Relaxed);
            (ok + failed, errors_before + failed)
        };
        if bar {
            let pb = indicatif::ProgressBar::new(total);
            pb.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:40.cyan/blue} {pos}/{len} items  {per_sec}  ETA {eta}  {msg}",
                )
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
                let left = total.saturating_sub(done_before + n);
                let eta = if rate > 0.0 {
                    format!("{:.0} s", left as f64 / rate)
                } else {
                    "?".into()
                };
                eprintln!(
                    "progress: {}/{total} items, {rate:.0} items/s, ETA {eta}, {errors} errors",
                    done_before + n
                );
            }
        }
    })
}

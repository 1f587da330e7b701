//! The `spotbatch` command: argument parsing and user-facing output. The work happens in the
//! crates (`spotbatch-proto`, `-queue`, `-coordinator`, `-worker`).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::{ArgGroup, Parser, Subcommand, ValueEnum};
use spotbatch_plan::{enqueue_plan, Plan};
use spotbatch_proto::manifest::DeviceSpec;
use spotbatch_proto::{Manifest, ManifestError, ShardTask};
use spotbatch_queue::QueueConfig;
use spotbatch_store::JobLayout;
use spotbatch_worker::notice::{self, NoticeAction};
use spotbatch_worker::validate::Checks;
use spotbatch_worker::{drain, process, Control, Progress, WorkerOptions};
use tokio_util::sync::CancellationToken;

use say::count;

mod cost;
mod remote;
mod report;
#[macro_use]
mod say;
mod timings;

/// Shards a worker holds at once by default, for `run` and `worker` alike.
const DEFAULT_PREFETCH: u16 = 4;

/// How long `run`'s first Ctrl-C (or SIGTERM) gives the shards in work to finish their batches
/// and keep their rows as partial results, as a worker's SIGTERM does.
const RUN_INTERRUPT_GRACE: Duration = Duration::from_secs(5);

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
    /// Create a queue: for SQS the queue and, with --dlq, NAME-dlq and a redrive policy; for
    /// Kafka the topic and TOPIC-dlq; for SQLite the file.
    Create {
        /// `sqs://NAME[?region=…&endpoint=…]`, `kafka://BROKER[,BROKER…]/TOPIC[?partitions=N]` or
        /// `sqlite://PATH`.
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
        /// The queue URI. A SQLite file without `?queue=NAME`: every queue in it, named (`run`
        /// keeps one queue per job there).
        uri: String,
    },
    /// Show how many items are visible, in flight and dead-lettered.
    Depth {
        /// The queue URI. A SQLite file without `?queue=NAME`: every queue in it, named.
        uri: String,
    },
}

#[derive(clap::Args)]
#[command(group(ArgGroup::new("source").required(true).args(["queue", "coordinator"])))]
struct WorkerArgs {
    /// The queue to work (`sqs://NAME…`, an SQS URL, `kafka://…`, or `sqlite://PATH[?queue=NAME]`,
    /// which must exist); or give --coordinator instead.
    #[arg(long, conflicts_with = "coordinator")]
    queue: Option<String>,
    /// Register with this coordinator (it names the queue), heartbeat and report shard outcomes;
    /// or give --queue instead. Token from SPOTBATCH_TOKEN.
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
    /// With --exit-when-empty: give up (exit 1) once the queue's service (Kafka brokers, an SQS
    /// endpoint) has been unreachable this long; 0 keeps trying. Without --exit-when-empty a
    /// worker keeps waiting for its queue.
    #[arg(long, default_value_t = 300)]
    give_up_after_secs: u64,
    /// Most shards held at once (one in work, the rest leased but unstarted). Within it the
    /// depth adapts: enough unstarted shards for a tenth of the lease timeout at the measured pace.
    #[arg(long, default_value_t = DEFAULT_PREFETCH, value_parser = clap::value_parser!(u16).range(1..=64))]
    prefetch: u16,
    /// How to show progress: a line redrawn on a terminal, else a line every --progress-secs.
    #[arg(long, value_enum, default_value_t = ProgressMode::Auto)]
    progress: ProgressMode,
    /// With plain progress: a progress line this often, when something changed.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    progress_secs: u64,
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
    #[arg(long, default_value_t = DEFAULT_PREFETCH, value_parser = clap::value_parser!(u16).range(1..=64))]
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

/// Loads a manifest or prints its problems, one per line.
fn load_manifest(path: &Path) -> Result<Manifest, ExitCode> {
    Manifest::load(path).map_err(|e| {
        match &e {
            ManifestError::Invalid { .. } => eprintln!("{e}"),
            ManifestError::Read { .. } => eprintln!("error: {e}"),
        }
        exit::invalid()
    })
}

/// The checks `validate` makes, made by every command that starts a job: each problem on one
/// line naming its field (then exit 2), and a warning for each input entry that is not an input.
async fn check_job(
    path: &Path,
    m: &Manifest,
    checks: Checks,
) -> Result<spotbatch_worker::validate::Summary, ExitCode> {
    match spotbatch_worker::validate::check_with(m, checks).await {
        Ok(s) => {
            if let Some(plan) = &s.plan {
                warn_skipped(path, m, plan);
            }
            Ok(s)
        }
        Err(errs) => {
            for e in errs {
                eprintln!("{}: {e}", path.display());
            }
            Err(exit::invalid())
        }
    }
}

/// A warning per entry left out of the job: a listed entry that is not an input, or a line of
/// `input.list` that names none.
fn warn_skipped(path: &Path, m: &Manifest, plan: &Plan) {
    let field = if m.list.is_some() {
        "input.list"
    } else {
        "input.uri"
    };
    for s in &plan.skipped {
        say!(
            "{}: warning: {field}: {} is not an input (left out): {}",
            path.display(),
            say::key(&s.key),
            s.reason
        );
    }
}

async fn validate(path: &Path) -> anyhow::Result<ExitCode> {
    let m = match load_manifest(path) {
        Ok(m) => m,
        Err(code) => return Ok(code),
    };
    let s = match check_job(path, &m, Checks::default()).await {
        Ok(s) => s,
        Err(code) => return Ok(code),
    };
    let inputs = if s.inputs_known {
        count(s.inputs as u64, "input")
    } else {
        "rows not counted before they are read".to_string()
    };
    println!(
        "{}: ok — job {}, {inputs} in {}; model input {}, output {}",
        path.display(),
        m.job_id,
        count(s.shards as u64, "shard"),
        s.model_input,
        s.model_output
    );
    for line in fleet_notes(&m, s.plan.as_ref()) {
        println!("{}: {line}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// What `validate` says of `[job]` and `queue.shard_size = "auto"` (issue 23).
fn fleet_notes(m: &Manifest, plan: Option<&Plan>) -> Vec<String> {
    use spotbatch_plan::{ShardBound, ShardHow};
    let mut lines = Vec::new();
    if let (Some(plan), spotbatch_proto::ShardSize::Auto) = (plan, m.raw.queue.shard_size) {
        let items = plan.shard_size.items;
        lines.push(match plan.shard_size.how {
            ShardHow::Suggested(s) if s.bound == ShardBound::Unmeasured => format!(
                "queue.shard_size: auto → {items} (no measured time per item here: the default; a coordinator chooses from its workers' rate)"
            ),
            ShardHow::Suggested(s) => format!(
                "queue.shard_size: auto → {items} ({:?}: {:.0} s a shard, {:.2} % redone after hard kills, {:.2} % overhead)",
                s.bound,
                s.shard_seconds,
                s.redone_fraction * 100.0,
                s.overhead_fraction * 100.0
            ),
            ShardHow::Kept | ShardHow::Manifest => format!(
                "queue.shard_size: auto → {items} (chosen when the job was first planned)"
            ),
        });
    }
    if let Some(d) = m.deadline {
        let when = match d {
            spotbatch_proto::Deadline::At(t) => spotbatch_proto::rfc3339::format(t),
            spotbatch_proto::Deadline::AfterSubmission(h) => format!("{h} h after submission"),
        };
        let od = m.raw.job.max_on_demand_workers.map_or(
            "the coordinator's --max-on-demand-workers".to_string(),
            |n| n.to_string(),
        );
        lines.push(format!(
            "job.deadline: {when}; on-demand workers at most {od} (the coordinator sizes the fleet for it)"
        ));
    }
    lines
}

async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let m = match load_manifest(&args.manifest) {
        Ok(m) => m,
        Err(code) => return Ok(code),
    };
    if let Some(code) = check_device(args.device) {
        return Ok(code);
    }
    if !m.queue_uri.starts_with("sqlite://") {
        eprintln!(
            "{}: queue.uri: `spotbatch run` uses the embedded SQLite queue; {} is for `enqueue` and `worker`",
            args.manifest.display(),
            m.queue_uri
        );
        return Ok(exit::invalid());
    }
    let prices = args.cost.prices()?;
    let timings = if args.timings {
        Some(timings::Timings::install()?)
    } else {
        None
    };
    // Without ONNX Runtime every shard would fail; say so once instead.
    spotbatch_worker::engine::ort_environment()?;
    // Refuse up front what `validate` refuses, rather than dead-letter every shard for it.
    let checks = Checks {
        device: args.device,
        ..Checks::default()
    };
    let plan = match check_job(&args.manifest, &m, checks).await {
        Ok(s) => s.plan,
        Err(code) => return Ok(code),
    };
    let started = Instant::now();
    let prepared = match plan {
        Some(plan) => spotbatch_worker::local::prepare_planned(&m, plan).await?,
        None => spotbatch_worker::local::prepare(&m).await?,
    };
    if prepared.reclaimed > 0 {
        say!(
            "resuming: {} left in work by an interrupted run are back on the queue",
            count(prepared.reclaimed, "shard")
        );
    }
    let (total_items, shards) = (prepared.plan.total_items, prepared.plan.shards.len());
    // JSONL/CSV rows are not counted before they are read.
    let total = prepared.plan.items_known.then_some(total_items);
    let of_total = total.map(|t| format!(" of {t}")).unwrap_or_default();
    let submitted = prepared.submitted.clone();
    if submitted.already_done > 0 {
        say!(
            "resuming: {} of {shards} shards already done ({}), skipped",
            submitted.already_done,
            count(submitted.done_items, "item")
        );
    }
    let progress = Arc::new(Progress::default());
    let control = Control::default();
    let finished = CancellationToken::new();
    // Ctrl-C or SIGTERM drains, as a worker's SIGTERM does: nothing new starts, unstarted shards
    // go back at once, the batches in work finish and their rows are kept as partial results; a
    // second stops at once, a third exits now.
    tokio::spawn(drain::watch(
        vec![Box::new(notice::SignalSource::new(RUN_INTERRUPT_GRACE))],
        control.clone(),
        drain::FirstSignal::Drain,
        finished.clone(),
        |e| {
            match e {
            drain::DrainEvent::Draining(..) => say!(
                "interrupted: finishing the batches in work and keeping their rows (at most {} s; Ctrl-C again to stop at once)",
                RUN_INTERRUPT_GRACE.as_secs()
            ),
            drain::DrainEvent::Stopping(_) => {
                say!("stopping now: leases released, nothing more written (Ctrl-C again to exit at once)")
            }
            drain::DrainEvent::Exit(_) => std::process::exit(130),
            drain::DrainEvent::StopLeasing(_) => {}
        }
        },
    ));
    let display = spawn_progress(
        args.progress,
        Arc::clone(&progress),
        total,
        submitted.done_items,
        submitted.done_errors,
        Duration::from_secs(5),
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
    if end.interrupted || control.is_draining() {
        say!(
            "interrupted: leases released; {}{of_total} items done ({} of {shards} shards), finished rows of shards in work kept. Run the same command again to resume.",
            end.items,
            end.done.len(),
        );
        return Ok(exit::interrupted());
    }
    let rate = if elapsed > 0.0 {
        end.processed as f64 / elapsed
    } else {
        0.0
    };
    println!(
        "{}: {}{of_total} items in {}/{shards} shards, {}; {} processed in {elapsed:.1} s ({} items/s) → {output}",
        m.job_id,
        end.items,
        end.done.len(),
        count(end.errors, "error row"),
        count(end.processed, "item"),
        say::rate(rate),
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
                .map(|(a, b)| format!("{}..{}", say::key(a), say::key(b)))
                .unwrap_or_else(|| "?".into());
            eprintln!(
                "dead-lettered: shard {} (#{index}, keys {keys}) after {}: {}",
                d.id,
                count(d.deliveries, "delivery"),
                d.reason
            );
        }
        eprintln!(
            "{}: {} dead-lettered; fix the cause and run again to retry them",
            m.job_id,
            count(end.dead.len() as u64, "shard")
        );
        return Ok(exit::failed());
    }
    if end.done.len() < shards {
        bail!(
            "{}: {} neither done nor dead-lettered",
            m.job_id,
            count((shards - end.done.len()) as u64, "shard")
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn enqueue(path: &Path, queue: Option<String>) -> anyhow::Result<ExitCode> {
    let m = match load_manifest(path) {
        Ok(m) => m,
        Err(code) => return Ok(code),
    };
    // Refuse up front what `validate` refuses (the device is the workers' machines' business).
    spotbatch_worker::engine::ort_environment()?;
    let checks = Checks {
        here: false,
        ..Checks::default()
    };
    let plan = match check_job(path, &m, checks).await {
        Ok(s) => s.plan,
        Err(code) => return Ok(code),
    };
    let Some(plan) = plan else {
        bail!("{}: the job was not planned", m.job_id);
    };
    let uri = queue.unwrap_or_else(|| m.queue_uri.clone());
    let q = spotbatch_queue::open(
        &uri,
        QueueConfig {
            max_attempts: m.raw.queue.max_attempts,
        },
    )
    .await?;
    let layout = JobLayout::for_manifest(&m)?;
    spotbatch_plan::store_plan(&layout, &m, &plan).await?;
    let report = enqueue_plan(q.as_ref(), &layout, &plan).await?;
    // SQLite does not add a shard that is already waiting there again: say how many were new.
    let put = match report.new {
        Some(new) if new < report.enqueued => format!(
            "{} enqueued on {uri} ({} already waiting there)",
            count(new as u64, "new shard"),
            report.enqueued - new
        ),
        _ => format!(
            "{} enqueued on {uri}",
            count(report.enqueued as u64, "shard")
        ),
    };
    println!(
        "{}: {put}, {} already done; {} → {}",
        m.job_id,
        report.already_done,
        count(plan.total_items, "input"),
        m.output
    );
    Ok(ExitCode::SUCCESS)
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

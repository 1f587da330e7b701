//! The command line: every subcommand's arguments, as clap reads them.

use std::path::PathBuf;

use clap::{ArgGroup, Parser, Subcommand, ValueEnum};
use spotbatch_proto::manifest::DeviceSpec;

/// Shards a worker holds at once by default, for `run` and `worker` alike.
pub(crate) const DEFAULT_PREFETCH: u16 = 4;

#[derive(Parser)]
#[command(
    name = "spotbatch",
    version,
    about = "Batch inference that makes spot-instance interruption a non-event"
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Subcommand)]
pub(crate) enum Command {
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
    Coordinator(crate::remote::CoordinatorArgs),
    /// Submit a job to a coordinator; prints the job id. Submitting again is idempotent.
    Submit(crate::remote::SubmitArgs),
    /// A job's progress at a coordinator.
    Status(crate::remote::StatusArgs),
    /// List the coordinator's jobs.
    Jobs(crate::remote::ClientArgs),
    /// What a job cost: dollars spent, saved against on-demand, per 1000 items, and what
    /// interruptions cost, from the workers' ledgers beside its output.
    Cost(crate::cost::CostCmd),
    /// Write a self-contained HTML page with a job's charts: throughput over time, shards per
    /// worker with preemptions and recoveries, cost.
    Report(crate::report::ReportCmd),
    /// Cancel a job: workers drop its remaining shards.
    Cancel {
        /// The job id.
        job: String,
        #[command(flatten)]
        client: crate::remote::ClientArgs,
    },
}

#[derive(Subcommand)]
pub(crate) enum QueueCommand {
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
pub(crate) struct WorkerArgs {
    /// The queue to work (`sqs://NAME…`, an SQS URL, `kafka://…`, or `sqlite://PATH[?queue=NAME]`,
    /// which must exist); or give --coordinator instead.
    #[arg(long, conflicts_with = "coordinator")]
    pub(crate) queue: Option<String>,
    /// Register with this coordinator (it names the queue), heartbeat and report shard outcomes;
    /// or give --queue instead. Token from SPOTBATCH_TOKEN.
    #[arg(long, env = "SPOTBATCH_COORDINATOR")]
    pub(crate) coordinator: Option<String>,
    /// CA certificate (PEM) for an https:// coordinator and https:// peers.
    #[arg(long)]
    pub(crate) tls_ca: Option<PathBuf>,
    /// Serve /metrics, /healthz and /readyz here (e.g. 0.0.0.0:9464) for Prometheus and probes.
    #[arg(long)]
    pub(crate) metrics_addr: Option<std::net::SocketAddr>,
    /// With --metrics-addr: keep serving /metrics this long after the work stops, so the last
    /// scrape sees the final counts (a drain's notices and released leases). Keep it under the
    /// preemption deadline and a few scrape intervals long.
    #[arg(long, default_value_t = 0)]
    pub(crate) metrics_linger_ms: u64,
    /// Manifests of the jobs to serve; jobs not given are loaded from the stored manifest each
    /// shard refers to.
    #[arg(long = "manifest")]
    pub(crate) manifests: Vec<PathBuf>,
    /// Exit when the queue has nothing visible or in flight, instead of waiting for more work.
    #[arg(long)]
    pub(crate) exit_when_empty: bool,
    /// With --exit-when-empty: give up (exit 1) once the queue's service (Kafka brokers, an SQS
    /// endpoint) has been unreachable this long; 0 keeps trying. Without --exit-when-empty a
    /// worker keeps waiting for its queue.
    #[arg(long, default_value_t = 300)]
    pub(crate) give_up_after_secs: u64,
    /// Most shards held at once (one in work, the rest leased but unstarted). Within it the
    /// depth adapts: enough unstarted shards for a tenth of the lease timeout at the measured pace.
    #[arg(long, default_value_t = DEFAULT_PREFETCH, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub(crate) prefetch: u16,
    /// How to show progress: a line redrawn on a terminal, else a line every --progress-secs.
    #[arg(long, value_enum, default_value_t = ProgressMode::Auto)]
    pub(crate) progress: ProgressMode,
    /// With plain progress: a progress line this often, when something changed.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) progress_secs: u64,
    /// Threads decoding images (default: half the cores).
    #[arg(long)]
    pub(crate) decode_threads: Option<usize>,
    /// ONNX Runtime intra-op threads (default: each manifest's).
    #[arg(long)]
    pub(crate) ort_threads: Option<usize>,
    /// Where models run: auto (CUDA when a GPU and the CUDA provider are present, else the CPU
    /// with a warning), cpu, cuda or cuda:N (an error without that GPU). Default: each manifest's
    /// model.device, else auto.
    #[arg(long, env = "SPOTBATCH_DEVICE", value_parser = parse_device)]
    pub(crate) device: Option<DeviceSpec>,
    /// Lease length in seconds (default: the manifests' queue.visibility_timeout_secs, else 60).
    #[arg(long)]
    pub(crate) visibility_timeout_secs: Option<u64>,
    /// Work stealing between workers (needs --coordinator): an idle worker takes unstarted
    /// shards from the busiest peer; a draining one offers its unstarted shards to idle peers.
    #[arg(long, value_enum, default_value_t = Toggle::On, env = "SPOTBATCH_STEAL")]
    pub(crate) steal: Toggle,
    /// Where this worker serves peers' stealing calls (gRPC; port 0 picks one).
    #[arg(long, default_value = "0.0.0.0:0", env = "SPOTBATCH_PEER_LISTEN")]
    pub(crate) peer_listen: std::net::SocketAddr,
    /// How peers reach it (http://HOST:PORT; in Kubernetes the pod IP). Default: the listen
    /// address, or the host name when listening on every interface.
    #[arg(long, env = "SPOTBATCH_PEER_ADVERTISE")]
    pub(crate) peer_advertise: Option<String>,
    /// Serve peers over TLS with this PEM certificate chain (and --peer-tls-key); peers reach it
    /// at https://… and check it against their --tls-ca.
    #[arg(long, requires = "peer_tls_key")]
    pub(crate) peer_tls_cert: Option<PathBuf>,
    /// The PEM key for --peer-tls-cert.
    #[arg(long, requires = "peer_tls_cert")]
    pub(crate) peer_tls_key: Option<PathBuf>,
    /// A thief silent this long (it reports every quarter of it) loses a handed-over shard back
    /// to its owner.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(500..))]
    pub(crate) handoff_timeout_ms: u64,
    /// Failed attempts before a shard is dead-lettered (default: the first manifest's, else 3).
    #[arg(long)]
    pub(crate) max_attempts: Option<u32>,
    /// Names this worker in logs (default: worker-PID).
    #[arg(long)]
    pub(crate) id: Option<String>,
    /// Testing knob: pause this many milliseconds after every inference batch.
    #[arg(long, hide = true)]
    pub(crate) throttle_batch_ms: Option<u64>,
    /// Measurement knob: append the key of every item inferred to this file.
    #[arg(long, hide = true)]
    pub(crate) debug_processed_log: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) notices: NoticeArgs,
    #[command(flatten)]
    pub(crate) cost: crate::cost::CostArgs,
}

/// Where preemption notices come from. SIGTERM and SIGINT are always watched.
#[derive(clap::Args)]
pub(crate) struct NoticeArgs {
    /// Cloud metadata service to watch for preemption notices (`auto` probes which one answers).
    #[arg(long, value_enum, default_value_t = NoticeMode::None)]
    pub(crate) notices: NoticeMode,
    /// Deadline after SIGTERM/SIGINT (set below the pod's terminationGracePeriodSeconds).
    #[arg(long, default_value_t = 25)]
    pub(crate) grace_period_secs: u64,
    /// Deadline after a GCP preemption notice (GCP gives 30 s).
    #[arg(long, default_value_t = 30)]
    pub(crate) gcp_grace_period_secs: u64,
    /// What an AWS rebalance recommendation does.
    #[arg(long, value_enum, default_value_t = RebalancePolicy::StopLeasing)]
    pub(crate) rebalance: RebalancePolicy,
    /// How often metadata services are polled, in milliseconds.
    #[arg(long, default_value_t = 2000)]
    pub(crate) notice_poll_ms: u64,
    /// AWS instance metadata base URL.
    #[arg(long, default_value = "http://169.254.169.254")]
    pub(crate) aws_metadata_url: String,
    /// GCP metadata base URL.
    #[arg(long, default_value = "http://metadata.google.internal")]
    pub(crate) gcp_metadata_url: String,
    /// Azure instance metadata base URL.
    #[arg(long, default_value = "http://169.254.169.254")]
    pub(crate) azure_metadata_url: String,
    /// This VM's name as Azure Scheduled Events list it (default: asked from the metadata service).
    #[arg(long)]
    pub(crate) azure_vm_name: Option<String>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum NoticeMode {
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
pub(crate) enum Toggle {
    On,
    Off,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum RebalancePolicy {
    /// Ignore rebalance recommendations.
    Ignore,
    /// Stop leasing new work; finish what is held.
    StopLeasing,
    /// Drain as for an interruption notice.
    Drain,
}

#[derive(clap::Args)]
pub(crate) struct RunArgs {
    /// The job manifest (TOML).
    pub(crate) manifest: PathBuf,
    /// Workers in this process, each with its own model session.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub(crate) workers: u16,
    /// Shards each worker holds at once (one in work, the rest waiting).
    #[arg(long, default_value_t = DEFAULT_PREFETCH, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub(crate) prefetch: u16,
    /// Threads per worker decoding images (default: half the cores).
    #[arg(long)]
    pub(crate) decode_threads: Option<usize>,
    /// ONNX Runtime intra-op threads (default: the manifest's model.intra_op_threads; 0 = one per core).
    #[arg(long)]
    pub(crate) ort_threads: Option<usize>,
    /// Where models run: auto (CUDA when a GPU and the CUDA provider are present, else the CPU
    /// with a warning), cpu, cuda or cuda:N (an error without that GPU). Default: each manifest's
    /// model.device, else auto.
    #[arg(long, env = "SPOTBATCH_DEVICE", value_parser = parse_device)]
    pub(crate) device: Option<DeviceSpec>,
    /// How to show progress.
    #[arg(long, value_enum, default_value_t = ProgressMode::Auto)]
    pub(crate) progress: ProgressMode,
    /// Testing knob: pause this many milliseconds after every inference batch.
    #[arg(long, hide = true)]
    pub(crate) throttle_batch_ms: Option<u64>,
    /// At the end, print where the time went (on stderr): per stage (fetch, decode, GPU
    /// preprocessing, inference, post-processing, writing) how often it ran, its mean and its
    /// total, and how busy the model was.
    #[arg(long)]
    pub(crate) timings: bool,
    #[command(flatten)]
    pub(crate) cost: crate::cost::CostArgs,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum ProgressMode {
    /// A bar on a terminal, plain lines otherwise.
    Auto,
    /// Always a bar.
    Bar,
    /// A line every few seconds.
    Plain,
    /// Only the summary.
    None,
}

pub(crate) fn parse_device(s: &str) -> Result<DeviceSpec, String> {
    DeviceSpec::parse(s)
}

//! A worker process's wiring, behind `spotbatch worker`: with a coordinator, serve peers (when
//! stealing) before registering so the address registered answers, register (it names the
//! queue), heartbeat in the background; open the queue; serve `/metrics`, `/healthz` and
//! `/readyz`; watch the notice sources through the drain policy; run the worker; send a last
//! heartbeat and acknowledge the notice that drained it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use spotbatch_net::Client;
use spotbatch_proto::manifest::DeviceSpec;
use spotbatch_proto::Manifest;
use spotbatch_queue::{LeaseQueue, QueueConfig, QueueError};
use tokio_util::sync::CancellationToken;

use crate::control::Control;
use crate::drain::{self, DrainEvent, FirstSignal, NoticeSettings};
use crate::job::Jobs;
use crate::lease::run_worker;
use crate::link::{self, Identity};
use crate::options::WorkerOptions;
use crate::progress::Progress;
use crate::steal::{peer_server, Stealing};

/// Why a worker process could not start or run; each names the flag or service concerned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProcessError {
    /// Neither a queue nor a coordinator.
    #[error("give --queue or --coordinator")]
    NoQueue,
    /// The peer listener could not be bound.
    #[error("--peer-listen {addr}: {message}")]
    PeerListen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        message: String,
    },
    /// The advertised peer address is not one peers could use.
    #[error("--peer-advertise {advertise}: peers reach this worker at {scheme}HOST:PORT{}", if *.tls { " (it serves peers over TLS)" } else { "" })]
    PeerAdvertise {
        /// The address given.
        advertise: String,
        /// The scheme peers need.
        scheme: &'static str,
        /// Whether it serves peers over TLS.
        tls: bool,
    },
    /// The peer certificate and key are not usable.
    #[error("--peer-tls-cert/--peer-tls-key: not a usable certificate and key: {0}")]
    PeerTls(String),
    /// Registering with the coordinator failed.
    #[error("registering with the coordinator at {url}: {message}")]
    Register {
        /// The coordinator.
        url: String,
        /// Why.
        message: String,
    },
    /// The metrics endpoint could not be served.
    #[error(transparent)]
    Metrics(#[from] spotbatch_net::HttpError),
    /// The queue failed.
    #[error(transparent)]
    Queue(#[from] QueueError),
}

/// The coordinator a worker registers with.
pub struct CoordinatorSettings {
    /// Its URL, for messages.
    pub url: String,
    /// A client of it.
    pub client: Client,
    /// PEM CA certificate peers' `https://` certificates are checked against.
    pub ca: Option<Vec<u8>>,
    /// The bearer token peers must send.
    pub token: Option<String>,
    /// `spot` or `on_demand`, told to the coordinator (its fleet policy counts workers by it).
    pub capacity_type: String,
}

/// Serving peers for work stealing (with a coordinator).
pub struct PeerSettings {
    /// Where to listen.
    pub listen: SocketAddr,
    /// How peers reach it (default: the listen address, or the host name on every interface).
    pub advertise: Option<String>,
    /// PEM certificate chain and key, to serve peers over TLS.
    pub tls: Option<(Vec<u8>, Vec<u8>)>,
    /// A thief silent this long loses a handed-over shard.
    pub handoff_timeout: Duration,
}

/// Serving `/metrics`, `/healthz` and `/readyz`.
pub struct MetricsSettings {
    /// Where.
    pub addr: SocketAddr,
    /// Renders the Prometheus exposition.
    pub render: Arc<dyn Fn() -> String + Send + Sync>,
    /// Keep serving this long after the work stops.
    pub linger: Duration,
}

/// Everything a worker process is told.
pub struct ProcessConfig {
    /// The queue (without a coordinator).
    pub queue: Option<String>,
    /// The coordinator (it names the queue).
    pub coordinator: Option<CoordinatorSettings>,
    /// Work stealing (with a coordinator).
    pub peers: Option<PeerSettings>,
    /// Metrics and health endpoints.
    pub metrics: Option<MetricsSettings>,
    /// Manifests of the jobs to serve (others are loaded from the stored manifest).
    pub manifests: Vec<Manifest>,
    /// Failed attempts before a shard is dead-lettered (default: the coordinator's, the first
    /// manifest's, else 3).
    pub max_attempts: Option<u32>,
    /// The worker's own options (`id` empty: `worker-PID`, or the coordinator's name for it).
    pub worker: WorkerOptions,
    /// ONNX Runtime intra-op threads, overriding the manifests'.
    pub ort_threads: Option<usize>,
    /// Where models run, overriding the manifests'.
    pub device: Option<DeviceSpec>,
    /// Where notices come from.
    pub notices: NoticeSettings,
    /// The worker's live counters, when the caller shows progress (default: its own).
    pub progress: Option<Arc<Progress>>,
}

/// Something the caller may want to tell the user.
#[derive(Debug)]
pub enum ProcessEvent<'a> {
    /// Metrics are served here.
    Metrics(&'a str, SocketAddr),
    /// A notice or signal changed what the worker does.
    Drain(DrainEvent<'a>),
}

/// How a worker process ended.
#[derive(Debug)]
pub struct Summary {
    /// Its id.
    pub id: String,
    /// Its counters.
    pub progress: Arc<Progress>,
    /// How long it ran.
    pub elapsed: Duration,
    /// Requests made to the queue's service, where counted.
    pub queue_requests: Option<u64>,
    /// Whether it drained.
    pub drained: bool,
}

/// The device a worker reports to the coordinator: the one asked for, or what `auto` finds.
pub fn device_label(asked: Option<DeviceSpec>) -> String {
    match asked.unwrap_or_default() {
        DeviceSpec::Auto => match crate::device::cuda_device_count() {
            Ok(n) if n > 0 => "cuda:0".into(),
            _ => "cpu".into(),
        },
        other => other.to_string(),
    }
}

/// `http(s)://HOST:PORT` for a peer listener: its own IP, or the host name when it listens on
/// every interface.
fn default_advertise(bound: SocketAddr, tls: bool) -> String {
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

/// Runs a worker process until the queue is empty (`exit_when_empty`) or a notice drains it;
/// `on_event` hears what the caller may tell the user.
pub async fn run(
    cfg: ProcessConfig,
    on_event: impl FnMut(ProcessEvent<'_>) + Send + 'static,
) -> Result<Summary, ProcessError> {
    let on_event = Arc::new(std::sync::Mutex::new(on_event));
    let tell = {
        let on_event = Arc::clone(&on_event);
        move |e: ProcessEvent<'_>| {
            if let Ok(mut f) = on_event.lock() {
                f(e);
            }
        }
    };
    let mut id = match cfg.worker.id.as_str() {
        "" => format!("worker-{}", std::process::id()),
        id => id.to_string(),
    };
    let mut max_attempts = cfg
        .max_attempts
        .or_else(|| cfg.manifests.first().map(|m| m.raw.queue.max_attempts))
        .unwrap_or(3);
    // With a coordinator: register (it names the queue), then heartbeat in the background.
    let mut link = None;
    let mut stealing = None;
    let queue_uri = match (&cfg.coordinator, &cfg.queue) {
        (Some(coord), _) => {
            // Stealing: serve peers before registering, so the address registered answers.
            let peer = match cfg.peers {
                Some(p) => {
                    let incoming =
                        tonic::transport::server::TcpIncoming::bind(p.listen).map_err(|e| {
                            ProcessError::PeerListen {
                                addr: p.listen,
                                message: e.to_string(),
                            }
                        })?;
                    let bound = incoming
                        .local_addr()
                        .map_err(|e| ProcessError::PeerListen {
                            addr: p.listen,
                            message: e.to_string(),
                        })?;
                    let over_tls = p.tls.is_some();
                    let advertise = p
                        .advertise
                        .clone()
                        .unwrap_or_else(|| default_advertise(bound, over_tls));
                    let scheme = if over_tls { "https://" } else { "http://" };
                    if !advertise.starts_with(scheme) {
                        return Err(ProcessError::PeerAdvertise {
                            advertise,
                            scheme,
                            tls: over_tls,
                        });
                    }
                    let server = peer_server(p.tls).map_err(|e| {
                        let mut msg = e.to_string();
                        let mut source = std::error::Error::source(&e);
                        while let Some(s) = source {
                            msg = format!("{msg}: {s}");
                            source = s.source();
                        }
                        ProcessError::PeerTls(msg)
                    })?;
                    Some((incoming, advertise, server, p.handoff_timeout))
                }
                None => None,
            };
            let me = Identity {
                name: id.clone(),
                capacity: cfg.worker.prefetch as u32,
                device: device_label(cfg.device),
                peer_address: peer.as_ref().map(|p| p.1.clone()).unwrap_or_default(),
                capacity_type: coord.capacity_type.clone(),
            };
            let mut client = coord.client.clone();
            let reg = link::register(&mut client, &me, Duration::from_secs(60))
                .await
                .map_err(|s| ProcessError::Register {
                    url: coord.url.clone(),
                    message: spotbatch_net::describe(&s),
                })?;
            tracing::info!(worker = %reg.worker_id, queue = %reg.queue_uri, "registered with the coordinator");
            if cfg.max_attempts.is_none() {
                max_attempts = reg.max_attempts;
            }
            id = reg.worker_id.clone();
            if let Some((incoming, advertise, server, handoff_timeout)) = peer {
                tracing::info!(worker = %id, peer = %advertise, "work stealing on");
                stealing = Some(Stealing {
                    coordinator: client.clone(),
                    worker_id: reg.worker_id.clone(),
                    advertise,
                    incoming,
                    token: coord.token.clone(),
                    handoff_timeout,
                    server,
                    ca: coord.ca.clone(),
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
        (None, None) => return Err(ProcessError::NoQueue),
    };
    let queue: Arc<dyn LeaseQueue> =
        Arc::from(spotbatch_queue::open(&queue_uri, QueueConfig { max_attempts }).await?);
    let http_stop = CancellationToken::new();
    let _http_guard = http_stop.clone().drop_guard();
    let mut linger = Duration::ZERO;
    if let Some(m) = &cfg.metrics {
        crate::metrics::register_metrics();
        if crate::device::spawn_nvml_metrics(Duration::from_secs(2)) {
            tracing::info!("GPU utilisation and memory from NVML every 2 s");
        }
        let ready_q = Arc::clone(&queue);
        let bound = spotbatch_net::serve_http(
            m.addr,
            Arc::clone(&m.render),
            Arc::new(move || {
                let q = Arc::clone(&ready_q);
                Box::pin(async move { q.depth().await.is_ok() })
            }),
            http_stop.clone(),
        )
        .await?;
        tell(ProcessEvent::Metrics(&id, bound));
        linger = m.linger;
    }
    let opts = WorkerOptions {
        id: id.clone(),
        ..cfg.worker
    };
    let progress = cfg.progress.unwrap_or_default();
    let control = Control::default();
    let finished = CancellationToken::new();
    let sources = drain::sources(&cfg.notices).await;
    let watcher = {
        let tell = tell.clone();
        let progress = Arc::clone(&progress);
        tokio::spawn(drain::watch(
            sources,
            control.clone(),
            FirstSignal::Drain,
            finished.clone(),
            move |e| {
                // A cloud's notice (not a signal, which a scale-down sends too) is an interruption.
                if let DrainEvent::Draining(n, _) = &e {
                    if n.source != "signal" {
                        progress
                            .interrupted
                            .store(true, std::sync::atomic::Ordering::Relaxed);
                    }
                }
                tell(ProcessEvent::Drain(e))
            },
        ))
    };
    tracing::info!(worker = %id, queue = %queue_uri, "worker started");
    let link_stop = CancellationToken::new();
    let mut first_beat = None;
    let link = link.map(|(client, me, wid, every)| {
        let (tx, rx) = tokio::sync::oneshot::channel();
        first_beat = Some(rx);
        tokio::spawn(link::heartbeat_loop(
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
        Jobs::new(cfg.manifests, cfg.ort_threads).with_device(cfg.device),
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
    if !linger.is_zero() {
        tokio::time::sleep(linger).await;
    }
    Ok(Summary {
        id,
        progress,
        elapsed: started.elapsed(),
        queue_requests: queue.requests(),
        drained: control.is_draining(),
    })
}

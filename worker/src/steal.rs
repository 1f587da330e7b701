//! Work stealing between workers (`proto/peer.proto`).
//!
//! Every worker keeps its leased-but-unstarted shards in its prefetch deque (they wait there for
//! their turn to feed the pipeline). An idle worker (nothing waiting, nothing for it in the queue) asks
//! the coordinator for the peers with the most unstarted shards and asks one of them, over the
//! `Peer` service, to hand some over: the owner gives at most half of its deque, newest first.
//!
//! The owner keeps the queue lease and keeps extending it. The thief works the shard as if it had
//! leased it, sends `working` reports at least every quarter of the hand-off timeout, and reports
//! the outcome; the owner then acks (done), releases with the error (failed) or takes the shard
//! back into its deque (released by the thief, or the thief silent past the hand-off timeout). If
//! the owner dies, its lease expires and the shard is redelivered: whoever leases it finds the
//! thief's done marker, or rewrites the same rows. A draining owner first offers its unstarted
//! shards to idle peers when they can finish them before its deadline, and releases the rest.
//!
//! Peer calls carry the same bearer token as coordinator calls and are checked the same way.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use spotbatch_net::{Auth, Bearer, Client, ConnectError};
use spotbatch_proto::api::peer_client::PeerClient;
use spotbatch_proto::api::peer_server::{Peer, PeerServer};
use spotbatch_proto::api::{
    HandedShard, OfferReply, OfferRequest, PeersRequest, ReportReply, ReportRequest, StealReply,
    StealRequest,
};
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};
use tracing::{debug, info, warn};

use crate::handoff::{Handoffs, Word};

/// A client of a peer's `Peer` service.
pub type PeerConn = PeerClient<InterceptedService<Channel, Bearer>>;

/// How a worker takes part in work stealing (`--steal on`, with a coordinator).
pub struct Stealing {
    /// The coordinator, asked for peers.
    pub coordinator: Client,
    /// This worker's id at the coordinator.
    pub worker_id: String,
    /// Where peers reach this worker's `Peer` service (`http://HOST:PORT`), as registered.
    pub advertise: String,
    /// The bound listener the `Peer` service is served on.
    pub incoming: tonic::transport::server::TcpIncoming,
    /// The bearer token peers must send (the coordinator's); `None`: peer calls are not checked.
    pub token: Option<String>,
    /// A thief silent this long loses the shard back to its owner.
    pub handoff_timeout: Duration,
    /// The server `Peer` is served with (from [`peer_server`]: over TLS or not).
    pub server: tonic::transport::Server,
    /// PEM CA certificate that peers' `https://` certificates are checked against.
    pub ca: Option<Vec<u8>>,
}

/// How many peers' clients a worker keeps. Spot fleets churn: over a long-lived worker's life the
/// peers it has talked to come and go, and a departed peer's client (its connection task) would
/// otherwise stay for good; the least recently used one goes first.
const MAX_PEER_CONNS: usize = 64;

/// Stealing's settings and connections, shared by a worker's tasks.
pub(crate) struct StealState {
    coordinator: Client,
    pub(crate) worker_id: String,
    advertise: String,
    pub(crate) token: Option<String>,
    pub(crate) handoff_timeout: Duration,
    ca: Option<Vec<u8>>,
    /// Peer clients by address, with when each was last used; at most [`MAX_PEER_CONNS`].
    conns: Mutex<HashMap<String, (PeerConn, Instant)>>,
    /// Hand-offs this worker gave, by id: the owner's task listens on the other end.
    pub(crate) handoffs: Handoffs,
}

impl StealState {
    /// Splits the listener and its server off (for [`serve`]).
    pub(crate) fn new(
        s: Stealing,
    ) -> (
        Self,
        (
            tonic::transport::server::TcpIncoming,
            tonic::transport::Server,
        ),
    ) {
        (
            Self {
                handoffs: Handoffs::new(&s.worker_id),
                coordinator: s.coordinator,
                worker_id: s.worker_id,
                advertise: s.advertise,
                token: s.token,
                handoff_timeout: s.handoff_timeout,
                ca: s.ca,
                conns: Mutex::new(HashMap::new()),
            },
            (s.incoming, s.server),
        )
    }

    /// A (cached, lazily connecting) client of the peer at `address`.
    pub(crate) fn conn(&self, address: &str) -> Result<PeerConn, ConnectError> {
        if let Ok(mut m) = self.conns.lock() {
            if let Some((c, used)) = m.get_mut(address) {
                *used = Instant::now();
                return Ok(c.clone());
            }
        }
        let (channel, bearer) =
            spotbatch_net::channel(address, self.token.as_deref(), self.ca.as_deref())?;
        let c = PeerClient::with_interceptor(channel, bearer);
        if let Ok(mut m) = self.conns.lock() {
            // One client is added at a time, so one eviction keeps the bound.
            if m.len() >= MAX_PEER_CONNS {
                let oldest = m
                    .iter()
                    .min_by_key(|(_, (_, t))| *t)
                    .map(|(a, _)| a.clone());
                if let Some(oldest) = oldest {
                    m.remove(&oldest);
                }
            }
            m.insert(address.to_string(), (c.clone(), Instant::now()));
        }
        Ok(c)
    }
}

/// What the work-stealing service needs from the worker it serves, and nothing more: the worker
/// implements it, so stealing never reaches into the worker's own state.
pub(crate) trait Host: Send + Sync + 'static {
    /// Takes up to `max` unstarted shards for `thief` (at most half of them unless `all`),
    /// newest first, each as a hand-off registered in [`StealState::handoffs`].
    fn hand_over(&self, max: usize, all: bool, thief: &str) -> Vec<HandedShard>;
    /// Leased shards waiting for their turn.
    fn unstarted(&self) -> usize;
    /// Free slots: how many more shards the worker can hold.
    fn room(&self) -> usize;
    /// Whether the worker is draining (it gives shards away only by offers then).
    fn is_draining(&self) -> bool;
    /// Whether the worker has stopped taking new work.
    fn stops_leasing(&self) -> bool;
    /// The worker's measured seconds per shard.
    fn shard_secs(&self) -> Option<f64>;
    /// Works a shard handed over by the peer `owner` (stolen, or offered by it).
    fn work_handed(&self, h: HandedShard, owner: PeerConn, timeout: Duration);
}

/// Tells the owner every `every` that the thief is still working the shard. Lost when the
/// owner no longer knows the hand-off (it took the shard back); an owner that does not answer
/// may be dead, and finishing the shard is then still worth it (its rows are identical).
pub(crate) async fn keep_handoff(
    mut owner: PeerConn,
    id: String,
    thief: String,
    every: Duration,
) -> String {
    let mut away = false;
    loop {
        tokio::time::sleep(every).await;
        let r = owner
            .report(ReportRequest {
                handoff_id: id.clone(),
                state: "working".into(),
                thief_id: thief.clone(),
                ..Default::default()
            })
            .await;
        match r {
            Ok(_) => away = false,
            Err(s) if s.code() == tonic::Code::NotFound => {
                return "the owner took the shard back".to_string();
            }
            Err(s) => {
                if !away {
                    warn!(handoff = %id, error = %s.message(), "the shard's owner does not answer; finishing the shard anyway");
                }
                away = true;
            }
        }
    }
}

/// Sends a thief's final word on a shard to its owner (a few tries: the owner may be busy).
pub(crate) async fn report_final(
    mut owner: PeerConn,
    id: &str,
    thief: &str,
    state: &'static str,
    items: u64,
    errors: u64,
    reason: String,
) {
    let req = ReportRequest {
        handoff_id: id.to_string(),
        state: state.into(),
        items,
        errors,
        reason,
        thief_id: thief.to_string(),
    };
    for attempt in 0..3 {
        match owner.report(req.clone()).await {
            Ok(_) => return,
            Err(s) if s.code() == tonic::Code::NotFound => {
                info!(handoff = %id, state, "the owner had taken the shard back");
                return;
            }
            Err(s) => {
                warn!(handoff = %id, state, attempt, error = %s.message(), "reporting to the shard's owner failed");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
    warn!(handoff = %id, "the owner is gone; its lease will expire and the shard is found done or rewritten the same");
}

/// An idle worker steals up to `max` shards: asks the coordinator for the busiest peers and tries
/// them in turn (at most three) until one hands something over. Returns the shards and where
/// their owner is.
pub(crate) async fn steal(st: &StealState, max: usize) -> Option<(String, Vec<HandedShard>)> {
    let t0 = Instant::now();
    let peers = st
        .coordinator
        .clone()
        .peers(PeersRequest {
            worker_id: st.worker_id.clone(),
            idle: false,
        })
        .await;
    let peers = match peers {
        Ok(p) => p.into_inner().peers,
        Err(s) => {
            debug!(error = %s.message(), "asking the coordinator for peers failed");
            return None;
        }
    };
    for p in peers.iter().filter(|p| p.address != st.advertise).take(3) {
        metrics::counter!("spotbatch_steal_attempts_total").increment(1);
        let reply = match st.conn(&p.address) {
            Ok(mut c) => c
                .steal(StealRequest {
                    thief_id: st.worker_id.clone(),
                    thief_address: st.advertise.clone(),
                    max: max as u32,
                })
                .await
                .map_err(|s| s.message().to_string()),
            Err(e) => Err(e.to_string()),
        };
        match reply {
            Ok(r) if !r.get_ref().shards.is_empty() => {
                let shards = r.into_inner().shards;
                metrics::counter!("spotbatch_steals_total", "result" => "succeeded").increment(1);
                metrics::counter!("spotbatch_shards_handed_over_total", "direction" => "taken")
                    .increment(shards.len() as u64);
                metrics::histogram!("spotbatch_handoff_seconds").record(t0.elapsed().as_secs_f64());
                info!(worker = %st.worker_id, from = %p.worker_id, shards = shards.len(), peer_unstarted = p.unstarted, "stole unstarted shards");
                return Some((p.address.clone(), shards));
            }
            Ok(_) => {
                metrics::counter!("spotbatch_steals_total", "result" => "empty").increment(1);
            }
            Err(e) => {
                metrics::counter!("spotbatch_steals_total", "result" => "failed").increment(1);
                warn!(worker = %st.worker_id, peer = %p.worker_id, error = %e, "stealing from a peer failed");
            }
        }
    }
    None
}

/// A draining worker offers its unstarted shards to idle peers, when a peer can finish one before
/// the drain's cutoff (judged by this worker's own pace); offered shards not taken go back to the
/// deque, and the drain releases them.
pub(crate) async fn offer_unstarted(host: &dyn Host, st: &StealState, cutoff: Instant) {
    let left = cutoff
        .saturating_duration_since(Instant::now())
        .as_secs_f64();
    let Some(per_shard) = host.shard_secs() else {
        return;
    };
    let waiting = host.unstarted();
    if waiting == 0 {
        return;
    }
    // A shard handed over must start, run and be reported before the cutoff; a released one is
    // picked up from the queue by any worker with no deadline on it.
    let fits = (left / (1.5 * per_shard + 0.5)).floor() as usize;
    if fits == 0 {
        info!(worker = %st.worker_id, waiting, left_s = left, "no time to hand shards to peers; releasing them");
        return;
    }
    let peers = tokio::time::timeout(
        Duration::from_secs(1),
        st.coordinator.clone().peers(PeersRequest {
            worker_id: st.worker_id.clone(),
            idle: true,
        }),
    )
    .await;
    let Ok(Ok(peers)) = peers else {
        return;
    };
    for p in peers
        .into_inner()
        .peers
        .iter()
        .filter(|p| p.address != st.advertise)
    {
        let room = (p.capacity.saturating_sub(p.in_work) as usize).min(fits);
        if room == 0 {
            continue;
        }
        let shards = host.hand_over(room, true, &p.worker_id);
        if shards.is_empty() {
            break;
        }
        let ids: Vec<String> = shards.iter().map(|s| s.handoff_id.clone()).collect();
        let req = OfferRequest {
            owner_id: st.worker_id.clone(),
            owner_address: st.advertise.clone(),
            shards,
            handoff_timeout_ms: st.handoff_timeout.as_millis() as u32,
        };
        let accepted = match st.conn(&p.address) {
            Ok(mut c) => tokio::time::timeout(Duration::from_secs(1), c.offer(req))
                .await
                .ok()
                .and_then(Result::ok)
                .map(|r| r.into_inner().accepted)
                .unwrap_or_default(),
            Err(_) => Vec::new(),
        };
        metrics::counter!("spotbatch_shards_handed_over_total", "direction" => "offered")
            .increment(accepted.len() as u64);
        info!(worker = %st.worker_id, to = %p.worker_id, offered = ids.len(), accepted = accepted.len(), "offered unstarted shards to an idle peer");
        for id in ids.iter().filter(|id| !accepted.contains(id)) {
            st.handoffs.tell(id, Word::Released);
        }
        if host.unstarted() == 0 {
            break;
        }
    }
}

/// The `Peer` service of a worker.
pub(crate) struct PeerApi {
    host: Arc<dyn Host>,
    st: Arc<StealState>,
}

impl PeerApi {
    fn state(&self) -> Result<&StealState, Status> {
        Ok(&self.st)
    }
}

#[tonic::async_trait]
impl Peer for PeerApi {
    async fn steal(&self, req: Request<StealRequest>) -> Result<Response<StealReply>, Status> {
        let st = self.state()?;
        let r = req.into_inner();
        // A draining worker hands its shards out itself (offers), or releases them.
        let shards = if self.host.is_draining() {
            Vec::new()
        } else {
            self.host
                .hand_over(r.max.max(1) as usize, false, &r.thief_id)
        };
        if !shards.is_empty() {
            metrics::counter!("spotbatch_shards_handed_over_total", "direction" => "given")
                .increment(shards.len() as u64);
            info!(worker = %st.worker_id, thief = %r.thief_id, shards = shards.len(), "handed unstarted shards to an idle peer");
        }
        Ok(Response::new(StealReply {
            shards,
            handoff_timeout_ms: st.handoff_timeout.as_millis() as u32,
        }))
    }

    async fn offer(&self, req: Request<OfferRequest>) -> Result<Response<OfferReply>, Status> {
        let st = self.state()?;
        let r = req.into_inner();
        if self.host.stops_leasing() || r.owner_address == st.advertise {
            return Ok(Response::new(OfferReply::default()));
        }
        let room = self.host.room();
        let owner = st
            .conn(&r.owner_address)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let timeout = Duration::from_millis(u64::from(r.handoff_timeout_ms.max(1000)));
        let mut accepted = Vec::new();
        for h in r.shards.into_iter().take(room) {
            accepted.push(h.handoff_id.clone());
            self.host.work_handed(h, owner.clone(), timeout);
        }
        if !accepted.is_empty() {
            metrics::counter!("spotbatch_shards_handed_over_total", "direction" => "taken")
                .increment(accepted.len() as u64);
            info!(worker = %st.worker_id, owner = %r.owner_id, shards = accepted.len(), "took shards offered by a draining peer");
        }
        Ok(Response::new(OfferReply { accepted }))
    }

    async fn report(&self, req: Request<ReportRequest>) -> Result<Response<ReportReply>, Status> {
        let st = self.state()?;
        let r = req.into_inner();
        let word = match r.state.as_str() {
            "working" => Word::Working,
            "done" => Word::Done,
            "failed" => Word::Failed(r.reason),
            "released" => Word::Released,
            other => {
                return Err(Status::invalid_argument(format!(
                    "state {other:?}: expected working, done, failed or released"
                )))
            }
        };
        if st.handoffs.tell(&r.handoff_id, word) {
            Ok(Response::new(ReportReply {}))
        } else {
            Err(Status::not_found(format!(
                "no hand-off {}: the shard was taken back",
                r.handoff_id
            )))
        }
    }
}

/// The server for the `Peer` service: over TLS when given a PEM certificate chain and key, which
/// are checked here (so a bad pair stops the worker at start, not the first thief).
pub fn peer_server(
    tls: Option<(Vec<u8>, Vec<u8>)>,
) -> Result<tonic::transport::Server, tonic::transport::Error> {
    spotbatch_net::with_tls(
        tonic::transport::Server::builder().timeout(Duration::from_secs(30)),
        tls,
    )
}

/// Serves `Peer` on `incoming` with `server` (see [`peer_server`]) until `stop`, checking the
/// bearer token like the coordinator.
pub(crate) fn serve(
    host: Arc<dyn Host>,
    st: Arc<StealState>,
    (incoming, mut server): (
        tonic::transport::server::TcpIncoming,
        tonic::transport::Server,
    ),
    token: Option<String>,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let auth = match token {
        Some(t) => Auth::token(&t),
        None => Auth::none(),
    };
    let svc = PeerServer::new(PeerApi { host, st });
    let svc = InterceptedService::new(svc, move |r| auth.check(r));
    tokio::spawn(async move {
        let r = server
            .add_service(svc)
            .serve_with_incoming_shutdown(incoming, async move { stop.cancelled().await })
            .await;
        if let Err(e) = r {
            warn!(error = %e, "the peer service stopped");
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A worker's stealing state whose coordinator and peers are never reached.
    fn state() -> StealState {
        let coordinator = spotbatch_net::connect("http://127.0.0.1:9", None, None).unwrap();
        let incoming =
            tonic::transport::server::TcpIncoming::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        StealState::new(Stealing {
            coordinator,
            worker_id: "owner".into(),
            advertise: "http://127.0.0.1:1".into(),
            incoming,
            token: None,
            handoff_timeout: Duration::from_secs(1),
            server: peer_server(None).unwrap(),
            ca: None,
        })
        .0
    }

    #[tokio::test]
    async fn peer_clients_are_kept_for_the_most_recently_used_peers_only() {
        let st = state();
        let cached = |a: &str| st.conns.lock().unwrap().contains_key(a);
        let addr = |i: usize| format!("http://10.0.0.{i}:7070");
        for i in 0..MAX_PEER_CONNS {
            st.conn(&addr(i)).unwrap();
        }
        assert_eq!(st.conns.lock().unwrap().len(), MAX_PEER_CONNS);
        // Peer 0 is used again, so peers 1 and 2 are now the least recently used.
        std::thread::sleep(Duration::from_millis(2));
        st.conn(&addr(0)).unwrap();
        for i in MAX_PEER_CONNS..MAX_PEER_CONNS + 2 {
            std::thread::sleep(Duration::from_millis(2));
            st.conn(&addr(i)).unwrap();
        }
        assert_eq!(st.conns.lock().unwrap().len(), MAX_PEER_CONNS);
        assert!(cached(&addr(0)), "used again: kept");
        assert!(
            !cached(&addr(1)) && !cached(&addr(2)),
            "least recently used: gone"
        );
        assert!(cached(&addr(3)) && cached(&addr(MAX_PEER_CONNS + 1)));
        // A bad address is an error and takes no room.
        assert!(st.conn("ftp://10.0.0.1").is_err());
        assert!(!cached("ftp://10.0.0.1"));
        assert_eq!(st.conns.lock().unwrap().len(), MAX_PEER_CONNS);
    }
}

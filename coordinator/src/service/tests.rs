//! The coordinator's rules, in process: the in-memory queue, `memory://` state and data.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use spotbatch_proto::api::{HeartbeatRequest, PeersRequest, RegisterRequest, SubmitRequest};
use spotbatch_proto::DoneMarker;
use spotbatch_queue::memory::MemoryQueue;
use spotbatch_queue::{LeaseQueue, QueueConfig};
use spotbatch_store::{JobLayout, Prefix};
use tonic::Code;
use url::Url;

use super::{ApiError, CoordinatorConfig, CoordinatorService};

fn url(s: &str) -> Url {
    Url::parse(s).expect("a URL")
}

/// A coordinator over `memory://NAME/`, its queue, and ten inputs under `in/`.
async fn coordinator(name: &str, heartbeat: Duration) -> (Arc<CoordinatorService>, MemoryQueue) {
    let input = Prefix::open(&url(&format!("memory://{name}/in/"))).unwrap();
    for i in 0..10 {
        input
            .put(&format!("{i:02}.png"), Bytes::from_static(b"x"))
            .await
            .unwrap();
    }
    // `submit` checks the model file exists (issue 21, item 7).
    Prefix::open(&url(&format!("memory://{name}/")))
        .unwrap()
        .put("m.onnx", Bytes::from_static(b"a model"))
        .await
        .unwrap();
    let q = MemoryQueue::new(name, QueueConfig { max_attempts: 2 });
    let svc = CoordinatorService::open(
        CoordinatorConfig {
            queue_uri: format!("memory-test://{name}"),
            max_attempts: 2,
            heartbeat_interval: heartbeat,
            missed_heartbeats: 3,
            allowed_outputs: vec![url(&format!("memory://{name}/out/"))],
            fleet: super::FleetConfig::default(),
        },
        Arc::new(q.clone()),
        &url(&format!("memory://{name}/state/")),
    )
    .await
    .unwrap();
    (svc, q)
}

fn manifest(name: &str, output: &str) -> SubmitRequest {
    SubmitRequest {
        manifest_toml: format!(
            "name = \"{name}\"\n[input]\nuri = \"memory://{name}/in/\"\n[model]\nuri = \"memory://{name}/m.onnx\"\n[output]\nuri = \"{output}\"\n[queue]\nshard_size = 4\n"
        ),
        base_url: "file:///".into(),
    }
}

async fn mark_done(svc: &CoordinatorService, job: &str, shard: &str, items: u64) {
    let status = svc.status(job).await.unwrap();
    let out = Prefix::open(&url(&status.output)).unwrap();
    let marker = DoneMarker {
        job: job.into(),
        shard: shard.into(),
        items,
        errors: 1,
        part: JobLayout::part_key(shard),
        sha256: String::new(),
    };
    out.put(
        &JobLayout::done_key(shard),
        Bytes::from(serde_json::to_vec(&marker).unwrap()),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn submit_plans_enqueues_and_is_idempotent() {
    let (svc, q) = coordinator("c-submit", Duration::from_secs(2)).await;
    let req = manifest("c-submit", "memory://c-submit/out/");
    let first = svc.submit(req.clone()).await.unwrap();
    assert_eq!((first.shards_total, first.shards_enqueued), (3, 3));
    assert_eq!(first.items_total, 10);
    // The same manifest is the same job; it is running, so nothing more is enqueued.
    let again = svc.submit(req).await.unwrap();
    assert_eq!(again.job_id, first.job_id);
    assert_eq!(again.shards_enqueued, 0);
    assert_eq!(q.depth().await.unwrap().visible, 3);
    // A coordinator opened on the same state has the job back.
    let (other, _) = coordinator("c-submit", Duration::from_secs(2)).await;
    assert_eq!(other.status(&first.job_id).await.unwrap().items_total, 10);
}

#[tokio::test]
async fn progress_comes_from_the_done_markers() {
    let (svc, _q) = coordinator("c-progress", Duration::from_secs(2)).await;
    let job = svc
        .submit(manifest("c-progress", "memory://c-progress/out/"))
        .await
        .unwrap()
        .job_id;
    // The client's own plan of the same manifest: the same shards.
    let req = manifest("c-progress", "memory://c-progress/out/");
    let m =
        spotbatch_proto::Manifest::parse(&req.manifest_toml, std::path::Path::new("/")).unwrap();
    assert_eq!(m.job_id, job);
    let plan = spotbatch_plan::plan_job(&m).await.unwrap();
    let s = svc.status(&job).await.unwrap();
    assert_eq!(
        (s.state.as_str(), s.items_done, s.shards_done),
        ("running", 0, 0)
    );
    mark_done(&svc, &job, &plan.shards[0].shard, 4).await;
    let s = svc.status(&job).await.unwrap();
    assert_eq!((s.items_done, s.items_failed, s.shards_done), (4, 1, 1));
    for shard in &plan.shards[1..] {
        mark_done(&svc, &job, &shard.shard, shard.keys.len() as u64).await;
    }
    let s = svc.status(&job).await.unwrap();
    assert_eq!((s.state.as_str(), s.items_done), ("done", 10));
    assert_eq!(s.eta_seconds, 0.0);
}

#[tokio::test]
async fn dead_lettered_shards_fail_the_job_and_a_resubmit_drives_them_again() {
    let (svc, q) = coordinator("c-dead", Duration::from_secs(2)).await;
    let req = manifest("c-dead", "memory://c-dead/out/");
    let job = svc.submit(req.clone()).await.unwrap().job_id;
    let leases = q
        .lease(3, Duration::from_secs(30), Duration::ZERO)
        .await
        .unwrap();
    for l in &leases {
        q.dead_letter(l, "the model cannot load").await.unwrap();
    }
    let s = svc.status(&job).await.unwrap();
    assert_eq!(s.state, "failed");
    assert_eq!(s.dead_lettered.len(), 3);
    assert_eq!(s.dead_lettered[0].reason, "the model cannot load");
    let again = svc.submit(req).await.unwrap();
    assert_eq!(
        again.shards_enqueued, 3,
        "a failed job's shards are driven again"
    );
    assert_eq!(q.depth().await.unwrap().visible, 3);
}

#[tokio::test]
async fn bad_submissions_get_the_right_code_and_a_line_per_problem() {
    let (svc, _q) = coordinator("c-bad", Duration::from_secs(2)).await;
    let code = |e: ApiError| tonic::Status::from(e).code();
    let mut big = manifest("c-bad", "memory://c-bad/out/");
    big.manifest_toml
        .push_str(&"#".repeat(super::MAX_MANIFEST_BYTES));
    assert_eq!(
        code(svc.submit(big).await.unwrap_err()),
        Code::InvalidArgument
    );
    let mut broken = manifest("c-bad", "memory://c-bad/out/");
    broken.manifest_toml = broken
        .manifest_toml
        .replace("shard_size = 4", "shard_size = 0\nbogus = 1");
    match svc.submit(broken).await.unwrap_err() {
        ApiError::InvalidManifest(lines) => {
            assert!(lines.iter().any(|l| l.contains("queue.")), "{lines:?}")
        }
        other => panic!("{other:?}"),
    }
    let outside = manifest("c-bad", "memory://elsewhere/out/");
    assert_eq!(
        code(svc.submit(outside).await.unwrap_err()),
        Code::PermissionDenied
    );
    let climbing = manifest("c-bad", "memory://c-bad/out/../../x/");
    assert!(matches!(
        svc.submit(climbing).await.unwrap_err(),
        ApiError::OutputDotDot
    ));
    let no_inputs = SubmitRequest {
        manifest_toml: manifest("c-bad", "memory://c-bad/out/")
            .manifest_toml
            .replace("memory://c-bad/in/", "memory://c-bad/nothing/"),
        base_url: "file:///".into(),
    };
    assert_eq!(
        code(svc.submit(no_inputs).await.unwrap_err()),
        Code::FailedPrecondition
    );
    assert_eq!(
        code(svc.status("no-such-job").await.unwrap_err()),
        Code::NotFound
    );
}

#[tokio::test]
async fn a_cancelled_job_is_named_in_every_heartbeat_reply() {
    let (svc, _q) = coordinator("c-cancel", Duration::from_secs(2)).await;
    let job = svc
        .submit(manifest("c-cancel", "memory://c-cancel/out/"))
        .await
        .unwrap()
        .job_id;
    let w = svc
        .register(RegisterRequest {
            name: "w".into(),
            capacity: 2,
            device: "cpu".into(),
            ..Default::default()
        })
        .unwrap();
    assert!(svc.cancel(&job).await.unwrap(), "it was running");
    assert!(!svc.cancel(&job).await.unwrap(), "not running any more");
    assert_eq!(svc.status(&job).await.unwrap().state, "cancelled");
    let reply = svc
        .heartbeat(HeartbeatRequest {
            worker_id: w.worker_id,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(reply.cancelled_jobs, vec![job]);
    assert!(matches!(svc.cancel("nope").await, Err(ApiError::NoJob(_))));
}

#[tokio::test]
async fn the_registry_knows_who_is_alive_and_who_has_work_to_give() {
    let (svc, _q) = coordinator("c-peers", Duration::from_millis(40)).await;
    let reg = |name: &str| {
        svc.register(RegisterRequest {
            name: name.into(),
            capacity: 4,
            device: "cpu".into(),
            peer_address: format!("http://{name}:7071"),
            ..Default::default()
        })
        .unwrap()
        .worker_id
    };
    let (busy, idle, quiet) = (reg("busy"), reg("idle"), reg("quiet"));
    assert_ne!(busy, idle, "every registration gets its own id");
    let beat = |id: &str, unstarted: u32| HeartbeatRequest {
        worker_id: id.into(),
        unstarted,
        capacity: 4,
        ..Default::default()
    };
    svc.heartbeat(beat(&busy, 3)).await.unwrap();
    svc.heartbeat(beat(&idle, 0)).await.unwrap();
    let to_steal = svc
        .peers(PeersRequest {
            worker_id: idle.clone(),
            idle: false,
        })
        .unwrap();
    let names: Vec<&str> = to_steal
        .peers
        .iter()
        .map(|p| p.worker_id.as_str())
        .collect();
    assert_eq!(
        names,
        vec![busy.as_str()],
        "only peers with unstarted shards"
    );
    let idle_peers = svc
        .peers(PeersRequest {
            worker_id: busy.clone(),
            idle: true,
        })
        .unwrap();
    assert!(idle_peers.peers.iter().any(|p| p.worker_id == idle));
    // Three missed heartbeats: not alive, not offered as a peer.
    tokio::time::sleep(Duration::from_millis(200)).await;
    svc.heartbeat(beat(&idle, 0)).await.unwrap();
    let alive: Vec<String> = svc
        .worker_infos()
        .into_iter()
        .filter(|w| w.alive)
        .map(|w| w.worker_id)
        .collect();
    assert_eq!(alive, vec![idle.clone()]);
    let _ = quiet;
    assert!(matches!(
        svc.heartbeat(beat("ghost-1-0", 0)).await,
        Err(ApiError::UnknownWorker(_))
    ));
}

/// Issue 21, item 7: `submit` refuses a model file that is not there, and notes the manifest
/// settings the coordinator does not use.
#[tokio::test]
async fn submit_checks_the_files_and_notes_what_it_overrides() {
    let (svc, _q) = coordinator("c-checks", Duration::from_secs(2)).await;
    let mut req = manifest("c-checks", "memory://c-checks/out/");
    req.manifest_toml = req.manifest_toml.replace("m.onnx", "gone.onnx");
    match svc.submit(req).await {
        Err(ApiError::InvalidManifest(lines)) => assert_eq!(
            lines,
            vec!["model.uri: memory://c-checks/gone.onnx: not found".to_string()]
        ),
        other => panic!("{other:?}"),
    }
    let mut req = manifest("c-checks", "memory://c-checks/out/");
    req.manifest_toml = req.manifest_toml.replace(
        "shard_size = 4",
        "shard_size = 4\nuri = \"sqlite://./q.db\"\nmax_attempts = 7",
    );
    let reply = svc.submit(req).await.unwrap();
    assert_eq!(reply.notes.len(), 2, "{:?}", reply.notes);
    assert!(reply.notes[0].starts_with("queue.uri: the coordinator's queue memory-test://c-checks carries every job; sqlite:///q.db is not used"), "{:?}", reply.notes);
    assert!(
        reply.notes[1].starts_with("queue.max_attempts: 7 is not used"),
        "{:?}",
        reply.notes
    );
    // Settings left to their defaults are not noted.
    let plain = svc
        .submit(manifest("c-checks", "memory://c-checks/out/"))
        .await
        .unwrap();
    assert!(plain.notes.is_empty(), "{:?}", plain.notes);
}

/// The manifest of [`manifest`] with `shard_size` and a `[job]` table.
fn manifest_with(name: &str, shard_size: &str, job: &str) -> SubmitRequest {
    let mut req = manifest(name, &format!("memory://{name}/out/"));
    req.manifest_toml = req
        .manifest_toml
        .replace("shard_size = 4", &format!("shard_size = {shard_size}"));
    req.manifest_toml.push_str(job);
    req
}

fn register(svc: &CoordinatorService, name: &str, capacity_type: &str) -> String {
    svc.register(RegisterRequest {
        name: name.into(),
        capacity: 2,
        device: "cuda:0".into(),
        capacity_type: capacity_type.into(),
        ..Default::default()
    })
    .unwrap()
    .worker_id
}

/// A heartbeat of a worker working a shard of `job` at `rate` items/s.
fn busy(id: &str, job: &str, rate: f64) -> HeartbeatRequest {
    HeartbeatRequest {
        worker_id: id.into(),
        shards: vec![spotbatch_proto::api::CurrentShard {
            job_id: job.into(),
            shard: "s".into(),
        }],
        items_per_second: rate,
        capacity: 2,
        device: "cuda:0".into(),
        ..Default::default()
    }
}

/// Issue 23: without a deadline the fleet is what queue depth asks (one spot worker per 20
/// shards, as KEDA's queue scalers), with no on-demand, and status says so.
#[tokio::test]
async fn without_a_deadline_the_fleet_follows_queue_depth() {
    let (svc, _q) = coordinator("c-depth", Duration::from_secs(2)).await;
    let job = svc
        .submit(manifest("c-depth", "memory://c-depth/out/"))
        .await
        .unwrap()
        .job_id;
    let w = register(&svc, "w", "spot");
    svc.heartbeat(busy(&w, &job, 3.0)).await.unwrap();
    svc.evaluate_fleet().await;
    let f = svc.status(&job).await.unwrap().fleet.expect("evaluated");
    assert_eq!(f.mode, "depth");
    assert_eq!((f.desired_spot, f.desired_on_demand), (1, 0));
    assert_eq!((f.running_spot, f.running_on_demand), (1, 0));
    assert_eq!((f.deadline_unix_s, f.miss_risk), (-1.0, -1.0));
    assert_eq!(f.shard_size, "4");
    assert_eq!(f.spot_items_per_second, 3.0);
    assert!(f.triggers.is_empty(), "{:?}", f.triggers);
    assert_eq!(svc.fleet_totals().0, (1, 0));
    // Done: nothing more is wanted.
    let m = spotbatch_proto::Manifest::parse(
        &manifest("c-depth", "memory://c-depth/out/").manifest_toml,
        std::path::Path::new("/"),
    )
    .unwrap();
    for shard in spotbatch_plan::plan_job(&m).await.unwrap().shards {
        mark_done(&svc, &job, &shard.shard, shard.keys.len() as u64).await;
    }
    // The done markers are read (as `refresh_all` does before it sizes the fleet).
    svc.refresh(&job).await.unwrap();
    svc.evaluate_fleet().await;
    let f = svc.status(&job).await.unwrap().fleet.expect("evaluated");
    assert_eq!((f.mode.as_str(), f.desired_spot), ("done", 0));
    assert_eq!(svc.fleet_totals().0, (0, 0));
}

/// Issue 23: a deadline job is planned by the deadline-aware policy from the workers' measured
/// rates: with time to spare, spot only and a finish before the deadline; at risk, on-demand up
/// to the job's `max_on_demand_workers`. The deadline survives a coordinator restart.
#[tokio::test]
async fn a_deadline_job_gets_spot_first_and_on_demand_when_at_risk() {
    let (svc, _q) = coordinator("c-deadline", Duration::from_secs(2)).await;
    let reply = svc
        .submit(manifest_with(
            "c-deadline",
            "4",
            "[job]\ndeadline_hours = 24\n",
        ))
        .await
        .unwrap();
    assert!(reply.notes.is_empty(), "{:?}", reply.notes);
    let job = reply.job_id;
    let (a, b) = (register(&svc, "a", "spot"), register(&svc, "b", "spot"));
    svc.heartbeat(busy(&a, &job, 1.0)).await.unwrap();
    svc.heartbeat(busy(&b, &job, 1.0)).await.unwrap();
    svc.evaluate_fleet().await;
    let s = svc.status(&job).await.unwrap();
    let f = s.fleet.expect("evaluated");
    assert_eq!(f.mode, "deadline");
    let submitted = s.submitted_unix_ms as f64 / 1_000.0;
    assert!((f.deadline_unix_s - (submitted + 86_400.0)).abs() < 1e-3);
    assert_eq!(f.desired_on_demand, 0, "{f:?}");
    assert!((1..=2).contains(&f.desired_spot), "{f:?}");
    assert!(f.miss_risk >= 0.0 && f.miss_risk < 0.01, "{f:?}");
    assert!(
        f.projected_finish_unix_s > submitted && f.projected_finish_unix_s < f.deadline_unix_s,
        "{f:?}"
    );
    assert_eq!(f.max_on_demand_workers, 10, "the coordinator's default");
    assert_eq!((f.running_spot, f.running_on_demand), (2, 0));
    // Another coordinator over the same state knows the deadline.
    let (other, _) = coordinator("c-deadline", Duration::from_secs(2)).await;
    other.evaluate_fleet().await;
    let again = other.status(&job).await.unwrap().fleet.expect("evaluated");
    assert_eq!(again.deadline_unix_s, f.deadline_unix_s);

    // 10 items at 0.01 items/s a worker cannot be done in 36 s: on-demand, all the job allows.
    let (svc, _q) = coordinator("c-risk", Duration::from_secs(2)).await;
    let job = svc
        .submit(manifest_with(
            "c-risk",
            "4",
            "[job]\ndeadline_hours = 0.01\nmax_on_demand_workers = 2\n",
        ))
        .await
        .unwrap()
        .job_id;
    let w = register(&svc, "w", "spot");
    let o = register(&svc, "o", "on_demand");
    svc.heartbeat(busy(&w, &job, 0.01)).await.unwrap();
    svc.heartbeat(busy(&o, &job, 0.01)).await.unwrap();
    svc.evaluate_fleet().await;
    let f = svc.status(&job).await.unwrap().fleet.expect("evaluated");
    assert_eq!(f.mode, "deadline", "{f:?}");
    assert_eq!((f.running_spot, f.running_on_demand), (1, 1));
    assert_eq!(f.desired_on_demand, 2, "{f:?}");
    assert!(f.triggers.contains(&"deadline_risk".to_string()), "{f:?}");
    assert!(f.miss_risk > 0.5, "{f:?}");
    assert_eq!(svc.fleet_totals().0 .1, 2);
    let infos = svc.worker_infos();
    let kinds: Vec<&str> = infos.iter().map(|w| w.capacity_type.as_str()).collect();
    assert!(
        kinds.contains(&"spot") && kinds.contains(&"on_demand"),
        "{kinds:?}"
    );
}

/// Issue 23: spot interruptions are counted once each — a worker drained by a cloud's notice
/// as a notice, a spot worker gone silent as a hard kill; a clean goodbye and an on-demand
/// worker's silence are not spot interruptions.
#[tokio::test]
async fn spot_interruptions_are_counted_once_each() {
    let (svc, _q) = coordinator("c-kills", Duration::from_millis(40)).await;
    let noticed = register(&svc, "noticed", "spot");
    let killed = register(&svc, "killed", "spot");
    let left = register(&svc, "left", "spot");
    let _od = register(&svc, "od", "on_demand");
    svc.heartbeat(HeartbeatRequest {
        worker_id: noticed.clone(),
        interrupted: true,
        ..Default::default()
    })
    .await
    .unwrap();
    svc.heartbeat(HeartbeatRequest {
        worker_id: left.clone(),
        leaving: true,
        ..Default::default()
    })
    .await
    .unwrap();
    svc.evaluate_fleet().await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    svc.evaluate_fleet().await;
    let (_, seen) = svc.fleet_totals();
    assert_eq!((seen.notices, seen.hard_kills), (1, 0));
    // Spot workers alive count as exposure (the draining one too).
    assert!(seen.worker_hours > 0.0, "{seen:?}");
    // Three heartbeats missed: the silent spot worker was killed without a notice.
    tokio::time::sleep(Duration::from_millis(200)).await;
    svc.evaluate_fleet().await;
    svc.evaluate_fleet().await;
    let (_, seen) = svc.fleet_totals();
    assert_eq!((seen.notices, seen.hard_kills), (1, 1));
    let info = svc
        .worker_infos()
        .into_iter()
        .find(|w| w.worker_id == noticed)
        .expect("registered");
    assert!(info.interrupted);
    let _ = killed;
}

/// Issue 23: `queue.shard_size = "auto"` at submission is chosen from the live workers'
/// measured rate (Young–Daly, at most the per-worker share) and shown in status.
#[tokio::test]
async fn auto_shard_size_is_chosen_from_the_workers_rate_at_submission() {
    let (svc, _q) = coordinator("c-auto", Duration::from_secs(2)).await;
    let w = register(&svc, "w", "spot");
    svc.heartbeat(busy(&w, "another-job", 2.0)).await.unwrap();
    let reply = svc
        .submit(manifest_with("c-auto", "\"auto\"", ""))
        .await
        .unwrap();
    // 0.5 s an item: Young–Daly's shard is above the 30-minute cap, and 10 items for one
    // worker at 4 shards each cut it to 2.5 → 3 items.
    assert_eq!(reply.shards_total, 4);
    svc.evaluate_fleet().await;
    let f = svc
        .status(&reply.job_id)
        .await
        .unwrap()
        .fleet
        .expect("evaluated");
    assert_eq!(f.shard_size, "auto → 3");
    // Submitted again, the same shards whatever the workers do now.
    svc.heartbeat(busy(&w, "another-job", 100.0)).await.unwrap();
    let again = svc
        .submit(manifest_with("c-auto", "\"auto\"", ""))
        .await
        .unwrap();
    assert_eq!((again.job_id, again.shards_total), (reply.job_id, 4));
}

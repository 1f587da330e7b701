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

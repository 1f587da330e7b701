//! The worker's rules, proven in one process: a real worker (`run_worker`) over the in-memory
//! lease queue, object_store's in-memory store (`memory://`) and the fake engine — no model
//! file, no ONNX Runtime, no other process. Each test states one rule and fails if it breaks:
//! error rows vs a failed attempt, dead-lettering, the drain (unstarted shards released at once,
//! the shard in work checkpointed by its cutoff), resuming a partial result, a lost lease, and
//! the hand-off rules on both sides (owner and thief) over the real peer protocol.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use spotbatch_proto::api::peer_client::PeerClient;
use spotbatch_proto::api::peer_server::{Peer, PeerServer};
use spotbatch_proto::api::{
    HandedShard, OfferReply, OfferRequest, ReportReply, ReportRequest, StealReply, StealRequest,
};
use spotbatch_proto::{Manifest, ShardTask};
use spotbatch_queue::memory::MemoryQueue;
use spotbatch_queue::{Lease, LeaseQueue, QueueConfig, QueueError};
use spotbatch_store::{JobLayout, Prefix};
use spotbatch_worker::engine::fake::FakeModel;
use spotbatch_worker::{run_worker, Control, Jobs, Progress, Stealing, WorkerOptions};

/// A tiny gray image whose four pixels are all `v`.
fn image(v: u8) -> Vec<u8> {
    let img = image::GrayImage::from_pixel(2, 2, image::Luma([v]));
    let mut out = std::io::Cursor::new(Vec::new());
    image::DynamicImage::ImageLuma8(img)
        .write_to(&mut out, image::ImageFormat::Png)
        .expect("encode a PNG");
    out.into_inner()
}

/// The fake model's first input value for an image of pixel value `v`.
fn first_value(v: u8) -> f32 {
    f32::from(v) * (1.0 / 255.0)
}

/// A job over `memory://NAME/`: `inputs` written under `in/`, a manifest taking 2×2 gray images,
/// its shards planned (not enqueued).
struct Job {
    manifest: Manifest,
    shards: Vec<ShardTask>,
    out: Prefix,
}

/// `shard_size` items a shard, batches of up to `batch_size` waiting at most `delay_ms`.
async fn job(
    name: &str,
    inputs: &[(&str, Vec<u8>)],
    shard_size: usize,
    batch_size: usize,
    delay_ms: u64,
) -> Job {
    let root = format!("memory://{name}");
    let input = Prefix::open(&url::Url::parse(&format!("{root}/in/")).unwrap()).unwrap();
    for (key, bytes) in inputs {
        input.put(key, Bytes::from(bytes.clone())).await.unwrap();
    }
    let model = Prefix::open(&url::Url::parse(&format!("{root}/")).unwrap()).unwrap();
    model
        .put("model.onnx", Bytes::from_static(b"fake"))
        .await
        .unwrap();
    let text = format!(
        "name = \"{name}\"\n[input]\nuri = \"{root}/in/\"\n[model]\nuri = \"{root}/model.onnx\"\nbatch_size = {batch_size}\nmax_batch_delay_ms = {delay_ms}\n[preprocess]\ncolor = \"gray\"\n[postprocess]\ntop_k = 1\n[output]\nuri = \"{root}/out/\"\n[queue]\nshard_size = {shard_size}\nvisibility_timeout_secs = 30\nmax_attempts = 2\n"
    );
    let manifest = Manifest::parse(&text, std::path::Path::new("/")).expect("manifest");
    let plan = spotbatch_plan::plan_job(&manifest).await.expect("plan");
    let out = JobLayout::for_manifest(&manifest).unwrap().prefix;
    Job {
        manifest,
        shards: plan.shards,
        out,
    }
}

async fn enqueue(q: &dyn LeaseQueue, shards: &[ShardTask]) {
    let items: Vec<_> = shards
        .iter()
        .map(|s| spotbatch_queue::NewItem {
            id: s.shard.clone(),
            body: s.to_bytes(),
        })
        .collect();
    q.enqueue(&items).await.unwrap();
}

fn opts(id: &str) -> WorkerOptions {
    WorkerOptions {
        id: id.into(),
        prefetch: 3,
        decode_threads: 1,
        lease_wait: Duration::from_millis(50),
        exit_when_empty: true,
        ..WorkerOptions::default()
    }
}

fn jobs(m: &Manifest, model: &FakeModel) -> Jobs {
    Jobs::new([m.clone()], Some(1)).with_loader(Arc::new(model.clone()))
}

/// Every row the job wrote, by key, from its part files.
async fn rows(out: &Prefix) -> BTreeMap<String, serde_json::Value> {
    let mut rows = BTreeMap::new();
    for l in out.list().await.unwrap() {
        if !(l.key.starts_with("part-") && l.key.ends_with(".jsonl")) {
            continue;
        }
        let bytes = out.get(&l.key, 1 << 20).await.unwrap();
        for line in String::from_utf8(bytes.to_vec()).unwrap().lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let key = v["key"].as_str().unwrap().to_string();
            assert!(rows.insert(key.clone(), v).is_none(), "{key}: two rows");
        }
    }
    rows
}

async fn exists(out: &Prefix, key: &str) -> bool {
    out.exists(key).await.unwrap()
}

#[tokio::test]
async fn bad_inputs_become_error_rows_and_the_rest_of_the_shard_is_written() {
    // Shards of four in key order: a, b, c, garbage | poison, z. The poison image shares a batch
    // of two with z (batches wait 200 ms to fill).
    let inputs = [
        ("a.png", image(10)),
        ("b.png", image(20)),
        ("c.png", image(30)),
        ("garbage.png", b"not an image at all".to_vec()),
        ("poison.png", image(99)),
        ("z.png", image(40)),
    ];
    let job = job("rows", &inputs, 4, 2, 200).await;
    let mut model = FakeModel::new(&[1, 2, 2], 3);
    // The model fails on the poison image: its batch fails, then it fails alone.
    model.fail_on_first_value = Some(first_value(99));
    let q = MemoryQueue::new("rows", QueueConfig { max_attempts: 2 });
    enqueue(&q, &job.shards).await;
    let progress = Arc::new(Progress::default());
    run_worker(
        Arc::new(q.clone()),
        jobs(&job.manifest, &model),
        opts("w"),
        Arc::clone(&progress),
        Control::default(),
        None,
    )
    .await
    .unwrap();
    let rows = rows(&job.out).await;
    assert_eq!(rows.len(), 6, "one row per input: {rows:?}");
    assert!(rows["garbage.png"]["error"]
        .as_str()
        .unwrap()
        .contains("not an image"));
    assert!(rows["poison.png"]["error"]
        .as_str()
        .unwrap()
        .contains("fake model fails"));
    for k in ["a.png", "b.png", "c.png", "z.png"] {
        assert!(rows[k]["error"].is_null(), "{k}: {}", rows[k]);
        assert_eq!(
            rows[k]["top_k"][0]["index"], 2,
            "{k}: the last class scores highest"
        );
    }
    let d = q.depth().await.unwrap();
    assert_eq!((d.pending(), d.dead), (0, 0), "every shard acked");
    assert_eq!(progress.items_failed.load(Ordering::Relaxed), 2);
}

#[tokio::test]
async fn a_model_failing_every_item_fails_the_attempt_until_the_shard_is_dead_lettered() {
    let inputs = [("a.png", image(7)), ("b.png", image(7))];
    let job = job("dead", &inputs, 4, 2, 200).await;
    let mut model = FakeModel::new(&[1, 2, 2], 3);
    model.fail_on_first_value = Some(first_value(7));
    let q = MemoryQueue::new("dead", QueueConfig { max_attempts: 2 });
    enqueue(&q, &job.shards).await;
    let progress = Arc::new(Progress::default());
    run_worker(
        Arc::new(q.clone()),
        jobs(&job.manifest, &model),
        opts("w"),
        Arc::clone(&progress),
        Control::default(),
        None,
    )
    .await
    .unwrap();
    let dead = q.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1, "the shard is dead-lettered");
    assert!(
        dead[0].reason.contains("fake model fails"),
        "{}",
        dead[0].reason
    );
    assert_eq!(progress.attempts_failed.load(Ordering::Relaxed), 2);
    assert!(
        rows(&job.out).await.is_empty(),
        "a failed attempt writes no part"
    );
    assert!(!exists(&job.out, &JobLayout::done_key(&job.shards[0].shard)).await);
}

/// Eight images per shard, three shards, a model taking 100 ms a batch of one: a drain with a
/// short deadline finds one shard in work and two waiting.
async fn slow_job(name: &str) -> (Job, FakeModel) {
    let inputs: Vec<(String, Vec<u8>)> = (0..24)
        .map(|i| (format!("{i:02}.png"), image(i as u8 + 1)))
        .collect();
    let refs: Vec<(&str, Vec<u8>)> = inputs
        .iter()
        .map(|(k, b)| (k.as_str(), b.clone()))
        .collect();
    let job = job(name, &refs, 8, 1, 1).await;
    let mut model = FakeModel::new(&[1, 2, 2], 2);
    model.delay = Duration::from_millis(100);
    (job, model)
}

#[tokio::test]
async fn a_drain_releases_unstarted_shards_at_once_and_checkpoints_the_one_in_work() {
    let (job, model) = slow_job("drain").await;
    assert_eq!(job.shards.len(), 3);
    let q = MemoryQueue::new("drain", QueueConfig { max_attempts: 5 });
    enqueue(&q, &job.shards).await;
    let control = Control::default();
    let progress = Arc::new(Progress::default());
    let mut o = opts("w1");
    o.prefetch = 3;
    let worker = tokio::spawn(run_worker(
        Arc::new(q.clone()),
        jobs(&job.manifest, &model),
        o,
        Arc::clone(&progress),
        control.clone(),
        None,
    ));
    // Wait until the worker holds all three and the model has run a little of the first.
    for _ in 0..200 {
        if progress.shards_in_flight.load(Ordering::Relaxed) == 3
            && model.runs.load(Ordering::Relaxed) >= 2
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(q.depth().await.unwrap().visible, 0, "all three leased");
    control.drain(SystemTime::now() + Duration::from_millis(400));
    // The unstarted two are back on the queue while the shard in work is still being worked.
    let mut released_while_working = false;
    for _ in 0..100 {
        let d = q.depth().await.unwrap();
        if d.visible >= 2 && !worker.is_finished() {
            released_while_working = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(released_while_working, "unstarted shards released at once");
    worker.await.unwrap().unwrap();
    let d = q.depth().await.unwrap();
    assert_eq!(d.in_flight, 0, "nothing left leased");
    // The shard in work: finished rows written as a partial result (or, if it finished by the
    // cutoff, written and acked).
    let mut partials = 0;
    for s in &job.shards {
        let partial = JobLayout::partial_key(&s.shard);
        if exists(&job.out, &partial).await {
            partials += 1;
            let text = job.out.get(&partial, 1 << 20).await.unwrap();
            let n = String::from_utf8(text.to_vec()).unwrap().lines().count();
            assert!(
                (1..8).contains(&n),
                "a partial result of the shard's first rows: {n}"
            );
            assert!(!exists(&job.out, &JobLayout::done_key(&s.shard)).await);
        }
    }
    assert_eq!(partials, 1, "exactly the shard in work was checkpointed");
    assert_eq!(d.visible, 3, "all three handed back");
}

#[tokio::test]
async fn a_resumed_shard_keeps_its_partial_rows_and_runs_only_the_rest() {
    let (job, model) = slow_job("resume").await;
    let q = MemoryQueue::new("resume", QueueConfig { max_attempts: 5 });
    enqueue(&q, &job.shards[..1]).await;
    let control = Control::default();
    let progress = Arc::new(Progress::default());
    let first = tokio::spawn(run_worker(
        Arc::new(q.clone()),
        jobs(&job.manifest, &model),
        opts("w1"),
        Arc::clone(&progress),
        control.clone(),
        None,
    ));
    for _ in 0..200 {
        if model.runs.load(Ordering::Relaxed) >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    control.drain(SystemTime::now() + Duration::from_millis(200));
    first.await.unwrap().unwrap();
    let partial_key = JobLayout::partial_key(&job.shards[0].shard);
    let partial =
        String::from_utf8(job.out.get(&partial_key, 1 << 20).await.unwrap().to_vec()).unwrap();
    let kept: Vec<&str> = partial.lines().collect();
    assert!(!kept.is_empty() && kept.len() < 8, "{kept:?}");
    let runs_before = model.runs.load(Ordering::Relaxed);
    // A fresh worker: the kept rows are not run again, and land in the part byte for byte.
    run_worker(
        Arc::new(q.clone()),
        jobs(&job.manifest, &model),
        opts("w2"),
        Arc::new(Progress::default()),
        Control::default(),
        None,
    )
    .await
    .unwrap();
    let ran = model.runs.load(Ordering::Relaxed) - runs_before;
    assert_eq!(ran, 8 - kept.len(), "only the items without a kept row ran");
    let part = String::from_utf8(
        job.out
            .get(&JobLayout::part_key(&job.shards[0].shard), 1 << 20)
            .await
            .unwrap()
            .to_vec(),
    )
    .unwrap();
    for line in &kept {
        assert!(
            part.lines().any(|l| l == *line),
            "kept row rewritten as it was"
        );
    }
    assert_eq!(rows(&job.out).await.len(), 8);
    assert!(
        !exists(&job.out, &partial_key).await,
        "the partial result is gone once done"
    );
}

/// A queue whose extensions report the lease lost: what a worker sees when its lease expired and
/// another worker leased the shard.
#[derive(Debug, Clone)]
struct LosesLeases(MemoryQueue);

#[async_trait]
impl LeaseQueue for LosesLeases {
    fn name(&self) -> &str {
        self.0.name()
    }
    async fn enqueue(&self, items: &[spotbatch_queue::NewItem]) -> spotbatch_queue::Result<()> {
        self.0.enqueue(items).await
    }
    async fn lease(
        &self,
        max: usize,
        visibility: Duration,
        wait: Duration,
    ) -> spotbatch_queue::Result<Vec<Lease>> {
        self.0.lease(max, visibility, wait).await
    }
    async fn extend(&self, lease: &Lease, _: Duration) -> spotbatch_queue::Result<SystemTime> {
        Err(QueueError::LeaseLost {
            queue: self.0.name().into(),
            item: lease.id.clone(),
        })
    }
    async fn ack(&self, leases: &[Lease]) -> spotbatch_queue::Result<()> {
        self.0.ack(leases).await
    }
    async fn release(&self, leases: &[Lease], e: Option<&str>) -> spotbatch_queue::Result<()> {
        self.0.release(leases, e).await
    }
    async fn dead_letter(&self, lease: &Lease, reason: &str) -> spotbatch_queue::Result<()> {
        self.0.dead_letter(lease, reason).await
    }
    async fn depth(&self) -> spotbatch_queue::Result<spotbatch_queue::Depth> {
        self.0.depth().await
    }
    async fn dead_letters(
        &self,
        max: usize,
    ) -> spotbatch_queue::Result<Vec<spotbatch_queue::DeadLetter>> {
        self.0.dead_letters(max).await
    }
}

#[tokio::test]
async fn a_lost_lease_stops_work_on_the_shard_and_writes_nothing() {
    let (job, model) = slow_job("lost").await;
    let q = MemoryQueue::new("lost", QueueConfig { max_attempts: 5 });
    enqueue(&q, &job.shards[..1]).await;
    let mut o = opts("w");
    // Extended every 100 ms: the first extension finds the lease lost, long before the eight
    // 100 ms batches are done.
    o.visibility = Some(Duration::from_millis(300));
    o.exit_when_empty = false;
    let control = Control::default();
    let progress = Arc::new(Progress::default());
    progress.collect_outcomes.store(true, Ordering::Relaxed);
    let worker = tokio::spawn(run_worker(
        Arc::new(LosesLeases(q.clone())),
        jobs(&job.manifest, &model),
        o,
        Arc::clone(&progress),
        control.clone(),
        None,
    ));
    let mut outcome = None;
    for _ in 0..300 {
        if let Some(o) = progress.outcomes.lock().unwrap().first().cloned() {
            outcome = Some(o);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    control.stop_now();
    worker.await.unwrap().unwrap();
    let outcome = outcome.expect("the shard ended");
    assert_eq!(outcome.outcome, "lease_lost", "{outcome:?}");
    let s = &job.shards[0].shard;
    assert!(!exists(&job.out, &JobLayout::part_key(s)).await, "no part");
    assert!(
        !exists(&job.out, &JobLayout::done_key(s)).await,
        "no done marker"
    );
    assert!(
        !exists(&job.out, &JobLayout::partial_key(s)).await,
        "no partial"
    );
    assert!(model.runs.load(Ordering::Relaxed) < 8, "work stopped early");
}

/// The owner's side of a hand-off, through its real `Peer` service: a thief takes an unstarted
/// shard with `Steal`, then reports on it.
struct Owner {
    q: MemoryQueue,
    job: Job,
    model: FakeModel,
    peer: PeerClient<tonic::transport::Channel>,
    worker: tokio::task::JoinHandle<Result<(), QueueError>>,
    control: Control,
}

async fn owner(name: &str, handoff_timeout: Duration) -> Owner {
    let (job, model) = slow_job(name).await;
    let q = MemoryQueue::new(name, QueueConfig { max_attempts: 1 });
    enqueue(&q, &job.shards[..2]).await;
    let listener = tonic::transport::server::TcpIncoming::bind("127.0.0.1:0".parse().unwrap())
        .expect("bind a peer port");
    let addr = listener.local_addr().unwrap();
    let advertise = format!("http://{addr}");
    let stealing = Stealing {
        // Never reached: this worker is never idle long enough to ask for peers to steal from.
        coordinator: spotbatch_net::connect("http://127.0.0.1:9", None, None).unwrap(),
        worker_id: format!("{name}-owner"),
        advertise: advertise.clone(),
        incoming: listener,
        token: None,
        handoff_timeout,
        server: spotbatch_worker::steal::peer_server(None).unwrap(),
        ca: None,
    };
    let control = Control::default();
    let mut o = opts("owner");
    o.prefetch = 2;
    o.exit_when_empty = false;
    let worker = tokio::spawn(run_worker(
        Arc::new(q.clone()),
        jobs(&job.manifest, &model),
        o,
        Arc::new(Progress::default()),
        control.clone(),
        Some(stealing),
    ));
    let mut peer = None;
    for _ in 0..100 {
        if let Ok(c) = PeerClient::connect(advertise.clone()).await {
            peer = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Owner {
        q,
        job,
        model,
        peer: peer.expect("the owner's peer service answers"),
        worker,
        control,
    }
}

impl Owner {
    /// Steals the owner's one unstarted shard.
    async fn steal_one(&mut self) -> HandedShard {
        for _ in 0..200 {
            let r = self
                .peer
                .steal(StealRequest {
                    thief_id: "thief".into(),
                    thief_address: "http://127.0.0.1:1".into(),
                    max: 1,
                })
                .await
                .unwrap()
                .into_inner();
            if let Some(h) = r.shards.into_iter().next() {
                return h;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the owner never had an unstarted shard to give");
    }

    async fn report(&mut self, h: &HandedShard, state: &str, reason: &str) -> tonic::Code {
        match self
            .peer
            .report(ReportRequest {
                handoff_id: h.handoff_id.clone(),
                state: state.into(),
                thief_id: "thief".into(),
                reason: reason.into(),
                ..Default::default()
            })
            .await
        {
            Ok(_) => tonic::Code::Ok,
            Err(s) => s.code(),
        }
    }

    async fn until_empty(self) -> (MemoryQueue, Job, FakeModel) {
        for _ in 0..500 {
            if self.q.depth().await.unwrap().pending() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.control.stop_now();
        self.worker.await.unwrap().unwrap();
        (self.q, self.job, self.model)
    }
}

#[tokio::test]
async fn an_owner_acks_what_its_thief_reports_done_without_working_it() {
    let mut owner = owner("handoff-done", Duration::from_secs(5)).await;
    let h = owner.steal_one().await;
    let stolen = ShardTask::from_bytes(&h.task).unwrap();
    assert_eq!(owner.report(&h, "working", "").await, tonic::Code::Ok);
    assert_eq!(owner.report(&h, "done", "").await, tonic::Code::Ok);
    // The hand-off is over: a late word about it is refused.
    assert_eq!(owner.report(&h, "working", "").await, tonic::Code::NotFound);
    let (q, job, model) = owner.until_empty().await;
    assert_eq!(q.depth().await.unwrap().pending(), 0, "both shards acked");
    assert!(q.dead_letters(10).await.unwrap().is_empty());
    // The owner wrote only its own shard: the stolen one was the thief's to write.
    assert!(!exists(&job.out, &JobLayout::part_key(&stolen.shard)).await);
    assert_eq!(
        model.runs.load(Ordering::Relaxed),
        8,
        "only the owner's own eight items ran"
    );
}

#[tokio::test]
async fn an_owner_releases_what_its_thief_reports_failed_with_the_reason() {
    let mut owner = owner("handoff-failed", Duration::from_secs(5)).await;
    let h = owner.steal_one().await;
    assert_eq!(
        owner.report(&h, "failed", "the thief's disk is full").await,
        tonic::Code::Ok
    );
    let (q, _, _) = owner.until_empty().await;
    // max_attempts = 1: the failed attempt dead-letters the shard, with the thief's reason.
    let dead = q.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert!(
        dead[0].reason.contains("disk is full"),
        "{}",
        dead[0].reason
    );
}

#[tokio::test]
async fn an_owner_takes_back_a_shard_whose_thief_went_silent_and_works_it() {
    let mut owner = owner("handoff-silent", Duration::from_millis(300)).await;
    let h = owner.steal_one().await;
    let stolen = ShardTask::from_bytes(&h.task).unwrap();
    // Silence past the hand-off timeout: the owner takes the shard back.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(owner.report(&h, "done", "").await, tonic::Code::NotFound);
    let (q, job, model) = owner.until_empty().await;
    assert_eq!(q.depth().await.unwrap().pending(), 0);
    assert!(
        exists(&job.out, &JobLayout::done_key(&stolen.shard)).await,
        "the owner did it"
    );
    assert_eq!(
        model.runs.load(Ordering::Relaxed),
        16,
        "both shards ran on the owner"
    );
}

/// An owner played by the test: records every report a thief sends, and answers `NOT_FOUND` to
/// them once told to (it took the shard back).
#[derive(Clone, Default)]
struct TestOwner {
    reports: Arc<Mutex<Vec<ReportRequest>>>,
    took_back: Arc<std::sync::atomic::AtomicBool>,
}

#[async_trait]
impl Peer for TestOwner {
    async fn steal(
        &self,
        _: tonic::Request<StealRequest>,
    ) -> Result<tonic::Response<StealReply>, tonic::Status> {
        Ok(tonic::Response::new(StealReply::default()))
    }
    async fn offer(
        &self,
        _: tonic::Request<OfferRequest>,
    ) -> Result<tonic::Response<OfferReply>, tonic::Status> {
        Ok(tonic::Response::new(OfferReply::default()))
    }
    async fn report(
        &self,
        req: tonic::Request<ReportRequest>,
    ) -> Result<tonic::Response<ReportReply>, tonic::Status> {
        self.reports.lock().unwrap().push(req.into_inner());
        if self.took_back.load(Ordering::Relaxed) {
            return Err(tonic::Status::not_found("taken back"));
        }
        Ok(tonic::Response::new(ReportReply {}))
    }
}

/// A thief worker with its peer service, and a test owner that offers it one shard.
async fn thief(
    name: &str,
) -> (
    TestOwner,
    Job,
    FakeModel,
    Control,
    tokio::task::JoinHandle<Result<(), QueueError>>,
    PeerClient<tonic::transport::Channel>,
    String,
) {
    let (job, model) = slow_job(name).await;
    let test_owner = TestOwner::default();
    let owner_listener =
        tonic::transport::server::TcpIncoming::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let owner_addr = format!("http://{}", owner_listener.local_addr().unwrap());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(PeerServer::new(test_owner.clone()))
            .serve_with_incoming(owner_listener),
    );
    let listener =
        tonic::transport::server::TcpIncoming::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let advertise = format!("http://{}", listener.local_addr().unwrap());
    let stealing = Stealing {
        coordinator: spotbatch_net::connect("http://127.0.0.1:9", None, None).unwrap(),
        worker_id: format!("{name}-thief"),
        advertise: advertise.clone(),
        incoming: listener,
        token: None,
        handoff_timeout: Duration::from_millis(400),
        server: spotbatch_worker::steal::peer_server(None).unwrap(),
        ca: None,
    };
    let control = Control::default();
    let mut o = opts("thief");
    o.exit_when_empty = false;
    // The thief's own queue is empty: all it works is what it is offered.
    let q = MemoryQueue::new(name, QueueConfig::default());
    let worker = tokio::spawn(run_worker(
        Arc::new(q),
        jobs(&job.manifest, &model),
        o,
        Arc::new(Progress::default()),
        control.clone(),
        Some(stealing),
    ));
    let mut peer = None;
    for _ in 0..100 {
        if let Ok(c) = PeerClient::connect(advertise.clone()).await {
            peer = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (
        test_owner,
        job,
        model,
        control,
        worker,
        peer.expect("thief answers"),
        owner_addr,
    )
}

async fn offer(
    peer: &mut PeerClient<tonic::transport::Channel>,
    owner: &str,
    task: &ShardTask,
) -> Vec<String> {
    peer.offer(OfferRequest {
        owner_id: "test-owner".into(),
        owner_address: owner.into(),
        shards: vec![HandedShard {
            handoff_id: "h-1".into(),
            task: task.to_bytes(),
            delivery_count: 1,
        }],
        handoff_timeout_ms: 1000,
    })
    .await
    .unwrap()
    .into_inner()
    .accepted
}

#[tokio::test]
async fn a_thief_works_an_offered_shard_keeps_the_hand_off_alive_and_reports_done() {
    let (owner, job, _model, control, worker, mut peer, owner_addr) = thief("thief-done").await;
    assert_eq!(
        offer(&mut peer, &owner_addr, &job.shards[0]).await,
        vec!["h-1"]
    );
    let mut last = None;
    for _ in 0..300 {
        last = owner
            .reports
            .lock()
            .unwrap()
            .last()
            .map(|r| r.state.clone());
        if last.as_deref() == Some("done") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    control.stop_now();
    worker.await.unwrap().unwrap();
    assert_eq!(last.as_deref(), Some("done"));
    let reports = owner.reports.lock().unwrap().clone();
    assert!(
        reports.iter().any(|r| r.state == "working"),
        "working reports while the shard ran (its eight batches take 800 ms, a report is due every 250 ms)"
    );
    let done = reports.last().unwrap();
    assert_eq!((done.items, done.errors), (8, 0));
    assert!(exists(&job.out, &JobLayout::done_key(&job.shards[0].shard)).await);
}

#[tokio::test]
async fn a_thief_whose_owner_took_the_shard_back_stops_and_writes_nothing() {
    let (owner, job, model, control, worker, mut peer, owner_addr) = thief("thief-back").await;
    owner.took_back.store(true, Ordering::Relaxed);
    assert_eq!(
        offer(&mut peer, &owner_addr, &job.shards[0]).await,
        vec!["h-1"]
    );
    // The first working report (after 250 ms) hears NOT_FOUND: the thief stops.
    tokio::time::sleep(Duration::from_millis(800)).await;
    control.stop_now();
    worker.await.unwrap().unwrap();
    let s = &job.shards[0].shard;
    assert!(
        !exists(&job.out, &JobLayout::done_key(s)).await,
        "no done marker"
    );
    assert!(!exists(&job.out, &JobLayout::part_key(s)).await, "no part");
    assert!(
        model.runs.load(Ordering::Relaxed) < 8,
        "stopped before the end"
    );
    let states: Vec<String> = owner
        .reports
        .lock()
        .unwrap()
        .iter()
        .map(|r| r.state.clone())
        .collect();
    assert!(!states.iter().any(|s| s == "done"), "{states:?}");
}

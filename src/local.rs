//! The commands that work on one machine from a manifest file: `validate`, `run` (the
//! embedded queue and a worker in this process) and `enqueue`.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use spotbatch_plan::{enqueue_plan, Plan};
use spotbatch_proto::{Manifest, ManifestError};
use spotbatch_queue::QueueConfig;
use spotbatch_store::JobLayout;
use spotbatch_worker::notice::{self};
use spotbatch_worker::validate::Checks;
use spotbatch_worker::{drain, Control, Progress};
use tokio_util::sync::CancellationToken;

use crate::args::*;
use crate::say::count;
use crate::{check_device, exit, spawn_progress};

/// How long `run`'s first Ctrl-C (or SIGTERM) gives the shards in work to finish their batches
/// and keep their rows as partial results, as a worker's SIGTERM does.
pub(crate) const RUN_INTERRUPT_GRACE: Duration = Duration::from_secs(5);

/// Loads a manifest or prints its problems, one per line.
pub(crate) fn load_manifest(path: &Path) -> Result<Manifest, ExitCode> {
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
pub(crate) async fn check_job(
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
pub(crate) fn warn_skipped(path: &Path, m: &Manifest, plan: &Plan) {
    let field = if m.list.is_some() {
        "input.list"
    } else {
        "input.uri"
    };
    for s in &plan.skipped {
        say!(
            "{}: warning: {field}: {} is not an input (left out): {}",
            path.display(),
            crate::say::key(&s.key),
            s.reason
        );
    }
}

pub(crate) async fn validate(path: &Path) -> anyhow::Result<ExitCode> {
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

/// What `validate` says of `[job]` and `queue.shard_size = "auto"`.
pub(crate) fn fleet_notes(m: &Manifest, plan: Option<&Plan>) -> Vec<String> {
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

pub(crate) async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
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
        Some(crate::timings::Timings::install()?)
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
        crate::say::rate(rate),
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
                .map(|(a, b)| format!("{}..{}", crate::say::key(a), crate::say::key(b)))
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

pub(crate) async fn enqueue(path: &Path, queue: Option<String>) -> anyhow::Result<ExitCode> {
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

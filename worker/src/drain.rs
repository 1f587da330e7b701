//! The drain policy: which notice sources a worker watches, and what their notices do to its
//! [`Control`]. Signals are always watched (this is the one place that handles them):
//!
//! - an interruption notice (AWS `instance-action`, GCP `preempted`, Azure `Preempt`, or the first
//!   SIGTERM/SIGINT of a worker) drains by its deadline; an AWS rebalance recommendation stops
//!   leasing or drains, by policy;
//! - a signal while draining (or the first signal where signals stop at once, as for `run`) stops
//!   at once: every lease released, nothing more written;
//! - a signal after that asks the process to exit now.
//!
//! What happens is reported to the caller, which says it to the user.

use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::control::Control;
use crate::notice::{self, AwsSource, AzureSource, GcpSource, Notice, NoticeAction, NoticeSource};

/// Which cloud's metadata service to watch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cloud {
    /// None: signals only.
    None,
    /// Probe AWS, GCP and Azure and watch the one that answers.
    Auto,
    /// AWS IMDSv2.
    Aws,
    /// GCP's metadata server.
    Gcp,
    /// Azure Scheduled Events.
    Azure,
}

/// Where notices come from, and their deadlines.
#[derive(Debug, Clone)]
pub struct NoticeSettings {
    /// The cloud metadata service to watch.
    pub cloud: Cloud,
    /// Deadline after SIGTERM/SIGINT.
    pub signal_grace: Duration,
    /// Deadline after a GCP preemption notice.
    pub gcp_grace: Duration,
    /// What an AWS rebalance recommendation does (`None`: nothing).
    pub rebalance: Option<NoticeAction>,
    /// How often metadata services are polled.
    pub poll: Duration,
    /// AWS metadata base URL.
    pub aws_url: String,
    /// GCP metadata base URL.
    pub gcp_url: String,
    /// Azure metadata base URL.
    pub azure_url: String,
    /// This VM's name in Azure Scheduled Events (default: asked from the metadata service).
    pub azure_vm_name: Option<String>,
}

/// The sources a worker watches: signals always, and the cloud's metadata service.
pub async fn sources(s: &NoticeSettings) -> Vec<Box<dyn NoticeSource>> {
    let mut sources: Vec<Box<dyn NoticeSource>> =
        vec![Box::new(notice::SignalSource::new(s.signal_grace))];
    let poll = s.poll.max(Duration::from_millis(50));
    let cloud = match s.cloud {
        Cloud::None => None,
        Cloud::Aws => Some("aws"),
        Cloud::Gcp => Some("gcp"),
        Cloud::Azure => Some("azure"),
        Cloud::Auto => {
            let found = notice::probe(&s.aws_url, &s.gcp_url, &s.azure_url).await;
            match found {
                Some(c) => info!(
                    cloud = c,
                    "metadata service found; watching it for preemption notices"
                ),
                None => warn!(
                    "--notices auto: no cloud metadata service answered; watching signals only"
                ),
            }
            found
        }
    };
    match cloud {
        Some("aws") => sources.push(Box::new(AwsSource::new(&s.aws_url, poll, s.rebalance))),
        Some("gcp") => sources.push(Box::new(GcpSource::new(&s.gcp_url, s.gcp_grace))),
        Some("azure") => sources.push(Box::new(AzureSource::new(
            &s.azure_url,
            poll,
            s.azure_vm_name.clone(),
        ))),
        _ => {}
    }
    sources
}

/// What the first signal does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FirstSignal {
    /// Drain by the signal's deadline (a worker: SIGTERM from Kubernetes).
    Drain,
    /// Stop at once (`run` on a terminal: Ctrl-C).
    Stop,
}

/// What a notice did, for the caller to tell the user.
#[derive(Debug)]
pub enum DrainEvent<'a> {
    /// No new work will be leased.
    StopLeasing(&'a Notice),
    /// Draining, with this long left before the deadline.
    Draining(&'a Notice, Duration),
    /// Stopping at once: leases released, nothing more written.
    Stopping(&'a Notice),
    /// Asked again while stopping: the process should exit now.
    Exit(&'a Notice),
}

/// Watches `sources` until `finished`, driving `control` by the rules above and reporting each
/// step. Returns the notice that started a drain and its source (to acknowledge the event once
/// drained: Azure starts it early).
pub async fn watch(
    mut sources: Vec<Box<dyn NoticeSource>>,
    control: Control,
    first_signal: FirstSignal,
    finished: CancellationToken,
    mut report: impl FnMut(DrainEvent<'_>) + Send,
) -> Option<(Notice, Box<dyn NoticeSource>)> {
    let mut drained_by: Option<(Notice, Box<dyn NoticeSource>)> = None;
    loop {
        let Some((n, i)) = notice::watch(&mut sources, &finished).await else {
            break;
        };
        let signal = n.source == "signal";
        if control.stop.is_cancelled() && signal {
            report(DrainEvent::Exit(&n));
            continue;
        }
        if signal && (control.is_draining() || first_signal == FirstSignal::Stop) {
            // The caller tells the user (the report below): logged once, at info.
            info!(kind = %n.kind, "signal: stopping now");
            control.stop_now();
            report(DrainEvent::Stopping(&n));
            continue;
        }
        let left = n
            .deadline
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        info!(source = n.source, kind = %n.kind, deadline_in_ms = left.as_millis() as u64, "preemption notice");
        match n.action {
            NoticeAction::StopLeasing => {
                control.stop_leasing.cancel();
                report(DrainEvent::StopLeasing(&n));
            }
            NoticeAction::Drain => {
                control.drain(n.deadline);
                report(DrainEvent::Draining(&n, left));
                // From here on only signals matter (a metadata service keeps saying the same).
                let source = sources.swap_remove(i);
                sources.retain(|s| s.name() == "signal");
                if sources.is_empty() {
                    sources.push(Box::new(notice::SignalSource::new(Duration::ZERO)));
                }
                if drained_by.is_none() {
                    drained_by = Some((n, source));
                }
            }
        }
    }
    drained_by
}

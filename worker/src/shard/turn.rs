//! A held shard's wait for its turn to feed the pipeline (one shard feeds at a time): a leased
//! shard waits in the prefetch deque, where a peer may take it; a drain, a lost claim or a stop
//! ends the wait.

use std::sync::atomic::Ordering;

use spotbatch_queue::Lease;

use crate::handoff::Given;
use crate::keeper::Keeper;
use crate::node::Node;

/// How a shard's wait for its turn to feed ended.
pub(super) enum Turn<'a> {
    /// Its turn: the feed permit.
    Feed(tokio::sync::SemaphorePermit<'a>),
    /// A peer took it.
    Given(Given),
    /// Drained before its turn (after any offers to peers).
    Drained,
    /// The claim on it was lost.
    Lost(String),
    /// Stopped at once.
    Stopped,
}

/// Waits for the shard's turn to feed the pipeline. A leased shard (`lease` given) waits in the
/// deque, where a peer may take it; a stolen one just waits.
pub(super) async fn wait_turn<'a>(
    node: &'a Node,
    lease: Option<&Lease>,
    keeper: &Keeper,
) -> Turn<'a> {
    let (seq, mut given) = lease
        .map(|l| node.deque.enter(&l.body, l.delivery_count))
        .unzip();
    node.waiting.fetch_add(1, Ordering::Relaxed);
    node.count_unstarted();
    let taken = async {
        match given.as_mut() {
            Some(rx) => rx.await.ok(),
            None => std::future::pending().await,
        }
    };
    tokio::pin!(taken);
    // Whether `taken` has completed (it must not be polled again then).
    let mut settled = false;
    let turn = tokio::select! {
        p = node.feed.acquire() => match p {
            Ok(p) => Turn::Feed(p),
            Err(_) => Turn::Stopped,
        },
        g = &mut taken => {
            settled = true;
            match g {
                Some(g) => Turn::Given(g),
                None => Turn::Stopped,
            }
        }
        _ = node.control.drain.cancelled() => {
            // Offers to idle peers go first; what they do not take is released.
            tokio::select! {
                _ = node.offers_done.cancelled() => Turn::Drained,
                g = &mut taken => {
                    settled = true;
                    match g {
                        Some(g) => Turn::Given(g),
                        None => Turn::Drained,
                    }
                }
            }
        }
        r = keeper.lost() => Turn::Lost(r),
        _ = node.control.stop.cancelled() => Turn::Stopped,
    };
    node.waiting.fetch_sub(1, Ordering::Relaxed);
    let turn = match (turn, seq) {
        (t @ Turn::Given(_), _) | (t, None) => t,
        (t, Some(seq)) if settled || node.deque.leave(seq) => t,
        // Taken by a peer at the same moment: the hand-off (already on its way) wins.
        (t, Some(_)) => match taken.await {
            Some(g) => Turn::Given(g),
            None => t,
        },
    };
    node.count_unstarted();
    turn
}

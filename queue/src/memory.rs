//! An in-process [`LeaseQueue`]: the whole queue in one process's memory, with the same lease
//! rules as the SQLite backend (it runs the same conformance suite). For embedding spotbatch in
//! another program and for tests that run a worker without processes or files: its clock is
//! tokio's, so tests with paused time expire leases exactly when they mean to.
//!
//! Nothing survives the process; a queue is shared by cloning its handle.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::{
    DeadLetter, Depth, Lease, LeaseQueue, LeaseToken, NewItem, QueueConfig, QueueError, Result,
};

#[derive(Debug)]
struct Item {
    id: String,
    body: Vec<u8>,
    visible_at: Instant,
    token: Option<String>,
    delivery_count: u32,
    /// Failed attempts: releases with an error, and expiries.
    failures: u32,
    last_error: Option<String>,
    released_at: Option<SystemTime>,
}

#[derive(Debug, Default)]
struct State {
    next: u64,
    items: BTreeMap<u64, Item>,
    dead: Vec<DeadLetter>,
    tokens: u64,
}

/// An in-memory lease queue; clones share the queue.
#[derive(Debug, Clone)]
pub struct MemoryQueue {
    name: String,
    config: QueueConfig,
    state: Arc<Mutex<State>>,
    visible: Arc<Notify>,
}

/// The wall-clock time of a tokio instant (tokio's clock may be paused in tests).
fn wall(at: Instant) -> SystemTime {
    let now = Instant::now();
    if at >= now {
        SystemTime::now() + (at - now)
    } else {
        SystemTime::now() - (now - at)
    }
}

impl MemoryQueue {
    /// An empty queue named `name`.
    pub fn new(name: &str, config: QueueConfig) -> Self {
        Self {
            name: name.to_string(),
            config,
            state: Arc::default(),
            visible: Arc::new(Notify::new()),
        }
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, State>> {
        self.state.lock().map_err(|_| QueueError::Backend {
            queue: self.name.clone(),
            backend: "memory",
            source: "the queue's lock was poisoned by a panic".into(),
        })
    }

    fn lost(&self, item: &str) -> QueueError {
        QueueError::LeaseLost {
            queue: self.name.clone(),
            item: item.to_string(),
        }
    }

    /// Marks expired leases as failed attempts and dead-letters items out of attempts.
    fn sweep(&self, s: &mut State, now: Instant) {
        let max = self.config.max_attempts;
        let mut dead = Vec::new();
        for (seq, it) in s.items.iter_mut() {
            if it.token.is_some() && it.visible_at <= now {
                it.token = None;
                it.failures += 1;
                it.released_at = Some(wall(it.visible_at));
                it.last_error = Some(format!(
                    "lease expired without ack or release (delivery {})",
                    it.delivery_count
                ));
            }
            if it.visible_at <= now && it.failures >= max {
                dead.push(*seq);
            }
        }
        for seq in dead {
            if let Some(it) = s.items.remove(&seq) {
                s.dead.push(DeadLetter {
                    id: it.id,
                    body: it.body,
                    reason: it.last_error.unwrap_or_else(|| "failed".into()),
                    delivery_count: it.delivery_count,
                });
            }
        }
    }

    fn try_lease(&self, max: usize, visibility: Duration) -> Result<Vec<Lease>> {
        let mut s = self.lock()?;
        let now = Instant::now();
        self.sweep(&mut s, now);
        let deadline = now + visibility;
        let mut out = Vec::new();
        let mut tokens = s.tokens;
        for it in s.items.values_mut() {
            if out.len() >= max {
                break;
            }
            if it.visible_at > now {
                continue;
            }
            tokens += 1;
            let token = format!("{tokens:016x}-{}", rand_suffix());
            it.token = Some(token.clone());
            it.visible_at = deadline;
            it.delivery_count += 1;
            out.push(Lease {
                id: it.id.clone(),
                body: it.body.clone(),
                token: LeaseToken(token),
                delivery_count: it.delivery_count,
                deadline: wall(deadline),
                released_at: it.released_at,
            });
        }
        s.tokens = tokens;
        Ok(out)
    }

    /// Applies `f` to the item held with `lease`'s token, if it is still held.
    fn with_held<T>(
        &self,
        lease: &Lease,
        f: impl FnOnce(&mut State, u64) -> T,
    ) -> Result<Option<T>> {
        let mut s = self.lock()?;
        let seq = s
            .items
            .iter()
            .find(|(_, it)| it.id == lease.id && it.token.as_deref() == Some(&lease.token.0))
            .map(|(seq, _)| *seq);
        Ok(seq.map(|seq| f(&mut s, seq)))
    }
}

/// A little randomness in tokens, so tokens of two queues never match.
fn rand_suffix() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0);
    h.finish() as u32
}

#[async_trait]
impl LeaseQueue for MemoryQueue {
    fn name(&self) -> &str {
        &self.name
    }

    async fn enqueue(&self, items: &[NewItem]) -> Result<()> {
        {
            let mut s = self.lock()?;
            let now = Instant::now();
            for item in items {
                // An id already waiting or leased is ignored; one in the dead-letter queue is
                // driven again.
                if s.items.values().any(|it| it.id == item.id) {
                    continue;
                }
                s.dead.retain(|d| d.id != item.id);
                s.next += 1;
                let seq = s.next;
                s.items.insert(
                    seq,
                    Item {
                        id: item.id.clone(),
                        body: item.body.clone(),
                        visible_at: now,
                        token: None,
                        delivery_count: 0,
                        failures: 0,
                        last_error: None,
                        released_at: None,
                    },
                );
            }
        }
        self.visible.notify_waiters();
        Ok(())
    }

    async fn lease(&self, max: usize, visibility: Duration, wait: Duration) -> Result<Vec<Lease>> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let give_up = Instant::now() + wait;
        loop {
            // Register interest before looking, so a notify between the look and the wait is kept.
            let notified = self.visible.notified();
            let leases = self.try_lease(max, visibility)?;
            let now = Instant::now();
            if !leases.is_empty() || now >= give_up {
                return Ok(leases);
            }
            // Wake for a release or enqueue, the next expiry, or the end of the wait.
            let next_expiry = {
                let s = self.lock()?;
                s.items.values().map(|it| it.visible_at).min()
            };
            let until = next_expiry
                .filter(|t| *t > now)
                .map_or(give_up, |t| t.min(give_up));
            let _ = tokio::time::timeout_at(until, notified).await;
        }
    }

    async fn extend(&self, lease: &Lease, visibility: Duration) -> Result<SystemTime> {
        let now = Instant::now();
        let extended = self.with_held(lease, |s, seq| {
            let it = s.items.get_mut(&seq)?;
            if it.visible_at <= now {
                return None;
            }
            it.visible_at = now + visibility;
            Some(wall(it.visible_at))
        })?;
        extended.flatten().ok_or_else(|| self.lost(&lease.id))
    }

    async fn ack(&self, leases: &[Lease]) -> Result<()> {
        for lease in leases {
            self.with_held(lease, |s, seq| s.items.remove(&seq))?;
        }
        Ok(())
    }

    async fn release(&self, leases: &[Lease], error: Option<&str>) -> Result<()> {
        let error = error.map(|e| e.split_whitespace().collect::<Vec<_>>().join(" "));
        for lease in leases {
            self.with_held(lease, |s, seq| {
                if let Some(it) = s.items.get_mut(&seq) {
                    it.token = None;
                    it.visible_at = Instant::now();
                    it.released_at = Some(SystemTime::now());
                    if let Some(e) = &error {
                        it.failures += 1;
                        it.last_error = Some(e.clone());
                    }
                }
            })?;
        }
        self.visible.notify_waiters();
        Ok(())
    }

    async fn dead_letter(&self, lease: &Lease, reason: &str) -> Result<()> {
        let reason = reason.split_whitespace().collect::<Vec<_>>().join(" ");
        let moved = self.with_held(lease, |s, seq| {
            if let Some(it) = s.items.remove(&seq) {
                s.dead.retain(|d| d.id != it.id);
                s.dead.push(DeadLetter {
                    id: it.id,
                    body: it.body,
                    reason,
                    delivery_count: it.delivery_count,
                });
            }
        })?;
        moved.ok_or_else(|| self.lost(&lease.id))
    }

    async fn depth(&self) -> Result<Depth> {
        let mut s = self.lock()?;
        let now = Instant::now();
        self.sweep(&mut s, now);
        let visible = s.items.values().filter(|it| it.visible_at <= now).count() as u64;
        Ok(Depth {
            visible,
            in_flight: s.items.len() as u64 - visible,
            dead: s.dead.len() as u64,
        })
    }

    async fn dead_letters(&self, max: usize) -> Result<Vec<DeadLetter>> {
        Ok(self.lock()?.dead.iter().take(max).cloned().collect())
    }
}

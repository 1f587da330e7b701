//! The embedded lease queue: one SQLite file (WAL), leases as rows with a `visible_at` time.
//!
//! Several named queues can share one file (`sqlite://PATH?queue=NAME`); several processes on one
//! machine can share one file (SQLite's locking serialises the short write transactions).
//!
//! Beyond the [`LeaseQueue`] contract this backend counts *failures* separately from deliveries:
//! a lease that expires, a release with an error and a reclaim after a crash count towards
//! `max_attempts`; a release without an error (a clean shutdown handing work back) does not. So a
//! shard that is preempted many times is never dead-lettered for it, while one that keeps crashing
//! its worker is.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use tokio::sync::Notify;

use crate::{
    from_unix_millis, unix_millis, DeadLetter, Depth, Lease, LeaseQueue, LeaseToken, NewItem,
    QueueConfig, QueueError, Result,
};

const BACKEND: &str = "sqlite";
/// How often a waiting `lease` looks again for items made visible by other processes.
const POLL: Duration = Duration::from_millis(50);

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS items (
    queue          TEXT    NOT NULL,
    id             TEXT    NOT NULL,
    body           BLOB    NOT NULL,
    visible_at     INTEGER NOT NULL,
    delivery_count INTEGER NOT NULL DEFAULT 0,
    failures       INTEGER NOT NULL DEFAULT 0,
    token          TEXT,
    last_error     TEXT,
    released_at    INTEGER,
    PRIMARY KEY (queue, id)
);
CREATE INDEX IF NOT EXISTS items_by_visibility ON items (queue, visible_at);
CREATE TABLE IF NOT EXISTS dead_letters (
    queue          TEXT    NOT NULL,
    id             TEXT    NOT NULL,
    body           BLOB    NOT NULL,
    reason         TEXT    NOT NULL,
    delivery_count INTEGER NOT NULL,
    dead_at        INTEGER NOT NULL,
    PRIMARY KEY (queue, id)
);
";

/// A [`LeaseQueue`] in a SQLite file.
#[derive(Debug, Clone)]
pub struct SqliteQueue {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    queue: String,
    config: QueueConfig,
    conn: Mutex<Connection>,
    /// Wakes `lease` waiters in this process when items become visible.
    visible: Notify,
}

impl SqliteQueue {
    /// Opens `sqlite://PATH[?queue=NAME]` (the queue is `default` when not named).
    pub async fn open_uri(uri: &str, config: QueueConfig) -> Result<Self> {
        let (path, queue) = parse_uri(uri)?;
        Self::open(&path, &queue, config).await
    }

    /// Opens (creating if needed) queue `queue` in the SQLite file at `path`.
    pub async fn open(path: &Path, queue: &str, config: QueueConfig) -> Result<Self> {
        let path = path.to_path_buf();
        let queue = queue.to_string();
        let (path_c, queue_c) = (path.clone(), queue.clone());
        let conn = tokio::task::spawn_blocking(move || -> Result<Connection> {
            let err = |e: rusqlite::Error| backend_err(&queue_c, e);
            if let Some(parent) = path_c.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent).map_err(|e| QueueError::Backend {
                    queue: queue_c.clone(),
                    backend: BACKEND,
                    source: format!("cannot create folder {}: {e}", parent.display()).into(),
                })?;
            }
            let conn = Connection::open(&path_c).map_err(|e| QueueError::Backend {
                queue: queue_c.clone(),
                backend: BACKEND,
                source: format!("cannot open {}: {e}", path_c.display()).into(),
            })?;
            conn.busy_timeout(Duration::from_secs(30)).map_err(err)?;
            // Switching a new file to WAL takes an exclusive lock and SQLite does not always wait
            // for it through the busy handler, so processes opening the file at the same moment
            // retry here for a while.
            let give_up = Instant::now() + Duration::from_secs(30);
            loop {
                let setup = conn
                    .pragma_update(None, "journal_mode", "WAL")
                    .and_then(|()| conn.pragma_update(None, "synchronous", "NORMAL"))
                    .and_then(|()| conn.execute_batch(SCHEMA));
                match setup {
                    Ok(()) => {
                        // Files made before `released_at` existed get the column.
                        let has = conn
                            .prepare("SELECT released_at FROM items LIMIT 0")
                            .is_ok();
                        if !has {
                            conn.execute_batch("ALTER TABLE items ADD COLUMN released_at INTEGER")
                                .map_err(err)?;
                        }
                        break;
                    }
                    Err(rusqlite::Error::SqliteFailure(e, _))
                        if e.code == rusqlite::ErrorCode::DatabaseBusy
                            && Instant::now() < give_up =>
                    {
                        std::thread::sleep(Duration::from_millis(20 + rand::random::<u64>() % 80));
                    }
                    Err(e) => return Err(err(e)),
                }
            }
            Ok(conn)
        })
        .await
        .map_err(|e| backend_err(&queue, e))??;
        Ok(Self {
            inner: Arc::new(Inner {
                path,
                queue,
                config,
                conn: Mutex::new(conn),
                visible: Notify::new(),
            }),
        })
    }

    /// The SQLite file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Makes every leased item visible again at once, counting it as a failed attempt. For a
    /// caller that knows every holder is dead (`spotbatch run` holds an exclusive lock on the
    /// file, so leases left in it belong to a process that was killed). Returns how many.
    pub async fn reclaim_all_leases(&self) -> Result<u64> {
        let n = self
            .with_conn(|conn, q| {
                let now = unix_millis(SystemTime::now());
                let n = conn.execute(
                    "UPDATE items SET visible_at = ?2, released_at = ?2, token = NULL, failures = failures + 1,
                         last_error = 'worker died holding the lease (delivery ' || delivery_count || ')'
                     WHERE queue = ?1 AND token IS NOT NULL",
                    params![q, now],
                )?;
                Ok(n as u64)
            })
            .await?;
        if n > 0 {
            self.inner.visible.notify_waiters();
        }
        Ok(n)
    }

    async fn with_conn<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection, &str) -> rusqlite::Result<T> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || {
            let mut conn = inner
                .conn
                .lock()
                .map_err(|_| backend_err(&inner.queue, "connection mutex poisoned"))?;
            f(&mut conn, &inner.queue).map_err(|e| backend_err(&inner.queue, e))
        })
        .await
        .map_err(|e| backend_err(&self.inner.queue, e))?
    }

    /// One attempt at leasing, in one write transaction.
    async fn try_lease(&self, max: usize, visibility: Duration) -> Result<Vec<Lease>> {
        let max_attempts = self.inner.config.max_attempts;
        self.with_conn(move |conn, q| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let now = SystemTime::now();
            let now_ms = unix_millis(now);
            sweep(&tx, q, now_ms, max_attempts)?;
            let deadline = now + visibility;
            let deadline_ms = unix_millis(deadline);
            let mut leases = Vec::new();
            {
                let mut stmt = tx.prepare_cached(
                    "UPDATE items SET token = lower(hex(randomblob(16))), visible_at = ?3,
                         delivery_count = delivery_count + 1
                     WHERE rowid IN (SELECT rowid FROM items WHERE queue = ?1 AND visible_at <= ?2
                                     ORDER BY rowid LIMIT ?4)
                     RETURNING id, body, token, delivery_count, released_at",
                )?;
                let rows = stmt.query_map(params![q, now_ms, deadline_ms, max as i64], |r| {
                    Ok(Lease {
                        id: r.get(0)?,
                        body: r.get(1)?,
                        token: LeaseToken(r.get(2)?),
                        delivery_count: r.get(3)?,
                        deadline,
                        released_at: r.get::<_, Option<i64>>(4)?.map(from_unix_millis),
                    })
                })?;
                for row in rows {
                    leases.push(row?);
                }
            }
            tx.commit()?;
            Ok(leases)
        })
        .await
    }
}

/// Marks expired leases as failed attempts and dead-letters items out of attempts.
fn sweep(
    tx: &rusqlite::Transaction<'_>,
    q: &str,
    now_ms: i64,
    max_attempts: u32,
) -> rusqlite::Result<()> {
    tx.execute(
        "UPDATE items SET failures = failures + 1, token = NULL, released_at = visible_at,
             last_error = 'lease expired without ack or release (delivery ' || delivery_count || ')'
         WHERE queue = ?1 AND token IS NOT NULL AND visible_at <= ?2",
        params![q, now_ms],
    )?;
    tx.execute(
        "INSERT OR REPLACE INTO dead_letters (queue, id, body, reason, delivery_count, dead_at)
         SELECT queue, id, body, coalesce(last_error, 'failed'), delivery_count, ?2
         FROM items WHERE queue = ?1 AND visible_at <= ?2 AND failures >= ?3",
        params![q, now_ms, max_attempts],
    )?;
    tx.execute(
        "DELETE FROM items WHERE queue = ?1 AND visible_at <= ?2 AND failures >= ?3",
        params![q, now_ms, max_attempts],
    )?;
    Ok(())
}

#[async_trait]
impl LeaseQueue for SqliteQueue {
    fn name(&self) -> &str {
        &self.inner.queue
    }

    async fn enqueue(&self, items: &[NewItem]) -> Result<()> {
        self.enqueue_counted(items).await.map(|_| ())
    }

    async fn enqueue_counted(&self, items: &[NewItem]) -> Result<Option<usize>> {
        let items = items.to_vec();
        let added = self
            .with_conn(move |conn, q| {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let now = unix_millis(SystemTime::now());
                let mut added = 0;
                {
                    let mut redrive = tx
                        .prepare_cached("DELETE FROM dead_letters WHERE queue = ?1 AND id = ?2")?;
                    let mut insert = tx.prepare_cached(
                        "INSERT OR IGNORE INTO items (queue, id, body, visible_at) VALUES (?1, ?2, ?3, ?4)",
                    )?;
                    for item in &items {
                        redrive.execute(params![q, item.id])?;
                        added += insert.execute(params![q, item.id, item.body, now])?;
                    }
                }
                tx.commit()?;
                Ok(added)
            })
            .await?;
        self.inner.visible.notify_waiters();
        Ok(Some(added))
    }

    async fn lease(&self, max: usize, visibility: Duration, wait: Duration) -> Result<Vec<Lease>> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let give_up = Instant::now() + wait;
        loop {
            // Register interest before looking, so a notify between the look and the wait is kept.
            let notified = self.inner.visible.notified();
            let leases = self.try_lease(max, visibility).await?;
            let now = Instant::now();
            if !leases.is_empty() || now >= give_up {
                return Ok(leases);
            }
            let nap = POLL.min(give_up - now);
            let _ = tokio::time::timeout(nap, notified).await;
        }
    }

    async fn extend(&self, lease: &Lease, visibility: Duration) -> Result<SystemTime> {
        let (id, token) = (lease.id.clone(), lease.token.0.clone());
        let updated = self
            .with_conn(move |conn, q| {
                let now = SystemTime::now();
                let deadline = now + visibility;
                let n = conn.execute(
                    "UPDATE items SET visible_at = ?4
                     WHERE queue = ?1 AND id = ?2 AND token = ?3 AND visible_at > ?5",
                    params![q, id, token, unix_millis(deadline), unix_millis(now)],
                )?;
                Ok((n == 1).then_some(deadline))
            })
            .await?;
        updated.ok_or_else(|| QueueError::LeaseLost {
            queue: self.inner.queue.clone(),
            item: lease.id.clone(),
        })
    }

    async fn ack(&self, leases: &[Lease]) -> Result<()> {
        let keys: Vec<(String, String)> = leases
            .iter()
            .map(|l| (l.id.clone(), l.token.0.clone()))
            .collect();
        self.with_conn(move |conn, q| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            {
                let mut del = tx.prepare_cached(
                    "DELETE FROM items WHERE queue = ?1 AND id = ?2 AND token = ?3",
                )?;
                for (id, token) in &keys {
                    del.execute(params![q, id, token])?;
                }
            }
            tx.commit()
        })
        .await
    }

    async fn release(&self, leases: &[Lease], error: Option<&str>) -> Result<()> {
        let keys: Vec<(String, String)> = leases
            .iter()
            .map(|l| (l.id.clone(), l.token.0.clone()))
            .collect();
        let error = error.map(one_line);
        self.with_conn(move |conn, q| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let now = unix_millis(SystemTime::now());
            {
                let mut upd = tx.prepare_cached(
                    "UPDATE items SET visible_at = ?4, released_at = ?4, token = NULL,
                         failures = failures + (?5 IS NOT NULL), last_error = coalesce(?5, last_error)
                     WHERE queue = ?1 AND id = ?2 AND token = ?3",
                )?;
                for (id, token) in &keys {
                    upd.execute(params![q, id, token, now, error])?;
                }
            }
            tx.commit()
        })
        .await?;
        self.inner.visible.notify_waiters();
        Ok(())
    }

    async fn dead_letter(&self, lease: &Lease, reason: &str) -> Result<()> {
        let (id, token, reason) = (lease.id.clone(), lease.token.0.clone(), one_line(reason));
        let moved = self
            .with_conn(move |conn, q| {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let n = tx.execute(
                    "INSERT OR REPLACE INTO dead_letters (queue, id, body, reason, delivery_count, dead_at)
                     SELECT queue, id, body, ?4, delivery_count, ?5 FROM items
                     WHERE queue = ?1 AND id = ?2 AND token = ?3",
                    params![q, id, token, reason, unix_millis(SystemTime::now())],
                )?;
                tx.execute(
                    "DELETE FROM items WHERE queue = ?1 AND id = ?2 AND token = ?3",
                    params![q, id, token],
                )?;
                tx.commit()?;
                Ok(n == 1)
            })
            .await?;
        if moved {
            Ok(())
        } else {
            Err(QueueError::LeaseLost {
                queue: self.inner.queue.clone(),
                item: lease.id.clone(),
            })
        }
    }

    async fn depth(&self) -> Result<Depth> {
        let max_attempts = self.inner.config.max_attempts;
        self.with_conn(move |conn, q| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let now = unix_millis(SystemTime::now());
            sweep(&tx, q, now, max_attempts)?;
            let (visible, in_flight): (i64, i64) = tx.query_row(
                "SELECT coalesce(sum(visible_at <= ?2), 0), coalesce(sum(visible_at > ?2), 0)
                 FROM items WHERE queue = ?1",
                params![q, now],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            let dead: i64 = tx.query_row(
                "SELECT count(*) FROM dead_letters WHERE queue = ?1",
                params![q],
                |r| r.get(0),
            )?;
            tx.commit()?;
            Ok(Depth {
                visible: visible as u64,
                in_flight: in_flight as u64,
                dead: dead as u64,
            })
        })
        .await
    }

    async fn dead_letters(&self, max: usize) -> Result<Vec<DeadLetter>> {
        self.with_conn(move |conn, q| {
            let mut stmt = conn.prepare_cached(
                "SELECT id, body, reason, delivery_count FROM dead_letters WHERE queue = ?1
                 ORDER BY dead_at, id LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![q, max as i64], |r| {
                Ok(DeadLetter {
                    id: r.get(0)?,
                    body: r.get(1)?,
                    reason: r.get(2)?,
                    delivery_count: r.get(3)?,
                })
            })?;
            rows.collect()
        })
        .await
    }
}

/// Looks up when an item becomes visible again (a test and diagnostics helper).
impl SqliteQueue {
    /// The item's current `visible_at`, or `None` when it is not in the queue.
    pub async fn visible_at(&self, id: &str) -> Result<Option<SystemTime>> {
        let id = id.to_string();
        self.with_conn(move |conn, q| {
            conn.query_row(
                "SELECT visible_at FROM items WHERE queue = ?1 AND id = ?2",
                params![q, id],
                |r| r.get::<_, i64>(0),
            )
            .optional()
            .map(|v| v.map(from_unix_millis))
        })
        .await
    }
}

/// The queues in the SQLite file at `path` that hold items or dead letters, sorted. The file
/// must exist (it is not created).
pub async fn queue_names(path: &Path) -> Result<Vec<String>> {
    let path = path.to_path_buf();
    let name = path.display().to_string();
    let outer = name.clone();
    tokio::task::spawn_blocking(move || -> Result<Vec<String>> {
        let err = |e: rusqlite::Error| backend_err(&name, e);
        let conn = Connection::open_with_flags(
            &path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| QueueError::Backend {
            queue: name.clone(),
            backend: BACKEND,
            source: format!("cannot open {}: {e}", path.display()).into(),
        })?;
        conn.busy_timeout(Duration::from_secs(30)).map_err(err)?;
        let has_tables: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name IN ('items', 'dead_letters')",
                [],
                |r| r.get(0),
            )
            .map_err(err)?;
        if has_tables < 2 {
            return Ok(Vec::new());
        }
        let mut stmt = conn
            .prepare("SELECT queue FROM items UNION SELECT queue FROM dead_letters ORDER BY 1")
            .map_err(err)?;
        let names = stmt
            .query_map([], |r| r.get::<_, String>(0))
            .map_err(err)?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(err)?;
        Ok(names)
    })
    .await
    .map_err(|e| backend_err(&outer, e))?
}

/// Splits `sqlite://PATH[?queue=NAME]`.
pub fn parse_uri(uri: &str) -> Result<(PathBuf, String)> {
    let invalid = |reason: &str| QueueError::InvalidUri {
        uri: uri.to_string(),
        reason: reason.to_string(),
    };
    let rest = uri
        .strip_prefix("sqlite://")
        .ok_or_else(|| invalid("expected sqlite://PATH"))?;
    let (path, query) = match rest.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (rest, None),
    };
    if path.is_empty() {
        return Err(invalid("the path is empty"));
    }
    let mut queue = "default".to_string();
    for pair in query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .filter(|p| !p.is_empty())
    {
        match pair.split_once('=') {
            Some(("queue", name)) if valid_queue_name(name) => queue = name.to_string(),
            Some(("queue", _)) => {
                return Err(invalid("queue= takes 1-80 letters, digits, '-' or '_'"))
            }
            _ => {
                return Err(invalid(&format!(
                    "unknown parameter {pair:?} (known: queue)"
                )))
            }
        }
    }
    Ok((PathBuf::from(path), queue))
}

fn valid_queue_name(name: &str) -> bool {
    (1..=80).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

fn backend_err(queue: &str, e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> QueueError {
    QueueError::Backend {
        queue: queue.to_string(),
        backend: BACKEND,
        source: e.into(),
    }
}

/// Errors are stored and shown as one line.
fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_forms() {
        assert_eq!(
            parse_uri("sqlite://./q.db").unwrap(),
            (PathBuf::from("./q.db"), "default".to_string())
        );
        assert_eq!(
            parse_uri("sqlite:///abs/q.db?queue=jobs-1").unwrap(),
            (PathBuf::from("/abs/q.db"), "jobs-1".to_string())
        );
        assert!(parse_uri("sqlite://").is_err());
        assert!(parse_uri("sqlite://q.db?queue=a/b").is_err());
        assert!(parse_uri("sqlite://q.db?colour=red").is_err());
        assert!(parse_uri("postgres://q").is_err());
    }
}

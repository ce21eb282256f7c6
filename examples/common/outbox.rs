//! The outbox: how an application should publish to a push hub.
//!
//! The app writes its change *and* the update to publish, with an id it
//! chooses, in one local transaction ([`enqueue`]); the request answers
//! once that transaction commits. A background task ([`Outbox::start`])
//! publishes pending updates in order, one at a time, retrying with
//! back-off until Herald answers 200 (published) or 409 (an update with
//! that id is already stored: an earlier try got through, its answer was
//! lost), then deletes them. Herald down for a minute costs the pages a
//! minute of delay, never an update: they resume by `Last-Event-ID` once
//! the outbox has delivered. An update Herald refuses for good (400, 403,
//! 413: a bug in the app, not an outage) is kept with the reason and
//! skipped, so one bad row does not block the rest. See docs/publishing.md.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension};
use tokio::sync::Notify;

use super::{now_ms, Publisher};

/// Add the outbox to an app's database (its `open`), and let the app's
/// connection wait for the publishing task's short writes instead of
/// failing with "database is locked".
pub fn prepare(db: &Connection) -> rusqlite::Result<()> {
    db.busy_timeout(Duration::from_secs(5))?;
    db.execute_batch(SCHEMA)
}

/// The outbox table.
const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS outbox (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  id TEXT NOT NULL UNIQUE, topic TEXT NOT NULL, data TEXT NOT NULL,
  private INTEGER NOT NULL, created_at INTEGER NOT NULL,
  -- set when Herald refused it for good (4xx other than 409): kept, skipped
  failed TEXT);";

/// Retry back-off bounds while Herald cannot be reached.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Add `update` (`data` on `topic`) to the outbox, in the caller's
/// transaction: it is published if and only if the change it describes is
/// committed. Returns the id it will carry (chosen here, so that a retry
/// is recognised by Herald: 409).
pub fn enqueue(
    db: &Connection,
    topic: &str,
    data: &serde_json::Value,
    private: bool,
) -> rusqlite::Result<String> {
    let id = format!("urn:uuid:{}", uuid::Uuid::new_v4());
    enqueue_once(db, &id, topic, data, private)?;
    Ok(id)
}

/// [`enqueue`] with an id the caller chose for an update that must be
/// published at most once, whoever queues it first (the export's outcome:
/// the worker or, if it died, the app). Answers whether this call queued
/// it (false: an update with that id is already queued; Herald would
/// refuse a second one anyway, 409, if it was published already).
pub fn enqueue_once(
    db: &Connection,
    id: &str,
    topic: &str,
    data: &serde_json::Value,
    private: bool,
) -> rusqlite::Result<bool> {
    let n = db.execute(
        "INSERT OR IGNORE INTO outbox (id, topic, data, private, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![id, topic, data.to_string(), private, now_ms()],
    )?;
    Ok(n == 1)
}

/// The publishing task's handle: wake it after a commit that enqueued.
#[derive(Clone)]
pub struct Outbox {
    wake: Arc<Notify>,
}

/// What Herald made of one try.
pub enum Sent {
    /// 200, or 409: stored (now or by an earlier try).
    Stored,
    /// Refused for good (4xx other than 409): the reason.
    Refused(String),
    /// Not reachable, 5xx, 429: try again later.
    Retry(String),
}

/// One pending update, as its store hands it out (oldest first).
pub struct Pending {
    /// The store's own handle on it (a row number, a list position).
    pub seq: i64,
    pub id: String,
    pub topic: String,
    pub data: String,
    pub private: bool,
}

/// Where an app keeps its pending updates: SQLite here ([`SqliteStore`]),
/// Redis in the likes app. The publishing loop is the same for all.
pub trait Store: Send + 'static {
    /// What the log lines call it.
    fn name(&self) -> String;
    /// The oldest pending update not refused for good, if any.
    fn next(&mut self) -> impl Future<Output = Result<Option<Pending>, String>> + Send;
    /// Herald stored it: forget it.
    fn done(&mut self, p: &Pending) -> impl Future<Output = Result<(), String>> + Send;
    /// Herald refused it for good: keep it with the reason, skip it.
    fn refused(
        &mut self,
        p: &Pending,
        why: &str,
    ) -> impl Future<Output = Result<(), String>> + Send;
}

/// The outbox table of an app's SQLite database.
pub struct SqliteStore {
    db: Connection,
    path: PathBuf,
}

impl Store for SqliteStore {
    fn name(&self) -> String {
        self.path.display().to_string()
    }

    async fn next(&mut self) -> Result<Option<Pending>, String> {
        self.db
            .query_row(
                "SELECT seq, id, topic, data, private FROM outbox WHERE failed IS NULL ORDER BY seq LIMIT 1",
                [],
                |r| {
                    Ok(Pending {
                        seq: r.get(0)?,
                        id: r.get(1)?,
                        topic: r.get(2)?,
                        data: r.get(3)?,
                        private: r.get(4)?,
                    })
                },
            )
            .optional()
            .map_err(|e| e.to_string())
    }

    async fn done(&mut self, p: &Pending) -> Result<(), String> {
        self.db
            .execute("DELETE FROM outbox WHERE seq = ?1", params![p.seq])
            .map(drop)
            .map_err(|e| e.to_string())
    }

    async fn refused(&mut self, p: &Pending, why: &str) -> Result<(), String> {
        self.db
            .execute(
                "UPDATE outbox SET failed = ?2 WHERE seq = ?1",
                params![p.seq, why],
            )
            .map(drop)
            .map_err(|e| e.to_string())
    }
}

impl Outbox {
    /// Start publishing what the database at `path` holds in its outbox
    /// (what an earlier run left, then what [`enqueue`] adds).
    pub fn start(path: &Path, publisher: Publisher) -> rusqlite::Result<Outbox> {
        let db = Connection::open(path)?;
        db.busy_timeout(Duration::from_secs(5))?;
        let path = path.to_path_buf();
        Ok(Outbox::start_with(SqliteStore { db, path }, publisher))
    }

    /// Start publishing what `store` holds.
    pub fn start_with(store: impl Store, publisher: Publisher) -> Outbox {
        let wake = Arc::new(Notify::new());
        tokio::spawn(run(store, publisher, wake.clone()));
        Outbox { wake }
    }

    /// Something was enqueued and committed.
    pub fn wake(&self) {
        self.wake.notify_one();
    }
}

async fn run(mut store: impl Store, publisher: Publisher, wake: Arc<Notify>) {
    let mut backoff = BACKOFF_MIN;
    let mut failing = false;
    loop {
        let pending = match store.next().await {
            Ok(pending) => pending,
            Err(e) => {
                eprintln!("outbox: cannot read {}: {e}", store.name());
                tokio::time::sleep(BACKOFF_MAX).await;
                continue;
            }
        };
        let Some(p) = pending else {
            // Nothing pending: wait for a commit (or look again in a while,
            // in case a wake-up came between the read and the wait).
            let _ = tokio::time::timeout(Duration::from_secs(1), wake.notified()).await;
            continue;
        };
        let done = match publisher.send(&p.topic, &p.data, p.private, &p.id).await {
            Sent::Stored => store.done(&p).await,
            Sent::Refused(why) => {
                eprintln!(
                    "outbox: Herald refused update {} on {} for good: {why}",
                    p.id, p.topic
                );
                store.refused(&p, &why).await
            }
            Sent::Retry(why) => {
                if !failing {
                    eprintln!("outbox: cannot publish yet ({why}); retrying until Herald takes it");
                    failing = true;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        if failing {
            eprintln!("outbox: publishing again");
            failing = false;
        }
        backoff = BACKOFF_MIN;
        if let Err(e) = done {
            eprintln!("outbox: cannot update {}: {e}", store.name());
            tokio::time::sleep(BACKOFF_MAX).await;
        }
    }
}

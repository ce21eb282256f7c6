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
    db.execute(
        "INSERT INTO outbox (id, topic, data, private, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![id, topic, data.to_string(), private, now_ms()],
    )?;
    Ok(id)
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

impl Outbox {
    /// Start publishing what the database at `path` holds in its outbox
    /// (what an earlier run left, then what [`enqueue`] adds).
    pub fn start(path: &Path, publisher: Publisher) -> rusqlite::Result<Outbox> {
        let db = Connection::open(path)?;
        db.busy_timeout(Duration::from_secs(5))?;
        let wake = Arc::new(Notify::new());
        let outbox = Outbox { wake: wake.clone() };
        let path = path.to_path_buf();
        tokio::spawn(async move { run(db, path, publisher, wake).await });
        Ok(outbox)
    }

    /// Something was enqueued and committed.
    pub fn wake(&self) {
        self.wake.notify_one();
    }
}

type Row = (i64, String, String, String, bool);

fn next(db: &Connection) -> rusqlite::Result<Option<Row>> {
    db.query_row(
        "SELECT seq, id, topic, data, private FROM outbox WHERE failed IS NULL ORDER BY seq LIMIT 1",
        [],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
    )
    .optional()
}

async fn run(db: Connection, path: PathBuf, publisher: Publisher, wake: Arc<Notify>) {
    let mut backoff = BACKOFF_MIN;
    let mut failing = false;
    loop {
        let row = match next(&db) {
            Ok(row) => row,
            Err(e) => {
                eprintln!("outbox: cannot read {}: {e}", path.display());
                tokio::time::sleep(BACKOFF_MAX).await;
                continue;
            }
        };
        let Some((seq, id, topic, data, private)) = row else {
            // Nothing pending: wait for a commit (or look again in a while,
            // in case a wake-up came between the read and the wait).
            let _ = tokio::time::timeout(Duration::from_secs(1), wake.notified()).await;
            continue;
        };
        let done = match publisher.send(&topic, &data, private, &id).await {
            Sent::Stored => db.execute("DELETE FROM outbox WHERE seq = ?1", params![seq]),
            Sent::Refused(why) => {
                eprintln!("outbox: Herald refused update {id} on {topic} for good: {why}");
                db.execute(
                    "UPDATE outbox SET failed = ?2 WHERE seq = ?1",
                    params![seq, why],
                )
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
            eprintln!("outbox: cannot update {}: {e}", path.display());
            tokio::time::sleep(BACKOFF_MAX).await;
        }
    }
}

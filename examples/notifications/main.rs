//! Scenario 1: a per-user notification center on Herald.
//!
//! Log in with a name (a signed cookie); send a notification to one user or
//! a broadcast to everyone; each user's inbox (SQLite) has an unread badge,
//! "mark read" and "mark all read", and every tab of the user sees each
//! change at once.
//!
//! Herald integration, all of it:
//! - personal notifications and read-state changes are *private* updates on
//!   the user's topic `https://example.app/users/{name}/notifications`;
//!   broadcasts are public updates on `https://example.app/broadcasts`;
//! - the app publishes with a publisher JWT it mints for those topics;
//! - the page mints no token: it subscribes with herald.js (imported from
//!   the hub, another origin: Herald runs with `--cors-origins` listing
//!   this app) sending its cookies, and Herald, run with `--auth-url
//!   <this app>/api/herald-session`, asks this app who the cookie belongs
//!   to: `GET /api/herald-session` answers the user's topic (private
//!   updates included) and name, or 401 without a session. The app's own
//!   session is the only credential (docs/deploy.md, "The app's own
//!   sessions").
//!
//! Run: `bash examples/run.sh` (or `cargo run --release --example
//! notifications` with `HERALD_JWT_KEY`, `HERALD_URL`, `LISTEN`, `DATA_DIR`).

#[path = "../common/mod.rs"]
mod common;

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use rusqlite::{params, Connection, OptionalExtension};
use serde::Deserialize;
use serde_json::{json, Value};

use common::outbox::{self, Outbox};
use common::*;

const PAGE: &str = include_str!("page.html");
const BROADCASTS: &str = "https://example.app/broadcasts";
const MAX_BODY_CHARS: usize = 1000;

fn user_topic(name: &str) -> String {
    format!("https://example.app/users/{name}/notifications")
}

struct App {
    settings: Settings,
    sessions: Sessions,
    /// Publishes what the handlers enqueue (common::outbox).
    outbox: Outbox,
    db: Db,
}

type Shared = Arc<App>;

#[tokio::main]
async fn main() {
    let settings = Settings::from_env("127.0.0.1:3001", "notifications-data");
    let db = Db::open_or_exit(&settings, "notifications.sqlite3", open_db);
    let publisher = Publisher::new(
        &settings,
        &["https://example.app/users/{name}/notifications", BROADCASTS],
    );
    let outbox = Outbox::start(&settings.data_dir.join("notifications.sqlite3"), publisher)
        .unwrap_or_else(|e| {
            eprintln!("error: outbox: {e}");
            std::process::exit(1);
        });
    let app = Arc::new(App {
        sessions: Sessions::new("notifications_session", &settings.session_key),
        outbox,
        db,
        settings,
    });
    let listen = app.settings.listen.clone();
    serve(router(app), &listen, "notifications").await;
}

fn open_db(path: &std::path::Path) -> rusqlite::Result<Connection> {
    let db = Connection::open(path)?;
    db.execute_batch(
        "PRAGMA journal_mode = WAL;
         PRAGMA synchronous = FULL;
         CREATE TABLE IF NOT EXISTS users (name TEXT PRIMARY KEY, created_at INTEGER NOT NULL);
         -- user NULL: a broadcast, in everyone's inbox
         CREATE TABLE IF NOT EXISTS notifications (
           id INTEGER PRIMARY KEY AUTOINCREMENT,
           user TEXT, sender TEXT NOT NULL, type TEXT NOT NULL,
           body TEXT NOT NULL, created_at INTEGER NOT NULL);
         CREATE INDEX IF NOT EXISTS notifications_user ON notifications(user);
         -- read state is per user (a broadcast is read by each on their own)
         CREATE TABLE IF NOT EXISTS reads (
           user TEXT NOT NULL, notification_id INTEGER NOT NULL, read_at INTEGER NOT NULL,
           PRIMARY KEY (user, notification_id));",
    )?;
    outbox::prepare(&db)?;
    Ok(db)
}

fn router(app: Shared) -> Router {
    let routes = Router::new()
        .route("/", get(index))
        .route("/api/login", post(login))
        .route("/api/logout", post(logout))
        .route("/api/me", get(me))
        .route("/api/herald-session", get(herald_session))
        .route("/api/notifications", get(inbox).post(notify))
        .route("/api/broadcasts", post(broadcast))
        .route("/api/notifications/read-all", post(read_all))
        .route("/api/notifications/{id}/read", post(read_one));
    app_router(routes, app)
}

async fn index(State(app): State<Shared>) -> Response {
    page(PAGE, &app.settings)
}

async fn login(
    State(app): State<Shared>,
    JsonBody(req): JsonBody<Login>,
) -> Result<Response, AppError> {
    let name = user_name(&req.name)?;
    app.db.with(|db| {
        db.execute(
            "INSERT OR IGNORE INTO users (name, created_at) VALUES (?1, ?2)",
            params![name, now_ms()],
        )?;
        Ok(())
    })?;
    Ok(logged_in(&app.sessions, &name))
}

async fn logout(State(app): State<Shared>) -> Response {
    logged_out(&app.sessions)
}

/// Who is logged in, and what the page needs to subscribe: the hub and
/// the topics (no token: Herald asks `/api/herald-session`).
async fn me(State(app): State<Shared>, headers: HeaderMap) -> Result<Json<Value>, AppError> {
    let name = app.sessions.user(&headers)?;
    let topic = user_topic(&name);
    Ok(Json(json!({
        "name": name,
        "hub": format!("{}/.well-known/mercure", app.settings.herald_url),
        "topics": [topic, BROADCASTS],
    })))
}

/// Herald's question (`--auth-url`), with the subscriber's cookies: what
/// may this session read? The user's own topic, private updates included
/// (broadcasts are public). No session: 401, which the subscriber gets.
async fn herald_session(
    State(app): State<Shared>,
    headers: HeaderMap,
) -> Result<Json<Value>, AppError> {
    let name = app.sessions.user(&headers)?;
    Ok(Json(json!({
        "subscribe": [user_topic(&name)],
        "sub": name,
    })))
}

fn notification_json(row: &rusqlite::Row<'_>) -> rusqlite::Result<Value> {
    let read: bool = row.get(6)?;
    Ok(json!({
        "id": row.get::<_, i64>(0)?,
        "user": row.get::<_, Option<String>>(1)?,
        "from": row.get::<_, String>(2)?,
        "type": row.get::<_, String>(3)?,
        "body": row.get::<_, String>(4)?,
        "created_at": row.get::<_, i64>(5)?,
        "status": if read { "READ" } else { "UNREAD" },
    }))
}

/// The user's notifications and the broadcasts, newest first, with read state.
const INBOX: &str = "SELECT n.id, n.user, n.sender, n.type, n.body, n.created_at,
        EXISTS (SELECT 1 FROM reads r WHERE r.user = ?1 AND r.notification_id = n.id)
    FROM notifications n WHERE (n.user = ?1 OR n.user IS NULL)";

fn unread_count(db: &Connection, name: &str) -> rusqlite::Result<i64> {
    db.query_row(
        "SELECT COUNT(*) FROM notifications n WHERE (n.user = ?1 OR n.user IS NULL)
           AND NOT EXISTS (SELECT 1 FROM reads r WHERE r.user = ?1 AND r.notification_id = n.id)",
        params![name],
        |r| r.get(0),
    )
}

async fn inbox(State(app): State<Shared>, headers: HeaderMap) -> Result<Json<Value>, AppError> {
    let name = app.sessions.user(&headers)?;
    let db = app.db.lock();
    let mut stmt = db.prepare(&format!("{INBOX} ORDER BY n.id DESC LIMIT 200"))?;
    let list = stmt
        .query_map(params![name], notification_json)?
        .collect::<rusqlite::Result<Vec<Value>>>()?;
    Ok(Json(
        json!({ "unread": unread_count(&db, &name)?, "notifications": list }),
    ))
}

#[derive(Deserialize)]
struct Notify {
    #[serde(default)]
    to: String,
    #[serde(default)]
    body: String,
    #[serde(default, rename = "type")]
    kind: Option<String>,
}

fn notification_type(kind: &Option<String>) -> Result<String, AppError> {
    let kind = kind
        .as_deref()
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .unwrap_or("message");
    if kind.len() > 32 || !kind.bytes().all(|b| b.is_ascii_lowercase() || b == b'-') {
        return Err(AppError::bad_request(format!(
            "type {kind:?} is not valid: use up to 32 of a-z and -"
        )));
    }
    Ok(kind.to_string())
}

/// Store a notification (user None: a broadcast) and, in the same
/// transaction, its update for `topic` in the outbox; answer it as JSON.
/// Stored first, published after: a page loads its inbox after its stream
/// is open, so it misses nothing in between.
fn insert(
    app: &App,
    user: Option<&str>,
    from: &str,
    kind: &str,
    body: &str,
    topic: &str,
) -> Result<Value, AppError> {
    let mut db = app.db.lock();
    let tx = db.transaction()?;
    tx.execute(
        "INSERT INTO notifications (user, sender, type, body, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![user, from, kind, body, now_ms()],
    )?;
    let id = tx.last_insert_rowid();
    let n = tx.query_row(
        &format!("{INBOX} AND n.id = ?2"),
        params![user.unwrap_or(""), id],
        notification_json,
    )?;
    let update = json!({ "kind": "notification", "notification": n });
    outbox::enqueue(&tx, topic, &update, user.is_some())?;
    tx.commit()?;
    app.outbox.wake();
    Ok(n)
}

/// `POST /api/notifications {"to", "body", "type"}`: notify one user, in
/// all their tabs (a private update on their topic).
async fn notify(
    State(app): State<Shared>,
    headers: HeaderMap,
    JsonBody(req): JsonBody<Notify>,
) -> Result<(StatusCode, Json<Value>), AppError> {
    let from = app.sessions.user(&headers)?;
    if req.to.trim().is_empty() {
        return Err(AppError::bad_request("to: name the user to notify"));
    }
    let to = user_name(&req.to)?;
    let body = message_body(&req.body, MAX_BODY_CHARS)?;
    let kind = notification_type(&req.kind)?;
    let known: Option<String> = app.db.with(|db| {
        Ok(db
            .query_row("SELECT name FROM users WHERE name = ?1", params![to], |r| {
                r.get(0)
            })
            .optional()?)
    })?;
    if known.is_none() {
        return Err(AppError::not_found(format!(
            "no user named {to:?} (a user exists once they have logged in)"
        )));
    }
    let n = insert(&app, Some(&to), &from, &kind, &body, &user_topic(&to))?;
    Ok((StatusCode::CREATED, Json(n)))
}

/// `POST /api/broadcasts {"body", "type"}`: everyone, as a public update.
async fn broadcast(
    State(app): State<Shared>,
    headers: HeaderMap,
    JsonBody(req): JsonBody<Notify>,
) -> Result<(StatusCode, Json<Value>), AppError> {
    let from = app.sessions.user(&headers)?;
    let body = message_body(&req.body, MAX_BODY_CHARS)?;
    let kind = notification_type(&req.kind.or(Some("announcement".into())))?;
    let n = insert(&app, None, &from, &kind, &body, BROADCASTS)?;
    Ok((StatusCode::CREATED, Json(n)))
}

/// Mark `ids` read for `name`, then tell every tab of that user.
async fn mark_read(app: &App, name: &str, ids: Vec<i64>) -> Result<Json<Value>, AppError> {
    let change = {
        let mut db = app.db.lock();
        let tx = db.transaction()?;
        let now = now_ms();
        for id in &ids {
            tx.execute(
                "INSERT OR IGNORE INTO reads (user, notification_id, read_at) VALUES (?1, ?2, ?3)",
                params![name, id, now],
            )?;
        }
        let unread = unread_count(&tx, name)?;
        let change = json!({ "kind": "read", "ids": ids, "unread": unread });
        outbox::enqueue(&tx, &user_topic(name), &change, true)?;
        tx.commit()?;
        change
    };
    app.outbox.wake();
    Ok(Json(change))
}

async fn read_one(
    State(app): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, AppError> {
    let name = app.sessions.user(&headers)?;
    let id: i64 = id
        .parse()
        .map_err(|_| AppError::bad_request(format!("notification id {id:?} is not a number")))?;
    let visible: Option<i64> = app.db.with(|db| {
        Ok(db
            .query_row(
                "SELECT id FROM notifications WHERE id = ?1 AND (user = ?2 OR user IS NULL)",
                params![id, name],
                |r| r.get(0),
            )
            .optional()?)
    })?;
    if visible.is_none() {
        return Err(AppError::not_found(format!(
            "no notification {id} in your inbox"
        )));
    }
    mark_read(&app, &name, vec![id]).await
}

async fn read_all(State(app): State<Shared>, headers: HeaderMap) -> Result<Json<Value>, AppError> {
    let name = app.sessions.user(&headers)?;
    let ids = app.db.with(|db| {
        let mut stmt = db.prepare(
            "SELECT n.id FROM notifications n WHERE (n.user = ?1 OR n.user IS NULL)
               AND NOT EXISTS (SELECT 1 FROM reads r WHERE r.user = ?1 AND r.notification_id = n.id)",
        )?;
        let mut ids = Vec::new();
        for id in stmt.query_map(params![name], |r| r.get::<_, i64>(0))? {
            ids.push(id?);
        }
        Ok(ids)
    })?;
    mark_read(&app, &name, ids).await
}

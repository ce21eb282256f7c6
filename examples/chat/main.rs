//! Scenario 5: instant messaging between two users, on Herald.
//!
//! Log in with a name; start a conversation with another user; messages go
//! live to both participants, in every tab, and to nobody else. The app
//! stores each message (SQLite) and publishes it through its outbox
//! (`common::outbox`, docs/publishing.md): a message sent while Herald is
//! down is kept and published once Herald is back, never lost. A reloaded
//! page gets the whole conversation back by resuming from `earliest`.
//!
//! Herald integration, all of it:
//! - each conversation has its own topic,
//!   `https://example.app/conversations/{a}~{b}`, and every message is a
//!   *private* update on it;
//! - a user's subscriber JWT lists exactly their conversations in
//!   `mercure.subscribe` (so another user who guesses the topic gets
//!   nothing, live or by replay);
//! - "you are in a new conversation" is a private update on the user's own
//!   topic `https://example.app/chat/users/{name}`; the page then fetches a
//!   token that includes the new conversation and resubscribes from where
//!   it stood.
//!
//! Run: `bash examples/run.sh` (or `cargo run --release --example chat` with
//! `HERALD_JWT_KEY`, `HERALD_URL`, `LISTEN`, `DATA_DIR`).

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
const MAX_MESSAGE_CHARS: usize = 2000;

fn user_topic(name: &str) -> String {
    format!("https://example.app/chat/users/{name}")
}

fn conversation_topic(id: &str) -> String {
    format!("https://example.app/conversations/{id}")
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
    let settings = Settings::from_env("127.0.0.1:3005", "chat-data");
    let db = Db::open_or_exit(&settings, "chat.sqlite3", open_db);
    let publisher = Publisher::new(
        &settings,
        &[
            "https://example.app/conversations/{id}",
            "https://example.app/chat/users/{name}",
        ],
    );
    let outbox =
        Outbox::start(&settings.data_dir.join("chat.sqlite3"), publisher).unwrap_or_else(|e| {
            eprintln!("error: outbox: {e}");
            std::process::exit(1);
        });
    let app = Arc::new(App {
        sessions: Sessions::new("chat_session", &settings.session_key),
        outbox,
        db,
        settings,
    });
    let listen = app.settings.listen.clone();
    serve(router(app), &listen, "chat").await;
}

fn open_db(path: &std::path::Path) -> rusqlite::Result<Connection> {
    let db = Connection::open(path)?;
    db.execute_batch(
        "PRAGMA journal_mode = WAL;
         CREATE TABLE IF NOT EXISTS users (name TEXT PRIMARY KEY, created_at INTEGER NOT NULL);
         -- a < b: one conversation per pair; its id is 'a~b'
         CREATE TABLE IF NOT EXISTS conversations (
           id TEXT PRIMARY KEY, a TEXT NOT NULL, b TEXT NOT NULL, created_at INTEGER NOT NULL);
         -- every message, under the id it is published with
         CREATE TABLE IF NOT EXISTS messages (
           id TEXT PRIMARY KEY, conversation TEXT NOT NULL, sender TEXT NOT NULL,
           body TEXT NOT NULL, sent_at INTEGER NOT NULL);",
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
        .route("/api/conversations", post(start_conversation))
        .route("/api/conversations/{id}/messages", post(send));
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

fn conversation_json(id: &str, me: &str, a: &str, b: &str) -> Value {
    json!({
        "id": id,
        "topic": conversation_topic(id),
        "members": [a, b],
        "with": if a == me { b } else { a },
    })
}

fn conversations_of(db: &Connection, me: &str) -> rusqlite::Result<Vec<Value>> {
    let mut stmt = db
        .prepare("SELECT id, a, b FROM conversations WHERE a = ?1 OR b = ?1 ORDER BY created_at")?;
    let rows = stmt.query_map(params![me], |r| {
        let (id, a, b): (String, String, String) = (r.get(0)?, r.get(1)?, r.get(2)?);
        Ok(conversation_json(&id, me, &a, &b))
    })?;
    rows.collect()
}

/// The user, their conversations, and a subscriber JWT that lists exactly
/// their own topic and their conversations' topics.
async fn me(State(app): State<Shared>, headers: HeaderMap) -> Result<Json<Value>, AppError> {
    let name = app.sessions.user(&headers)?;
    let conversations = conversations_of(&app.db.lock(), &name)?;
    let mut topics = vec![user_topic(&name)];
    topics.extend(
        conversations
            .iter()
            .map(|c| c["topic"].as_str().unwrap_or_default().to_string()),
    );
    Ok(Json(json!({
        "name": name,
        "hub": format!("{}/.well-known/mercure", app.settings.herald_url),
        "topics": topics,
        "token": subscriber_token(&app.settings, &topics),
        "conversations": conversations,
    })))
}

#[derive(Deserialize)]
struct Start {
    #[serde(default)]
    with: String,
}

/// `POST /api/conversations {"with": name}`: the conversation between the
/// user and `with` (created if new; both are told on their own topic).
async fn start_conversation(
    State(app): State<Shared>,
    headers: HeaderMap,
    JsonBody(req): JsonBody<Start>,
) -> Result<(StatusCode, Json<Value>), AppError> {
    let me = app.sessions.user(&headers)?;
    if req.with.trim().is_empty() {
        return Err(AppError::bad_request("with: name the user to talk to"));
    }
    let other = user_name(&req.with)?;
    if other == me {
        return Err(AppError::bad_request(
            "a conversation needs another user than yourself",
        ));
    }
    let (a, b) = if me < other {
        (&me, &other)
    } else {
        (&other, &me)
    };
    let id = format!("{a}~{b}");
    let created = {
        let mut db = app.db.lock();
        let db = db.transaction()?;
        let known: Option<String> = db
            .query_row(
                "SELECT name FROM users WHERE name = ?1",
                params![other],
                |r| r.get(0),
            )
            .optional()?;
        if known.is_none() {
            return Err(AppError::not_found(format!(
                "no user named {other:?} (a user exists once they have logged in)"
            )));
        }
        let created = db.execute(
            "INSERT OR IGNORE INTO conversations (id, a, b, created_at) VALUES (?1, ?2, ?3, ?4)",
            params![id, a, b, now_ms()],
        )? > 0;
        if created {
            let event = json!({ "kind": "conversation", "id": id, "members": [a, b] });
            for user in [a, b] {
                outbox::enqueue(&db, &user_topic(user), &event, true)?;
            }
        }
        db.commit()?;
        created
    };
    app.outbox.wake();
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(conversation_json(&id, &me, a, b))))
}

#[derive(Deserialize)]
struct Outgoing {
    #[serde(default)]
    body: String,
}

/// `POST /api/conversations/{id}/messages {"body"}`: a private update on
/// the conversation's topic. Only a participant may send; to anyone else
/// the conversation does not exist (404).
async fn send(
    State(app): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<Outgoing>,
) -> Result<(StatusCode, Json<Value>), AppError> {
    let me = app.sessions.user(&headers)?;
    let member: Option<String> = app.db.with(|db| {
        Ok(db
            .query_row(
                "SELECT id FROM conversations WHERE id = ?1 AND (a = ?2 OR b = ?2)",
                params![id, me],
                |r| r.get(0),
            )
            .optional()?)
    })?;
    if member.is_none() {
        return Err(AppError::not_found(format!(
            "no conversation {id:?} among yours"
        )));
    }
    let body = message_body(&req.body, MAX_MESSAGE_CHARS)?;
    let message = json!({
        "kind": "message",
        "conversation": id,
        "from": me,
        "body": body,
        "sent_at": now_ms(),
    });
    // Stored with its update in one transaction: answered once kept.
    let herald_id = {
        let mut db = app.db.lock();
        let tx = db.transaction()?;
        let herald_id = outbox::enqueue(&tx, &conversation_topic(&id), &message, true)?;
        tx.execute(
            "INSERT INTO messages (id, conversation, sender, body, sent_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![herald_id, id, me, body, message["sent_at"].as_i64()],
        )?;
        tx.commit()?;
        herald_id
    };
    app.outbox.wake();
    Ok((
        StatusCode::CREATED,
        Json(json!({ "id": herald_id, "message": message })),
    ))
}

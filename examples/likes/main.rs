//! Scenario 2: live likes and comments on Herald, stored in Redis.
//!
//! A page lists comments ranked by likes. Anyone may read; a person who
//! logged in with a name (a signed cookie) can add a comment, like one
//! (`POST /api/comments/{id}/like`) or take their like back (`DELETE` on
//! the same URL): one like per person and comment, as on any real site.
//! Every open page shows the change at once, re-ranked. Storage is a real
//! Redis: a hash `likes:comments` (id -> the comment's body and time, as
//! JSON), a set `likes:by:{id}` (who likes it) and a sorted set
//! `likes:scores` (id -> likes). Each change is one Lua script, so
//! concurrent likes never lose a count.
//!
//! Publishing goes through an outbox (examples/common/outbox.rs) kept in
//! Redis: the script that makes a change also appends its update (with an
//! id the app chose) to the list `likes:outbox`, atomically; a background
//! task publishes the list in order until Herald has each. Herald down
//! delays the pages, it does not lose a like; they catch up by resuming.
//!
//! Herald integration, all of it:
//! - every change is one public update on `https://example.app/comments`:
//!   `{"kind": "comment", "comment"}` for a new comment, `{"kind": "likes",
//!   "id", "likes"}` for "comment X now has N likes"; each carries `v`, a
//!   version from Redis (`likes:version`, bumped by every change), so a
//!   page applies a count only if it is newer than the one it shows (two
//!   likes answered in one order may be published in the other);
//! - the app publishes with a publisher JWT it mints for that topic only,
//!   through its outbox;
//! - the page subscribes with herald.js (no token: the topic is public),
//!   imported from the hub on another origin (`--cors-origins`).
//!
//! Run: `bash examples/run.sh` (it starts a redis-server on port 6390), or
//! `cargo run --release --example likes` with `REDIS_URL`,
//! `HERALD_JWT_KEY`, `HERALD_URL`, `LISTEN`.

#[path = "../common/mod.rs"]
mod common;

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use redis::aio::MultiplexedConnection;
use serde::Deserialize;
use serde_json::{json, Value};

use common::outbox::{Outbox, Pending, Store};
use common::*;

const PAGE: &str = include_str!("page.html");
const TOPIC: &str = "https://example.app/comments";
const MAX_BODY_CHARS: usize = 500;

const COMMENTS: &str = "likes:comments";
const SCORES: &str = "likes:scores";
const NEXT_ID: &str = "likes:next_id";
const VERSION: &str = "likes:version";
/// The outbox: updates to publish, oldest first, as `{"id", "data"}`.
const OUTBOX: &str = "likes:outbox";
/// Updates Herald refused for good, with the reason (kept, skipped).
const REFUSED: &str = "likes:outbox:refused";

/// KEYS: the outbox, where a refused entry goes; ARGV: the entry published
/// (or refused), and for a refused one what to keep. Pops the head only if
/// it is still that entry: two app processes overlapping (a deploy) never
/// drop an entry neither has published.
const POP: &str = r#"
if redis.call('LINDEX', KEYS[1], 0) ~= ARGV[1] then return 0 end
redis.call('LPOP', KEYS[1])
if ARGV[2] then redis.call('RPUSH', KEYS[2], ARGV[2]) end
return 1
"#;

/// Who likes comment `id`.
fn likers(id: i64) -> String {
    format!("likes:by:{id}")
}

/// KEYS: comments, scores, next_id, version, outbox; ARGV: the comment's
/// JSON, the update's id. Stores the comment and queues its update.
/// Answers {id, version}.
const ADD: &str = r#"
local id = redis.call('INCR', KEYS[3])
redis.call('HSET', KEYS[1], id, ARGV[1])
redis.call('ZADD', KEYS[2], 0, id)
local v = redis.call('INCR', KEYS[4])
local c = cjson.decode(ARGV[1])
c.id = id
c.likes = 0
c.v = v
local update = cjson.encode({kind = 'comment', comment = c})
redis.call('RPUSH', KEYS[5], cjson.encode({id = ARGV[2], data = update}))
return {id, v}
"#;

/// KEYS: comments, scores, version, outbox, likers; ARGV: id, user, 1
/// (like) or -1 (take it back), the update's id. A person's second like
/// (or a take-back of a like they never gave) changes nothing and queues
/// nothing. Answers {likes, version, changed}, or {-1, 0, 0} for an
/// unknown comment.
const LIKE: &str = r#"
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return {-1, 0, 0} end
local changed
if tonumber(ARGV[3]) > 0 then
  changed = redis.call('SADD', KEYS[5], ARGV[2])
else
  changed = redis.call('SREM', KEYS[5], ARGV[2])
end
local n = redis.call('SCARD', KEYS[5])
if changed == 0 then
  return {n, tonumber(redis.call('GET', KEYS[3]) or '0'), 0}
end
redis.call('ZADD', KEYS[2], n, ARGV[1])
local v = redis.call('INCR', KEYS[3])
local update = cjson.encode({kind = 'likes', id = tonumber(ARGV[1]), likes = n, v = v})
redis.call('RPUSH', KEYS[4], cjson.encode({id = ARGV[4], data = update}))
return {n, v, 1}
"#;

struct App {
    settings: Settings,
    sessions: Sessions,
    outbox: Outbox,
    redis: MultiplexedConnection,
    add: redis::Script,
    like: redis::Script,
}

type Shared = Arc<App>;

fn redis_error(e: redis::RedisError) -> AppError {
    AppError::new(StatusCode::SERVICE_UNAVAILABLE, format!("Redis: {e}"))
}

#[tokio::main]
async fn main() {
    let settings = Settings::from_env("127.0.0.1:3002", "likes-data");
    let url = std::env::var("REDIS_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "redis://127.0.0.1:6390".into());
    let redis = match redis::Client::open(url.as_str()) {
        Ok(client) => client.get_multiplexed_async_connection().await,
        Err(e) => Err(e),
    }
    .unwrap_or_else(|e| {
        eprintln!("error: cannot connect to Redis at {url} (set REDIS_URL): {e}");
        std::process::exit(1);
    });
    let store = RedisOutbox {
        redis: redis.clone(),
        pop: redis::Script::new(POP),
        head: String::new(),
    };
    let app = Arc::new(App {
        outbox: Outbox::start_with(store, Publisher::new(&settings, &[TOPIC])),
        sessions: Sessions::new("likes_session", &settings.session_key),
        settings,
        redis,
        add: redis::Script::new(ADD),
        like: redis::Script::new(LIKE),
    });
    let listen = app.settings.listen.clone();
    serve(router(app), &listen, "likes").await;
}

fn router(app: Shared) -> Router {
    let routes = Router::new()
        .route("/", get(index))
        .route("/api/login", post(login))
        .route("/api/logout", post(logout))
        .route("/api/comments", get(list).post(add))
        .route("/api/comments/{id}/like", post(like).delete(unlike));
    app_router(routes, app)
}

async fn index(State(app): State<Shared>) -> Response {
    page(PAGE, &app.settings)
}

async fn login(
    State(app): State<Shared>,
    JsonBody(req): JsonBody<Login>,
) -> Result<Response, AppError> {
    Ok(logged_in(&app.sessions, &user_name(&req.name)?))
}

async fn logout(State(app): State<Shared>) -> Response {
    logged_out(&app.sessions)
}

/// The outbox in Redis: the list `likes:outbox`, appended to by the Lua
/// scripts, read by the app's publishing task, which pops an entry only
/// if it is still at the head (see `POP`).
struct RedisOutbox {
    redis: MultiplexedConnection,
    pop: redis::Script,
    /// The head entry as read, to pop exactly that one.
    head: String,
}

impl Store for RedisOutbox {
    fn name(&self) -> String {
        format!("Redis list {OUTBOX}")
    }

    async fn next(&mut self) -> Result<Option<Pending>, String> {
        let head: Option<String> = redis::cmd("LINDEX")
            .arg(OUTBOX)
            .arg(0)
            .query_async(&mut self.redis)
            .await
            .map_err(|e| e.to_string())?;
        let Some(head) = head else { return Ok(None) };
        let entry: Value = serde_json::from_str(&head).map_err(|e| format!("{head:?}: {e}"))?;
        self.head = head.clone();
        let (Some(id), Some(data)) = (entry["id"].as_str(), entry["data"].as_str()) else {
            return Err(format!("{head:?}: no id or data"));
        };
        Ok(Some(Pending {
            seq: 0,
            id: id.to_string(),
            topic: TOPIC.to_string(),
            data: data.to_string(),
            private: false,
        }))
    }

    async fn done(&mut self, _: &Pending) -> Result<(), String> {
        self.pop
            .key(OUTBOX)
            .key(REFUSED)
            .arg(&self.head)
            .invoke_async::<i64>(&mut self.redis)
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    }

    async fn refused(&mut self, p: &Pending, why: &str) -> Result<(), String> {
        let kept = json!({ "id": p.id, "data": p.data, "failed": why }).to_string();
        self.pop
            .key(OUTBOX)
            .key(REFUSED)
            .arg(&self.head)
            .arg(kept)
            .invoke_async::<i64>(&mut self.redis)
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    }
}

fn update_id() -> String {
    format!("urn:uuid:{}", uuid::Uuid::new_v4())
}

fn comment_json(id: i64, stored: &str, likes: i64, v: i64) -> Value {
    let stored: Value = serde_json::from_str(stored).unwrap_or_else(|_| json!({}));
    json!({
        "id": id,
        "body": stored["body"],
        "created_at": stored["created_at"],
        "likes": likes,
        "v": v,
    })
}

/// HGETALL of the bodies, ZRANGE WITHSCORES of the scores, the version.
type Snapshot = (Vec<(i64, String)>, Vec<(i64, f64)>, Option<i64>);

/// `GET /api/comments`: every comment, most liked first (ties: oldest
/// first), read in one MULTI; plus what the page needs to subscribe.
async fn list(State(app): State<Shared>, headers: HeaderMap) -> Result<Json<Value>, AppError> {
    let me = app.sessions.user(&headers).ok();
    let mut con = app.redis.clone();
    let (bodies, scores, version): Snapshot = redis::pipe()
        .atomic()
        .cmd("HGETALL")
        .arg(COMMENTS)
        .cmd("ZRANGE")
        .arg(SCORES)
        .arg(0)
        .arg(-1)
        .arg("WITHSCORES")
        .cmd("GET")
        .arg(VERSION)
        .query_async(&mut con)
        .await
        .map_err(redis_error)?;
    let version = version.unwrap_or(0);
    let bodies: std::collections::HashMap<i64, String> = bodies.into_iter().collect();
    let mut comments: Vec<(i64, i64)> = scores
        .into_iter()
        .filter(|(id, _)| bodies.contains_key(id))
        .map(|(id, s)| (id, s as i64))
        .collect();
    comments.sort_by_key(|&(id, likes)| (-likes, id));
    // Which of them the person asking likes (one pipeline).
    let mine: Vec<bool> = match &me {
        Some(name) if !comments.is_empty() => {
            let mut pipe = redis::pipe();
            for (id, _) in &comments {
                pipe.cmd("SISMEMBER").arg(likers(*id)).arg(name);
            }
            pipe.query_async(&mut con).await.map_err(redis_error)?
        }
        _ => vec![false; comments.len()],
    };
    let comments: Vec<Value> = comments
        .into_iter()
        .zip(mine)
        .map(|((id, likes), mine)| {
            let mut c = comment_json(id, &bodies[&id], likes, version);
            c["mine"] = json!(mine);
            c
        })
        .collect();
    Ok(Json(json!({
        "hub": format!("{}/.well-known/mercure", app.settings.herald_url),
        "topic": TOPIC,
        "me": me,
        "version": version,
        "comments": comments,
    })))
}

#[derive(Deserialize)]
struct NewComment {
    #[serde(default)]
    body: String,
}

/// `POST /api/comments {"body"}`: stored with its update in the outbox;
/// answers once Redis has both (the outbox publishes it to every page).
async fn add(
    State(app): State<Shared>,
    headers: HeaderMap,
    JsonBody(req): JsonBody<NewComment>,
) -> Result<(StatusCode, Json<Value>), AppError> {
    app.sessions.user(&headers)?;
    let body = message_body(&req.body, MAX_BODY_CHARS)?;
    let stored = json!({ "body": body, "created_at": now_ms() }).to_string();
    let mut con = app.redis.clone();
    let (id, v): (i64, i64) = app
        .add
        .key(COMMENTS)
        .key(SCORES)
        .key(NEXT_ID)
        .key(VERSION)
        .key(OUTBOX)
        .arg(&stored)
        .arg(update_id())
        .invoke_async(&mut con)
        .await
        .map_err(redis_error)?;
    app.outbox.wake();
    let mut comment = comment_json(id, &stored, 0, v);
    comment["mine"] = json!(false);
    Ok((StatusCode::CREATED, Json(comment)))
}

async fn like(
    State(app): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, AppError> {
    change_likes(&app, &headers, &id, 1).await
}

async fn unlike(
    State(app): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, AppError> {
    change_likes(&app, &headers, &id, -1).await
}

/// The person's like on a comment, given (`delta` 1) or taken back (-1);
/// if that changed the count, every page is told "comment X now has N
/// likes" (through the outbox). Answers the count and whether the person
/// now likes it.
async fn change_likes(
    app: &App,
    headers: &HeaderMap,
    id: &str,
    delta: i64,
) -> Result<Json<Value>, AppError> {
    let me = app.sessions.user(headers)?;
    let id: i64 = id
        .parse()
        .map_err(|_| AppError::bad_request(format!("comment id {id:?} is not a number")))?;
    let mut con = app.redis.clone();
    let (likes, v, changed): (i64, i64, i64) = app
        .like
        .key(COMMENTS)
        .key(SCORES)
        .key(VERSION)
        .key(OUTBOX)
        .key(likers(id))
        .arg(id)
        .arg(&me)
        .arg(delta)
        .arg(update_id())
        .invoke_async(&mut con)
        .await
        .map_err(redis_error)?;
    if likes < 0 {
        return Err(AppError::not_found(format!("no comment {id}")));
    }
    if changed == 1 {
        app.outbox.wake();
    }
    Ok(Json(
        json!({ "kind": "likes", "id": id, "likes": likes, "v": v, "mine": delta > 0 }),
    ))
}

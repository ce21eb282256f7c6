//! Scenario 2: live likes and comments on Herald, stored in Redis.
//!
//! A page lists comments ranked by likes. Anyone can add a comment, like
//! one (`POST /api/comments/{id}/like`) or take a like back (`DELETE` on
//! the same URL); every open page shows the change at once, re-ranked.
//! Storage is a real Redis: a hash `likes:comments` (id -> the comment's
//! body and time, as JSON) and a sorted set `likes:scores` (id -> likes).
//! Each change is one Lua script, so concurrent likes never lose a count
//! and a score never goes below 0.
//!
//! Herald integration, all of it:
//! - every change is one public update on `https://example.app/comments`:
//!   `{"kind": "comment", "comment"}` for a new comment, `{"kind": "likes",
//!   "id", "likes"}` for "comment X now has N likes"; each carries `v`, a
//!   version from Redis (`likes:version`, bumped by every change), so a
//!   page applies a count only if it is newer than the one it shows (two
//!   likes answered in one order may be published in the other);
//! - the app publishes with a publisher JWT it mints for that topic only;
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
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use redis::aio::MultiplexedConnection;
use serde::Deserialize;
use serde_json::{json, Value};

use common::*;

const PAGE: &str = include_str!("page.html");
const TOPIC: &str = "https://example.app/comments";
const MAX_BODY_CHARS: usize = 500;

const COMMENTS: &str = "likes:comments";
const SCORES: &str = "likes:scores";
const NEXT_ID: &str = "likes:next_id";
const VERSION: &str = "likes:version";

/// KEYS: comments, scores, next_id, version; ARGV: the comment's JSON.
/// Answers {id, version}.
const ADD: &str = r#"
local id = redis.call('INCR', KEYS[3])
redis.call('HSET', KEYS[1], id, ARGV[1])
redis.call('ZADD', KEYS[2], 0, id)
return {id, redis.call('INCR', KEYS[4])}
"#;

/// KEYS: comments, scores, next_id, version; ARGV: id, +1 or -1.
/// Answers {likes, version}, or {-1, 0} for an unknown comment.
const LIKE: &str = r#"
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return {-1, 0} end
local n = tonumber(redis.call('ZINCRBY', KEYS[2], ARGV[2], ARGV[1]))
if n < 0 then
  redis.call('ZADD', KEYS[2], 0, ARGV[1])
  n = 0
end
return {n, redis.call('INCR', KEYS[4])}
"#;

struct App {
    settings: Settings,
    herald: Publisher,
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
    let app = Arc::new(App {
        herald: Publisher::new(&settings, &[TOPIC]),
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
        .route("/api/comments", get(list).post(add))
        .route("/api/comments/{id}/like", post(like).delete(unlike));
    app_router(routes, app)
}

async fn index(State(app): State<Shared>) -> Response {
    page(PAGE, &app.settings)
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
async fn list(State(app): State<Shared>) -> Result<Json<Value>, AppError> {
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
    let comments: Vec<Value> = comments
        .into_iter()
        .map(|(id, likes)| comment_json(id, &bodies[&id], likes, version))
        .collect();
    Ok(Json(json!({
        "hub": format!("{}/.well-known/mercure", app.settings.herald_url),
        "topic": TOPIC,
        "version": version,
        "comments": comments,
    })))
}

#[derive(Deserialize)]
struct NewComment {
    #[serde(default)]
    body: String,
}

/// `POST /api/comments {"body"}`: stored, then published to every page.
async fn add(
    State(app): State<Shared>,
    JsonBody(req): JsonBody<NewComment>,
) -> Result<(StatusCode, Json<Value>), AppError> {
    let body = message_body(&req.body, MAX_BODY_CHARS)?;
    let stored = json!({ "body": body, "created_at": now_ms() }).to_string();
    let mut con = app.redis.clone();
    let (id, v): (i64, i64) = app
        .add
        .key(COMMENTS)
        .key(SCORES)
        .key(NEXT_ID)
        .key(VERSION)
        .arg(&stored)
        .invoke_async(&mut con)
        .await
        .map_err(redis_error)?;
    let comment = comment_json(id, &stored, 0, v);
    app.herald
        .publish(
            TOPIC,
            &json!({ "kind": "comment", "comment": comment }),
            false,
        )
        .await?;
    Ok((StatusCode::CREATED, Json(comment)))
}

async fn like(State(app): State<Shared>, Path(id): Path<String>) -> Result<Json<Value>, AppError> {
    change_likes(&app, &id, 1).await
}

async fn unlike(
    State(app): State<Shared>,
    Path(id): Path<String>,
) -> Result<Json<Value>, AppError> {
    change_likes(&app, &id, -1).await
}

/// Add `delta` to a comment's likes (never below 0) and tell every page
/// "comment X now has N likes".
async fn change_likes(app: &App, id: &str, delta: i64) -> Result<Json<Value>, AppError> {
    let id: i64 = id
        .parse()
        .map_err(|_| AppError::bad_request(format!("comment id {id:?} is not a number")))?;
    let mut con = app.redis.clone();
    let (likes, v): (i64, i64) = app
        .like
        .key(COMMENTS)
        .key(SCORES)
        .key(NEXT_ID)
        .key(VERSION)
        .arg(id)
        .arg(delta)
        .invoke_async(&mut con)
        .await
        .map_err(redis_error)?;
    if likes < 0 {
        return Err(AppError::not_found(format!("no comment {id}")));
    }
    let change = json!({ "kind": "likes", "id": id, "likes": likes, "v": v });
    app.herald.publish(TOPIC, &change, false).await?;
    Ok(Json(change))
}

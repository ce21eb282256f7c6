//! Scenario 3: an async export job, its progress pushed to the page.
//!
//! Log in with a name (a signed cookie) and press "Export": the app starts
//! the job in a *separate worker process* (this same binary, run as
//! `export worker ...`), which writes a CSV file for a few seconds and
//! publishes its progress (0..100 %), then its outcome: "ready" with the
//! download link, or "failed" with the reason. The page shows a progress bar, then a pop-up with the
//! link; the app serves the file to its owner only.
//!
//! Herald integration, all of it:
//! - the worker publishes *private* progress updates on the user's topic
//!   `https://example.app/users/{name}/jobs` with a publisher JWT it mints
//!   for that topic (the key it shares with Herald, `HERALD_JWT_KEY`).
//!   Progress is a hint: one Herald missed (it was down) is skipped, and
//!   the job goes on;
//! - the outcome is what the user waits for, so it goes through the
//!   outbox (examples/common/outbox.rs, SQLite in `DATA_DIR/outbox.db`):
//!   the worker records it there before it exits (and tries to publish it
//!   at once, under the same id), and the app's outbox task publishes it
//!   once Herald takes it, however long Herald is away, also if the app
//!   restarted meanwhile. A worker that dies without recording one (killed,
//!   crashed) gets a "failed" recorded by the app, which watches it;
//! - the page gets a subscriber JWT for its user's topic only (`GET
//!   /api/me`) and subscribes with herald.js, imported from the hub;
//! - cluster mode: the page subscribes on `HERALD_URL` (node A), the worker
//!   publishes through `HERALD_PUBLISH_URL` (node B, default `HERALD_URL`);
//!   Herald's Redis transport carries the updates from B to A.
//!
//! Run: `bash examples/run.sh` (or `cargo run --release --example export`
//! with `HERALD_JWT_KEY`, `HERALD_URL`, `HERALD_PUBLISH_URL`, `LISTEN`,
//! `DATA_DIR`). `EXPORT_STEP_MS` (default 400) is the worker's pace: ten
//! steps of it per job.

#[path = "../common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use common::outbox::{self, Outbox};
use common::*;

const PAGE: &str = include_str!("page.html");
/// Rows per export when the request does not say.
const DEFAULT_ROWS: u64 = 2000;
const MAX_ROWS: u64 = 100_000;
/// Running jobs one user may have at once.
const MAX_RUNNING: usize = 3;
/// Progress steps per job (10 %, 20 %, ... 100 %).
const STEPS: u64 = 10;

/// Every user's topic, as a URI template (the app's outbox publishes the
/// outcome of anyone's job).
const ALL_USER_TOPICS: &str = "https://example.app/users/{name}/jobs";

fn user_topic(name: &str) -> String {
    format!("https://example.app/users/{name}/jobs")
}

#[derive(Clone, Copy, PartialEq)]
enum JobState {
    Running,
    Ready,
    Failed,
}

impl JobState {
    fn as_str(self) -> &'static str {
        match self {
            JobState::Running => "running",
            JobState::Ready => "ready",
            JobState::Failed => "failed",
        }
    }
}

struct Job {
    owner: String,
    rows: u64,
    created_at: i64,
    state: JobState,
}

struct App {
    settings: Settings,
    sessions: Sessions,
    /// Where the worker publishes (node B in a cluster).
    publish_url: String,
    exports_dir: PathBuf,
    /// The outbox's database (jobs' outcomes to publish).
    db: Db,
    outbox: Outbox,
    jobs: Mutex<HashMap<String, Job>>,
}

type Shared = Arc<App>;

fn publish_url_from_env(settings: &Settings) -> String {
    std::env::var("HERALD_PUBLISH_URL")
        .ok()
        .filter(|v| !v.is_empty())
        .map(|v| v.trim_end_matches('/').to_string())
        .unwrap_or_else(|| settings.herald_url.clone())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    if args.get(1).map(String::as_str) == Some("worker") {
        std::process::exit(runtime.block_on(worker(&args[2..])));
    }
    runtime.block_on(serve_app());
}

async fn serve_app() {
    let settings = Settings::from_env("127.0.0.1:3003", "export-data");
    let exports_dir = settings.data_dir.join("exports");
    if let Err(e) = std::fs::create_dir_all(&exports_dir) {
        eprintln!("error: cannot create {}: {e}", exports_dir.display());
        std::process::exit(1);
    }
    let jobs = load_jobs(&exports_dir);
    let db = Db::open_or_exit(&settings, "outbox.db", |path| {
        let db = rusqlite::Connection::open(path)?;
        outbox::prepare(&db)?;
        Ok(db)
    });
    let publish_url = publish_url_from_env(&settings);
    let mut through = settings.clone();
    through.herald_url = publish_url.clone();
    let publisher = Publisher::new(&through, &[ALL_USER_TOPICS]);
    let outbox =
        Outbox::start(&settings.data_dir.join("outbox.db"), publisher).unwrap_or_else(|e| {
            eprintln!("error: outbox: {e}");
            std::process::exit(1);
        });
    let app = Arc::new(App {
        sessions: Sessions::new("export_session", &settings.session_key),
        publish_url,
        db,
        outbox,
        exports_dir,
        jobs: Mutex::new(jobs),
        settings,
    });
    let listen = app.settings.listen.clone();
    serve(router(app), &listen, "export").await;
}

fn router(app: Shared) -> Router {
    let routes = Router::new()
        .route("/", get(index))
        .route("/api/login", post(login))
        .route("/api/logout", post(logout))
        .route("/api/me", get(me))
        .route("/api/exports", get(list).post(start_export))
        .route("/api/exports/{id}", get(status))
        .route("/api/exports/{id}/download", get(download));
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
    Ok(logged_in(&app.sessions, &name))
}

async fn logout(State(app): State<Shared>) -> Response {
    logged_out(&app.sessions)
}

/// Who is logged in, and what the page needs to subscribe: the hub (node
/// A), the topic, and a subscriber JWT that may read this user's topic only.
async fn me(State(app): State<Shared>, headers: HeaderMap) -> Result<Json<Value>, AppError> {
    let name = app.sessions.user(&headers)?;
    let topic = user_topic(&name);
    Ok(Json(json!({
        "name": name,
        "hub": format!("{}/.well-known/mercure", app.settings.herald_url),
        "topics": [topic],
        "token": subscriber_token(&app.settings, &[topic]),
    })))
}

/// The jobs of earlier runs, from their `{id}.json` records (so a
/// restarted app still serves their files to their owners): ready if the
/// file is there, else failed (a worker that outlived the app and finishes
/// later makes it ready: see `job_json`).
fn load_jobs(dir: &std::path::Path) -> HashMap<String, Job> {
    let mut jobs = HashMap::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return jobs;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Some(id) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".json"))
            .and_then(|n| job_id(n).ok())
        else {
            continue;
        };
        let Some(record) = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        else {
            continue;
        };
        let (Some(owner), Some(rows), Some(created_at)) = (
            record["owner"].as_str(),
            record["rows"].as_u64(),
            record["created_at"].as_i64(),
        ) else {
            continue;
        };
        let state = if dir.join(format!("{id}.csv")).exists() {
            JobState::Ready
        } else {
            JobState::Failed
        };
        let owner = owner.to_string();
        jobs.insert(
            id,
            Job {
                owner,
                rows,
                created_at,
                state,
            },
        );
    }
    jobs
}

fn file_of(app: &App, id: &str) -> PathBuf {
    app.exports_dir.join(format!("{id}.csv"))
}

fn job_json(app: &App, id: &str, job: &Job) -> Value {
    // The worker renames the file into place before it says "ready": a
    // finished file is ready even if the app has not yet seen it exit.
    let state = if file_of(app, id).exists() {
        JobState::Ready
    } else {
        job.state
    };
    json!({
        "id": id,
        "rows": job.rows,
        "created_at": job.created_at,
        "state": state.as_str(),
        "download": format!("/api/exports/{id}/download"),
    })
}

/// A job id is 32 lowercase hex digits (a v4 UUID, simple form).
fn job_id(raw: &str) -> Result<String, AppError> {
    if raw.len() != 32
        || !raw
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(AppError::bad_request(format!(
            "{raw:?} is not a job id (32 hex digits)"
        )));
    }
    Ok(raw.to_string())
}

/// The job `raw`, if it is `name`'s: 400 for a malformed id, 404 for an
/// unknown one, 403 for another user's.
fn owned_job(app: &App, name: &str, raw: &str) -> Result<(String, Value), AppError> {
    let id = job_id(raw)?;
    let jobs = app.jobs.lock().unwrap();
    let job = jobs
        .get(&id)
        .ok_or_else(|| AppError::not_found(format!("no export job {id}")))?;
    if job.owner != name {
        return Err(AppError::new(
            StatusCode::FORBIDDEN,
            format!("export job {id} belongs to another user"),
        ));
    }
    Ok((id.clone(), job_json(app, &id, job)))
}

async fn list(State(app): State<Shared>, headers: HeaderMap) -> Result<Json<Value>, AppError> {
    let name = app.sessions.user(&headers)?;
    let jobs = app.jobs.lock().unwrap();
    let mut mine: Vec<Value> = jobs
        .iter()
        .filter(|(_, j)| j.owner == name)
        .map(|(id, j)| job_json(&app, id, j))
        .collect();
    mine.sort_by_key(|j| std::cmp::Reverse(j["created_at"].as_i64()));
    Ok(Json(json!({ "jobs": mine })))
}

async fn status(
    State(app): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, AppError> {
    let name = app.sessions.user(&headers)?;
    Ok(Json(owned_job(&app, &name, &id)?.1))
}

#[derive(Deserialize, Default)]
struct StartExport {
    #[serde(default)]
    rows: Option<Value>,
}

fn rows_of(raw: &Option<Value>) -> Result<u64, AppError> {
    match raw {
        None | Some(Value::Null) => Ok(DEFAULT_ROWS),
        Some(v) => match v.as_u64() {
            Some(n) if (1..=MAX_ROWS).contains(&n) => Ok(n),
            _ => Err(AppError::bad_request(format!(
                "rows must be a whole number from 1 to {MAX_ROWS}, not {v}"
            ))),
        },
    }
}

/// `POST /api/exports {"rows"}`: start an export in a worker process;
/// answers 202 with the job. Its progress arrives on the user's topic.
async fn start_export(
    State(app): State<Shared>,
    headers: HeaderMap,
    JsonBody(req): JsonBody<StartExport>,
) -> Result<(StatusCode, Json<Value>), AppError> {
    let name = app.sessions.user(&headers)?;
    let rows = rows_of(&req.rows)?;
    let id = uuid::Uuid::new_v4().simple().to_string();
    {
        let mut jobs = app.jobs.lock().unwrap();
        let running = jobs
            .values()
            .filter(|j| j.owner == name && j.state == JobState::Running)
            .count();
        if running >= MAX_RUNNING {
            return Err(AppError::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!("you already have {running} exports running; wait for one to finish"),
            ));
        }
        let created_at = now_ms();
        let record = json!({ "owner": name, "rows": rows, "created_at": created_at });
        let path = app.exports_dir.join(format!("{id}.json"));
        std::fs::write(&path, record.to_string())
            .map_err(|e| AppError::internal(format!("{}: {e}", path.display())))?;
        jobs.insert(
            id.clone(),
            Job {
                owner: name.clone(),
                rows,
                created_at,
                state: JobState::Running,
            },
        );
    }
    let exe = std::env::current_exe().map_err(AppError::internal)?;
    let spawned = tokio::process::Command::new(exe)
        .arg("worker")
        .args(["--job", &id, "--user", &name, "--rows", &rows.to_string()])
        .arg("--out")
        .arg(file_of(&app, &id))
        .arg("--outbox")
        .arg(app.settings.data_dir.join("outbox.db"))
        .env("HERALD_PUBLISH_URL", &app.publish_url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let child = match spawned {
        Ok(c) => c,
        Err(e) => {
            app.jobs.lock().unwrap().remove(&id);
            return Err(AppError::internal(format!("cannot start the worker: {e}")));
        }
    };
    let watcher = app.clone();
    let job = id.clone();
    let owner = name.clone();
    tokio::spawn(async move {
        let output = child.wait_with_output().await;
        let file = file_of(&watcher, &job);
        // Exit 0 or 1: the worker recorded its outcome in the outbox.
        if let Ok(out) = &output {
            if let Some(code @ (RECORDED_READY | RECORDED_FAILED)) = out.status.code() {
                mark(&watcher, &job, code == RECORDED_READY && file.exists());
                watcher.outbox.wake();
                return;
            }
        }
        let outcome = match &output {
            Ok(out) if out.status.code().is_none() => {
                Err(format!("the worker was killed ({})", out.status))
            }
            Ok(out) => {
                // The worker's last line says why.
                let said = String::from_utf8_lossy(&out.stderr);
                let last = said.lines().last().unwrap_or("").trim().to_string();
                Err(if last.is_empty() {
                    format!("the worker exited with {}", out.status)
                } else {
                    last
                })
            }
            Err(e) => Err(format!("lost the worker: {e}")),
        };
        finish(&watcher, &job, &owner, rows, outcome);
    });
    let body = owned_job(&app, &name, &id)?.1;
    Ok((StatusCode::ACCEPTED, Json(body)))
}

/// The worker's exit codes when it recorded its outcome in the outbox.
const RECORDED_READY: i32 = 0;
const RECORDED_FAILED: i32 = 1;
/// ... and when it could not (the app records "failed" for it).
const NOT_RECORDED: i32 = 3;

/// The id of a job's outcome update: one per job, so that "ready" and a
/// late "failed" can never both be published (the first one queued wins).
fn outcome_id(job: &str) -> String {
    format!("urn:example-export:{job}:outcome")
}

/// A job's outcome, as the owner's pages receive it: "ready" with the
/// file's size and link, or "failed" with the reason.
fn outcome_event(job: &str, rows: u64, outcome: &Result<u64, String>) -> Value {
    match outcome {
        Ok(bytes) => json!({
            "kind": "ready", "job": job, "rows": rows, "percent": 100, "bytes": bytes,
            "download": format!("/api/exports/{job}/download"),
        }),
        Err(why) => json!({
            "kind": "failed", "job": job, "rows": rows, "percent": 0, "error": why,
        }),
    }
}

/// The job's worker is gone: the job is ready or failed.
fn mark(app: &App, job: &str, ready: bool) {
    if let Some(j) = app.jobs.lock().unwrap().get_mut(job) {
        j.state = if ready {
            JobState::Ready
        } else {
            JobState::Failed
        };
    }
}

/// The worker died without recording an outcome: record one for it ("ready"
/// if its file is in place after all, else "failed") and queue its event
/// for the owner's pages, unless the worker queued one after all.
fn finish(app: &App, job: &str, owner: &str, rows: u64, outcome: Result<u64, String>) {
    let file = file_of(app, job);
    let outcome = match outcome {
        Err(_) if file.exists() => Ok(file.metadata().map(|m| m.len()).unwrap_or(0)),
        outcome => outcome,
    };
    if let Err(why) = &outcome {
        eprintln!("export job {job} failed: {why}");
    }
    mark(app, job, outcome.is_ok());
    let event = outcome_event(job, rows, &outcome);
    let queued = app.db.with(|db| {
        Ok(outbox::enqueue_once(
            db,
            &outcome_id(job),
            &user_topic(owner),
            &event,
            true,
        )?)
    });
    match queued {
        Ok(_) => app.outbox.wake(),
        Err(e) => eprintln!("export job {job}: cannot queue its outcome: {}", e.message),
    }
}

/// `GET /api/exports/{id}/download`: the file, to its owner only.
async fn download(
    State(app): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, AppError> {
    let name = app.sessions.user(&headers)?;
    let (id, job) = owned_job(&app, &name, &id)?;
    if job["state"] == "failed" {
        return Err(AppError::new(
            StatusCode::GONE,
            format!("export job {id} failed; start a new one"),
        ));
    }
    let bytes = match tokio::fs::read(file_of(&app, &id)).await {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(AppError::new(
                StatusCode::CONFLICT,
                format!("export job {id} is not finished yet"),
            ))
        }
        Err(e) => return Err(AppError::internal(e)),
    };
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"export-{id}.csv\""),
            ),
            (header::CACHE_CONTROL, "private, no-store".to_string()),
        ],
        bytes,
    )
        .into_response())
}

// --- the worker process --------------------------------------------------

/// `eprintln!` for the worker, which must not die of a closed stderr (its
/// app, which reads it, may have been restarted): a line that cannot be
/// written is dropped.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

struct WorkerArgs {
    job: String,
    user: String,
    rows: u64,
    out: PathBuf,
    outbox: PathBuf,
}

fn worker_args(args: &[String]) -> Result<WorkerArgs, String> {
    let mut map = HashMap::new();
    let mut it = args.iter();
    while let Some(k) = it.next() {
        let v = it.next().ok_or_else(|| format!("{k} needs a value"))?;
        map.insert(k.as_str(), v.clone());
    }
    let get = |k: &str| map.get(k).cloned().ok_or_else(|| format!("missing {k}"));
    Ok(WorkerArgs {
        job: job_id(&get("--job")?).map_err(|e| e.message)?,
        user: user_name(&get("--user")?).map_err(|e| e.message)?,
        rows: get("--rows")?.parse().map_err(|e| format!("--rows: {e}"))?,
        out: PathBuf::from(get("--out")?),
        outbox: PathBuf::from(get("--outbox")?),
    })
}

/// `export worker --job ID --user NAME --rows N --out FILE --outbox DB`:
/// write the export step by step, publishing progress through
/// `HERALD_PUBLISH_URL`; then record the outcome in the app's outbox and
/// try to publish it at once. Exits 0 (ready, recorded), 1 (failed,
/// recorded) or 3 (the outcome could not be recorded).
async fn worker(args: &[String]) -> i32 {
    let w = match worker_args(args) {
        Ok(w) => w,
        Err(e) => {
            say!("usage: export worker --job ID --user NAME --rows N --out FILE --outbox DB: {e}");
            return NOT_RECORDED;
        }
    };
    let mut settings = Settings::from_env("127.0.0.1:0", "export-data");
    settings.herald_url = publish_url_from_env(&settings);
    let topic = user_topic(&w.user);
    let herald = Publisher::new(&settings, &[topic.as_str()]);
    let step_ms: u64 = std::env::var("EXPORT_STEP_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(400);
    let pid = std::process::id();
    let event = |percent: u64| json!({ "kind": "progress", "job": w.job, "percent": percent, "rows": w.rows, "worker": pid });
    let progress = Progress {
        herald: &herald,
        topic: &topic,
        missed: std::cell::Cell::new(false),
    };
    let outcome = run_job(&w, &progress, step_ms, &event)
        .await
        .map(|bytes| bytes as u64);
    if let Err(e) = &outcome {
        say!("export worker {}: {e}", w.job);
    }
    let update = outcome_event(&w.job, w.rows, &outcome);
    // Recorded first: published by the app's outbox task whatever happens
    // next (Herald down, the app restarted, this process killed).
    let id = outcome_id(&w.job);
    let recorded = rusqlite::Connection::open(&w.outbox).and_then(|db| {
        outbox::prepare(&db)?;
        outbox::enqueue_once(&db, &id, &topic, &update, true)
    });
    if let Err(e) = recorded {
        // The app reads this last line as the reason.
        say!("cannot record the outcome in {}: {e}", w.outbox.display());
        return NOT_RECORDED;
    }
    // The fast path: publish it now, under the id the outbox will use (its
    // own try then gets 409, already stored). If this fails, the outbox
    // publishes it.
    let _ = herald.send(&topic, &update.to_string(), true, &id).await;
    if outcome.is_ok() {
        RECORDED_READY
    } else {
        RECORDED_FAILED
    }
}

/// The worker's progress updates: a hint, not a promise. One Herald does
/// not take (it is down) is skipped; the outcome, published by the app
/// through its outbox, is what counts.
struct Progress<'a> {
    herald: &'a Publisher,
    topic: &'a str,
    missed: std::cell::Cell<bool>,
}

impl Progress<'_> {
    async fn tell(&self, update: Value) {
        // Bounded: a hub that takes the connection but never answers must
        // not hold the job up.
        let sent = tokio::time::timeout(
            Duration::from_secs(2),
            self.herald.publish(self.topic, &update, true),
        )
        .await;
        let missed = match sent {
            Ok(Ok(_)) => return,
            Ok(Err(e)) => e.message,
            Err(_) => "Herald did not answer within 2 s".to_string(),
        };
        if !self.missed.replace(true) {
            say!("progress not published (the job goes on): {missed}");
        }
    }
}

async fn run_job(
    w: &WorkerArgs,
    progress: &Progress<'_>,
    step_ms: u64,
    event: &impl Fn(u64) -> Value,
) -> Result<usize, String> {
    let tmp = w.out.with_extension("csv.part");
    let mut file = std::fs::File::create(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
    let mut bytes = 0usize;
    let mut write = |s: String| -> Result<(), String> {
        bytes += s.len();
        file.write_all(s.as_bytes()).map_err(|e| e.to_string())
    };
    write("row,user,value\n".to_string())?;
    progress.tell(event(0)).await;
    let mut done = 0u64;
    for step in 1..=STEPS {
        tokio::time::sleep(Duration::from_millis(step_ms)).await;
        let upto = w.rows * step / STEPS;
        while done < upto {
            done += 1;
            write(format!("{done},{},{}\n", w.user, done * done % 9973))?;
        }
        if step < STEPS {
            progress.tell(event(step * 100 / STEPS)).await;
        }
    }
    file.sync_all().map_err(|e| e.to_string())?;
    drop(file);
    std::fs::rename(&tmp, &w.out).map_err(|e| e.to_string())?;
    Ok(bytes)
}

//! `POST /.well-known/mercure/batch`: many updates in one request, a Herald
//! extension for backends that notify thousands of users at once ("your
//! digest is ready" to every user: one update per user topic).
//!
//! The body is NDJSON (`application/x-ndjson`): one JSON object per line,
//! with the fields of a publish: `topic` (a string, or an array: the first
//! is canonical, the others alternates), `data`, `private` (bool), `id`,
//! `type`, `retry` (number). Each record passes the same validation and the
//! same authorization as a single publish. The request is all or nothing:
//! the first invalid or unauthorized line is answered (400/403, naming the
//! line) and nothing is published; an id already in history refuses the
//! whole request (409). Otherwise every update is committed durably in one
//! group, delivered in request order, and the answer lists the ids, one per
//! line, in request order.

use std::collections::HashMap;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::publish::{authorize_publisher, parse_fields, read_body, require_media_type};
use super::{AppState, HttpError};
use crate::auth::AuthError;

/// One line of a batch.
#[derive(Debug, Deserialize)]
struct Record {
    topic: Topics,
    #[serde(default)]
    data: String,
    #[serde(default)]
    private: bool,
    id: Option<String>,
    #[serde(rename = "type")]
    event_type: Option<String>,
    retry: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Topics {
    One(String),
    Many(Vec<String>),
}

impl Record {
    /// The record as publish form fields, for the one validator.
    fn into_fields(self) -> Vec<(String, String)> {
        let topics = match self.topic {
            Topics::One(t) => vec![t],
            Topics::Many(ts) => ts,
        };
        let mut fields: Vec<(String, String)> =
            topics.into_iter().map(|t| ("topic".into(), t)).collect();
        fields.push(("data".into(), self.data));
        if self.private {
            fields.push(("private".into(), String::new()));
        }
        if let Some(id) = self.id {
            fields.push(("id".into(), id));
        }
        if let Some(t) = self.event_type {
            fields.push(("type".into(), t));
        }
        if let Some(r) = self.retry {
            fields.push(("retry".into(), r.to_string()));
        }
        fields
    }
}

pub async fn publish_batch(State(state): State<AppState>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    match handle(&state, &parts.headers, body).await {
        Ok(ids) => {
            let mut text = ids.join("\n");
            text.push('\n');
            ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response()
        }
        Err(e) => e.into_response(),
    }
}

/// The same status, the line named first.
fn at_line(n: usize, e: HttpError) -> HttpError {
    let mut e = e;
    e.message = format!("line {n}: {}", e.message);
    e
}

async fn handle(
    state: &AppState,
    headers: &axum::http::HeaderMap,
    body: Body,
) -> Result<Vec<String>, HttpError> {
    let grants = authorize_publisher(state, headers).await?;
    require_media_type(
        headers,
        "application/x-ndjson",
        "publish a batch with Content-Type: application/x-ndjson, one JSON object per line ({\"topic\": ..., \"data\": ..., \"private\": ..., \"id\": ..., \"type\": ..., \"retry\": ...})",
    )?;
    let cfg = &state.config;
    let body = read_body(
        state,
        headers,
        body,
        cfg.max_batch_bytes,
        "--max-batch-bytes",
    )
    .await?;
    let text = std::str::from_utf8(&body)
        .map_err(|e| HttpError::bad_request(format!("the batch is not UTF-8: {e}")))?;
    let mut updates = Vec::new();
    let mut ids: HashMap<String, usize> = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        if updates.len() >= cfg.max_batch_records {
            return Err(HttpError::too_large(format!(
                "the batch has more than {} records (--max-batch-records); split it",
                cfg.max_batch_records
            )));
        }
        let record: Record = serde_json::from_str(line)
            .map_err(|e| HttpError::bad_request(format!("line {n}: not a publish record: {e}")))?;
        let req = parse_fields(
            record.into_fields(),
            cfg.max_selectors,
            cfg.max_selector_len,
        )
        .map_err(|e| at_line(n, e))?;
        if let Some(t) = req.topics.iter().find(|t| !grants.can_publish(t)) {
            return Err(AuthError::Forbidden(format!(
                "line {n}: your token does not allow publishing to topic {t:?}; nothing of the batch was published"
            ))
            .into());
        }
        if let Some(id) = &req.id {
            if let Some(first) = ids.insert(id.clone(), n) {
                return Err(HttpError::bad_request(format!(
                    "line {n}: id {id:?} is already used on line {first}; ids must be unique"
                )));
            }
        }
        updates.push(req.into_update_with(|topic| state.hub.generate_id(topic)));
    }
    if updates.is_empty() {
        return Err(HttpError::bad_request(
            "the batch has no records: send one JSON object per line",
        ));
    }
    let stored = state.hub.publish_batch(updates).await?;
    Ok(stored.iter().map(|u| u.id.clone()).collect())
}

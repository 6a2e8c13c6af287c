//! Runs: start one (streamed or not), read it, follow its events, cancel it.

use axum::{
    Json, Router,
    extract::State,
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde::Deserialize;

use super::{
    ApiError, AppState,
    extract::{AppJson, AppQuery, CurrentUser, IdPath},
    sse,
};
use crate::{
    runs::{Multitask, StartRun},
    store::{OnDisconnect, Run},
};

/// Longest `client_message_id`, in bytes.
const MAX_CLIENT_MESSAGE_ID: usize = 200;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/conversations/{id}/runs", post(create_run))
        .route("/v1/runs/{id}", get(get_run))
        .route("/v1/runs/{id}/events", get(stream_events))
        .route("/v1/runs/{id}/cancel", post(cancel_run))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateRun {
    input: String,
    client_message_id: Option<String>,
    #[serde(default = "default_on_disconnect")]
    on_disconnect: OnDisconnect,
    #[serde(default = "default_multitask")]
    multitask: Multitask,
}

fn default_on_disconnect() -> OnDisconnect {
    OnDisconnect::Continue
}

fn default_multitask() -> Multitask {
    Multitask::Reject
}

/// Checks a user message against the limits: 422 when empty, 413 when too long.
pub fn check_input(state: &AppState, input: &str) -> Result<(), ApiError> {
    if input.trim().is_empty() {
        return Err(ApiError::Invalid(
            "the message must not be empty".to_owned(),
        ));
    }
    let max = state.limits.max_message_bytes;
    if input.len() > max {
        return Err(ApiError::PayloadTooLarge(format!(
            "the message is {} bytes; the limit is {max}",
            input.len()
        )));
    }
    Ok(())
}

/// True when the client asked for the SSE stream.
pub fn wants_stream(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("text/event-stream"))
}

/// `POST /v1/conversations/{id}/runs`: with `Accept: text/event-stream` the
/// response is the run's stream; otherwise 202 with the run (200 when
/// `client_message_id` found an existing one).
async fn create_run(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    IdPath(conversation_id): IdPath,
    headers: HeaderMap,
    AppJson(body): AppJson<CreateRun>,
) -> Result<Response, ApiError> {
    check_input(&state, &body.input)?;
    if let Some(key) = &body.client_message_id {
        if key.is_empty() || key.len() > MAX_CLIENT_MESSAGE_ID {
            return Err(ApiError::Invalid(format!(
                "client_message_id: from 1 to {MAX_CLIENT_MESSAGE_ID} bytes"
            )));
        }
    }
    let conversation = state
        .store
        .conversation(user.id, conversation_id)
        .await?
        .ok_or(ApiError::NotFound("conversation"))?;
    let started = state
        .runs
        .start(
            &conversation,
            StartRun {
                input: body.input,
                client_message_id: body.client_message_id,
                on_disconnect: body.on_disconnect,
                multitask: body.multitask,
            },
        )
        .await?;
    if wants_stream(&headers) {
        return Ok(sse::stream_run(&state, started.run.id, 0, &[]));
    }
    let status = if started.created {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(started.run)).into_response())
}

/// `GET /v1/runs/{id}`.
async fn get_run(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    IdPath(id): IdPath,
) -> Result<Json<Run>, ApiError> {
    state
        .store
        .run(user.id, id)
        .await?
        .map(Json)
        .ok_or(ApiError::NotFound("run"))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Cursor {
    after: Option<String>,
}

fn parse_cursor(text: &str, source: &str) -> Result<i64, ApiError> {
    text.trim()
        .parse::<i64>()
        .ok()
        .filter(|n| *n >= 0)
        .ok_or_else(|| ApiError::BadRequest(format!("{source} must be a non-negative integer")))
}

/// `GET /v1/runs/{id}/events`: the events after the cursor (`Last-Event-ID`
/// or `?after=N`), then live ones; 204 when the run is over and nothing is
/// left after the cursor.
async fn stream_events(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    IdPath(id): IdPath,
    headers: HeaderMap,
    AppQuery(cursor): AppQuery<Cursor>,
) -> Result<Response, ApiError> {
    let after = match (headers.get("last-event-id"), cursor.after) {
        (Some(value), _) => {
            let text = value.to_str().map_err(|_| {
                ApiError::BadRequest("Last-Event-ID must be a non-negative integer".to_owned())
            })?;
            parse_cursor(text, "Last-Event-ID")?
        }
        (None, Some(after)) => parse_cursor(&after, "after")?,
        (None, None) => 0,
    };
    let run = state
        .store
        .run(user.id, id)
        .await?
        .ok_or(ApiError::NotFound("run"))?;
    if run.status.is_terminal() && state.store.last_seq(run.id).await? <= after {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    Ok(sse::stream_run(&state, run.id, after, &[]))
}

/// `POST /v1/runs/{id}/cancel`: idempotent; the run stops at its next safe
/// point and ends `cancelled`. Answers 202 with the run as it was.
async fn cancel_run(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    IdPath(id): IdPath,
) -> Result<(StatusCode, Json<Run>), ApiError> {
    let run = state.runs.cancel(user.id, id).await.map_err(|e| match e {
        crate::runs::RunError::NotFound => ApiError::NotFound("run"),
        other => other.into(),
    })?;
    Ok((StatusCode::ACCEPTED, Json(run)))
}

//! Runs: start one (streamed or not), read it, follow its events, cancel it.

use std::time::Instant;

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
    extract::{AppJson, AppQuery, CurrentCaller, CurrentUser, IdPath},
    openapi::{
        BadRequest, Conflict, NotFound, PayloadTooLarge, TooManyRuns, Unauthorized, Unavailable,
        Unprocessable, UnsupportedMediaType,
    },
    wire::{self, NativeEncoder, SseMessage, Start, sse_response},
};
use crate::{
    runs::{ConversationRef, Multitask, StartRun, Started},
    store::{OnDisconnect, Run},
};

/// Longest `client_message_id`, in bytes.
const MAX_CLIENT_MESSAGE_ID: usize = 200;

pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/v1/conversations/{id}/runs",
            get(list_runs).post(create_run),
        )
        .route("/v1/runs/{id}", get(get_run))
        .route("/v1/runs/{id}/events", get(stream_events))
        .route("/v1/runs/{id}/cancel", post(cancel_run))
}

/// A user message that starts a run.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateRun {
    /// The user's message: not blank, at most the server's message limit
    /// (32 KiB by default; 413 beyond).
    #[schema(min_length = 1, pattern = r"\S")]
    input: String,
    /// An idempotency key, 1 to 200 bytes: the same key with the same input
    /// on the same conversation returns the existing run (200) and stores no
    /// second message; another input under a key already used is 422.
    #[schema(min_length = 1, max_length = 200)]
    client_message_id: Option<String>,
    /// What the run does when its last subscriber disconnects.
    #[serde(default = "default_on_disconnect")]
    #[schema(default = "continue")]
    on_disconnect: OnDisconnect,
    /// What the run does when the conversation already has an active one.
    #[serde(default = "default_multitask")]
    #[schema(default = "reject")]
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
fn wants_stream(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("text/event-stream"))
}

/// `POST /v1/conversations/{id}/runs`: with `Accept: text/event-stream` the
/// response is the run's stream; otherwise 202 with the run (200 when
/// `client_message_id` found an existing one).
#[utoipa::path(
    post,
    path = "/v1/conversations/{id}/runs",
    tag = "runs",
    summary = "Start a run: the run, or with `Accept: text/event-stream` its event stream",
    description = "Stores the user's message and starts a run on the conversation. With \
        `Accept: text/event-stream` the response is the run's event stream (see `RunEvent`), \
        ending with exactly one `done`; otherwise 202 with the run, or 200 with the existing \
        run when `client_message_id` names one.",
    params(("id" = Uuid, Path, description = "The conversation's ID.")),
    request_body = CreateRun,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "With `Accept: text/event-stream`: the run's events, each \
            SSE message's `data` a `RunEvent`. Otherwise: the existing run that \
            `client_message_id` named.",
            headers(
                ("X-Run-Id" = Uuid, description = "The run's ID (streams)."),
            ),
            content(
                (Run = "application/json"),
                (SseMessage = "text/event-stream"),
            ),
        ),
        (status = 202, description = "The run, started or queued.", body = Run),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = Unprocessable),
        (status = 429, response = TooManyRuns),
        (status = 503, response = Unavailable),
    ),
)]
async fn create_run(
    State(state): State<AppState>,
    CurrentCaller(caller): CurrentCaller,
    IdPath(conversation_id): IdPath,
    headers: HeaderMap,
    AppJson(body): AppJson<CreateRun>,
) -> Result<Response, ApiError> {
    let received = Instant::now();
    check_input(&state, &body.input)?;
    if let Some(key) = &body.client_message_id
        && (key.is_empty() || key.len() > MAX_CLIENT_MESSAGE_ID)
    {
        return Err(ApiError::Invalid(format!(
            "client_message_id: from 1 to {MAX_CLIENT_MESSAGE_ID} bytes"
        )));
    }
    let started = state
        .runs
        .start(
            caller.user.id,
            ConversationRef::Existing {
                id: conversation_id,
                kind: None,
            },
            StartRun {
                input: body.input,
                client_message_id: body.client_message_id,
                on_disconnect: body.on_disconnect,
                multitask: body.multitask,
                caller: caller.for_tools(),
                replaces: None,
            },
        )
        .await?;
    Ok(started_response(&state, started, &headers, received))
}

/// The answer to a request that started a run (or found it by its key):
/// with `Accept: text/event-stream` the run's event stream, otherwise 202
/// with the run (200 for one found). `received` is when the request came in.
pub fn started_response(
    state: &AppState,
    started: Started,
    headers: &HeaderMap,
    received: Instant,
) -> Response {
    if wants_stream(headers) {
        let run_id = started.run.id;
        let events = wire::subscribe(state, run_id, Start::of_started(started.live, received));
        return sse_response(NativeEncoder, run_id, events, &state.streams, &[]);
    }
    let status = if started.created {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    (status, Json(started.run)).into_response()
}

/// Which runs of a conversation to list.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct RunPage {
    /// How many, from 1 to 100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    limit: Option<u32>,
    /// The `next_before` of the previous page: runs older than this one.
    before: Option<uuid::Uuid>,
}

/// A page of a conversation's runs.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
struct Runs {
    /// The runs, newest first.
    data: Vec<Run>,
    /// Pass as `before` for the next page; null on the last.
    next_before: Option<uuid::Uuid>,
}

/// `GET /v1/conversations/{id}/runs?limit=&before=`: newest first.
#[utoipa::path(
    get,
    path = "/v1/conversations/{id}/runs",
    tag = "runs",
    summary = "List a conversation's runs, newest first",
    params(("id" = Uuid, Path, description = "The conversation's ID."), RunPage),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "A page of the conversation's runs.", body = Runs),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 422, response = Unprocessable),
        (status = 503, response = Unavailable),
    ),
)]
async fn list_runs(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    IdPath(id): IdPath,
    AppQuery(page): AppQuery<RunPage>,
) -> Result<Json<Runs>, ApiError> {
    let limit = page.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::Invalid("limit: from 1 to 100".to_owned()));
    }
    if state.store.conversation(user.id, id).await?.is_none() {
        return Err(ApiError::NotFound("conversation"));
    }
    let data = state
        .store
        .conversation_runs(id, page.before, limit)
        .await?;
    let next_before = (data.len() == limit as usize)
        .then(|| data.last().map(|r| r.id))
        .flatten();
    Ok(Json(Runs { data, next_before }))
}

/// `GET /v1/runs/{id}`.
#[utoipa::path(
    get,
    path = "/v1/runs/{id}",
    tag = "runs",
    summary = "Read a run",
    params(("id" = Uuid, Path, description = "The run's ID.")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The run and its status; while it is \
            `requires_action`, the calls it waits on (`pending_approvals`).", body = Run),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 503, response = Unavailable),
    ),
)]
async fn get_run(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    IdPath(id): IdPath,
) -> Result<Json<Run>, ApiError> {
    let run = state
        .store
        .run(user.id, id)
        .await?
        .ok_or(ApiError::NotFound("run"))?;
    super::approvals::with_approvals(&state, run)
        .await
        .map(Json)
}

/// Where to resume a run's events.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct Cursor {
    /// Send the events after this `seq` (default 0: all). `Last-Event-ID`
    /// wins when both are sent.
    #[param(value_type = Option<i64>, minimum = 0, maximum = 9_223_372_036_854_775_807_i64)]
    after: Option<String>,
}

/// The resume cursor as a header; read from the `HeaderMap` by the handler.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
#[expect(
    dead_code,
    reason = "describes the `Last-Event-ID` header for the OpenAPI document"
)]
struct ResumeHeaders {
    /// The `seq` of the last event received, as `EventSource` sends it on
    /// reconnecting; wins over `after`.
    #[param(rename = "Last-Event-ID", value_type = i64, required = false, minimum = 0, maximum = 9_223_372_036_854_775_807_i64)]
    last_event_id: Option<String>,
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
#[utoipa::path(
    get,
    path = "/v1/runs/{id}/events",
    tag = "runs",
    summary = "Follow a run's events from a cursor",
    description = "Replays the events after the cursor, then follows the run live, with no \
        gap and no duplicate, ending after `done`.",
    params(
        ("id" = Uuid, Path, description = "The run's ID."),
        ResumeHeaders,
        Cursor,
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The run's events after the cursor; each SSE message's \
            `data` is a `RunEvent`.",
            headers(("X-Run-Id" = Uuid, description = "The run's ID.")),
            content((SseMessage = "text/event-stream")),
        ),
        (status = 204, description = "The run is over and no event is left after the cursor."),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 503, response = Unavailable),
    ),
)]
async fn stream_events(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    IdPath(id): IdPath,
    headers: HeaderMap,
    AppQuery(cursor): AppQuery<Cursor>,
) -> Result<Response, ApiError> {
    // Both are checked even when both are sent: a bad cursor is never
    // silently ignored.
    let query = cursor
        .after
        .map(|after| parse_cursor(&after, "after"))
        .transpose()?;
    let header = headers
        .get("last-event-id")
        .map(|value| {
            value
                .to_str()
                .map_err(|_| {
                    ApiError::BadRequest("Last-Event-ID must be a non-negative integer".to_owned())
                })
                .and_then(|text| parse_cursor(text, "Last-Event-ID"))
        })
        .transpose()?;
    let after = header.or(query).unwrap_or(0);
    let run = state
        .store
        .run(user.id, id)
        .await?
        .ok_or(ApiError::NotFound("run"))?;
    if run.status.is_terminal() && state.store.last_seq(run.id).await? <= after {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let events = wire::subscribe(&state, run.id, Start::After(after));
    Ok(sse_response(
        NativeEncoder,
        run.id,
        events,
        &state.streams,
        &[],
    ))
}

/// `POST /v1/runs/{id}/cancel`: idempotent; the run stops at its next safe
/// point and ends `cancelled`. Answers 202 with the run as it was.
#[utoipa::path(
    post,
    path = "/v1/runs/{id}/cancel",
    tag = "runs",
    summary = "Cancel a run (idempotent)",
    params(("id" = Uuid, Path, description = "The run's ID.")),
    security(("bearer" = [])),
    responses(
        (status = 202, description = "Cancel asked for; the run as it was. It stops at its \
            next safe point and ends `cancelled`; an ended run is returned as it is.", body = Run),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 503, response = Unavailable),
    ),
)]
async fn cancel_run(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    IdPath(id): IdPath,
) -> Result<(StatusCode, Json<Run>), ApiError> {
    let run = state.runs.cancel(user.id, id).await?;
    Ok((StatusCode::ACCEPTED, Json(run)))
}

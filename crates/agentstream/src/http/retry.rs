//! Another answer: `POST /v1/runs/{id}/retry` starts a run that answers the
//! conversation's last question again, or, with `input`, answers an edited
//! question instead.

use std::time::Instant;

use axum::{
    Router,
    body::Bytes,
    extract::{State, rejection::BytesRejection},
    http::{HeaderMap, StatusCode},
    response::Response,
    routing::post,
};
use serde::Deserialize;

use super::{
    ApiError, AppState,
    extract::{CurrentCaller, IdPath, ObjectOnly},
    openapi::{
        BadRequest, Conflict, NotFound, PayloadTooLarge, TooManyRuns, Unauthorized, Unavailable,
        Unprocessable, UnsupportedMediaType,
    },
    runs::{check_input, started_response},
    wire::SseMessage,
};
use crate::{
    runs::{ConversationRef, Multitask, Replace, StartRun},
    store::{OnDisconnect, Run},
};

/// The body, which may be empty or JSON `null` (both: no options): 413 when
/// too large, 400 when it is not JSON, 422 when a field is wrong.
fn retry_body(body: Result<Bytes, BytesRejection>) -> Result<Retry, ApiError> {
    let body = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge("the request body is too large".to_owned())
        } else {
            ApiError::BadRequest(rejection.body_text())
        }
    })?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Retry::default());
    }
    serde_json::from_slice::<Option<ObjectOnly<Retry>>>(&body)
        .map(|retry| retry.map(|ObjectOnly(retry)| retry).unwrap_or_default())
        .map_err(|e| {
            if e.is_data() {
                ApiError::Invalid(e.to_string())
            } else {
                ApiError::BadRequest(e.to_string())
            }
        })
}

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/runs/{id}/retry", post(retry))
}

/// What to answer again.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct Retry {
    /// The edited question: the last one is superseded with its reply, and
    /// the new run answers this instead. Absent: the new run answers the
    /// same question again.
    #[schema(min_length = 1, pattern = r"\S")]
    input: Option<String>,
    /// What the new run does when its last subscriber disconnects.
    #[schema(default = "continue")]
    on_disconnect: Option<OnDisconnect>,
}

/// `POST /v1/runs/{id}/retry`: a new run in the run's conversation, with
/// the run's reply (and with `input` its question) superseded.
#[utoipa::path(
    post,
    path = "/v1/runs/{id}/retry",
    tag = "runs",
    summary = "Answer the conversation's last question again, or an edited one",
    description = "Only the conversation's last run, once it has ended (409 otherwise). The \
        run's reply stays in the transcript marked `superseded` and is never sent to the \
        model again; the new run answers the same question (its own messages are the reply \
        only), or with `input` the edited question, which supersedes the last one. With \
        `Accept: text/event-stream` the response is the new run's event stream; otherwise 202 \
        with the new run. The body may be empty.",
    params(("id" = Uuid, Path, description = "The run to answer again: the conversation's \
        last.")),
    request_body(content = Option<Retry>, description = "Optional: an empty body (or `null`) answers the same question again."),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "With `Accept: text/event-stream`: the new run's events.",
            headers(("X-Run-Id" = Uuid, description = "The new run's ID.")),
            content((SseMessage = "text/event-stream")),
        ),
        (status = 202, description = "The new run.", body = Run),
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
async fn retry(
    State(state): State<AppState>,
    CurrentCaller(caller): CurrentCaller,
    IdPath(run_id): IdPath,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let received = Instant::now();
    let body = retry_body(body)?;
    if let Some(input) = &body.input {
        check_input(&state, input)?;
    }
    let run = state
        .store
        .run(caller.user.id, run_id)
        .await?
        .ok_or(ApiError::NotFound("run"))?;
    let question = body.input.is_some();
    let started = state
        .runs
        .start(
            caller.user.id,
            ConversationRef::Existing {
                id: run.conversation_id,
                kind: None,
            },
            StartRun {
                input: body.input.unwrap_or_default(),
                client_message_id: None,
                on_disconnect: body.on_disconnect.unwrap_or(OnDisconnect::Continue),
                multitask: Multitask::Reject,
                caller: caller.for_tools(),
                replaces: Some(Replace { run_id, question }),
            },
        )
        .await?;
    Ok(started_response(&state, started, &headers, received))
}

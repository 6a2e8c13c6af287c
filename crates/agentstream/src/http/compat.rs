//! The seed's routes, kept so its clients work unchanged:
//! `POST /api/v1/chat/stream` and `POST /api/v1/chat/onboarding/stream`.

use std::time::Instant;

use axum::{Router, extract::State, response::Response, routing::post};
use serde::Deserialize;
use uuid::Uuid;

use super::{
    ApiError, AppState,
    extract::{AppJson, CurrentCaller},
    openapi::{
        BadRequest, Conflict, NotFound, PayloadTooLarge, TooManyRuns, Unauthorized, Unavailable,
        Unprocessable, UnsupportedMediaType,
    },
    runs::check_input,
    wire::{self, NativeEncoder, SseMessage, Start, sse_response},
};
use crate::{
    runs::{ConversationRef, Multitask, StartRun},
    store::{ConversationKind, OnDisconnect},
};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/chat/stream", post(chat_stream))
        .route("/api/v1/chat/onboarding/stream", post(onboarding_stream))
}

/// The seed's request: a message, and the conversation to continue.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
struct SeedMessage {
    /// The user's message: not blank, at most the server's message limit
    /// (32 KiB by default; 413 beyond).
    #[schema(min_length = 1, pattern = r"\S")]
    message: String,
    /// The conversation to continue (of the route's kind); absent or null
    /// starts a new one.
    conversation_id: Option<Uuid>,
}

/// `POST /api/v1/chat/stream`: a run of the chat agent, streamed.
#[utoipa::path(
    post,
    path = "/api/v1/chat/stream",
    tag = "seed",
    summary = "Send a chat message and stream the reply",
    request_body = SeedMessage,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The run's events; each SSE message's `data` is a \
            `RunEvent`. The conversation is created when absent.",
            headers(
                ("X-Run-Id" = Uuid, description = "The run's ID."),
                ("X-Conversation-Id" = Uuid, description = "The conversation's ID."),
            ),
            content((SseMessage = "text/event-stream")),
        ),
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
async fn chat_stream(
    state: State<AppState>,
    user: CurrentCaller,
    body: AppJson<SeedMessage>,
) -> Result<Response, ApiError> {
    seed_stream(state, user, body, ConversationKind::Chat).await
}

/// `POST /api/v1/chat/onboarding/stream`: a run of the onboarding agent, streamed.
#[utoipa::path(
    post,
    path = "/api/v1/chat/onboarding/stream",
    tag = "seed",
    summary = "Send an onboarding answer and stream the reply",
    request_body = SeedMessage,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The run's events; each SSE message's `data` is a \
            `RunEvent`. The conversation is created when absent.",
            headers(
                ("X-Run-Id" = Uuid, description = "The run's ID."),
                ("X-Conversation-Id" = Uuid, description = "The conversation's ID."),
            ),
            content((SseMessage = "text/event-stream")),
        ),
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
async fn onboarding_stream(
    state: State<AppState>,
    user: CurrentCaller,
    body: AppJson<SeedMessage>,
) -> Result<Response, ApiError> {
    seed_stream(state, user, body, ConversationKind::Onboarding).await
}

/// Starts a run on the given conversation, or on a new one of `kind`, and
/// streams it. The conversation's ID is in the `X-Conversation-Id` header
/// and in the `run.started` event.
async fn seed_stream(
    State(state): State<AppState>,
    CurrentCaller(caller): CurrentCaller,
    AppJson(body): AppJson<SeedMessage>,
    kind: ConversationKind,
) -> Result<Response, ApiError> {
    let received = Instant::now();
    check_input(&state, &body.message)?;
    let conversation = match body.conversation_id {
        Some(id) => ConversationRef::Existing {
            id,
            kind: Some(kind),
        },
        // Created in the run's own transaction: a run refused leaves no
        // empty conversation behind.
        None => ConversationRef::New(kind),
    };
    let started = state
        .runs
        .start(
            caller.user.id,
            conversation,
            StartRun {
                input: body.message,
                client_message_id: None,
                on_disconnect: OnDisconnect::Continue,
                multitask: Multitask::Reject,

                caller: caller.for_tools(),
                replaces: None,
            },
        )
        .await?;
    let run_id = started.run.id;
    let events = wire::subscribe(&state, run_id, Start::of_started(started.live, received));
    Ok(sse_response(
        NativeEncoder,
        run_id,
        events,
        &state.streams,
        &[("x-conversation-id", started.conversation.id.to_string())],
    ))
}

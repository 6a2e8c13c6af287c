//! The seed's routes, kept so its clients work unchanged:
//! `POST /api/v1/chat/stream` and `POST /api/v1/chat/onboarding/stream`.

use axum::{Router, extract::State, response::Response, routing::post};
use serde::Deserialize;
use uuid::Uuid;

use super::{
    ApiError, AppState,
    extract::{AppJson, CurrentUser},
    runs::check_input,
    sse,
};
use crate::{
    runs::{Multitask, StartRun},
    store::{ConversationKind, OnDisconnect},
};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/chat/stream", post(chat_stream))
        .route("/api/v1/chat/onboarding/stream", post(onboarding_stream))
}

#[derive(Debug, Deserialize)]
struct SeedMessage {
    message: String,
    conversation_id: Option<Uuid>,
}

async fn chat_stream(
    state: State<AppState>,
    user: CurrentUser,
    body: AppJson<SeedMessage>,
) -> Result<Response, ApiError> {
    seed_stream(state, user, body, ConversationKind::Chat).await
}

async fn onboarding_stream(
    state: State<AppState>,
    user: CurrentUser,
    body: AppJson<SeedMessage>,
) -> Result<Response, ApiError> {
    seed_stream(state, user, body, ConversationKind::Onboarding).await
}

/// Starts a run on the given conversation, or on a new one of `kind`, and
/// streams it. The conversation's ID is in the `X-Conversation-Id` header
/// and in the `run.started` event.
async fn seed_stream(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    AppJson(body): AppJson<SeedMessage>,
    kind: ConversationKind,
) -> Result<Response, ApiError> {
    check_input(&state, &body.message)?;
    let conversation = match body.conversation_id {
        Some(id) => {
            let conversation = state
                .store
                .conversation(user.id, id)
                .await?
                .ok_or(ApiError::NotFound("conversation"))?;
            if conversation.kind != kind {
                return Err(ApiError::Invalid(format!(
                    "conversation_id names a {} conversation; this route serves {kind} ones",
                    conversation.kind
                )));
            }
            conversation
        }
        None => state.store.create_conversation(user.id, kind, None).await?,
    };
    let started = state
        .runs
        .start(
            &conversation,
            StartRun {
                input: body.message,
                client_message_id: None,
                on_disconnect: OnDisconnect::Continue,
                multitask: Multitask::Reject,
            },
        )
        .await?;
    Ok(sse::stream_run(
        &state,
        started.run.id,
        0,
        &[("x-conversation-id", conversation.id.to_string())],
    ))
}

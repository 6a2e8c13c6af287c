//! Conversations and their transcripts.

use axum::{Json, Router, extract::State, http::StatusCode, routing::get};
use serde::Deserialize;
use uuid::Uuid;

use super::{
    ApiError, AppState,
    extract::{AppJson, AppQuery, CurrentUser, IdPath},
};
use crate::store::{Conversation, ConversationKind, Message};

/// Longest conversation title, in characters.
const MAX_TITLE_CHARS: usize = 200;
/// Most conversations one page lists.
const MAX_PAGE: u32 = 100;

pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/v1/conversations",
            get(list_conversations).post(create_conversation),
        )
        .route(
            "/v1/conversations/{id}",
            get(get_conversation).delete(delete_conversation),
        )
        .route("/v1/conversations/{id}/messages", get(list_messages))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateConversation {
    kind: ConversationKind,
    title: Option<String>,
}

/// `POST /v1/conversations`.
async fn create_conversation(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    AppJson(body): AppJson<CreateConversation>,
) -> Result<(StatusCode, Json<Conversation>), ApiError> {
    let title = body
        .title
        .as_deref()
        .map(str::trim)
        .filter(|t| !t.is_empty());
    if title.is_some_and(|t| t.chars().count() > MAX_TITLE_CHARS) {
        return Err(ApiError::Invalid(format!(
            "title: at most {MAX_TITLE_CHARS} characters"
        )));
    }
    let conversation = state
        .store
        .create_conversation(user.id, body.kind, title)
        .await?;
    Ok((StatusCode::CREATED, Json(conversation)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Page {
    limit: Option<u32>,
    before: Option<Uuid>,
}

/// A page of conversations and the cursor of the next.
#[derive(Debug, serde::Serialize)]
struct ConversationPage {
    data: Vec<Conversation>,
    /// Pass as `before` for the next page; null on the last.
    next_before: Option<Uuid>,
}

/// `GET /v1/conversations?limit=&before=`: the caller's, newest first.
async fn list_conversations(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    AppQuery(page): AppQuery<Page>,
) -> Result<Json<ConversationPage>, ApiError> {
    let limit = page.limit.unwrap_or(20);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::Invalid(format!("limit: from 1 to {MAX_PAGE}")));
    }
    let data = state
        .store
        .list_conversations(user.id, page.before, limit)
        .await?;
    let next_before = (data.len() == limit as usize)
        .then(|| data.last().map(|c| c.id))
        .flatten();
    Ok(Json(ConversationPage { data, next_before }))
}

/// `GET /v1/conversations/{id}`.
async fn get_conversation(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    IdPath(id): IdPath,
) -> Result<Json<Conversation>, ApiError> {
    state
        .store
        .conversation(user.id, id)
        .await?
        .map(Json)
        .ok_or(ApiError::NotFound("conversation"))
}

/// `DELETE /v1/conversations/{id}`: with its messages, runs and events.
/// Refused (409) while a run is active, so no run loses its conversation.
async fn delete_conversation(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    IdPath(id): IdPath,
) -> Result<StatusCode, ApiError> {
    if state.store.conversation(user.id, id).await?.is_none() {
        return Err(ApiError::NotFound("conversation"));
    }
    if state.store.has_active_run(id).await? {
        return Err(ApiError::Conflict(
            "the conversation has an active run; cancel it first".to_owned(),
        ));
    }
    if state.store.delete_conversation(user.id, id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound("conversation"))
    }
}

#[derive(Debug, serde::Serialize)]
struct Messages {
    data: Vec<Message>,
}

/// `GET /v1/conversations/{id}/messages`: the transcript with tool calls and
/// results, each message with its status.
async fn list_messages(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    IdPath(id): IdPath,
) -> Result<Json<Messages>, ApiError> {
    if state.store.conversation(user.id, id).await?.is_none() {
        return Err(ApiError::NotFound("conversation"));
    }
    Ok(Json(Messages {
        data: state.store.messages(id).await?,
    }))
}

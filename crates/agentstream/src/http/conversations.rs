//! Conversations and their transcripts.

use axum::{Json, Router, extract::State, http::StatusCode, routing::get};
use serde::Deserialize;
use uuid::Uuid;

use super::{
    ApiError, AppState,
    extract::{AppJson, AppQuery, CurrentUser, IdPath},
    openapi::{
        BadRequest, Conflict, NotFound, PayloadTooLarge, Unauthorized, Unavailable, Unprocessable,
        UnsupportedMediaType,
    },
};
use crate::store::{Conversation, ConversationKind, Deletion, ListCursor};

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
            get(get_conversation)
                .patch(rename_conversation)
                .delete(delete_conversation),
        )
}

/// A new conversation.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateConversation {
    /// The agent that answers, by name (`GET /v1/agents` lists them;
    /// default: the agent of `kind`, else `chat`).
    #[schema(example = "chat")]
    agent: Option<String>,
    /// The older way to pick the agent: `chat` or `onboarding`; ignored
    /// when `agent` is given (the conversation's `kind` follows its agent).
    kind: Option<ConversationKind>,
    /// An optional title, up to 200 characters; blank means none.
    #[schema(max_length = 200)]
    title: Option<String>,
}

/// `POST /v1/conversations`.
#[utoipa::path(
    post,
    path = "/v1/conversations",
    tag = "conversations",
    summary = "Create a conversation",
    request_body = CreateConversation,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "The new conversation.", body = Conversation),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = Unprocessable),
        (status = 503, response = Unavailable),
    ),
)]
async fn create_conversation(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    AppJson(body): AppJson<CreateConversation>,
) -> Result<(StatusCode, Json<Conversation>), ApiError> {
    let title = checked_title(body.title.as_deref())?;
    let (kind, agent) = agent_of(&state, body.agent, body.kind)?;
    let conversation = state
        .store
        .create_conversation(user.id, kind, &agent, title.as_deref())
        .await?;
    Ok((StatusCode::CREATED, Json(conversation)))
}

/// A title as sent: at most 200 characters (422 beyond, measured before
/// trimming, as the contract's `maxLength` is), trimmed; blank is none.
fn checked_title(title: Option<&str>) -> Result<Option<String>, ApiError> {
    if title.is_some_and(|t| t.chars().count() > MAX_TITLE_CHARS) {
        return Err(ApiError::Invalid(format!(
            "title: at most {MAX_TITLE_CHARS} characters"
        )));
    }
    Ok(title
        .map(crate::text::clean)
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty()))
}

/// A conversation's new title.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct RenameConversation {
    /// The title, up to 200 characters; null or blank clears it (the
    /// conversation keeps no title: the next run does not name it again).
    #[schema(max_length = 200)]
    title: Option<String>,
}

/// `PATCH /v1/conversations/{id}`.
#[utoipa::path(
    patch,
    path = "/v1/conversations/{id}",
    tag = "conversations",
    summary = "Rename a conversation",
    params(("id" = Uuid, Path, description = "The conversation's ID.")),
    request_body = RenameConversation,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The renamed conversation.", body = Conversation),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = Unprocessable),
        (status = 503, response = Unavailable),
    ),
)]
async fn rename_conversation(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    IdPath(id): IdPath,
    AppJson(body): AppJson<RenameConversation>,
) -> Result<Json<Conversation>, ApiError> {
    let title = checked_title(body.title.as_deref())?;
    state
        .store
        .rename_conversation(user.id, id, title.as_deref())
        .await?
        .map(Json)
        .ok_or(ApiError::NotFound("conversation"))
}

/// The conversation's kind and agent from what the client named: the
/// agent, else the agent of the kind, else `chat`; 422 for an agent that
/// does not exist (the message lists those that do).
fn agent_of(
    state: &AppState,
    agent: Option<String>,
    kind: Option<ConversationKind>,
) -> Result<(ConversationKind, String), ApiError> {
    let agents = state.runs.agents();
    let agent = agent.unwrap_or_else(|| kind.unwrap_or(ConversationKind::Chat).as_str().to_owned());
    if agents.get(&agent).is_none() {
        return Err(ApiError::Invalid(format!(
            "agent: there is no agent named {agent:?}; the agents are {}",
            agents.names()
        )));
    }
    Ok((ConversationKind::of_agent(&agent), agent))
}

/// Which page of conversations.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct Page {
    /// How many, from 1 to 100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    limit: Option<u32>,
    /// The `next_cursor` of the previous page (opaque text).
    #[param(max_length = 100)]
    cursor: Option<String>,
    /// Only the conversations whose title contains this text, in any case.
    #[param(max_length = 200)]
    q: Option<String>,
}

/// A page of conversations and the cursor of the next.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
struct ConversationPage {
    /// The conversations, latest activity first.
    data: Vec<Conversation>,
    /// Pass as `cursor` for the next page; null on the last.
    next_cursor: Option<String>,
}

/// A page cursor: the last conversation's `updated_at` and ID.
fn parse_cursor(text: &str) -> Result<ListCursor, ApiError> {
    let invalid = || ApiError::Invalid("cursor: pass a next_cursor this route gave".to_owned());
    let (updated_at, id) = text.rsplit_once('_').ok_or_else(invalid)?;
    time::OffsetDateTime::parse(updated_at, &time::format_description::well_known::Rfc3339)
        .map_err(|_| invalid())?;
    Ok(ListCursor {
        updated_at: updated_at.to_owned(),
        id: Uuid::parse_str(id).map_err(|_| invalid())?,
    })
}

/// `GET /v1/conversations?limit=&cursor=&q=`: the caller's, latest
/// activity first.
#[utoipa::path(
    get,
    path = "/v1/conversations",
    tag = "conversations",
    summary = "List the caller's conversations, latest activity first",
    description = "Each with its agent, title, last activity (`updated_at`) and the start of \
        its last message (`preview`). Pages follow `next_cursor`, which stays valid while \
        conversations move up the list: a page neither repeats nor skips one that did not \
        move. `q` keeps those whose title contains it, in any case.",
    params(Page),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "A page of conversations.", body = ConversationPage),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 422, response = Unprocessable),
        (status = 503, response = Unavailable),
    ),
)]
async fn list_conversations(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    AppQuery(page): AppQuery<Page>,
) -> Result<Json<ConversationPage>, ApiError> {
    let limit = page.limit.unwrap_or(20);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::Invalid(format!("limit: from 1 to {MAX_PAGE}")));
    }
    let cursor = page.cursor.as_deref().map(parse_cursor).transpose()?;
    let search = page.q.as_deref().map(str::trim).filter(|q| !q.is_empty());
    if search.is_some_and(|q| q.chars().count() > MAX_TITLE_CHARS) {
        return Err(ApiError::Invalid(format!(
            "q: at most {MAX_TITLE_CHARS} characters"
        )));
    }
    let search = search.map(crate::text::clean);
    let data = state
        .store
        .list_conversations(user.id, cursor.as_ref(), search.as_deref(), limit)
        .await?;
    let next_cursor = (data.len() == limit as usize)
        .then(|| data.last().map(|c| format!("{}_{}", c.updated_at, c.id)))
        .flatten();
    Ok(Json(ConversationPage { data, next_cursor }))
}

/// `GET /v1/conversations/{id}`.
#[utoipa::path(
    get,
    path = "/v1/conversations/{id}",
    tag = "conversations",
    summary = "Read a conversation",
    params(("id" = Uuid, Path, description = "The conversation's ID.")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The conversation.", body = Conversation),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 503, response = Unavailable),
    ),
)]
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
#[utoipa::path(
    delete,
    path = "/v1/conversations/{id}",
    tag = "conversations",
    summary = "Delete a conversation with its messages, runs and events",
    params(("id" = Uuid, Path, description = "The conversation's ID.")),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Deleted."),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        (status = 503, response = Unavailable),
    ),
)]
async fn delete_conversation(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    IdPath(id): IdPath,
) -> Result<StatusCode, ApiError> {
    match state.store.delete_conversation(user.id, id).await? {
        Deletion::Deleted => Ok(StatusCode::NO_CONTENT),
        Deletion::NotFound => Err(ApiError::NotFound("conversation")),
        Deletion::ActiveRun => Err(ApiError::Conflict(
            "the conversation has an active run; cancel it first".to_owned(),
        )),
    }
}

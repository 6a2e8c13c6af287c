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
    // Measured before trimming, as the contract's `maxLength` is.
    if body
        .title
        .as_deref()
        .is_some_and(|t| t.chars().count() > MAX_TITLE_CHARS)
    {
        return Err(ApiError::Invalid(format!(
            "title: at most {MAX_TITLE_CHARS} characters"
        )));
    }
    let title = body
        .title
        .as_deref()
        .map(crate::text::clean)
        .filter(|t| !t.trim().is_empty());
    let (kind, agent) = agent_of(&state, body.agent, body.kind)?;
    let conversation = state
        .store
        .create_conversation(user.id, kind, &agent, title.as_deref().map(str::trim))
        .await?;
    Ok((StatusCode::CREATED, Json(conversation)))
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
    /// The `next_before` of the previous page: conversations older than this one.
    before: Option<Uuid>,
}

/// A page of conversations and the cursor of the next.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
struct ConversationPage {
    /// The conversations, newest first.
    data: Vec<Conversation>,
    /// Pass as `before` for the next page; null on the last.
    next_before: Option<Uuid>,
}

/// `GET /v1/conversations?limit=&before=`: the caller's, newest first.
#[utoipa::path(
    get,
    path = "/v1/conversations",
    tag = "conversations",
    summary = "List the caller's conversations, newest first",
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

/// A conversation's transcript.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
struct Messages {
    /// The messages in the order they were written.
    data: Vec<Message>,
}

/// `GET /v1/conversations/{id}/messages`: the transcript with tool calls and
/// results, each message with its status.
#[utoipa::path(
    get,
    path = "/v1/conversations/{id}/messages",
    tag = "conversations",
    summary = "Read a conversation's transcript",
    params(("id" = Uuid, Path, description = "The conversation's ID.")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The transcript: user, assistant and tool messages.", body = Messages),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 503, response = Unavailable),
    ),
)]
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

//! A conversation's transcript: its messages, whole or a page at a time,
//! and its export as JSON or Markdown.

use axum::{
    Json, Router,
    extract::State,
    http::header,
    response::{IntoResponse, Response},
    routing::get,
};
use serde::Deserialize;
use uuid::Uuid;

use super::{
    ApiError, AppState,
    extract::{AppQuery, CurrentUser, IdPath},
    openapi::{BadRequest, NotFound, Unauthorized, Unavailable, Unprocessable},
};
use crate::store::{Conversation, Message, Role, Run};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/conversations/{id}/messages", get(list_messages))
        .route("/v1/conversations/{id}/export", get(export))
}

/// Which messages of a transcript to read.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct MessagePage {
    /// Page the transcript: at most this many messages, from 1 to 500
    /// (default 50 with `before`). Without it and `before`, the whole
    /// transcript comes at once.
    #[param(minimum = 1, maximum = 500)]
    limit: Option<u32>,
    /// The `next_before` of the previous page: the messages before this one.
    before: Option<Uuid>,
}

/// A transcript, or a page of it.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
struct Messages {
    /// The messages in transcript order, oldest first: run by run, each
    /// run's question, then its reply's steps and tool results.
    data: Vec<Message>,
    /// With `limit`: pass as `before` for the page of older messages; null
    /// when none is older (and without `limit`).
    next_before: Option<Uuid>,
}

/// `GET /v1/conversations/{id}/messages?limit=&before=`: the transcript with
/// tool calls and results, each message with its status and run.
#[utoipa::path(
    get,
    path = "/v1/conversations/{id}/messages",
    tag = "conversations",
    summary = "Read a conversation's transcript, whole or a page at a time",
    description = "Without `limit`, every message. With it, the newest page first: the \
        `limit` latest messages, oldest first within the page, and `next_before` for the page \
        before them, until it is null.",
    params(("id" = Uuid, Path, description = "The conversation's ID."), MessagePage),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The transcript: user, assistant and tool messages.", body = Messages),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 422, response = Unprocessable),
        (status = 503, response = Unavailable),
    ),
)]
async fn list_messages(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    IdPath(id): IdPath,
    AppQuery(page): AppQuery<MessagePage>,
) -> Result<Json<Messages>, ApiError> {
    if state.store.conversation(user.id, id).await?.is_none() {
        return Err(ApiError::NotFound("conversation"));
    }
    let limit = match (page.limit, page.before) {
        (Some(limit), _) => limit,
        (None, Some(_)) => 50,
        (None, None) => {
            return Ok(Json(Messages {
                data: state.store.messages(id).await?,
                next_before: None,
            }));
        }
    };
    if !(1..=500).contains(&limit) {
        return Err(ApiError::Invalid("limit: from 1 to 500".to_owned()));
    }
    let (data, more) = state.store.messages_page(id, page.before, limit).await?;
    let next_before = more.then(|| data.first().map(|m| m.id)).flatten();
    Ok(Json(Messages { data, next_before }))
}

/// How to export a conversation.
#[derive(Debug, Clone, Copy, Default, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
enum ExportFormat {
    /// `{conversation, runs, messages}` (the default).
    #[default]
    Json,
    /// A Markdown document for people.
    Markdown,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ExportQuery {
    /// `json` (the default) or `markdown`. Inlined: a parameter's type is
    /// not collected into the document's schemas.
    #[param(inline)]
    format: Option<ExportFormat>,
}

/// A conversation exported as JSON.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
struct Export {
    /// The conversation.
    conversation: Conversation,
    /// Its runs, oldest first.
    runs: Vec<Run>,
    /// Its transcript, in order.
    messages: Vec<Message>,
}

/// `GET /v1/conversations/{id}/export?format=json|markdown`.
#[utoipa::path(
    get,
    path = "/v1/conversations/{id}/export",
    tag = "conversations",
    summary = "Export a conversation as JSON or Markdown",
    params(("id" = Uuid, Path, description = "The conversation's ID."), ExportQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The conversation, its runs and its transcript, as a \
            download (`Content-Disposition: attachment`).",
            content(
                (Export = "application/json"),
                (String = "text/markdown"),
            ),
        ),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 503, response = Unavailable),
    ),
)]
async fn export(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    IdPath(id): IdPath,
    AppQuery(query): AppQuery<ExportQuery>,
) -> Result<Response, ApiError> {
    let conversation = state
        .store
        .conversation(user.id, id)
        .await?
        .ok_or(ApiError::NotFound("conversation"))?;
    let messages = state.store.messages(id).await?;
    let format = query.format.unwrap_or_default();
    let (body, content_type, extension) = match format {
        ExportFormat::Json => {
            let mut runs = state.store.conversation_runs(id, None, u32::MAX).await?;
            runs.reverse();
            let export = Export {
                conversation,
                runs,
                messages,
            };
            let body = serde_json::to_string_pretty(&export)
                .map_err(|e| ApiError::Internal(Box::new(e)))?;
            (body, "application/json", "json")
        }
        ExportFormat::Markdown => (
            markdown(&conversation, &messages),
            "text/markdown; charset=utf-8",
            "md",
        ),
    };
    Ok((
        [
            (header::CONTENT_TYPE, content_type.to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"conversation-{id}.{extension}\""),
            ),
        ],
        body,
    )
        .into_response())
}

/// The conversation as Markdown: its title, then each message under who
/// wrote it, tool calls and results as quoted lines.
fn markdown(conversation: &Conversation, messages: &[Message]) -> String {
    let mut out = format!(
        "# {}\n\n_Agent `{}`, started {}._\n",
        conversation.title.as_deref().unwrap_or("Conversation"),
        conversation.agent,
        conversation.created_at
    );
    for message in messages {
        match message.role {
            Role::User => {
                out.push_str(&format!("\n## You\n\n{}\n", message.content));
            }
            Role::Assistant => {
                if !message.content.is_empty() {
                    out.push_str(&format!("\n## Assistant\n\n{}\n", message.content));
                }
                let calls = message
                    .tool_calls
                    .as_ref()
                    .and_then(|calls| calls.as_array())
                    .into_iter()
                    .flatten();
                for call in calls {
                    out.push_str(&format!(
                        "\n> Tool call `{}` with `{}`\n",
                        call["name"].as_str().unwrap_or_default(),
                        call["arguments"].as_str().unwrap_or_default()
                    ));
                }
            }
            Role::Tool => {
                out.push_str(&format!("\n> Result: `{}`\n", message.content));
            }
        }
        if message.status != crate::store::MessageStatus::Complete {
            out.push_str(&format!("\n_({})_\n", message.status.as_str()));
        }
    }
    out
}

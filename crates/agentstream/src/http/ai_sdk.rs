//! The Vercel AI SDK's chat routes: `POST /v1/ai-sdk/chat` takes the body
//! `useChat`'s default transport (`DefaultChatTransport`) sends and answers
//! with the run's UI message stream; `GET /v1/ai-sdk/chat/{id}/stream` is
//! where `useChat({resume: true})` reconnects. Same keys, tokens, isolation
//! and errors as the native API. The stream's format is in
//! [`super::wire::ai_sdk`].

use std::time::Instant;

use axum::{
    Json, Router,
    extract::{Path, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde::Deserialize;

use super::{
    ApiError, AppState,
    extract::{AppJson, CurrentCaller, CurrentUser, objects},
    openapi::{
        BadRequest, Conflict, NotFound, PayloadTooLarge, TooManyRuns, Unauthorized, Unavailable,
        Unprocessable, UnsupportedMediaType,
    },
    runs::check_input,
    wire::{
        self, Start,
        ai_sdk::{AiSdkEncoder, UiMessage, UiMessageChunk, ui_messages, with_approvals},
        sse_response,
    },
};
use crate::{
    runs::{ConversationRef, Multitask, Replace, RunError, StartRun},
    store::{Decision, OnDisconnect, RunStatus},
};

/// The header that tells the AI SDK the response is a UI message stream.
const STREAM_HEADER: &str = "x-vercel-ai-ui-message-stream";
/// The request header by which a client opts into AI SDK 6's parts (tool
/// approval): `6` or later.
const VERSION_HEADER: &str = "x-ai-sdk-version";
/// Longest chat ID and message ID, in bytes.
const MAX_ID: usize = 200;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/ai-sdk/chat", post(send_messages))
        .route("/v1/ai-sdk/chat/{id}/stream", get(resume_stream))
        .route("/v1/ai-sdk/chat/{id}/messages", get(list_messages))
}

/// What a chat request asks for (`trigger`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
enum Trigger {
    /// A new user message: answered by a new run (or, with `messageId`, an
    /// edit of the last question).
    SubmitMessage,
    /// Another answer to the last question: a new run, the last reply
    /// superseded.
    RegenerateMessage,
}

/// A message of the chat as the client sends it (the AI SDK's `UIMessage`).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
struct SentMessage {
    /// The message's ID. The last message's ID is the run's idempotency key:
    /// sent again, it returns the same run's stream and stores nothing;
    /// another text under an ID already used is 422.
    #[schema(min_length = 1, max_length = 200)]
    id: Option<String>,
    /// `user`, `assistant` or `system`. The last message is the user's new
    /// message, or the assistant's reply that answers the calls it asked
    /// about (AI SDK 6's `addToolApprovalResponse`): then its `id` is the
    /// run's ID.
    #[schema(example = "user")]
    role: String,
    /// Its parts. Of the user's last message only `text` parts are read
    /// (their texts joined by a newline); any other part is refused (422).
    /// Of the assistant's, the tool parts in state `approval-responded`,
    /// whose `approval: {id, approved, reason}` is a decision.
    #[schema(value_type = Vec<Object>)]
    parts: Vec<serde_json::Value>,
}

/// The body `useChat`'s `DefaultChatTransport` sends, with the fields a
/// client may add through the transport's `body` option (`agent`; others
/// are ignored).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
struct ChatRequest {
    /// The chat: a conversation of the caller's, named by its ID or by the
    /// chat ID it was created under (any text of 1 to 200 bytes; `useChat`
    /// makes one up). A chat ID not seen before creates the conversation.
    #[schema(min_length = 1, max_length = 200, example = "Rk3xT0bX9mQe2LzA")]
    id: String,
    /// The chat's messages, oldest first. The server holds the transcript,
    /// so only the last one is read: the user's new message.
    #[schema(min_items = 1)]
    #[serde(deserialize_with = "objects")]
    messages: Vec<SentMessage>,
    /// `submit-message` (the default) or `regenerate-message` (another
    /// answer to the chat's last question).
    trigger: Option<Trigger>,
    /// With `regenerate-message`, the reply to answer again (the chat's
    /// last). With a user's last message, the question it edits (the
    /// chat's last): that question and its reply are superseded and the run
    /// answers the new text. With an assistant's last message, its ID (tool
    /// approval responses).
    #[serde(rename = "messageId")]
    message_id: Option<String>,
    /// The agent of a new chat, by name (`GET /v1/agents`; default `chat`).
    /// For an existing chat it must be the chat's agent, if given.
    #[schema(example = "chat")]
    agent: Option<String>,
}

/// `POST /v1/ai-sdk/chat`: the user's message, answered as a UI message stream.
#[utoipa::path(
    post,
    path = "/v1/ai-sdk/chat",
    tag = "ai-sdk",
    summary = "Send a chat message as the AI SDK's useChat does; the reply as a UI message stream",
    description = "Takes the body `useChat`'s default transport sends and starts a run that \
        answers the last message (the user's) in the chat named by `id`, created on first use \
        with the agent named by `agent` (default `chat`). The response is the AI SDK's UI \
        message stream, protocol v1 (header `x-vercel-ai-ui-message-stream: v1`): `data:` \
        lines each holding one `UiMessageChunk`, from `start` to `finish`, then `data: \
        [DONE]`. The message's ID is the run's ID; its metadata carries `run_id` and \
        `conversation_id`. The run goes on if the client goes away: reconnect with \
        `GET /v1/ai-sdk/chat/{id}/stream`, stop it with `POST /v1/runs/{run_id}/cancel`. \
        A last message that is the assistant's (its `id` the run's ID), with tool parts in \
        state `approval-responded`, answers the calls the chat's paused run asked about \
        instead: the decisions are recorded and the stream is the run going on. With the \
        header `x-ai-sdk-version: 6` the stream carries AI SDK 6's `tool-approval-request` \
        and `tool-output-denied` chunks.",
    request_body = ChatRequest,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The run's UI message stream: each SSE message's `data` a \
            `UiMessageChunk`, then `[DONE]`.",
            headers(
                ("x-vercel-ai-ui-message-stream" = String, description = "Always `v1`."),
                ("X-Conversation-Id" = Uuid, description = "The chat's conversation."),
                ("X-Run-Id" = Uuid, description = "The run's ID."),
            ),
            content((UiMessageChunk = "text/event-stream")),
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
async fn send_messages(
    State(state): State<AppState>,
    CurrentCaller(caller): CurrentCaller,
    headers: HeaderMap,
    AppJson(mut request): AppJson<ChatRequest>,
) -> Result<Response, ApiError> {
    let received = Instant::now();
    check_id("id", &request.id)?;
    let parts = approval_parts(&headers);
    if request
        .messages
        .last()
        .is_some_and(|m| m.role == "assistant")
    {
        let Some(reply) = request.messages.pop() else {
            return Err(ApiError::Invalid("messages: none".to_owned()));
        };
        return answer_approvals(&state, caller.user.id, &request.id, reply, parts).await;
    }
    let regenerate = request.trigger == Some(Trigger::RegenerateMessage);
    if regenerate || request.message_id.is_some() {
        return answer_again(&state, &caller, request, parts, received).await;
    }
    if let Some(agent) = &request.agent
        && state.runs.agents().get(agent).is_none()
    {
        return Err(ApiError::Invalid(format!(
            "agent: there is no agent named {agent:?}; the agents are {}",
            state.runs.agents().names()
        )));
    }
    let (input, message_id) = user_message(request.messages)?;
    check_input(&state, &input)?;
    let started = state
        .runs
        .start(
            caller.user.id,
            ConversationRef::Chat {
                chat_id: crate::text::clean_string(request.id),
                agent: request.agent,
            },
            StartRun {
                input,
                client_message_id: message_id,
                on_disconnect: OnDisconnect::Continue,
                multitask: Multitask::Reject,
                caller: caller.for_tools(),
                replaces: None,
            },
        )
        .await
        .map_err(|error| match error {
            // The key is the message's `id` here: say so in its words.
            RunError::KeyReused(run) => ApiError::Invalid(format!(
                "the message ID was used for another message of this chat (run {run}); give \
                 each new message its own ID"
            )),
            other => other.into(),
        })?;
    let start = Start::of_started(started.live, received);
    Ok(ui_message_stream(
        &state,
        started.run.id,
        started.conversation.id,
        start,
        parts,
    ))
}

/// `regenerate()` (`trigger: regenerate-message`, `messageId` the reply's
/// ID, the run's) and an edit (`sendMessage({text, messageId})`, `messageId`
/// the edited question's): a retry of the chat's last run, which supersedes
/// its reply, and for an edit its question, answered with the new text.
/// Only the last reply can be regenerated and the last question edited.
async fn answer_again(
    state: &AppState,
    caller: &crate::http::auth::Caller,
    request: ChatRequest,
    parts: bool,
    received: Instant,
) -> Result<Response, ApiError> {
    let user_id = caller.user.id;
    let conversation = state
        .store
        .chat_conversation(user_id, &request.id)
        .await?
        .ok_or(ApiError::NotFound("chat"))?;
    let last = state
        .store
        .conversation_runs(conversation.id, None, 1)
        .await?
        .pop()
        .ok_or_else(|| ApiError::Invalid("messageId: the chat has no reply yet".to_owned()))?;
    let regenerate = request.trigger == Some(Trigger::RegenerateMessage);
    let (input, question) = if regenerate {
        if let Some(id) = request.message_id.as_deref()
            && id != last.id.to_string()
        {
            return Err(ApiError::Invalid(
                "messageId: only the chat's last reply can be regenerated".to_owned(),
            ));
        }
        (String::new(), false)
    } else {
        let edited = request.message_id.as_deref().unwrap_or_default();
        let messages = state.store.messages(conversation.id).await?;
        let question = messages
            .iter()
            .rev()
            .find(|m| m.role == crate::store::Role::User && !m.superseded);
        // The question's ID as the client knows it: the one it sent (its
        // run's key) or, after a reload, the stored message's.
        let key = match question.and_then(|q| q.run_id) {
            Some(run_id) => state
                .store
                .run(user_id, run_id)
                .await?
                .and_then(|run| run.client_message_id),
            None => None,
        };
        let names_it =
            question.is_some_and(|q| q.id.to_string() == edited) || key.as_deref() == Some(edited);
        if !names_it {
            return Err(ApiError::Invalid(
                "messageId: only the chat's last question can be edited".to_owned(),
            ));
        }
        let (input, _) = user_message(request.messages)?;
        check_input(state, &input)?;
        (input, true)
    };
    let started = state
        .runs
        .start(
            user_id,
            ConversationRef::Existing {
                id: conversation.id,
                kind: None,
            },
            StartRun {
                input,
                client_message_id: None,
                on_disconnect: OnDisconnect::Continue,
                multitask: Multitask::Reject,
                caller: caller.for_tools(),
                replaces: Some(Replace {
                    run_id: last.id,
                    question,
                }),
            },
        )
        .await?;
    Ok(ui_message_stream(
        state,
        started.run.id,
        started.conversation.id,
        Start::of_started(started.live, received),
        parts,
    ))
}

/// Whether the client opts into AI SDK 6's parts (`x-ai-sdk-version: 6`).
fn approval_parts(headers: &HeaderMap) -> bool {
    headers
        .get(VERSION_HEADER)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().split('.').next()?.parse::<u32>().ok())
        .is_some_and(|major| major >= 6)
}

/// The decisions an assistant's reply carries (its tool parts in state
/// `approval-responded`), recorded for its run, the chat's paused run; the
/// stream of the run going on from its pause.
async fn answer_approvals(
    state: &AppState,
    user_id: uuid::Uuid,
    chat: &str,
    reply: SentMessage,
    parts: bool,
) -> Result<Response, ApiError> {
    let decisions: Vec<Decision> = reply
        .parts
        .iter()
        .filter(|part| part["state"] == "approval-responded")
        .map(|part| {
            let approval = &part["approval"];
            match (approval["id"].as_str(), approval["approved"].as_bool()) {
                (Some(id), Some(approved)) => super::approvals::checked(
                    id.to_owned(),
                    approved,
                    approval["reason"].as_str().map(str::to_owned),
                ),
                _ => Err(ApiError::Invalid(
                    "messages: an approval-responded part needs approval.id and \
                 approval.approved"
                        .to_owned(),
                )),
            }
        })
        .collect::<Result<_, _>>()?;
    if decisions.is_empty() {
        return Err(ApiError::Invalid(
            "messages: the last message must be the user's new message, or the assistant's \
                 with tool parts in state approval-responded"
                .to_owned(),
        ));
    }
    let run_id = reply
        .id
        .as_deref()
        .and_then(|id| uuid::Uuid::parse_str(id).ok())
        .ok_or_else(|| {
            ApiError::Invalid(
                "messages: the last message is the assistant's: its id must be its run's ID, \
                 as the stream gave it"
                    .to_owned(),
            )
        })?;
    // The run must be of this chat.
    let conversation = state
        .store
        .chat_conversation(user_id, chat)
        .await?
        .ok_or(ApiError::NotFound("chat"))?;
    let run = state
        .store
        .run(user_id, run_id)
        .await?
        .filter(|run| run.conversation_id == conversation.id)
        .ok_or(ApiError::NotFound("run"))?;
    let pause = run.last_seq;
    let mut run = run;
    for decision in decisions {
        run = state.runs.decide(user_id, run_id, decision).await?;
    }
    if run.status == RunStatus::RequiresAction {
        return Err(ApiError::Invalid(
            "messages: the run waits for a decision on every call it asked about; answer them \
                 all"
            .to_owned(),
        ));
    }
    Ok(ui_message_stream(
        state,
        run.id,
        run.conversation_id,
        Start::After(pause),
        parts,
    ))
}

/// The UI message stream of `run_id`, a run of `conversation_id`, from
/// `start`, with AI SDK 6's approval parts if `parts`.
fn ui_message_stream(
    state: &AppState,
    run_id: uuid::Uuid,
    conversation_id: uuid::Uuid,
    start: Start,
    parts: bool,
) -> Response {
    let events = wire::subscribe(state, run_id, start);
    sse_response(
        AiSdkEncoder::new(run_id, conversation_id).with_approval_parts(parts),
        run_id,
        events,
        &state.streams,
        &[
            (STREAM_HEADER, "v1".to_owned()),
            ("x-conversation-id", conversation_id.to_string()),
        ],
    )
}

/// 422 unless `value` (the field `name`) has 1 to 200 bytes.
fn check_id(name: &str, value: &str) -> Result<(), ApiError> {
    if value.is_empty() || value.len() > MAX_ID {
        return Err(ApiError::Invalid(format!(
            "{name}: from 1 to {MAX_ID} bytes"
        )));
    }
    Ok(())
}

/// The text of the last message, the user's, and its ID; 422 when there is
/// none or it holds a part that is not text.
fn user_message(mut messages: Vec<SentMessage>) -> Result<(String, Option<String>), ApiError> {
    let last = messages.pop().ok_or_else(|| {
        ApiError::Invalid("messages: at least one, the last the user's new message".to_owned())
    })?;
    if last.role != "user" {
        return Err(ApiError::Invalid(format!(
            "messages: the last message must be the user's (its role is {:?})",
            last.role
        )));
    }
    let mut texts = Vec::with_capacity(last.parts.len());
    for part in &last.parts {
        match (part.get("type").and_then(|t| t.as_str()), part.get("text")) {
            (Some("text"), Some(serde_json::Value::String(text))) => texts.push(text.as_str()),
            (kind, _) => {
                return Err(ApiError::Invalid(format!(
                    "messages: only text parts of the user's message are read; a {} part is \
                     not supported",
                    kind.map_or_else(|| "malformed".to_owned(), |kind| format!("`{kind}`"))
                )));
            }
        }
    }
    if let Some(id) = &last.id {
        check_id("messages[].id", id)?;
    }
    Ok((texts.join("\n"), last.id))
}

/// `GET /v1/ai-sdk/chat/{id}/stream`: the chat's active run, replayed from
/// its first chunk and followed live; 204 when there is none.
#[utoipa::path(
    get,
    path = "/v1/ai-sdk/chat/{id}/stream",
    tag = "ai-sdk",
    summary = "Resume a chat's stream as useChat({resume: true}) does",
    description = "The UI message stream of the chat's active run (its newest queued or \
        running run), from its first chunk (a full replay; the AI SDK resets the message on \
        it), then live to `[DONE]`. 204 when the chat has no active run, or is not one of \
        the caller's.",
    params(("id" = String, Path, description = "The chat's ID, or its conversation's ID.")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The run's UI message stream, as `POST /v1/ai-sdk/chat` \
            answers.",
            headers(
                ("x-vercel-ai-ui-message-stream" = String, description = "Always `v1`."),
                ("X-Conversation-Id" = Uuid, description = "The chat's conversation."),
                ("X-Run-Id" = Uuid, description = "The run's ID."),
            ),
            content((UiMessageChunk = "text/event-stream")),
        ),
        (status = 204, description = "The chat has no active run."),
        (status = 401, response = Unauthorized),
        (status = 503, response = Unavailable),
    ),
)]
async fn resume_stream(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Some(run) = state.store.active_chat_run(user.id, &id).await? else {
        return Ok(StatusCode::NO_CONTENT.into_response());
    };
    Ok(ui_message_stream(
        &state,
        run.id,
        run.conversation_id,
        Start::After(0),
        approval_parts(&headers),
    ))
}

/// A chat's messages.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
struct ChatMessages {
    /// The chat's conversation; null for a chat with no message yet.
    conversation_id: Option<uuid::Uuid>,
    /// The messages, oldest first, as `useChat({messages})` takes them.
    data: Vec<UiMessage>,
}

/// `GET /v1/ai-sdk/chat/{id}/messages`: the chat's transcript as UI messages.
#[utoipa::path(
    get,
    path = "/v1/ai-sdk/chat/{id}/messages",
    tag = "ai-sdk",
    summary = "Read a chat's messages as the AI SDK's UIMessages",
    description = "The chat's transcript, oldest first, as `useChat({messages})` starts \
        from: each user message as one `UIMessage` (`id` the message's ID), and each run's \
        reply as one assistant `UIMessage` with the run's ID and `{conversation_id, run_id, \
        status, usage}` as metadata, a `step-start` per model call, its text and its tool calls as \
        `dynamic-tool` parts with their results: the message the run's stream built. A \
        reply still being written is there as far as it is stored; resume its stream to \
        follow it. A chat with no message yet, or not the caller's, has none.",
    params(("id" = String, Path, description = "The chat's ID, or its conversation's ID.")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The chat's messages.", body = ChatMessages),
        (status = 401, response = Unauthorized),
        (status = 503, response = Unavailable),
    ),
)]
async fn list_messages(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<ChatMessages>, ApiError> {
    let Some(conversation) = state.store.chat_conversation(user.id, &id).await? else {
        return Ok(Json(ChatMessages {
            conversation_id: None,
            data: Vec::new(),
        }));
    };
    let messages = state.store.messages(conversation.id).await?;
    let runs = state.store.run_statuses(conversation.id).await?;
    let mut data = ui_messages(conversation.id, messages, &runs);
    if approval_parts(&headers) {
        let approvals = state.store.conversation_approvals(conversation.id).await?;
        with_approvals(&mut data, &approvals);
    }
    Ok(Json(ChatMessages {
        conversation_id: Some(conversation.id),
        data,
    }))
}

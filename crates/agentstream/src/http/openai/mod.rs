//! The OpenAI-compatible API: `GET /v1/models` (the agents, as models) and
//! `POST /v1/chat/completions` (a run of the agent named as the model,
//! streamed as chunks or answered as one completion). Same keys, tokens and
//! isolation as the native API; errors in OpenAI's shape.

pub mod error;
mod request;

use std::time::Instant;

use axum::{
    Json, Router,
    extract::{Path, State},
    http::{HeaderMap, HeaderValue, header::HeaderName},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use futures_util::StreamExt;
use serde::Serialize;
use uuid::Uuid;

pub use error::OpenAiApiError;
pub use error::{
    OpenAiBadRequest, OpenAiConflict, OpenAiNotFound, OpenAiPayloadTooLarge, OpenAiRunFailed,
    OpenAiTooManyRuns, OpenAiUnauthorized, OpenAiUnavailable, OpenAiUnprocessable,
    OpenAiUnsupportedMediaType,
};
use request::ChatCompletionRequest;

use super::{
    ApiError, AppState,
    extract::{AppJson, CurrentCaller},
    wire::{
        self, Start,
        openai::{ChatCompletion, ChatCompletionChunk, Completion, OpenAiEncoder},
        sse_response,
    },
};
use crate::{
    runs::{ConversationRef, Multitask, StartRun},
    store::OnDisconnect,
};

/// The header naming the conversation a request continues, and, on every
/// response, the conversation it was about.
const CONVERSATION_HEADER: &str = "x-conversation-id";

/// The routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/models", get(list_models))
        .route("/v1/models/{model}", get(get_model))
        .route("/v1/chat/completions", post(create_chat_completion))
}

/// True for the paths these routes serve: refusals made before a handler
/// runs (the database is down) are in OpenAI's shape there too.
pub fn serves(path: &str) -> bool {
    path == "/v1/chat/completions" || path == "/v1/models" || path.starts_with("/v1/models/")
}

/// An agent, as OpenAI's clients list models.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct Model {
    /// The agent's name: the `model` of a chat completion.
    #[schema(example = "chat")]
    id: String,
    /// Always `model`.
    #[schema(pattern = "^model$")]
    object: &'static str,
    /// Always 0: agents are configuration, with no creation date.
    created: i64,
    /// Always `agentstream`.
    owned_by: &'static str,
}

impl Model {
    fn named(name: &str) -> Model {
        Model {
            id: name.to_owned(),
            object: "model",
            created: 0,
            owned_by: "agentstream",
        }
    }
}

/// The models: every agent.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct ModelList {
    /// Always `list`.
    #[schema(pattern = "^list$")]
    object: &'static str,
    /// The agents, ordered by name.
    data: Vec<Model>,
}

/// `GET /v1/models`: the agents, as models.
#[utoipa::path(
    get,
    path = "/v1/models",
    tag = "openai",
    summary = "List the agents as OpenAI models",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The agents, ordered by name.", body = ModelList),
        (status = 401, response = OpenAiUnauthorized),
        (status = 503, response = OpenAiUnavailable),
    ),
)]
async fn list_models(
    State(state): State<AppState>,
    caller: Result<CurrentCaller, ApiError>,
) -> Result<Json<ModelList>, OpenAiApiError> {
    caller?;
    let data = state
        .runs
        .agents()
        .iter()
        .map(|agent| Model::named(&agent.name))
        .collect();
    Ok(Json(ModelList {
        object: "list",
        data,
    }))
}

/// `GET /v1/models/{model}`: one agent, as a model.
#[utoipa::path(
    get,
    path = "/v1/models/{model}",
    tag = "openai",
    summary = "Read an agent as an OpenAI model",
    params(("model" = String, Path, description = "The agent's name.")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The agent.", body = Model),
        (status = 401, response = OpenAiUnauthorized),
        (status = 404, response = OpenAiNotFound),
        (status = 503, response = OpenAiUnavailable),
    ),
)]
async fn get_model(
    State(state): State<AppState>,
    caller: Result<CurrentCaller, ApiError>,
    Path(model): Path<String>,
) -> Result<Json<Model>, OpenAiApiError> {
    caller?;
    agent_named(&state, &model)?;
    Ok(Json(Model::named(&model)))
}

/// 404 `model_not_found` unless an agent has this name.
fn agent_named(state: &AppState, model: &str) -> Result<(), OpenAiApiError> {
    let agents = state.runs.agents();
    if agents.get(model).is_some() {
        return Ok(());
    }
    Err(OpenAiApiError::param(ApiError::NotFound("model"), "model")
        .code("model_not_found")
        .message(format!(
            "the model `{model}` does not exist; the models are this server's agents: {}",
            agents.names()
        )))
}

/// The conversation-ID header, as the OpenAPI document describes it.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
#[expect(
    dead_code,
    reason = "describes the `X-Conversation-Id` header for the OpenAPI document"
)]
struct ConversationHeader {
    /// The caller's conversation to continue (404 when absent or not the
    /// caller's): only the request's last message is read, as the next
    /// user message. Also accepted as `metadata.conversation_id`.
    #[param(rename = "X-Conversation-Id", required = false)]
    conversation: Option<Uuid>,
}

/// `POST /v1/chat/completions`: a run of the agent named by `model`.
#[utoipa::path(
    post,
    path = "/v1/chat/completions",
    tag = "openai",
    summary = "Run an agent as an OpenAI chat completion",
    description = "Starts a run of the agent named by `model` and answers as OpenAI's Chat \
        Completions do: with `stream: true`, `chat.completion.chunk`s (the first with the \
        role, the last with `finish_reason`; with `stream_options.include_usage`, a chunk \
        with no choice carrying the usage) then `data: [DONE]`; otherwise one \
        `chat.completion`. The agent's tools run on the server and are not sent as \
        `tool_calls`. A run that does not complete ends a stream with a `data: {\"error\": \
        …}` line and no `[DONE]`.\n\nWithout `X-Conversation-Id` (or \
        `metadata.conversation_id`) a conversation is created with the messages before the \
        last as its transcript; with one, only the last message is read. Either way the \
        response's `X-Conversation-Id` names it. Sampling fields (`temperature`, \
        `max_tokens`, …) are ignored: the agent's configuration sets them.",
    params(ConversationHeader),
    request_body = ChatCompletionRequest,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The completion, or with `stream: true` its chunks (each \
            SSE message's `data` a `ChatCompletionChunk`, then `[DONE]`).",
            headers(
                ("X-Conversation-Id" = Uuid, description = "The conversation's ID."),
                ("X-Run-Id" = Uuid, description = "The run's ID."),
            ),
            content(
                (ChatCompletion = "application/json"),
                (ChatCompletionChunk = "text/event-stream"),
            ),
        ),
        (status = 400, response = OpenAiBadRequest),
        (status = 401, response = OpenAiUnauthorized),
        (status = 404, response = OpenAiNotFound),
        (status = 409, response = OpenAiConflict),
        (status = 413, response = OpenAiPayloadTooLarge),
        (status = 415, response = OpenAiUnsupportedMediaType),
        (status = 422, response = OpenAiUnprocessable),
        (status = 429, response = OpenAiTooManyRuns),
        (status = 500, response = OpenAiRunFailed),
        (status = 502, response = OpenAiRunFailed),
        (status = 503, response = OpenAiUnavailable),
    ),
)]
async fn create_chat_completion(
    State(state): State<AppState>,
    caller: Result<CurrentCaller, ApiError>,
    headers: HeaderMap,
    body: Result<AppJson<ChatCompletionRequest>, ApiError>,
) -> Response {
    let received = Instant::now();
    let mut conversation = headers.get(CONVERSATION_HEADER).cloned();
    let mut response = complete(&state, caller, body, &mut conversation, received)
        .await
        .unwrap_or_else(IntoResponse::into_response);
    if let Some(id) = conversation {
        response
            .headers_mut()
            .insert(HeaderName::from_static(CONVERSATION_HEADER), id);
    }
    response
}

/// The answer to a chat completion; `conversation` is the conversation's
/// ID as soon as it is known, for the response's header.
async fn complete(
    state: &AppState,
    caller: Result<CurrentCaller, ApiError>,
    body: Result<AppJson<ChatCompletionRequest>, ApiError>,
    conversation: &mut Option<HeaderValue>,
    received: Instant,
) -> Result<Response, OpenAiApiError> {
    let CurrentCaller(caller) = caller?;
    let AppJson(request) = body?;
    let named = request
        .metadata
        .as_ref()
        .and_then(|metadata| metadata.get("conversation_id"));
    let continued = match (conversation.as_ref(), named) {
        (Some(header), named) => {
            let id = header
                .to_str()
                .ok()
                .and_then(|text| Uuid::parse_str(text.trim()).ok())
                .ok_or_else(|| {
                    ApiError::BadRequest(
                        "X-Conversation-Id must be a conversation's ID (a UUID)".to_owned(),
                    )
                })?;
            if named.is_some_and(|named| Uuid::parse_str(named).ok() != Some(id)) {
                return Err(OpenAiApiError::param(
                    ApiError::Invalid(
                        "metadata.conversation_id differs from X-Conversation-Id".to_owned(),
                    ),
                    "metadata",
                ));
            }
            Some(id)
        }
        (None, Some(named)) => {
            *conversation = HeaderValue::from_str(named).ok();
            Some(Uuid::parse_str(named.trim()).map_err(|_| {
                OpenAiApiError::param(
                    ApiError::Invalid(
                        "metadata.conversation_id must be a conversation's ID (a UUID)".to_owned(),
                    ),
                    "metadata",
                )
            })?)
        }
        (None, None) => None,
    };
    agent_named(state, &request.model)?;
    request.check_supported(state)?;
    let model = request.model.clone();
    let stream = request.stream == Some(true);
    let include_usage = request
        .stream_options
        .as_ref()
        .and_then(|options| options.include_usage)
        == Some(true);
    let turn = request.turn(state, continued.is_none())?;
    let target = match continued {
        Some(id) => {
            let found = state
                .store
                .conversation(caller.user.id, id)
                .await
                .map_err(ApiError::from)?
                .ok_or(ApiError::NotFound("conversation"))?;
            if found.agent != model {
                return Err(OpenAiApiError::param(
                    ApiError::Invalid(format!(
                        "model: the conversation is with the agent `{}`; send that model",
                        found.agent
                    )),
                    "model",
                ));
            }
            ConversationRef::Existing { id, kind: None }
        }
        None => ConversationRef::NewWith {
            kind: crate::store::ConversationKind::of_agent(&model),
            agent: model.clone(),
            history: turn.history,
        },
    };
    let started = state
        .runs
        .start(
            caller.user.id,
            target,
            StartRun {
                input: turn.input,
                client_message_id: None,
                on_disconnect: OnDisconnect::Continue,
                multitask: Multitask::Reject,
                caller: caller.for_tools(),
                replaces: None,
            },
        )
        .await
        .map_err(ApiError::from)?;
    *conversation = HeaderValue::from_str(&started.conversation.id.to_string()).ok();
    let run = started.run;
    let completion = Completion::of_run(run.id, &run.created_at, model);
    let events = wire::subscribe(state, run.id, Start::of_started(started.live, received));
    if stream {
        return Ok(sse_response(
            OpenAiEncoder::new(completion, include_usage),
            run.id,
            events,
            &state.streams,
            &[],
        ));
    }
    // Answered when the run ends, or cut at shutdown as streams are.
    let events = events.take_until(state.streams.end.clone().cancelled_owned());
    let mut response = match wire::openai::gather(completion, events).await {
        Some(Ok(completion)) => Json(completion).into_response(),
        Some(Err(failure)) => error::run_failed(failure),
        None => error::run_failed(wire::openai::Failure::shutting_down()),
    };
    if let Ok(value) = HeaderValue::from_str(&run.id.to_string()) {
        response.headers_mut().insert("x-run-id", value);
    }
    Ok(response)
}

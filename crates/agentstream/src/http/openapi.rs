//! The OpenAPI 3.1 document (`GET /openapi.json`), generated from the
//! handlers' `#[utoipa::path]` annotations and the types' `ToSchema` derives,
//! and the reusable error responses those annotations name.

use std::borrow::Cow;

use axum::{
    Router,
    extract::State,
    http::{HeaderValue, header},
    response::IntoResponse,
    routing::get,
};
use utoipa::{
    Modify, OpenApi, PartialSchema, ToResponse, ToSchema,
    openapi::{
        RefOr, Schema,
        schema::{ObjectBuilder, Type},
        security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
    },
};

use super::{
    AppState, agents, ai_sdk, approvals, compat, conversations, error::ErrorBody, health, metrics,
    openai, page, profile, retry, runs, transcripts,
};
use crate::{agent::Agents, runs::Multitask};

/// The document's route.
pub fn router() -> Router<AppState> {
    Router::new().route("/openapi.json", get(get_openapi))
}

/// The API's contract: every route, body, response and error.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "agentstream",
        description = "Streams an LLM agent's reply over Server-Sent Events while its tools \
            write a database. A run is not a request: starting one starts a run owned by the \
            server, and responses only subscribe to its events, which are stored before they \
            are sent and can be replayed after any `seq`.\n\nEvery error is \
            `{\"error\": {\"code\", \"message\"}}`, except on the OpenAI-compatible \
            routes (tag `openai`), which answer in OpenAI's shape. With API keys or JWT sign-in on, every \
            route under `/v1` and `/api/v1` needs `Authorization: Bearer <key or JWT>`; while \
            neither is on and the server listens on loopback only, requests without a key act \
            as the local user.",
        license(name = "MIT OR Apache-2.0"),
    ),
    paths(
        agents::list_agents,
        conversations::create_conversation,
        conversations::list_conversations,
        conversations::get_conversation,
        conversations::delete_conversation,
        transcripts::list_messages,
        transcripts::export,
        runs::create_run,
        runs::get_run,
        runs::list_runs,
        retry::retry,
        runs::stream_events,
        runs::cancel_run,
        approvals::decide,
        profile::get_profile,
        profile::reset_profile,
        profile::delete_field,
        conversations::rename_conversation,
        compat::chat_stream,
        compat::onboarding_stream,
        openai::list_models,
        openai::get_model,
        openai::create_chat_completion,
        ai_sdk::send_messages,
        ai_sdk::resume_stream,
        ai_sdk::list_messages,
        health::health,
        health::ready,
        metrics::get_metrics,
        get_openapi,
        page::index,
        page::app_js,
        page::style_css,
        page::marked_js,
        page::purify_js,
        page::favicon_svg,
        page::favicon_ico,
    ),
    components(
        schemas(ErrorBody, crate::events::RunEvent, super::wire::openai::OpenAiErrorBody),
        responses(
            BadRequest,
            Unauthorized,
            NotFound,
            Conflict,
            PayloadTooLarge,
            UnsupportedMediaType,
            Unprocessable,
            TooManyRuns,
            Unavailable,
            openai::OpenAiBadRequest,
            openai::OpenAiUnauthorized,
            openai::OpenAiNotFound,
            openai::OpenAiConflict,
            openai::OpenAiPayloadTooLarge,
            openai::OpenAiUnsupportedMediaType,
            openai::OpenAiUnprocessable,
            openai::OpenAiTooManyRuns,
            openai::OpenAiRunFailed,
            openai::OpenAiUnavailable,
        ),
    ),
    modifiers(&BearerAuth),
    tags(
        (name = "agents", description = "The agents: each a model, a prompt and tools."),
        (name = "conversations", description = "Conversations and their transcripts."),
        (name = "runs", description = "Runs: start one (streamed or not), read it, follow its events, cancel it."),
        (name = "profile", description = "The onboarding profile the tools write."),
        (name = "openai", description = "OpenAI-compatible Chat Completions: the agents as models; errors in OpenAI's shape."),
        (name = "ai-sdk", description = "The Vercel AI SDK's chat protocol: `useChat`'s requests, answered as UI message streams (v1), with resume."),
        (name = "seed", description = "The seed's routes, kept so its clients work unchanged."),
        (name = "operations", description = "Health, metrics and this document."),
        (name = "page", description = "The chat page and its assets."),
    ),
)]
pub struct ApiDoc;

/// The name of the bearer security scheme the paths refer to.
pub const BEARER: &str = "bearer";

/// Adds the bearer scheme: an API key or a JWT.
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            BEARER,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("API key (ask_ and 64 hex digits) or JWT")
                    .description(Some(
                        "An API key from `agentstream keys create --user NAME`, or, when the \
                         server's `[auth.jwt]` is configured, a JWT signed with its HS256 \
                         secret or a key of its JWKS (RS256, ES256 by default), carrying \
                         `exp` and the configured `iss` and `aud`. The token's subject (`sub` \
                         by default) is the user; a refused token gets 401 `invalid token`.",
                    ))
                    .build(),
            ),
        );
    }
}

/// The OpenAPI document of this server: the generated one, with the names
/// of the agents this server runs as the `agent` enum of `POST
/// /v1/conversations` and the `model` enum of `POST /v1/chat/completions`,
/// so a client (or a fuzzer) knows which are valid.
pub fn document(agents: &Agents) -> String {
    let mut document = ApiDoc::openapi();
    let names: Vec<serde_json::Value> = agents
        .iter()
        .map(|agent| agent.name.clone().into())
        .collect();
    if let Some(components) = document.components.as_mut() {
        if let Some(RefOr::T(Schema::Object(create))) =
            components.schemas.get_mut("CreateConversation")
            && let Some(RefOr::T(Schema::Object(agent))) = create.properties.get_mut("agent")
        {
            // Null too: the field may be left out or sent as null.
            let mut values = names.clone();
            values.push(serde_json::Value::Null);
            agent.enum_values = Some(values);
        }
        if let Some(RefOr::T(Schema::Object(request))) =
            components.schemas.get_mut("ChatCompletionRequest")
            && let Some(RefOr::T(Schema::Object(model))) = request.properties.get_mut("model")
        {
            model.enum_values = Some(names);
        }
    }
    document
        .to_json()
        .unwrap_or_else(|e| format!(r#"{{"openapi":"3.1.0","error":"{e}"}}"#))
}

/// `GET /openapi.json`: this document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    responses((status = 200, description = "The OpenAPI 3.1 document of this API.", content_type = "application/json", body = Object)),
)]
async fn get_openapi(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        document(state.runs.agents()),
    )
}

// Multitask is defined by `text_enum!` in `runs`; its schema is written here.
impl PartialSchema for Multitask {
    fn schema() -> RefOr<Schema> {
        let names = [Multitask::Reject, Multitask::Enqueue, Multitask::Interrupt].map(|m| {
            // A new variant fails to compile here until it is listed above.
            match m {
                Multitask::Reject | Multitask::Enqueue | Multitask::Interrupt => m.as_str(),
            }
        });
        ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some(names))
            .description(Some(
                "What a new run does when its conversation already has an active one: \
                 `reject` (409, the default), `enqueue` (wait its turn) or `interrupt` \
                 (cancel the active run, then start).",
            ))
            .into()
    }
}

impl ToSchema for Multitask {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("Multitask")
    }
}

/// 400: the body is not JSON, or a header or query parameter does not parse.
#[derive(ToResponse)]
#[response(
    description = "Malformed: the body is not JSON, or a header or query parameter does not parse.",
    example = json!({"error": {"code": "bad_request", "message": "after must be a non-negative integer"}}),
)]
pub struct BadRequest(pub ErrorBody);

/// 401: no API key or token, or one that is not valid.
#[derive(ToResponse)]
#[response(
    description = "No API key or token, or a malformed, unknown or revoked key, or a bad, \
        expired or wrongly signed token (then the message is `invalid token`, nothing more).",
    headers(("WWW-Authenticate" = String, description = "`Bearer`, or `Bearer error=\"invalid_token\"` for a refused token")),
    example = json!({"error": {"code": "unauthorized", "message": "a valid API key is required: send `Authorization: Bearer <key>`"}}),
)]
pub struct Unauthorized(pub ErrorBody);

/// 404: absent, or not the caller's.
#[derive(ToResponse)]
#[response(
    description = "Absent, or not the caller's (the same answer for both).",
    example = json!({"error": {"code": "not_found", "message": "conversation not found"}}),
)]
pub struct NotFound(pub ErrorBody);

/// 409: the conversation has an active run.
#[derive(ToResponse)]
#[response(
    description = "The conversation has an active run.",
    example = json!({"error": {"code": "conflict", "message": "the conversation has an active run; cancel it first"}}),
)]
pub struct Conflict(pub ErrorBody);

/// 413: the body or the message is too large.
#[derive(ToResponse)]
#[response(
    description = "The request body or the message is too large.",
    example = json!({"error": {"code": "payload_too_large", "message": "the request body is too large"}}),
)]
pub struct PayloadTooLarge(pub ErrorBody);

/// 415: the body is not sent as JSON.
#[derive(ToResponse)]
#[response(
    description = "The body is not sent with `Content-Type: application/json`.",
    example = json!({"error": {"code": "unsupported_media_type", "message": "send the body as JSON with `Content-Type: application/json`"}}),
)]
pub struct UnsupportedMediaType(pub ErrorBody);

/// 422: a field is missing or invalid.
#[derive(ToResponse)]
#[response(
    description = "A field is missing or invalid.",
    example = json!({"error": {"code": "invalid_request", "message": "the message must not be empty"}}),
)]
pub struct Unprocessable(pub ErrorBody);

/// 429: the caller has as many active runs as allowed.
#[derive(ToResponse)]
#[response(
    description = "The caller has as many queued and running runs as allowed.",
    headers(("Retry-After" = u32, description = "Seconds to wait before retrying.")),
    example = json!({"error": {"code": "too_many_runs", "message": "you have 8 active runs, the most allowed; wait for one to end"}}),
)]
pub struct TooManyRuns(pub ErrorBody);

/// 503: the server cannot take the request now.
#[derive(ToResponse)]
#[response(
    description = "The server cannot take the request now: the database is not answering, no \
        connection came free in time, the server drives as many runs as it may, or it is \
        shutting down.",
    headers(("Retry-After" = u32, description = "Seconds to wait before retrying.")),
    example = json!({"error": {"code": "unavailable", "message": "the database is not answering; try again shortly"}}),
)]
pub struct Unavailable(pub ErrorBody);

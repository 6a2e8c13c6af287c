//! The HTTP routes: `POST /v1/chat/completions` and `GET /v1/models`.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;

use crate::body::{Events, PacedBody};
use crate::chunk::ChunkMeta;
use crate::error::ApiError;
use crate::options::{Behaviour, Fault};
use crate::reply::Reply;
use crate::request::ChatRequest;
use crate::state::AppState;

/// Largest accepted request body; long agent conversations exceed axum's 2 MiB default.
pub const MAX_BODY_BYTES: usize = 32 * 1024 * 1024;

/// The header whose options override those in the model string.
pub const MOCK_HEADER: &str = "x-mock";

/// The header that names a `fail_first=` counter shared by the requests that carry it.
pub const MOCK_KEY_HEADER: &str = "x-mock-key";

/// The mock's routes, used by both [`crate::MockLlm`] and the binary.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(create_completion))
        .route("/v1/models", get(list_models))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

#[tracing::instrument(level = "debug", skip_all, fields(seq))]
async fn create_completion(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let seq = state.next_request();
    tracing::Span::current().record("seq", seq);
    let request = parse_request(&state, &headers, &body)?;
    let mock_header = headers
        .get(MOCK_HEADER)
        .map(|value| value.to_str().map_err(|_| ApiError::InvalidHeader))
        .transpose()?;
    let behaviour = Behaviour::parse(&request.model, mock_header)?;
    tracing::debug!(model = %request.model, stream = request.stream, "chat completion");

    if behaviour.fail_first > 0 {
        let key = match headers.get(MOCK_KEY_HEADER) {
            Some(key) => format!("key:{}", String::from_utf8_lossy(key.as_bytes())),
            None => format!("options:{}\n{}", request.model, mock_header.unwrap_or("")),
        };
        if state.fails_first(key, behaviour.fail_first) {
            return Err(ApiError::InjectedServerError);
        }
    }
    if let Some(window) = behaviour.context {
        let tokens = request.context_tokens();
        if tokens > window {
            return Err(ApiError::ContextLength { window, tokens });
        }
    }
    match behaviour.fault {
        Some(Fault::ServerError) => return Err(ApiError::InjectedServerError),
        Some(Fault::RateLimited) => return Err(ApiError::InjectedRateLimit),
        Some(Fault::Reset | Fault::Malformed | Fault::Stall) | None => {}
    }

    let reply = Reply::plan(&request, &behaviour, seq);
    let usage = reply.usage(&request);
    let send_usage = behaviour.usage && request.include_usage();
    let meta = ChunkMeta {
        id: format!("chatcmpl-{seq}"),
        created: unix_seconds(),
        model: request.model,
        usage_field: send_usage,
    };
    let shutdown = state.shutdown_token().clone().cancelled_owned();
    let open = state.open_stream();
    if request.stream {
        let events = Events::Sse {
            meta,
            reply,
            usage: send_usage.then_some(usage),
            done: behaviour.done,
            reasoning: (behaviour.reasoning, behaviour.reasoning_field),
        };
        let body = PacedBody::sse(events, &behaviour, shutdown, open);
        Ok((
            [
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/event-stream"),
                ),
                (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            ],
            Body::from_stream(body.into_stream()),
        )
            .into_response())
    } else {
        // The stream this request would have had: first delta, pieces, finish.
        let stream_events = reply.pieces() + 2;
        let json = meta
            .completion(&reply, usage)
            .inspect_err(|error| tracing::error!(%error, "failed to serialize a completion"))?;
        let body = PacedBody::json(json, stream_events, &behaviour, shutdown, open);
        Ok((
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            Body::from_stream(body.into_stream()),
        )
            .into_response())
    }
}

// Parses the body, recording it and the Authorization header when recording is on.
fn parse_request(
    state: &AppState,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<ChatRequest, ApiError> {
    if !state.options().record_bodies {
        return Ok(serde_json::from_slice(body)?);
    }
    if let Some(authorization) = headers.get(header::AUTHORIZATION) {
        state.record_authorization(String::from_utf8_lossy(authorization.as_bytes()).into_owned());
    }
    let value: serde_json::Value = serde_json::from_slice(body)?;
    let request = ChatRequest::deserialize(&value);
    state.record_body(value);
    Ok(request?)
}

#[tracing::instrument(level = "debug", skip_all)]
async fn list_models() -> Response {
    axum::Json(json!({
        "object": "list",
        "data": [{"id": "mock", "object": "model", "created": 0, "owned_by": "mock-llm"}],
    }))
    .into_response()
}

fn unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or_default()
}

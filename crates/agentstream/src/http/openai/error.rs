//! Errors of the OpenAI-compatible routes: the native API's statuses and
//! headers, with OpenAI's body `{"error": {"message", "type", "param",
//! "code"}}`; and the reusable responses the OpenAPI document names.

use axum::{
    Json,
    http::{HeaderValue, StatusCode},
    response::{IntoResponse, Response},
};
use utoipa::ToResponse;

use crate::http::{
    ApiError,
    wire::openai::{Failure, OpenAiError, OpenAiErrorBody},
};

/// `x-should-retry`: the `openai` SDKs obey it over their own rules (which
/// retry 409, 429 and 5xx).
const SHOULD_RETRY: &str = "x-should-retry";

/// An error of the OpenAI routes: a native error, told in OpenAI's words.
#[derive(Debug)]
pub struct OpenAiApiError {
    /// The error: its status, headers and, by default, message.
    error: ApiError,
    /// The request field at fault.
    param: Option<&'static str>,
    /// The code, when OpenAI has one of its own for it.
    code: Option<&'static str>,
    /// The message, when it says more than the native one.
    message: Option<String>,
}

impl OpenAiApiError {
    /// `error`, naming the request field at fault.
    pub fn param(error: ApiError, param: &'static str) -> OpenAiApiError {
        OpenAiApiError {
            param: Some(param),
            ..error.into()
        }
    }

    /// The same error with OpenAI's `code`.
    pub fn code(self, code: &'static str) -> OpenAiApiError {
        OpenAiApiError {
            code: Some(code),
            ..self
        }
    }

    /// The same error with a message of its own.
    pub fn message(self, message: String) -> OpenAiApiError {
        OpenAiApiError {
            message: Some(message),
            ..self
        }
    }

    /// The response without the detail for the logging middleware (see
    /// [`ApiError::unlogged`]).
    pub fn unlogged(self) -> Response {
        let (body, conflict) = self.body();
        reshape(self.error.unlogged(), body, conflict)
    }

    fn body(&self) -> (OpenAiErrorBody, bool) {
        let status = self.error.status_code();
        let kind = match &self.error {
            ApiError::Unauthorized | ApiError::InvalidToken | ApiError::CredentialRequired => {
                "authentication_error"
            }
            ApiError::TooManyRuns(_) => "rate_limit_error",
            _ if status.is_server_error() => "server_error",
            _ => "invalid_request_error",
        };
        let code = self.code.unwrap_or(match &self.error {
            ApiError::Unauthorized | ApiError::InvalidToken | ApiError::CredentialRequired => {
                "invalid_api_key"
            }
            ApiError::Conflict(_) => "conversation_busy",
            other => other.code(),
        });
        let message = match (&self.message, &self.error) {
            (Some(message), _) => message.clone(),
            (None, ApiError::Internal(_)) => "internal server error".to_owned(),
            (None, other) => other.to_string(),
        };
        let body = OpenAiErrorBody {
            error: OpenAiError {
                message,
                kind,
                param: self.param,
                code: Some(code.to_owned()),
            },
        };
        (body, status == StatusCode::CONFLICT)
    }
}

impl From<ApiError> for OpenAiApiError {
    fn from(error: ApiError) -> OpenAiApiError {
        OpenAiApiError {
            error,
            param: None,
            code: None,
            message: None,
        }
    }
}

impl IntoResponse for OpenAiApiError {
    fn into_response(self) -> Response {
        let (body, conflict) = self.body();
        reshape(self.error.into_response(), body, conflict)
    }
}

/// The native error `response` (its status, headers and logging detail)
/// with OpenAI's `body`. A conflict (the conversation is busy) is not
/// worth retrying at once: the SDKs are told so.
fn reshape(response: Response, body: OpenAiErrorBody, conflict: bool) -> Response {
    let (parts, _) = response.into_parts();
    let mut response = Response::from_parts(parts, Json(body).into_response().into_body());
    if conflict {
        response
            .headers_mut()
            .insert(SHOULD_RETRY, HeaderValue::from_static("false"));
    }
    response
}

/// The answer to a request whose run did not complete its reply: never to
/// be retried as it is, since the run's input is stored already.
pub fn run_failed(failure: Failure) -> Response {
    let mut response = (
        failure.status,
        Json(OpenAiErrorBody {
            error: failure.error,
        }),
    )
        .into_response();
    response
        .headers_mut()
        .insert(SHOULD_RETRY, HeaderValue::from_static("false"));
    response
}

/// 400 in OpenAI's shape.
#[derive(ToResponse)]
#[response(
    description = "Malformed: the body is not JSON or a header does not parse; or the request \
        defines `tools` or `functions` of its own (the agent's tools run on the server).",
    example = json!({"error": {"message": "this server runs the agent's own tools; a request may not define tools", "type": "invalid_request_error", "param": "tools", "code": "tools_not_supported"}}),
)]
pub struct OpenAiBadRequest(pub OpenAiErrorBody);

/// 401 in OpenAI's shape.
#[derive(ToResponse)]
#[response(
    description = "No API key or token, or one that is not valid.",
    headers(("WWW-Authenticate" = String, description = "`Bearer`, or `Bearer error=\"invalid_token\"` for a refused token")),
    example = json!({"error": {"message": "invalid token", "type": "authentication_error", "param": null, "code": "invalid_api_key"}}),
)]
pub struct OpenAiUnauthorized(pub OpenAiErrorBody);

/// 404 in OpenAI's shape.
#[derive(ToResponse)]
#[response(
    description = "No agent of that name (`model_not_found`), or the conversation is absent or \
        not the caller's.",
    example = json!({"error": {"message": "the model `gpt-4` does not exist", "type": "invalid_request_error", "param": "model", "code": "model_not_found"}}),
)]
pub struct OpenAiNotFound(pub OpenAiErrorBody);

/// 409 in OpenAI's shape.
#[derive(ToResponse)]
#[response(
    description = "The conversation has an active run (`conversation_busy`), or, without \
        streaming, the run was cancelled (`run_cancelled`). Not to be retried at once.",
    headers(("x-should-retry" = String, description = "`false`: the `openai` SDKs do not retry.")),
    example = json!({"error": {"message": "the conversation already has an active run", "type": "invalid_request_error", "param": null, "code": "conversation_busy"}}),
)]
pub struct OpenAiConflict(pub OpenAiErrorBody);

/// 413 in OpenAI's shape.
#[derive(ToResponse)]
#[response(
    description = "The request body or a message is too large.",
    example = json!({"error": {"message": "the request body is too large", "type": "invalid_request_error", "param": null, "code": "payload_too_large"}}),
)]
pub struct OpenAiPayloadTooLarge(pub OpenAiErrorBody);

/// 415 in OpenAI's shape.
#[derive(ToResponse)]
#[response(
    description = "The body is not sent with `Content-Type: application/json`.",
    example = json!({"error": {"message": "send the body as JSON with `Content-Type: application/json`", "type": "invalid_request_error", "param": null, "code": "unsupported_media_type"}}),
)]
pub struct OpenAiUnsupportedMediaType(pub OpenAiErrorBody);

/// 422 in OpenAI's shape.
#[derive(ToResponse)]
#[response(
    description = "A field is missing or invalid, or asks for what this server does not do \
        (`n` other than 1, `logprobs`, a JSON `response_format`, audio).",
    example = json!({"error": {"message": "the last message must be the user's", "type": "invalid_request_error", "param": "messages", "code": "invalid_request"}}),
)]
pub struct OpenAiUnprocessable(pub OpenAiErrorBody);

/// 429 in OpenAI's shape.
#[derive(ToResponse)]
#[response(
    description = "The caller has as many queued and running runs as allowed.",
    headers(("Retry-After" = u32, description = "Seconds to wait before retrying.")),
    example = json!({"error": {"message": "you have 8 active runs, the most allowed; wait for one to end", "type": "rate_limit_error", "param": null, "code": "too_many_runs"}}),
)]
pub struct OpenAiTooManyRuns(pub OpenAiErrorBody);

/// 500 or 502 in OpenAI's shape.
#[derive(ToResponse)]
#[response(
    description = "Without streaming: the run failed, 502 when the model server failed \
        (`upstream_error`, `upstream_timeout`, …), else 500. Not to be retried as it is: \
        the input is stored in the conversation.",
    headers(("x-should-retry" = String, description = "`false`.")),
    example = json!({"error": {"message": "the model server did not answer in time", "type": "server_error", "param": null, "code": "upstream_timeout"}}),
)]
pub struct OpenAiRunFailed(pub OpenAiErrorBody);

/// 503 in OpenAI's shape.
#[derive(ToResponse)]
#[response(
    description = "The server cannot take the request now (the database is not answering, \
        the server drives as many runs as it may, or it is shutting down); or, without \
        streaming, the run was interrupted (`run_interrupted`).",
    headers(("Retry-After" = u32, description = "Seconds to wait before retrying (refusals only).")),
    example = json!({"error": {"message": "the database is not answering; try again shortly", "type": "server_error", "param": null, "code": "unavailable"}}),
)]
pub struct OpenAiUnavailable(pub OpenAiErrorBody);

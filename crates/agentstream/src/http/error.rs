//! The API's error type: each variant knows its status code and code string,
//! and every error goes out as `{"error":{"code","message"}}`.

use std::sync::Arc;

use axum::{
    Json,
    extract::Request,
    http::{HeaderValue, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};

use serde::Serialize;

use crate::{runs::RunError, store::StoreError};

/// Seconds a client told to retry (429, 503) should wait.
const RETRY_AFTER_SECS: &str = "1";

/// An error answered to a client.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request is malformed (bad JSON, bad header).
    #[error("{0}")]
    BadRequest(String),
    /// No API key, or a key that is not valid.
    #[error("a valid API key is required: send `Authorization: Bearer <key>`")]
    Unauthorized,
    /// With JWTs on, a bearer credential that was refused: a bad, expired
    /// or wrongly signed token, or an unknown key. Says nothing of why.
    #[error("invalid token")]
    InvalidToken,
    /// With JWTs on, no credential at all.
    #[error("a token or an API key is required: send `Authorization: Bearer <token or key>`")]
    CredentialRequired,
    /// Absent, or not the caller's (never 403: what exists is not revealed).
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The route exists but not with this method.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// The conversation already has an active run.
    #[error("{0}")]
    Conflict(String),
    /// The body or a field is too large.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// The body is not JSON.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// A field is missing or invalid.
    #[error("{0}")]
    Invalid(String),
    /// The caller has too many runs going.
    #[error("{0}")]
    TooManyRuns(String),
    /// The server cannot take this now; retry shortly.
    #[error("{0}")]
    Unavailable(String),
    /// A fault on our side; its source is logged, not sent.
    #[error("internal error: {0}")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl ApiError {
    /// The HTTP status this error answers with.
    pub fn status_code(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized | ApiError::InvalidToken | ApiError::CredentialRequired => {
                StatusCode::UNAUTHORIZED
            }
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::TooManyRuns(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable code in the error body.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "bad_request",
            ApiError::Unauthorized | ApiError::InvalidToken | ApiError::CredentialRequired => {
                "unauthorized"
            }
            ApiError::NotFound(_) => "not_found",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::Conflict(_) => "conflict",
            ApiError::PayloadTooLarge(_) => "payload_too_large",
            ApiError::UnsupportedMediaType(_) => "unsupported_media_type",
            ApiError::Invalid(_) => "invalid_request",
            ApiError::TooManyRuns(_) => "too_many_runs",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Internal(_) => "internal",
        }
    }
}

/// The body of every error response.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[schema(example = json!({"error": {"code": "not_found", "message": "conversation not found"}}))]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// A stable code: `bad_request`, `unauthorized`, `not_found`,
    /// `method_not_allowed`, `conflict`, `payload_too_large`,
    /// `unsupported_media_type`, `invalid_request`, `too_many_runs`,
    /// `unavailable` or `internal`.
    #[schema(example = "not_found")]
    pub code: String,
    /// What happened, for people.
    pub message: String,
}

/// The detail of a 5xx, carried to the logging middleware on the response.
#[derive(Debug, Clone)]
struct Logged(Arc<String>);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status_code();
        let message = match &self {
            ApiError::Internal(_) => "internal server error".to_owned(),
            other => other.to_string(),
        };
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code().to_owned(),
                message,
            },
        };
        let mut response = (status, Json(body)).into_response();
        if matches!(self, ApiError::TooManyRuns(_) | ApiError::Unavailable(_)) {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from_static(RETRY_AFTER_SECS),
            );
        }
        match &self {
            ApiError::Unauthorized | ApiError::CredentialRequired => {
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            // RFC 6750 §3.1: the credential was there, and refused.
            ApiError::InvalidToken => {
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer error=\"invalid_token\""),
                );
            }
            _ => {}
        }
        if status.is_server_error() {
            response
                .extensions_mut()
                .insert(Logged(Arc::new(self.to_string())));
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Unavailable(_) => {
                ApiError::Unavailable("the database is unavailable; try again shortly".to_owned())
            }
            other => ApiError::Internal(Box::new(other)),
        }
    }
}

impl From<RunError> for ApiError {
    fn from(error: RunError) -> Self {
        match error {
            RunError::ConversationNotFound => ApiError::NotFound("conversation"),
            RunError::RunNotFound => ApiError::NotFound("run"),
            RunError::Busy(run_id) => ApiError::Conflict(format!(
                "the conversation already has an active run ({run_id}); wait for it or cancel \
                 it (POST /v1/runs/{run_id}/cancel); POST /v1/conversations/{{id}}/runs also \
                 takes multitask=enqueue or multitask=interrupt"
            )),
            RunError::ShuttingDown => {
                ApiError::Unavailable("the server is shutting down; try again shortly".to_owned())
            }
            RunError::TooManyRuns(_) => ApiError::TooManyRuns(error.to_string()),
            RunError::Overloaded(_) => ApiError::Unavailable(error.to_string()),
            RunError::WrongKind { found, expected } => ApiError::Invalid(format!(
                "conversation_id names a {found} conversation; this route serves {expected} ones"
            )),
            RunError::WrongAgent { .. } => ApiError::Invalid(format!("agent: {error}")),
            RunError::KeyReused(_) => ApiError::Invalid(error.to_string()),
            RunError::CallNotFound(_) => ApiError::NotFound("tool call awaiting approval"),
            RunError::DecidedOtherwise(_) | RunError::NotWaiting(_) | RunError::NotLast(_) => {
                ApiError::Conflict(error.to_string())
            }
            RunError::NoAgent(_) => ApiError::Internal(Box::new(error)),
            RunError::Store(e) => e.into(),
        }
    }
}

impl ApiError {
    /// The response without the detail for the logging middleware: for
    /// refusals whose cause was logged once already (the database probe).
    pub fn unlogged(self) -> Response {
        let mut response = self.into_response();
        response.extensions_mut().remove::<Logged>();
        response
    }
}

/// Logs each 5xx once, with its detail; the client got a generic body.
pub async fn log_errors(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let response = next.run(request).await;
    if let Some(Logged(detail)) = response.extensions().get::<Logged>() {
        let status = response.status().as_u16();
        if response.status() == StatusCode::SERVICE_UNAVAILABLE {
            tracing::warn!(%method, %path, status, detail = %detail, "request refused");
        } else {
            tracing::error!(%method, %path, status, detail = %detail, "request failed");
        }
    }
    response
}

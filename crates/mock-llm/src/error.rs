//! HTTP errors, sent as OpenAI-style `{"error": {...}}` bodies.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::options::OptionError;

/// Every error response the mock sends.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The body is not a valid chat completion request.
    #[error("invalid request body: {0}")]
    InvalidBody(#[from] serde_json::Error),
    /// The `x-mock` header is not visible ASCII.
    #[error("the x-mock header is not valid text")]
    InvalidHeader,
    /// A behaviour option has an invalid value.
    #[error(transparent)]
    InvalidOption(#[from] OptionError),
    /// `fault=500` or a `fail_first=` request.
    #[error("mock-llm: injected server error")]
    InjectedServerError,
    /// `fault=429`.
    #[error("mock-llm: injected rate limit, retry after 0 seconds")]
    InjectedRateLimit,
    /// `context=N`: the prompt is longer than the window.
    #[error(
        "This model's maximum context length is {window} tokens. However, your messages \
         resulted in {tokens} tokens. Please reduce the length of the messages."
    )]
    ContextLength {
        /// The window.
        window: usize,
        /// The prompt's tokens.
        tokens: usize,
    },
    /// The response could not be built.
    #[error("mock-llm: internal error")]
    Internal(#[from] std::io::Error),
}

impl ApiError {
    /// The HTTP status of the response.
    pub fn status_code(&self) -> StatusCode {
        match self {
            Self::InvalidBody(_)
            | Self::InvalidHeader
            | Self::InvalidOption(_)
            | Self::ContextLength { .. } => StatusCode::BAD_REQUEST,
            Self::InjectedServerError | Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::InjectedRateLimit => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    // OpenAI's `error.type` and `error.code` for each kind of failure.
    fn kind_and_code(&self) -> (&'static str, Option<&'static str>) {
        match self {
            Self::InvalidBody(_) | Self::InvalidHeader | Self::InvalidOption(_) => {
                ("invalid_request_error", None)
            }
            Self::ContextLength { .. } => {
                ("invalid_request_error", Some("context_length_exceeded"))
            }
            Self::InjectedServerError | Self::Internal(_) => ("server_error", None),
            Self::InjectedRateLimit => ("requests", Some("rate_limit_exceeded")),
        }
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
}

#[derive(Serialize)]
struct ErrorDetail<'a> {
    message: String,
    #[serde(rename = "type")]
    kind: &'a str,
    param: Option<&'a str>,
    code: Option<&'a str>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (kind, code) = self.kind_and_code();
        let body = Json(ErrorBody {
            error: ErrorDetail {
                message: self.to_string(),
                kind,
                param: None,
                code,
            },
        });
        let mut response = (self.status_code(), body).into_response();
        if matches!(self, Self::InjectedRateLimit) {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("0"));
        }
        response
    }
}

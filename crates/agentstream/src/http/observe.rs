//! One span and one set of figures per request, labelled by the matched
//! route's template (`/v1/runs/{id}`), never by the raw path.
//!
//! Written here rather than with tower-http's trace and request-id layers:
//! the span and the metrics need the same route label and request ID, and
//! its request-ID maker would bring UUID v4 where this codebase uses v7.

use std::time::Instant;

use axum::{
    extract::{MatchedPath, Request},
    http::{HeaderMap, HeaderValue},
    middleware::Next,
    response::Response,
};
use tracing::Instrument;
use uuid::Uuid;

use crate::telemetry::metrics;

/// The header carrying the request's ID, taken from the client when it is a
/// sane token, otherwise made here; the response always carries it.
pub const REQUEST_ID: &str = "x-request-id";

/// Longest client-given request ID kept.
const MAX_REQUEST_ID: usize = 128;

/// Wraps each request in a `request` span (method, route, request ID) and
/// counts it by method, route template and status.
pub async fn observe(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or(metrics::UNMATCHED_ROUTE, MatchedPath::as_str)
        .to_owned();
    let request_id = request_id(request.headers());
    let span = tracing::info_span!("request", %method, %route, %request_id);
    let mut response = next.run(request).instrument(span.clone()).await;
    let elapsed = started.elapsed();
    metrics::http_request(&method, &route, response.status(), elapsed);
    tracing::debug!(
        parent: &span,
        status = response.status().as_u16(),
        elapsed_ms = elapsed.as_secs_f64() * 1000.0,
        "answered"
    );
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    response
}

/// The client's request ID if it is 1 to 128 characters of `[A-Za-z0-9._-]`
/// (nothing that could forge a log line), else a new UUID v7.
fn request_id(headers: &HeaderMap) -> String {
    headers
        .get(REQUEST_ID)
        .and_then(|value| value.to_str().ok())
        .filter(|id| {
            !id.is_empty()
                && id.len() <= MAX_REQUEST_ID
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        })
        .map_or_else(|| Uuid::now_v7().to_string(), str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_kept_only_when_sane() {
        let mut headers = HeaderMap::new();
        headers.insert(REQUEST_ID, HeaderValue::from_static("abc-123.x_y"));
        assert_eq!(request_id(&headers), "abc-123.x_y");
        for bad in ["", "a b", "line\tbreak", "é"] {
            let mut headers = HeaderMap::new();
            if let Ok(value) = HeaderValue::from_str(bad) {
                headers.insert(REQUEST_ID, value);
            }
            let id = request_id(&headers);
            assert!(Uuid::parse_str(&id).is_ok(), "{bad:?} gave {id:?}");
        }
        let mut headers = HeaderMap::new();
        headers.insert(REQUEST_ID, HeaderValue::from_str(&"a".repeat(129)).unwrap());
        assert!(Uuid::parse_str(&request_id(&headers)).is_ok());
    }
}

//! CORS (the Fetch standard's cross-origin checks): which web pages on other
//! origins may call the API from a browser, as a `useChat` front end on
//! `https://app.example.com` does. Off unless origins are configured
//! (`--cors-origin`); then preflights are answered before authentication,
//! and responses let the page read the headers the API names things in.

use std::time::Duration;

use axum::http::{HeaderName, HeaderValue, Method, header};
use tower_http::cors::{AllowOrigin, CorsLayer};

/// How long a browser may keep a preflight's answer.
const PREFLIGHT_MAX_AGE: Duration = Duration::from_secs(3600);

/// The request headers a page may send: credentials, JSON bodies, resuming
/// a stream, continuing an OpenAI-style conversation, tracing a request.
const ALLOWED_HEADERS: [HeaderName; 6] = [
    header::AUTHORIZATION,
    header::CONTENT_TYPE,
    header::ACCEPT,
    HeaderName::from_static("last-event-id"),
    HeaderName::from_static("x-conversation-id"),
    HeaderName::from_static("x-request-id"),
];

/// The response headers a page may read besides the always-readable ones.
const EXPOSED_HEADERS: [HeaderName; 5] = [
    HeaderName::from_static("x-conversation-id"),
    HeaderName::from_static("x-run-id"),
    HeaderName::from_static("x-request-id"),
    HeaderName::from_static("x-vercel-ai-ui-message-stream"),
    header::RETRY_AFTER,
];

/// The CORS layer for `origins` (`*` for any); None when there are none.
/// Errors name an entry that is not an origin (`scheme://host[:port]`).
pub fn layer(origins: &[String]) -> Result<Option<CorsLayer>, String> {
    let origins: Vec<&str> = origins
        .iter()
        .map(|origin| origin.trim())
        .filter(|origin| !origin.is_empty())
        .collect();
    if origins.is_empty() {
        return Ok(None);
    }
    let allow = if origins.contains(&"*") {
        AllowOrigin::any()
    } else {
        let values = origins
            .iter()
            .map(|origin| parse_origin(origin))
            .collect::<Result<Vec<_>, _>>()?;
        AllowOrigin::list(values)
    };
    Ok(Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST, Method::DELETE])
            .allow_headers(ALLOWED_HEADERS)
            .expose_headers(EXPOSED_HEADERS)
            .max_age(PREFLIGHT_MAX_AGE),
    ))
}

/// `origin` as browsers send it in `Origin`: `http` or `https`, a host, a
/// port perhaps, and nothing after.
fn parse_origin(origin: &str) -> Result<HeaderValue, String> {
    let refuse = || {
        format!(
            "--cors-origin: {origin:?} is not an origin; write it as a browser sends it, \
             such as https://app.example.com or http://localhost:3000 (no path, no trailing \
             slash), or * for any"
        )
    };
    let rest = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"))
        .ok_or_else(refuse)?;
    let valid_host = !rest.is_empty()
        && rest
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'));
    if !valid_host {
        return Err(refuse());
    }
    HeaderValue::from_str(&origin.to_ascii_lowercase()).map_err(|_| refuse())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_checked() {
        assert!(layer(&[]).unwrap().is_none());
        assert!(layer(&[" ".to_owned()]).unwrap().is_none());
        assert!(layer(&["*".to_owned()]).unwrap().is_some());
        assert!(
            layer(&[
                "https://app.example.com".to_owned(),
                "http://localhost:3000".to_owned(),
                "http://[::1]:8080".to_owned(),
            ])
            .unwrap()
            .is_some()
        );
        for bad in [
            "app.example.com",
            "https://app.example.com/",
            "https://app.example.com/chat",
            "ftp://example.com",
            "https://",
        ] {
            let error = layer(&[bad.to_owned()]).unwrap_err();
            assert!(error.contains("is not an origin"), "{bad}: {error}");
        }
    }
}

//! The chat page (`GET /`), its script, style sheet, vendored libraries and
//! icon, compiled into the binary so the server needs no files and no
//! network to serve them.

use axum::{
    Router,
    http::{HeaderValue, header},
    response::IntoResponse,
    routing::get,
};

use super::{AppState, openapi::Unavailable};

const INDEX_HTML: &str = include_str!("../../assets/index.html");
const APP_JS: &str = include_str!("../../assets/app.js");
const STYLE_CSS: &str = include_str!("../../assets/style.css");
/// marked and DOMPurify, pinned; `scripts/vendor-page.sh` fetches them again.
const MARKED_JS: &str = include_str!("../../assets/vendor/marked.umd.js");
const PURIFY_JS: &str = include_str!("../../assets/vendor/purify.min.js");
const FAVICON_SVG: &str = include_str!("../../assets/favicon.svg");

/// Everything comes from this origin; the page has no inline script or style.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; \
     form-action 'none'";

/// The page's routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(index))
        .route("/assets/app.js", get(app_js))
        .route("/assets/style.css", get(style_css))
        .route("/assets/vendor/marked.umd.js", get(marked_js))
        .route("/assets/vendor/purify.min.js", get(purify_js))
        .route("/favicon.svg", get(favicon_svg))
        .route("/favicon.ico", get(favicon_ico))
}

/// Headers every asset carries: its type, and `no-cache` so a new binary's
/// page is picked up at once (revalidated, never served stale).
fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
        ],
        body,
    )
}

/// `GET /`: the chat page.
#[utoipa::path(
    get,
    path = "/",
    tag = "page",
    summary = "The chat page",
    responses(
        (status = 200, description = "The chat page (HTML).", content_type = "text/html", body = String),
        (status = 503, response = Unavailable),
    ),
)]
async fn index() -> impl IntoResponse {
    (
        [
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(CONTENT_SECURITY_POLICY),
            ),
            (
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            ),
        ],
        asset("text/html; charset=utf-8", INDEX_HTML),
    )
}

/// `GET /assets/app.js`.
#[utoipa::path(
    get,
    path = "/assets/app.js",
    tag = "page",
    summary = "The chat page's script",
    responses(
        (status = 200, description = "The script.", content_type = "text/javascript", body = String),
        (status = 503, response = Unavailable),
    ),
)]
async fn app_js() -> impl IntoResponse {
    asset("text/javascript; charset=utf-8", APP_JS)
}

/// `GET /assets/style.css`.
#[utoipa::path(
    get,
    path = "/assets/style.css",
    tag = "page",
    summary = "The chat page's style sheet",
    responses(
        (status = 200, description = "The style sheet.", content_type = "text/css", body = String),
        (status = 503, response = Unavailable),
    ),
)]
async fn style_css() -> impl IntoResponse {
    asset("text/css; charset=utf-8", STYLE_CSS)
}

/// `GET /assets/vendor/marked.umd.js`: marked, which turns the assistant's
/// Markdown into HTML.
#[utoipa::path(
    get,
    path = "/assets/vendor/marked.umd.js",
    tag = "page",
    summary = "The Markdown parser the chat page uses (marked)",
    responses(
        (status = 200, description = "The script.", content_type = "text/javascript", body = String),
        (status = 503, response = Unavailable),
    ),
)]
async fn marked_js() -> impl IntoResponse {
    asset("text/javascript; charset=utf-8", MARKED_JS)
}

/// `GET /assets/vendor/purify.min.js`: DOMPurify, which sanitizes that HTML.
#[utoipa::path(
    get,
    path = "/assets/vendor/purify.min.js",
    tag = "page",
    summary = "The HTML sanitizer the chat page uses (DOMPurify)",
    responses(
        (status = 200, description = "The script.", content_type = "text/javascript", body = String),
        (status = 503, response = Unavailable),
    ),
)]
async fn purify_js() -> impl IntoResponse {
    asset("text/javascript; charset=utf-8", PURIFY_JS)
}

/// `GET /favicon.svg`: the page's icon.
#[utoipa::path(
    get,
    path = "/favicon.svg",
    tag = "page",
    summary = "The chat page's icon",
    responses(
        (status = 200, description = "The icon (SVG).", content_type = "image/svg+xml", body = String),
        (status = 503, response = Unavailable),
    ),
)]
async fn favicon_svg() -> impl IntoResponse {
    asset("image/svg+xml", FAVICON_SVG)
}

/// `GET /favicon.ico`: the same icon, for browsers that ask for this name
/// whatever the page links.
#[utoipa::path(
    get,
    path = "/favicon.ico",
    tag = "page",
    summary = "The chat page's icon, at the name browsers try first",
    responses(
        (status = 200, description = "The icon (SVG).", content_type = "image/svg+xml", body = String),
        (status = 503, response = Unavailable),
    ),
)]
async fn favicon_ico() -> impl IntoResponse {
    asset("image/svg+xml", FAVICON_SVG)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_only_its_own_assets() {
        assert!(INDEX_HTML.contains(r#"src="/assets/app.js""#));
        assert!(INDEX_HTML.contains(r#"href="/assets/style.css""#));
        assert!(INDEX_HTML.contains(r#"src="/assets/vendor/marked.umd.js""#));
        assert!(INDEX_HTML.contains(r#"src="/assets/vendor/purify.min.js""#));
        assert!(INDEX_HTML.contains(r#"href="/favicon.svg""#));
        for text in [INDEX_HTML, APP_JS, STYLE_CSS] {
            assert!(!text.contains("http://"), "no absolute URL");
            assert!(!text.contains("https://"), "no absolute URL");
        }
        assert!(!INDEX_HTML.contains("<script>"), "no inline script (CSP)");
        assert!(!INDEX_HTML.contains("style="), "no inline style (CSP)");
    }
}

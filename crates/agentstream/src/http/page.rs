//! The chat page (`GET /`) and its script and style sheet, compiled into the
//! binary so the server needs no files and no network to serve them.

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_only_its_own_assets() {
        assert!(INDEX_HTML.contains(r#"src="/assets/app.js""#));
        assert!(INDEX_HTML.contains(r#"href="/assets/style.css""#));
        for text in [INDEX_HTML, APP_JS, STYLE_CSS] {
            assert!(!text.contains("http://"), "no absolute URL");
            assert!(!text.contains("https://"), "no absolute URL");
        }
        assert!(!INDEX_HTML.contains("<script>"), "no inline script (CSP)");
        assert!(!INDEX_HTML.contains("style="), "no inline style (CSP)");
    }
}

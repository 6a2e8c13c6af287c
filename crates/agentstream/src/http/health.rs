//! Liveness and readiness.

use axum::{Json, Router, extract::State, routing::get};

use super::{ApiError, AppState, openapi::Unavailable};

/// What the health routes answer.
#[derive(utoipa::ToSchema)]
#[expect(
    dead_code,
    reason = "describes the handlers' `json!` bodies for the OpenAPI document"
)]
struct Status {
    /// `ok` (the process is up) or `ready` (the database answers).
    #[schema(example = "ok")]
    status: String,
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(health))
        .route("/readyz", get(ready))
}

/// `GET /healthz`: the process is up (liveness). Needs no database.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    summary = "Liveness",
    responses((status = 200, description = "The process is up: `{\"status\": \"ok\"}`.", body = Status)),
)]
async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

/// `GET /readyz`: the process can serve, the database answers (readiness).
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    summary = "Readiness",
    responses(
        (status = 200, description = "The database answers: `{\"status\": \"ready\"}`.", body = Status),
        (status = 503, response = Unavailable),
    ),
)]
async fn ready(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    state.store.ping().await?;
    Ok(Json(serde_json::json!({ "status": "ready" })))
}

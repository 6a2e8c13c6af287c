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
    /// `/readyz` only: each MCP server's state, by its `[mcp.NAME]`. A
    /// server that is down does not make the node unready: only the calls
    /// of its tools fail (a tool error the model reads).
    #[schema(value_type = Option<Object>, example = json!({"time": {"state": "up", "optional": false, "tools": 2}}))]
    mcp: Option<serde_json::Value>,
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
        (status = 200, description = "The database answers: `{\"status\": \"ready\", \"mcp\": {…}}`, with each MCP server's state (`starting`, `up`, `down` with its `error`, `closed`).", body = Status),
        (status = 503, response = Unavailable),
    ),
)]
async fn ready(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    state.store.ping().await?;
    Ok(Json(
        serde_json::json!({ "status": "ready", "mcp": state.mcp.status() }),
    ))
}

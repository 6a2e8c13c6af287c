//! The agents a caller may talk to.

use axum::{Json, Router, extract::State, routing::get};
use serde::Serialize;

use super::{
    ApiError, AppState,
    extract::CurrentUser,
    openapi::{Unauthorized, Unavailable},
};

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/agents", get(list_agents))
}

/// An agent, as a client picks one.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AgentInfo {
    /// Its name: the `agent` of `POST /v1/conversations`.
    #[schema(example = "chat")]
    name: String,
    /// What it is for, in one line.
    description: String,
    /// The model's name at its provider (`demo` for the demo model).
    model: String,
    /// True when it runs on the built-in scripted demo model: offline,
    /// deterministic, not a real LLM.
    demo: bool,
    /// The tools it may call, by name.
    tools: Vec<String>,
}

/// The agents, by name.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct AgentList {
    /// Every agent the caller may use, ordered by name.
    data: Vec<AgentInfo>,
}

/// `GET /v1/agents`: every agent the configuration defines.
#[utoipa::path(
    get,
    path = "/v1/agents",
    tag = "agents",
    summary = "List the agents",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The agents, ordered by name.", body = AgentList),
        (status = 401, response = Unauthorized),
        (status = 503, response = Unavailable),
    ),
)]
async fn list_agents(
    State(state): State<AppState>,
    CurrentUser(_user): CurrentUser,
) -> Result<Json<AgentList>, ApiError> {
    let data = state
        .runs
        .agents()
        .iter()
        .map(|agent| AgentInfo {
            name: agent.name.clone(),
            description: agent.description.clone(),
            model: agent.model.clone(),
            demo: agent.provider.is_demo(),
            tools: agent.tools.iter().map(|t| t.spec().name.clone()).collect(),
        })
        .collect();
    Ok(Json(AgentList { data }))
}

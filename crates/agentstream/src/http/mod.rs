//! HTTP: routes, extractors, the error type and the wire formats of streams.

mod agents;
mod ai_sdk;
mod approvals;
pub mod auth;
mod compat;
mod conversations;
pub mod cors;
pub mod error;
mod extract;
mod health;
mod metrics;
mod observe;
pub mod openai;
pub mod openapi;
mod page;
mod profile;
mod retry;
mod runs;
mod transcripts;
pub mod wire;

use std::{sync::Arc, time::Duration};

use axum::{Router, extract::DefaultBodyLimit, middleware};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

pub use error::ApiError;

use crate::{
    runs::RunManager,
    store::{Store, User},
    tools::mcp::McpServers,
};

/// Limits the HTTP layer enforces.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest user message, in bytes.
    pub max_message_bytes: usize,
    /// Largest request body, in bytes.
    pub max_body_bytes: usize,
    /// Origins allowed to call from a browser (CORS); `*` for any; none
    /// when empty.
    pub cors_origins: Vec<String>,
}

/// What every handler shares. Cheap to clone.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The database.
    pub(crate) store: Store,
    /// Starts, stops and streams runs.
    pub(crate) runs: RunManager,
    /// How callers are authenticated.
    pub(crate) auth: auth::Auth,
    /// The user of requests without a key, when the server allows them.
    pub(crate) local_user: User,
    /// Request and run limits.
    pub(crate) limits: Arc<Limits>,
    /// What the SSE streams share: keep-alive, the end at shutdown, their count.
    pub(crate) streams: wire::Streams,
    /// The MCP servers, for `/readyz` (none unless `with_mcp`).
    pub(crate) mcp: McpServers,
}

impl AppState {
    /// The database.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The run manager.
    pub fn runs(&self) -> &RunManager {
        &self.runs
    }

    /// The user of requests without a key.
    pub fn local_user(&self) -> &User {
        &self.local_user
    }

    /// How callers are authenticated.
    pub fn auth(&self) -> &auth::Auth {
        &self.auth
    }

    /// The MCP servers tools are imported from.
    pub fn mcp(&self) -> &McpServers {
        &self.mcp
    }

    /// The state with the MCP servers `/readyz` reports on.
    pub fn with_mcp(self, mcp: McpServers) -> AppState {
        AppState { mcp, ..self }
    }

    /// Builds the state; `auth` acts as `local_user` where it allows that.
    pub fn new(
        store: Store,
        runs: RunManager,
        local_user: User,
        auth: auth::Auth,
        limits: Limits,
        keep_alive: Duration,
        streams_end: CancellationToken,
    ) -> AppState {
        AppState {
            store,
            runs,
            auth,
            local_user,
            limits: Arc::new(limits),
            streams: wire::Streams {
                keep_alive,
                end: streams_end,
                open: TaskTracker::new(),
            },
            mcp: McpServers::default(),
        }
    }
}

/// Routes that need no database, served while it is down: liveness, the
/// figures an operator watches during the outage, and the API's contract.
const SERVED_WHILE_DB_DOWN: [&str; 3] = ["/healthz", "/metrics", "/openapi.json"];

/// While the database does not answer, every route but those above gets 503
/// at once: a client is told now rather than after the pool timeout.
async fn refuse_while_db_down(
    axum::extract::State(state): axum::extract::State<AppState>,
    request: axum::extract::Request,
    next: middleware::Next,
) -> axum::response::Response {
    let path = request.uri().path();
    if state.store.is_down() && !SERVED_WHILE_DB_DOWN.contains(&path) {
        let refusal =
            ApiError::Unavailable("the database is not answering; try again shortly".to_owned());
        return if openai::serves(path) {
            openai::OpenAiApiError::from(refusal).unlogged()
        } else {
            refusal.unlogged()
        };
    }
    next.run(request).await
}

/// The whole API. Installs the process's metrics recorder if no app did yet.
pub fn router(state: AppState) -> Router {
    crate::telemetry::metrics::handle();
    let body_limit = state.limits.max_body_bytes;
    let router = Router::new()
        .merge(agents::router())
        .merge(conversations::router())
        .merge(runs::router())
        .merge(transcripts::router())
        .merge(retry::router())
        .merge(approvals::router())
        .merge(profile::router())
        .merge(compat::router())
        .merge(openai::router())
        .merge(ai_sdk::router())
        .merge(health::router())
        .merge(page::router())
        .merge(metrics::router())
        .merge(openapi::router())
        .fallback(|| async { ApiError::NotFound("route") })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            refuse_while_db_down,
        ))
        .layer(middleware::from_fn(error::log_errors))
        // Outermost: the request's span covers every log line above, and
        // its figures count every answer, refusals included.
        .layer(middleware::from_fn(observe::observe));
    // Outside it: a preflight is answered here, before authentication. The
    // origins were checked at start-up (`App::new`).
    let router = match cors::layer(&state.limits.cors_origins) {
        Ok(Some(cors)) => router.layer(cors),
        Ok(None) | Err(_) => router,
    };
    router.with_state(state)
}

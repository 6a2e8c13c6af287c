//! HTTP: routes, extractors, the error type and SSE encoding.

pub mod auth;
mod compat;
mod conversations;
pub mod error;
mod extract;
mod health;
mod page;
mod profile;
mod runs;
mod sse;

use std::{sync::Arc, time::Duration};

use axum::{Router, extract::DefaultBodyLimit, middleware};
use tokio_util::sync::CancellationToken;

pub use error::ApiError;

use crate::{
    config::Limits,
    runs::RunManager,
    store::{Store, User},
};

/// What every handler shares. Cheap to clone.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The database.
    pub store: Store,
    /// Starts, stops and streams runs.
    pub runs: RunManager,
    /// How callers are authenticated.
    pub auth: auth::Auth,
    /// The user of requests without a key, when the server allows them.
    pub local_user: User,
    /// Request and run limits.
    pub limits: Arc<Limits>,
    /// Interval of SSE keep-alive comments.
    pub keep_alive: Duration,
    /// Fired at the end of shutdown: every open SSE stream ends.
    pub streams_end: CancellationToken,
}

impl AppState {
    /// Builds the state.
    pub fn new(
        store: Store,
        runs: RunManager,
        local_user: User,
        local_allowed: bool,
        limits: Limits,
        keep_alive: Duration,
        streams_end: CancellationToken,
    ) -> AppState {
        AppState {
            store,
            runs,
            auth: auth::Auth::new(local_user.clone(), local_allowed),
            local_user,
            limits: Arc::new(limits),
            keep_alive,
            streams_end,
        }
    }
}

/// While the database does not answer, every route but `/healthz` gets 503
/// at once: a client is told now rather than after the pool timeout.
async fn refuse_while_db_down(
    axum::extract::State(state): axum::extract::State<AppState>,
    request: axum::extract::Request,
    next: middleware::Next,
) -> axum::response::Response {
    if state.store.is_down() && request.uri().path() != "/healthz" {
        return ApiError::Unavailable(
            "the database is not answering; try again shortly".to_owned(),
        )
        .unlogged();
    }
    next.run(request).await
}

/// The whole API.
pub fn router(state: AppState) -> Router {
    let body_limit = state.limits.max_body_bytes;
    Router::new()
        .merge(conversations::router())
        .merge(runs::router())
        .merge(profile::router())
        .merge(compat::router())
        .merge(health::router())
        .merge(page::router())
        .fallback(|| async { ApiError::NotFound("route") })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            refuse_while_db_down,
        ))
        .layer(middleware::from_fn(error::log_errors))
        .with_state(state)
}

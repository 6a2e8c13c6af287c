//! HTTP: routes, extractors, the error type and SSE encoding.

mod compat;
mod conversations;
pub mod error;
mod extract;
mod health;
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
    /// The single local user (until API keys).
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
        limits: Limits,
        keep_alive: Duration,
        streams_end: CancellationToken,
    ) -> AppState {
        AppState {
            store,
            runs,
            local_user,
            limits: Arc::new(limits),
            keep_alive,
            streams_end,
        }
    }
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
        .fallback(|| async { ApiError::NotFound("route") })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn(error::log_errors))
        .with_state(state)
}

//! `GET /metrics`: the Prometheus figures, with the state gauges sampled now.

use axum::{
    Router,
    extract::State,
    http::{HeaderValue, header},
    response::IntoResponse,
    routing::get,
};

use super::AppState;
use crate::telemetry::metrics::{self, Sample};

/// The Prometheus text exposition format.
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The metrics route.
pub fn router() -> Router<AppState> {
    Router::new().route("/metrics", get(get_metrics))
}

/// `GET /metrics`: runs, subscribers, the event log, the model upstream, the
/// database pool and HTTP requests, in the Prometheus text format. Needs no
/// key and no database: it answers while the database is down.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses((
        status = 200,
        description = "The figures in the Prometheus text exposition format (0.0.4).",
        content_type = "text/plain",
        body = String,
    )),
)]
async fn get_metrics(State(state): State<AppState>) -> impl IntoResponse {
    let pool = state.store.pool();
    metrics::sample(Sample {
        runs_active: state.runs.active_count(),
        pool_connections: pool.size(),
        pool_idle: pool.num_idle(),
        pool_max: pool.options().get_max_connections(),
        database_up: !state.store.is_down(),
    });
    (
        [(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE))],
        metrics::render(),
    )
}

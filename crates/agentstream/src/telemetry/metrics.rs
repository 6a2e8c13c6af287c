//! The Prometheus figures: one recorder per process, installed on first use
//! (tests build many apps in one process), and one small function per thing
//! measured, so that every call site elsewhere is one line.
//!
//! Counters and histograms are recorded where things happen; the gauges that
//! are a state (pool, active runs, database up) are sampled at scrape time
//! by `GET /metrics`.

use std::{
    sync::OnceLock,
    time::{Duration, Instant},
};

use axum::http::{Method, StatusCode};
use futures_util::{StreamExt, stream::BoxStream};
use metrics::{
    Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram,
};
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};

/// Runs this node is driving (sampled).
pub const RUNS_ACTIVE: &str = "agentstream_runs_active";
/// Runs waiting for their conversation's active run.
pub const RUNS_QUEUED: &str = "agentstream_runs_queued";
/// Run tasks started on this node.
pub const RUNS_STARTED: &str = "agentstream_runs_started_total";
/// Runs whose end was committed, by final status.
pub const RUNS_FINISHED: &str = "agentstream_runs_finished_total";
/// Open SSE streams.
pub const SUBSCRIBERS: &str = "agentstream_subscribers";
/// Events committed to the event log.
pub const EVENTS_COMMITTED: &str = "agentstream_events_committed_total";
/// Events per event-log transaction.
pub const COMMIT_BATCH: &str = "agentstream_event_commit_batch_size";
/// From a run-starting request to the run's first event on its stream.
pub const FIRST_EVENT: &str = "agentstream_first_event_seconds";
/// From a model call to its first token.
pub const UPSTREAM_FIRST_TOKEN: &str = "agentstream_upstream_first_token_seconds";
/// Model calls that failed, by error code.
pub const UPSTREAM_ERRORS: &str = "agentstream_upstream_errors_total";
/// Open pool connections (sampled).
pub const POOL_CONNECTIONS: &str = "agentstream_db_pool_connections";
/// Idle pool connections (sampled).
pub const POOL_IDLE: &str = "agentstream_db_pool_idle_connections";
/// The pool's ceiling (sampled).
pub const POOL_MAX: &str = "agentstream_db_pool_max_connections";
/// Time to get a pool connection.
pub const POOL_ACQUIRE: &str = "agentstream_db_pool_acquire_seconds";
/// SQLite's write turn: how long a write transaction waited for it
/// (`phase="wait"`) and held it (`phase="held"`), by holder: the event log's
/// commits (`holder="event_log"`) or any other write (`holder="transaction"`:
/// run starts, tool calls, the rest).
pub const WRITE_TURN: &str = "agentstream_db_write_turn_seconds";
/// 1 while the health probe finds the database answering (sampled).
pub const DATABASE_UP: &str = "agentstream_db_up";
/// HTTP requests answered, by method, route template and status.
pub const HTTP_REQUESTS: &str = "agentstream_http_requests_total";
/// Time to the response's head, by method and route template.
pub const HTTP_DURATION: &str = "agentstream_http_request_duration_seconds";

/// HTTP tool calls, by tool and outcome.
pub const HTTP_TOOL_CALLS: &str = "agentstream_http_tool_calls_total";
/// An HTTP tool call's time, retries included, by tool.
pub const HTTP_TOOL_DURATION: &str = "agentstream_http_tool_duration_seconds";

/// MCP tool calls, by server, tool and outcome.
pub const MCP_TOOL_CALLS: &str = "agentstream_mcp_tool_calls_total";
/// An MCP tool call's time, by server and tool.
pub const MCP_TOOL_DURATION: &str = "agentstream_mcp_tool_duration_seconds";
/// MCP tool calls sent and not yet answered, by server.
pub const MCP_CALLS_IN_FLIGHT: &str = "agentstream_mcp_calls_in_flight";
/// 1 while an MCP server's session is up, by server.
pub const MCP_SERVER_UP: &str = "agentstream_mcp_server_up";

/// The route label of a request that matched no route: raw paths are never
/// labels, so the number of series stays bounded.
pub const UNMATCHED_ROUTE: &str = "unmatched";

/// Seconds: from a millisecond to a minute (streams of slow models included).
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
/// Events: powers of two up to the writer's largest batch (4096).
const BATCH_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0,
];
/// How often histogram samples are folded in when nobody scrapes, so their
/// memory stays bounded (a scrape folds them in too).
const UPKEEP: Duration = Duration::from_secs(5);

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process's recorder, installed on the first call. Every later call, by
/// any app in the process, returns the same one.
pub fn handle() -> &'static PrometheusHandle {
    HANDLE.get_or_init(install)
}

/// The figures in the Prometheus text format.
pub fn render() -> String {
    handle().render()
}

fn builder() -> Result<PrometheusBuilder, BuildError> {
    let latency = [
        FIRST_EVENT,
        UPSTREAM_FIRST_TOKEN,
        POOL_ACQUIRE,
        WRITE_TURN,
        HTTP_DURATION,
        HTTP_TOOL_DURATION,
        MCP_TOOL_DURATION,
    ];
    let mut builder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(COMMIT_BATCH.to_owned()), BATCH_BUCKETS)?;
    for name in latency {
        builder =
            builder.set_buckets_for_metric(Matcher::Full(name.to_owned()), LATENCY_BUCKETS)?;
    }
    Ok(builder)
}

fn install() -> PrometheusHandle {
    // The buckets are constants, never empty: the fallback (summaries) is
    // only there so that no error path panics.
    let recorder = builder()
        .unwrap_or_else(|_| PrometheusBuilder::new())
        .build_recorder();
    let handle = recorder.handle();
    if metrics::set_global_recorder(recorder).is_err() {
        tracing::warn!("another metrics recorder is installed: /metrics shows no figures");
        return handle;
    }
    describe();
    // Series that exist from the start, at zero, rather than appearing with
    // their first change: a query over them needs no `or vector(0)`.
    counter!(RUNS_STARTED).increment(0);
    counter!(EVENTS_COMMITTED).increment(0);
    gauge!(RUNS_QUEUED).increment(0.0);
    gauge!(SUBSCRIBERS).increment(0.0);
    // A plain thread rather than a task: the recorder lives as long as the
    // process, beyond any one app's runtime and shutdown.
    let upkeep = handle.clone();
    let spawned = std::thread::Builder::new()
        .name("metrics-upkeep".to_owned())
        .spawn(move || {
            loop {
                std::thread::sleep(UPKEEP);
                upkeep.run_upkeep();
            }
        });
    if let Err(error) = spawned {
        tracing::warn!(%error, "no metrics upkeep thread: histograms are folded in at scrapes only");
    }
    handle
}

fn describe() {
    describe_gauge!(RUNS_ACTIVE, "Runs this node is driving.");
    describe_gauge!(
        RUNS_QUEUED,
        "Runs waiting for their conversation's active run (queued here minus started or ended here; sum over nodes)."
    );
    describe_counter!(RUNS_STARTED, "Run tasks started on this node.");
    describe_counter!(
        RUNS_FINISHED,
        "Runs whose end this node committed, by final status."
    );
    describe_gauge!(SUBSCRIBERS, "Open SSE streams of run events.");
    describe_counter!(EVENTS_COMMITTED, "Events committed to the event log.");
    describe_histogram!(
        COMMIT_BATCH,
        "Events per event-log transaction (group commit)."
    );
    describe_histogram!(
        FIRST_EVENT,
        Unit::Seconds,
        "From a run-starting request to the run's first event on its stream."
    );
    describe_histogram!(
        UPSTREAM_FIRST_TOKEN,
        Unit::Seconds,
        "From a model call to its first text or tool call, by agent."
    );
    describe_counter!(
        UPSTREAM_ERRORS,
        "Model calls that failed, by agent and error code."
    );
    describe_gauge!(POOL_CONNECTIONS, "Open database pool connections.");
    describe_gauge!(POOL_IDLE, "Idle database pool connections.");
    describe_gauge!(POOL_MAX, "Most connections the database pool opens.");
    describe_histogram!(
        POOL_ACQUIRE,
        Unit::Seconds,
        "Time to get a database pool connection."
    );
    describe_histogram!(
        WRITE_TURN,
        Unit::Seconds,
        "SQLite only: how long a write transaction waited for the process's write turn \
         (phase=\"wait\") and held it (phase=\"held\"), by holder: the event log's commits \
         (holder=\"event_log\") or other writes (holder=\"transaction\")."
    );
    describe_gauge!(
        DATABASE_UP,
        "1 while the health probe finds the database answering, else 0."
    );
    describe_counter!(
        HTTP_REQUESTS,
        "HTTP requests answered, by method, route template and status."
    );
    describe_histogram!(
        HTTP_DURATION,
        Unit::Seconds,
        "Time to the response's head, by method and route template (a stream's head comes first)."
    );
    describe_counter!(
        HTTP_TOOL_CALLS,
        "HTTP tool calls, by tool and outcome (ok, client_error, server_error, redirect, not_json, too_large, timeout, unreachable)."
    );
    describe_histogram!(
        HTTP_TOOL_DURATION,
        Unit::Seconds,
        "An HTTP tool call's time, retries included, by tool."
    );
    describe_counter!(
        MCP_TOOL_CALLS,
        "MCP tool calls, by server, tool and outcome (ok, tool_error, refused, timeout, lost, unavailable, failed, stopped)."
    );
    describe_histogram!(
        MCP_TOOL_DURATION,
        Unit::Seconds,
        "An MCP tool call's time, by server and tool."
    );
    describe_gauge!(
        MCP_CALLS_IN_FLIGHT,
        "MCP tool calls sent and not yet answered (or abandoned), by server."
    );
    describe_gauge!(
        MCP_SERVER_UP,
        "1 while the MCP server's session is up, else 0, by server."
    );
}

/// A run's task started on this node.
pub fn run_started() {
    counter!(RUNS_STARTED).increment(1);
}

/// A run was stored as `queued`.
pub fn run_queued() {
    gauge!(RUNS_QUEUED).increment(1.0);
}

/// A queued run started, or ended without starting (cancelled, interrupted).
pub fn run_dequeued() {
    gauge!(RUNS_QUEUED).decrement(1.0);
}

/// A run's end was committed with `status` (its stored name: `completed`, …).
pub fn run_finished(status: &'static str) {
    counter!(RUNS_FINISHED, "status" => status).increment(1);
}

/// The event log committed a transaction of `events` events.
pub fn events_committed(events: usize) {
    if events == 0 {
        return;
    }
    counter!(EVENTS_COMMITTED).increment(events as u64);
    histogram!(COMMIT_BATCH).record(events as f64);
}

/// A run-starting request's first event went out, `latency` after the
/// request came in.
pub fn first_event(latency: Duration) {
    histogram!(FIRST_EVENT).record(latency);
}

/// A model call of `agent` answered its first token after `latency`.
pub fn upstream_first_token(agent: &str, latency: Duration) {
    histogram!(UPSTREAM_FIRST_TOKEN, "agent" => agent.to_owned()).record(latency);
}

/// A model call of `agent` failed with `code` (`upstream_timeout`, …).
pub fn upstream_error(agent: &str, code: &'static str) {
    counter!(UPSTREAM_ERRORS, "agent" => agent.to_owned(), "code" => code).increment(1);
}

/// What [`observe_upstream`] reads from the items of a model stream; the
/// model client implements it for its items.
pub trait UpstreamItem {
    /// Whether the item is a token: text or a tool call.
    fn is_token(&self) -> bool;
    /// The item's error code (`upstream_timeout`, …) if it is a failure.
    fn error_code(&self) -> Option<&'static str>;
}

/// The model call `stream` of `agent`, measured: its first token's latency
/// and its failure, if it fails.
pub fn observe_upstream<I>(agent: &str, stream: BoxStream<'static, I>) -> BoxStream<'static, I>
where
    I: UpstreamItem + Send + 'static,
{
    let asked = Instant::now();
    let agent = agent.to_owned();
    let mut waiting = true;
    stream
        .inspect(move |item| {
            if let Some(code) = item.error_code() {
                upstream_error(&agent, code);
            } else if waiting && item.is_token() {
                waiting = false;
                upstream_first_token(&agent, asked.elapsed());
            }
        })
        .boxed()
}

/// Getting a pool connection took `wait`.
pub fn pool_acquire(wait: Duration) {
    histogram!(POOL_ACQUIRE).record(wait);
}

/// Records a wait for SQLite's write turn, or how long it was held, by its
/// holder (`event_log` or `transaction`).
pub fn write_turn(phase: &'static str, holder: &'static str, time: Duration) {
    histogram!(WRITE_TURN, "phase" => phase, "holder" => holder).record(time.as_secs_f64());
}

/// Records the time to get a pool connection when dropped: put one at the
/// top of the function that acquires.
#[derive(Debug)]
#[must_use = "the wait is recorded when the timer is dropped"]
pub struct AcquireTimer(Instant);

impl AcquireTimer {
    /// Starts timing.
    pub fn start() -> AcquireTimer {
        AcquireTimer(Instant::now())
    }
}

impl Drop for AcquireTimer {
    fn drop(&mut self) {
        pool_acquire(self.0.elapsed());
    }
}

/// Counts an open SSE stream for as long as it lives.
#[derive(Debug)]
pub struct Subscribed(());

impl Subscribed {
    /// A stream opened.
    pub fn open() -> Subscribed {
        gauge!(SUBSCRIBERS).increment(1.0);
        Subscribed(())
    }
}

impl Drop for Subscribed {
    fn drop(&mut self) {
        gauge!(SUBSCRIBERS).decrement(1.0);
    }
}

/// An HTTP request was answered. `route` is the route's template (or
/// [`UNMATCHED_ROUTE`]), never the raw path.
pub fn http_request(method: &Method, route: &str, status: StatusCode, elapsed: Duration) {
    let method = method_label(method);
    counter!(
        HTTP_REQUESTS,
        "method" => method,
        "route" => route.to_owned(),
        "status" => status.as_u16().to_string()
    )
    .increment(1);
    histogram!(HTTP_DURATION, "method" => method, "route" => route.to_owned()).record(elapsed);
}

/// A call of the HTTP tool `tool` ended with `outcome` (`ok`, `timeout`, …)
/// after `elapsed`, retries included. Tool names come from the
/// configuration, so the number of series stays bounded.
pub fn http_tool_call(tool: &str, outcome: &'static str, elapsed: Duration) {
    counter!(HTTP_TOOL_CALLS, "tool" => tool.to_owned(), "outcome" => outcome).increment(1);
    histogram!(HTTP_TOOL_DURATION, "tool" => tool.to_owned()).record(elapsed);
}

/// A call of the MCP tool `tool` (its imported name) of `server` ended with
/// `outcome` (`ok`, `tool_error`, `timeout`, `stopped`, …) after `elapsed`.
/// Both names come from the configuration and the servers' tool lists, so
/// the number of series stays bounded.
pub fn mcp_tool_call(server: &str, tool: &str, outcome: &'static str, elapsed: Duration) {
    counter!(
        MCP_TOOL_CALLS,
        "server" => server.to_owned(),
        "tool" => tool.to_owned(),
        "outcome" => outcome
    )
    .increment(1);
    histogram!(MCP_TOOL_DURATION, "server" => server.to_owned(), "tool" => tool.to_owned())
        .record(elapsed);
}

/// An MCP tool call of `server` was sent (`true`) or ended (`false`).
pub fn mcp_call_in_flight(server: &str, sent: bool) {
    let gauge = gauge!(MCP_CALLS_IN_FLIGHT, "server" => server.to_owned());
    if sent {
        gauge.increment(1.0);
    } else {
        gauge.decrement(1.0);
    }
}

/// The MCP server `server`'s session went up or down.
pub fn mcp_server_up(server: &str, up: bool) {
    gauge!(MCP_SERVER_UP, "server" => server.to_owned()).set(if up { 1.0 } else { 0.0 });
}

/// Standard methods by name; any other is `other`, so a client cannot add
/// series by inventing methods.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::TRACE => "TRACE",
        Method::CONNECT => "CONNECT",
        _ => "other",
    }
}

/// The state gauges, sampled at scrape time.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// Runs this node drives.
    pub runs_active: usize,
    /// Open pool connections.
    pub pool_connections: u32,
    /// Idle pool connections.
    pub pool_idle: usize,
    /// The pool's ceiling.
    pub pool_max: u32,
    /// Whether the health probe finds the database answering.
    pub database_up: bool,
}

/// Sets the state gauges.
pub fn sample(sample: Sample) {
    gauge!(RUNS_ACTIVE).set(sample.runs_active as f64);
    gauge!(POOL_CONNECTIONS).set(f64::from(sample.pool_connections));
    gauge!(POOL_IDLE).set(sample.pool_idle as f64);
    gauge!(POOL_MAX).set(f64::from(sample.pool_max));
    gauge!(DATABASE_UP).set(if sample.database_up { 1.0 } else { 0.0 });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_recorder_is_installed_once_and_renders_what_was_recorded() {
        let first = handle() as *const PrometheusHandle;
        assert_eq!(first, handle() as *const PrometheusHandle);
        run_finished("completed");
        events_committed(3);
        http_request(
            &Method::GET,
            "/v1/runs/{id}",
            StatusCode::OK,
            Duration::from_millis(2),
        );
        http_request(
            &Method::from_bytes(b"BREW").unwrap(),
            UNMATCHED_ROUTE,
            StatusCode::NOT_FOUND,
            Duration::from_millis(1),
        );
        let text = render();
        assert!(
            text.contains(r#"agentstream_runs_finished_total{status="completed"}"#),
            "{text}"
        );
        assert!(
            text.contains("agentstream_event_commit_batch_size_bucket"),
            "{text}"
        );
        assert!(
            text.contains(r#"agentstream_http_requests_total{method="GET",route="/v1/runs/{id}",status="200"}"#),
            "{text}"
        );
        assert!(
            text.contains(r#"method="other",route="unmatched",status="404""#),
            "{text}"
        );
        assert!(
            text.contains("# TYPE agentstream_http_request_duration_seconds histogram"),
            "{text}"
        );
    }
}

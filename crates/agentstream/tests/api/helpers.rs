//! `spawn_app()` and what tests share: a fresh database per test on either
//! backend, an HTTP client, an SSE reader, and a log capture that fails the
//! test on any ERROR or WARN line it did not expect.

use std::{
    fmt::Write as _,
    sync::{Arc, Mutex},
    time::Duration,
};

use agentstream::{App, Config, http::AppState};
use eventsource_stream::Eventsource;
use futures_util::{Stream, StreamExt};
use serde_json::Value;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{Level, Subscriber, field::Visit};
use tracing_subscriber::{Layer, layer::SubscriberExt};

/// Which database a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Runs `async fn name(backend: Backend)` on both backends, as two tests:
/// `name::sqlite` and `name::postgres`.
#[macro_export]
macro_rules! both {
    ($name:ident) => {
        mod $name {
            #[tokio::test]
            async fn sqlite() {
                super::$name($crate::helpers::Backend::Sqlite).await;
            }

            #[tokio::test]
            async fn postgres() {
                super::$name($crate::helpers::Backend::Postgres).await;
            }
        }
    };
}

/// The PostgreSQL server tests use; each test gets its own schema in it.
fn postgres_base_url() -> String {
    std::env::var("AGENTSTREAM_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// A database for one test, dropped with it.
pub struct TestDb {
    pub url: String,
    _dir: Option<tempfile::TempDir>,
    schema: Option<String>,
}

impl TestDb {
    pub async fn new(backend: Backend) -> TestDb {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().unwrap();
                let url = format!("sqlite://{}/agentstream.db", dir.path().display());
                TestDb {
                    url,
                    _dir: Some(dir),
                    schema: None,
                }
            }
            Backend::Postgres => {
                let base = postgres_base_url();
                let schema = format!("t{}", uuid::Uuid::now_v7().simple());
                sqlx::any::install_default_drivers();
                let mut conn = match <sqlx::AnyConnection as sqlx::Connection>::connect(&base).await
                {
                    Ok(conn) => conn,
                    Err(e) => panic!(
                        "PostgreSQL is needed at {base} (set AGENTSTREAM_TEST_POSTGRES_URL): {e}"
                    ),
                };
                sqlx::raw_sql(&format!("CREATE SCHEMA {schema}"))
                    .execute(&mut conn)
                    .await
                    .unwrap();
                let sep = if base.contains('?') { '&' } else { '?' };
                let url = format!("{base}{sep}options=-csearch_path%3D{schema}");
                TestDb {
                    url,
                    _dir: None,
                    schema: Some(schema),
                }
            }
        }
    }

    /// The same database, for a second server on it (another node): its
    /// schema or folder stays with `self`.
    pub fn alias(&self) -> TestDb {
        TestDb {
            url: self.url.clone(),
            _dir: None,
            schema: None,
        }
    }

    /// Drops the test's schema (PostgreSQL); the SQLite folder goes with `self`.
    pub async fn drop_schema(&self) {
        if let Some(schema) = &self.schema {
            let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(&postgres_base_url())
                .await
                .unwrap();
            sqlx::raw_sql(&format!("DROP SCHEMA {schema} CASCADE"))
                .execute(&mut conn)
                .await
                .unwrap();
        }
    }
}

/// Settings for tests: port 0, a fast scripted model, a short drain.
pub fn test_config(db: &TestDb) -> Config {
    let mut config = Config::defaults();
    config.bind = "127.0.0.1:0".parse().unwrap();
    config.database_url = db.url.clone();
    config.scripted_delay_ms = 1;
    config.drain_secs = 5;
    config.db_pool_size = 2;
    config.db_max_overflow = 3;
    config.db_pool_timeout = 10;
    // Tests of many concurrent runs are not tests of the per-user limit.
    config.max_runs_per_user = 10_000;
    config
}

/// Records every WARN and ERROR line.
#[derive(Clone, Default)]
pub struct LogCapture {
    lines: Arc<Mutex<Vec<String>>>,
}

struct Line<'a>(&'a mut String);

impl Visit for Line<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        let _ = write!(self.0, " {}={value:?}", field.name());
    }
}

impl<S: Subscriber> Layer<S> for LogCapture {
    fn on_event(
        &self,
        event: &tracing::Event<'_>,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let level = *event.metadata().level();
        if level <= Level::WARN {
            let mut line = format!("{level} {}:", event.metadata().target());
            event.record(&mut Line(&mut line));
            self.lines.lock().unwrap().push(line);
        }
    }
}

impl LogCapture {
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }
}

/// A client builder with the server's TLS settings: reqwest brings no crypto
/// provider of its own, so `reqwest::Client::new()` would panic.
pub fn client_builder() -> reqwest::ClientBuilder {
    agentstream::tls::client_builder().unwrap()
}

/// A client with the server's TLS settings.
pub fn client() -> reqwest::Client {
    client_builder().build().unwrap()
}

/// A server on a loopback port over a fresh database.
pub struct TestApp {
    pub base: String,
    pub state: AppState,
    pub client: reqwest::Client,
    pub db: TestDb,
    logs: LogCapture,
    expected: Vec<String>,
    /// Lines before this index were caused on purpose.
    accepted: usize,
    stop: CancellationToken,
    tasks: TaskTracker,
    _log_guard: tracing::subscriber::DefaultGuard,
}

pub async fn spawn_app(backend: Backend) -> TestApp {
    spawn_app_with(backend, |_| {}).await
}

/// A server whose settings `tweak` adjusts.
pub async fn spawn_app_with(backend: Backend, tweak: impl FnOnce(&mut Config)) -> TestApp {
    spawn_app_on(TestDb::new(backend).await, tweak).await
}

/// A server on the database `db` (one a stopped server left, or another
/// node's), with its settings adjusted by `tweak`.
pub async fn spawn_app_on(db: TestDb, tweak: impl FnOnce(&mut Config)) -> TestApp {
    let logs = LogCapture::default();
    // The MCP SDK's own lines are off, as in the server's default filter.
    let filter = tracing_subscriber::EnvFilter::try_from_env("TEST_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,rmcp=off"));
    let printed = std::env::var_os("TEST_LOG")
        .is_some()
        .then(|| tracing_subscriber::fmt::layer().with_test_writer());
    let subscriber = tracing_subscriber::registry()
        .with(filter)
        .with(logs.clone())
        .with(printed);
    // Tests run on a current-thread runtime, so every task of this test's
    // server logs through this thread's default subscriber.
    let log_guard = tracing::subscriber::set_default(subscriber);
    let mut config = test_config(&db);
    tweak(&mut config);
    let app = App::build(config).await.unwrap();
    let addr = app.local_addr().unwrap();
    let state = app.state().clone();
    let stop = CancellationToken::new();
    let tasks = TaskTracker::new();
    let signal = stop.clone();
    tasks.spawn(async move {
        app.run_until_stopped(async move { signal.cancelled().await })
            .await
            .unwrap();
    });
    TestApp {
        base: format!("http://{addr}"),
        state,
        client: client_builder().pool_max_idle_per_host(0).build().unwrap(),
        db,
        logs,
        expected: Vec::new(),
        accepted: 0,
        stop,
        tasks,
        _log_guard: log_guard,
    }
}

/// The repository's root, for scripts and files the tests run.
pub fn repo_root() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A `[providers.mock]` table for the OpenAI-compatible server at
/// `base_url` (mock-llm, usually), without retries, then `agents`: the
/// config file of a test whose agents run on it.
pub fn on_mock(base_url: &str, agents: &str) -> String {
    format!(
        "[providers.mock]\nkind = \"openai\"\nbase_url = \"{base_url}\"\nmax_retries = 0\n\n{agents}"
    )
}

/// A server whose agents come from the TOML `file` (written into a temp dir).
pub async fn spawn_app_with_file(
    backend: Backend,
    file: &str,
    tweak: impl FnOnce(&mut Config),
) -> (TestApp, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agentstream.toml");
    std::fs::write(&path, file).unwrap();
    let app = spawn_app_with(backend, |config| {
        config.config_file = Some(path);
        tweak(config);
    })
    .await;
    (app, dir)
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A WARN or ERROR line containing `text` is part of the test.
    pub fn expect_log(&mut self, text: &str) {
        self.expected.push(text.to_owned());
    }

    /// Every WARN and ERROR line so far was caused on purpose (a fault the
    /// test injected); only later ones are checked.
    pub fn accept_logs_so_far(&mut self) {
        self.accepted = self.logs.lines().len();
    }

    /// The WARN and ERROR lines so far that contain `text`.
    pub fn logs_matching(&self, text: &str) -> Vec<String> {
        self.logs
            .lines()
            .into_iter()
            .filter(|line| line.contains(text))
            .collect()
    }

    /// Every WARN and ERROR line so far that the test did not expect.
    pub fn unexpected_logs(&self) -> Vec<String> {
        self.logs
            .lines()
            .into_iter()
            .skip(self.accepted)
            .filter(|line| !self.expected.iter().any(|e| line.contains(e.as_str())))
            .collect()
    }

    /// Starts a graceful shutdown, as SIGTERM does.
    pub fn begin_shutdown(&self) {
        self.stop.cancel();
    }

    /// Shuts the server down gracefully, drops the test's database, and
    /// fails on any unexpected WARN or ERROR line.
    pub async fn stop(self) {
        self.stop_keeping_db().await.drop_schema().await;
    }

    /// Like `stop`, but hands back the database for a look at what is left.
    pub async fn stop_keeping_db(self) -> TestDb {
        self.stop.cancel();
        self.tasks.close();
        self.tasks.wait().await;
        let unexpected = self.unexpected_logs();
        assert!(
            unexpected.is_empty(),
            "unexpected WARN/ERROR lines:\n{}",
            unexpected.join("\n")
        );
        self.db
    }

    pub async fn post_json(&self, path: &str, body: Value) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    pub async fn get_json(&self, path: &str) -> Value {
        let response = self.client.get(self.url(path)).send().await.unwrap();
        assert!(
            response.status().is_success(),
            "GET {path}: {}",
            response.status()
        );
        response.json().await.unwrap()
    }

    pub async fn create_conversation(&self, kind: &str) -> String {
        let response = self
            .post_json("/v1/conversations", serde_json::json!({ "kind": kind }))
            .await;
        assert_eq!(response.status(), 201);
        let body: Value = response.json().await.unwrap();
        body["id"].as_str().unwrap().to_owned()
    }

    /// Creates a conversation with the agent named `agent`; its ID.
    pub async fn create_agent_conversation(&self, agent: &str) -> String {
        let response = self
            .post_json("/v1/conversations", serde_json::json!({ "agent": agent }))
            .await;
        assert_eq!(response.status(), 201);
        let body: Value = response.json().await.unwrap();
        body["id"].as_str().unwrap().to_owned()
    }

    /// Starts a run and returns its SSE response.
    pub async fn stream_run(&self, conversation_id: &str, body: Value) -> reqwest::Response {
        let response = self
            .client
            .post(self.url(&format!("/v1/conversations/{conversation_id}/runs")))
            .header("accept", "text/event-stream")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "starting a run");
        response
    }

    /// Follows a run's events to its `done`, from the start.
    pub async fn follow(&self, run_id: &str) -> Vec<SseEvent> {
        let response = self
            .client
            .get(self.url(&format!("/v1/runs/{run_id}/events")))
            .send()
            .await
            .unwrap();
        if response.status() == 204 {
            return Vec::new();
        }
        read_all(response).await
    }

    /// Reads the run until it is terminal (each read is a request: no sleep).
    pub async fn run_until_terminal(&self, run_id: &str) -> Value {
        tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                let run = self.get_json(&format!("/v1/runs/{run_id}")).await;
                if !matches!(run["status"].as_str(), Some("queued" | "running")) {
                    return run;
                }
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the run ended within 30 s")
    }

    /// Waits until every pool connection is back and idle.
    pub async fn pool_settles(&self) {
        let pool = self.state.store().pool().clone();
        tokio::time::timeout(Duration::from_secs(10), async {
            while pool.num_idle() != pool.size() as usize {
                tokio::task::yield_now().await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("pool: {} open, {} idle", pool.size(), pool.num_idle()));
    }
}

/// One SSE event as a client sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct SseEvent {
    pub id: String,
    pub event: String,
    pub data: Value,
}

/// The SSE events of a response, as they arrive.
pub fn events(response: reqwest::Response) -> impl Stream<Item = SseEvent> {
    response.bytes_stream().eventsource().map(|event| {
        let event = event.unwrap();
        SseEvent {
            id: event.id,
            event: event.event,
            data: serde_json::from_str(&event.data).unwrap_or(Value::Null),
        }
    })
}

/// The status and the JSON body (null when there is none) of a response.
pub async fn status_and_body(response: reqwest::Response) -> (reqwest::StatusCode, Value) {
    let status = response.status();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, body)
}

/// Every event of a response, to the end of the body; asserts it ends with
/// exactly one `done`, last.
pub async fn read_all(response: reqwest::Response) -> Vec<SseEvent> {
    let all: Vec<SseEvent> =
        tokio::time::timeout(Duration::from_secs(60), events(response).collect())
            .await
            .expect("the stream ended within 60 s");
    let dones = all.iter().filter(|e| e.event == "done").count();
    assert_eq!(dones, 1, "exactly one done: {all:#?}");
    assert_eq!(all.last().map(|e| e.event.as_str()), Some("done"));
    all
}

/// The concatenated text of the `delta` events.
pub fn text_of(events: &[SseEvent]) -> String {
    events
        .iter()
        .filter(|e| e.event == "delta")
        .map(|e| e.data["text"].as_str().unwrap())
        .collect()
}

/// The status of the `done` event.
pub fn done_status(events: &[SseEvent]) -> String {
    events.last().unwrap().data["status"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// The transcript without IDs and times, to compare two conversations.
pub async fn transcript(app: &TestApp, conversation: &str) -> Vec<Value> {
    let messages = app
        .get_json(&format!("/v1/conversations/{conversation}/messages"))
        .await;
    messages["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            serde_json::json!([
                m["role"],
                m["content"],
                m["status"],
                m["tool_calls"],
                m["tool_call_id"]
            ])
        })
        .collect()
}

/// The run a streaming response belongs to.
pub fn run_id_of(response: &reqwest::Response) -> String {
    response.headers()["x-run-id"].to_str().unwrap().to_owned()
}

/// Sends a request and reads its JSON body, failing the test on any error.
pub trait FetchJson {
    /// The response body as JSON.
    async fn fetch_json(self) -> Value;
}

impl FetchJson for reqwest::RequestBuilder {
    async fn fetch_json(self) -> Value {
        self.send().await.unwrap().json().await.unwrap()
    }
}

/// An axum router served on a loopback port (a test's stand-in for an
/// upstream, a backend or a key server); stops serving when dropped.
pub struct LoopbackServer {
    pub addr: std::net::SocketAddr,
    stop: CancellationToken,
    _tasks: TaskTracker,
}

impl LoopbackServer {
    pub async fn start(router: axum::Router) -> LoopbackServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let tasks = TaskTracker::new();
        let signal = stop.clone().cancelled_owned();
        // Ended at once, open streams included.
        tasks.spawn(async move {
            tokio::select! {
                _ = axum::serve(listener, router.into_make_service()) => {}
                () = signal => {}
            }
        });
        tasks.close();
        LoopbackServer {
            addr,
            stop,
            _tasks: tasks,
        }
    }
}

impl Drop for LoopbackServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

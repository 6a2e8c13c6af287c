//! One MCP server: how it is reached, its current session, and the
//! supervisor task that keeps the session up (reconnecting with backoff)
//! and, at shutdown, closes it and reaps the server's processes.
//!
//! A stdio server runs as the leader of a process group of its own, so a
//! launcher (`npx`, a shell) and what it starts are stopped together: the
//! MCP specification's sequence (close its stdin, wait, SIGTERM, wait,
//! SIGKILL) is sent to the whole group.

use std::{
    collections::VecDeque,
    process::Stdio,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures_util::future::BoxFuture;
use process_wrap::tokio::{ChildWrapper, CommandWrap, KillOnDrop, ProcessGroup};
use rmcp::{
    RoleClient, ServiceExt,
    model::{ClientCapabilities, ClientConfig, ClientRequest, Implementation},
    service::{ClientInitializeError, Peer, QuitReason, ServiceError},
};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::ChildStderr,
    sync::watch,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use super::{McpServerConfig, ServerStatus, Settings, streamable::Endpoint};
use crate::{llm::transport::error_chain, telemetry::metrics, tools::http::HeaderSource};

/// The variables a stdio server inherits from agentstream's environment
/// (the list the MCP SDKs use): nothing else, so the database URL and the
/// secrets in agentstream's environment stay out of it.
const INHERITED_ENV: [&str; 6] = ["HOME", "LOGNAME", "PATH", "SHELL", "TERM", "USER"];
/// The wait before the first reconnection; it doubles for each later one.
const BACKOFF: Duration = Duration::from_millis(250);
/// The longest wait between two reconnections.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How long a stopping server gets at each step of the shutdown sequence.
const GRACE: Duration = Duration::from_secs(2);
/// SIGTERM's number, the same on every Unix.
const SIGTERM: i32 = 15;
/// How often the session of an HTTP server is pinged: a server that went
/// away is noticed by a failed request only.
const PING_EVERY: Duration = Duration::from_secs(15);
/// How long a ping may take.
const PING_TIMEOUT: Duration = Duration::from_secs(5);
/// Lines of a server's stderr kept to explain a failed start.
const STDERR_TAIL: usize = 12;

/// How the server is reached.
#[derive(Debug)]
pub(super) enum Launch {
    /// A child process speaking MCP on its stdin and stdout.
    Stdio {
        command: String,
        args: Vec<String>,
        /// The configured variables, read.
        env: Vec<(String, String)>,
    },
    /// A streamable HTTP endpoint.
    Http(Endpoint),
}

impl Launch {
    /// The launch a table describes, its variables read from the
    /// environment. Fails when it gives neither or both of `command` and
    /// `url`, or a variable is not set.
    pub(super) fn from_config(config: &McpServerConfig) -> Result<Launch, String> {
        match (&config.command, &config.url) {
            (Some(_), Some(_)) => Err(
                "give `command` (a stdio server) or `url` (a streamable HTTP server), not both"
                    .to_owned(),
            ),
            (None, None) => Err(
                "give `command` (a stdio server) or `url` (a streamable HTTP server)".to_owned(),
            ),
            (Some(command), None) => {
                if !config.headers.is_empty() {
                    return Err("`headers` are for a streamable HTTP server (`url`)".to_owned());
                }
                let mut env = Vec::new();
                for (name, source) in &config.env {
                    let value = match source {
                        HeaderSource::Value(text) => text.clone(),
                        HeaderSource::Env(var) => {
                            crate::tools::http::env_value(&var.env, &format!("env.{name}"))?
                        }
                    };
                    env.push((name.clone(), value));
                }
                Ok(Launch::Stdio {
                    command: command.clone(),
                    args: config.args.clone(),
                    env,
                })
            }
            (None, Some(url)) => {
                if !config.args.is_empty() || !config.env.is_empty() {
                    return Err("`args` and `env` are for a stdio server (`command`)".to_owned());
                }
                Ok(Launch::Http(Endpoint::new(url, &config.headers)?))
            }
        }
    }
}

/// Where a server's session stands.
#[derive(Debug, Clone)]
pub(super) enum Link {
    /// Being started.
    Starting,
    /// Initialised: calls go through.
    Up(Session),
    /// Lost, or never made; retried. Calls get a tool error.
    Down(String),
    /// Closed at shutdown.
    Closed,
}

/// A live session.
#[derive(Debug, Clone)]
pub(super) struct Session {
    /// Sends requests on it.
    pub(super) peer: Peer<RoleClient>,
    /// The server's process (stdio).
    pub(super) pid: Option<u32>,
    /// The tools it listed when it connected.
    pub(super) tools: Arc<Vec<rmcp::model::Tool>>,
}

/// A session just made, with what it takes to end it.
pub(super) struct Connected {
    session: Session,
    /// Cancels the session's loop.
    cancel: CancellationToken,
    /// Resolves when the session's loop has ended.
    ended: BoxFuture<'static, Result<QuitReason, tokio::task::JoinError>>,
    /// The process group of a stdio server.
    child: Option<Box<dyn ChildWrapper>>,
}

impl Connected {
    fn new(
        service: Service,
        tools: Vec<rmcp::model::Tool>,
        cancel: CancellationToken,
        child: Option<Box<dyn ChildWrapper>>,
    ) -> Connected {
        Connected {
            session: Session {
                peer: service.peer().clone(),
                pid: None,
                tools: Arc::new(tools),
            },
            cancel,
            ended: Box::pin(service.waiting()),
            child,
        }
    }

    /// The tools the server listed.
    pub(super) fn tools(&self) -> &[rmcp::model::Tool] {
        &self.session.tools
    }
}

/// One configured server: its settings and its session.
#[derive(Debug)]
pub(super) struct Server {
    /// Its `[mcp.NAME]`.
    pub(super) name: String,
    /// Its settings, checked.
    settings: Settings,
    /// The current session, or why there is none.
    link: watch::Sender<Link>,
    /// Where its stderr readers run (the servers' tracker).
    tracker: TaskTracker,
    /// Fires at shutdown: the supervisor closes the session, the stderr
    /// readers stop.
    stop: CancellationToken,
    /// Asks the supervisor to check the session now (a call lost it).
    check: tokio::sync::Notify,
}

impl std::ops::Deref for Server {
    type Target = Settings;

    fn deref(&self) -> &Settings {
        &self.settings
    }
}

impl Server {
    /// The server a table describes, not yet started.
    pub(super) fn new(
        name: &str,
        config: &McpServerConfig,
        tracker: TaskTracker,
        stop: CancellationToken,
    ) -> Result<Server, String> {
        Ok(Server {
            name: name.to_owned(),
            settings: super::settings(name, config)?,
            link: watch::Sender::new(Link::Starting),
            tracker,
            stop,
            check: tokio::sync::Notify::new(),
        })
    }

    /// The current session, or why there is none.
    pub(super) fn session(&self) -> Result<Session, String> {
        match &*self.link.borrow() {
            Link::Up(session) => Ok(session.clone()),
            Link::Starting => Err("it is starting".to_owned()),
            Link::Down(reason) => Err(reason.clone()),
            Link::Closed => Err("it was closed (the server is shutting down)".to_owned()),
        }
    }

    /// Its state, as `/readyz` reports it; `tools` is what was imported.
    pub(super) fn status(&self, tools: usize) -> ServerStatus {
        self.status_of(&self.link.borrow(), tools)
    }

    /// Waits until its state satisfies `until`, and returns it (`None` if
    /// it can change no more).
    pub(super) async fn wait_for(
        &self,
        tools: usize,
        until: impl Fn(&ServerStatus) -> bool,
    ) -> Option<ServerStatus> {
        let mut link = self.link.subscribe();
        let found = link
            .wait_for(|link| until(&self.status_of(link, tools)))
            .await
            .ok()?;
        Some(self.status_of(&found, tools))
    }

    fn status_of(&self, link: &Link, tools: usize) -> ServerStatus {
        let (state, error, pid) = match link {
            Link::Starting => ("starting", None, None),
            Link::Up(session) => ("up", None, session.pid),
            Link::Down(reason) => ("down", Some(reason.clone()), None),
            Link::Closed => ("closed", None, None),
        };
        ServerStatus {
            state,
            error,
            optional: self.optional,
            tools,
            pid,
        }
    }

    fn set(&self, link: Link) {
        metrics::mcp_server_up(&self.name, matches!(link, Link::Up(_)));
        self.link.send_replace(link);
    }

    /// Asks for the session to be checked now: a call could not be sent or
    /// answered on it.
    pub(super) fn check_session(&self) {
        self.check.notify_one();
    }

    /// Resolves, with why, when the session of an HTTP server stops
    /// answering pings (checked now and then, and when a call asks); never
    /// for a stdio server, whose loss its process's exit or its pipes'
    /// end shows.
    async fn unanswered(&self, session: &Session) -> String {
        if !matches!(self.launch, Launch::Http(_)) {
            return std::future::pending().await;
        }
        loop {
            tokio::select! {
                () = tokio::time::sleep(PING_EVERY) => {}
                () = self.check.notified() => {}
            }
            let ping = session
                .peer
                .send_request(ClientRequest::PingRequest(Default::default()));
            match tokio::time::timeout(PING_TIMEOUT, ping).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return format!("it did not answer a ping: {}", describe(&e)),
                Err(_) => {
                    return format!(
                        "it did not answer a ping within {} ms",
                        PING_TIMEOUT.as_millis()
                    );
                }
            }
        }
    }

    /// Marks it up, with the session just made.
    pub(super) fn set_up(&self, connected: &Connected) {
        self.set(Link::Up(connected.session.clone()));
    }

    /// Marks it down for `reason`.
    pub(super) fn set_down(&self, reason: String) {
        self.set(Link::Down(reason));
    }

    /// Starts it and lists its tools, within the start-up timeout.
    #[tracing::instrument(name = "mcp_connect", skip_all, fields(server = %self.name))]
    pub(super) async fn connect(&self) -> Result<Connected, String> {
        match &self.launch {
            Launch::Stdio { command, args, env } => self.connect_stdio(command, args, env).await,
            Launch::Http(endpoint) => self.connect_http(endpoint).await,
        }
    }

    /// Opens a session with a streamable HTTP server.
    async fn connect_http(&self, endpoint: &Endpoint) -> Result<Connected, String> {
        let cancel = CancellationToken::new();
        let transport = endpoint.transport()?;
        let result = tokio::time::timeout(self.startup_timeout, handshake(transport, &cancel))
            .await
            .unwrap_or_else(|_| Err(self.no_answer()));
        match result {
            Ok((service, tools)) => Ok(Connected::new(service, tools, cancel, None)),
            Err(reason) => {
                cancel.cancel();
                Err(format!("{}: {reason}", endpoint.url()))
            }
        }
    }

    fn no_answer(&self) -> String {
        format!(
            "no answer to the MCP handshake within {} ms",
            self.startup_timeout.as_millis()
        )
    }

    /// Starts a stdio server's process and opens a session with it.
    async fn connect_stdio(
        &self,
        command: &str,
        args: &[String],
        env: &[(String, String)],
    ) -> Result<Connected, String> {
        let mut wrap =
            CommandWrap::with_new(command, |c| {
                c.args(args)
                    .env_clear()
                    .envs(INHERITED_ENV.iter().filter_map(|var| {
                        std::env::var_os(var).map(|value| (var.to_string(), value))
                    }))
                    .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped());
            });
        wrap.wrap(ProcessGroup::leader()).wrap(KillOnDrop);
        let mut child = wrap
            .spawn()
            .map_err(|e| format!("cannot start {command:?}: {e}"))?;
        let pid = child.id();
        let stdin = child.stdin().take();
        let stdout = child.stdout().take();
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        let stderr = child.stderr().take().map(|stderr| {
            let reader = read_stderr(self.name.clone(), stderr, tail.clone());
            let stop = self.stop.clone();
            self.tracker.spawn(async move {
                tokio::select! {
                    () = reader => {}
                    () = stop.cancelled() => {}
                }
            })
        });
        let (Some(stdin), Some(stdout)) = (stdin, stdout) else {
            stop_child(&mut child).await;
            return Err("the process's stdin or stdout was not piped".to_owned());
        };
        let cancel = CancellationToken::new();
        let result = tokio::select! {
            result = tokio::time::timeout(
                self.startup_timeout,
                handshake((stdout, stdin), &cancel),
            ) => result.unwrap_or_else(|_| Err(self.no_answer())),
            status = child.wait() => Err(match status {
                Ok(status) => format!("the process exited before the MCP handshake ({status})"),
                Err(e) => format!("the process could not be waited for: {e}"),
            }),
        };
        match result {
            Ok((service, tools)) => {
                let mut connected = Connected::new(service, tools, cancel, Some(child));
                connected.session.pid = pid;
                Ok(connected)
            }
            Err(reason) => {
                cancel.cancel();
                stop_child(&mut child).await;
                // The reader ends at the end of stderr, now that the process
                // is gone: its last lines explain most failed starts.
                if let Some(reader) = stderr {
                    let _ = tokio::time::timeout(GRACE, reader).await;
                }
                let tail: Vec<String> = tail
                    .lock()
                    .map(|lines| lines.iter().cloned().collect())
                    .unwrap_or_default();
                Err(if tail.is_empty() {
                    format!("{command:?}: {reason}")
                } else {
                    format!(
                        "{command:?}: {reason}; its stderr ended: {}",
                        tail.join(" | ")
                    )
                })
            }
        }
    }

    /// Keeps the session up until `stop` fires: when it is lost, marks the
    /// server down and reconnects with backoff; then closes it and reaps
    /// the process. `first` is the session made at start-up, if one was.
    pub(super) async fn supervise(self: Arc<Self>, first: Option<Connected>) {
        let stop = self.stop.clone();
        let mut next = first;
        let mut failures: u32 = 0;
        loop {
            let mut connected = match next.take() {
                Some(connected) => connected,
                None => {
                    tokio::select! {
                        () = tokio::time::sleep(backoff(failures)) => {}
                        () = stop.cancelled() => break,
                    }
                    let attempt = tokio::select! {
                        attempt = self.connect() => attempt,
                        () = stop.cancelled() => break,
                    };
                    match attempt {
                        Ok(connected) => {
                            tracing::info!(server = %self.name, "the MCP server is up again");
                            connected
                        }
                        Err(reason) => {
                            failures = failures.saturating_add(1);
                            tracing::debug!(server = %self.name, %reason, failures, "reconnecting failed");
                            self.set_down(reason);
                            continue;
                        }
                    }
                }
            };
            failures = 0;
            self.set_up(&connected);
            let session = connected.session.clone();
            let lost = tokio::select! {
                quit = &mut connected.ended => format!("its session ended ({})", quit_reason(quit)),
                status = wait_child(&mut connected.child) => format!("its process exited ({status})"),
                reason = self.unanswered(&session) => reason,
                () = stop.cancelled() => {
                    close(connected).await;
                    break;
                }
            };
            tracing::warn!(
                server = %self.name,
                reason = %lost,
                "the MCP server was lost; its calls get a tool error until it is reconnected"
            );
            self.set_down(lost);
            close(connected).await;
        }
        self.set(Link::Closed);
    }
}

/// A client session.
type Service = rmcp::service::RunningService<RoleClient, ClientConfig>;

/// Initialises a session on `transport` and lists the server's tools.
async fn handshake<T, E, A>(
    transport: T,
    cancel: &CancellationToken,
) -> Result<(Service, Vec<rmcp::model::Tool>), String>
where
    T: rmcp::transport::IntoTransport<RoleClient, E, A>,
    E: std::error::Error + Send + Sync + 'static,
{
    let service = client_config()
        .serve_with_ct(transport, cancel.clone())
        .await
        .map_err(|e| {
            let why = match &e {
                ClientInitializeError::TransportError { error, context } => {
                    format!("{}, when it had to {context}", error_chain(&*error.error))
                }
                other => other.to_string(),
            };
            format!("the MCP handshake failed: {why}")
        })?;
    let tools = service
        .peer()
        .list_all_tools()
        .await
        .map_err(|e| format!("listing its tools failed: {}", describe(&e)))?;
    Ok((service, tools))
}

/// What went wrong with a request, without the transport's type name.
pub(super) fn describe(error: &ServiceError) -> String {
    match error {
        ServiceError::TransportSend(error) => error_chain(&*error.error),
        other => other.to_string(),
    }
}

/// The client agentstream presents to servers.
fn client_config() -> ClientConfig {
    ClientConfig::new(
        ClientCapabilities::default(),
        Implementation::new("agentstream", env!("CARGO_PKG_VERSION")),
    )
}

/// The wait before reconnection attempt `failures` + 1: 250 ms, 500 ms,
/// …, at most 30 s.
fn backoff(failures: u32) -> Duration {
    BACKOFF
        .saturating_mul(2_u32.saturating_pow(failures))
        .min(MAX_BACKOFF)
}

fn quit_reason(quit: Result<QuitReason, tokio::task::JoinError>) -> String {
    match quit {
        Ok(QuitReason::Closed) => "the connection closed".to_owned(),
        Ok(reason) => format!("{reason:?}"),
        Err(e) => format!("its task failed: {e}"),
    }
}

/// Resolves when the process exits (never without one).
async fn wait_child(child: &mut Option<Box<dyn ChildWrapper>>) -> String {
    match child {
        Some(child) => match child.wait().await {
            Ok(status) => status.to_string(),
            Err(e) => format!("cannot be waited for: {e}"),
        },
        None => std::future::pending().await,
    }
}

/// Ends a session: cancels its loop (which closes the server's stdin),
/// then stops and reaps its process group.
async fn close(connected: Connected) {
    let Connected {
        cancel,
        ended,
        mut child,
        ..
    } = connected;
    cancel.cancel();
    if tokio::time::timeout(GRACE, ended).await.is_err() {
        tracing::debug!("the session's loop did not end in time");
    }
    if let Some(child) = child.as_mut() {
        stop_child(child).await;
    }
}

/// Stops a process group the way the MCP specification says: its stdin
/// closed (done by the caller), a wait, SIGTERM, a wait, SIGKILL; then
/// reaps the leader and kills any process left in the group.
async fn stop_child(child: &mut Box<dyn ChildWrapper>) {
    let exited = match tokio::time::timeout(GRACE, child.wait()).await {
        Ok(_) => true,
        Err(_) => {
            let _ = child.signal(SIGTERM);
            tokio::time::timeout(GRACE, child.wait()).await.is_ok()
        }
    };
    if !exited {
        // The group is killed with its leader.
        if let Err(error) = Box::into_pin(child.kill()).await {
            tracing::debug!(%error, "could not kill the MCP server's process group");
        }
    }
    // A process the leader started and left behind (the group outlives its
    // leader while any member lives); none is the common case.
    let _ = child.start_kill();
}

/// Logs each line the server writes to stderr, and keeps the last few.
async fn read_stderr(server: String, stderr: ChildStderr, tail: Arc<Mutex<VecDeque<String>>>) {
    let mut lines = BufReader::new(stderr).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        tracing::info!(server = %server, line = %crate::text::clean(&line), "MCP server stderr");
        if let Ok(mut tail) = tail.lock() {
            if tail.len() == STDERR_TAIL {
                tail.pop_front();
            }
            tail.push_back(line);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        assert_eq!(backoff(0), Duration::from_millis(250));
        assert_eq!(backoff(1), Duration::from_millis(500));
        assert_eq!(backoff(20), MAX_BACKOFF);
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
    }
}

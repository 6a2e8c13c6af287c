//! Builds everything, serves, and shuts down in numbered phases.

use std::{collections::BTreeMap, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    agent::Agents,
    config::{Config, FileConfig},
    http::{self, AppState},
    llm::{self, Probe, registry::NamedProvider},
    runs::{EventLog, Hub, RunManager},
    store::{self, Store},
    tools::{
        Registry, ToolConfig,
        mcp::McpServers,
        registry::BuildContext,
        sql::{self, Databases},
    },
};

/// How long open connections get to close after the streams end.
const CONNECTION_GRACE: Duration = Duration::from_secs(5);

/// The server, built and bound, not yet serving.
#[derive(Debug)]
pub struct App {
    /// The settings it was built with; owned here until `run_until_stopped`
    /// takes them (the drain time, the address to log).
    config: Config,
    /// The bound socket; owned until serving starts, then by the server task.
    listener: TcpListener,
    /// Shared with every request handler (cloned per request); lives as long
    /// as the server and the background tasks hold a clone.
    state: AppState,
    /// Background tasks other than runs: the event log writer, the database
    /// probe, event log pruning, leases and the listener. Shutdown phase 5
    /// closes it and waits for them.
    tracker: TaskTracker,
    /// Stops the background tasks once runs have ended (phase 5); every
    /// background task holds a clone.
    writer_stop: CancellationToken,
    /// The databases SQL tools act on; their pools close in phase 6.
    tool_databases: Databases,
    /// The MCP servers tools are imported from; closed, their processes
    /// reaped, in phase 4 (the state holds a clone for `/readyz`).
    mcp: McpServers,
    /// On SQLite, held for the process's life: one server per database file.
    _single_node: Option<std::fs::File>,
}

impl App {
    /// Connects and migrates the database, recovers runs a previous process
    /// left open, and binds the listener.
    pub async fn build(config: Config) -> anyhow::Result<App> {
        config.validate().map_err(anyhow::Error::msg)?;
        let file = FileConfig::load(config.config_file.as_deref(), &config.onboarding_fields)
            .map_err(anyhow::Error::msg)?;
        let providers = providers(&config, &file)?;
        let jwt = match &file.auth.jwt {
            Some(settings) => {
                Some(http::auth::Verifier::build(settings).map_err(anyhow::Error::msg)?)
            }
            None => None,
        };
        let single_node = match store::sqlite_path(&config.database_url) {
            Some(path) => Some(lock_single_node(&path)?),
            None => None,
        };
        let store = Store::connect(&config.database_url, &config.pool())
            .await
            .with_context(|| {
                format!(
                    "cannot open the database at {}",
                    store::redact_url(&config.database_url)
                )
            })?;
        store
            .migrate()
            .await
            .context("cannot migrate the database")?;
        let local_user = store.ensure_user("local").await?;
        let (agents, tool_databases, mcp) =
            agents(&config, &file, &providers, jwt.is_some()).await?;
        if let Some(verifier) = &jwt {
            // Like a model provider that is down: the server starts, and
            // each token naming a key it lacks tries the fetch again.
            if let Err(reason) = verifier.fetch_keys().await {
                tracing::warn!(
                    %reason,
                    keys = %verifier.describe(),
                    "the JWKS cannot be fetched now; starting anyway: tokens are refused \
                     until it can be"
                );
            }
        }
        let hub = Arc::new(Hub::default());
        let tracker = TaskTracker::new();
        let writer_stop = CancellationToken::new();
        let (log, writer) = EventLog::new(
            store.clone(),
            hub.clone(),
            Duration::from_millis(config.event_commit_interval_ms),
            writer_stop.clone(),
        );
        tracker.spawn_on(writer, store.db_runtime());
        tracker.spawn(probe_database(store.clone(), writer_stop.clone()));
        tracker.spawn(prune_events(
            store.clone(),
            Duration::from_secs(config.event_retention_secs),
            writer_stop.clone(),
        ));
        let node = config.node();
        let runs = RunManager::new(
            store.clone(),
            log,
            hub,
            agents,
            config.run_limits(),
            node.clone(),
        );
        runs.register_node()
            .await
            .context("cannot register this node")?;
        runs.recover().await.context("cannot recover open runs")?;
        tracker.spawn(runs.clone().keep_leases(writer_stop.clone()));
        if store.can_notify() {
            tracker.spawn(
                runs.clone().listen(
                    store
                        .direct_url()
                        .unwrap_or(&config.database_url)
                        .to_owned(),
                    writer_stop.clone(),
                ),
            );
        }
        tracing::info!(node = %node.id, "node");
        let listener = TcpListener::bind(config.bind)
            .await
            .with_context(|| format!("cannot listen on {}", config.bind))?;
        let addr = listener.local_addr()?;
        let local_allowed = addr.ip().is_loopback();
        if let Some(verifier) = &jwt {
            tracing::info!(
                keys = %verifier.describe(),
                "JWTs are on, besides API keys: every request needs \
                 `Authorization: Bearer <token or key>`; a token's subject is its user"
            );
        } else if store.any_active_key().await? {
            tracing::info!("API keys are on: every request needs `Authorization: Bearer <key>`");
        } else if local_allowed {
            tracing::info!(
                "no API key exists: requests without a key act as the single local user \
                 (allowed because the server listens on loopback only; \
                 `agentstream keys create --user NAME` turns keys on)"
            );
        } else {
            anyhow::bail!(
                "refusing to start: listening on {addr}, which is not a loopback address, \
                 and no API key exists, so anyone who can reach it would act as the local \
                 user. Create a key first: agentstream keys create --user NAME"
            );
        }
        http::cors::layer(&config.cors_origins).map_err(anyhow::Error::msg)?;
        let state = AppState::new(
            store,
            runs,
            local_user.clone(),
            http::auth::Auth::new(local_user, local_allowed, jwt),
            config.limits(),
            Duration::from_secs(config.keepalive_secs),
            CancellationToken::new(),
        )
        .with_mcp(mcp.clone());
        Ok(App {
            config,
            listener,
            state,
            tracker,
            writer_stop,
            tool_databases,
            mcp,
            _single_node: single_node,
        })
    }

    /// The address the server listens on (useful with port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The shared state, for tests that look inside.
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` resolves, then shuts down in phases:
    /// 1. stop accepting connections;
    /// 2. let runs finish for the drain time, then interrupt the rest;
    /// 3. end every open stream (each has had its `done`);
    /// 4. close the MCP servers' sessions and reap their processes;
    /// 5. flush the event log;
    /// 6. close the pool.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let App {
            config,
            listener,
            state,
            tracker,
            writer_stop,
            tool_databases,
            mcp,
            _single_node,
        } = self;
        let addr = listener.local_addr()?;
        let stop_accepting = CancellationToken::new();
        let router = http::router(state.clone());
        // Small SSE events must leave at once: Nagle plus delayed ACKs would hold them ~40 ms.
        let listener = axum::serve::ListenerExt::tap_io(listener, |stream| {
            if let Err(error) = stream.set_nodelay(true) {
                tracing::debug!(%error, "failed to set TCP_NODELAY");
            }
        });
        // A service made once: `serve(listener, router)` would rebuild every
        // route for each connection, about 25 KiB a connection.
        let server = axum::serve(listener, router.into_make_service())
            .with_graceful_shutdown(stop_accepting.clone().cancelled_owned());
        let server = tracker.spawn(async move { server.await });
        tracing::info!(%addr, database = %store::redact_url(&config.database_url), "serving");
        shutdown.await;

        tracing::info!("shutdown 1/6: no longer accepting connections");
        stop_accepting.cancel();
        tracing::info!(
            drain_secs = config.drain_secs,
            "shutdown 2/6: draining runs"
        );
        state
            .runs
            .drain(Duration::from_secs(config.drain_secs))
            .await;
        tracing::info!("shutdown 3/6: ending open streams");
        // Every run here has ended and its `done` is published: streams end
        // by themselves once they have sent it. Those still open after the
        // grace (runs driven by another node) are cut.
        state.streams.open.close();
        if tokio::time::timeout(CONNECTION_GRACE, state.streams.open.wait())
            .await
            .is_err()
        {
            tracing::info!("ending the streams of runs this node does not drive");
        }
        state.streams.end.cancel();
        match tokio::time::timeout(CONNECTION_GRACE, server).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::error!(error = %e, "the server stopped with an error"),
            Ok(Err(e)) => tracing::error!(error = %e, "the server task failed"),
            Err(_) => {
                tracing::warn!("connections still open after {CONNECTION_GRACE:?}; closing them")
            }
        }
        // After the runs: a call in flight during the drain needs its server.
        tracing::info!("shutdown 4/6: closing the MCP servers");
        mcp.close().await;
        tracing::info!("shutdown 5/6: flushing the event log");
        state.store.stop_reusing_connections();
        writer_stop.cancel();
        tracker.close();
        tracker.wait().await;
        if let Err(error) = state.runs.release_node().await {
            tracing::warn!(%error, "could not give up this node's lease; it runs out by itself");
        }
        tracing::info!("shutdown 6/6: closing the database pool");
        // The store first: once phase 5 stops it reusing connections, its
        // pool refills to its minimum until it is closed.
        state.store.close().await;
        tool_databases.close().await;
        tracing::info!("stopped");
        Ok(())
    }
}

/// The model providers the configuration defines, `scripted` among them.
fn providers(
    config: &Config,
    file: &FileConfig,
) -> anyhow::Result<BTreeMap<String, NamedProvider>> {
    let defaults = llm::registry::Defaults {
        scripted_delay: Duration::from_millis(config.scripted_delay_ms),
        onboarding_fields: config.onboarding_fields.clone(),
    };
    llm::registry::build(&file.providers, &defaults).map_err(anyhow::Error::msg)
}

/// The agents the configuration defines over its tools (each SQL tool's
/// statement prepared on its database, each MCP server started), after
/// probing the providers they use; the databases the tools opened, and the
/// MCP servers (closed again when start-up fails).
async fn agents(
    config: &Config,
    file: &FileConfig,
    providers: &BTreeMap<String, NamedProvider>,
    claims: bool,
) -> anyhow::Result<(Agents, Databases, McpServers)> {
    let needed: Vec<&str> = file
        .tools
        .values()
        .filter_map(|tool| match tool {
            ToolConfig::Sql(sql) => Some(sql.database.as_deref().unwrap_or(sql::OWN)),
            ToolConfig::Http(_) => None,
        })
        // A tool naming a database no table declares is refused when it is
        // built, in a message that names the tool.
        .filter(|name| *name == sql::OWN || file.databases.contains_key(*name))
        .collect();
    let databases = Databases::open(&file.databases, &config.database_url, &needed)
        .await
        .map_err(|e| anyhow::anyhow!("refusing to start: {e}"))?;
    let context = BuildContext {
        databases: databases.clone(),
        claims,
    };
    let mcp = McpServers::start(&file.mcp)
        .await
        .map_err(|e| anyhow::anyhow!("refusing to start: {e}"))?;
    let built = async {
        let mut tools = Registry::build(&file.tools, &context).await?;
        let wanted = file.agents.values().flat_map(|a| a.tools.iter().flatten());
        mcp.register(&mut tools, wanted.map(String::as_str))?;
        let defaults = crate::agent::registry::Defaults {
            max_steps: config.max_steps,
            approval_timeout: Duration::from_secs(config.approval_timeout_secs),
        };
        crate::agent::registry::build(&file.agents, providers, &tools, defaults)
    };
    let (agents, used) = match built.await {
        Ok(built) => built,
        Err(e) => {
            mcp.close().await;
            anyhow::bail!("refusing to start: {e}");
        }
    };
    if let Err(e) = probe_providers(&used).await {
        mcp.close().await;
        return Err(e);
    }
    Ok((agents, databases, mcp))
}

/// How long start-up waits for one provider's check; a provider slower
/// than this is taken as unreachable.
const PROVIDER_PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// Checks every provider at once. One that is misconfigured stops start-up;
/// one that cannot be reached now gets a warning, since its calls retry and
/// it may come up later.
async fn probe_providers(providers: &[NamedProvider]) -> anyhow::Result<()> {
    let probes = providers.iter().map(|named| {
        let probe = named.provider.probe();
        async move {
            tokio::time::timeout(PROVIDER_PROBE_TIMEOUT, probe)
                .await
                .unwrap_or_else(|_| {
                    Probe::Unreachable(format!("no answer within {PROVIDER_PROBE_TIMEOUT:?}"))
                })
        }
    });
    let found = futures_util::future::join_all(probes).await;
    let mut misconfigured = Vec::new();
    for (named, probe) in providers.iter().zip(found) {
        let url = named.url.as_deref().unwrap_or("built in");
        match probe {
            Probe::Ready => {}
            Probe::Unreachable(reason) => tracing::warn!(
                provider = %named.name,
                url,
                %reason,
                "the model provider cannot be reached now; starting anyway, and calls to it \
                 will retry"
            ),
            Probe::Misconfigured(reason) => {
                misconfigured.push(format!("provider {:?} ({url}): {reason}", named.name));
            }
        }
    }
    if !misconfigured.is_empty() {
        anyhow::bail!(
            "refusing to start: the model provider settings are wrong: {}",
            misconfigured.join("; ")
        );
    }
    Ok(())
}

/// How often the database is probed, and how long a probe may take.
const PROBE_EVERY: Duration = Duration::from_secs(1);
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Pings the database every second so that, while it does not answer,
/// requests get 503 at once instead of each waiting for the pool timeout.
async fn probe_database(store: Store, stop: CancellationToken) {
    // Its own connection: a pool whose every connection is busy (a burst of
    // load) is not a database that does not answer.
    let mut conn = None;
    loop {
        let answered = matches!(
            tokio::time::timeout(PROBE_TIMEOUT, store.ping_own(&mut conn)).await,
            Ok(Ok(()))
        );
        if !answered {
            // A probe cut off by its timeout may have left the connection
            // mid-exchange.
            conn = None;
        }
        if store.set_down(!answered) {
            if answered {
                tracing::info!("the database answers again; taking requests");
            } else {
                tracing::warn!(
                    "the database does not answer; refusing requests with 503 until it does"
                );
            }
        }
        tokio::select! {
            () = tokio::time::sleep(PROBE_EVERY) => {}
            () = stop.cancelled() => return,
        }
    }
}

/// Removes the event logs of runs that ended more than `retention` ago,
/// now and then, until `stop` fires.
async fn prune_events(store: Store, retention: Duration, stop: CancellationToken) {
    // Often enough that logs outlive their retention by a quarter at most.
    let every = (retention / 4).clamp(Duration::from_secs(1), Duration::from_secs(600));
    loop {
        let cutoff = store::format_timestamp(time::OffsetDateTime::now_utc() - retention);
        match store.prune_events(&cutoff).await {
            Ok(0) => {}
            Ok(removed) => tracing::info!(removed, "pruned the event logs of finished runs"),
            Err(error) => tracing::warn!(%error, "could not prune event logs; trying again later"),
        }
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = stop.cancelled() => return,
        }
    }
}

/// Takes the lock that keeps a second server off this SQLite file: SQLite
/// runs one node (several nodes need PostgreSQL).
fn lock_single_node(database: &std::path::Path) -> anyhow::Result<std::fs::File> {
    if let Some(dir) = database.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let path = database.with_extension("lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
            "refusing to start: another agentstream server is using {}. SQLite runs one \
             server; to run several nodes, use PostgreSQL",
            database.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("cannot lock {}", path.display()))
        }
    }
}

/// Resolves on SIGINT or SIGTERM. The handlers are installed by this call,
/// not when the future is first polled: that is after the "serving" line,
/// and a signal sent in between would kill the process without a shutdown.
/// Call it inside the runtime.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{Signal, SignalKind, signal};
        let listen = |kind: SignalKind, name: &'static str| {
            signal(kind)
                .inspect_err(|error| tracing::error!(%error, "cannot listen for {name}"))
                .ok()
        };
        let received = |signal: Option<Signal>| async move {
            match signal {
                Some(mut signal) => {
                    signal.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        let interrupt = received(listen(SignalKind::interrupt(), "SIGINT"));
        let terminate = received(listen(SignalKind::terminate(), "SIGTERM"));
        async move {
            tokio::select! {
                () = interrupt => tracing::info!("received SIGINT"),
                () = terminate => tracing::info!("received SIGTERM"),
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::Provider;

    /// A provider whose start-up check finds `probe`.
    #[derive(Debug)]
    struct Probed(Probe);

    impl Provider for Probed {
        fn stream(&self, _request: crate::llm::ChatRequest) -> crate::llm::LlmStream {
            Box::pin(futures_util::stream::empty())
        }

        fn label(&self, model: &str) -> String {
            model.to_owned()
        }

        fn probe(&self) -> futures_util::future::BoxFuture<'static, Probe> {
            let probe = self.0.clone();
            Box::pin(async move { probe })
        }
    }

    fn named(name: &str, probe: Probe) -> NamedProvider {
        NamedProvider {
            name: name.to_owned(),
            kind: "openai",
            url: Some(format!("http://{name}.example/v1")),
            provider: Arc::new(Probed(probe)),
            context_tokens: None,
        }
    }

    /// The WARN lines logged while `f` runs, formatted.
    async fn warnings_of<T>(f: impl Future<Output = T>) -> (T, String) {
        #[derive(Clone, Default)]
        struct Sink(Arc<std::sync::Mutex<Vec<u8>>>);
        impl std::io::Write for Sink {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        use tracing_subscriber::prelude::*;
        let sink = Sink::default();
        let writer = sink.clone();
        let subscriber = tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_writer(move || writer.clone())
                .with_filter(tracing_subscriber::filter::LevelFilter::WARN),
        );
        // A current-thread test runtime: the probes log through this guard.
        let guard = tracing::subscriber::set_default(subscriber);
        let out = f.await;
        drop(guard);
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        (out, text)
    }

    #[tokio::test]
    async fn an_unreachable_provider_is_a_warning() {
        let providers = [
            named("up", Probe::Ready),
            named("down", Probe::Unreachable("connection refused".to_owned())),
        ];
        let (result, warnings) = warnings_of(probe_providers(&providers)).await;
        assert!(result.is_ok(), "{result:?}");
        assert_eq!(warnings.lines().count(), 1, "{warnings}");
        assert!(
            warnings.contains("provider=down")
                && warnings.contains("http://down.example/v1")
                && warnings.contains("will retry")
                && warnings.contains("connection refused"),
            "{warnings}"
        );
    }

    #[tokio::test]
    async fn a_misconfigured_provider_stops_start_up() {
        let providers = [
            named("down", Probe::Unreachable("connection refused".to_owned())),
            named(
                "wrong",
                Probe::Misconfigured("GET /models answered 404".to_owned()),
            ),
        ];
        let (result, _) = warnings_of(probe_providers(&providers)).await;
        let error = result.unwrap_err().to_string();
        assert!(
            error.contains("\"wrong\"")
                && error.contains("http://wrong.example/v1")
                && error.contains("GET /models answered 404")
                && !error.contains("down"),
            "{error}"
        );
    }
}

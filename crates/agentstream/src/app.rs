//! Builds everything, serves, and shuts down in numbered phases.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    agent::{Agent, Agents},
    config::Config,
    http::{self, AppState},
    llm::scripted::Scripted,
    runs::{EventLog, Hub, RunManager},
    store::Store,
    tools::Registry,
};

/// How long open connections get to close after the streams end.
const CONNECTION_GRACE: Duration = Duration::from_secs(5);

/// The system prompt of the onboarding agent.
const ONBOARDING_PROMPT: &str = "You onboard a new user. Ask for each profile field in turn, \
    save each answer with update_profile, and call complete_onboarding when every field is \
    filled. Keep replies short and friendly.";
/// The system prompt of the chat agent.
const CHAT_PROMPT: &str = "You are a helpful assistant. Call get_profile when the user asks \
    about their profile.";

/// The server, built and bound, not yet serving.
#[derive(Debug)]
pub struct App {
    config: Config,
    listener: TcpListener,
    state: AppState,
    /// Background tasks other than runs (the event log writer).
    tracker: TaskTracker,
    /// Stops the event log writer once runs have ended.
    writer_stop: CancellationToken,
}

impl App {
    /// Connects and migrates the database, recovers runs a previous process
    /// left open, and binds the listener.
    pub async fn build(config: Config) -> anyhow::Result<App> {
        config.validate().map_err(anyhow::Error::msg)?;
        let store = Store::connect(&config.database_url, &config.pool())
            .await
            .with_context(|| {
                format!(
                    "cannot open the database at {}",
                    redact(&config.database_url)
                )
            })?;
        store
            .migrate()
            .await
            .context("cannot migrate the database")?;
        let local_user = store.ensure_user("local").await?;
        let hub = Arc::new(Hub::default());
        let tracker = TaskTracker::new();
        let writer_stop = CancellationToken::new();
        let (log, writer) = EventLog::new(store.clone(), hub.clone(), writer_stop.clone());
        tracker.spawn(writer);
        let runs = RunManager::new(store.clone(), log, hub, agents(&config));
        runs.recover().await.context("cannot recover open runs")?;
        let listener = TcpListener::bind(config.bind)
            .await
            .with_context(|| format!("cannot listen on {}", config.bind))?;
        let state = AppState::new(
            store,
            runs,
            local_user,
            config.limits(),
            Duration::from_secs(config.keepalive_secs),
            CancellationToken::new(),
        );
        Ok(App {
            config,
            listener,
            state,
            tracker,
            writer_stop,
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
    /// 4. flush the event log;
    /// 5. close the pool.
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
        } = self;
        let stop_accepting = CancellationToken::new();
        let router = http::router(state.clone());
        let server = axum::serve(listener, router)
            .with_graceful_shutdown(stop_accepting.clone().cancelled_owned());
        let server = tracker.spawn(async move { server.await });
        tracing::info!(addr = %config.bind, database = %redact(&config.database_url), "serving");
        shutdown.await;

        tracing::info!("shutdown 1/5: no longer accepting connections");
        stop_accepting.cancel();
        tracing::info!(
            drain_secs = config.drain_secs,
            "shutdown 2/5: draining runs"
        );
        state
            .runs
            .drain(Duration::from_secs(config.drain_secs))
            .await;
        tracing::info!("shutdown 3/5: ending open streams");
        state.streams_end.cancel();
        match tokio::time::timeout(CONNECTION_GRACE, server).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::error!(error = %e, "the server stopped with an error"),
            Ok(Err(e)) => tracing::error!(error = %e, "the server task failed"),
            Err(_) => {
                tracing::warn!("connections still open after {CONNECTION_GRACE:?}; closing them")
            }
        }
        tracing::info!("shutdown 4/5: flushing the event log");
        writer_stop.cancel();
        tracker.close();
        tracker.wait().await;
        tracing::info!("shutdown 5/5: closing the database pool");
        state.store.close().await;
        tracing::info!("stopped");
        Ok(())
    }
}

/// The built-in agents, on the scripted demo model.
fn agents(config: &Config) -> Agents {
    let registry = Registry::builtin(&config.onboarding_fields);
    let provider = Arc::new(Scripted::new(
        Duration::from_millis(config.scripted_delay_ms),
        config.onboarding_fields.clone(),
    ));
    let tools = |names: &[&str]| names.iter().filter_map(|n| registry.get(n)).collect();
    let mut agents = Agents::default();
    agents.add(Agent {
        name: "onboarding".to_owned(),
        provider: provider.clone(),
        model: "demo".to_owned(),
        system_prompt: ONBOARDING_PROMPT.to_owned(),
        tools: tools(&["get_profile", "update_profile", "complete_onboarding"]),
        max_steps: config.max_steps,
        temperature: None,
    });
    agents.add(Agent {
        name: "chat".to_owned(),
        provider,
        model: "demo".to_owned(),
        system_prompt: CHAT_PROMPT.to_owned(),
        tools: tools(&["get_profile"]),
        max_steps: config.max_steps,
        temperature: None,
    });
    agents
}

/// The database URL without its password, for logs.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let terminate = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut signal) => {
                    signal.recv().await;
                }
                Err(error) => {
                    tracing::error!(%error, "cannot listen for SIGTERM");
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::select! {
            _ = interrupt => tracing::info!("received SIGINT"),
            () = terminate => tracing::info!("received SIGTERM"),
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(redact("postgres://u:secret@h/db"), "postgres://u:***@h/db");
        assert_eq!(redact("sqlite://data/a.db"), "sqlite://data/a.db");
    }
}

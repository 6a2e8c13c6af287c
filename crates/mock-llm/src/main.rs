//! The `mock-llm` binary: serves the mock on a fixed address until SIGINT or SIGTERM.

use std::net::SocketAddr;

use anyhow::Context;
use clap::Parser;
use mock_llm::{MockLlm, Options};
use tracing_subscriber::EnvFilter;

/// A fake OpenAI-compatible Chat Completions server for benchmarks.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "MOCK_LLM_BIND", default_value = "127.0.0.1:8089")]
    bind: SocketAddr,
    /// Keep the last 1000 request bodies in memory (off: they are of no use outside tests).
    #[arg(long, env = "MOCK_LLM_RECORD_BODIES")]
    record_bodies: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // Colour for a person at a terminal only, never into a log file.
        .with_ansi(
            std::io::IsTerminal::is_terminal(&std::io::stderr())
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
        )
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let options = Options {
        record_bodies: args.record_bodies,
    };
    let server = MockLlm::start_on_with(args.bind, options)
        .await
        .with_context(|| format!("binding {}", args.bind))?;
    server.run_until_stopped(shutdown_signal()).await;
    Ok(())
}

async fn shutdown_signal() {
    let interrupt = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                terminate.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
}

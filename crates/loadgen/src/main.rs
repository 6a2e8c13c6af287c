//! The `loadgen` binary: `run`, `relay` and `report`.

use std::io::{IsTerminal as _, Write as _};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use loadgen::report::{self, ReportArgs};
use loadgen::{Relay, RunArgs};
use tracing_subscriber::EnvFilter;

/// Load generator for SSE endpoints, the bare relay baseline and the benchmark report.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Opens concurrent SSE streams and prints a JSON summary.
    Run(Box<RunCommand>),
    /// Serves the bare relay: an SSE pass-through of an OpenAI-compatible upstream.
    Relay(RelayCommand),
    /// Writes BENCHMARKS.md from a folder of run summaries.
    Report(ReportArgs),
}

#[derive(Debug, clap::Args)]
struct RunCommand {
    #[command(flatten)]
    run: RunArgs,
    /// Also write the JSON summary to this file.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Exit with status 1 when any stream failed.
    #[arg(long)]
    require_ok: bool,
}

#[derive(Debug, clap::Args)]
struct RelayCommand {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8090")]
    bind: SocketAddr,
    /// The upstream's OpenAI base URL.
    #[arg(long, default_value = "http://127.0.0.1:8089/v1")]
    upstream: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    // Thousands of streams need thousands of descriptors; the soft limit is often 1024.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::debug!(limit, "file descriptor limit"),
        Err(error) => tracing::warn!(%error, "cannot raise the file descriptor limit"),
    }
    match cli.command {
        Command::Run(command) => run(*command).await,
        Command::Relay(command) => {
            let relay = Relay::start(command.bind, &command.upstream)
                .await
                .with_context(|| format!("binding {}", command.bind))?;
            relay.run_until_stopped(shutdown_signal()).await;
            Ok(ExitCode::SUCCESS)
        }
        Command::Report(args) => {
            report::write(&args)?;
            tracing::info!(out = %args.out.display(), "report written");
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn run(command: RunCommand) -> anyhow::Result<ExitCode> {
    let summary = loadgen::run(&command.run, std::env::args().collect()).await?;
    let mut json = serde_json::to_string_pretty(&summary)?;
    json.push('\n');
    if let Some(out) = &command.out {
        std::fs::write(out, &json).with_context(|| format!("cannot write {}", out.display()))?;
    }
    std::io::stdout().lock().write_all(json.as_bytes())?;
    tracing::info!(
        target = %summary.target,
        scenario = %summary.scenario,
        streams = summary.streams,
        ok = summary.ok,
        failed = summary.failed_total,
        sustained = summary.sustained,
        "run finished"
    );
    if command.require_ok && summary.failed_total > 0 {
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

async fn shutdown_signal() {
    let interrupt = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
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
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
}

//! The `agentstream` binary: parses settings and runs a subcommand. The
//! command line and the terminal client live here, not in the server
//! library.

mod cli;
mod client;

use std::io::Write;

use cli::{Cli, Command, KeysCommand};

use agentstream::{
    App,
    app::shutdown_signal,
    config::{Config, LogFormat},
    store::Store,
    telemetry,
};
use anyhow::Context;
use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let Cli { command, config } = Cli::parse();
    let Some(command) = command else {
        return serve(config).await;
    };
    if !matches!(command, Command::Serve(_)) {
        telemetry::init(log_format(config.log_format));
    }
    match command {
        Command::Serve(config) => serve(*config).await,
        Command::Migrate(database) => {
            let store = open_store(&database.apply(config)).await?;
            store.close().await;
            tracing::info!("migrations applied");
            Ok(())
        }
        Command::Chat(args) => client::chat(args).await,
        Command::Keys(keys_args) => {
            let store = open_store(&keys_args.database.apply(config)).await?;
            let done = keys(&store, keys_args.action).await;
            store.close().await;
            done
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    telemetry::init(log_format(config.log_format));
    let app = App::build(config).await?;
    app.run_until_stopped(shutdown_signal()).await
}

/// The log lines `--log-format` asks for.
fn log_format(format: LogFormat) -> telemetry::Format {
    match format {
        LogFormat::Text => telemetry::Format::Text,
        LogFormat::Json => telemetry::Format::Json,
    }
}

async fn open_store(config: &Config) -> anyhow::Result<Store> {
    let store = Store::connect(&config.database_url, &config.pool())
        .await
        .context("cannot open the database")?;
    store
        .migrate()
        .await
        .context("cannot migrate the database")?;
    Ok(store)
}

/// Shown when the last active key is revoked: keys are off again.
const LAST_KEY_NOTICE: &str = "No active API key is left: a server on a loopback address now \
    takes requests without a key again, as the single local user, and one on any other \
    address refuses to start. Create a key to turn keys back on.";

/// Shown when the first active key is created: it changes who requests
/// without a key act as.
const FIRST_KEY_NOTICE: &str = "\
API keys are on now: from now on every request needs a key.
Conversations made before without a key belong to the user `local`; to keep
them reachable, create a key for that user:
    agentstream keys create --user local";

/// `agentstream keys …`: the key itself is printed once, to stdout.
async fn keys(store: &Store, action: KeysCommand) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match action {
        KeysCommand::Create { user } => {
            let user = user.trim();
            anyhow::ensure!(!user.is_empty(), "--user must not be empty");
            let created = store.create_api_key(user).await?;
            writeln!(out, "{}", created.key)?;
            out.flush()?;
            if created.first {
                // Said at once and on stderr, where it is seen even when
                // stdout goes to a file or a variable.
                writeln!(std::io::stderr(), "{FIRST_KEY_NOTICE}")?;
            }
            tracing::info!(
                id = %created.record.id,
                user = %created.record.user,
                prefix = %created.record.prefix,
                "created an API key; it is shown once, above, and only its hash is stored"
            );
        }
        KeysCommand::List => {
            writeln!(
                out,
                "{:<36}  {:<16}  {:<12}  {:<27}  revoked",
                "id", "user", "prefix", "created"
            )?;
            for key in store.list_api_keys().await? {
                writeln!(
                    out,
                    "{:<36}  {:<16}  {:<12}  {:<27}  {}",
                    key.id,
                    key.user,
                    key.prefix,
                    key.created_at,
                    key.revoked_at.as_deref().unwrap_or("-")
                )?;
            }
        }
        KeysCommand::Revoke { key } => {
            anyhow::ensure!(
                store.revoke_api_key(key.trim()).await?,
                "no active key has the ID or prefix {key:?}"
            );
            tracing::info!(key = %key.trim(), "revoked");
            let left = store.list_api_keys().await?;
            if left.iter().all(|key| key.revoked_at.is_some()) {
                writeln!(std::io::stderr(), "{LAST_KEY_NOTICE}")?;
            }
        }
    }
    Ok(())
}

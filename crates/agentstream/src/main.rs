//! The `agentstream` binary: parses settings and runs a subcommand.

use std::io::Write;

use agentstream::{
    App,
    app::shutdown_signal,
    config::{Cli, Command, Config, KeysCommand},
    store::Store,
    telemetry,
};
use anyhow::Context;
use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    telemetry::init(cli.config.log_format);
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            let app = App::build(cli.config).await?;
            app.run_until_stopped(shutdown_signal()).await
        }
        Command::Migrate => {
            let store = open_store(&cli.config).await?;
            store.close().await;
            tracing::info!("migrations applied");
            Ok(())
        }
        Command::Chat(args) => agentstream::client::chat(args).await,
        Command::Keys { action } => {
            let store = open_store(&cli.config).await?;
            let done = keys(&store, action).await;
            store.close().await;
            done
        }
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

/// `agentstream keys …`: the key itself is printed once, to stdout.
async fn keys(store: &Store, action: KeysCommand) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match action {
        KeysCommand::Create { user } => {
            let user = user.trim();
            anyhow::ensure!(!user.is_empty(), "--user must not be empty");
            let created = store.create_api_key(user).await?;
            writeln!(out, "{}", created.key)?;
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
        }
    }
    Ok(())
}

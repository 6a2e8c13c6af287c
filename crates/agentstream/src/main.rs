//! The `agentstream` binary: parses settings and runs a subcommand.

use agentstream::{
    App,
    app::shutdown_signal,
    config::{Cli, Command},
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
            let store = Store::connect(&cli.config.database_url, &cli.config.pool())
                .await
                .context("cannot open the database")?;
            store
                .migrate()
                .await
                .context("cannot migrate the database")?;
            store.close().await;
            tracing::info!("migrations applied");
            Ok(())
        }
    }
}

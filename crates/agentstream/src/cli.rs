//! The command line: `agentstream [serve]`, `migrate`, `chat` and `keys`,
//! each with its own flags. The server's settings are in [`Config`].

use clap::{Args, Parser, Subcommand};

use agentstream::config::{Config, DbPooler};

/// Streams an LLM agent's reply over SSE while its tools write a database.
#[derive(Debug, Parser)]
#[command(
    name = "agentstream",
    version,
    about,
    // `agentstream --bind X serve` would otherwise parse and drop `--bind`:
    // the server's flags go after `serve`, or alone without a subcommand.
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    /// What to do; `serve`, with the flags given here, when omitted.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// The server's settings: from these flags when no subcommand is given.
    /// With a subcommand they are the environment and the defaults only,
    /// which is where `migrate` and `keys` take their log format and pool
    /// settings from.
    #[command(flatten)]
    pub config: Config,
}

/// The subcommands.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Run the server (the default).
    Serve(Box<Config>),
    /// Apply the database migrations and exit.
    Migrate(DatabaseArgs),
    /// Talk to a running server from the terminal.
    Chat(crate::client::ChatArgs),
    /// Create, list and revoke API keys.
    Keys(KeysArgs),
}

/// `agentstream keys [database flags] ACTION`.
#[derive(Debug, Clone, Args)]
pub struct KeysArgs {
    /// The database holding the keys.
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// What to do with keys.
    #[command(subcommand)]
    pub action: KeysCommand,
}

/// `agentstream keys …`.
#[derive(Debug, Clone, Subcommand)]
pub enum KeysCommand {
    /// Create a key for a user (created if new) and print it, once.
    Create {
        /// The user the key acts as.
        #[arg(long)]
        user: String,
    },
    /// List keys: ID, user, prefix, created, revoked.
    List,
    /// Revoke a key by its ID or prefix.
    Revoke {
        /// The key's ID or prefix, as `keys list` shows them.
        key: String,
    },
}

/// Where the database is, for the commands that only open it (`migrate`,
/// `keys`). The same flags and variables as the server's; `global` so that
/// `keys create --database-url X` and `keys --database-url X create` both
/// parse.
#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    /// `sqlite://PATH` (created if missing) or `postgres://USER@HOST/DB`.
    #[arg(
        long,
        env = "AGENTSTREAM_DATABASE_URL",
        default_value = "sqlite://data/agentstream.db",
        global = true
    )]
    pub database_url: String,

    /// A URL that reaches PostgreSQL itself, not through a pooler: used for
    /// migrations and LISTEN, which need a session of their own. Required
    /// with `--db-pooler transaction`; default: the database URL.
    #[arg(long, env = "AGENTSTREAM_DATABASE_DIRECT_URL", global = true)]
    pub database_direct_url: Option<String>,

    /// The connection pooler in front of PostgreSQL, if any: `none`, or
    /// `transaction` (PgBouncer's transaction mode: no named prepared
    /// statements, no session settings).
    #[arg(
        long,
        env = "DB_POOLER",
        value_enum,
        default_value = "none",
        global = true
    )]
    pub db_pooler: DbPooler,
}

impl DatabaseArgs {
    /// `config` with these database settings in place of its own.
    pub fn apply(self, config: Config) -> Config {
        Config {
            database_url: self.database_url,
            database_direct_url: self.database_direct_url,
            db_pooler: self.db_pooler,
            ..config
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("agentstream").chain(args.iter().copied()))
    }

    #[test]
    fn the_server_takes_its_flags_alone_or_after_serve() {
        let alone = parse(&["--db-pool-pre-ping", "false", "--bind", "127.0.0.1:9"]).unwrap();
        assert!(alone.command.is_none());
        assert!(!alone.config.db_pool_pre_ping);
        assert_eq!(alone.config.bind.port(), 9);

        let Some(Command::Serve(config)) =
            parse(&["serve", "--bind", "127.0.0.1:9"]).unwrap().command
        else {
            panic!("not serve");
        };
        assert_eq!(config.bind.port(), 9);

        let before = parse(&["--bind", "127.0.0.1:9", "serve"]).unwrap_err();
        assert_eq!(before.kind(), clap::error::ErrorKind::ArgumentConflict);
    }

    #[test]
    fn keys_take_the_database_before_or_after_the_action() {
        for args in [
            &[
                "keys",
                "create",
                "--user",
                "ada",
                "--database-url",
                "sqlite://x.db",
            ][..],
            &[
                "keys",
                "--database-url",
                "sqlite://x.db",
                "create",
                "--user",
                "ada",
            ][..],
        ] {
            let cli = parse(args).unwrap();
            let Some(Command::Keys(keys)) = cli.command else {
                panic!("not keys: {args:?}");
            };
            assert!(matches!(&keys.action, KeysCommand::Create { user } if user == "ada"));
            let config = keys.database.apply(cli.config);
            assert_eq!(config.database_url, "sqlite://x.db");
            // The rest keeps its defaults.
            assert_eq!(config.db_pool_size, 5);
        }
        let migrate = parse(&["migrate", "--database-url", "postgres://db/a"]).unwrap();
        assert!(matches!(
            migrate.command,
            Some(Command::Migrate(DatabaseArgs { database_url, .. })) if database_url == "postgres://db/a"
        ));
        for server_flag in [
            &["keys", "list", "--db-pool-size", "3"][..],
            &["migrate", "--bind", "127.0.0.1:9"][..],
            &["chat", "--database-url", "sqlite://x.db"][..],
        ] {
            assert!(parse(server_flag).is_err(), "{server_flag:?} parsed");
        }
    }

    /// The database flags of `migrate` and `keys` are the server's: same
    /// names, variables and defaults.
    #[test]
    fn database_flags_match_the_servers() {
        let server = Config::augment_args(clap::Command::new("serve"));
        let database = DatabaseArgs::augment_args(clap::Command::new("migrate"));
        let mut compared = 0;
        for arg in database.get_arguments() {
            let twin = server
                .get_arguments()
                .find(|a| a.get_id() == arg.get_id())
                .unwrap_or_else(|| panic!("the server has no {}", arg.get_id()));
            assert_eq!(arg.get_long(), twin.get_long());
            assert_eq!(arg.get_env(), twin.get_env());
            assert_eq!(arg.get_default_values(), twin.get_default_values());
            compared += 1;
        }
        assert_eq!(compared, 3);
        Cli::command().debug_assert();
    }
}

//! Settings from flags and environment variables, and the TOML file
//! ([`FileConfig`]) composed over the built-in defaults.

mod file;

pub use file::FileConfig;

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use crate::http::Limits;
use crate::store::PoolSettings;
use clap::{Args, FromArgMatches, ValueEnum};

/// The connection pooler between agentstream and PostgreSQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DbPooler {
    /// None: agentstream's connections are PostgreSQL sessions.
    None,
    /// A pooler in transaction mode (PgBouncer `pool_mode = transaction`):
    /// each transaction may run on another server connection.
    Transaction,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The server's settings, each a flag of `agentstream [serve]` and an
/// environment variable.
#[derive(Debug, Clone, Args)]
pub struct Config {
    /// Address to listen on.
    #[arg(long, env = "AGENTSTREAM_BIND", default_value = "127.0.0.1:8000")]
    pub bind: SocketAddr,

    /// `sqlite://PATH` (created if missing) or `postgres://USER@HOST/DB`.
    #[arg(
        long,
        env = "AGENTSTREAM_DATABASE_URL",
        default_value = "sqlite://data/agentstream.db"
    )]
    pub database_url: String,

    /// A URL that reaches PostgreSQL itself, not through a pooler: used for
    /// migrations and LISTEN, which need a session of their own. Required
    /// with `--db-pooler transaction`; default: the database URL.
    #[arg(long, env = "AGENTSTREAM_DATABASE_DIRECT_URL")]
    pub database_direct_url: Option<String>,

    /// The connection pooler in front of PostgreSQL, if any: `none`, or
    /// `transaction` (PgBouncer's transaction mode: no named prepared
    /// statements, no session settings).
    #[arg(long, env = "DB_POOLER", value_enum, default_value = "none")]
    pub db_pooler: DbPooler,

    /// Connections the pool keeps open.
    #[arg(long, env = "DB_POOL_SIZE", default_value_t = 5)]
    pub db_pool_size: u32,

    /// Connections opened beyond the pool size under load.
    #[arg(long, env = "DB_MAX_OVERFLOW", default_value_t = 10)]
    pub db_max_overflow: u32,

    /// Seconds a connection lives before it is replaced.
    #[arg(long, env = "DB_POOL_RECYCLE", default_value_t = 3600)]
    pub db_pool_recycle: u64,

    /// Seconds a request waits for a free connection before it gets 503.
    #[arg(long, env = "DB_POOL_TIMEOUT", default_value_t = 30)]
    pub db_pool_timeout: u64,

    /// Test a PostgreSQL connection idle a second or more before handing it out.
    #[arg(long, env = "DB_POOL_PRE_PING", default_value_t = true, action = clap::ArgAction::Set)]
    pub db_pool_pre_ping: bool,

    /// PostgreSQL `statement_timeout` and `idle_in_transaction_session_timeout`, in seconds.
    #[arg(long, env = "DB_STATEMENT_TIMEOUT", default_value_t = 30)]
    pub db_statement_timeout: u64,

    /// Seconds running runs get to finish at shutdown before they are interrupted.
    #[arg(long, env = "AGENTSTREAM_DRAIN_SECS", default_value_t = 10)]
    pub drain_secs: u64,

    /// Most model calls in one run.
    #[arg(long, env = "AGENTSTREAM_MAX_STEPS", default_value_t = 8)]
    pub max_steps: u32,

    /// Seconds a run paused for the user's approval of a tool call waits for
    /// the decision before it ends `expired` (an agent's
    /// `approval_timeout_secs` overrides it).
    #[arg(
        long,
        env = "AGENTSTREAM_APPROVAL_TIMEOUT_SECS",
        default_value_t = 3600
    )]
    pub approval_timeout_secs: u64,

    /// Queued and running runs one user may have (429 beyond), across nodes.
    #[arg(long, env = "AGENTSTREAM_MAX_RUNS_PER_USER", default_value_t = 8)]
    pub max_runs_per_user: u32,

    /// Runs this server drives at once (503 beyond).
    #[arg(long, env = "AGENTSTREAM_MAX_ACTIVE_RUNS", default_value_t = 10_000)]
    pub max_active_runs: usize,

    /// Events one run may emit (the run fails with `event_limit` beyond).
    #[arg(long, env = "AGENTSTREAM_MAX_EVENTS_PER_RUN", default_value_t = 10_000)]
    pub max_events_per_run: i64,

    /// Largest user message, in bytes (413 beyond).
    #[arg(long, env = "AGENTSTREAM_MAX_MESSAGE_BYTES", default_value_t = 32 * 1024)]
    pub max_message_bytes: usize,

    /// Largest request body, in bytes (413 beyond).
    #[arg(long, env = "AGENTSTREAM_MAX_BODY_BYTES", default_value_t = 256 * 1024)]
    pub max_body_bytes: usize,

    /// Origins whose pages may call the API from a browser (CORS), such as
    /// `https://app.example.com` or `http://localhost:3000`; `*` for any.
    /// None by default: a page on another origin is refused by its browser.
    #[arg(
        long = "cors-origin",
        env = "AGENTSTREAM_CORS_ORIGINS",
        value_delimiter = ','
    )]
    pub cors_origins: Vec<String>,

    /// The onboarding profile fields, in the order they are asked.
    #[arg(
        long,
        env = "AGENTSTREAM_ONBOARDING_FIELDS",
        value_delimiter = ',',
        default_value = "name,role,goals"
    )]
    pub onboarding_fields: Vec<String>,

    /// Pause before each word of the scripted demo model, in milliseconds.
    #[arg(long, env = "AGENTSTREAM_SCRIPTED_DELAY_MS", default_value_t = 30)]
    pub scripted_delay_ms: u64,

    /// Milliseconds a run's event may wait, beyond its own commit, for other
    /// events to share that commit. Under load the event log begins a commit
    /// at most once per this interval, so that events of many runs commit
    /// together; a server with nothing committed in the last interval
    /// commits an event at once. 0 commits whatever is pending whenever the
    /// last commit ends (the fewest events per commit).
    #[arg(
        long,
        env = "AGENTSTREAM_EVENT_COMMIT_INTERVAL_MS",
        default_value_t = 10,
        value_parser = clap::value_parser!(u64).range(0..=1000)
    )]
    pub event_commit_interval_ms: u64,

    /// Seconds a finished run's event log is kept (its transcript stays).
    #[arg(
        long,
        env = "AGENTSTREAM_EVENT_RETENTION_SECS",
        default_value_t = 86_400
    )]
    pub event_retention_secs: u64,

    /// Seconds between SSE keep-alive comments.
    #[arg(long, env = "AGENTSTREAM_KEEPALIVE_SECS", default_value_t = 15)]
    pub keepalive_secs: u64,

    /// This node's ID among nodes sharing one PostgreSQL (default: unique
    /// per process). Give a node the same ID across restarts and it takes
    /// back the runs it left open at once, instead of after their leases.
    #[arg(long, env = "AGENTSTREAM_NODE_ID")]
    pub node_id: Option<String>,

    /// Milliseconds between renewals of the leases of the runs a node drives.
    #[arg(long, env = "AGENTSTREAM_LEASE_RENEW_MS", default_value_t = 2_000)]
    pub lease_renew_ms: u64,

    /// Milliseconds a lease lasts: a node silent this long is taken as dead
    /// and its runs are marked interrupted by another.
    #[arg(long, env = "AGENTSTREAM_LEASE_EXPIRE_MS", default_value_t = 10_000)]
    pub lease_expire_ms: u64,

    /// A TOML file defining model providers and agents (see the README).
    #[arg(long = "config", env = "AGENTSTREAM_CONFIG")]
    pub config_file: Option<PathBuf>,

    /// Log line format.
    #[arg(
        long,
        env = "AGENTSTREAM_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub log_format: LogFormat,
}

impl Config {
    /// The settings from the environment and the defaults, without flags.
    pub fn defaults() -> Config {
        let matches = Config::augment_args(clap::Command::new("agentstream"))
            .get_matches_from(["agentstream"]);
        Config::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
    }

    /// The pool settings.
    pub fn pool(&self) -> PoolSettings {
        PoolSettings {
            size: self.db_pool_size,
            max_overflow: self.db_max_overflow,
            recycle: Duration::from_secs(self.db_pool_recycle),
            timeout: Duration::from_secs(self.db_pool_timeout),
            pre_ping: self.db_pool_pre_ping,
            statement_timeout: Duration::from_secs(self.db_statement_timeout),
            transaction_pooler: self.db_pooler == DbPooler::Transaction,
            direct_url: self.database_direct_url.clone(),
        }
    }

    /// This node's ID and lease timings.
    pub fn node(&self) -> crate::runs::NodeSettings {
        let id = self.node_id.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "node".to_owned());
            let unique = uuid::Uuid::now_v7().simple().to_string();
            format!(
                "{host}-{}-{}",
                std::process::id(),
                &unique[unique.len() - 6..]
            )
        });
        crate::runs::NodeSettings {
            id,
            lease_renew: Duration::from_millis(self.lease_renew_ms),
            lease_expire: Duration::from_millis(self.lease_expire_ms),
        }
    }

    /// The run limits.
    pub fn run_limits(&self) -> crate::runs::RunLimits {
        crate::runs::RunLimits {
            per_user: self.max_runs_per_user,
            active: self.max_active_runs,
            events_per_run: self.max_events_per_run,
        }
    }

    /// The HTTP limits.
    pub fn limits(&self) -> Limits {
        Limits {
            max_message_bytes: self.max_message_bytes,
            max_body_bytes: self.max_body_bytes,
            cors_origins: self.cors_origins.clone(),
        }
    }

    /// Checks settings that flags alone cannot.
    pub fn validate(&self) -> Result<(), String> {
        if self.db_pool_size + self.db_max_overflow == 0 {
            return Err("DB_POOL_SIZE + DB_MAX_OVERFLOW must be at least 1".to_owned());
        }
        if self.onboarding_fields.iter().any(|f| f.trim().is_empty()) {
            return Err("onboarding fields must not be empty".to_owned());
        }
        if self.max_steps == 0 {
            return Err("max steps must be at least 1".to_owned());
        }
        if self.max_runs_per_user == 0 || self.max_active_runs == 0 {
            return Err("run limits must be at least 1".to_owned());
        }
        if self.lease_renew_ms == 0 || self.lease_expire_ms <= self.lease_renew_ms {
            return Err("the lease must outlast at least one renewal".to_owned());
        }
        if self.max_events_per_run < 4 {
            return Err("max events per run must be at least 4".to_owned());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_seeds() {
        let config = Config::defaults();
        assert_eq!(config.bind.to_string(), "127.0.0.1:8000");
        let pool = config.pool();
        assert_eq!((pool.size, pool.max_overflow), (5, 10));
        assert_eq!(pool.recycle, Duration::from_secs(3600));
        assert_eq!(pool.timeout, Duration::from_secs(30));
        assert!(pool.pre_ping);
        assert_eq!(config.onboarding_fields, ["name", "role", "goals"]);
        assert!(config.validate().is_ok());
    }

    #[test]
    fn pre_ping_can_be_turned_off() {
        let command = Config::augment_args(clap::Command::new("agentstream"));
        let matches = command.get_matches_from(["agentstream", "--db-pool-pre-ping", "false"]);
        assert!(!Config::from_arg_matches(&matches).unwrap().db_pool_pre_ping);
    }
}

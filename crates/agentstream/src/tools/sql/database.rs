//! The databases SQL tools act on: agentstream's own, and each
//! `[databases.NAME]` the configuration declares, with small pools of their own.

use std::{collections::BTreeMap, str::FromStr, sync::Arc, time::Duration};

use serde::Deserialize;
use sqlx::{
    AnyPool, ConnectOptions, Connection, SqlitePool, any::AnyConnectOptions, pool::PoolOptions,
    sqlite::SqliteConnectOptions,
};

use crate::store::Backend;

/// The name SQL tools use for agentstream's own database (the default).
pub const OWN: &str = "agentstream";

/// One `[databases.NAME]` table: an application database tools act on.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `sqlite://PATH` (the file must exist) or `postgres://…`.
    pub url: Option<String>,
    /// The name of an environment variable holding the URL instead.
    pub url_env: Option<String>,
    /// Connections its pool opens at most (default 4).
    pub pool_size: Option<u32>,
}

/// A database SQL tools act on, with its pools.
#[derive(Debug)]
pub struct Database {
    /// Its name in the configuration.
    pub name: String,
    /// Its dialect.
    pub backend: Backend,
    /// Its connections.
    pub pools: Pools,
}

/// A tool database's connections, by dialect.
#[derive(Debug)]
pub enum Pools {
    /// One pool; a `read_only` statement runs in a `READ ONLY` transaction.
    Postgres(AnyPool),
    /// SQLite's own driver, not sqlx's Any one: Any refuses every column
    /// declared `BOOLEAN`, `DATE`, `TIME` or `DATETIME`, and cannot stop a
    /// running statement (see `sqlite.rs`).
    Sqlite {
        /// Connections for statements that may write.
        write: SqlitePool,
        /// Connections for `read_only` statements, opened read-only
        /// (`mode=ro`), so they cannot write whatever the statement says.
        read: SqlitePool,
    },
}

/// Every database SQL tools may name, opened.
#[derive(Debug, Clone, Default)]
pub struct Databases {
    by_name: BTreeMap<String, Arc<Database>>,
}

/// How long opening a database may take at start-up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

impl Databases {
    /// Opens every declared database and agentstream's own (at `own_url`,
    /// for read-only statements: its writes go through the store). Opens
    /// nothing when no SQL tool needs a database, `needed` says which.
    /// Fails naming the database that cannot be opened.
    pub async fn open(
        configs: &BTreeMap<String, DatabaseConfig>,
        own_url: &str,
        needed: &[&str],
    ) -> Result<Databases, String> {
        let mut databases = Databases::default();
        if configs.contains_key(OWN) {
            return Err(format!(
                "[databases.{OWN}]: the name is agentstream's own database; choose another"
            ));
        }
        for name in needed {
            if databases.by_name.contains_key(*name) {
                continue;
            }
            let (url, pool_size) = if *name == OWN {
                (own_url.to_owned(), 2)
            } else {
                let config = configs.get(*name).ok_or_else(|| {
                    format!(
                        "no database is named {name:?}: declare it as [databases.{name}], or \
                         leave `database` out for agentstream's own"
                    )
                })?;
                (url_of(name, config)?, config.pool_size.unwrap_or(4).max(1))
            };
            let database = connect(name, &url, pool_size)
                .await
                .map_err(|e| format!("database {name:?}: {e}"))?;
            databases
                .by_name
                .insert((*name).to_owned(), Arc::new(database));
        }
        Ok(databases)
    }

    /// The database with this name.
    pub fn get(&self, name: &str) -> Option<Arc<Database>> {
        self.by_name.get(name).cloned()
    }

    /// Closes every pool.
    pub async fn close(&self) {
        for database in self.by_name.values() {
            match &database.pools {
                Pools::Postgres(pool) => pool.close().await,
                Pools::Sqlite { write, read } => {
                    read.close().await;
                    write.close().await;
                }
            }
        }
    }
}

fn url_of(name: &str, config: &DatabaseConfig) -> Result<String, String> {
    match (&config.url, &config.url_env) {
        (Some(url), None) => Ok(url.clone()),
        (None, Some(var)) => std::env::var(var).map_err(|_| {
            format!("[databases.{name}]: the environment variable {var} (url_env) is not set")
        }),
        _ => Err(format!(
            "[databases.{name}]: give exactly one of `url` and `url_env`"
        )),
    }
}

async fn connect(name: &str, url: &str, pool_size: u32) -> Result<Database, String> {
    let backend = Backend::from_url(url)
        .ok_or_else(|| "the URL must start with sqlite:// or postgres://".to_owned())?;
    if backend == Backend::Sqlite
        && let Some(path) = crate::store::sqlite_path(url)
        && !path.exists()
    {
        return Err(format!(
            "the SQLite file {} does not exist (agentstream opens an application \
             database, it does not create one; a relative path is from the current \
             directory, sqlite:///abs/path is absolute)",
            path.display()
        ));
    }
    let refused =
        |e: sqlx::Error| format!("cannot connect ({}): {e}", crate::store::redact_url(url));
    let pools = match backend {
        Backend::Postgres => {
            let options = AnyConnectOptions::from_str(url).map_err(|e| e.to_string())?;
            Pools::Postgres(
                pool_options(pool_size)
                    .connect_with(logged(options))
                    .await
                    .map_err(refused)?,
            )
        }
        Backend::Sqlite => {
            let options = |mode| {
                SqliteConnectOptions::from_str(&with_mode(url, mode)).map_err(|e| e.to_string())
            };
            let write = pool_options(pool_size)
                .connect_with(logged(options("rw")?))
                .await
                .map_err(refused)?;
            let read = pool_options(pool_size)
                .connect_with(logged(options("ro")?))
                .await
                .map_err(|e| format!("cannot connect read-only: {e}"))?;
            Pools::Sqlite { write, read }
        }
    };
    tracing::info!(database = name, backend = ?backend, "tool database opened");
    Ok(Database {
        name: name.to_owned(),
        backend,
        pools,
    })
}

/// Statements logged at TRACE, slow ones at DEBUG.
fn logged<O: ConnectOptions>(options: O) -> O {
    options
        .log_statements(tracing::log::LevelFilter::Trace)
        .log_slow_statements(tracing::log::LevelFilter::Debug, Duration::from_secs(5))
}

fn pool_options<DB: sqlx::Database>(pool_size: u32) -> PoolOptions<DB> {
    PoolOptions::<DB>::new()
        .max_connections(pool_size)
        .acquire_timeout(CONNECT_TIMEOUT)
        // A connection handed back inside a transaction (a statement cut
        // off by its timeout) is closed, never reused dirty.
        .after_release(|conn, _| {
            let reuse = !conn.is_in_transaction();
            Box::pin(async move { Ok(reuse) })
        })
}

/// A `sqlite:` URL opened with `mode` (`rw`: the file must exist; `ro`).
fn with_mode(url: &str, mode: &str) -> String {
    let rest = url.trim_start_matches("sqlite:").trim_start_matches("//");
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    let kept: Vec<&str> = query
        .split('&')
        .filter(|p| !p.is_empty() && !p.starts_with("mode="))
        .chain(std::iter::once(if mode == "ro" {
            "mode=ro"
        } else {
            "mode=rw"
        }))
        .collect();
    format!("sqlite://{path}?{}", kept.join("&"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_modes_replace_the_urls() {
        assert_eq!(with_mode("sqlite://a.db", "ro"), "sqlite://a.db?mode=ro");
        assert_eq!(
            with_mode("sqlite:///x/a.db?mode=rwc&cache=shared", "rw"),
            "sqlite:///x/a.db?cache=shared&mode=rw"
        );
    }
}

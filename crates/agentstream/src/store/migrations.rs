//! The migrations of each dialect, compiled into the binary, and the
//! migrator that applies them (on PostgreSQL itself when a pooler stands in
//! front of it).

use std::borrow::Cow;

use futures_util::future::BoxFuture;
use sqlx::{
    AnyConnection, Connection,
    migrate::{Migration, MigrationSource, MigrationType, Migrator},
};

use super::{Backend, Store, StoreError};

impl Store {
    /// Applies the migrations of this store's dialect that are not applied yet.
    #[tracing::instrument(skip_all)]
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let source = match self.backend {
            Backend::Sqlite => Embedded(SQLITE_MIGRATIONS),
            Backend::Postgres => Embedded(POSTGRES_MIGRATIONS),
        };
        let migrator = Migrator::new(source).await?;
        match &self.direct_url {
            None => migrator.run(&self.pool).await?,
            Some(direct) => {
                // The migrator holds a session lock from start to end: a
                // session of its own, on PostgreSQL itself.
                let mut conn = AnyConnection::connect(direct).await?;
                let ran = migrator.run(&mut conn).await;
                conn.close().await?;
                ran?;
            }
        }
        Ok(())
    }
}

/// Migrations compiled into the binary: (version, description, SQL).
type MigrationList = &'static [(i64, &'static str, &'static str)];

const SQLITE_MIGRATIONS: MigrationList = &[
    (
        1,
        "initial",
        include_str!("../../migrations/sqlite/0001_initial.sql"),
    ),
    (
        2,
        "api keys",
        include_str!("../../migrations/sqlite/0002_api_keys.sql"),
    ),
    (
        3,
        "nodes",
        include_str!("../../migrations/sqlite/0003_nodes.sql"),
    ),
    (
        4,
        "finish reason",
        include_str!("../../migrations/sqlite/0004_finish_reason.sql"),
    ),
    (
        5,
        "conversation agent",
        include_str!("../../migrations/sqlite/0005_conversation_agent.sql"),
    ),
    (
        6,
        "caller and tool call status",
        include_str!("../../migrations/sqlite/0006_caller_and_tool_call_status.sql"),
    ),
    (
        7,
        "chat id",
        include_str!("../../migrations/sqlite/0007_chat_id.sql"),
    ),
    (
        8,
        "run context",
        include_str!("../../migrations/sqlite/0008_run_context.sql"),
    ),
    (
        9,
        "tool approvals",
        include_str!("../../migrations/sqlite/0009_tool_approvals.sql"),
    ),
];
const POSTGRES_MIGRATIONS: MigrationList = &[
    (
        1,
        "initial",
        include_str!("../../migrations/postgres/0001_initial.sql"),
    ),
    (
        2,
        "api keys",
        include_str!("../../migrations/postgres/0002_api_keys.sql"),
    ),
    (
        3,
        "nodes",
        include_str!("../../migrations/postgres/0003_nodes.sql"),
    ),
    (
        4,
        "finish reason",
        include_str!("../../migrations/postgres/0004_finish_reason.sql"),
    ),
    (
        5,
        "conversation agent",
        include_str!("../../migrations/postgres/0005_conversation_agent.sql"),
    ),
    (
        6,
        "caller and tool call status",
        include_str!("../../migrations/postgres/0006_caller_and_tool_call_status.sql"),
    ),
    (
        7,
        "chat id",
        include_str!("../../migrations/postgres/0007_chat_id.sql"),
    ),
    (
        8,
        "run context",
        include_str!("../../migrations/postgres/0008_run_context.sql"),
    ),
    (
        9,
        "tool approvals",
        include_str!("../../migrations/postgres/0009_tool_approvals.sql"),
    ),
];

/// Serves embedded migrations to sqlx's migrator, so the binary needs no
/// migrations folder at run time and no proc-macro build of the drivers.
#[derive(Debug)]
struct Embedded(MigrationList);

impl MigrationSource<'static> for Embedded {
    fn resolve(
        self,
    ) -> BoxFuture<'static, Result<Vec<Migration>, Box<dyn std::error::Error + Send + Sync>>> {
        Box::pin(async move {
            Ok(self
                .0
                .iter()
                .map(|(version, description, sql)| {
                    Migration::new(
                        *version,
                        Cow::Borrowed(*description),
                        MigrationType::Simple,
                        Cow::Borrowed(*sql),
                        false,
                    )
                })
                .collect())
        })
    }
}

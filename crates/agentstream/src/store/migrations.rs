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
    (
        10,
        "conversation list and retry",
        include_str!("../../migrations/sqlite/0010_conversation_list_and_retry.sql"),
    ),
    (
        11,
        "event log without foreign key",
        include_str!("../../migrations/sqlite/0011_event_log_without_foreign_key.sql"),
    ),
    (
        12,
        "event log integer run key",
        include_str!("../../migrations/sqlite/0012_event_log_integer_run_key.sql"),
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
    (
        10,
        "conversation list and retry",
        include_str!("../../migrations/postgres/0010_conversation_list_and_retry.sql"),
    ),
    (
        11,
        "event log without foreign key",
        include_str!("../../migrations/postgres/0011_event_log_without_foreign_key.sql"),
    ),
    (
        12,
        "event log integer run key",
        include_str!("../../migrations/postgres/0012_event_log_integer_run_key.sql"),
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

#[cfg(test)]
mod tests {
    use sqlx::{Connection, Row};

    use super::*;

    async fn migrate(conn: &mut AnyConnection, list: MigrationList) {
        Migrator::new(Embedded(list))
            .await
            .unwrap()
            .run(conn)
            .await
            .unwrap();
    }

    /// Migrates to just before migration `version` and stores a user `u`
    /// with a conversation `c`: where a test of that migration begins.
    async fn before_migration(conn: &mut AnyConnection, list: MigrationList, version: i64) {
        let before = list.iter().position(|m| m.0 == version).unwrap();
        migrate(conn, &list[..before]).await;
        sqlx::raw_sql(
            "INSERT INTO users VALUES ('u', 'ada', NULL, 't');
             INSERT INTO conversations (id, user_id, kind, created_at, updated_at, agent)
                 VALUES ('c', 'u', 'chat', 't', 't', 'chat');",
        )
        .execute(conn)
        .await
        .unwrap();
    }

    /// Migration 0012 numbers every stored run and moves its events to the
    /// run's number, in order, on both dialects; an event whose run is gone
    /// is not carried over.
    async fn numbers_runs_and_keeps_their_events(url: &str, setup: &str, list: MigrationList) {
        sqlx::any::install_default_drivers();
        let mut conn = AnyConnection::connect(url).await.unwrap();
        sqlx::raw_sql(setup).execute(&mut conn).await.unwrap();
        before_migration(&mut conn, list, 12).await;
        sqlx::raw_sql(
            "INSERT INTO runs (id, conversation_id, user_id, agent, status, on_disconnect, created_at)
                 VALUES ('r1', 'c', 'u', 'chat', 'completed', 'continue', 't'),
                        ('r2', 'c', 'u', 'chat', 'completed', 'continue', 't');
             INSERT INTO run_events VALUES ('r2', 1, 'run.started', '{}', 't'),
                 ('r1', 2, 'done', '{\"a\":1}', 't'), ('r1', 1, 'run.started', '{}', 't'),
                 ('gone', 1, 'done', '{}', 't');",
        )
        .execute(&mut conn)
        .await
        .unwrap();
        migrate(&mut conn, list).await;
        let rows = sqlx::query(
            "SELECT r.id, e.seq, e.data FROM run_events e JOIN runs r ON r.event_key = e.run_key \
             ORDER BY r.id, e.seq",
        )
        .fetch_all(&mut conn)
        .await
        .unwrap();
        let rows: Vec<(String, i64, String)> = rows
            .iter()
            .map(|row| (row.get("id"), row.get("seq"), row.get("data")))
            .collect();
        let row = |id: &str, seq, data: &str| (id.to_owned(), seq, data.to_owned());
        assert_eq!(
            rows,
            [
                row("r1", 1, "{}"),
                row("r1", 2, r#"{"a":1}"#),
                row("r2", 1, "{}")
            ]
        );
        let keys = sqlx::query("SELECT COUNT(DISTINCT event_key) AS n FROM runs")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(keys.get::<i64, _>("n"), 2);
        let events = sqlx::query("SELECT COUNT(*) AS n FROM run_events")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(
            events.get::<i64, _>("n"),
            3,
            "the orphan event is not copied"
        );
        conn.close().await.unwrap();
    }

    #[tokio::test]
    async fn sqlite_numbers_runs_and_keeps_their_events() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("old.db").display());
        numbers_runs_and_keeps_their_events(&url, "PRAGMA foreign_keys = ON", SQLITE_MIGRATIONS)
            .await;
    }

    /// Needs the PostgreSQL the API tests use (`AGENTSTREAM_TEST_POSTGRES_URL`,
    /// or the local server); the test's tables live in a schema of its own.
    #[tokio::test]
    async fn postgres_numbers_runs_and_keeps_their_events() {
        let url = std::env::var("AGENTSTREAM_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
        let schema = format!("m{}", uuid::Uuid::now_v7().simple());
        let setup = format!("CREATE SCHEMA {schema}; SET search_path TO {schema}");
        numbers_runs_and_keeps_their_events(&url, &setup, POSTGRES_MIGRATIONS).await;
        let mut conn = AnyConnection::connect(&url).await.unwrap();
        sqlx::raw_sql(&format!("DROP SCHEMA {schema} CASCADE"))
            .execute(&mut conn)
            .await
            .unwrap();
    }

    /// The SQLite migration that admits the approval statuses rewrites the
    /// runs table's CHECK in place: a database with runs keeps every row of
    /// every table (nothing cascades), and a connection opened before the
    /// migration takes the new statuses too.
    #[tokio::test]
    async fn sqlite_admits_the_approval_statuses_and_keeps_every_row() {
        sqlx::any::install_default_drivers();
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("old.db").display());
        let mut conn = AnyConnection::connect(&url).await.unwrap();
        let mut other = AnyConnection::connect(&url).await.unwrap();
        for conn in [&mut conn, &mut other] {
            sqlx::raw_sql("PRAGMA foreign_keys = ON")
                .execute(conn)
                .await
                .unwrap();
        }
        before_migration(&mut conn, SQLITE_MIGRATIONS, 9).await;
        sqlx::raw_sql(
            "INSERT INTO runs (id, conversation_id, user_id, agent, status, on_disconnect, created_at)
                 VALUES ('r', 'c', 'u', 'chat', 'completed', 'continue', 't');
             INSERT INTO messages (id, conversation_id, run_id, role, content, status, created_at)
                 VALUES ('m', 'c', 'r', 'user', 'hi', 'complete', 't');
             INSERT INTO run_events VALUES ('r', 1, 'done', '{}', 't');",
        )
        .execute(&mut conn)
        .await
        .unwrap();
        // The other connection has read the old schema.
        let refused = sqlx::raw_sql(
            "INSERT INTO runs (id, conversation_id, user_id, agent, status, on_disconnect, created_at)
             VALUES ('early', 'c', 'u', 'chat', 'requires_action', 'continue', 't')",
        )
        .execute(&mut other)
        .await;
        assert!(refused.is_err(), "the old CHECK admits requires_action");
        migrate(&mut conn, SQLITE_MIGRATIONS).await;
        for status in ["requires_action", "expired"] {
            sqlx::query(
                "INSERT INTO runs (id, conversation_id, user_id, agent, status, on_disconnect, \
                 created_at) VALUES ($1, 'c', 'u', 'chat', $1, 'continue', 't')",
            )
            .bind(status)
            .execute(&mut other)
            .await
            .unwrap();
        }
        let wrong = sqlx::raw_sql(
            "INSERT INTO runs (id, conversation_id, user_id, agent, status, on_disconnect, created_at)
             VALUES ('w', 'c', 'u', 'chat', 'paused', 'continue', 't')",
        )
        .execute(&mut conn)
        .await;
        assert!(wrong.is_err(), "the new CHECK still refuses other statuses");
        for (table, rows) in [("runs", 3), ("messages", 1), ("run_events", 1)] {
            let row = sqlx::query(&format!("SELECT COUNT(*) AS n FROM {table}"))
                .fetch_one(&mut conn)
                .await
                .unwrap();
            assert_eq!(row.get::<i64, _>("n"), rows, "{table}");
        }
        let check = sqlx::query("PRAGMA integrity_check")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(check.get::<String, _>(0), "ok");
        conn.close().await.unwrap();
        other.close().await.unwrap();
    }
}

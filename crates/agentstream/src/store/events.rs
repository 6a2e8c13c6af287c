//! The run event log: every event a run emits, in `seq` order, as sent.

use sqlx::{AnyConnection, Row};
use uuid::Uuid;

use super::{Backend, Query, Store, StoreError, now, parse_id, query};
use crate::events::{EventKind, StoredEvent};

/// Appends a batch in one statement, whatever its size: its events are one
/// JSON array of `[run_id, seq, type, data]` rows (`$1`), taken apart by the
/// database, all stored at `$2`. One cached statement and one hand-off to
/// SQLite's thread (or one round trip to PostgreSQL) per batch, where a
/// `VALUES` list took one per 64, 16, 4 or 1 rows. A run taken over as dead
/// may still try to write: its late event loses to the `done` already at
/// that `seq`. SQLite reads `ON` after `FROM json_each(…)` as a join's
/// unless a `WHERE` comes between (its documented upsert ambiguity).
const APPEND_SQLITE: &str = "INSERT INTO run_events (run_id, seq, type, data, created_at) \
     SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, $2 FROM json_each($1) WHERE true \
     ON CONFLICT (run_id, seq) DO NOTHING";

/// [`APPEND_SQLITE`] in PostgreSQL's words.
const APPEND_POSTGRES: &str = "INSERT INTO run_events (run_id, seq, type, data, created_at) \
     SELECT e ->> 0, (e ->> 1)::bigint, e ->> 2, e ->> 3, $2 \
     FROM json_array_elements($1::json) AS e \
     ON CONFLICT (run_id, seq) DO NOTHING";

/// Stores one event; values bound by [`bind_event`].
pub(super) const INSERT_EVENT: &str = "INSERT INTO run_events (run_id, seq, type, data, created_at) \
     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (run_id, seq) DO NOTHING";

/// Binds the values of [`INSERT_EVENT`], stored at `at`.
pub(super) fn bind_event<'q>(query: Query<'q>, event: &'q StoredEvent, at: &'q str) -> Query<'q> {
    query
        .bind(event.run_id.to_string())
        .bind(event.seq)
        .bind(event.kind.as_str())
        .bind(event.data.as_str())
        .bind(at)
}

/// Appends events inside the caller's transaction, in one statement.
pub(crate) async fn append_events(
    conn: &mut AnyConnection,
    events: &[&StoredEvent],
) -> Result<(), StoreError> {
    if events.is_empty() {
        return Ok(());
    }
    // Borrowed, not formatted: this runs for every event. A UUID serializes
    // as its hyphenated text, as `to_string` writes it.
    let rows: Vec<(&Uuid, i64, &str, &str)> = events
        .iter()
        .map(|e| (&e.run_id, e.seq, e.kind.as_str(), e.data.as_str()))
        .collect();
    // UUIDs, strings and integers: serializing them cannot fail.
    let rows = serde_json::to_string(&rows).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let sql = match Backend::of(conn) {
        Backend::Sqlite => APPEND_SQLITE,
        Backend::Postgres => APPEND_POSTGRES,
    };
    query(sql)
        .bind(rows)
        .bind(now())
        .execute(&mut *conn)
        .await?;
    Ok(())
}

impl Store {
    /// The run's committed events after `after`, in order, at most `limit`.
    #[tracing::instrument(skip_all, fields(run_id = %run_id, after))]
    pub async fn events_after(
        &self,
        run_id: Uuid,
        after: i64,
        limit: u32,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let rows = query(
            "SELECT run_id, seq, type, data FROM run_events \
             WHERE run_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
        )
        .bind(run_id.to_string())
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&mut *self.acquire().await?)
        .await?;
        rows.iter()
            .map(|row| {
                let kind: String = row.try_get("type")?;
                let kind: EventKind = kind
                    .parse()
                    .map_err(|()| StoreError::Corrupt(format!("event type {kind:?}")))?;
                Ok(StoredEvent {
                    run_id: parse_id(row.try_get("run_id")?)?,
                    seq: row.try_get("seq")?,
                    kind,
                    data: row.try_get("data")?,
                })
            })
            .collect()
    }

    /// The `seq` of the run's last committed event (0 when it has none).
    pub async fn last_seq(&self, run_id: Uuid) -> Result<i64, StoreError> {
        let row = query("SELECT COALESCE(MAX(seq), 0) AS last FROM run_events WHERE run_id = $1")
            .bind(run_id.to_string())
            .fetch_one(&mut *self.acquire().await?)
            .await?;
        Ok(row.try_get("last")?)
    }

    /// Deletes the event logs of runs that ended before `before` (UTC,
    /// RFC 3339); the transcript in `messages` stays. Returns the rows removed.
    #[tracing::instrument(skip_all)]
    pub async fn prune_events(&self, before: &str) -> Result<u64, StoreError> {
        let _turn = self.write_turn(false).await;
        let mut conn = self.acquire().await?;
        let done = query(
            "DELETE FROM run_events WHERE run_id IN \
             (SELECT id FROM runs WHERE finished_at IS NOT NULL AND finished_at < $1)",
        )
        .bind(before)
        .execute(&mut *conn)
        .await?;
        conn.commit().await?;
        Ok(done.rows_affected())
    }
}

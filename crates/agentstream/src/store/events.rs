//! The run event log: every event a run emits, in `seq` order, as sent.

use sqlx::{AnyConnection, Row};
use uuid::Uuid;

use super::{
    Backend, EVENTS_CHANNEL, Query, Store, StoreError, notify::event_payloads, now, query,
};
use crate::events::{EventKind, StoredEvent};

/// Appends a batch in one statement, whatever its size: its events are one
/// JSON array of `[run_key, seq, type, data]` rows (`$1`), taken apart by
/// the database, all stored at `$2`. One cached statement and one hand-off
/// to SQLite's thread (or one round trip to PostgreSQL) per batch, where a
/// `VALUES` list took one per 64, 16, 4 or 1 rows. A run taken over as dead
/// may still try to write: its late event loses to the `done` already at
/// that `seq`. SQLite reads `ON` after `FROM json_each(…)` as a join's
/// unless a `WHERE` comes between (its documented upsert ambiguity).
const APPEND_SQLITE: &str = "INSERT INTO run_events (run_key, seq, type, data, created_at) \
     SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, $2 FROM json_each($1) WHERE true \
     ON CONFLICT (run_key, seq) DO NOTHING";

/// [`APPEND_SQLITE`] in PostgreSQL's words, which also tells the other
/// nodes which runs have new events: `$3` is [`EVENTS_CHANNEL`] and `$4` a
/// JSON array of the payloads of [`event_payloads`], sent by `pg_notify` in
/// the same round trip (delivered when the transaction commits). The batch
/// is read as `jsonb`: parsed once, where each `->>` on a `json` value
/// parses its row again (2.6 times the time for a batch of 400 rows).
const APPEND_POSTGRES: &str = "WITH appended AS (\
     INSERT INTO run_events (run_key, seq, type, data, created_at) \
     SELECT (e ->> 0)::bigint, (e ->> 1)::bigint, e ->> 2, e ->> 3, $2 \
     FROM jsonb_array_elements($1::jsonb) AS e \
     ON CONFLICT (run_key, seq) DO NOTHING) \
     SELECT pg_notify($3, payload) FROM json_array_elements_text($4::json) AS payload";

/// Stores a run's first event with the run, later in the same chain (see
/// [`super::dialect::chain`]); values bound by [`bind_event`]. On SQLite the
/// run is stored by then and is found by its ID (`$1`).
pub(super) const INSERT_FIRST_EVENT_SQLITE: &str = "INSERT INTO run_events (run_key, seq, type, data, created_at) \
     SELECT event_key, $2, $3, $4, $5 FROM runs WHERE id = $1 \
     ON CONFLICT (run_key, seq) DO NOTHING";

/// [`INSERT_FIRST_EVENT_SQLITE`] on PostgreSQL, whose `WITH` clauses cannot
/// see each other's rows: the key comes from the clause that stores the run
/// (`clause`, its name in the chain), which returns the run's `id` and
/// `event_key`.
pub(super) fn insert_first_event_postgres(clause: &str) -> String {
    format!(
        "INSERT INTO run_events (run_key, seq, type, data, created_at) \
         SELECT event_key, $2, $3, $4, $5 FROM {clause} WHERE id = $1 \
         ON CONFLICT (run_key, seq) DO NOTHING"
    )
}

/// The key of the run whose ID is `$1` in the event log.
macro_rules! run_key {
    () => {
        "(SELECT event_key FROM runs WHERE id = $1)"
    };
}

/// Binds the values of the first event's insert, stored at `at`.
pub(super) fn bind_event<'q>(query: Query<'q>, event: &'q StoredEvent, at: &'q str) -> Query<'q> {
    query
        .bind(event.run_id.to_string())
        .bind(event.seq)
        .bind(event.kind.as_str())
        .bind(event.data.as_str())
        .bind(at)
}

/// Appends events, each with its run's number in the log
/// ([`super::Run::event_key`]), inside the caller's transaction, in one
/// statement; on PostgreSQL the same statement notifies the other nodes.
pub(crate) async fn append_events(
    conn: &mut AnyConnection,
    events: &[(i64, &StoredEvent)],
) -> Result<(), StoreError> {
    if events.is_empty() {
        return Ok(());
    }
    // Borrowed, not copied: this runs for every event.
    let rows: Vec<(i64, i64, &str, &str)> = events
        .iter()
        .map(|(run_key, e)| (*run_key, e.seq, e.kind.as_str(), e.data.as_str()))
        .collect();
    // Strings and integers: serializing them cannot fail.
    let rows = serde_json::to_string(&rows).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let append = match Backend::of(conn) {
        Backend::Sqlite => query(APPEND_SQLITE).bind(rows).bind(now()),
        Backend::Postgres => {
            // Strings: serializing them cannot fail.
            let payloads = serde_json::to_string(&event_payloads(events))
                .map_err(|e| StoreError::Corrupt(e.to_string()))?;
            query(APPEND_POSTGRES)
                .bind(rows)
                .bind(now())
                .bind(EVENTS_CHANNEL)
                .bind(payloads)
        }
    };
    append.execute(&mut *conn).await?;
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
        let rows = query(concat!(
            "SELECT seq, type, data FROM run_events WHERE run_key = ",
            run_key!(),
            " AND seq > $2 ORDER BY seq LIMIT $3"
        ))
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
                    run_id,
                    seq: row.try_get("seq")?,
                    kind,
                    data: row.try_get("data")?,
                })
            })
            .collect()
    }

    /// The `seq` of the run's last committed event (0 when it has none).
    pub async fn last_seq(&self, run_id: Uuid) -> Result<i64, StoreError> {
        let row = query(concat!(
            "SELECT COALESCE(MAX(seq), 0) AS last FROM run_events WHERE run_key = ",
            run_key!()
        ))
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
            "DELETE FROM run_events WHERE run_key IN \
             (SELECT event_key FROM runs WHERE finished_at IS NOT NULL AND finished_at < $1)",
        )
        .bind(before)
        .execute(&mut *conn)
        .await?;
        conn.commit().await?;
        Ok(done.rows_affected())
    }
}

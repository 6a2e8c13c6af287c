//! The rows a run start stores: the run, and with it, when there are, a new
//! conversation, the user's message and the run's first event.

use std::borrow::Cow;

use sqlx::{AnyConnection, Row};

use super::{
    Backend, Conversation, Message, Run, StoreError,
    conversations::{INSERT_CONVERSATION, bind_conversation},
    dialect::{chain, chain_clause},
    events::{INSERT_FIRST_EVENT_SQLITE, bind_event, insert_first_event_postgres},
    messages::{INSERT_MESSAGE, bind_message},
    now, query,
    runs::{INSERT_RUN_POSTGRES, INSERT_RUN_SQLITE, bind_run},
};
use crate::events::StoredEvent;

/// What a run start stores, each row built already (IDs and times set).
#[derive(Debug, Clone, Copy)]
pub(crate) struct RunRows<'a> {
    /// A conversation the run starts, stored first.
    pub conversation: Option<&'a Conversation>,
    /// The run.
    pub run: &'a Run,
    /// The node that drives it, for a running run.
    pub owner_node: Option<&'a str>,
    /// The user's message (a retry has none of its own).
    pub message: Option<&'a Message>,
    /// The run's first event, for a run that starts now.
    pub started: Option<&'a StoredEvent>,
}

/// The user's queued and running runs, from `$1`.
macro_rules! users_runs {
    () => {
        "FROM runs WHERE user_id = $1 AND status IN ('queued', 'running')"
    };
}

/// What storing a run start found.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Stored {
    /// The user's queued and running runs, the new one included.
    pub users_runs: i64,
    /// The run's number in the event log ([`Run::event_key`]).
    pub event_key: i64,
    /// PostgreSQL's `max_connections`, read with the count (none on
    /// SQLite): for [`super::Store::begin_start`], through
    /// [`super::Store::remember_max_connections`].
    pub max_connections: Option<i64>,
}

/// Locks the user's row (`$1`: the user's ID) until the transaction ends.
/// A lock, not a dummy update: no new row version per run started.
const LOCK_USER: &str = "SELECT id FROM users WHERE id = $1 FOR NO KEY UPDATE";

/// A `BEGIN` that takes [`LOCK_USER`] in the same exchange: a simple query,
/// which binds no parameters, so the ID is written in (a UUID's text needs
/// no escaping).
pub(super) fn begin_locking_user(user_id: uuid::Uuid) -> String {
    format!(
        "BEGIN; {}",
        LOCK_USER.replace("$1", &format!("'{user_id}'"))
    )
}

/// Stores a run start's rows inside the caller's transaction, numbers the
/// run in the event log, and counts the user's queued and running runs, the
/// new one included, exactly enough to hold `limit` across nodes: a count
/// over it is exact.
///
/// The rows and the count are one query (see [`chain`]): on SQLite one
/// hand-off to the connection's thread while the write turn is held, on
/// PostgreSQL one round trip, instead of up to five. On SQLite the write
/// turn makes the count exact. On PostgreSQL concurrent starts cannot see
/// each other's runs before they commit; each is a transaction on a
/// connection of its own, so at most `max_connections` of them are in
/// flight. A count that stays within the limit even with that many more is
/// returned as it is; otherwise the user's row is locked, so that concurrent
/// starts on any node count one at a time, and the runs are counted again.
/// The lock lasts until the caller's transaction ends. A transaction that
/// locked the user's row before this (`user_locked`, see
/// [`super::Store::begin_start`]) counts exactly at once.
pub(crate) async fn insert_run_rows(
    conn: &mut AnyConnection,
    rows: RunRows<'_>,
    limit: i64,
    user_locked: bool,
) -> Result<Stored, StoreError> {
    let at = now();
    let backend = Backend::of(conn);
    let mut statements: Vec<Cow<'static, str>> = Vec::with_capacity(5);
    statements.extend(rows.conversation.map(|_| INSERT_CONVERSATION.into()));
    // On PostgreSQL, whose `WITH` clauses cannot see each other's rows, the
    // run's first event and the count take the run's key from the clause
    // that stores the run, named by its place in the chain.
    let run_clause = chain_clause(statements.len());
    match backend {
        Backend::Sqlite => {
            statements.push(INSERT_RUN_SQLITE.into());
            statements.extend(rows.message.map(|_| INSERT_MESSAGE.into()));
            statements.extend(rows.started.map(|_| INSERT_FIRST_EVENT_SQLITE.into()));
            statements.push(
                concat!(
                    "SELECT (SELECT COUNT(*) ",
                    users_runs!(),
                    ") AS n, value AS event_key FROM run_key_sequence"
                )
                .into(),
            );
        }
        Backend::Postgres => {
            statements.push(INSERT_RUN_POSTGRES.into());
            statements.extend(rows.message.map(|_| INSERT_MESSAGE.into()));
            statements.extend(
                rows.started
                    .map(|_| insert_first_event_postgres(&run_clause).into()),
            );
            // The `WITH` clauses' rows are not visible to the statement
            // that holds them: the new run is added.
            statements.push(
                format!(
                    "SELECT COUNT(*) + 1 AS n, \
                     current_setting('max_connections')::bigint AS in_flight, \
                     (SELECT event_key FROM {run_clause}) AS event_key {}",
                    users_runs!()
                )
                .into(),
            );
        }
    }
    let statements: Vec<&str> = statements.iter().map(AsRef::as_ref).collect();
    let sql = chain(backend, &statements);
    let mut chained = query(&sql);
    if let Some(conversation) = rows.conversation {
        chained = bind_conversation(chained, conversation, None);
    }
    chained = bind_run(chained, rows.run, rows.owner_node);
    if let Some(message) = rows.message {
        chained = bind_message(chained, message);
    }
    if let Some(started) = rows.started {
        chained = bind_event(chained, started, &at);
    }
    let user_id = rows.run.user_id.to_string();
    // On SQLite the inserts before the count return no row, and the Any
    // driver's `fetch_one` looks at the first statement only: the rows of
    // all are fetched, and the count's is the one row.
    let rows = chained.bind(user_id.as_str()).fetch_all(&mut *conn).await?;
    let row = rows.first().ok_or(sqlx::Error::RowNotFound)?;
    let mut stored = Stored {
        users_runs: row.try_get("n")?,
        event_key: row.try_get("event_key")?,
        max_connections: None,
    };
    if backend == Backend::Sqlite {
        return Ok(stored);
    }
    let in_flight: i64 = row.try_get("in_flight")?;
    stored.max_connections = Some(in_flight);
    if user_locked || stored.users_runs.saturating_add(in_flight) <= limit {
        return Ok(stored);
    }
    query(LOCK_USER)
        .bind(user_id.as_str())
        .execute(&mut *conn)
        .await?;
    let row = query(COUNT)
        .bind(user_id.as_str())
        .fetch_one(&mut *conn)
        .await?;
    stored.users_runs = row.try_get("n")?;
    Ok(stored)
}

/// Counts the user's queued and running runs (`$1`: the user's ID) as `n`.
const COUNT: &str = concat!("SELECT COUNT(*) AS n ", users_runs!());

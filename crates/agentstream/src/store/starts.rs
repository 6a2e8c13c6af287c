//! The rows a run start stores: the run, and with it, when there are, a new
//! conversation, the user's message and the run's first event.

use sqlx::{AnyConnection, Row};

use super::{
    Backend, Conversation, Message, Run, StoreError,
    conversations::{INSERT_CONVERSATION, bind_conversation},
    dialect::chain,
    events::{INSERT_EVENT, bind_event},
    messages::{INSERT_MESSAGE, bind_message},
    now, query,
    runs::{INSERT_RUN, bind_run},
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

/// Stores a run start's rows inside the caller's transaction and counts the
/// user's queued and running runs, the new one included, exactly enough to
/// hold `limit` across nodes: a count over it is exact.
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
/// The lock lasts until the caller's transaction ends.
pub(crate) async fn insert_run_rows(
    conn: &mut AnyConnection,
    rows: RunRows<'_>,
    limit: i64,
) -> Result<i64, StoreError> {
    let at = now();
    let backend = Backend::of(conn);
    let mut statements = Vec::with_capacity(5);
    statements.extend(rows.conversation.map(|_| INSERT_CONVERSATION));
    statements.push(INSERT_RUN);
    statements.extend(rows.message.map(|_| INSERT_MESSAGE));
    statements.extend(rows.started.map(|_| INSERT_EVENT));
    statements.push(match backend {
        Backend::Sqlite => COUNT,
        // The `WITH` clauses' rows are not visible to the statement that
        // holds them: the new run is added.
        Backend::Postgres => concat!(
            "SELECT COUNT(*) + 1 AS n, current_setting('max_connections')::bigint AS in_flight ",
            users_runs!()
        ),
    });
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
    let counted: i64 = row.try_get("n")?;
    if backend == Backend::Sqlite {
        return Ok(counted);
    }
    let in_flight: i64 = row.try_get("in_flight")?;
    if counted.saturating_add(in_flight) <= limit {
        return Ok(counted);
    }
    // A lock, not a dummy update: no new row version per run started.
    query("SELECT id FROM users WHERE id = $1 FOR NO KEY UPDATE")
        .bind(user_id.as_str())
        .execute(&mut *conn)
        .await?;
    let row = query(COUNT)
        .bind(user_id.as_str())
        .fetch_one(&mut *conn)
        .await?;
    Ok(row.try_get("n")?)
}

/// Counts the user's queued and running runs (`$1`: the user's ID) as `n`.
const COUNT: &str = concat!("SELECT COUNT(*) AS n ", users_runs!());

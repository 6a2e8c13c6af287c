//! What differs between SQLite and PostgreSQL at run time: which dialect a
//! connection speaks, the placeholders of multi-row statements, how a write
//! transaction begins, and SQLite's write turn.

use std::{
    borrow::Cow,
    fmt::Write,
    sync::Arc,
    time::{Duration, Instant},
};

use sqlx::AnyConnection;
use tokio::sync::{Mutex, OwnedMutexGuard, Semaphore};

use super::Store;

/// Which SQL dialect the store speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// SQLite, embedded: one file, WAL mode.
    Sqlite,
    /// PostgreSQL over the network.
    Postgres,
}

impl Backend {
    /// The dialect a connection speaks.
    pub(super) fn of(conn: &AnyConnection) -> Backend {
        if conn.backend_name() == "SQLite" {
            Backend::Sqlite
        } else {
            Backend::Postgres
        }
    }

    /// The dialect a database URL names, if it names one we speak.
    pub fn from_url(url: &str) -> Option<Backend> {
        if url.starts_with("sqlite:") {
            Some(Backend::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Some(Backend::Postgres)
        } else {
            None
        }
    }
}

/// How many transactions may wait at SQLite's write turn ahead of the event
/// log: more make its batches bigger (less work per event), fewer make its
/// commits wait less.
const WRITERS_AHEAD_OF_EVENTS: usize = 16;

/// SQLite's write turn (see [`Store::write_turn`]).
#[derive(Debug)]
pub(super) struct WriteTurn {
    /// Where transactions other than the event log's wait for the turn.
    gate: Semaphore,
    /// Held by the write transaction under way.
    turn: Arc<Mutex<()>>,
}

impl Default for WriteTurn {
    fn default() -> WriteTurn {
        WriteTurn {
            gate: Semaphore::new(WRITERS_AHEAD_OF_EVENTS),
            turn: Arc::default(),
        }
    }
}

impl Store {
    /// How a write transaction begins: on SQLite taking the write lock up
    /// front; on PostgreSQL, given a `statement_timeout`, with it set for
    /// the transaction in the same exchange (sqlx sends a custom `BEGIN` as
    /// one simple query, so `SET LOCAL` costs no round trip of its own).
    pub(super) fn begin_statement(
        &self,
        statement_timeout: Option<Duration>,
    ) -> Option<Cow<'static, str>> {
        match (self.backend, statement_timeout) {
            (Backend::Sqlite, _) => Some(Cow::Borrowed("BEGIN IMMEDIATE")),
            (Backend::Postgres, Some(timeout)) => Some(Cow::Owned(postgres_begin(timeout, false))),
            (Backend::Postgres, None) => None,
        }
    }

    /// SQLite lets one transaction write at a time, and one that finds the
    /// file locked sleeps and polls (`busy_timeout`), from 1 ms up to 100 ms
    /// a time. This process is the file's only writer (the lock file sees to
    /// it), so its writes take turns here instead (transactions, and the few
    /// single statements that write outside one), in order,
    /// each woken the moment the one before it ends. Other transactions
    /// queue at a gate first, so at most one of them waits at the turn
    /// itself, and the event log (`first`) waits behind that one only.
    /// PostgreSQL locks rows.
    pub(super) async fn write_turn(&self, first: bool) -> Option<Turn> {
        if self.backend != Backend::Sqlite {
            return None;
        }
        let asked = Instant::now();
        let guard = if first {
            self.write_turn.turn.clone().lock_owned().await
        } else {
            let _gate = self.write_turn.gate.acquire().await;
            self.write_turn.turn.clone().lock_owned().await
        };
        let taken = Instant::now();
        let holder = if first { "event_log" } else { "transaction" };
        crate::telemetry::metrics::write_turn("wait", holder, taken - asked);
        Some(Turn {
            _guard: guard,
            taken,
            holder,
        })
    }
}

/// A PostgreSQL `BEGIN` (`BEGIN READ ONLY` if `read_only`) that sets the
/// transaction's `statement_timeout` in the same exchange: sqlx sends a
/// custom `BEGIN` as one simple query.
pub(crate) fn postgres_begin(statement_timeout: Duration, read_only: bool) -> String {
    format!(
        "BEGIN{}; SET LOCAL statement_timeout = {}",
        if read_only { " READ ONLY" } else { "" },
        statement_timeout.as_millis()
    )
}

/// SQLite's write turn, held; how long it was held is recorded when it is
/// dropped.
#[derive(Debug)]
pub(super) struct Turn {
    _guard: OwnedMutexGuard<()>,
    taken: Instant,
    /// The metric's `holder` label.
    holder: &'static str,
}

impl Drop for Turn {
    fn drop(&mut self) {
        crate::telemetry::metrics::write_turn("held", self.holder, self.taken.elapsed());
    }
}

/// Writes that need no result from each other, as one query, each one's
/// `$N` placeholders renumbered to follow the statements before it, so that
/// the query's values are the statements' values in order: one round trip
/// instead of one per statement. On SQLite the statements are
/// `;`-separated: sqlx's driver runs every statement of a query in one
/// hand-off to the connection's thread, binding `$N` to the query's Nth
/// value. PostgreSQL prepares one statement at a time, so all but the last
/// become data-modifying `WITH` clauses of the last; their foreign-key
/// checks run at the end of the statement, when every row is in.
pub(super) fn chain(backend: Backend, statements: &[&str]) -> String {
    let mut offset = 0;
    let renumbered: Vec<String> = statements
        .iter()
        .map(|sql| {
            let (sql, highest) = renumber(sql, offset);
            offset += highest;
            sql
        })
        .collect();
    match (backend, renumbered.split_last()) {
        (Backend::Postgres, Some((last, clauses))) if !clauses.is_empty() => {
            let clauses: Vec<String> = clauses
                .iter()
                .enumerate()
                .map(|(i, clause)| format!("{} AS ({clause})", chain_clause(i)))
                .collect();
            format!("WITH {} {last}", clauses.join(", "))
        }
        _ => renumbered.join(";\n"),
    }
}

/// The name of the `index`th statement's `WITH` clause in a PostgreSQL
/// [`chain`] (not the last statement's: that one is the query itself), for
/// a later statement that reads the rows it returns.
pub(super) fn chain_clause(index: usize) -> String {
    format!("s{index}")
}

/// `sql` with each `$N` made `$(N + offset)`, and the highest `N` it held.
fn renumber(sql: &str, offset: usize) -> (String, usize) {
    let mut out = String::with_capacity(sql.len());
    let mut highest = 0;
    let mut rest = sql;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..=at]);
        rest = &rest[at + 1..];
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if let Ok(n) = rest[..digits].parse::<usize>() {
            highest = highest.max(n);
            let _ = write!(out, "{}", n + offset);
            rest = &rest[digits..];
        }
    }
    out.push_str(rest);
    (out, highest)
}

/// One multi-row statement per size, so that each is a prepared statement
/// the connection caches and a batch of any length is cut into a few of them.
/// Only placeholders are generated; values are always bound.
#[derive(Debug)]
pub(super) struct MultiRow {
    /// With `$1, $2…`, for PostgreSQL.
    pub(super) numbered: Vec<(usize, String)>,
    /// With `?`, for SQLite, which finds a named placeholder by walking a
    /// list: binding a chunk of `$N` costs the square of its size.
    pub(super) anonymous: Vec<(usize, String)>,
}

impl MultiRow {
    /// `{head} (…), (…) {tail}` with `columns` placeholders a row, for each
    /// of `sizes` rows (largest first, ending with 1).
    pub(super) fn new(sizes: &[usize], head: &str, columns: usize, tail: &str) -> MultiRow {
        let build = |numbered: bool| {
            sizes
                .iter()
                .map(|&rows| {
                    let mut sql = format!("{head} ");
                    for row in 0..rows {
                        sql.push_str(if row == 0 { "(" } else { ", (" });
                        for column in 0..columns {
                            let sep = if column == 0 { "" } else { ", " };
                            if numbered {
                                let _ = write!(sql, "{sep}${}", row * columns + column + 1);
                            } else {
                                let _ = write!(sql, "{sep}?");
                            }
                        }
                        sql.push(')');
                    }
                    let _ = write!(sql, " {tail}");
                    (rows, sql)
                })
                .collect()
        };
        MultiRow {
            numbered: build(true),
            anonymous: build(false),
        }
    }

    /// The statements for the connection's dialect.
    pub(super) fn for_conn(&self, conn: &AnyConnection) -> &[(usize, String)] {
        match Backend::of(conn) {
            Backend::Sqlite => &self.anonymous,
            Backend::Postgres => &self.numbered,
        }
    }

    /// Cuts `items` into chunks, each with its statement.
    pub(super) fn chunks<'a, T>(
        statements: &'a [(usize, String)],
        items: &'a [T],
    ) -> impl Iterator<Item = (&'a str, &'a [T])> {
        let mut rest = items;
        std::iter::from_fn(move || {
            let (rows, sql) = statements.iter().find(|(rows, _)| *rows <= rest.len())?;
            let (chunk, tail) = rest.split_at(*rows);
            rest = tail;
            Some((sql.as_str(), chunk))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_row_statements_number_every_placeholder() {
        let rows = MultiRow::new(
            &[4, 1],
            "INSERT INTO t (a, b) VALUES",
            2,
            "ON CONFLICT DO NOTHING",
        );
        let (size, sql) = &rows.numbered[0];
        assert_eq!(*size, 4);
        assert!(sql.ends_with("($7, $8) ON CONFLICT DO NOTHING"), "{sql}");
        assert_eq!(sql.matches('$').count(), 8);
        let (size, sql) = &rows.anonymous[1];
        assert_eq!(*size, 1);
        assert_eq!(
            sql,
            "INSERT INTO t (a, b) VALUES (?, ?) ON CONFLICT DO NOTHING"
        );
    }

    #[test]
    fn chained_statements_number_their_values_in_order() {
        let statements = [
            "INSERT INTO a VALUES ($1, $2, $1)",
            "INSERT INTO b VALUES ('$', $1)",
            "DELETE FROM c WHERE x = $3 OR y = $1",
        ];
        assert_eq!(
            chain(Backend::Sqlite, &statements),
            "INSERT INTO a VALUES ($1, $2, $1);\nINSERT INTO b VALUES ('$', $3);\n\
             DELETE FROM c WHERE x = $6 OR y = $4"
        );
        assert_eq!(
            chain(Backend::Postgres, &statements),
            "WITH s0 AS (INSERT INTO a VALUES ($1, $2, $1)), \
             s1 AS (INSERT INTO b VALUES ('$', $3)) \
             DELETE FROM c WHERE x = $6 OR y = $4"
        );
        assert_eq!(
            chain(Backend::Postgres, &statements[..2]),
            "WITH s0 AS (INSERT INTO a VALUES ($1, $2, $1)) INSERT INTO b VALUES ('$', $3)"
        );
        for backend in [Backend::Sqlite, Backend::Postgres] {
            assert_eq!(chain(backend, &["SELECT $1"]), "SELECT $1");
        }
    }
}

//! SQL tools on a SQLite tool database, through SQLite's own sqlx driver
//! rather than the Any one: rows are typed by their columns' declared types
//! (Any refuses a column declared `BOOLEAN`, `DATE`, `TIME` or `DATETIME`),
//! and the timeout stops the statement itself (a progress handler), so a
//! timed-out call leaves no statement running on the connection.

use std::time::{Duration, Instant};

use futures_util::TryStreamExt;
use sqlx::{
    Column, Executor, Row, SqliteConnection, Statement, TypeInfo, ValueRef, sqlite::SqliteRow,
};

use super::{
    SqlTool,
    output::{self, Output},
    values::{self, Bound},
};

/// SQLite virtual-machine steps between two looks at the clock: about a
/// tenth of a millisecond of work.
const STEPS_PER_CHECK: i32 = 1_000;

/// Extra time past the timeout before the call stops waiting: a statement
/// waiting for another connection's lock runs no step, so no progress
/// handler sees its deadline pass.
const LOCK_GRACE: Duration = Duration::from_secs(1);

/// SQLite's result code for a statement its progress handler stopped.
const SQLITE_INTERRUPT: &str = "9";

/// Prepares `sql`; true when it returns rows.
pub(super) async fn prepare(conn: &mut SqliteConnection, sql: &str) -> Result<bool, sqlx::Error> {
    let statement = conn.prepare(sql).await?;
    Ok(!statement.columns().is_empty())
}

/// Runs the statement on `conn`, inside the caller's transaction, stopped
/// at the tool's timeout.
pub(super) async fn run(
    tool: &SqlTool,
    conn: &mut SqliteConnection,
    values: Vec<Bound>,
) -> Result<Output, sqlx::Error> {
    let deadline = Instant::now() + tool.timeout;
    conn.lock_handle()
        .await?
        .set_progress_handler(STEPS_PER_CHECK, move || Instant::now() < deadline);
    let result = tokio::time::timeout(tool.timeout + LOCK_GRACE, statement(tool, conn, &values))
        .await
        // The connection, left inside its transaction with this handler, is
        // closed by the pool rather than reused.
        .map_err(|_| sqlx::Error::Protocol(output::abandoned(tool)))?;
    // Before the commit, which must not be stopped.
    conn.lock_handle().await?.remove_progress_handler();
    match result {
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some(SQLITE_INTERRUPT) => {
            Err(sqlx::Error::Protocol(output::timed_out(tool)))
        }
        other => other,
    }
}

async fn statement(
    tool: &SqlTool,
    conn: &mut SqliteConnection,
    values: &[Bound],
) -> Result<Output, sqlx::Error> {
    let query = values::bind(sqlx::query::<sqlx::Sqlite>(&tool.sql), values);
    if !tool.returns_rows {
        let done = query.execute(&mut *conn).await?;
        return Ok(output::affected(tool, done.rows_affected()));
    }
    let mut rows = Vec::new();
    let mut more = false;
    let mut stream = query.fetch(&mut *conn);
    while let Some(row) = stream.try_next().await? {
        if rows.len() == tool.max_rows {
            more = true;
            break;
        }
        rows.push(json_row(&row)?);
    }
    Ok(output::shaped(tool, rows, more))
}

/// A row as a JSON object: integers and reals as numbers, 0 and 1 in a
/// column declared `BOOLEAN` as `false` and `true`, text as strings (dates
/// too: SQLite stores them as text), NULL as null, a blob as
/// `{"blob_bytes": N}`.
fn json_row(row: &SqliteRow) -> Result<serde_json::Value, sqlx::Error> {
    let mut object = serde_json::Map::new();
    for column in row.columns() {
        let i = column.ordinal();
        let raw = row.try_get_raw(i)?;
        let value = if raw.is_null() {
            serde_json::Value::Null
        } else {
            let declared_bool = column.type_info().name() == "BOOLEAN";
            // The value's own storage class, whatever the column declares.
            match raw.type_info().name() {
                "INTEGER" => {
                    let n: i64 = row.try_get_unchecked(i)?;
                    if declared_bool && (n == 0 || n == 1) {
                        serde_json::Value::Bool(n == 1)
                    } else {
                        n.into()
                    }
                }
                "REAL" => {
                    let x: f64 = row.try_get_unchecked(i)?;
                    serde_json::Number::from_f64(x).map_or(serde_json::Value::Null, Into::into)
                }
                "BLOB" => {
                    let blob: Vec<u8> = row.try_get_unchecked(i)?;
                    serde_json::json!({ "blob_bytes": blob.len() })
                }
                _ => serde_json::Value::String(row.try_get_unchecked(i)?),
            }
        };
        object.insert(column.name().to_owned(), value);
    }
    Ok(serde_json::Value::Object(object))
}

//! Preparing a SQL tool's statement at start-up, and running one call: the
//! transaction (read-only for a `read_only` tool), the timeout, and rows
//! turned into JSON. Calls on PostgreSQL, and on agentstream's own database
//! inside the call's recording transaction, go through sqlx's Any driver;
//! calls on a SQLite tool database through SQLite's own (`sqlite.rs`).

use std::time::Duration;

use futures_util::TryStreamExt;
use sqlx::{
    AnyConnection, ConnectOptions, Connection, Executor, PgConnection, Postgres, Row, Statement,
    Transaction, Type,
    postgres::{PgConnectOptions, PgTypeInfo, types::Oid},
};

use super::{
    Binding, ParamType, SqlTool, Target,
    database::Pools,
    output::{self, Output},
    sqlite,
    values::{self, Bound},
};
use crate::{
    store::{self, Backend, StoreError},
    tools::{ToolError, ToolInput},
};

/// Extra time a PostgreSQL statement gets past its own timeout (enforced by
/// the server) before the call stops waiting for the answer.
const NETWORK_GRACE: Duration = Duration::from_secs(1);

/// On PostgreSQL a statement that returns rows is wrapped so the server
/// turns each row into JSON: every column type keeps its JSON form (numbers,
/// booleans, NULL, dates as ISO 8601 text, `json` as JSON).
fn wrapped(sql: &str, limit: usize) -> String {
    format!(
        "WITH agentstream_rows AS ({sql}) \
         SELECT row_to_json(agentstream_rows)::text AS agentstream_row \
         FROM agentstream_rows LIMIT {limit}"
    )
}

/// Prepares the statement on its database; true when it returns rows.
pub(super) async fn prepare(tool: &SqlTool) -> Result<bool, String> {
    let database = tool.database();
    let unreachable = |e: sqlx::Error| format!("cannot reach database {:?}: {e}", database.name);
    let refused = |e: sqlx::Error| {
        let hint = match database.backend {
            Backend::Postgres => {
                " (arguments are bound as text, bigint, double precision or boolean: \
                 cast one where the statement needs another type, as in `:due::date`)"
            }
            Backend::Sqlite => "",
        };
        format!(
            "the statement does not prepare on database {:?}: {}{hint}",
            database.name,
            named(&message(&e), &tool.placeholders)
        )
    };
    match &database.pools {
        Pools::Sqlite { write, .. } => {
            let mut conn = write.acquire().await.map_err(unreachable)?;
            sqlite::prepare(&mut conn, &tool.sql).await.map_err(refused)
        }
        Pools::Postgres(pool) => {
            // sqlx's Any driver prepares without parameter types, then
            // refuses a parameter PostgreSQL typed as one Any lacks (a
            // `numeric` column's); PostgreSQL's own driver prepares with the
            // types each call binds, so a mismatch (a text argument for a
            // `date` column) is found here, not at the first call.
            let options = PgConnectOptions::from_url(&pool.connect_options().database_url)
                .map_err(unreachable)?
                .log_statements(tracing::log::LevelFilter::Trace);
            let mut conn = PgConnection::connect_with(&options)
                .await
                .map_err(unreachable)?;
            let types: Vec<PgTypeInfo> = tool.bindings.iter().map(pg_type).collect();
            // In one transaction, so a pooler in transaction mode keeps the
            // check on one server connection; the statements are dropped at
            // its end (`DEALLOCATE ALL`: a prepared statement outlives a
            // rollback, and the next client of that server connection would
            // find its name taken).
            let mut tx = conn.begin().await.map_err(unreachable)?;
            let prepared = async {
                // A savepoint: the wrapped form failing must not abort the
                // transaction the plain form is prepared in.
                let mut attempt = tx.begin().await.map_err(unreachable)?;
                if attempt
                    .prepare_with(&wrapped(&tool.sql, 1), &types)
                    .await
                    .is_ok()
                {
                    return Ok(true);
                }
                attempt.rollback().await.map_err(unreachable)?;
                let statement = tx.prepare_with(&tool.sql, &types).await.map_err(refused)?;
                if statement.columns().is_empty() {
                    Ok(false)
                } else {
                    Err(format!(
                        "the statement returns rows but cannot be read as a subquery \
                         (WITH … AS (statement) SELECT …): {}",
                        tool.sql
                    ))
                }
            }
            .await;
            let _ = sqlx::raw_sql("DEALLOCATE ALL").execute(&mut *tx).await;
            let _ = tx.rollback().await;
            // Opened for this check alone; the server ends the session
            // whether or not the goodbye arrives.
            let _ = conn.close().await;
            prepared
        }
    }
}

/// The PostgreSQL type a call binds for `binding` (see `values.rs`).
fn pg_type(binding: &Binding) -> PgTypeInfo {
    match binding {
        Binding::Argument(_, ParamType::Integer) => <i64 as Type<Postgres>>::type_info(),
        Binding::Argument(_, ParamType::Number) => <f64 as Type<Postgres>>::type_info(),
        Binding::Argument(_, ParamType::Boolean) => <bool as Type<Postgres>>::type_info(),
        // A claim is bound as its JSON type, which only the token tells:
        // PostgreSQL infers one here.
        Binding::Claim(_) => PgTypeInfo::with_oid(Oid(0)),
        Binding::Argument(_, ParamType::String)
        | Binding::Subject
        | Binding::UserId
        | Binding::ConversationId
        | Binding::RunId
        | Binding::Now => <String as Type<Postgres>>::type_info(),
    }
}

/// `message` with the statement's positional parameters (`$2`, which the
/// database names) shown as the placeholders the configuration wrote
/// (`:status`).
fn named(message: &str, placeholders: &[String]) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let digits = rest[at + 1..]
            .bytes()
            .take_while(u8::is_ascii_digit)
            .count();
        let name = rest[at + 1..at + 1 + digits]
            .parse::<usize>()
            .ok()
            .and_then(|n| placeholders.get(n.checked_sub(1)?));
        match name {
            Some(name) => {
                out.push(':');
                out.push_str(name);
            }
            None => out.push_str(&rest[at..at + 1 + digits]),
        }
        rest = &rest[at + 1 + digits..];
    }
    out.push_str(rest);
    out
}

/// Runs one call.
pub(super) async fn call(
    tool: &SqlTool,
    input: ToolInput<'_>,
    conn: Option<&mut AnyConnection>,
) -> Result<serde_json::Value, ToolError> {
    let values = values::values(tool, &input)?;
    let database = tool.database();
    let output = match (conn, &tool.target, &database.pools) {
        // agentstream's own database, in the transaction that records the call.
        (Some(conn), Target::Own(_), _) => run(tool, conn, values)
            .await
            .map_err(|e| own_error(tool, e))?,
        (_, _, Pools::Postgres(pool)) => {
            // Read-only and the statement's timeout with the `BEGIN`.
            let mut tx = pool
                .begin_with(store::postgres_begin(tool.timeout, tool.read_only))
                .await
                .map_err(|e| unreachable(tool, &e))?;
            let output = run(tool, &mut tx, values)
                .await
                .map_err(|e| app_error(tool, e))?;
            end(tool, tx, &output).await?;
            output
        }
        (_, _, Pools::Sqlite { write, read }) => {
            let pool = if tool.read_only { read } else { write };
            let mut tx = pool.begin().await.map_err(|e| unreachable(tool, &e))?;
            let output = sqlite::run(tool, &mut tx, values)
                .await
                .map_err(|e| app_error(tool, e))?;
            end(tool, tx, &output).await?;
            output
        }
    };
    output.map_err(ToolError::Invalid)
}

/// Ends a call's transaction on a tool database: a write that gave its
/// output commits; a read, and a call whose result is a tool error, roll
/// back (the model is told the call failed, so nothing of it is kept).
async fn end<DB: sqlx::Database>(
    tool: &SqlTool,
    tx: Transaction<'_, DB>,
    output: &Output,
) -> Result<(), ToolError> {
    if output.is_ok() && !tool.read_only {
        tx.commit().await.map_err(|e| statement_error(tool, &e))
    } else {
        tx.rollback().await.map_err(|e| unreachable(tool, &e))
    }
}

/// Runs the statement on an Any connection (PostgreSQL, or agentstream's
/// own SQLite database), inside the caller's transaction, within the
/// tool's timeout. On PostgreSQL the caller began that transaction with the
/// tool's `statement_timeout`, which the server enforces.
async fn run(
    tool: &SqlTool,
    conn: &mut AnyConnection,
    values: Vec<Bound>,
) -> Result<Output, sqlx::Error> {
    let backend = tool.database().backend;
    let wait = match backend {
        Backend::Postgres => tool.timeout + NETWORK_GRACE,
        // The Any driver cannot stop a SQLite statement: the call stops
        // waiting, and the recording transaction is rolled back once the
        // statement ends.
        Backend::Sqlite => tool.timeout,
    };
    let work = async {
        if !tool.returns_rows {
            let done = values::bind(store::query(&tool.sql), &values)
                .execute(&mut *conn)
                .await?;
            return Ok(output::affected(tool, done.rows_affected()));
        }
        let (rows, more) = match backend {
            Backend::Postgres => {
                let sql = wrapped(&tool.sql, tool.max_rows + 1);
                let texts = values::bind(store::query(&sql), &values)
                    .fetch_all(&mut *conn)
                    .await?;
                let more = texts.len() > tool.max_rows;
                let rows = texts
                    .iter()
                    .take(tool.max_rows)
                    .map(|row| {
                        let text: String = row.try_get(0)?;
                        Ok(serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)))
                    })
                    .collect::<Result<Vec<_>, sqlx::Error>>()?;
                (rows, more)
            }
            // agentstream's own tables declare only TEXT and INTEGER
            // columns, which the Any driver reads.
            Backend::Sqlite => {
                let mut rows = Vec::new();
                let mut more = false;
                let mut stream = values::bind(store::query(&tool.sql), &values).fetch(&mut *conn);
                while let Some(row) = stream.try_next().await? {
                    if rows.len() == tool.max_rows {
                        more = true;
                        break;
                    }
                    rows.push(any_sqlite_row(&row)?);
                }
                (rows, more)
            }
        };
        Ok(output::shaped(tool, rows, more))
    };
    match tokio::time::timeout(wait, work).await {
        Ok(result) => result,
        Err(_) => Err(sqlx::Error::Protocol(output::abandoned(tool))),
    }
}

/// A row of agentstream's own SQLite database as a JSON object: integers
/// and reals as numbers, text as strings, NULL as null.
fn any_sqlite_row(row: &sqlx::any::AnyRow) -> Result<serde_json::Value, sqlx::Error> {
    use sqlx::{Column, ValueRef, any::AnyTypeInfoKind};
    let mut object = serde_json::Map::new();
    for column in row.columns() {
        let i = column.ordinal();
        let raw = row.try_get_raw(i)?;
        let value = if raw.is_null() {
            serde_json::Value::Null
        } else {
            match raw.type_info().kind() {
                AnyTypeInfoKind::SmallInt | AnyTypeInfoKind::Integer | AnyTypeInfoKind::BigInt => {
                    row.try_get::<i64, _>(i)?.into()
                }
                AnyTypeInfoKind::Real | AnyTypeInfoKind::Double => {
                    serde_json::Number::from_f64(row.try_get(i)?)
                        .map_or(serde_json::Value::Null, Into::into)
                }
                AnyTypeInfoKind::Bool => serde_json::Value::Bool(row.try_get(i)?),
                AnyTypeInfoKind::Blob => {
                    let blob: Vec<u8> = row.try_get(i)?;
                    serde_json::json!({ "blob_bytes": blob.len() })
                }
                AnyTypeInfoKind::Text | AnyTypeInfoKind::Null => {
                    serde_json::Value::String(row.try_get(i)?)
                }
            }
        };
        object.insert(column.name().to_owned(), value);
    }
    Ok(serde_json::Value::Object(object))
}

/// The database's own message, without sqlx's prefix.
fn message(error: &sqlx::Error) -> String {
    match error {
        sqlx::Error::Database(e) => e.message().to_owned(),
        other => other.to_string(),
    }
}

fn statement_error(tool: &SqlTool, error: &sqlx::Error) -> ToolError {
    ToolError::Invalid(match error {
        // PostgreSQL's query_canceled.
        sqlx::Error::Database(e) if e.code().as_deref() == Some("57014") => output::timed_out(tool),
        // A timeout seen here: the message says which.
        sqlx::Error::Protocol(message) => message.clone(),
        _ => format!("the statement failed: {}", message(error)),
    })
}

fn unreachable(tool: &SqlTool, error: &sqlx::Error) -> ToolError {
    ToolError::Invalid(format!(
        "the database {:?} cannot be reached now: {error}",
        tool.database().name
    ))
}

/// On an application database (or a read of agentstream's), every failure is
/// the tool's: the model reads it and the run goes on.
fn app_error(tool: &SqlTool, error: sqlx::Error) -> ToolError {
    match error {
        sqlx::Error::Database(_) | sqlx::Error::Protocol(_) => statement_error(tool, &error),
        other => unreachable(tool, &other),
    }
}

/// On agentstream's own database inside the recording transaction, the
/// statement's failure is the tool's; losing the database fails the run.
fn own_error(tool: &SqlTool, error: sqlx::Error) -> ToolError {
    match error {
        sqlx::Error::Database(_) | sqlx::Error::Protocol(_) => statement_error(tool, &error),
        other => ToolError::Store(StoreError::from(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_in_messages_become_names() {
        let names = ["caller.subject".to_owned(), "status".to_owned()];
        assert_eq!(
            named("could not determine data type of parameter $2", &names),
            "could not determine data type of parameter :status"
        );
        assert_eq!(
            named("$1 and $9 and $ and $$", &names),
            ":caller.subject and $9 and $ and $$"
        );
    }
}

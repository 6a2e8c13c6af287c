//! Preparing a SQL tool's statement at start-up, and running one call:
//! binding the values, the timeout, the read-only transaction, and rows
//! turned into JSON.

use std::time::Duration;

use futures_util::TryStreamExt;
use sqlx::{
    Any, AnyConnection, Column, Executor, Row, Statement, ValueRef,
    any::{AnyArguments, AnyRow, AnyTypeInfoKind},
    query::Query,
};

use super::{Binding, ResultShape, SqlTool, Target};
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
    let mut conn = database
        .pool
        .acquire()
        .await
        .map_err(|e| format!("cannot reach database {:?}: {e}", database.name))?;
    let refused = |e: sqlx::Error| {
        let hint = match database.backend {
            Backend::Postgres => {
                " (where PostgreSQL cannot infer a parameter's type, cast it: `:due::date`)"
            }
            Backend::Sqlite => "",
        };
        format!(
            "the statement does not prepare on database {:?}: {}{hint}",
            database.name,
            message(&e)
        )
    };
    match database.backend {
        Backend::Sqlite => {
            let statement = conn.prepare(&tool.sql).await.map_err(refused)?;
            Ok(!statement.columns().is_empty())
        }
        Backend::Postgres => {
            if conn.prepare(&wrapped(&tool.sql, 1)).await.is_ok() {
                return Ok(true);
            }
            let statement = conn.prepare(&tool.sql).await.map_err(refused)?;
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
    }
}

/// Runs one call.
pub(super) async fn call(
    tool: &SqlTool,
    input: ToolInput<'_>,
    conn: Option<&mut AnyConnection>,
) -> Result<serde_json::Value, ToolError> {
    let values = values(tool, &input)?;
    let database = tool.database();
    match (conn, &tool.target) {
        // agentstream's own database, in the transaction that records the call.
        (Some(conn), Target::Own(_)) => run(tool, conn, values)
            .await
            .map_err(|e| own_error(tool, e)),
        (_, _) if tool.read_only => {
            let mut tx = database
                .read_pool
                .begin()
                .await
                .map_err(|e| unreachable(tool, &e))?;
            if database.backend == Backend::Postgres {
                sqlx::query("SET TRANSACTION READ ONLY")
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| statement_error(tool, &e))?;
            }
            let output = run(tool, &mut tx, values)
                .await
                .map_err(|e| app_error(tool, e))?;
            // Nothing to keep: a read ends with a rollback.
            tx.rollback().await.map_err(|e| unreachable(tool, &e))?;
            Ok(output)
        }
        (_, _) => {
            let mut tx = database
                .pool
                .begin()
                .await
                .map_err(|e| unreachable(tool, &e))?;
            let output = run(tool, &mut tx, values)
                .await
                .map_err(|e| app_error(tool, e))?;
            tx.commit().await.map_err(|e| statement_error(tool, &e))?;
            Ok(output)
        }
    }
}

/// A value bound to one positional parameter.
#[derive(Debug, Clone)]
enum Bound {
    Text(Option<String>),
    Integer(Option<i64>),
    Number(Option<f64>),
    Boolean(Option<bool>),
}

/// The values of the statement's placeholders, in order.
fn values(tool: &SqlTool, input: &ToolInput<'_>) -> Result<Vec<Bound>, ToolError> {
    let ctx = input.ctx;
    tool.bindings
        .iter()
        .map(|binding| {
            Ok(match binding {
                Binding::Subject => Bound::Text(Some(ctx.caller.subject.clone())),
                Binding::UserId => Bound::Text(Some(ctx.user_id.to_string())),
                Binding::ConversationId => Bound::Text(Some(ctx.conversation_id.to_string())),
                Binding::RunId => Bound::Text(Some(ctx.run_id.to_string())),
                Binding::Now => Bound::Text(Some(store::now())),
                Binding::Claim(name) => {
                    let claim = ctx
                        .caller
                        .claims
                        .as_ref()
                        .and_then(|claims| claims.get(name))
                        .filter(|value| !value.is_null())
                        .ok_or_else(|| {
                            ToolError::Invalid(format!(
                                "the signed-in caller has no `{name}` claim, which this tool needs"
                            ))
                        })?;
                    json_bound(claim)
                }
                Binding::Argument(name, kind) => {
                    let value = input
                        .arguments
                        .get(name)
                        .unwrap_or(&serde_json::Value::Null);
                    typed(value, *kind)
                }
            })
        })
        .collect()
}

/// A claim's value: its own JSON type, objects and arrays as JSON text.
fn json_bound(value: &serde_json::Value) -> Bound {
    match value {
        serde_json::Value::Bool(b) => Bound::Boolean(Some(*b)),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => Bound::Integer(Some(i)),
            None => Bound::Number(n.as_f64()),
        },
        serde_json::Value::String(s) => Bound::Text(Some(s.clone())),
        serde_json::Value::Null => Bound::Text(None),
        other => Bound::Text(Some(other.to_string())),
    }
}

/// An argument as its declared type (already checked against it); absent
/// is NULL of that type.
fn typed(value: &serde_json::Value, kind: super::ParamType) -> Bound {
    use super::ParamType;
    match kind {
        ParamType::String => Bound::Text(value.as_str().map(str::to_owned)),
        ParamType::Integer => Bound::Integer(value.as_i64()),
        ParamType::Number => Bound::Number(value.as_f64()),
        ParamType::Boolean => Bound::Boolean(value.as_bool()),
    }
}

fn bind<'q>(
    mut query: Query<'q, Any, AnyArguments<'q>>,
    values: &[Bound],
) -> Query<'q, Any, AnyArguments<'q>> {
    for value in values {
        query = match value.clone() {
            Bound::Text(v) => query.bind(v),
            Bound::Integer(v) => query.bind(v),
            Bound::Number(v) => query.bind(v),
            Bound::Boolean(v) => query.bind(v),
        };
    }
    query
}

/// Runs the statement on `conn`, inside the caller's transaction, within
/// the tool's timeout.
async fn run(
    tool: &SqlTool,
    conn: &mut AnyConnection,
    values: Vec<Bound>,
) -> Result<serde_json::Value, sqlx::Error> {
    let backend = tool.database().backend;
    let wait = match backend {
        Backend::Postgres => {
            // The server's own timeout, for this transaction only.
            store::query("SELECT set_config('statement_timeout', $1, true)")
                .bind(tool.timeout.as_millis().to_string())
                .execute(&mut *conn)
                .await?;
            tool.timeout + NETWORK_GRACE
        }
        // SQLite cannot stop a statement from outside its thread: the call
        // stops waiting, and the connection, still inside its transaction,
        // is closed rather than reused once the statement ends.
        Backend::Sqlite => tool.timeout,
    };
    let work = async {
        if !tool.returns_rows {
            let done = bind(store::query(&tool.sql), &values)
                .execute(&mut *conn)
                .await?;
            return Ok(affected(tool, done.rows_affected()));
        }
        let (rows, more) = match backend {
            Backend::Postgres => {
                let sql = wrapped(&tool.sql, tool.max_rows + 1);
                let texts = bind(store::query(&sql), &values)
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
            Backend::Sqlite => {
                let mut rows = Vec::new();
                let mut more = false;
                let mut stream = bind(store::query(&tool.sql), &values).fetch(&mut *conn);
                while let Some(row) = stream.try_next().await? {
                    if rows.len() == tool.max_rows {
                        more = true;
                        break;
                    }
                    rows.push(sqlite_row(&row)?);
                }
                (rows, more)
            }
        };
        Ok(shaped(tool, rows, more))
    };
    match tokio::time::timeout(wait, work).await {
        Ok(result) => result,
        Err(_) => Err(sqlx::Error::Protocol(timed_out(tool))),
    }
}

fn timed_out(tool: &SqlTool) -> String {
    format!(
        "the statement ran past its timeout of {} ms",
        tool.timeout.as_millis()
    )
}

/// A SQLite row as a JSON object: integers and reals as numbers, a column
/// declared `BOOLEAN` as `true`/`false`, text as strings, NULL as null, a
/// blob as `{"blob_bytes": N}`.
fn sqlite_row(row: &AnyRow) -> Result<serde_json::Value, sqlx::Error> {
    let mut object = serde_json::Map::new();
    for column in row.columns() {
        let i = column.ordinal();
        let raw = row.try_get_raw(i)?;
        let value = if raw.is_null() {
            serde_json::Value::Null
        } else {
            let declared_bool = column.type_info().kind() == AnyTypeInfoKind::Bool;
            match raw.type_info().kind() {
                AnyTypeInfoKind::SmallInt | AnyTypeInfoKind::Integer | AnyTypeInfoKind::BigInt => {
                    let n: i64 = row.try_get(i)?;
                    if declared_bool && (n == 0 || n == 1) {
                        serde_json::Value::Bool(n == 1)
                    } else {
                        n.into()
                    }
                }
                AnyTypeInfoKind::Real | AnyTypeInfoKind::Double => {
                    let x: f64 = row.try_get(i)?;
                    serde_json::Number::from_f64(x).map_or(serde_json::Value::Null, Into::into)
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

/// The output of a statement that returns rows, within the row and byte caps.
fn shaped(tool: &SqlTool, rows: Vec<serde_json::Value>, more_rows: bool) -> serde_json::Value {
    let mut kept = Vec::with_capacity(rows.len());
    let mut bytes = 0;
    let mut cut_by_bytes = false;
    for mut row in rows {
        parse_json_columns(&mut row, &tool.json_columns);
        let size = row.to_string().len() + 1;
        if bytes + size > tool.max_bytes {
            cut_by_bytes = true;
            break;
        }
        bytes += size;
        kept.push(row);
    }
    if kept.is_empty() && !cut_by_bytes {
        if let Some(message) = &tool.empty_error {
            return serde_json::json!({ "error": message });
        }
        if tool.shape == ResultShape::One {
            return serde_json::json!({ "error": "no row matched" });
        }
    }
    match tool.shape {
        ResultShape::One => kept.into_iter().next().unwrap_or_else(
            || serde_json::json!({ "error": "the row is larger than the tool's byte limit" }),
        ),
        ResultShape::Rows => {
            let truncated = more_rows || cut_by_bytes;
            let mut output = serde_json::json!({
                "rows": kept,
                "row_count": kept.len(),
                "truncated": truncated,
            });
            if truncated {
                output["note"] = if cut_by_bytes {
                    format!("rows were cut at {} bytes; ask for fewer", tool.max_bytes)
                } else {
                    format!(
                        "only the first {} rows are shown; ask for fewer",
                        tool.max_rows
                    )
                }
                .into();
            }
            output
        }
    }
}

fn parse_json_columns(row: &mut serde_json::Value, columns: &[String]) {
    for column in columns {
        if let Some(value) = row.get_mut(column)
            && let Some(text) = value.as_str()
            && let Ok(parsed) = serde_json::from_str(text)
        {
            *value = parsed;
        }
    }
}

/// The output of a statement that returns no rows.
fn affected(tool: &SqlTool, rows_affected: u64) -> serde_json::Value {
    match &tool.empty_error {
        Some(message) if rows_affected == 0 => serde_json::json!({ "error": message }),
        _ => serde_json::json!({ "rows_affected": rows_affected }),
    }
}

/// The database's own message, without sqlx's prefix.
fn message(error: &sqlx::Error) -> String {
    match error {
        sqlx::Error::Database(e) => e.message().to_owned(),
        other => other.to_string(),
    }
}

fn statement_error(tool: &SqlTool, error: &sqlx::Error) -> ToolError {
    let timeout = matches!(error, sqlx::Error::Database(e) if e.code().as_deref() == Some("57014"));
    ToolError::Invalid(if timeout {
        timed_out(tool)
    } else {
        format!("the statement failed: {}", message(error))
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

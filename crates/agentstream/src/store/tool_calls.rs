//! Tool calls: each applied at most once per `(run_id, call_id)`.

use sqlx::{AnyConnection, Row};
use uuid::Uuid;

use super::{StoreError, now, query};

/// A tool call that was applied, with its result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolCallRecord {
    /// The model's ID for the call.
    pub call_id: String,
    /// The tool's name.
    pub name: String,
    /// The arguments as JSON text.
    pub arguments: String,
    /// The result as JSON text.
    pub output: String,
    /// True when the tool refused the call (the model sees the error).
    pub is_error: bool,
}

/// The call's stored result, if it was applied already.
pub(crate) async fn tool_call(
    conn: &mut AnyConnection,
    run_id: Uuid,
    call_id: &str,
) -> Result<Option<ToolCallRecord>, StoreError> {
    let row = query(
        "SELECT call_id, name, arguments, output, is_error FROM tool_calls \
         WHERE run_id = $1 AND call_id = $2",
    )
    .bind(run_id.to_string())
    .bind(call_id)
    .fetch_optional(&mut *conn)
    .await?;
    row.map(|row| {
        let is_error: i64 = row.try_get("is_error")?;
        Ok(ToolCallRecord {
            call_id: row.try_get("call_id")?,
            name: row.try_get("name")?,
            arguments: row.try_get("arguments")?,
            output: row.try_get("output")?,
            is_error: is_error != 0,
        })
    })
    .transpose()
}

/// Records a call's result inside the transaction that applied its effects.
/// False if the run had recorded this call already: the first record stays.
pub(crate) async fn insert_tool_call(
    conn: &mut AnyConnection,
    run_id: Uuid,
    record: &ToolCallRecord,
) -> Result<bool, StoreError> {
    let done = query(
        "INSERT INTO tool_calls (run_id, call_id, name, arguments, output, is_error, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (run_id, call_id) DO NOTHING",
    )
    .bind(run_id.to_string())
    .bind(&record.call_id)
    .bind(&record.name)
    .bind(&record.arguments)
    .bind(&record.output)
    .bind(i64::from(record.is_error))
    .bind(now())
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected() > 0)
}

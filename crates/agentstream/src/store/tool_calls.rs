//! Tool calls: each applied at most once per `(run_id, call_id)`.
//!
//! A call whose effects land in this database is recorded in the
//! transaction that applies them (`finished` at once). A call whose effects
//! land elsewhere is recorded `started` before it runs and `finished` after;
//! a call left `started` (the process died, or the run stopped mid-call) is
//! never run again: [`settle_started_tool_calls`] finishes it as an error
//! that says its outcome is unknown.

use sqlx::{AnyConnection, Row};
use uuid::Uuid;

use super::{
    Backend, Message, StoreError,
    dialect::chain,
    messages::{INSERT_MESSAGE_IF_CHANGED, INSERT_MESSAGE_IF_RETURNED, bind_message},
    now, query,
};

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

/// A recorded call: finished with its result, or started and not finished.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordedCall {
    /// The call finished; this is its result.
    Finished(ToolCallRecord),
    /// The call was started and never finished: its outcome is unknown.
    Started,
}

/// What the model reads for a call whose outcome is unknown.
pub const OUTCOME_UNKNOWN: &str =
    "the call was interrupted before its result was recorded; its outcome is unknown";

/// The call's record, if the run made it already.
pub(crate) async fn tool_call(
    conn: &mut AnyConnection,
    run_id: Uuid,
    call_id: &str,
) -> Result<Option<RecordedCall>, StoreError> {
    let row = query(
        "SELECT call_id, name, arguments, output, is_error, status FROM tool_calls \
         WHERE run_id = $1 AND call_id = $2",
    )
    .bind(run_id.to_string())
    .bind(call_id)
    .fetch_optional(&mut *conn)
    .await?;
    row.map(|row| {
        let status: String = row.try_get("status")?;
        if status == "started" {
            return Ok(RecordedCall::Started);
        }
        let is_error: i64 = row.try_get("is_error")?;
        Ok(RecordedCall::Finished(ToolCallRecord {
            call_id: row.try_get("call_id")?,
            name: row.try_get("name")?,
            arguments: row.try_get("arguments")?,
            output: row.try_get("output")?,
            is_error: is_error != 0,
        }))
    })
    .transpose()
}

/// Records a call's result with its tool message, inside the transaction
/// that applied its effects, in one query (see `dialect::chain`). False,
/// with neither stored, if the run had recorded this call already: the first
/// record stays.
pub(crate) async fn insert_tool_call(
    conn: &mut AnyConnection,
    run_id: Uuid,
    record: &ToolCallRecord,
    message: &Message,
) -> Result<bool, StoreError> {
    let backend = Backend::of(conn);
    let message_if_recorded = match backend {
        Backend::Sqlite => INSERT_MESSAGE_IF_CHANGED,
        Backend::Postgres => INSERT_MESSAGE_IF_RETURNED,
    };
    let sql = chain(
        backend,
        &[
            "INSERT INTO tool_calls (run_id, call_id, name, arguments, output, is_error, \
             created_at) VALUES ($1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT (run_id, call_id) DO NOTHING RETURNING 1",
            message_if_recorded,
        ],
    );
    let query = query(&sql)
        .bind(run_id.to_string())
        .bind(&record.call_id)
        .bind(&record.name)
        .bind(&record.arguments)
        .bind(&record.output)
        .bind(i64::from(record.is_error))
        .bind(now());
    let done = bind_message(query, message).execute(&mut *conn).await?;
    // The message was stored only with the call (on SQLite the count is the
    // two statements' sum).
    Ok(done.rows_affected() > 0)
}

/// Records that a call with effects outside this database is about to run.
/// False if the run had recorded this call already (started or finished):
/// it must not run again.
pub(crate) async fn insert_started_tool_call(
    conn: &mut AnyConnection,
    run_id: Uuid,
    call_id: &str,
    name: &str,
    arguments: &str,
) -> Result<bool, StoreError> {
    let done = query(
        "INSERT INTO tool_calls \
         (run_id, call_id, name, arguments, output, is_error, created_at, status) \
         VALUES ($1, $2, $3, $4, '', 0, $5, 'started') ON CONFLICT (run_id, call_id) DO NOTHING",
    )
    .bind(run_id.to_string())
    .bind(call_id)
    .bind(name)
    .bind(arguments)
    .bind(now())
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected() > 0)
}

/// Finishes a started call with its result. False if it was not `started`
/// (settled as interrupted meanwhile): the first result stays.
pub(crate) async fn finish_tool_call(
    conn: &mut AnyConnection,
    run_id: Uuid,
    call_id: &str,
    output: &str,
    is_error: bool,
) -> Result<bool, StoreError> {
    let done = query(
        "UPDATE tool_calls SET output = $3, is_error = $4, status = 'finished' \
         WHERE run_id = $1 AND call_id = $2 AND status = 'started'",
    )
    .bind(run_id.to_string())
    .bind(call_id)
    .bind(output)
    .bind(i64::from(is_error))
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected() > 0)
}

/// Finishes every call of these runs still `started` as an error whose
/// outcome is unknown, each with its tool message, so the transcript pairs
/// every call with a result. Called in the transaction that ends the runs.
pub(crate) async fn settle_started_tool_calls(
    conn: &mut AnyConnection,
    run_ids: &[Uuid],
) -> Result<(), StoreError> {
    let output = serde_json::json!({ "error": OUTCOME_UNKNOWN }).to_string();
    // One statement per run end batch: runs rarely leave a call started.
    for chunk in run_ids.chunks(500) {
        let placeholders: Vec<String> = (0..chunk.len()).map(|i| format!("${}", i + 2)).collect();
        let sql = format!(
            "UPDATE tool_calls SET output = $1, is_error = 1, status = 'finished' \
             WHERE status = 'started' AND run_id IN ({}) RETURNING run_id, call_id",
            placeholders.join(", ")
        );
        let mut settle = query(&sql).bind(&output);
        for run_id in chunk {
            settle = settle.bind(run_id.to_string());
        }
        for row in settle.fetch_all(&mut *conn).await? {
            let run_id: String = row.try_get("run_id")?;
            let call_id: String = row.try_get("call_id")?;
            query(
                "INSERT INTO messages \
                 (id, conversation_id, run_id, role, content, tool_call_id, status, created_at) \
                 SELECT $1, conversation_id, id, 'tool', $2, $3, 'complete', $4 \
                 FROM runs WHERE id = $5",
            )
            .bind(Uuid::now_v7().to_string())
            .bind(&output)
            .bind(&call_id)
            .bind(now())
            .bind(run_id)
            .execute(&mut *conn)
            .await?;
        }
    }
    Ok(())
}

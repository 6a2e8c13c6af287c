//! Messages: the stored transcript of a conversation, tool calls and results included.

use std::{collections::HashSet, sync::LazyLock};

use serde::Serialize;
use sqlx::{AnyConnection, Row, any::AnyRow};
use uuid::Uuid;

use super::{MultiRow, Query, Store, StoreError, now, parse_enum, parse_id, query};
use crate::{
    events::{Event, EventKind, RunEvent, StoredEvent},
    text::text_enum,
};

text_enum! {
    /// Who wrote a message.
    // The variants' wire names are their lowercase names (see `as_str`).
    #[derive(utoipa::ToSchema)]
    #[schema(rename_all = "lowercase")]
    pub enum Role {
        /// The person.
        User = "user",
        /// The model.
        Assistant = "assistant",
        /// A tool's result, answering one tool call.
        Tool = "tool",
    }
}

text_enum! {
    /// Where a message stands.
    // The variants' wire names are their lowercase names (see `as_str`).
    #[derive(utoipa::ToSchema)]
    #[schema(rename_all = "lowercase")]
    pub enum MessageStatus {
        /// The model is still writing it.
        Streaming = "streaming",
        /// Whole.
        Complete = "complete",
        /// Cut short by a cancel; what was written is kept.
        Cancelled = "cancelled",
        /// Cut short by an error; what was written is kept.
        Failed = "failed",
        /// Cut short by a shutdown or crash; what was written is kept.
        Interrupted = "interrupted",
    }
}

/// A stored message.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Message {
    /// The message's ID; IDs sort in the order messages were written.
    pub id: Uuid,
    /// The conversation it belongs to.
    pub conversation_id: Uuid,
    /// The run that wrote it.
    pub run_id: Option<Uuid>,
    /// Who wrote it.
    pub role: Role,
    /// Its text (for a tool message, the tool's output as JSON text).
    pub content: String,
    /// The tool calls an assistant message made: `[{id, name, arguments}]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<serde_json::Value>,
    /// The call a tool message answers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    /// Where it stands.
    pub status: MessageStatus,
    /// Why the model stopped writing it, as the model server said:
    /// `stop`, `tool_calls`, `length` (cut at `max_tokens` or the model's
    /// context), `content_filter`, …; absent when it gave no reason.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finish_reason: Option<String>,
    /// When it was written (UTC, RFC 3339).
    pub created_at: String,
    /// True for a message a retry or an edit replaced (`POST
    /// /v1/runs/{id}/retry`): kept in the transcript, never sent to the
    /// model again.
    pub superseded: bool,
}

/// A message about to be stored.
#[derive(Debug, Clone)]
pub struct NewMessage<'a> {
    /// The conversation it belongs to.
    pub conversation_id: Uuid,
    /// The run that writes it.
    pub run_id: Option<Uuid>,
    /// Who writes it.
    pub role: Role,
    /// Its text.
    pub content: &'a str,
    /// The tool calls of an assistant message.
    pub tool_calls: Option<&'a serde_json::Value>,
    /// The call a tool message answers.
    pub tool_call_id: Option<&'a str>,
    /// Its status.
    pub status: MessageStatus,
}

fn from_row(row: &AnyRow) -> Result<Message, StoreError> {
    let tool_calls: Option<String> = row.try_get("tool_calls")?;
    let run_id: Option<String> = row.try_get("run_id")?;
    Ok(Message {
        id: parse_id(row.try_get("id")?)?,
        conversation_id: parse_id(row.try_get("conversation_id")?)?,
        run_id: run_id.as_deref().map(parse_id).transpose()?,
        role: parse_enum("role", row.try_get("role")?)?,
        content: row.try_get("content")?,
        tool_calls: tool_calls
            .map(|text| serde_json::from_str(&text))
            .transpose()
            .map_err(|e| StoreError::Corrupt(format!("tool_calls: {e}")))?,
        tool_call_id: row.try_get("tool_call_id")?,
        status: parse_enum("status", row.try_get("status")?)?,
        finish_reason: row.try_get("finish_reason")?,
        created_at: row.try_get("created_at")?,
        superseded: row.try_get::<i64, _>("superseded")? != 0,
    })
}

/// Marks superseded, inside the caller's transaction, the reply of the run
/// `run_id` (its assistant and tool messages), and with `question` also the
/// conversation's last user message that is not superseded yet: what a
/// retry, or an edit of the question, replaces.
pub(crate) async fn supersede(
    conn: &mut AnyConnection,
    conversation_id: Uuid,
    run_id: Uuid,
    question: bool,
) -> Result<(), StoreError> {
    if question {
        query(
            "UPDATE messages SET superseded = 1 WHERE id = (SELECT id FROM messages \
             WHERE conversation_id = $1 AND role = 'user' AND superseded = 0 \
             ORDER BY COALESCE(run_id, id) DESC, id DESC LIMIT 1)",
        )
        .bind(conversation_id.to_string())
        .execute(&mut *conn)
        .await?;
    }
    query("UPDATE messages SET superseded = 1 WHERE run_id = $1 AND role <> 'user'")
        .bind(run_id.to_string())
        .execute(&mut *conn)
        .await?;
    Ok(())
}

impl Store {
    /// A page of the conversation's transcript: the `limit` messages just
    /// before the message `before` in transcript order (the last `limit`
    /// without it), oldest first, and whether older ones remain. An ID that
    /// is no message of the conversation places itself by time (IDs are
    /// UUID v7): the messages of the runs stored before it.
    #[tracing::instrument(skip_all, fields(conversation_id = %conversation_id))]
    pub async fn messages_page(
        &self,
        conversation_id: Uuid,
        before: Option<Uuid>,
        limit: u32,
    ) -> Result<(Vec<Message>, bool), StoreError> {
        let mut conn = self.acquire().await?;
        // The transcript's order is (COALESCE(run_id, id), id); "~" sorts
        // after every ID.
        let (group, id) = match before {
            Some(before) => {
                let row = query(
                    "SELECT COALESCE(run_id, id) AS grp FROM messages \
                     WHERE id = $1 AND conversation_id = $2",
                )
                .bind(before.to_string())
                .bind(conversation_id.to_string())
                .fetch_optional(&mut *conn)
                .await?;
                let group = match row {
                    Some(row) => row.try_get::<String, _>("grp")?,
                    None => before.to_string(),
                };
                (group, before.to_string())
            }
            None => ("~".to_owned(), "~".to_owned()),
        };
        let rows = query(
            "SELECT id, conversation_id, run_id, role, content, tool_calls, tool_call_id, \
             status, finish_reason, created_at, superseded FROM messages WHERE conversation_id = $1 \
             AND (COALESCE(run_id, id) < $2 OR (COALESCE(run_id, id) = $2 AND id < $3)) \
             ORDER BY COALESCE(run_id, id) DESC, id DESC LIMIT $4",
        )
        .bind(conversation_id.to_string())
        .bind(group)
        .bind(id)
        .bind(i64::from(limit) + 1)
        .fetch_all(&mut *conn)
        .await?;
        let more = rows.len() > limit as usize;
        let mut page = rows
            .iter()
            .take(limit as usize)
            .map(from_row)
            .collect::<Result<Vec<_>, _>>()?;
        page.reverse();
        Ok((page, more))
    }

    /// The conversation's messages in transcript order (see [`messages`]).
    #[tracing::instrument(skip_all, fields(conversation_id = %conversation_id))]
    pub async fn messages(&self, conversation_id: Uuid) -> Result<Vec<Message>, StoreError> {
        messages(&mut *self.acquire().await?, conversation_id, None).await
    }

    /// The conversation as the run `up_to` sees it: the messages of the runs
    /// stored before it and its own, in transcript order. A queued run
    /// starts after later inputs were stored, and answers its own.
    #[tracing::instrument(skip_all, fields(conversation_id = %conversation_id))]
    pub async fn messages_up_to(
        &self,
        conversation_id: Uuid,
        up_to: Uuid,
    ) -> Result<Vec<Message>, StoreError> {
        messages(&mut *self.acquire().await?, conversation_id, Some(up_to)).await
    }
}

/// The conversation's messages in transcript order, read on the caller's
/// connection: run by run, in the order the runs were stored (their IDs are
/// UUID v7), and within a run in the order its messages were written. So a
/// run queued behind another reads as its question, then its answer, even
/// though its question was stored while the run ahead was still answering.
/// With `up_to`, only the messages of that run and the runs before it.
pub(crate) async fn messages(
    conn: &mut AnyConnection,
    conversation_id: Uuid,
    up_to: Option<Uuid>,
) -> Result<Vec<Message>, StoreError> {
    let rows = query(
        "SELECT id, conversation_id, run_id, role, content, tool_calls, tool_call_id, \
         status, finish_reason, created_at, superseded FROM messages WHERE conversation_id = $1 \
         AND ($2 IS NULL OR COALESCE(run_id, id) <= $2) \
         ORDER BY COALESCE(run_id, id), id",
    )
    .bind(conversation_id.to_string())
    .bind(up_to.map(|id| id.to_string()))
    .fetch_all(&mut *conn)
    .await?;
    rows.iter().map(from_row).collect()
}

/// The state of a run's assistant message, written by the event log in the
/// transaction of one of the run's events rather than in one of its own.
#[derive(Debug, Clone, PartialEq)]
pub struct AssistantMessage {
    /// Its ID, chosen when the model call begins, so the transcript keeps
    /// the order of the run's steps.
    pub id: Uuid,
    /// Its conversation.
    pub conversation_id: Uuid,
    /// The run writing it.
    pub run_id: Uuid,
    /// The text so far.
    pub content: String,
    /// The tool calls the model asked for.
    pub tool_calls: Option<serde_json::Value>,
    /// `streaming` until the model call ends.
    pub status: MessageStatus,
    /// Why the model stopped, once it has.
    pub finish_reason: Option<String>,
    /// When the model call began.
    pub created_at: String,
}

/// `INSERT … ON CONFLICT DO UPDATE` of assistant messages, ten columns a row.
static WRITE_ASSISTANT: LazyLock<MultiRow> = LazyLock::new(|| {
    MultiRow::new(
        &[16, 4, 1],
        "INSERT INTO messages (id, conversation_id, run_id, role, content, tool_calls, \
         tool_call_id, status, finish_reason, created_at) VALUES",
        10,
        "ON CONFLICT (id) DO UPDATE SET content = excluded.content, \
         tool_calls = excluded.tool_calls, status = excluded.status, \
         finish_reason = excluded.finish_reason \
         WHERE messages.status = 'streaming'",
    )
});

/// Stores the messages' states, the last of each: inserts them, or updates
/// those still `streaming` (a message that ended keeps its end).
pub(crate) async fn write_assistant_messages(
    conn: &mut AnyConnection,
    messages: &[&AssistantMessage],
) -> Result<(), StoreError> {
    // One row per message in a statement: its last state.
    let mut seen = HashSet::new();
    let mut last: Vec<&AssistantMessage> = messages
        .iter()
        .rev()
        .filter(|m| seen.insert(m.id))
        .copied()
        .collect();
    last.reverse();
    let statements = WRITE_ASSISTANT.for_conn(conn);
    for (sql, chunk) in MultiRow::chunks(statements, &last) {
        let mut query = query(sql);
        for message in chunk {
            query = query
                .bind(message.id.to_string())
                .bind(message.conversation_id.to_string())
                .bind(message.run_id.to_string())
                .bind(Role::Assistant.as_str())
                .bind(message.content.as_str())
                .bind(
                    message
                        .tool_calls
                        .as_ref()
                        .map(serde_json::Value::to_string),
                )
                .bind(None::<String>)
                .bind(message.status.as_str())
                .bind(message.finish_reason.as_deref())
                .bind(message.created_at.as_str());
        }
        query.execute(&mut *conn).await?;
    }
    Ok(())
}

/// Inserts a message inside the caller's transaction.
pub(crate) async fn insert_message(
    conn: &mut AnyConnection,
    new: NewMessage<'_>,
) -> Result<Message, StoreError> {
    let message = new_message(new);
    insert_message_row(conn, &message).await?;
    Ok(message)
}

/// Stores a message built already, inside the caller's transaction.
pub(crate) async fn insert_message_row(
    conn: &mut AnyConnection,
    message: &Message,
) -> Result<(), StoreError> {
    bind_message(query(INSERT_MESSAGE), message)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// A new message, not stored yet.
pub(crate) fn new_message(new: NewMessage<'_>) -> Message {
    Message {
        id: Uuid::now_v7(),
        conversation_id: new.conversation_id,
        run_id: new.run_id,
        role: new.role,
        content: new.content.to_owned(),
        tool_calls: new.tool_calls.cloned(),
        tool_call_id: new.tool_call_id.map(str::to_owned),
        status: new.status,
        finish_reason: None,
        superseded: false,
        created_at: now(),
    }
}

/// The head of every statement that stores a message; [`bind_message`]
/// binds its nine values.
macro_rules! insert_message {
    () => {
        "INSERT INTO messages (id, conversation_id, run_id, role, content, tool_calls, \
         tool_call_id, status, created_at) "
    };
}

/// Stores a message; values bound by [`bind_message`].
pub(super) const INSERT_MESSAGE: &str = concat!(
    insert_message!(),
    "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
);

/// Stores a message only if the statement before it in a SQLite query
/// (see `dialect::chain`) changed a row.
pub(super) const INSERT_MESSAGE_IF_CHANGED: &str = concat!(
    insert_message!(),
    "SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9 WHERE changes() = 1"
);

/// Stores a message only if the first clause of a PostgreSQL query (see
/// `dialect::chain`, which names it `s0`) returned a row.
pub(super) const INSERT_MESSAGE_IF_RETURNED: &str = concat!(
    insert_message!(),
    "SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9 WHERE EXISTS (SELECT 1 FROM s0)"
);

/// Binds the values of [`INSERT_MESSAGE`] and its conditional forms.
pub(super) fn bind_message<'q>(query: Query<'q>, message: &'q Message) -> Query<'q> {
    query
        .bind(message.id.to_string())
        .bind(message.conversation_id.to_string())
        .bind(message.run_id.map(|id| id.to_string()))
        .bind(message.role.as_str())
        .bind(&message.content)
        .bind(
            message
                .tool_calls
                .as_ref()
                .map(serde_json::Value::to_string),
        )
        .bind(message.tool_call_id.as_deref())
        .bind(message.status.as_str())
        .bind(&message.created_at)
}

/// Marks the run's unfinished messages with `status`, keeping their text.
pub(crate) async fn close_streaming_messages(
    conn: &mut AnyConnection,
    run_id: Uuid,
    status: MessageStatus,
) -> Result<(), StoreError> {
    query("UPDATE messages SET status = $2 WHERE run_id = $1 AND status = 'streaming'")
        .bind(run_id.to_string())
        .bind(status.as_str())
        .execute(&mut *conn)
        .await?;
    Ok(())
}

impl Store {
    /// Keeps the text a run streamed before it stopped without saving it (a
    /// crash): the deltas after its last completed step become the content of
    /// its still-streaming assistant message.
    #[tracing::instrument(skip_all, fields(run_id = %run_id))]
    pub async fn keep_partial_reply(
        &self,
        run_id: Uuid,
        events: &[StoredEvent],
    ) -> Result<(), StoreError> {
        let start = events
            .iter()
            .rposition(|e| matches!(e.kind, EventKind::MessageCompleted | EventKind::ToolResult))
            .map_or(0, |i| i + 1);
        let text: String = events[start..]
            .iter()
            .filter(|e| e.kind == EventKind::Delta)
            .filter_map(|e| match RunEvent::parse(&e.data).ok()?.event {
                Event::Delta { text } => Some(text),
                _ => None,
            })
            .collect();
        if text.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin().await?;
        query(
            "UPDATE messages SET content = $2 WHERE run_id = $1 AND role = 'assistant' \
             AND status = 'streaming' AND content = ''",
        )
        .bind(run_id.to_string())
        .bind(text)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }
}

//! Runs: one agent turn each, from the user's message to the final `done`.

use std::{collections::HashMap, sync::LazyLock};

use serde::Serialize;
use sqlx::{AnyConnection, Row, any::AnyRow};
use uuid::Uuid;

use super::{Backend, MultiRow, Query, Store, StoreError, now, parse_enum, parse_id, query};
use crate::{events::RunStatus, text::text_enum};

text_enum! {
    /// What happens to a run when its last subscriber disconnects.
    // The variants' wire names are their lowercase names (see `as_str`).
    #[derive(utoipa::ToSchema)]
    #[schema(rename_all = "lowercase")]
    pub enum OnDisconnect {
        /// The run goes on and its reply is stored (the default).
        Continue = "continue",
        /// The run is cancelled.
        Cancel = "cancel",
    }
}

/// A run as stored and as returned by the API.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Run {
    /// The run's ID.
    pub id: Uuid,
    /// The conversation it answers in.
    pub conversation_id: Uuid,
    /// The agent that answers.
    pub agent: String,
    /// Where it stands.
    pub status: RunStatus,
    /// The client's idempotency key for the message that started it.
    pub client_message_id: Option<String>,
    /// What a disconnect does to it.
    pub on_disconnect: OnDisconnect,
    /// Why it failed: `{code, message}`.
    pub error: Option<serde_json::Value>,
    /// Token usage reported by the model, when it reports it.
    pub usage: Option<serde_json::Value>,
    /// What its last model call sent of the conversation, for an agent with
    /// a context window: `{messages_sent, messages_dropped, tokens,
    /// context_tokens}` (see the `context.trimmed` event); null until the
    /// run ends, and for the demo model.
    #[schema(value_type = Option<crate::events::ContextUse>)]
    pub context: Option<serde_json::Value>,
    /// The `seq` of its last `done`: its end, or, for a run that paused for
    /// approval, its pause (follow `GET /v1/runs/{id}/events?after=` it to
    /// see it go on); 0 while it runs and never paused.
    pub last_seq: i64,
    /// When it was created (UTC, RFC 3339).
    pub created_at: String,
    /// When it ended (UTC, RFC 3339).
    pub finished_at: Option<String>,
    /// While it is `requires_action`: when it ends `expired` unless every
    /// call it asked about has a decision by then (UTC, RFC 3339).
    pub expires_at: Option<String>,
    /// While it is `requires_action`, as `GET /v1/runs/{id}` and `POST
    /// /v1/runs/{id}/approvals` return it: every call it asked about, with
    /// the decisions given so far. Null otherwise.
    pub pending_approvals: Option<Vec<super::Approval>>,
    /// The owner.
    #[serde(skip)]
    pub user_id: Uuid,
    /// Who started it, as its tools see it: `{"subject", "claims"}` JSON
    /// text (see `tools::Caller`); `None` for runs stored before callers were.
    #[serde(skip)]
    pub caller: Option<String>,
    /// The run's number in the event log, which keeps its events under it
    /// (migration 0012): given when the run is stored, never given twice; 0
    /// before.
    #[serde(skip)]
    pub event_key: i64,
}

/// A run about to be stored.
#[derive(Debug, Clone)]
pub struct NewRun<'a> {
    /// The conversation it answers in.
    pub conversation_id: Uuid,
    /// The owner.
    pub user_id: Uuid,
    /// The agent that answers.
    pub agent: &'a str,
    /// `Running`, or `Queued` behind the active run.
    pub status: RunStatus,
    /// The client's idempotency key.
    pub client_message_id: Option<&'a str>,
    /// What a disconnect does to it.
    pub on_disconnect: OnDisconnect,
    /// The node that drives it, for a running run.
    pub owner_node: Option<&'a str>,
    /// Who starts it, as JSON text (see [`Run::caller`]).
    pub caller: Option<&'a str>,
}

fn json_column(row: &AnyRow, column: &str) -> Result<Option<serde_json::Value>, StoreError> {
    let text: Option<String> = row.try_get(column)?;
    text.map(|text| serde_json::from_str(&text))
        .transpose()
        .map_err(|e| StoreError::Corrupt(format!("{column}: {e}")))
}

/// The columns [`from_row`] reads, for a `SELECT` of whole runs: a literal,
/// for `concat!`, so that every query stays a `&'static str`.
macro_rules! run_columns {
    () => {
        "id, conversation_id, user_id, agent, status, client_message_id, on_disconnect, \
         error, usage, context, last_seq, created_at, finished_at, caller, expires_at, event_key"
    };
}
pub(super) use run_columns;

pub(super) fn from_row(row: &AnyRow) -> Result<Run, StoreError> {
    Ok(Run {
        id: parse_id(row.try_get("id")?)?,
        conversation_id: parse_id(row.try_get("conversation_id")?)?,
        user_id: parse_id(row.try_get("user_id")?)?,
        agent: row.try_get("agent")?,
        status: parse_enum("status", row.try_get("status")?)?,
        client_message_id: row.try_get("client_message_id")?,
        on_disconnect: parse_enum("on_disconnect", row.try_get("on_disconnect")?)?,
        error: json_column(row, "error")?,
        usage: json_column(row, "usage")?,
        context: json_column(row, "context")?,
        last_seq: row.try_get("last_seq")?,
        created_at: row.try_get("created_at")?,
        finished_at: row.try_get("finished_at")?,
        expires_at: row.try_get("expires_at")?,
        pending_approvals: None,
        caller: row.try_get("caller")?,
        event_key: row.try_get("event_key")?,
    })
}

impl Store {
    /// The run with this ID if `user_id` owns it.
    #[tracing::instrument(skip_all, fields(run_id = %id))]
    pub async fn run(&self, user_id: Uuid, id: Uuid) -> Result<Option<Run>, StoreError> {
        let row = query(concat!(
            "SELECT ",
            run_columns!(),
            " FROM runs WHERE id = $1 AND user_id = $2",
        ))
        .bind(id.to_string())
        .bind(user_id.to_string())
        .fetch_optional(&mut *self.acquire().await?)
        .await?;
        row.as_ref().map(from_row).transpose()
    }

    /// The newest queued or running run of the user's conversation that
    /// `chat` names: the conversation with that ID, or the one an AI SDK
    /// client created under that chat ID. None when there is no such run or
    /// no such conversation of the user's.
    #[tracing::instrument(skip_all, fields(user_id = %user_id))]
    pub async fn active_chat_run(
        &self,
        user_id: Uuid,
        chat: &str,
    ) -> Result<Option<Run>, StoreError> {
        // A chat ID that is a conversation's ID names that conversation.
        let id = Uuid::parse_str(chat).map_or_else(|_| chat.to_owned(), |id| id.to_string());
        let row = query(
            "SELECT r.id, r.conversation_id, r.user_id, r.agent, r.status, r.client_message_id, \
             r.on_disconnect, r.error, r.usage, r.context, r.last_seq, r.created_at, r.finished_at, r.caller, r.expires_at, r.event_key \
             FROM runs r JOIN conversations c ON c.id = r.conversation_id \
             WHERE c.user_id = $1 AND (c.id = $2 OR c.chat_id = $3) \
             AND r.status IN ('queued', 'running') ORDER BY r.id DESC LIMIT 1",
        )
        .bind(user_id.to_string())
        .bind(id)
        .bind(chat)
        .fetch_optional(&mut *self.acquire().await?)
        .await?;
        row.as_ref().map(from_row).transpose()
    }

    /// The conversation's runs, newest first, at most `limit`, older than
    /// `before`.
    pub async fn conversation_runs(
        &self,
        conversation_id: Uuid,
        before: Option<Uuid>,
        limit: u32,
    ) -> Result<Vec<Run>, StoreError> {
        // UUID v7 text sorts by creation time; "~" sorts after every ID.
        let before = before.map_or_else(|| "~".to_owned(), |id| id.to_string());
        let rows = query(concat!(
            "SELECT ",
            run_columns!(),
            " FROM runs WHERE conversation_id = $1 AND id < $2 ORDER BY id DESC LIMIT $3"
        ))
        .bind(conversation_id.to_string())
        .bind(before)
        .bind(i64::from(limit))
        .fetch_all(&mut *self.acquire().await?)
        .await?;
        rows.iter().map(from_row).collect()
    }

    /// The status and usage of each run of the conversation, by run.
    pub async fn run_statuses(
        &self,
        conversation_id: Uuid,
    ) -> Result<HashMap<Uuid, (RunStatus, Option<serde_json::Value>)>, StoreError> {
        let rows = query("SELECT id, status, usage FROM runs WHERE conversation_id = $1")
            .bind(conversation_id.to_string())
            .fetch_all(&mut *self.acquire().await?)
            .await?;
        rows.iter()
            .map(|row| {
                Ok((
                    parse_id(row.try_get("id")?)?,
                    (
                        parse_enum("status", row.try_get("status")?)?,
                        json_column(row, "usage")?,
                    ),
                ))
            })
            .collect()
    }

    /// True when the run has ended (or does not exist): its final `done` is
    /// stored. A run paused for approval has not ended.
    pub async fn run_ended(&self, id: Uuid) -> Result<bool, StoreError> {
        let row = query("SELECT status FROM runs WHERE id = $1")
            .bind(id.to_string())
            .fetch_optional(&mut *self.acquire().await?)
            .await?;
        Ok(match row {
            Some(row) => !matches!(
                row.try_get::<&str, _>("status")?,
                "queued" | "running" | "requires_action"
            ),
            None => true,
        })
    }

    /// True when the conversation has a queued run.
    pub async fn has_queued_run(&self, conversation_id: Uuid) -> Result<bool, StoreError> {
        let row = query(
            "SELECT COUNT(*) AS n FROM runs WHERE status = 'queued' AND conversation_id = $1",
        )
        .bind(conversation_id.to_string())
        .fetch_one(&mut *self.acquire().await?)
        .await?;
        Ok(row.try_get::<i64, _>("n")? > 0)
    }

    /// Runs that are not terminal: after a crash, the ones left open.
    #[tracing::instrument(skip_all)]
    pub async fn open_runs(&self) -> Result<Vec<Run>, StoreError> {
        let rows = query(concat!(
            "SELECT ",
            run_columns!(),
            " FROM runs WHERE status IN ('queued', 'running') ORDER BY id",
        ))
        .fetch_all(&mut *self.acquire().await?)
        .await?;
        rows.iter().map(from_row).collect()
    }
}

/// A new run, not stored yet.
pub(crate) fn new_run(new: &NewRun<'_>) -> Run {
    Run {
        id: Uuid::now_v7(),
        conversation_id: new.conversation_id,
        user_id: new.user_id,
        agent: new.agent.to_owned(),
        status: new.status,
        client_message_id: new.client_message_id.map(str::to_owned),
        on_disconnect: new.on_disconnect,
        error: None,
        usage: None,
        context: None,
        last_seq: 0,
        created_at: now(),
        finished_at: None,
        expires_at: None,
        pending_approvals: None,
        caller: new.caller.map(str::to_owned),
        event_key: 0,
    }
}

/// The columns and values of a run's insert, bound by [`bind_run`].
macro_rules! insert_run {
    ($key_column:literal, $key_value:literal) => {
        concat!(
            "INSERT INTO runs (id, conversation_id, user_id, agent, status, client_message_id, \
             on_disconnect, created_at, owner_node, caller",
            $key_column,
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10",
            $key_value,
            ")"
        )
    };
}

/// Stores a run on SQLite, numbered in the event log by the next value of
/// `run_key_sequence` (migration 0012): two statements, for a [`chain`].
///
/// [`chain`]: super::dialect::chain
pub(super) const INSERT_RUN_SQLITE: &str = concat!(
    "UPDATE run_key_sequence SET value = value + 1;\n",
    insert_run!(", event_key", ", (SELECT value FROM run_key_sequence)")
);

/// Stores a run on PostgreSQL, numbered in the event log by the column's
/// identity sequence; returns the run's `id` and `event_key` for the run's
/// first event (see [`super::events::insert_first_event_postgres`]).
pub(super) const INSERT_RUN_POSTGRES: &str =
    concat!(insert_run!("", ""), " RETURNING id, event_key");

/// Binds the values of a run's insert: the run, and the node that drives it.
pub(super) fn bind_run<'q>(
    query: Query<'q>,
    run: &'q Run,
    owner_node: Option<&'q str>,
) -> Query<'q> {
    query
        .bind(run.id.to_string())
        .bind(run.conversation_id.to_string())
        .bind(run.user_id.to_string())
        .bind(&run.agent)
        .bind(run.status.as_str())
        .bind(run.client_message_id.as_deref())
        .bind(run.on_disconnect.as_str())
        .bind(&run.created_at)
        .bind(owner_node)
        .bind(run.caller.as_deref())
}

/// The run a client message ID already started in this conversation.
/// The text of the user's message that started the run, inside the caller's
/// transaction.
pub(crate) async fn run_input(
    conn: &mut AnyConnection,
    run_id: Uuid,
) -> Result<Option<String>, StoreError> {
    let row = query(
        "SELECT content FROM messages WHERE run_id = $1 AND role = 'user' ORDER BY id LIMIT 1",
    )
    .bind(run_id.to_string())
    .fetch_optional(&mut *conn)
    .await?;
    Ok(row.map(|row| row.try_get("content")).transpose()?)
}

pub(crate) async fn run_by_client_message_id(
    conn: &mut AnyConnection,
    conversation_id: Uuid,
    client_message_id: &str,
) -> Result<Option<Run>, StoreError> {
    let row = query(concat!(
        "SELECT ",
        run_columns!(),
        " FROM runs WHERE conversation_id = $1 AND client_message_id = $2",
    ))
    .bind(conversation_id.to_string())
    .bind(client_message_id)
    .fetch_optional(&mut *conn)
    .await?;
    row.as_ref().map(from_row).transpose()
}

/// The ID of the conversation's newest run, inside the caller's transaction.
pub(crate) async fn last_run_id(
    conn: &mut AnyConnection,
    conversation_id: Uuid,
) -> Result<Option<Uuid>, StoreError> {
    let row = query("SELECT id FROM runs WHERE conversation_id = $1 ORDER BY id DESC LIMIT 1")
        .bind(conversation_id.to_string())
        .fetch_optional(&mut *conn)
        .await?;
    row.map(|row| parse_id(row.try_get("id")?)).transpose()
}

/// The conversation's queued, running or paused runs, oldest first: a run
/// paused for approval holds its conversation's turn.
pub(crate) async fn active_runs(
    conn: &mut AnyConnection,
    conversation_id: Uuid,
) -> Result<Vec<Run>, StoreError> {
    let rows = query(concat!(
        "SELECT ",
        run_columns!(),
        " FROM runs WHERE conversation_id = $1 \
         AND status IN ('queued', 'running', 'requires_action') ORDER BY id",
    ))
    .bind(conversation_id.to_string())
    .fetch_all(&mut *conn)
    .await?;
    rows.iter().map(from_row).collect()
}

/// Moves a queued run to running. False if it was no longer queued.
pub(crate) async fn start_queued_run(
    conn: &mut AnyConnection,
    id: Uuid,
    node: &str,
) -> Result<bool, StoreError> {
    let done = query(
        "UPDATE runs SET status = 'running', owner_node = $2 WHERE id = $1 AND status = 'queued'",
    )
    .bind(id.to_string())
    .bind(node)
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected() > 0)
}

/// Takes the conversation's row lock (PostgreSQL; SQLite already holds the
/// write lock), so that starting its next run is one decision at a time.
pub(crate) async fn lock_conversation(
    conn: &mut AnyConnection,
    conversation_id: Uuid,
) -> Result<(), StoreError> {
    if Backend::of(conn) == Backend::Postgres {
        query("SELECT id FROM conversations WHERE id = $1 FOR NO KEY UPDATE")
            .bind(conversation_id.to_string())
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

impl Store {
    /// Takes or renews `node`'s lease, which covers every run it drives.
    /// One row per node: the heartbeat never touches the runs' rows, so it
    /// cannot contend with the writes of the runs themselves.
    pub async fn renew_lease(&self, node: &str, expires_at: &str) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        query(
            "INSERT INTO nodes (id, started_at, lease_expires_at) VALUES ($1, $2, $3) \
             ON CONFLICT (id) DO UPDATE SET lease_expires_at = excluded.lease_expires_at",
        )
        .bind(node)
        .bind(now())
        .bind(expires_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Gives up `node`'s lease (at the end of a shutdown, its runs ended).
    pub async fn release_lease(&self, node: &str) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        query("DELETE FROM nodes WHERE id = $1")
            .bind(node)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The running runs `node` drives, each with whether a cancel was asked
    /// for (from any node).
    pub async fn owned_runs(&self, node: &str) -> Result<Vec<(Uuid, bool)>, StoreError> {
        let rows = query(
            "SELECT id, cancel_requested_at FROM runs WHERE owner_node = $1 AND status = 'running'",
        )
        .bind(node)
        .fetch_all(&mut *self.acquire().await?)
        .await?;
        rows.iter()
            .map(|row| {
                let cancel: Option<String> = row.try_get("cancel_requested_at")?;
                Ok((parse_id(row.try_get("id")?)?, cancel.is_some()))
            })
            .collect()
    }

    /// The open runs `node` holds.
    pub async fn runs_owned_by(&self, node: &str) -> Result<Vec<Uuid>, StoreError> {
        let rows =
            query("SELECT id FROM runs WHERE owner_node = $1 AND status IN ('queued', 'running')")
                .bind(node)
                .fetch_all(&mut *self.acquire().await?)
                .await?;
        rows.iter()
            .map(|row| parse_id(row.try_get("id")?))
            .collect()
    }

    /// Running runs whose node's lease ran out before `now`: it is gone.
    pub async fn expired_runs(&self, now: &str) -> Result<Vec<Run>, StoreError> {
        let rows = query(
            "SELECT r.id, r.conversation_id, r.user_id, r.agent, r.status, r.client_message_id, \
             r.on_disconnect, r.error, r.usage, r.context, r.last_seq, r.created_at, r.finished_at, r.caller, r.expires_at, r.event_key \
             FROM runs r LEFT JOIN nodes n ON n.id = r.owner_node \
             WHERE r.status = 'running' AND (n.id IS NULL OR n.lease_expires_at < $1) \
             ORDER BY r.id",
        )
        .bind(now)
        .fetch_all(&mut *self.acquire().await?)
        .await?;
        rows.iter().map(from_row).collect()
    }

    /// Conversations with a queued run and no running or paused one: nobody
    /// will start their next run unless asked to.
    pub async fn stalled_conversations(&self) -> Result<Vec<Uuid>, StoreError> {
        let rows = query(
            "SELECT DISTINCT q.conversation_id FROM runs q WHERE q.status = 'queued' \
             AND NOT EXISTS (SELECT 1 FROM runs r WHERE r.conversation_id = q.conversation_id \
             AND r.status IN ('running', 'requires_action'))",
        )
        .fetch_all(&mut *self.acquire().await?)
        .await?;
        rows.iter()
            .map(|row| parse_id(row.try_get("conversation_id")?))
            .collect()
    }

    /// Records a cancel for the node that drives the run. False if the run
    /// is not running.
    pub async fn request_cancel(&self, run_id: Uuid) -> Result<bool, StoreError> {
        let mut tx = self.begin().await?;
        let done = query(
            "UPDATE runs SET cancel_requested_at = COALESCE(cancel_requested_at, $2) \
             WHERE id = $1 AND status = 'running'",
        )
        .bind(run_id.to_string())
        .bind(now())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(done.rows_affected() > 0)
    }
}

/// A run's end, as `finish_runs` stores it.
#[derive(Debug, Clone)]
pub struct RunEnd {
    /// The run.
    pub id: Uuid,
    /// Its final status.
    pub status: RunStatus,
    /// Why it failed, as JSON text.
    pub error: Option<String>,
    /// Its token usage, as JSON text.
    pub usage: Option<String>,
    /// What its last model call sent, as JSON text.
    pub context: Option<String>,
    /// The `seq` of its `done`.
    pub last_seq: i64,
}

/// `UPDATE … FROM (VALUES …)` of run ends, seven columns a row. Only queued
/// and running runs are updated, so a run ends (or pauses) exactly once
/// however many parties try; a paused run is taken back to `running` first
/// (see `resume_paused_run`). A pause keeps `finished_at` empty.
static FINISH_RUNS: LazyLock<MultiRow> = LazyLock::new(|| {
    MultiRow::new(
        &[16, 4, 1],
        "UPDATE runs SET status = v.column2, error = v.column3, usage = v.column4, \
         context = v.column5, last_seq = v.column6, finished_at = v.column7, \
         expires_at = CASE WHEN v.column2 = 'requires_action' THEN runs.expires_at END \
         FROM (VALUES",
        7,
        ") AS v WHERE runs.id = v.column1 AND runs.status IN ('queued', 'running') RETURNING id",
    )
});

/// Ends the runs that are still open (each at most once in `ends`); returns
/// those it ended. A run not returned had ended already.
pub(crate) async fn finish_runs(
    conn: &mut AnyConnection,
    ends: &[RunEnd],
) -> Result<Vec<Uuid>, StoreError> {
    let at = now();
    let mut ended = Vec::with_capacity(ends.len());
    let statements = FINISH_RUNS.for_conn(conn);
    for (sql, chunk) in MultiRow::chunks(statements, ends) {
        let mut query = query(sql);
        for end in chunk {
            query = query
                .bind(end.id.to_string())
                .bind(end.status.as_str())
                .bind(end.error.clone())
                .bind(end.usage.clone())
                .bind(end.context.clone())
                .bind(end.last_seq)
                .bind(end.status.is_terminal().then_some(at.as_str()));
        }
        for row in query.fetch_all(&mut *conn).await? {
            ended.push(parse_id(row.try_get("id")?)?);
        }
    }
    Ok(ended)
}

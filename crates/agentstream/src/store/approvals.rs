//! Tool approvals: the calls a run paused to ask its user about, and the
//! decision on each, written exactly once.
//!
//! A run asks (`request_approvals`), then logs its pause; a decision is
//! taken only while the run is `requires_action`, under the run's row lock,
//! and the decision that completes the set takes the run back to `running`
//! for the node that records it. A cancel and the timeout sweep take a
//! paused run the same way ([`Store::take_paused_run`]): one conditional
//! update decides which of them goes on with it.

use serde::Serialize;
use sqlx::Row;
use uuid::Uuid;

use super::{
    Backend, Run, RunStatus, Store, StoreError, now, query,
    runs::{from_row, run_columns},
};

/// A call a run asked its user about, and the decision once given.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Approval {
    /// The call's ID, as in its `tool.call`.
    pub call_id: String,
    /// The tool's name.
    pub name: String,
    /// The arguments (JSON; a string when the model wrote invalid JSON).
    pub arguments: serde_json::Value,
    /// The decision: true approved, false denied, null not given yet.
    pub approved: Option<bool>,
    /// The user's reason, if they gave one.
    pub reason: Option<String>,
    /// When the decision was recorded (UTC, RFC 3339).
    pub decided_at: Option<String>,
}

/// A call to ask about: its ID, tool name and arguments as JSON text.
#[derive(Debug, Clone)]
pub struct ApprovalRequest {
    /// The call's ID.
    pub call_id: String,
    /// The tool's name.
    pub name: String,
    /// The arguments, as the model wrote them.
    pub arguments: String,
}

/// A user's decision on one call.
#[derive(Debug, Clone)]
pub struct Decision {
    /// The call's ID.
    pub call_id: String,
    /// True to let the call run.
    pub approved: bool,
    /// Why, in the user's words (the model reads it for a denial).
    pub reason: Option<String>,
}

/// What recording a decision did.
#[derive(Debug)]
pub enum Decided {
    /// Recorded. `resumed` when it was the last one the run waited for: the
    /// run is `running` again, owned by the node that recorded it, which
    /// must drive it.
    Recorded {
        /// The run, as it stands after the decision.
        run: Run,
        /// Whether this decision took the run back to `running`.
        resumed: bool,
    },
    /// The same decision was recorded before: nothing changed.
    Unchanged(Run),
    /// No such run of the user's.
    RunNotFound,
    /// The run asked about no call with this ID.
    CallNotFound,
    /// The call has the other decision already.
    Conflicts(Run),
    /// The run is not waiting for decisions (it has not paused yet, goes on
    /// already, or has ended).
    NotWaiting(Run),
}

fn approval_of(row: &sqlx::any::AnyRow) -> Result<Approval, StoreError> {
    let arguments: String = row.try_get("arguments")?;
    let approved: Option<i64> = row.try_get("approved")?;
    Ok(Approval {
        call_id: row.try_get("call_id")?,
        name: row.try_get("name")?,
        arguments: serde_json::from_str(&arguments).unwrap_or(serde_json::Value::String(arguments)),
        approved: approved.map(|a| a != 0),
        reason: row.try_get("reason")?,
        decided_at: row.try_get("decided_at")?,
    })
}

impl Store {
    /// Records the calls a run is about to ask about, and when its wait
    /// runs out, before the run logs its pause. A call asked about already
    /// (the same run, again) keeps its row.
    #[tracing::instrument(skip_all, fields(run_id = %run_id))]
    pub async fn request_approvals(
        &self,
        run_id: Uuid,
        calls: &[ApprovalRequest],
        expires_at: &str,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        let at = now();
        for (position, call) in (0_i64..).zip(calls) {
            query(
                "INSERT INTO tool_approvals \
                 (run_id, call_id, position, name, arguments, requested_at) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (run_id, call_id) DO NOTHING",
            )
            .bind(run_id.to_string())
            .bind(&call.call_id)
            .bind(position)
            .bind(&call.name)
            .bind(&call.arguments)
            .bind(at.as_str())
            .execute(&mut *tx)
            .await?;
        }
        query("UPDATE runs SET expires_at = $2 WHERE id = $1")
            .bind(run_id.to_string())
            .bind(expires_at)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Every call the run asked about, in the order the model made them.
    pub async fn approvals(&self, run_id: Uuid) -> Result<Vec<Approval>, StoreError> {
        let rows = query(
            "SELECT call_id, name, arguments, approved, reason, decided_at FROM tool_approvals \
             WHERE run_id = $1 ORDER BY requested_at, position",
        )
        .bind(run_id.to_string())
        .fetch_all(&mut *self.acquire().await?)
        .await?;
        rows.iter().map(approval_of).collect()
    }

    /// Every call the conversation's runs asked about (call IDs are unique
    /// in a conversation).
    pub async fn conversation_approvals(
        &self,
        conversation_id: Uuid,
    ) -> Result<Vec<Approval>, StoreError> {
        let rows = query(
            "SELECT a.call_id, a.name, a.arguments, a.approved, a.reason, a.decided_at \
             FROM tool_approvals a JOIN runs r ON r.id = a.run_id \
             WHERE r.conversation_id = $1 ORDER BY a.run_id, a.requested_at, a.position",
        )
        .bind(conversation_id.to_string())
        .fetch_all(&mut *self.acquire().await?)
        .await?;
        rows.iter().map(approval_of).collect()
    }

    /// Records the user's decision on one call of their paused run, exactly
    /// once, under the run's row lock. The decision that leaves nothing
    /// undecided takes the run back to `running`, owned by `node`.
    #[tracing::instrument(skip_all, fields(run_id = %run_id))]
    pub async fn decide(
        &self,
        user_id: Uuid,
        run_id: Uuid,
        decision: &Decision,
        node: &str,
    ) -> Result<Decided, StoreError> {
        let mut tx = self.begin().await?;
        // SQLite's write lock is held already (BEGIN IMMEDIATE).
        let read = if self.backend == Backend::Postgres {
            concat!(
                "SELECT ",
                run_columns!(),
                " FROM runs WHERE id = $1 AND user_id = $2 FOR UPDATE"
            )
        } else {
            concat!(
                "SELECT ",
                run_columns!(),
                " FROM runs WHERE id = $1 AND user_id = $2"
            )
        };
        let row = query(read)
            .bind(run_id.to_string())
            .bind(user_id.to_string())
            .fetch_optional(&mut *tx)
            .await?;
        let Some(mut run) = row.as_ref().map(from_row).transpose()? else {
            return Ok(Decided::RunNotFound);
        };
        let row = query("SELECT approved FROM tool_approvals WHERE run_id = $1 AND call_id = $2")
            .bind(run_id.to_string())
            .bind(&decision.call_id)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(row) = row else {
            return Ok(Decided::CallNotFound);
        };
        match row.try_get::<Option<i64>, _>("approved")? {
            Some(approved) if (approved != 0) == decision.approved => {
                return Ok(Decided::Unchanged(run));
            }
            Some(_) => return Ok(Decided::Conflicts(run)),
            None if run.status != RunStatus::RequiresAction => {
                return Ok(Decided::NotWaiting(run));
            }
            None => {}
        }
        query(
            "UPDATE tool_approvals SET approved = $3, reason = $4, decided_at = $5 \
             WHERE run_id = $1 AND call_id = $2 AND approved IS NULL",
        )
        .bind(run_id.to_string())
        .bind(&decision.call_id)
        .bind(i64::from(decision.approved))
        .bind(decision.reason.as_deref())
        .bind(now())
        .execute(&mut *tx)
        .await?;
        let row = query(
            "SELECT COUNT(*) AS n FROM tool_approvals WHERE run_id = $1 AND approved IS NULL",
        )
        .bind(run_id.to_string())
        .fetch_one(&mut *tx)
        .await?;
        let resumed = row.try_get::<i64, _>("n")? == 0;
        if resumed {
            query(
                "UPDATE runs SET status = 'running', owner_node = $2, expires_at = NULL, \
                 cancel_requested_at = NULL WHERE id = $1 AND status = 'requires_action'",
            )
            .bind(run_id.to_string())
            .bind(node)
            .execute(&mut *tx)
            .await?;
            run.status = RunStatus::Running;
            run.expires_at = None;
        }
        tx.commit().await?;
        Ok(Decided::Recorded { run, resumed })
    }

    /// Takes a paused run back to `running`, owned by `node`, so that this
    /// node alone ends it (a cancel, the timeout) or drives it. None when it
    /// was not paused: another party took it first.
    pub async fn take_paused_run(
        &self,
        run_id: Uuid,
        node: &str,
    ) -> Result<Option<Run>, StoreError> {
        let mut tx = self.begin().await?;
        let row = query(concat!(
            "UPDATE runs SET status = 'running', owner_node = $2, expires_at = NULL \
             WHERE id = $1 AND status = 'requires_action' RETURNING ",
            run_columns!()
        ))
        .bind(run_id.to_string())
        .bind(node)
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        row.as_ref().map(from_row).transpose()
    }

    /// Paused runs whose wait ran out before `now`.
    pub async fn expired_paused_runs(&self, now: &str) -> Result<Vec<Run>, StoreError> {
        let rows = query(concat!(
            "SELECT ",
            run_columns!(),
            " FROM runs WHERE status = 'requires_action' AND expires_at < $1 ORDER BY id"
        ))
        .bind(now)
        .fetch_all(&mut *self.acquire().await?)
        .await?;
        rows.iter().map(from_row).collect()
    }
}

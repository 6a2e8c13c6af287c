//! Decisions on the tool calls a paused run asked about, and the ends of
//! paused runs: a cancel, and the sweep of those whose wait ran out.

use uuid::Uuid;

use super::{RunError, RunManager, drive::Begin};
use crate::{
    agent::Outcome,
    events::{ErrorCode, RunFailure},
    store::{Decided, Decision, Run, RunStatus, StoreError},
};

impl RunManager {
    /// Records the user's decision on one call of their paused run, exactly
    /// once. The decision that completes the set resumes the run here: its
    /// events go on in the same log. Returns the run as it stands after.
    ///
    /// Errors: no such run of the user's, or no such call of it (not
    /// found); the other decision recorded already, or the run not waiting
    /// (conflict); shutting down.
    #[tracing::instrument(skip_all, fields(run_id = %run_id, call_id = %decision.call_id))]
    pub async fn decide(
        &self,
        user_id: Uuid,
        run_id: Uuid,
        decision: Decision,
    ) -> Result<Run, RunError> {
        if !self
            .inner
            .accepting
            .load(std::sync::atomic::Ordering::Acquire)
        {
            return Err(RunError::ShuttingDown);
        }
        let decided = self
            .inner
            .store
            .decide(user_id, run_id, &decision, &self.inner.node.id)
            .await?;
        match decided {
            Decided::Recorded { run, resumed } => {
                tracing::info!(approved = decision.approved, resumed, "tool call decided");
                if resumed {
                    self.spawn(run.clone(), Begin::Resumed);
                }
                Ok(run)
            }
            Decided::Unchanged(run) => Ok(run),
            Decided::RunNotFound => Err(RunError::RunNotFound),
            Decided::CallNotFound => Err(RunError::CallNotFound(decision.call_id)),
            Decided::Conflicts(_) => Err(RunError::DecidedOtherwise(decision.call_id)),
            Decided::NotWaiting(run) => Err(RunError::NotWaiting(run.status)),
        }
    }

    /// Cancels a paused run: takes it (so no decision resumes it meanwhile)
    /// and ends it `cancelled`. A run a decision resumed first is cancelled
    /// as a running one.
    pub(super) async fn cancel_paused(&self, run: &Run) -> Result<(), StoreError> {
        let store = &self.inner.store;
        match store.take_paused_run(run.id, &self.inner.node.id).await? {
            Some(taken) => {
                self.end_unstarted(&taken, Outcome::status(RunStatus::Cancelled))
                    .await?;
                self.start_next(taken.conversation_id).await;
            }
            None => {
                if !self.stop_local(run.id, RunStatus::Cancelled) {
                    self.cancel_elsewhere(run.id).await?;
                }
            }
        }
        Ok(())
    }

    /// Ends `expired` each paused run whose wait ran out, wherever it paused.
    pub(super) async fn expire_paused_runs(&self) -> Result<(), StoreError> {
        let store = &self.inner.store;
        for run in store.expired_paused_runs(&crate::store::now()).await? {
            let Some(taken) = store.take_paused_run(run.id, &self.inner.node.id).await? else {
                // Decided or cancelled a moment ago.
                continue;
            };
            let message = format!(
                "no decision on the tool calls the run asked about came before {}",
                run.expires_at.as_deref().unwrap_or("its deadline")
            );
            tracing::info!(run_id = %run.id, "{message}: the run ends expired");
            let outcome = Outcome {
                error: Some(RunFailure {
                    code: ErrorCode::ApprovalTimeout,
                    message,
                }),
                ..Outcome::status(RunStatus::Expired)
            };
            self.end_unstarted(&taken, outcome).await?;
            self.start_next(taken.conversation_id).await;
        }
        Ok(())
    }
}

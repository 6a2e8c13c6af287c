//! Ending runs that have no task: runs left open by a crash, queued runs at
//! shutdown, and the drain that lets running runs finish first.

use std::{sync::atomic::Ordering, time::Duration};

use super::{Emitter, LogError, RunManager, STOP_GRACE};
use crate::{
    agent::Outcome,
    store::{Run, RunStatus, StoreError},
};

impl RunManager {
    /// Ends a run that has no task (queued, paused and taken, or left open
    /// by a crash): its streaming messages keep their text and its log gets
    /// the outcome's `error`, if any, and a final `done`.
    pub(super) async fn end_unstarted(
        &self,
        run: &Run,
        outcome: Outcome,
    ) -> Result<(), StoreError> {
        let store = &self.inner.store;
        let events = store.events_after(run.id, 0, u32::MAX).await?;
        let last_seq = events.last().map_or(0, |e| e.seq);
        store.keep_partial_reply(run.id, &events).await?;
        let mut emitter = Emitter::new(run, last_seq, i64::MAX, self.inner.log.clone());
        match emitter.finish(outcome.status, &outcome).await {
            Ok(()) | Err(LogError::AlreadyEnded) => Ok(()),
            Err(e) => Err(StoreError::Corrupt(e.to_string())),
        }
    }

    /// Marks every run left open by a previous process `interrupted`, with a
    /// final `done`, so a client resuming one gets a clean end.
    #[tracing::instrument(skip_all)]
    pub async fn recover(&self) -> Result<usize, StoreError> {
        let open = self.inner.store.open_runs().await?;
        // On SQLite this is the only node (the file lock sees to it), so
        // every open run was left by a crash. On PostgreSQL other nodes may
        // be driving theirs: only this node's own are taken here (a restart
        // with the same --node-id), the rest by the lease sweep.
        let open: Vec<Run> = if self.inner.store.single_node() {
            open
        } else {
            let mine = self.inner.store.runs_owned_by(&self.inner.node.id).await?;
            open.into_iter()
                .filter(|run| mine.contains(&run.id))
                .collect()
        };
        for run in &open {
            self.end_unstarted(run, Outcome::status(RunStatus::Interrupted))
                .await?;
        }
        if !open.is_empty() {
            tracing::info!(
                runs = open.len(),
                "marked runs left open by a previous process as interrupted"
            );
        }
        Ok(open.len())
    }

    /// Stops starting runs, gives running ones `drain` to finish, then stops
    /// the rest as `interrupted` and ends queued ones the same way.
    #[tracing::instrument(skip_all)]
    pub async fn drain(&self, drain: Duration) {
        self.inner.accepting.store(false, Ordering::Release);
        self.inner.tracker.close();
        if tokio::time::timeout(drain, self.inner.tracker.wait())
            .await
            .is_err()
        {
            let active: Vec<_> = self.active().values().cloned().collect();
            tracing::info!(
                runs = active.len(),
                "drain time is up: interrupting the runs still going"
            );
            for run in active {
                run.control.stop(RunStatus::Interrupted);
            }
            if tokio::time::timeout(STOP_GRACE, self.inner.tracker.wait())
                .await
                .is_err()
            {
                tracing::error!("runs did not stop within {STOP_GRACE:?} of being interrupted");
            }
        }
        // Queued runs wait for whichever node ends the run ahead of them; on
        // SQLite there is no other node, so they end here.
        if !self.inner.store.single_node() {
            return;
        }
        match self.inner.store.open_runs().await {
            Ok(open) => {
                for run in open.iter().filter(|run| run.status == RunStatus::Queued) {
                    crate::telemetry::metrics::run_dequeued();
                    if let Err(error) = self
                        .end_unstarted(run, Outcome::status(RunStatus::Interrupted))
                        .await
                    {
                        tracing::error!(%error, run_id = %run.id, "could not end a queued run");
                    }
                }
            }
            Err(error) => tracing::error!(%error, "could not list queued runs at shutdown"),
        }
    }
}

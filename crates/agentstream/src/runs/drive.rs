//! Driving a run: its task runs the agent loop, then writes its end, then
//! starts the next queued run of its conversation.

use std::{
    panic::AssertUnwindSafe,
    sync::{Arc, atomic::Ordering},
};

use futures_util::FutureExt;
use tracing::Instrument;
use uuid::Uuid;

use super::{
    ActiveRun, Emitter, Event, FINISH_RETRY_FIRST, FINISH_RETRY_MAX, LogError, RunManager,
};
use crate::{
    agent::{self, Outcome, RunControl},
    events::{ErrorCode, RunFailure},
    store::{self, Message, Run, RunStatus, StoreError},
    tools::ToolContext,
};

/// Where a run's task takes it up.
#[derive(Debug)]
pub(super) enum Begin {
    /// A run just stored with its `run.started`, and its conversation as the
    /// transaction that stored it read it.
    Started(Vec<Message>),
    /// A queued run starting now: it reads its conversation and logs its
    /// `run.started` itself.
    Queued,
    /// A run that paused for approval and has its decisions: its log goes
    /// on after its `done {status: "requires_action"}`.
    Resumed,
}

impl RunManager {
    /// Drives the run on a task of its own, from where `begin` says.
    pub(super) fn spawn(&self, run: Run, begin: Begin) {
        let Some(agent) = self.inner.agents.get(&run.agent) else {
            tracing::error!(run_id = %run.id, agent = %run.agent, "run names an unknown agent");
            return;
        };
        let active = Arc::new(ActiveRun {
            control: RunControl::default(),
            on_disconnect: run.on_disconnect,
        });
        self.active().insert(run.id, active.clone());
        if matches!(begin, Begin::Resumed) {
            // Its channel closed with its pause; subscribers waiting here
            // for it to go on join the new one.
            drop(self.inner.hub.reopen(run.id));
        }
        crate::telemetry::metrics::run_started();
        let manager = self.clone();
        // A root span: a run outlives the request that started it, and keeps
        // no request's span alive.
        let span = tracing::info_span!(
            parent: None,
            "run",
            run_id = %run.id,
            conversation_id = %run.conversation_id,
            user_id = %run.user_id,
            agent = %run.agent,
        );
        self.inner.tracker.spawn_on(
            async move {
                let conversation_id = run.conversation_id;
                manager.drive(run, begin, &agent, &active.control).await;
                manager.start_next(conversation_id).await;
            }
            .instrument(span),
            &self.inner.runtime,
        );
    }

    /// The run's task: the agent loop, then the final events.
    async fn drive(&self, run: Run, begin: Begin, agent: &agent::Agent, control: &RunControl) {
        let store = &self.inner.store;
        let (last_seq, history, resumed) = match begin {
            Begin::Started(history) => (1, Some(history), false),
            Begin::Queued => (0, None, false),
            Begin::Resumed => (run.last_seq, None, true),
        };
        let mut emitter = Emitter::new(
            &run,
            last_seq,
            self.inner.limits.events_per_run,
            self.inner.log.clone(),
        );
        let ctx = ToolContext {
            user_id: run.user_id,
            conversation_id: run.conversation_id,
            run_id: run.id,
            caller: Arc::new(
                run.caller
                    .as_deref()
                    .and_then(|caller| serde_json::from_str(caller).ok())
                    .unwrap_or_default(),
            ),
        };
        let started = if last_seq > 0 {
            Ok(())
        } else {
            emitter
                .emit(Event::RunStarted {
                    conversation_id: run.conversation_id,
                })
                .await
        };
        let outcome = match started {
            Ok(()) => AssertUnwindSafe(agent::run(
                agent,
                store,
                ctx,
                history,
                resumed,
                &mut emitter,
                control,
            ))
            .catch_unwind()
            .await
            .unwrap_or_else(|_| {
                Outcome::failed(ErrorCode::Internal, "the run stopped on an internal error")
            }),
            Err(e) => Outcome::failed(e.code(), e.to_string()),
        };
        if let Some(RunFailure { code, message }) = &outcome.error {
            // `reason`, not `message`: that name is the log line's own.
            tracing::warn!(
                run_id = %run.id,
                code = code.as_str(),
                reason = message.as_str(),
                detail = outcome.detail.as_deref().unwrap_or_default(),
                "run failed"
            );
        }
        let mut ended = emitter.finish(outcome.status, &outcome).await;
        if matches!(ended, Err(LogError::Store(_) | LogError::Closed)) {
            // Subscribers learn now that the end is not stored; the run keeps
            // trying to store it, so it does not stay open once the database
            // is back.
            self.inner.hub.abort(run.id);
            let mut pause = FINISH_RETRY_FIRST;
            while let Err(LogError::Store(error)) = &ended {
                if !self.inner.accepting.load(Ordering::Acquire) {
                    break;
                }
                tracing::warn!(run_id = %run.id, %error, "could not store the run's end; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(FINISH_RETRY_MAX);
                ended = emitter.finish(outcome.status, &outcome).await;
            }
        }
        if let Err(error) = ended
            && !matches!(error, LogError::AlreadyEnded)
        {
            tracing::error!(
                %error,
                run_id = %run.id,
                "could not store the run's end; the next start marks it interrupted"
            );
        }
        self.active().remove(&run.id);
    }

    /// Starts the conversation's oldest queued run if none is running. Both
    /// a run that ends and a run that is queued call this after their
    /// commit, so whichever commits last sees the other's: no queued run is
    /// left waiting behind a run that has ended.
    pub(super) async fn start_next(&self, conversation_id: Uuid) {
        if !self.inner.accepting.load(Ordering::Acquire) {
            return;
        }
        // Most conversations have nothing queued: one read, no transaction.
        match self.inner.store.has_queued_run(conversation_id).await {
            Ok(true) => {}
            Ok(false) => return,
            Err(error) => {
                tracing::error!(%error, %conversation_id, "could not look for a queued run");
                return;
            }
        }
        let next = async {
            let mut tx = self.inner.store.begin().await?;
            store::lock_conversation(&mut tx, conversation_id).await?;
            let runs = store::active_runs(&mut tx, conversation_id).await?;
            // A paused run holds the conversation's turn too.
            let next = match runs
                .iter()
                .find(|run| matches!(run.status, RunStatus::Running | RunStatus::RequiresAction))
            {
                Some(_) => None,
                None => runs.into_iter().find(|run| run.status == RunStatus::Queued),
            };
            if let Some(run) = &next {
                store::start_queued_run(&mut tx, run.id, &self.inner.node.id).await?;
            }
            tx.commit().await?;
            Ok::<_, StoreError>(next)
        };
        match next.await {
            Ok(Some(mut run)) => {
                crate::telemetry::metrics::run_dequeued();
                run.status = RunStatus::Running;
                self.spawn(run, Begin::Queued);
            }
            Ok(None) => {}
            // Another node started it first.
            Err(StoreError::Conflict(_)) => {}
            Err(error) => {
                tracing::error!(%error, %conversation_id, "could not start the next queued run")
            }
        }
    }
}

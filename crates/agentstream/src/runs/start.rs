//! Starting a run (one short transaction stores it, the user's message and
//! its first event) and cancelling one, wherever it runs.

use std::sync::atomic::Ordering;

use uuid::Uuid;

use super::drive::Begin;
use super::{ConversationRef, Event, Multitask, RunError, RunManager, StartRun, Started};
use crate::agent::Outcome;
use crate::store::{
    self, ConversationKind, MessageStatus, NewMessage, NewRun, Role, Run, RunRows, RunStatus,
    StoreError,
};

impl RunManager {
    /// Starts a run on the user's conversation (or a new one): stores the
    /// user's message and the run in one short transaction, then spawns the
    /// run's task. Runs on the database thread, to its end even if the
    /// caller goes away: a run stored is a run driven.
    #[tracing::instrument(skip_all, fields(user_id = %user_id))]
    pub async fn start(
        &self,
        user_id: Uuid,
        conversation: ConversationRef,
        request: StartRun,
    ) -> Result<Started, RunError> {
        let manager = self.clone();
        self.inner
            .store
            .on_db(async move { manager.start_here(user_id, conversation, request).await })
            .await
    }

    async fn start_here(
        &self,
        user_id: Uuid,
        conversation: ConversationRef,
        mut request: StartRun,
    ) -> Result<Started, RunError> {
        // Stored alike on both databases (see `crate::text`).
        request.input = crate::text::clean_string(request.input);
        request.client_message_id = request.client_message_id.map(crate::text::clean_string);
        if !self.inner.accepting.load(Ordering::Acquire) {
            return Err(RunError::ShuttingDown);
        }
        let active_here = self.active_count();
        if active_here >= self.inner.limits.active {
            return Err(RunError::Overloaded(active_here));
        }
        let limit = i64::from(self.inner.limits.per_user);
        let (mut tx, user_locked) = self.inner.store.begin_start(user_id, limit).await?;
        let mut new_conversation = !matches!(
            conversation,
            ConversationRef::Existing { .. } | ConversationRef::Chat { .. }
        );
        let mut prior = Vec::new();
        // A conversation this run starts with no history is stored with it.
        let mut unstored = false;
        // An untitled conversation is named after its first message: a
        // client's history's first, or this one.
        let first = match &conversation {
            ConversationRef::NewWith { history, .. } => history
                .iter()
                .find(|m| m.role == Role::User && !m.content.trim().is_empty())
                .map(|m| m.content.as_str()),
            _ => None,
        };
        let title = crate::text::title_from(first.unwrap_or(&request.input));
        let title = title.as_deref();
        let conversation = match conversation {
            ConversationRef::Existing { id, kind } => {
                let conversation = store::conversation_for_update(&mut tx, user_id, id, title)
                    .await?
                    .ok_or(RunError::ConversationNotFound)?;
                if let Some(expected) = kind
                    && conversation.kind != expected
                {
                    return Err(RunError::WrongKind {
                        found: conversation.kind,
                        expected,
                    });
                }
                conversation
            }
            ConversationRef::New(kind) => {
                unstored = true;
                store::new_conversation(user_id, kind, kind.as_str(), title)
            }
            ConversationRef::NewWith {
                agent,
                kind,
                history,
            } => {
                let conversation =
                    store::insert_conversation(&mut tx, user_id, kind, &agent, title).await?;
                // Stored before the run, so their IDs (UUID v7) put them
                // before the run's messages in the transcript.
                for message in history {
                    let content = crate::text::clean_string(message.content);
                    let mut tool_calls = message.tool_calls;
                    if let Some(calls) = tool_calls.as_mut() {
                        crate::text::clean_json(calls);
                    }
                    let tool_call_id = message.tool_call_id.map(crate::text::clean_string);
                    let stored = store::insert_message(
                        &mut tx,
                        NewMessage {
                            conversation_id: conversation.id,
                            run_id: None,
                            role: message.role,
                            content: &content,
                            tool_calls: tool_calls.as_ref(),
                            tool_call_id: tool_call_id.as_deref(),
                            status: MessageStatus::Complete,
                        },
                    )
                    .await?;
                    prior.push(stored);
                }
                conversation
            }
            ConversationRef::Chat { chat_id, agent } => {
                let found = match store::chat_for_update(&mut tx, user_id, &chat_id, title).await? {
                    Some(found) => Some(found),
                    None => {
                        let agent = agent.as_deref().unwrap_or(ConversationKind::Chat.as_str());
                        let kind = ConversationKind::of_agent(agent);
                        let created = store::insert_chat_conversation(
                            &mut tx, user_id, kind, agent, &chat_id, title,
                        )
                        .await?;
                        new_conversation = created.is_some();
                        match created {
                            Some(created) => Some(created),
                            // A concurrent request created it first.
                            None => {
                                store::chat_for_update(&mut tx, user_id, &chat_id, title).await?
                            }
                        }
                    }
                };
                let conversation = found.ok_or(RunError::ConversationNotFound)?;
                if let Some(expected) = agent
                    && conversation.agent != expected
                {
                    return Err(RunError::WrongAgent {
                        found: conversation.agent,
                        expected,
                    });
                }
                conversation
            }
        };
        let agent_name = conversation.agent.as_str();
        if self.inner.agents.get(agent_name).is_none() {
            return Err(RunError::NoAgent(agent_name.to_owned()));
        }
        if let Some(key) = &request.client_message_id
            && let Some(run) =
                store::run_by_client_message_id(&mut tx, conversation.id, key).await?
        {
            // A retry sends the same message; another message under the same
            // key is the client's mistake, not a retry.
            let input = store::run_input(&mut tx, run.id).await?;
            tx.rollback().await.map_err(StoreError::from)?;
            if input.is_some_and(|stored| stored != request.input) {
                return Err(RunError::KeyReused(run.id));
            }
            return Ok(Started {
                run,
                conversation,
                created: false,
                live: None,
            });
        }
        // A conversation created here has no runs, and only this message.
        let active = if new_conversation {
            Vec::new()
        } else {
            store::active_runs(&mut tx, conversation.id).await?
        };
        if let Some(replace) = request.replaces {
            // Only the last run's answer, once it has ended, is retried.
            let last = store::last_run_id(&mut tx, conversation.id).await?;
            if last != Some(replace.run_id) || !active.is_empty() {
                return Err(RunError::NotLast(last.unwrap_or(replace.run_id)));
            }
            store::supersede(&mut tx, conversation.id, replace.run_id, replace.question).await?;
        }
        let status = match (active.first(), request.multitask) {
            (None, _) => RunStatus::Running,
            (Some(run), Multitask::Reject) => return Err(RunError::Busy(run.id)),
            (Some(_), Multitask::Enqueue | Multitask::Interrupt) => RunStatus::Queued,
        };
        // A name and claims: serializing them cannot fail.
        let caller = serde_json::to_string(&request.caller).ok();
        let new_run = NewRun {
            conversation_id: conversation.id,
            user_id: conversation.user_id,
            agent: agent_name,
            status,
            client_message_id: request.client_message_id.as_deref(),
            on_disconnect: request.on_disconnect,
            owner_node: (status == RunStatus::Running).then_some(self.inner.node.id.as_str()),
            caller: caller.as_deref(),
        };
        let mut run = store::new_run(&new_run);
        // A retry answers the question it retries: it has none of its own.
        let retry = request.replaces.is_some_and(|replace| !replace.question);
        let message = (!retry).then(|| {
            store::new_message(NewMessage {
                conversation_id: conversation.id,
                run_id: Some(run.id),
                role: Role::User,
                content: &request.input,
                tool_calls: None,
                tool_call_id: None,
                status: MessageStatus::Complete,
            })
        });
        // A run that starts now is stored with its first event: a client
        // hears `run.started` as soon as the run is stored. No other node
        // needs telling: none knows of this run before this commit, and
        // each reads the store first.
        let started = (status == RunStatus::Running).then(|| {
            Event::RunStarted {
                conversation_id: conversation.id,
            }
            .to_stored(run.id, 1)
        });
        // The user's runs, the new one included, counted with it (under
        // the user's row lock on PostgreSQL when the count could be near
        // the limit: the limit holds across nodes, and the lock is held
        // only to the commit).
        let stored = store::insert_run_rows(
            &mut tx,
            RunRows {
                conversation: unstored.then_some(&conversation),
                run: &run,
                owner_node: new_run.owner_node,
                message: message.as_ref(),
                started: started.as_ref(),
            },
            limit,
            user_locked,
        )
        .await?;
        if let Some(max_connections) = stored.max_connections {
            self.inner.store.remember_max_connections(max_connections);
        }
        if stored.users_runs > limit {
            return Err(RunError::TooManyRuns(self.inner.limits.per_user));
        }
        run.event_key = stored.event_key;
        // A run that starts now reads its conversation here rather than on a
        // connection of its own.
        let first = match started {
            Some(started) => {
                let history = if new_conversation {
                    prior.extend(message);
                    prior
                } else {
                    store::messages(&mut tx, conversation.id, None).await?
                };
                Some((history, started))
            }
            None => None,
        };
        match tx.commit().await {
            Ok(()) => {}
            // A concurrent start on another connection won the race.
            Err(e) => {
                return match StoreError::from(e) {
                    StoreError::Conflict(_) => {
                        Err(RunError::Busy(active.first().map_or(run.id, |r| r.id)))
                    }
                    e => Err(e.into()),
                };
            }
        }
        // Joined before the run's first event is delivered, so this channel
        // carries every event of the run: its first subscriber needs no read
        // of the store.
        let live = self.inner.hub.open(run.id);
        let history = first.map(|(history, started)| {
            crate::telemetry::metrics::events_committed(1);
            self.inner.hub.publish([started]);
            history
        });
        if status == RunStatus::Queued {
            crate::telemetry::metrics::run_queued();
        }
        if request.multitask == Multitask::Interrupt {
            // The running or paused run is cancelled; runs queued behind it
            // keep their turn.
            for other in active
                .iter()
                .filter(|r| matches!(r.status, RunStatus::Running | RunStatus::RequiresAction))
            {
                self.request_cancel(other).await?;
            }
        }
        match history {
            Some(history) => self.spawn(run.clone(), Begin::Started(history)),
            // Queued: the run ahead may have ended before this one was
            // stored, and then did not see it. Whoever looks after both
            // commits starts it.
            None => self.start_next(conversation.id).await,
        }
        Ok(Started {
            run,
            conversation,
            created: true,
            live: Some(live),
        })
    }

    /// Cancels the user's run. Idempotent: an ended run is returned as it is.
    /// A running run stops at its next safe point.
    #[tracing::instrument(skip_all, fields(run_id = %run_id))]
    pub async fn cancel(&self, user_id: Uuid, run_id: Uuid) -> Result<Run, RunError> {
        let run = self
            .inner
            .store
            .run(user_id, run_id)
            .await?
            .ok_or(RunError::RunNotFound)?;
        if run.status.is_terminal() {
            return Ok(run);
        }
        self.request_cancel(&run).await?;
        Ok(run)
    }

    /// Asks the node that drives a running run to cancel it: recorded for
    /// its next heartbeat, and told at once by a notification.
    pub(super) async fn cancel_elsewhere(&self, run_id: Uuid) -> Result<(), StoreError> {
        if self.inner.store.request_cancel(run_id).await? {
            self.inner.store.notify_cancel(run_id).await?;
        }
        Ok(())
    }

    /// Cancels a run wherever it is: here, on the node that drives it (told
    /// by a notification, and by the database at its next heartbeat), or
    /// still queued.
    pub(super) async fn request_cancel(&self, run: &Run) -> Result<(), StoreError> {
        if self.stop_local(run.id, RunStatus::Cancelled) {
            return Ok(());
        }
        match run.status {
            RunStatus::Queued => {
                self.end_unstarted(run, Outcome::status(RunStatus::Cancelled))
                    .await?;
                crate::telemetry::metrics::run_dequeued();
                Ok(())
            }
            RunStatus::Running => self.cancel_elsewhere(run.id).await,
            RunStatus::RequiresAction => self.cancel_paused(run).await,
            _ => Ok(()),
        }
    }
}

//! Runs: the manager that starts, stops, drains and recovers them, and the
//! task that drives each one. A run is not a request: it belongs to the
//! manager, and HTTP responses only subscribe to its events.

mod event;
mod hub;
mod log;
mod subscription;

use std::{
    collections::HashMap,
    panic::AssertUnwindSafe,
    sync::{
        Arc, Mutex, OnceLock, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use futures_util::FutureExt;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use uuid::Uuid;

pub use event::Event;
pub use hub::Hub;
pub use log::{EventLog, Finish, LogError};
pub use subscription::Delivery;

use crate::{
    agent::{self, Agents, Outcome},
    store::{
        self, Conversation, MessageStatus, NewMessage, NewRun, OnDisconnect, Role, Run, RunStatus,
        Store, StoreError, text_enum,
    },
    tools::ToolContext,
};

text_enum! {
    /// What a new run does when its conversation already has an active one.
    pub enum Multitask {
        /// Refuse with 409 (the default).
        Reject = "reject",
        /// Wait, and start when the active run ends.
        Enqueue = "enqueue",
        /// Cancel the active run, then start.
        Interrupt = "interrupt",
    }
}

/// Pauses between attempts to store a run's end while the database is away.
const FINISH_RETRY_FIRST: Duration = Duration::from_millis(500);
const FINISH_RETRY_MAX: Duration = Duration::from_secs(5);

/// How long stopped runs get to write their final events during shutdown.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Stops a run at its next safe point, remembering why.
#[derive(Debug, Default)]
pub struct RunControl {
    token: CancellationToken,
    reason: OnceLock<RunStatus>,
}

impl RunControl {
    /// Asks the run to stop with `status`; the first reason given wins.
    pub fn stop(&self, status: RunStatus) {
        let _ = self.reason.set(status);
        self.token.cancel();
    }

    /// The status the run was asked to stop with, if it was.
    pub fn stopped(&self) -> Option<RunStatus> {
        self.reason.get().copied()
    }

    /// Resolves once the run is asked to stop.
    pub async fn cancelled(&self) {
        self.token.cancelled().await;
    }
}

/// Gives a run's events their `seq` and queues them on the log.
#[derive(Debug)]
pub struct Emitter {
    run_id: Uuid,
    seq: i64,
    /// Most events the run may have, its final `error` and `done` included.
    max_events: i64,
    log: EventLog,
}

impl Emitter {
    fn new(run_id: Uuid, last_seq: i64, max_events: i64, log: EventLog) -> Emitter {
        Emitter {
            run_id,
            seq: last_seq,
            max_events,
            log,
        }
    }

    /// Queues the run's next event; refused once only the final `error` and
    /// `done` still fit under the limit.
    pub async fn emit(&mut self, event: Event) -> Result<(), LogError> {
        if self.seq + 2 >= self.max_events {
            return Err(LogError::TooManyEvents(self.max_events));
        }
        self.push(event).await
    }

    async fn push(&mut self, event: Event) -> Result<(), LogError> {
        self.seq += 1;
        self.log
            .append(event.to_stored(self.run_id, self.seq))
            .await
    }

    /// Writes the run's `done` with its final state, and waits for the commit.
    async fn finish(&mut self, status: RunStatus, outcome: &Outcome) -> Result<(), LogError> {
        self.log.forget_failures(self.run_id);
        if let Some((code, message)) = &outcome.error {
            self.push(Event::Error {
                code: code.clone(),
                message: message.clone(),
            })
            .await?;
        }
        self.seq += 1;
        let done = Event::Done {
            status,
            usage: outcome.usage,
        };
        let finish = Finish {
            status,
            error: outcome
                .error
                .as_ref()
                .map(|(code, message)| serde_json::json!({ "code": code, "message": message })),
            usage: outcome.usage.and_then(|u| serde_json::to_value(u).ok()),
            message_status: match status {
                RunStatus::Completed => MessageStatus::Complete,
                RunStatus::Cancelled => MessageStatus::Cancelled,
                RunStatus::Failed => MessageStatus::Failed,
                _ => MessageStatus::Interrupted,
            },
        };
        self.log
            .finish(done.to_stored(self.run_id, self.seq), finish)
            .await
    }
}

/// What a client asks for when it starts a run.
#[derive(Debug, Clone)]
pub struct StartRun {
    /// The user's message.
    pub input: String,
    /// The client's idempotency key: the same key returns the same run.
    pub client_message_id: Option<String>,
    /// What a disconnect does to the run.
    pub on_disconnect: OnDisconnect,
    /// What to do when the conversation already has an active run.
    pub multitask: Multitask,
}

/// A run that was started, or found by its client message ID.
#[derive(Debug, Clone)]
pub struct Started {
    /// The run.
    pub run: Run,
    /// False when `client_message_id` matched an existing run.
    pub created: bool,
}

/// Why a run could not be started or found.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// No such conversation or run, or not the caller's.
    #[error("not found")]
    NotFound,
    /// The conversation has an active run and the policy is `reject`.
    #[error("the conversation already has an active run ({0})")]
    Busy(Uuid),
    /// The server is shutting down.
    #[error("the server is shutting down")]
    ShuttingDown,
    /// The user has as many active runs as allowed.
    #[error("you have {0} active runs, the most allowed; wait for one to end")]
    TooManyRuns(u32),
    /// This node drives as many runs as allowed.
    #[error("the server is running as many runs as it may ({0}); try again shortly")]
    Overloaded(usize),
    /// No agent answers this kind of conversation.
    #[error("no agent is configured for {0:?} conversations")]
    NoAgent(String),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Starts, stops, drains and recovers runs. Cheap to clone.
#[derive(Debug, Clone)]
pub struct RunManager {
    inner: Arc<Inner>,
}

/// Limits on runs.
#[derive(Debug, Clone, Copy)]
pub struct RunLimits {
    /// Queued and running runs one user may have, across nodes.
    pub per_user: u32,
    /// Runs this node drives at once.
    pub active: usize,
    /// Events one run may emit, its final `error` and `done` included.
    pub events_per_run: i64,
}

#[derive(Debug)]
struct Inner {
    store: Store,
    limits: RunLimits,
    log: EventLog,
    hub: Arc<Hub>,
    agents: Agents,
    /// Every run task; shutdown waits on it.
    tracker: TaskTracker,
    /// The runs this node is driving.
    active: Mutex<HashMap<Uuid, Arc<ActiveRun>>>,
    /// Cleared when shutdown begins: no new run starts.
    accepting: AtomicBool,
}

#[derive(Debug)]
struct ActiveRun {
    control: RunControl,
    on_disconnect: OnDisconnect,
}

impl RunManager {
    /// A manager whose runs use `agents` and write through `log`.
    pub fn new(
        store: Store,
        log: EventLog,
        hub: Arc<Hub>,
        agents: Agents,
        limits: RunLimits,
    ) -> RunManager {
        RunManager {
            inner: Arc::new(Inner {
                store,
                limits,
                log,
                hub,
                agents,
                tracker: TaskTracker::new(),
                active: Mutex::new(HashMap::new()),
                accepting: AtomicBool::new(true),
            }),
        }
    }

    fn active(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Arc<ActiveRun>>> {
        self.inner
            .active
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// How many runs this node is driving.
    pub fn active_count(&self) -> usize {
        self.active().len()
    }

    /// Starts a run on the user's conversation: stores the user's message and
    /// the run in one short transaction, then spawns the run's task.
    #[tracing::instrument(skip_all, fields(conversation_id = %conversation.id))]
    pub async fn start(
        &self,
        conversation: &Conversation,
        request: StartRun,
    ) -> Result<Started, RunError> {
        if !self.inner.accepting.load(Ordering::Acquire) {
            return Err(RunError::ShuttingDown);
        }
        let agent_name = conversation.kind.as_str();
        if self.inner.agents.get(agent_name).is_none() {
            return Err(RunError::NoAgent(agent_name.to_owned()));
        }
        let active_here = self.active_count();
        if active_here >= self.inner.limits.active {
            return Err(RunError::Overloaded(active_here));
        }
        let mut tx = self.inner.store.begin().await?;
        let Some(conversation) =
            store::conversation_for_update(&mut tx, conversation.user_id, conversation.id).await?
        else {
            return Err(RunError::NotFound);
        };
        if let Some(key) = &request.client_message_id {
            if let Some(run) =
                store::run_by_client_message_id(&mut tx, conversation.id, key).await?
            {
                tx.rollback().await.map_err(StoreError::from)?;
                return Ok(Started {
                    run,
                    created: false,
                });
            }
        }
        // Counted under the user's row lock, so the limit holds across nodes.
        let users_runs = store::lock_user_active_runs(&mut tx, conversation.user_id).await?;
        if users_runs >= i64::from(self.inner.limits.per_user) {
            return Err(RunError::TooManyRuns(self.inner.limits.per_user));
        }
        let active = store::active_runs(&mut tx, conversation.id).await?;
        let status = match (active.first(), request.multitask) {
            (None, _) => RunStatus::Running,
            (Some(run), Multitask::Reject) => return Err(RunError::Busy(run.id)),
            (Some(_), Multitask::Enqueue | Multitask::Interrupt) => RunStatus::Queued,
        };
        let run = store::insert_run(
            &mut tx,
            NewRun {
                conversation_id: conversation.id,
                user_id: conversation.user_id,
                agent: agent_name,
                status,
                client_message_id: request.client_message_id.as_deref(),
                on_disconnect: request.on_disconnect,
            },
        )
        .await?;
        store::insert_message(
            &mut tx,
            NewMessage {
                conversation_id: conversation.id,
                run_id: Some(run.id),
                role: Role::User,
                content: &request.input,
                tool_calls: None,
                tool_call_id: None,
                status: MessageStatus::Complete,
            },
        )
        .await?;
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
        self.inner.hub.open(run.id);
        if request.multitask == Multitask::Interrupt {
            for other in &active {
                self.stop_local(other.id, RunStatus::Cancelled);
            }
        }
        if status == RunStatus::Running {
            self.spawn(run.clone());
        }
        Ok(Started { run, created: true })
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
            .ok_or(RunError::NotFound)?;
        if run.status.is_terminal() {
            return Ok(run);
        }
        if !self.stop_local(run.id, RunStatus::Cancelled) && run.status == RunStatus::Queued {
            self.end_unstarted(&run, RunStatus::Cancelled).await?;
        }
        Ok(run)
    }

    /// Stops a run this node drives; false if it drives no such run.
    fn stop_local(&self, run_id: Uuid, status: RunStatus) -> bool {
        let active = self.active().get(&run_id).cloned();
        active.map(|run| run.control.stop(status)).is_some()
    }

    /// Ends a run that has no task (queued, or left open by a crash): its
    /// streaming messages keep their text and its log gets a final `done`.
    async fn end_unstarted(&self, run: &Run, status: RunStatus) -> Result<(), StoreError> {
        let store = &self.inner.store;
        let events = store.events_after(run.id, 0, u32::MAX).await?;
        let last_seq = events.last().map_or(0, |e| e.seq);
        store.keep_partial_reply(run.id, &events).await?;
        let mut emitter = Emitter::new(run.id, last_seq, i64::MAX, self.inner.log.clone());
        let outcome = Outcome {
            status,
            error: None,
            usage: None,
        };
        match emitter.finish(status, &outcome).await {
            Ok(()) | Err(LogError::AlreadyEnded) => Ok(()),
            Err(e) => Err(StoreError::Corrupt(e.to_string())),
        }
    }

    /// Marks every run left open by a previous process `interrupted`, with a
    /// final `done`, so a client resuming one gets a clean end.
    #[tracing::instrument(skip_all)]
    pub async fn recover(&self) -> Result<usize, StoreError> {
        let open = self.inner.store.open_runs().await?;
        for run in &open {
            self.end_unstarted(run, RunStatus::Interrupted).await?;
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
        match self.inner.store.open_runs().await {
            Ok(open) => {
                for run in open.iter().filter(|run| run.status == RunStatus::Queued) {
                    if let Err(error) = self.end_unstarted(run, RunStatus::Interrupted).await {
                        tracing::error!(%error, run_id = %run.id, "could not end a queued run");
                    }
                }
            }
            Err(error) => tracing::error!(%error, "could not list queued runs at shutdown"),
        }
    }

    fn spawn(&self, run: Run) {
        let Some(agent) = self.inner.agents.get(&run.agent) else {
            tracing::error!(run_id = %run.id, agent = %run.agent, "run names an unknown agent");
            return;
        };
        let active = Arc::new(ActiveRun {
            control: RunControl::default(),
            on_disconnect: run.on_disconnect,
        });
        self.active().insert(run.id, active.clone());
        let manager = self.clone();
        self.inner.tracker.spawn(async move {
            let conversation_id = run.conversation_id;
            manager.drive(run, &agent, &active.control).await;
            manager.start_next(conversation_id).await;
        });
    }

    /// The run's task: the agent loop, then the final events.
    async fn drive(&self, run: Run, agent: &agent::Agent, control: &RunControl) {
        let store = &self.inner.store;
        let mut emitter = Emitter::new(
            run.id,
            0,
            self.inner.limits.events_per_run,
            self.inner.log.clone(),
        );
        let ctx = ToolContext {
            user_id: run.user_id,
            conversation_id: run.conversation_id,
            run_id: run.id,
        };
        let outcome = match emitter
            .emit(Event::RunStarted {
                conversation_id: run.conversation_id,
            })
            .await
        {
            Ok(()) => AssertUnwindSafe(agent::run(agent, store, ctx, &mut emitter, control))
                .catch_unwind()
                .await
                .unwrap_or_else(|_| Outcome {
                    status: RunStatus::Failed,
                    error: Some((
                        "internal".to_owned(),
                        "the run stopped on an internal error".to_owned(),
                    )),
                    usage: None,
                }),
            Err(e) => Outcome {
                status: RunStatus::Failed,
                error: Some(("event_log".to_owned(), e.to_string())),
                usage: None,
            },
        };
        if let Some((code, message)) = &outcome.error {
            tracing::warn!(run_id = %run.id, code, message, "run failed");
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
        if let Err(error) = ended {
            if !matches!(error, LogError::AlreadyEnded) {
                tracing::error!(
                    %error,
                    run_id = %run.id,
                    "could not store the run's end; the next start marks it interrupted"
                );
            }
        }
        self.active().remove(&run.id);
    }

    /// Starts the conversation's oldest queued run if none is running.
    async fn start_next(&self, conversation_id: Uuid) {
        if !self.inner.accepting.load(Ordering::Acquire) {
            return;
        }
        let next = async {
            let mut tx = self.inner.store.begin().await?;
            let runs = store::active_runs(&mut tx, conversation_id).await?;
            let next = match runs.iter().find(|run| run.status == RunStatus::Running) {
                Some(_) => None,
                None => runs.into_iter().find(|run| run.status == RunStatus::Queued),
            };
            if let Some(run) = &next {
                store::start_queued_run(&mut tx, run.id).await?;
            }
            tx.commit().await?;
            Ok::<_, StoreError>(next)
        };
        match next.await {
            Ok(Some(mut run)) => {
                run.status = RunStatus::Running;
                self.spawn(run);
            }
            Ok(None) => {}
            Err(error) => {
                tracing::error!(%error, %conversation_id, "could not start the next queued run")
            }
        }
    }

    /// Called when a subscriber leaves: cancels an `on_disconnect=cancel`
    /// run once nobody is watching.
    fn subscriber_left(&self, run_id: Uuid) {
        let Some(run) = self.active().get(&run_id).cloned() else {
            return;
        };
        if run.on_disconnect == OnDisconnect::Cancel && self.inner.hub.subscribers(run_id) == 0 {
            tracing::info!(%run_id, "last subscriber left: cancelling the run (on_disconnect=cancel)");
            run.control.stop(RunStatus::Cancelled);
        }
    }

    /// The store the runs write to.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }
}

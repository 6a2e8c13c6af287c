//! Runs: the manager that starts, stops, drains and recovers them, and the
//! task that drives each one. A run is not a request: it belongs to the
//! manager, and HTTP responses only subscribe to its events.

mod cluster;
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
use tracing::Instrument;
use uuid::Uuid;

pub use event::Event;
pub use hub::{Hub, LiveEvents};
pub use log::{EventLog, Finish, LogError};
pub use subscription::Delivery;

use crate::{
    agent::{self, Agents, Outcome},
    store::{
        self, AssistantMessage, Conversation, ConversationKind, Message, MessageStatus, NewMessage,
        NewRun, OnDisconnect, Role, Run, RunStatus, Store, StoreError, text_enum,
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
/// Stopped runs end at their next safe point, within a chunk or a tool call,
/// so this is only an upper bound for a machine under heavy load.
const STOP_GRACE: Duration = Duration::from_secs(30);

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

/// Gives a run's events their `seq` and queues them on the log, with the
/// state of the run's assistant message: a run writes its reply in the
/// transactions that commit its events, not in ones of its own.
#[derive(Debug)]
pub struct Emitter {
    run_id: Uuid,
    seq: i64,
    /// Most events the run may have, its final `error` and `done` included.
    max_events: i64,
    log: EventLog,
    /// The run's assistant message as last staged.
    message: Option<AssistantMessage>,
    /// Whether `message` changed since an event last carried it.
    staged: bool,
    /// Whether some of the run's events could not be stored.
    lost_some: bool,
}

impl Emitter {
    fn new(run_id: Uuid, last_seq: i64, max_events: i64, log: EventLog) -> Emitter {
        Emitter {
            run_id,
            seq: last_seq,
            max_events,
            log,
            message: None,
            staged: false,
            lost_some: false,
        }
    }

    /// Sets the state of the run's assistant message; the next event writes it.
    pub fn stage_message(&mut self, message: AssistantMessage) {
        self.message = Some(message);
        self.staged = true;
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
        let message = if std::mem::take(&mut self.staged) {
            self.message.clone()
        } else {
            None
        };
        self.log
            .append(event.to_stored(self.run_id, self.seq), message)
            .await
    }

    /// Writes the run's `done` with its final state, and waits for the commit.
    /// The `done` carries the assistant message's last state too, in case
    /// the event that carried it before was not stored: its write is
    /// idempotent, and leaves an ended message as it is. If the database
    /// refuses what the end carries, the run ends `failed` with words of
    /// agentstream's own only.
    async fn finish(&mut self, status: RunStatus, outcome: &Outcome) -> Result<(), LogError> {
        // A run some of whose events were lost ends `failed`, whatever its
        // agent did: its log does not hold its whole reply.
        let lost = self
            .log
            .lost(self.run_id)
            .filter(|lost| lost.before_end)
            .map(|lost| {
                let error = if lost.refused {
                    LogError::Refused
                } else {
                    LogError::Store("some of the run's events could not be stored".to_owned())
                };
                Outcome {
                    usage: outcome.usage,
                    ..Outcome::failed(error.code(), error.to_string())
                }
            });
        let (status, outcome) = match &lost {
            Some(lost) if outcome.error.is_none() => (RunStatus::Failed, lost),
            _ => (status, outcome),
        };
        match self.finish_as(status, outcome, true).await {
            Err(LogError::Refused) => {
                let refused = Outcome {
                    usage: outcome.usage,
                    ..Outcome::failed(LogError::Refused.code(), LogError::Refused.to_string())
                };
                self.finish_as(RunStatus::Failed, &refused, false).await
            }
            ended => ended,
        }
    }

    async fn finish_as(
        &mut self,
        status: RunStatus,
        outcome: &Outcome,
        with_message: bool,
    ) -> Result<(), LogError> {
        // Numbered after the last stored event: the log has no gap, and no
        // event follows a lost one.
        if let Some(lost) = self.log.lost(self.run_id) {
            self.seq = lost.last_good;
            self.lost_some = true;
        }
        self.staged = false;
        let error = outcome.error.as_ref().map(|(code, message)| {
            self.seq += 1;
            Event::Error {
                code: code.clone(),
                message: message.clone(),
            }
            .to_stored(self.run_id, self.seq)
        });
        self.seq += 1;
        let done = Event::Done {
            status,
            usage: outcome.usage,
            finish_reason: outcome.finish_reason.clone(),
        };
        let message_status = match status {
            RunStatus::Completed => MessageStatus::Complete,
            RunStatus::Cancelled => MessageStatus::Cancelled,
            RunStatus::Failed => MessageStatus::Failed,
            _ => MessageStatus::Interrupted,
        };
        if let Some(message) = &mut self.message
            && message.status == MessageStatus::Streaming
        {
            message.status = message_status;
        }
        let finish = Finish {
            status,
            error: outcome
                .error
                .as_ref()
                .map(|(code, message)| serde_json::json!({ "code": code, "message": message })),
            usage: outcome.usage.and_then(|u| serde_json::to_value(u).ok()),
            message_status,
            // The run's earlier messages ended with the events that carried
            // them, unless some of those were lost.
            close_streaming: self.message.is_none() || self.lost_some || !with_message,
        };
        let message = if with_message {
            self.message.clone()
        } else {
            None
        };
        self.log
            .finish(
                error,
                done.to_stored(self.run_id, self.seq),
                finish,
                message,
            )
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

/// Which conversation a run is for.
#[derive(Debug, Clone, Copy)]
pub enum ConversationRef {
    /// The user's conversation with this ID; of this kind, if one is given.
    Existing {
        /// The conversation's ID.
        id: Uuid,
        /// The kind it must be.
        kind: Option<ConversationKind>,
    },
    /// A new conversation of this kind, created with the run.
    New(ConversationKind),
}

/// A run that was started, or found by its client message ID.
#[derive(Debug)]
pub struct Started {
    /// The run.
    pub run: Run,
    /// Its conversation.
    pub conversation: Conversation,
    /// False when `client_message_id` matched an existing run.
    pub created: bool,
    /// The run's live events from its first, for a run started here.
    pub live: Option<LiveEvents>,
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
    /// The conversation is not of the kind the caller serves.
    #[error("the conversation is a {found} conversation, not a {expected} one")]
    WrongKind {
        /// Its kind.
        found: ConversationKind,
        /// The kind asked for.
        expected: ConversationKind,
    },
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

/// This node among others on one database.
#[derive(Debug, Clone)]
pub struct NodeSettings {
    /// The node's ID, unique among live nodes.
    pub id: String,
    /// How often the node renews the leases of the runs it drives.
    pub lease_renew: Duration,
    /// How long a lease lasts unless renewed: a node silent this long is dead.
    pub lease_expire: Duration,
}

#[derive(Debug)]
struct Inner {
    store: Store,
    node: NodeSettings,
    limits: RunLimits,
    log: EventLog,
    hub: Arc<Hub>,
    agents: Agents,
    /// Every run task; shutdown waits on it.
    tracker: TaskTracker,
    /// The server's runtime, where run tasks run (started from the
    /// database thread too).
    runtime: tokio::runtime::Handle,
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
        node: NodeSettings,
    ) -> RunManager {
        RunManager {
            inner: Arc::new(Inner {
                store,
                node,
                limits,
                log,
                hub,
                agents,
                tracker: TaskTracker::new(),
                runtime: tokio::runtime::Handle::current(),
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
        let mut tx = self.inner.store.begin().await?;
        let new_conversation = matches!(conversation, ConversationRef::New(_));
        let conversation = match conversation {
            ConversationRef::Existing { id, kind } => {
                let conversation = store::conversation_for_update(&mut tx, user_id, id)
                    .await?
                    .ok_or(RunError::NotFound)?;
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
                store::insert_conversation(&mut tx, user_id, kind, None).await?
            }
        };
        let agent_name = conversation.kind.as_str();
        if self.inner.agents.get(agent_name).is_none() {
            return Err(RunError::NoAgent(agent_name.to_owned()));
        }
        if let Some(key) = &request.client_message_id
            && let Some(run) =
                store::run_by_client_message_id(&mut tx, conversation.id, key).await?
        {
            tx.rollback().await.map_err(StoreError::from)?;
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
                owner_node: (status == RunStatus::Running).then_some(self.inner.node.id.as_str()),
            },
        )
        .await?;
        let message = store::insert_message(
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
        // A run that starts now reads its conversation here rather than on a
        // connection of its own, and is stored with its first event: a
        // client hears `run.started` as soon as the run is stored.
        let first = match status {
            RunStatus::Running => {
                let history = if new_conversation {
                    vec![message]
                } else {
                    store::messages(&mut tx, conversation.id, None).await?
                };
                let started = Event::RunStarted {
                    conversation_id: conversation.id,
                }
                .to_stored(run.id, 1);
                // No other node needs telling: none knows of this run
                // before this commit, and each reads the store first.
                store::append_events(&mut tx, &[&started]).await?;
                Some((history, started))
            }
            _ => None,
        };
        // Counted last, the new run included, under the user's row lock: the
        // limit holds across nodes, and the lock is held only to the commit.
        let users_runs = store::count_user_active_runs(&mut tx, conversation.user_id).await?;
        if users_runs > i64::from(self.inner.limits.per_user) {
            return Err(RunError::TooManyRuns(self.inner.limits.per_user));
        }
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
            // The running run is cancelled; runs queued behind it keep their turn.
            for other in active.iter().filter(|r| r.status == RunStatus::Running) {
                self.request_cancel(other).await?;
            }
        }
        match history {
            Some(history) => self.spawn(run.clone(), Some(history)),
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
            .ok_or(RunError::NotFound)?;
        if run.status.is_terminal() {
            return Ok(run);
        }
        self.request_cancel(&run).await?;
        Ok(run)
    }

    /// Cancels a run wherever it is: here, on the node that drives it (told
    /// by a notification, and by the database at its next heartbeat), or
    /// still queued.
    async fn request_cancel(&self, run: &Run) -> Result<(), StoreError> {
        if self.stop_local(run.id, RunStatus::Cancelled) {
            return Ok(());
        }
        match run.status {
            RunStatus::Queued => {
                self.end_unstarted(run, RunStatus::Cancelled).await?;
                crate::telemetry::metrics::run_dequeued();
                Ok(())
            }
            RunStatus::Running => {
                if self.inner.store.request_cancel(run.id).await? {
                    self.inner.store.notify_cancel(run.id).await?;
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// When a lease taken now runs out.
    fn lease_until(&self) -> String {
        store::format_timestamp(time::OffsetDateTime::now_utc() + self.inner.node.lease_expire)
    }

    /// Takes this node's lease; call before serving, so that no other node
    /// takes this one's first runs for a dead node's.
    pub async fn register_node(&self) -> Result<(), StoreError> {
        self.inner
            .store
            .renew_lease(&self.inner.node.id, &self.lease_until())
            .await
    }

    /// Gives up this node's lease once its runs have ended.
    pub async fn release_node(&self) -> Result<(), StoreError> {
        self.inner.store.release_lease(&self.inner.node.id).await
    }

    /// Stops a run this node drives, as asked by another node.
    pub fn cancel_local(&self, run_id: Uuid) {
        self.stop_local(run_id, RunStatus::Cancelled);
    }

    /// One heartbeat: renews the leases of the runs this node drives, stops
    /// those a cancel was asked for, and stops those whose lease another
    /// node took (they will be written no more); then ends the runs of dead
    /// nodes and starts queued runs nobody is starting.
    #[tracing::instrument(skip_all)]
    pub async fn heartbeat(&self) -> Result<(), StoreError> {
        let store = &self.inner.store;
        // Listed before the renewal: each of these has its row, owned here.
        let local: Vec<Uuid> = self.active().keys().copied().collect();
        store
            .renew_lease(&self.inner.node.id, &self.lease_until())
            .await?;
        let held = store.owned_runs(&self.inner.node.id).await?;
        for (run_id, cancel) in &held {
            if *cancel {
                self.stop_local(*run_id, RunStatus::Cancelled);
            }
        }
        for run_id in local {
            if !held.iter().any(|(id, _)| *id == run_id) {
                // Ended here a moment ago, or taken over as dead: either way
                // nothing more of it is this node's to write.
                self.stop_local(run_id, RunStatus::Interrupted);
            }
        }
        for run in store.expired_runs(&store::now()).await? {
            tracing::warn!(
                run_id = %run.id,
                "the node driving this run stopped renewing its lease; marking it interrupted"
            );
            self.end_unstarted(&run, RunStatus::Interrupted).await?;
            self.start_next(run.conversation_id).await;
        }
        for conversation_id in store.stalled_conversations().await? {
            self.start_next(conversation_id).await;
        }
        Ok(())
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
        let outcome = Outcome::status(status);
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
        // On SQLite this is the only node (the file lock sees to it), so
        // every open run was left by a crash. On PostgreSQL other nodes may
        // be driving theirs: only this node's own are taken here (a restart
        // with the same --node-id), the rest by the lease sweep.
        let open: Vec<Run> = match self.inner.store.single_node() {
            true => open,
            false => {
                let mine = self.inner.store.runs_owned_by(&self.inner.node.id).await?;
                open.into_iter()
                    .filter(|run| mine.contains(&run.id))
                    .collect()
            }
        };
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
        // Queued runs wait for whichever node ends the run ahead of them; on
        // SQLite there is no other node, so they end here.
        if !self.inner.store.single_node() {
            return;
        }
        match self.inner.store.open_runs().await {
            Ok(open) => {
                for run in open.iter().filter(|run| run.status == RunStatus::Queued) {
                    crate::telemetry::metrics::run_dequeued();
                    if let Err(error) = self.end_unstarted(run, RunStatus::Interrupted).await {
                        tracing::error!(%error, run_id = %run.id, "could not end a queued run");
                    }
                }
            }
            Err(error) => tracing::error!(%error, "could not list queued runs at shutdown"),
        }
    }

    /// Drives the run on a task of its own. `history` is its conversation as
    /// read by the transaction that stored the run and its `run.started`;
    /// none for a queued run starting now, which reads and logs both itself.
    fn spawn(&self, run: Run, history: Option<Vec<Message>>) {
        let Some(agent) = self.inner.agents.get(&run.agent) else {
            tracing::error!(run_id = %run.id, agent = %run.agent, "run names an unknown agent");
            return;
        };
        let active = Arc::new(ActiveRun {
            control: RunControl::default(),
            on_disconnect: run.on_disconnect,
        });
        self.active().insert(run.id, active.clone());
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
                manager.drive(run, history, &agent, &active.control).await;
                manager.start_next(conversation_id).await;
            }
            .instrument(span),
            &self.inner.runtime,
        );
    }

    /// The run's task: the agent loop, then the final events.
    async fn drive(
        &self,
        run: Run,
        history: Option<Vec<Message>>,
        agent: &agent::Agent,
        control: &RunControl,
    ) {
        let store = &self.inner.store;
        let started_logged = history.is_some();
        let mut emitter = Emitter::new(
            run.id,
            i64::from(started_logged),
            self.inner.limits.events_per_run,
            self.inner.log.clone(),
        );
        let ctx = ToolContext {
            user_id: run.user_id,
            conversation_id: run.conversation_id,
            run_id: run.id,
        };
        let started = if started_logged {
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
                &mut emitter,
                control,
            ))
            .catch_unwind()
            .await
            .unwrap_or_else(|_| {
                Outcome::failed("internal", "the run stopped on an internal error")
            }),
            Err(e) => Outcome::failed(e.code(), e.to_string()),
        };
        if let Some((code, message)) = &outcome.error {
            tracing::warn!(
                run_id = %run.id,
                code,
                message,
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
    async fn start_next(&self, conversation_id: Uuid) {
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
            let next = match runs.iter().find(|run| run.status == RunStatus::Running) {
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
                self.spawn(run, None);
            }
            Ok(None) => {}
            // Another node started it first.
            Err(StoreError::Conflict(_)) => {}
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

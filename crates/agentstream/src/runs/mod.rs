//! Runs: the manager that starts, stops, drains and recovers them, and the
//! task that drives each one. A run is not a request: it belongs to the
//! manager, and HTTP responses only subscribe to its events.

mod approvals;
mod cluster;
mod drive;
mod emitter;
mod hub;
mod log;
mod recovery;
mod start;
mod subscription;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError, atomic::AtomicBool},
    time::Duration,
};

use tokio_util::task::TaskTracker;
use uuid::Uuid;

pub use crate::agent::RunControl;
pub use crate::events::Event;
pub use emitter::Emitter;
pub use hub::{Hub, LiveEvents};
pub use log::{EventLog, Finish, LogError};
pub use subscription::Delivery;

use crate::{
    agent::Agents,
    store::{
        Conversation, ConversationKind, OnDisconnect, Role, Run, RunStatus, Store, StoreError,
    },
    text::text_enum,
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
    /// Who starts it, as its tools will see it.
    pub caller: crate::tools::Caller,
    /// The run it answers again (a retry), or whose question it replaces
    /// with `input` (an edit); none for a new message.
    pub replaces: Option<Replace>,
}

/// What a retry replaces: the conversation's last run's reply, and for an
/// edit its question too.
#[derive(Debug, Clone, Copy)]
pub struct Replace {
    /// The run retried: the conversation's last, ended.
    pub run_id: Uuid,
    /// True for an edit: the run's `input` is a new question, and the last
    /// one is superseded too. False: it answers the same question again.
    pub question: bool,
}

/// Which conversation a run is for.
#[derive(Debug, Clone)]
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
    /// A new conversation with this agent, created with the run, whose
    /// transcript opens with the messages a client kept until now.
    NewWith {
        /// The agent that answers.
        agent: String,
        /// Its kind.
        kind: ConversationKind,
        /// The earlier messages, oldest first, stored before the run's input.
        history: Vec<PriorMessage>,
    },
    /// The user's conversation that an AI SDK client's chat ID names (its
    /// ID, or the chat ID it was created under), created with the run, under
    /// that chat ID, when there is none.
    Chat {
        /// The client's chat ID.
        chat_id: String,
        /// The agent that answers: the one the conversation must have, and
        /// the one a new conversation gets (`chat` when none is named).
        agent: Option<String>,
    },
}

/// A message of a conversation held by a client until now (an OpenAI-style
/// request carries the whole history): stored as it is, written by no run.
#[derive(Debug, Clone)]
pub struct PriorMessage {
    /// Who wrote it: `user`, `assistant` or `tool`.
    pub role: Role,
    /// Its text.
    pub content: String,
    /// An assistant message's tool calls, as stored: `[{id, name, arguments}]`.
    pub tool_calls: Option<serde_json::Value>,
    /// The call a tool message answers.
    pub tool_call_id: Option<String>,
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
    /// No such conversation, or not the caller's.
    #[error("conversation not found")]
    ConversationNotFound,
    /// No such run, or not the caller's.
    #[error("run not found")]
    RunNotFound,
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
    /// The client message ID names a run whose message differs from this one.
    #[error(
        "the client_message_id was used for another message of this conversation (run {0}); \
         give each new message its own"
    )]
    KeyReused(Uuid),
    /// A retry names a run that is not its conversation's last, or one that
    /// has not ended.
    #[error(
        "only the conversation's last run can be retried once it has ended; run {0} is \
             the conversation's last"
    )]
    NotLast(Uuid),
    /// The conversation is with another agent than the one asked for.
    #[error("the conversation is with the agent `{found}`, not `{expected}`")]
    WrongAgent {
        /// Its agent.
        found: String,
        /// The agent asked for.
        expected: String,
    },
    /// The paused run asked about no call with this ID.
    #[error("the run asked about no tool call {0:?}")]
    CallNotFound(String),
    /// The call has the other decision already: a decision is final.
    #[error("the tool call {0:?} was decided otherwise already; a decision is final")]
    DecidedOtherwise(String),
    /// The run is not waiting for decisions.
    #[error("the run is not waiting for a decision: it is {0}")]
    NotWaiting(RunStatus),
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
/// The manager's state, shared by every clone of the manager and every run
/// task (each holds the `Arc`); it lives until the last of them ends.
struct Inner {
    /// The database, shared with the rest of the server.
    store: Store,
    /// This node's ID and lease timings, fixed at start-up.
    node: NodeSettings,
    /// Limits on runs, fixed at start-up.
    limits: RunLimits,
    /// Where runs' events go; its writer task stops at shutdown phase 5,
    /// after every run has ended.
    log: EventLog,
    /// Live delivery, shared with the event log's writer and the listener.
    hub: Arc<Hub>,
    /// The agents runs use, fixed at start-up.
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

    /// The agents runs use.
    pub fn agents(&self) -> &Agents {
        &self.inner.agents
    }

    /// How many runs this node is driving.
    pub fn active_count(&self) -> usize {
        self.active().len()
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
}

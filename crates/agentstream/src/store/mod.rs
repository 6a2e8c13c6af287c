//! The database: one pool, migrations per dialect, and the queries of each domain.
//!
//! Both dialects run the same query text through sqlx's `Any` driver: every
//! query uses `$N` placeholders, IDs are UUID v7 text and timestamps are
//! RFC 3339 text, so one implementation serves SQLite and PostgreSQL and the
//! contract tests run it against both. What differs lives in the migrations
//! folders and in a few files here: `connect` (connection set-up, the
//! pooler), `dialect` (placeholders, how a write transaction begins),
//! `migrations` and `notify` (`NOTIFY`/`LISTEN` between nodes, PostgreSQL
//! only). The rest of the server asks the store what it can do
//! ([`Store::can_notify`], [`Store::single_node`]) rather than which database
//! it is.

mod api_keys;
mod approvals;
mod codec;
mod connect;
mod conversations;
mod dialect;
mod error;
mod events;
mod messages;
mod migrations;
mod notify;
mod profiles;
mod runs;
mod starts;
mod tool_calls;
mod users;

use std::sync::Arc;

use sqlx::AnyPool;
use tokio::sync::watch;

pub use codec::{format_timestamp, now};
use codec::{parse_enum, parse_id};
pub use connect::{
    Conn, EventsConnection, OwnConnection, PoolSettings, WriteTx, redact_url, sqlite_path,
};
use connect::{DbThread, OwnConnectionSetup};
pub(crate) use connect::{Query, query};
pub use dialect::Backend;
pub(crate) use dialect::postgres_begin;
use dialect::{MultiRow, WriteTurn};
pub use error::StoreError;

pub use api_keys::{ApiKey, NewKey, hash_key};
pub use approvals::{Approval, ApprovalRequest, Decided, Decision};
pub use conversations::{Conversation, ConversationKind, Deletion, ListCursor};
pub use messages::{AssistantMessage, Message, MessageStatus, NewMessage, Role};
pub use profiles::Profile;
pub use runs::{NewRun, OnDisconnect, Run, RunEnd};
// Defined with the events (`done` carries it), below the store; a run's
// status is also a column of `runs`.
pub use crate::events::RunStatus;
pub use tool_calls::{OUTCOME_UNKNOWN, RecordedCall, ToolCallRecord};
pub use users::User;

pub(crate) use conversations::{
    chat_for_update, conversation_for_update, insert_chat_conversation, insert_conversation,
    new_conversation,
};
pub(crate) use events::append_events;
pub(crate) use messages::{
    close_streaming_messages, insert_message, insert_message_row, messages, new_message, supersede,
    write_assistant_messages,
};
pub use notify::{CANCEL_CHANNEL, EVENTS_CHANNEL, Notice, listen, parse_notification};
pub(crate) use runs::{
    active_runs, finish_runs, last_run_id, lock_conversation, new_run, run_by_client_message_id,
    run_input, start_queued_run,
};
pub(crate) use starts::{RunRows, insert_run_rows};
pub(crate) use tool_calls::{
    finish_tool_call, insert_started_tool_call, insert_tool_call, settle_started_tool_calls,
    tool_call,
};

/// The database: a pool and the dialect it speaks. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// Where migrations and LISTEN connect when it is not the pool's URL
    /// (a pooler stands in front of the database).
    direct_url: Option<Arc<str>>,
    /// Set while the health probe finds the database not answering.
    down: Arc<watch::Sender<bool>>,
    /// Set when shutdown begins: connections handed back are closed, not
    /// tested with a round trip (sqlx's on-release ping) that the end of the
    /// runtime could cut in half.
    closing: Arc<std::sync::atomic::AtomicBool>,
    /// Held by the write transaction under way, on SQLite.
    write_turn: Arc<WriteTurn>,
    /// SQLite's one connection for write transactions (a pool of one,
    /// beside `pool`, which serves reads); none on PostgreSQL.
    writer: Option<AnyPool>,
    /// Where write transactions run.
    db: Arc<DbThread>,
    /// What opens a connection beside the pool (the event log's, the probe's).
    own: Arc<OwnConnectionSetup>,
    /// PostgreSQL's `max_connections` as the last run start read it (0
    /// before the first, and on SQLite): how many starts can be in flight
    /// unseen by a start's count (see [`insert_run_rows`]).
    max_connections: Arc<std::sync::atomic::AtomicI64>,
}

impl Store {
    /// Where LISTEN connects when it is not the pool's URL: PostgreSQL
    /// itself, never a pooler.
    pub fn direct_url(&self) -> Option<&str> {
        self.direct_url.as_deref()
    }

    /// The dialect this store speaks; outside the store, for logs only:
    /// what differs is asked as [`Store::can_notify`] or
    /// [`Store::single_node`].
    pub(crate) fn backend(&self) -> Backend {
        self.backend
    }

    /// Whether other nodes can be told of new events and cancels as they
    /// happen (PostgreSQL `LISTEN`/`NOTIFY`): true on PostgreSQL. Without it
    /// a node learns only what it wrote itself.
    pub fn can_notify(&self) -> bool {
        self.backend == Backend::Postgres
    }

    /// Whether this process is the database's only node: true on SQLite,
    /// whose file lock admits one. Every open run is then this node's, and
    /// no other node ends a run for it. On PostgreSQL other nodes may share
    /// the database.
    pub fn single_node(&self) -> bool {
        self.backend == Backend::Sqlite
    }

    /// The pool, for tests and metrics that look at its connections.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// True while the health probe finds the database not answering.
    pub fn is_down(&self) -> bool {
        *self.down.borrow()
    }

    /// Records what the health probe found; true when that changed.
    pub fn set_down(&self, down: bool) -> bool {
        self.down
            .send_if_modified(|was| std::mem::replace(was, down) != down)
    }
}

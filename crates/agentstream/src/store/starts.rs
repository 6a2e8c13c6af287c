//! The rows a run start stores: the run, and with it, when there are, a new
//! conversation, the user's message and the run's first event.

use sqlx::AnyConnection;

use super::{
    Backend, Conversation, Message, Run, StoreError,
    conversations::{INSERT_CONVERSATION, bind_conversation},
    dialect::chain,
    events::{INSERT_EVENT, bind_event},
    messages::{INSERT_MESSAGE, bind_message},
    now, query,
    runs::{INSERT_RUN, bind_run},
};
use crate::events::StoredEvent;

/// What a run start stores, each row built already (IDs and times set).
#[derive(Debug, Clone, Copy)]
pub(crate) struct RunRows<'a> {
    /// A conversation the run starts, stored first.
    pub conversation: Option<&'a Conversation>,
    /// The run.
    pub run: &'a Run,
    /// The node that drives it, for a running run.
    pub owner_node: Option<&'a str>,
    /// The user's message (a retry has none of its own).
    pub message: Option<&'a Message>,
    /// The run's first event, for a run that starts now.
    pub started: Option<&'a StoredEvent>,
}

/// Stores a run start's rows inside the caller's transaction, in one
/// query (see [`chain`]): on SQLite one hand-off to the connection's thread
/// while the write turn is held, on PostgreSQL one round trip, instead of up
/// to four.
pub(crate) async fn insert_run_rows(
    conn: &mut AnyConnection,
    rows: RunRows<'_>,
) -> Result<(), StoreError> {
    let at = now();
    let mut statements = Vec::with_capacity(4);
    statements.extend(rows.conversation.map(|_| INSERT_CONVERSATION));
    statements.push(INSERT_RUN);
    statements.extend(rows.message.map(|_| INSERT_MESSAGE));
    statements.extend(rows.started.map(|_| INSERT_EVENT));
    let sql = chain(Backend::of(conn), &statements);
    let mut query = query(&sql);
    if let Some(conversation) = rows.conversation {
        query = bind_conversation(query, conversation, None);
    }
    query = bind_run(query, rows.run, rows.owner_node);
    if let Some(message) = rows.message {
        query = bind_message(query, message);
    }
    if let Some(started) = rows.started {
        query = bind_event(query, started, &at);
    }
    query.execute(&mut *conn).await?;
    Ok(())
}

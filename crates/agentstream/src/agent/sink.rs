//! Where the agent loop's events go: a trait the run manager implements, so
//! the loop knows nothing of runs, logs or subscribers.

use crate::{
    events::{ErrorCode, Event},
    store::AssistantMessage,
};

/// Why an event could not be taken: the run ends with an `error` of this
/// code and message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SinkError {
    /// The `error` event's code, e.g. `event_limit`.
    pub code: ErrorCode,
    /// What happened, for people.
    pub message: String,
}

/// Takes a run's events in order, and the state of its assistant message to
/// store with the next one.
pub trait EventSink: Send {
    /// Queues the run's next event.
    fn emit(&mut self, event: Event) -> impl Future<Output = Result<(), SinkError>> + Send;

    /// Sets the state of the run's assistant message; the next event carries it.
    fn stage_message(&mut self, message: AssistantMessage);
}

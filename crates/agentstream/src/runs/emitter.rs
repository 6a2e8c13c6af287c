//! The emitter: gives a run's events their `seq` and queues them on the
//! log, with the state of the run's assistant message; the agent loop's
//! event sink.

use uuid::Uuid;

use super::{Event, EventLog, Finish, LogError};
use crate::{
    agent::{EventSink, Outcome, SinkError},
    store::{AssistantMessage, MessageStatus, Run, RunStatus},
};

/// Gives a run's events their `seq` and queues them on the log, with the
/// state of the run's assistant message: a run writes its reply in the
/// transactions that commit its events, not in ones of its own.
#[derive(Debug)]
pub struct Emitter {
    run_id: Uuid,
    /// The run's number in the event log ([`crate::store::Run::event_key`]).
    run_key: i64,
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
    pub(super) fn new(run: &Run, last_seq: i64, max_events: i64, log: EventLog) -> Emitter {
        Emitter {
            run_id: run.id,
            run_key: run.event_key,
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
            .append(
                self.run_key,
                event.to_stored(self.run_id, self.seq),
                message,
            )
            .await
    }

    /// Writes the run's `done` with its final state, and waits for the commit.
    /// The `done` carries the assistant message's last state too, in case
    /// the event that carried it before was not stored: its write is
    /// idempotent, and leaves an ended message as it is. If the database
    /// refuses what the end carries, the run ends `failed` with words of
    /// agentstream's own only.
    pub(super) async fn finish(
        &mut self,
        status: RunStatus,
        outcome: &Outcome,
    ) -> Result<(), LogError> {
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
                    context: outcome.context,
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
                    context: outcome.context,
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
        let error = outcome.error.as_ref().map(|failure| {
            self.seq += 1;
            Event::Error {
                code: failure.code,
                message: failure.message.clone(),
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
            // A pause follows a message that was stored whole.
            RunStatus::Completed | RunStatus::RequiresAction => MessageStatus::Complete,
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
            error: outcome.error.clone(),
            usage: outcome.usage.and_then(|u| serde_json::to_value(u).ok()),
            context: outcome.context,
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
                self.run_key,
                error,
                done.to_stored(self.run_id, self.seq),
                finish,
                message,
            )
            .await
    }
}

impl EventSink for Emitter {
    async fn emit(&mut self, event: Event) -> Result<(), SinkError> {
        Emitter::emit(self, event).await.map_err(|e| SinkError {
            code: e.code(),
            message: e.to_string(),
        })
    }

    fn stage_message(&mut self, message: AssistantMessage) {
        Emitter::stage_message(self, message);
    }
}

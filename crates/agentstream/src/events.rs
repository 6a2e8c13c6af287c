//! The event vocabulary: the typed events a run emits, their kinds and error
//! codes, and the one stored form each becomes, which is also what is sent.
//!
//! It sits below the rest of the server: the store keeps these events, the
//! model client and the event log name their error codes, and the wire
//! formats send them. It names no other module but `text`.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::text::text_enum;

text_enum! {
    /// The kind of an event: its `type`, stored in `run_events.type` and
    /// sent as the SSE `event:` name.
    pub enum EventKind {
        /// `run.started`: the run began work.
        RunStarted = "run.started",
        /// `delta`: a piece of the reply's text.
        Delta = "delta",
        /// `reasoning.delta`: a piece of the model's reasoning, apart from
        /// the reply.
        ReasoningDelta = "reasoning.delta",
        /// `context.trimmed`: a model call left the oldest messages out to
        /// fit the model's context window.
        ContextTrimmed = "context.trimmed",
        /// `tool.call.delta`: a piece of a tool call's arguments, as the
        /// model writes them.
        ToolCallDelta = "tool.call.delta",
        /// `tool.call`: the model called a tool.
        ToolCall = "tool.call",
        /// `tool.result`: a tool's result.
        ToolResult = "tool.result",
        /// `tool.approval_requested`: a call waits for the user's decision.
        ToolApprovalRequested = "tool.approval_requested",
        /// `tool.approval_decided`: the user decided on a call; the run
        /// goes on.
        ToolApprovalDecided = "tool.approval_decided",
        /// `message.completed`: an assistant message was stored whole.
        MessageCompleted = "message.completed",
        /// `error`: the run hit a problem; a `done` follows.
        Error = "error",
        /// `done`: the run ended.
        Done = "done",
    }
}

text_enum! {
    /// The stable `code` of an `error` event, and of a failed run's `error`.
    pub enum ErrorCode {
        /// The model server could not be reached, answered with an HTTP
        /// error, or failed mid-reply.
        UpstreamError = "upstream_error",
        /// The model server did not answer in time.
        UpstreamTimeout = "upstream_timeout",
        /// The model server sent something that is not its protocol.
        UpstreamProtocol = "upstream_protocol",
        /// The model server's reply was cut off before it finished.
        UpstreamIncomplete = "upstream_incomplete",
        /// The model server refused the request as longer than the model's
        /// context window: the agent's `context_tokens` is larger than the
        /// model's, or its prompt and current turn alone do not fit.
        ContextLength = "context_length",
        /// The run made as many model calls as its agent allows.
        StepLimit = "step_limit",
        /// The run reached its limit of events.
        EventLimit = "event_limit",
        /// A tool call waited for the user's approval longer than the
        /// server's `approval_timeout`: the run ended `expired`.
        ApprovalTimeout = "approval_timeout",
        /// The database could not read or store what the run needed, or
        /// refused it.
        StorageError = "storage_error",
        /// The event log could not commit: the database is away, or the
        /// server is shutting down.
        EventLog = "event_log",
        /// The run stopped on an internal error.
        Internal = "internal",
        /// A stream cannot go on: the server could not read the run's log.
        /// Sent on a stream only, never stored.
        Unavailable = "unavailable",
    }
}

/// Why a run failed: its `error` event's code and message, and what the
/// run's row stores as `error` (`{"code":…,"message":…}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RunFailure {
    /// A stable code, e.g. `upstream_timeout`.
    pub code: ErrorCode,
    /// What happened, short and safe to show: no key, message text or tool
    /// arguments.
    pub message: String,
}

text_enum! {
    /// Where a run stands. The first three are open, the rest terminal.
    // The variants' wire names are their snake_case names (see `as_str`).
    #[derive(utoipa::ToSchema)]
    #[schema(rename_all = "snake_case")]
    pub enum RunStatus {
        /// Waiting for the conversation's active run to end (`multitask=enqueue`).
        Queued = "queued",
        /// The agent is working.
        Running = "running",
        /// Paused until the user approves or denies the tool calls its
        /// `tool.approval_requested` events name (`POST
        /// /v1/runs/{id}/approvals`); nothing runs meanwhile. Its events so
        /// far end with `done {status: "requires_action"}`, and the log goes
        /// on after the decision, `seq` numbering continuing.
        RequiresAction = "requires_action",
        /// The agent finished its reply.
        Completed = "completed",
        /// Stopped by a cancel.
        Cancelled = "cancelled",
        /// Stopped by an error.
        Failed = "failed",
        /// Stopped by a shutdown or a crash.
        Interrupted = "interrupted",
        /// Ended because no decision on its tool calls came within the
        /// server's `approval_timeout`.
        Expired = "expired",
    }
}

impl RunStatus {
    /// True once the run can change no more.
    pub fn is_terminal(self) -> bool {
        !matches!(
            self,
            RunStatus::Queued | RunStatus::Running | RunStatus::RequiresAction
        )
    }
}

/// What a model call sent of its conversation, to fit the agent's context
/// window: a run's `context` (the fields of `context.trimmed`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ContextUse {
    /// Messages it sent, the system prompt included.
    pub messages_sent: usize,
    /// Messages of the conversation it left out, the oldest.
    pub messages_dropped: usize,
    /// The tokens of what it sent, tools included, as counted (the model's
    /// tokenizer for OpenAI's models, else an estimate).
    pub tokens: usize,
    /// The agent's context window.
    pub context_tokens: u32,
}

impl ContextUse {
    /// The `context.trimmed` event that announces it.
    pub fn trimmed(self) -> Event {
        Event::ContextTrimmed {
            messages_sent: self.messages_sent,
            messages_dropped: self.messages_dropped,
            tokens: self.tokens,
            context_tokens: self.context_tokens,
        }
    }
}

/// Tokens counted by the model.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Usage {
    /// Tokens in the request.
    pub prompt_tokens: u64,
    /// Tokens in the reply.
    pub completion_tokens: u64,
    /// Both.
    pub total_tokens: u64,
}

impl std::ops::AddAssign for Usage {
    fn add_assign(&mut self, other: Usage) {
        self.prompt_tokens += other.prompt_tokens;
        self.completion_tokens += other.completion_tokens;
        self.total_tokens += other.total_tokens;
    }
}

/// An event of a run, as clients see it.
// The `type` names are those of `EventKind`: serde takes literals only, and
// a test holds the two lists together.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "type")]
pub enum Event {
    /// The run began work.
    #[serde(rename = "run.started")]
    RunStarted {
        /// The conversation it answers in.
        conversation_id: Uuid,
    },
    /// A piece of the reply's text.
    #[serde(rename = "delta")]
    Delta {
        /// The text.
        text: String,
    },
    /// The next model call leaves the conversation's oldest messages out to
    /// fit the agent's context window (`context_tokens`, less the room kept
    /// for the reply). The system prompt and the current turn always go; an
    /// assistant message goes with its tool results or not at all. The
    /// transcript keeps every message.
    #[serde(rename = "context.trimmed")]
    ContextTrimmed {
        /// Messages the call sends, the system prompt included.
        messages_sent: usize,
        /// Messages of the conversation it leaves out, the oldest.
        messages_dropped: usize,
        /// The tokens of what it sends, tools included, as counted (the
        /// model's tokenizer for OpenAI's models, else an estimate).
        tokens: usize,
        /// The agent's context window.
        context_tokens: u32,
    },
    /// A piece of the model's reasoning (the `reasoning_content` or
    /// `reasoning` deltas of DeepSeek, vLLM's reasoning parsers, OpenRouter),
    /// before or between the pieces of its reply. Never part of the reply's
    /// text, and never sent back to the model as the reply. Pieces are
    /// coalesced: at most one event per 50 ms, the first at once.
    #[serde(rename = "reasoning.delta")]
    ReasoningDelta {
        /// The text.
        text: String,
    },
    /// A piece of a tool call's arguments, as the model writes them; the
    /// call's `tool.call` follows once they are whole (unless the run stops
    /// first). Pieces are coalesced: at most one per call per 50 ms, the
    /// first at once. Joined in order, a call's `arguments_delta`s are the
    /// arguments text its `tool.call` parses, except that a call without
    /// arguments has no piece and its `tool.call` has `{}`.
    #[serde(rename = "tool.call.delta")]
    ToolCallDelta {
        /// The call's ID: the one its `tool.call` and `tool.result` carry.
        call_id: String,
        /// The tool's name.
        name: String,
        /// The next piece of the arguments' JSON text.
        arguments_delta: String,
    },
    /// The model called a tool.
    #[serde(rename = "tool.call")]
    ToolCall {
        /// The call's ID.
        call_id: String,
        /// The tool's name.
        name: String,
        /// The arguments (JSON; a string when the model wrote invalid JSON).
        arguments: serde_json::Value,
    },
    /// A tool's result. The call's arguments were checked against the
    /// tool's declared parameters first.
    #[serde(rename = "tool.result")]
    ToolResult {
        /// The call it answers.
        call_id: String,
        /// The result: the tool's JSON (a SQL tool's `{"rows", "row_count",
        /// "truncated"}`, its row, or `{"rows_affected"}`; an HTTP tool's
        /// backend answer), or, for a tool error, `{"error": "<what the
        /// model reads>"}`. An output over the tool's size limit is
        /// `{"truncated": true, "note", "output_prefix"}`.
        output: serde_json::Value,
        /// True for a tool error: no such tool, arguments that are not JSON
        /// or do not match the tool's parameters, an argument naming a
        /// caller-bound value, a statement the database refused, a timeout,
        /// a backend's error answer, or a call whose outcome is unknown
        /// (interrupted). The model reads it and the run goes on.
        is_error: bool,
    },
    /// A tool call waits for the user's approval: the tool is configured
    /// with `approval = "always"`. Every call of the model's reply has its
    /// `tool.call` first, none has run yet; the run's events end with
    /// `done {status: "requires_action"}` and go on once every call asked
    /// about has a decision (`POST /v1/runs/{id}/approvals`).
    #[serde(rename = "tool.approval_requested")]
    ToolApprovalRequested {
        /// The call's ID, as in its `tool.call`.
        call_id: String,
        /// The tool's name.
        name: String,
        /// The arguments (JSON; a string when the model wrote invalid JSON).
        arguments: serde_json::Value,
    },
    /// The user's decision on a call, first in the events of a run that goes
    /// on after `requires_action` (one per call asked about). A denied call
    /// is not made: its `tool.result` is an error that says so, with the
    /// reason, and the model reads it.
    #[serde(rename = "tool.approval_decided")]
    ToolApprovalDecided {
        /// The call's ID.
        call_id: String,
        /// True when the user approved the call.
        approved: bool,
        /// The user's reason, if they gave one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// An assistant message was stored whole.
    #[serde(rename = "message.completed")]
    MessageCompleted {
        /// The stored message's ID.
        message_id: Uuid,
    },
    /// The run hit a problem; a `done` follows.
    #[serde(rename = "error")]
    Error {
        /// A stable code, e.g. `upstream_timeout`.
        // Documented as a string: a client should take a code it does not
        // know yet.
        #[schema(value_type = String)]
        code: ErrorCode,
        /// What happened, for people.
        message: String,
    },
    /// The run ended: the last event, exactly once, of every run but one
    /// that pauses for approval. That run's `done` has the status
    /// `requires_action`; its events go on after the decision, and end with
    /// a `done` of a terminal status.
    #[serde(rename = "done")]
    Done {
        /// How it ended, or `requires_action` for a pause.
        status: RunStatus,
        /// Token usage, when the model reported it.
        #[serde(skip_serializing_if = "Option::is_none")]
        usage: Option<Usage>,
        /// Why the model stopped, when it stopped short of a whole reply:
        /// `length` (it reached `max_tokens` or its context) or
        /// `content_filter`; absent for a reply the model finished.
        #[serde(skip_serializing_if = "Option::is_none")]
        finish_reason: Option<String>,
    },
}

impl Event {
    /// Its kind: the `type` field, and the SSE `event:` name.
    pub fn kind(&self) -> EventKind {
        match self {
            Event::RunStarted { .. } => EventKind::RunStarted,
            Event::Delta { .. } => EventKind::Delta,
            Event::ReasoningDelta { .. } => EventKind::ReasoningDelta,
            Event::ContextTrimmed { .. } => EventKind::ContextTrimmed,
            Event::ToolCallDelta { .. } => EventKind::ToolCallDelta,
            Event::ToolCall { .. } => EventKind::ToolCall,
            Event::ToolResult { .. } => EventKind::ToolResult,
            Event::ToolApprovalRequested { .. } => EventKind::ToolApprovalRequested,
            Event::ToolApprovalDecided { .. } => EventKind::ToolApprovalDecided,
            Event::MessageCompleted { .. } => EventKind::MessageCompleted,
            Event::Error { .. } => EventKind::Error,
            Event::Done { .. } => EventKind::Done,
        }
    }

    /// The event at `seq` of `run_id`, serialised once as stored and sent.
    pub fn to_stored(self, run_id: Uuid, seq: i64) -> StoredEvent {
        RunEvent {
            run_id,
            seq,
            event: self,
        }
        .to_stored()
    }
}

/// The `data` of each SSE message: the event with its run and `seq`
/// (equal to the message's `id`). The SSE `event` field is the `type`.
///
/// One message has neither `run_id` nor `seq` nor `id`: an `error` with code
/// `unavailable` when the server could not read the run's log; the stream
/// then ends without `done`, and the client resumes from its last `seq`.
// This is the stored form (`run_events.data`) and what the OpenAPI document
// describes: `{"run_id":…,"seq":…,"type":…,…fields}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RunEvent {
    /// The run.
    pub run_id: Uuid,
    /// The event's place in the run's log: 1, 2, 3… with no gap.
    #[schema(minimum = 1)]
    pub seq: i64,
    // The event's own fields, beside `run_id` and `seq`.
    #[expect(
        missing_docs,
        reason = "a doc comment would add a description to the `allOf` of the OpenAPI document"
    )]
    #[serde(flatten)]
    pub event: Event,
}

impl RunEvent {
    /// Serialised once, as stored and sent.
    pub fn to_stored(&self) -> StoredEvent {
        let (run_id, seq) = (self.run_id, self.seq);
        let data = serde_json::to_string(self).unwrap_or_else(|e| {
            let code = ErrorCode::Internal;
            format!(r#"{{"run_id":"{run_id}","seq":{seq},"type":"error","code":"{code}","message":"{e}"}}"#)
        });
        StoredEvent {
            run_id,
            seq,
            kind: self.event.kind(),
            data,
        }
    }

    /// Reads a stored event's `data` back.
    pub fn parse(data: &str) -> Result<RunEvent, serde_json::Error> {
        serde_json::from_str(data)
    }
}

/// One committed event of a run's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    /// The run that emitted it.
    pub run_id: Uuid,
    /// Its position in the run's log: 1, 2, 3…
    pub seq: i64,
    /// Its kind, the SSE `event:` field.
    pub kind: EventKind,
    /// Its JSON payload (a [`RunEvent`]) as sent in the SSE `data:` field.
    pub data: String,
}

impl StoredEvent {
    /// True for the `done` of a run that paused for approval
    /// (`requires_action`): its log goes on after the decision.
    pub fn is_pause(&self) -> bool {
        // The stored form is written by `to_stored` alone: `status` follows
        // `type` there.
        self.kind == EventKind::Done
            && self
                .data
                .contains(r#""type":"done","status":"requires_action""#)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_failure_is_stored_as_code_and_message() {
        let failure = RunFailure {
            code: ErrorCode::UpstreamTimeout,
            message: "the \"model\" timed out".to_owned(),
        };
        assert_eq!(
            serde_json::to_string(&failure).unwrap(),
            serde_json::json!({ "code": failure.code, "message": failure.message }).to_string()
        );
        assert_eq!(
            serde_json::to_string(&failure).unwrap(),
            r#"{"code":"upstream_timeout","message":"the \"model\" timed out"}"#
        );
    }

    /// One event of each kind, with every optional field set.
    fn one_of_each() -> Vec<Event> {
        vec![
            Event::RunStarted {
                conversation_id: Uuid::now_v7(),
            },
            Event::Delta {
                text: "Hel\"lo\n".into(),
            },
            Event::ReasoningDelta {
                text: "The user greets; answer.".into(),
            },
            Event::ContextTrimmed {
                messages_sent: 12,
                messages_dropped: 40,
                tokens: 3900,
                context_tokens: 8192,
            },
            Event::ToolCallDelta {
                call_id: "call_1".into(),
                name: "save_profile".into(),
                arguments_delta: "{\"name\": \"A".into(),
            },
            Event::ToolCall {
                call_id: "call_1".into(),
                name: "save_profile".into(),
                arguments: serde_json::json!({"name": "Ada", "tags": [1, null]}),
            },
            Event::ToolResult {
                call_id: "call_1".into(),
                output: serde_json::json!("saved"),
                is_error: false,
            },
            Event::ToolApprovalRequested {
                call_id: "call_2".into(),
                name: "delete_note".into(),
                arguments: serde_json::json!({"id": 7}),
            },
            Event::ToolApprovalDecided {
                call_id: "call_2".into(),
                approved: false,
                reason: Some("not that one".into()),
            },
            Event::MessageCompleted {
                message_id: Uuid::now_v7(),
            },
            Event::Error {
                code: ErrorCode::UpstreamTimeout,
                message: "the model server did not answer in time".into(),
            },
            Event::Done {
                status: RunStatus::Completed,
                usage: Some(Usage {
                    prompt_tokens: 3,
                    completion_tokens: 4,
                    total_tokens: 7,
                }),
                finish_reason: Some("length".into()),
            },
        ]
    }

    #[test]
    fn a_pause_is_told_from_an_end() {
        let done = |status| Event::Done {
            status,
            usage: None,
            finish_reason: None,
        };
        assert!(
            done(RunStatus::RequiresAction)
                .to_stored(Uuid::nil(), 4)
                .is_pause()
        );
        for status in [
            RunStatus::Completed,
            RunStatus::Expired,
            RunStatus::Cancelled,
        ] {
            assert!(!done(status).to_stored(Uuid::nil(), 4).is_pause());
        }
        let text = Event::Delta {
            text: r#""type":"done","status":"requires_action""#.into(),
        };
        assert!(!text.to_stored(Uuid::nil(), 3).is_pause());
    }

    #[test]
    fn events_serialise_with_run_and_seq_first() {
        let run_id = Uuid::nil();
        let stored = Event::Delta { text: "Hel".into() }.to_stored(run_id, 7);
        assert_eq!(stored.kind, EventKind::Delta);
        assert_eq!(
            stored.data,
            r#"{"run_id":"00000000-0000-0000-0000-000000000000","seq":7,"type":"delta","text":"Hel"}"#
        );
        let done = Event::Done {
            status: RunStatus::Completed,
            usage: None,
            finish_reason: None,
        }
        .to_stored(run_id, 8);
        assert!(
            done.data
                .ends_with(r#""type":"done","status":"completed"}"#),
            "{}",
            done.data
        );
        let error = Event::Error {
            code: ErrorCode::EventLimit,
            message: "too many".into(),
        }
        .to_stored(run_id, 9);
        assert!(
            error
                .data
                .ends_with(r#""type":"error","code":"event_limit","message":"too many"}"#),
            "{}",
            error.data
        );
    }

    #[test]
    fn every_event_round_trips_through_its_stored_form() {
        let run_id = Uuid::now_v7();
        let events = one_of_each();
        let kinds: Vec<EventKind> = events.iter().map(Event::kind).collect();
        assert_eq!(kinds, EventKind::ALL, "one event of each kind, in order");
        for (seq, event) in (1..).zip(events) {
            let stored = event.clone().to_stored(run_id, seq);
            assert_eq!((stored.run_id, stored.seq), (run_id, seq));
            assert_eq!(stored.kind, event.kind());
            // The `type` serde writes is the kind's name.
            let json: serde_json::Value = serde_json::from_str(&stored.data).unwrap();
            assert_eq!(json["type"], event.kind().as_str(), "{}", stored.data);
            let back = RunEvent::parse(&stored.data).unwrap();
            assert_eq!(back, RunEvent { run_id, seq, event });
            assert_eq!(back.to_stored(), stored);
        }
    }

    #[test]
    fn kinds_and_codes_keep_their_names() {
        let kinds: Vec<&str> = EventKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(
            kinds,
            [
                "run.started",
                "delta",
                "reasoning.delta",
                "context.trimmed",
                "tool.call.delta",
                "tool.call",
                "tool.result",
                "tool.approval_requested",
                "tool.approval_decided",
                "message.completed",
                "error",
                "done"
            ]
        );
        let codes: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(
            codes,
            [
                "upstream_error",
                "upstream_timeout",
                "upstream_protocol",
                "upstream_incomplete",
                "context_length",
                "step_limit",
                "event_limit",
                "approval_timeout",
                "storage_error",
                "event_log",
                "internal",
                "unavailable"
            ]
        );
        for kind in EventKind::ALL {
            assert_eq!(kind.as_str().parse(), Ok(*kind));
        }
        for code in ErrorCode::ALL {
            assert_eq!(code.as_str().parse(), Ok(*code));
            assert_eq!(
                serde_json::to_value(code).unwrap(),
                serde_json::json!(code.as_str())
            );
        }
        assert_eq!("finished".parse::<EventKind>(), Err(()));
    }
}

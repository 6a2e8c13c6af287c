//! The event vocabulary: the typed events a run emits, and how each becomes
//! its stored, sent form.

use serde::Serialize;
use uuid::Uuid;

use crate::{
    llm::Usage,
    store::{RunStatus, StoredEvent},
};

/// An event of a run, as clients see it.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
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
    /// A tool's result.
    #[serde(rename = "tool.result")]
    ToolResult {
        /// The call it answers.
        call_id: String,
        /// The result.
        output: serde_json::Value,
        /// True when the tool refused the call.
        is_error: bool,
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
        code: String,
        /// What happened, for people.
        message: String,
    },
    /// The run ended. Always the last event, exactly once.
    #[serde(rename = "done")]
    Done {
        /// How it ended.
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
    /// The SSE `event:` name.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::RunStarted { .. } => "run.started",
            Event::Delta { .. } => "delta",
            Event::ToolCall { .. } => "tool.call",
            Event::ToolResult { .. } => "tool.result",
            Event::MessageCompleted { .. } => "message.completed",
            Event::Error { .. } => "error",
            Event::Done { .. } => "done",
        }
    }

    /// The event at `seq` of `run_id`, serialised once as stored and sent:
    /// `{"run_id":…,"seq":…,"type":…,…fields}`.
    pub fn to_stored(&self, run_id: Uuid, seq: i64) -> StoredEvent {
        #[derive(Serialize)]
        struct Envelope<'a> {
            run_id: Uuid,
            seq: i64,
            #[serde(flatten)]
            event: &'a Event,
        }
        let data = serde_json::to_string(&Envelope { run_id, seq, event: self })
            .unwrap_or_else(|e| format!(r#"{{"run_id":"{run_id}","seq":{seq},"type":"error","code":"internal","message":"{e}"}}"#));
        StoredEvent {
            run_id,
            seq,
            kind: self.kind(),
            data,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_serialise_with_run_and_seq_first() {
        let run_id = Uuid::nil();
        let stored = Event::Delta { text: "Hel".into() }.to_stored(run_id, 7);
        assert_eq!(stored.kind, "delta");
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
    }

    #[test]
    fn every_kind_is_a_stored_kind() {
        use crate::store::EVENT_KINDS;
        let events = [
            Event::RunStarted {
                conversation_id: Uuid::nil(),
            },
            Event::Delta {
                text: String::new(),
            },
            Event::ToolCall {
                call_id: String::new(),
                name: String::new(),
                arguments: serde_json::Value::Null,
            },
            Event::ToolResult {
                call_id: String::new(),
                output: serde_json::Value::Null,
                is_error: false,
            },
            Event::MessageCompleted {
                message_id: Uuid::nil(),
            },
            Event::Error {
                code: String::new(),
                message: String::new(),
            },
            Event::Done {
                status: RunStatus::Failed,
                usage: None,
                finish_reason: None,
            },
        ];
        for event in events {
            assert!(EVENT_KINDS.contains(&event.kind()));
        }
    }
}

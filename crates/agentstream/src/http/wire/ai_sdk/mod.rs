//! The Vercel AI SDK's UI message stream, protocol v1 (the stream `useChat`
//! reads; the response carries `x-vercel-ai-ui-message-stream: v1`): a run's
//! committed events as [`UiMessageChunk`]s, one SSE `data:` line each, then
//! `data: [DONE]`. The chunk shapes are the `ai` package's
//! `uiMessageChunkSchema` (`packages/ai/src/ui-message-stream/ui-message-chunks.ts`
//! in github.com/vercel/ai, versions 5 and 6).
//!
//! A run is one UI message, whose ID is the run's ID: `start` (with the run
//! and conversation IDs as metadata), then per model call a step
//! (`start-step` … `finish-step`) holding its text part and tool parts, then
//! `finish` with the finish reason on every ending (after `abort` for a
//! cancelled run, after `error` for a failed one). Each SSE message keeps the
//! `id: <seq>` of the event it came from, which the SDK's parser ignores.
//!
//! The tools ran on the server: tool parts are `dynamic` (the client did not
//! define them; they become `dynamic-tool` parts) and `providerExecuted` (the
//! client must not run them).
//!
//! A run that pauses for the user's approval of a call ends its stream with
//! `finish` (reason `tool-calls`, status `requires_action`). A client that
//! opts into AI SDK 6's parts (the header `x-ai-sdk-version: 6`) gets a
//! `tool-approval-request` for each call asked about (its `approvalId` is
//! the call's ID) and, once the run goes on, a `tool-output-denied` for each
//! call the user denied; AI SDK 5's parser knows neither, so other clients
//! get the calls without them, and a denied call's result as a tool error.

mod transcript;

use std::{collections::HashSet, sync::Arc};

use axum::response::sse::Event as SseEvent;
use serde::Serialize;
use uuid::Uuid;

pub use transcript::{RunStatuses, UiMessage, ui_messages, with_approvals};

use super::Encoder;
use crate::events::{Event, RunEvent, RunStatus, StoredEvent, Usage};

/// The last SSE message of a stream that ended with its run.
const DONE: &str = "[DONE]";

/// What a UI message carries besides its parts: which run and conversation
/// it is, and on `finish` how the run ended.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct MessageMetadata {
    /// The conversation the run answers in.
    pub conversation_id: Uuid,
    /// The run: `POST /v1/runs/{run_id}/cancel` stops it.
    pub run_id: Uuid,
    /// How the run ended (on `finish` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<RunStatus>,
    /// The run's tokens, when the model reported them (on `finish` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

/// Why the run's reply ended, as the AI SDK names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum FinishReason {
    /// The reply is whole.
    Stop,
    /// The model reached its token limit.
    Length,
    /// The model's content filter stopped it.
    ContentFilter,
    /// The run failed or was interrupted.
    Error,
    /// The run paused for the user's approval of a tool call.
    ToolCalls,
    /// The run was cancelled.
    Other,
}

/// One chunk of the UI message stream: the `data` of one SSE message.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum UiMessageChunk {
    /// The message begins: the first chunk.
    #[serde(rename_all = "camelCase")]
    Start {
        /// The UI message's ID: the run's ID.
        message_id: Uuid,
        /// The run and its conversation.
        message_metadata: MessageMetadata,
    },
    /// A model call begins.
    StartStep,
    /// A model call ended, with its tool calls' results.
    FinishStep,
    /// A text part begins.
    TextStart {
        /// The part's ID, unique in the message.
        id: String,
    },
    /// More of a text part.
    TextDelta {
        /// The part's ID.
        id: String,
        /// The text.
        delta: String,
    },
    /// A text part is whole.
    TextEnd {
        /// The part's ID.
        id: String,
    },
    /// A reasoning part begins: the model's reasoning, apart from its reply.
    ReasoningStart {
        /// The part's ID, unique in the message.
        id: String,
    },
    /// More of a reasoning part.
    ReasoningDelta {
        /// The part's ID.
        id: String,
        /// The text.
        delta: String,
    },
    /// A reasoning part is whole.
    ReasoningEnd {
        /// The part's ID.
        id: String,
    },
    /// The model began a tool call.
    #[serde(rename_all = "camelCase")]
    ToolInputStart {
        /// The call's ID.
        tool_call_id: String,
        /// The tool's name.
        tool_name: String,
        /// Always true: the tool runs on the server.
        provider_executed: bool,
        /// Always true: the client did not define the tool.
        dynamic: bool,
    },
    /// More of a tool call's arguments (JSON text); joined in order, a
    /// call's pieces are its arguments.
    #[serde(rename_all = "camelCase")]
    ToolInputDelta {
        /// The call's ID.
        tool_call_id: String,
        /// The next piece.
        input_text_delta: String,
    },
    /// A tool call's arguments are whole.
    #[serde(rename_all = "camelCase")]
    ToolInputAvailable {
        /// The call's ID.
        tool_call_id: String,
        /// The tool's name.
        tool_name: String,
        /// The arguments (a string when the model wrote invalid JSON).
        input: serde_json::Value,
        /// Always true.
        provider_executed: bool,
        /// Always true.
        dynamic: bool,
    },
    /// A tool's result.
    #[serde(rename_all = "camelCase")]
    ToolOutputAvailable {
        /// The call it answers.
        tool_call_id: String,
        /// The result, as the native `tool.result`'s `output`.
        output: serde_json::Value,
        /// Always true.
        provider_executed: bool,
        /// Always true.
        dynamic: bool,
    },
    /// A call waits for the user's approval (AI SDK 6 parts only): answer
    /// with `addToolApprovalResponse({id: approvalId, approved, reason})`.
    #[serde(rename_all = "camelCase")]
    ToolApprovalRequest {
        /// The approval's ID: the call's ID.
        approval_id: String,
        /// The call's ID.
        tool_call_id: String,
    },
    /// The user denied the call: it was not made (AI SDK 6 parts only).
    #[serde(rename_all = "camelCase")]
    ToolOutputDenied {
        /// The call's ID.
        tool_call_id: String,
    },
    /// A tool error: what the model read instead of a result.
    #[serde(rename_all = "camelCase")]
    ToolOutputError {
        /// The call it answers.
        tool_call_id: String,
        /// The error.
        error_text: String,
        /// Always true.
        provider_executed: bool,
        /// Always true.
        dynamic: bool,
    },
    /// The run hit a problem, or the server could not read its log (then the
    /// stream ends here, without `finish`).
    #[serde(rename_all = "camelCase")]
    Error {
        /// What happened, for people.
        error_text: String,
    },
    /// The run was cancelled; `finish` follows.
    Abort {
        /// Always `cancelled`.
        reason: &'static str,
    },
    /// The message ended: the last chunk before `[DONE]`.
    #[serde(rename_all = "camelCase")]
    Finish {
        /// Why.
        finish_reason: FinishReason,
        /// The run, its conversation, its status and its usage.
        message_metadata: MessageMetadata,
    },
}

/// The UI message stream of one run. It reads the run's events from its
/// first: a resumed stream is a full replay.
#[derive(Debug)]
pub struct AiSdkEncoder {
    /// The run.
    run_id: Uuid,
    /// Its conversation.
    conversation_id: Uuid,
    /// `start` was sent.
    started: bool,
    /// A step is open.
    in_step: bool,
    /// The open step's message was stored whole: its tool calls and results
    /// may follow, and the next text or tool call begins a new step.
    message_done: bool,
    /// The open text part's ID.
    text: Option<String>,
    /// The open reasoning part's ID.
    reasoning: Option<String>,
    /// The calls whose `tool-input-start` was sent.
    inputs: HashSet<String>,
    /// An `error` was sent.
    errored: bool,
    /// The client reads AI SDK 6's approval parts.
    approval_parts: bool,
    /// The calls the user denied, whose `tool-output-denied` stands for
    /// their result.
    denied: HashSet<String>,
}

impl AiSdkEncoder {
    /// The stream of `run_id`, a run of `conversation_id`.
    pub fn new(run_id: Uuid, conversation_id: Uuid) -> AiSdkEncoder {
        AiSdkEncoder {
            run_id,
            conversation_id,
            started: false,
            in_step: false,
            message_done: false,
            text: None,
            reasoning: None,
            inputs: HashSet::new(),
            errored: false,
            approval_parts: false,
            denied: HashSet::new(),
        }
    }

    /// The stream for a client that reads AI SDK 6's approval parts
    /// (`tool-approval-request`, `tool-output-denied`).
    #[must_use]
    pub fn with_approval_parts(mut self, on: bool) -> AiSdkEncoder {
        self.approval_parts = on;
        self
    }

    fn metadata(&self) -> MessageMetadata {
        MessageMetadata {
            conversation_id: self.conversation_id,
            run_id: self.run_id,
            status: None,
            usage: None,
        }
    }

    /// The chunks `event`, at `seq`, adds.
    fn chunks(&mut self, seq: i64, event: Event) -> Vec<UiMessageChunk> {
        let mut chunks = Vec::with_capacity(2);
        if !self.started {
            self.started = true;
            chunks.push(UiMessageChunk::Start {
                message_id: self.run_id,
                message_metadata: self.metadata(),
            });
        }
        match event {
            Event::RunStarted { .. } | Event::ContextTrimmed { .. } => {}
            Event::Delta { text } => {
                if !text.is_empty() {
                    self.step(&mut chunks);
                    self.end_reasoning(&mut chunks);
                    let id = open_part(&mut self.text, "text", seq, &mut chunks);
                    chunks.push(UiMessageChunk::TextDelta { id, delta: text });
                }
            }
            Event::ReasoningDelta { text } => {
                if !text.is_empty() {
                    self.step(&mut chunks);
                    self.end_text(&mut chunks);
                    let id = open_part(&mut self.reasoning, "reasoning", seq, &mut chunks);
                    chunks.push(UiMessageChunk::ReasoningDelta { id, delta: text });
                }
            }
            Event::ToolCallDelta {
                call_id,
                name,
                arguments_delta,
            } => {
                self.step(&mut chunks);
                self.input_start(&mut chunks, &call_id, name);
                if !arguments_delta.is_empty() {
                    chunks.push(UiMessageChunk::ToolInputDelta {
                        tool_call_id: call_id,
                        input_text_delta: arguments_delta,
                    });
                }
            }
            Event::ToolCall {
                call_id,
                name,
                arguments,
            } => {
                // After its message was stored, in the same step.
                self.open_step(&mut chunks);
                self.input_start(&mut chunks, &call_id, name.clone());
                chunks.push(UiMessageChunk::ToolInputAvailable {
                    tool_call_id: call_id,
                    tool_name: name,
                    input: arguments,
                    provider_executed: true,
                    dynamic: true,
                });
            }
            Event::ToolApprovalRequested { call_id, .. } => {
                if self.approval_parts {
                    chunks.push(UiMessageChunk::ToolApprovalRequest {
                        approval_id: call_id.clone(),
                        tool_call_id: call_id,
                    });
                }
            }
            Event::ToolApprovalDecided {
                call_id, approved, ..
            } => {
                if !approved && self.approval_parts {
                    self.denied.insert(call_id.clone());
                    chunks.push(UiMessageChunk::ToolOutputDenied {
                        tool_call_id: call_id,
                    });
                }
            }
            Event::ToolResult { call_id, .. } if self.denied.contains(&call_id) => {}
            Event::ToolResult {
                call_id,
                output,
                is_error,
            } => {
                self.open_step(&mut chunks);
                chunks.push(if is_error {
                    let error_text = match output.get("error") {
                        Some(serde_json::Value::String(error)) => error.clone(),
                        _ => output.to_string(),
                    };
                    UiMessageChunk::ToolOutputError {
                        tool_call_id: call_id,
                        error_text,
                        provider_executed: true,
                        dynamic: true,
                    }
                } else {
                    UiMessageChunk::ToolOutputAvailable {
                        tool_call_id: call_id,
                        output,
                        provider_executed: true,
                        dynamic: true,
                    }
                });
            }
            Event::MessageCompleted { .. } => {
                self.step(&mut chunks);
                self.end_parts(&mut chunks);
                self.message_done = true;
            }
            Event::Error { message, .. } => {
                self.end_parts(&mut chunks);
                self.errored = true;
                chunks.push(UiMessageChunk::Error {
                    error_text: message,
                });
            }
            Event::Done {
                status,
                usage,
                finish_reason,
            } => {
                self.end_parts(&mut chunks);
                if self.in_step {
                    self.in_step = false;
                    chunks.push(UiMessageChunk::FinishStep);
                }
                let reason = match status {
                    RunStatus::Completed => match finish_reason.as_deref() {
                        Some("length") => FinishReason::Length,
                        Some("content_filter") => FinishReason::ContentFilter,
                        _ => FinishReason::Stop,
                    },
                    RunStatus::Cancelled => {
                        chunks.push(UiMessageChunk::Abort {
                            reason: "cancelled",
                        });
                        FinishReason::Other
                    }
                    RunStatus::RequiresAction => FinishReason::ToolCalls,
                    RunStatus::Failed | RunStatus::Interrupted | RunStatus::Expired => {
                        if !self.errored {
                            chunks.push(UiMessageChunk::Error {
                                error_text: "the run was interrupted: the server stopped before \
                                             it ended"
                                    .to_owned(),
                            });
                        }
                        FinishReason::Error
                    }
                    // Not an ending: never in a `done`.
                    RunStatus::Queued | RunStatus::Running => FinishReason::Other,
                };
                chunks.push(UiMessageChunk::Finish {
                    finish_reason: reason,
                    message_metadata: MessageMetadata {
                        status: Some(status),
                        usage,
                        ..self.metadata()
                    },
                });
            }
        }
        chunks
    }

    /// Opens a step for the next text or tool call: the first, or a new one
    /// once the open step's message was stored.
    fn step(&mut self, chunks: &mut Vec<UiMessageChunk>) {
        if self.in_step && self.message_done {
            self.end_parts(chunks);
            chunks.push(UiMessageChunk::FinishStep);
            self.in_step = false;
        }
        self.open_step(chunks);
    }

    /// Opens a step unless one is open.
    fn open_step(&mut self, chunks: &mut Vec<UiMessageChunk>) {
        if !self.in_step {
            self.in_step = true;
            self.message_done = false;
            chunks.push(UiMessageChunk::StartStep);
        }
    }

    /// Ends the open text and reasoning parts, if any.
    fn end_parts(&mut self, chunks: &mut Vec<UiMessageChunk>) {
        self.end_text(chunks);
        self.end_reasoning(chunks);
    }

    /// Ends the open text part, if any.
    fn end_text(&mut self, chunks: &mut Vec<UiMessageChunk>) {
        if let Some(id) = self.text.take() {
            chunks.push(UiMessageChunk::TextEnd { id });
        }
    }

    /// Ends the open reasoning part, if any.
    fn end_reasoning(&mut self, chunks: &mut Vec<UiMessageChunk>) {
        if let Some(id) = self.reasoning.take() {
            chunks.push(UiMessageChunk::ReasoningEnd { id });
        }
    }

    /// `tool-input-start` for the call, unless it was sent; the text part
    /// before it ends.
    fn input_start(&mut self, chunks: &mut Vec<UiMessageChunk>, call_id: &str, name: String) {
        if self.inputs.contains(call_id) {
            return;
        }
        self.end_parts(chunks);
        self.inputs.insert(call_id.to_owned());
        chunks.push(UiMessageChunk::ToolInputStart {
            tool_call_id: call_id.to_owned(),
            tool_name: name,
            provider_executed: true,
            dynamic: true,
        });
    }
}

/// The ID of the open part in `open`, a text or a reasoning part (`kind`);
/// when none is open, one begins, named after the `seq` of its first piece.
fn open_part(
    open: &mut Option<String>,
    kind: &str,
    seq: i64,
    chunks: &mut Vec<UiMessageChunk>,
) -> String {
    if let Some(id) = open {
        return id.clone();
    }
    let id = format!("{kind}-{seq}");
    chunks.push(match kind {
        "reasoning" => UiMessageChunk::ReasoningStart { id: id.clone() },
        _ => UiMessageChunk::TextStart { id: id.clone() },
    });
    *open = Some(id.clone());
    id
}

/// One chunk as an SSE message.
fn message(chunk: &UiMessageChunk) -> SseEvent {
    // Strings, numbers and JSON values: serializing cannot fail.
    SseEvent::default().data(serde_json::to_string(chunk).unwrap_or_default())
}

impl Encoder for AiSdkEncoder {
    fn event(&mut self, event: Arc<StoredEvent>) -> Vec<SseEvent> {
        let Ok(RunEvent { seq, event, .. }) = RunEvent::parse(&event.data) else {
            return Vec::new();
        };
        let done = matches!(event, Event::Done { .. });
        let id = seq.to_string();
        let mut messages: Vec<SseEvent> = self
            .chunks(seq, event)
            .iter()
            .map(|chunk| message(chunk).id(id.as_str()))
            .collect();
        if done {
            messages.push(SseEvent::default().data(DONE));
        }
        messages
    }

    /// The pause of a run that went on: its step ends, its message does not.
    fn passed_pause(&mut self, event: Arc<StoredEvent>) -> Vec<SseEvent> {
        let mut chunks = Vec::new();
        self.end_parts(&mut chunks);
        if self.in_step {
            self.in_step = false;
            chunks.push(UiMessageChunk::FinishStep);
        }
        let id = event.seq.to_string();
        chunks
            .iter()
            .map(|chunk| message(chunk).id(id.as_str()))
            .collect()
    }

    fn unavailable(&mut self, reason: &str) -> Vec<SseEvent> {
        vec![message(&UiMessageChunk::Error {
            error_text: reason.to_owned(),
        })]
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::events::ErrorCode;

    /// The chunks of `events`, as the client reads them (IDs left out).
    fn read(events: Vec<Event>) -> Vec<Value> {
        let run_id = Uuid::nil();
        let mut encoder = AiSdkEncoder::new(run_id, Uuid::max());
        let mut chunks = Vec::new();
        for (seq, event) in (1..).zip(events) {
            for chunk in encoder.chunks(seq, event) {
                chunks.push(serde_json::to_value(&chunk).unwrap());
            }
        }
        chunks
    }

    fn done(status: RunStatus) -> Event {
        Event::Done {
            status,
            usage: None,
            finish_reason: None,
        }
    }

    fn types(chunks: &[Value]) -> Vec<&str> {
        chunks
            .iter()
            .map(|chunk| chunk["type"].as_str().unwrap())
            .collect()
    }

    #[test]
    fn a_tool_call_and_its_result_share_the_step_of_their_model_call() {
        let chunks = read(vec![
            Event::RunStarted {
                conversation_id: Uuid::max(),
            },
            Event::Delta {
                text: "Let me look.".into(),
            },
            Event::ToolCallDelta {
                call_id: "c1".into(),
                name: "get_profile".into(),
                arguments_delta: "{\"a\":".into(),
            },
            Event::ToolCallDelta {
                call_id: "c1".into(),
                name: "get_profile".into(),
                arguments_delta: "1}".into(),
            },
            Event::MessageCompleted {
                message_id: Uuid::nil(),
            },
            Event::ToolCall {
                call_id: "c1".into(),
                name: "get_profile".into(),
                arguments: json!({"a": 1}),
            },
            Event::ToolResult {
                call_id: "c1".into(),
                output: json!({"rows": []}),
                is_error: false,
            },
            Event::Delta {
                text: "Nothing yet.".into(),
            },
            Event::MessageCompleted {
                message_id: Uuid::nil(),
            },
            done(RunStatus::Completed),
        ]);
        assert_eq!(
            types(&chunks),
            [
                "start",
                "start-step",
                "text-start",
                "text-delta",
                "text-end",
                "tool-input-start",
                "tool-input-delta",
                "tool-input-delta",
                "tool-input-available",
                "tool-output-available",
                "finish-step",
                "start-step",
                "text-start",
                "text-delta",
                "text-end",
                "finish-step",
                "finish",
            ]
        );
        assert_eq!(
            chunks[0],
            json!({
                "type": "start",
                "messageId": Uuid::nil(),
                "messageMetadata": {"conversation_id": Uuid::max(), "run_id": Uuid::nil()},
            })
        );
        assert_eq!(
            chunks[5],
            json!({"type": "tool-input-start", "toolCallId": "c1", "toolName": "get_profile",
                   "providerExecuted": true, "dynamic": true})
        );
        assert_eq!(
            chunks[7],
            json!({"type": "tool-input-delta", "toolCallId": "c1", "inputTextDelta": "1}"})
        );
        assert_eq!(chunks[8]["input"], json!({"a": 1}));
        // Text parts are told apart by the `seq` of their first piece.
        assert_eq!(chunks[2]["id"], "text-2");
        assert_eq!(chunks[12]["id"], "text-8");
        assert_eq!(
            chunks[16],
            json!({
                "type": "finish",
                "finishReason": "stop",
                "messageMetadata": {"conversation_id": Uuid::max(), "run_id": Uuid::nil(),
                                    "status": "completed"},
            })
        );
    }

    #[test]
    fn reasoning_is_a_part_of_its_own_before_the_text() {
        let chunks = read(vec![
            Event::ReasoningDelta {
                text: "The user ".into(),
            },
            Event::ReasoningDelta {
                text: "greets.".into(),
            },
            Event::Delta { text: "Hi!".into() },
            Event::MessageCompleted {
                message_id: Uuid::nil(),
            },
            done(RunStatus::Completed),
        ]);
        assert_eq!(
            types(&chunks),
            [
                "start",
                "start-step",
                "reasoning-start",
                "reasoning-delta",
                "reasoning-delta",
                "reasoning-end",
                "text-start",
                "text-delta",
                "text-end",
                "finish-step",
                "finish"
            ]
        );
        assert_eq!(
            chunks[3],
            json!({"type": "reasoning-delta", "id": "reasoning-1", "delta": "The user "})
        );
    }

    #[test]
    fn every_ending_finishes() {
        let cancelled = read(vec![
            Event::Delta { text: "Hel".into() },
            done(RunStatus::Cancelled),
        ]);
        assert_eq!(
            types(&cancelled),
            [
                "start",
                "start-step",
                "text-start",
                "text-delta",
                "text-end",
                "finish-step",
                "abort",
                "finish"
            ]
        );
        assert_eq!(cancelled[7]["finishReason"], "other");

        let failed = read(vec![
            Event::Error {
                code: ErrorCode::UpstreamError,
                message: "the model server hung up".into(),
            },
            done(RunStatus::Failed),
        ]);
        assert_eq!(types(&failed), ["start", "error", "finish"]);
        assert_eq!(failed[1]["errorText"], "the model server hung up");
        assert_eq!(failed[2]["finishReason"], "error");
        assert_eq!(failed[2]["messageMetadata"]["status"], "failed");

        let interrupted = read(vec![done(RunStatus::Interrupted)]);
        assert_eq!(types(&interrupted), ["start", "error", "finish"]);

        let cut = read(vec![
            Event::Delta { text: "Hi".into() },
            Event::Done {
                status: RunStatus::Completed,
                usage: Some(Usage {
                    prompt_tokens: 3,
                    completion_tokens: 1,
                    total_tokens: 4,
                }),
                finish_reason: Some("length".into()),
            },
        ]);
        let finish = cut.last().unwrap();
        assert_eq!(finish["finishReason"], "length");
        assert_eq!(finish["messageMetadata"]["usage"]["completion_tokens"], 1);
    }

    #[test]
    fn a_tool_error_and_a_call_without_pieces() {
        let chunks = read(vec![
            Event::MessageCompleted {
                message_id: Uuid::nil(),
            },
            Event::ToolCall {
                call_id: "c1".into(),
                name: "nope".into(),
                arguments: json!({}),
            },
            Event::ToolResult {
                call_id: "c1".into(),
                output: json!({"error": "no such tool"}),
                is_error: true,
            },
        ]);
        assert_eq!(
            types(&chunks),
            [
                "start",
                "start-step",
                "tool-input-start",
                "tool-input-available",
                "tool-output-error"
            ]
        );
        assert_eq!(chunks[4]["errorText"], "no such tool");
    }
}

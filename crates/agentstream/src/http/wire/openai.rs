//! The OpenAI Chat Completions format: a run's committed events as one
//! completion, streamed as `chat.completion.chunk`s ([`OpenAiEncoder`]) or
//! gathered into one `chat.completion` ([`gather`]); and the error object
//! OpenAI's clients read.
//!
//! What the client sees of a run: its reply's text. Tool calls and results
//! stay on the server (the client did not define those tools and would try
//! to run them); the texts of a run's assistant messages (one per model
//! call) are joined with a blank line. A run that does not complete is an
//! error: in a stream, a `data: {"error": …}` line and the end of the stream
//! (no `[DONE]`), which the `openai` SDKs raise as `APIError`.
//!
//! The upstream wire types (`llm::openai::wire`) go the other ways (requests
//! out, chunks in), so these are written here.

use std::sync::Arc;

use axum::{http::StatusCode, response::sse::Event as SseEvent};
use futures_util::{Stream, StreamExt};
use serde::Serialize;
use uuid::Uuid;

use super::Encoder;
use crate::{
    events::{ErrorCode, Event, RunEvent, RunStatus, StoredEvent, Usage},
    runs::Delivery,
};

/// Put between the texts of two assistant messages of one run.
const MESSAGE_SEPARATOR: &str = "\n\n";

/// The error object of OpenAI's API, in every error body and in a failed
/// stream: `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[schema(example = json!({"error": {"message": "the model `gpt-4` does not exist", "type": "invalid_request_error", "param": "model", "code": "model_not_found"}}))]
pub struct OpenAiErrorBody {
    /// What went wrong.
    pub error: OpenAiError,
}

/// What went wrong, as OpenAI's clients read it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct OpenAiError {
    /// What happened, for people.
    pub message: String,
    /// `invalid_request_error`, `authentication_error`, `rate_limit_error`
    /// or `server_error`.
    #[serde(rename = "type")]
    #[schema(example = "invalid_request_error")]
    pub kind: &'static str,
    /// The request field at fault, when one is.
    pub param: Option<&'static str>,
    /// A stable code: `model_not_found`, `invalid_api_key`,
    /// `conversation_busy`, `tools_not_supported`, a run's error code
    /// (`upstream_error`, …), `run_cancelled`, `run_interrupted`, or one of
    /// the native API's codes.
    pub code: Option<String>,
}

/// Which completion a run is: the same for every chunk of it.
#[derive(Debug, Clone)]
pub struct Completion {
    /// `chatcmpl-<run ID>`.
    pub id: String,
    /// When the run was created, in Unix seconds.
    pub created: i64,
    /// The model asked for: the agent's name.
    pub model: String,
}

impl Completion {
    /// The completion of the run `run_id`, created at `created_at` (RFC 3339).
    pub fn of_run(run_id: Uuid, created_at: &str, model: String) -> Completion {
        let format = time::format_description::well_known::Rfc3339;
        let created = time::OffsetDateTime::parse(created_at, &format)
            .unwrap_or_else(|_| time::OffsetDateTime::now_utc())
            .unix_timestamp();
        Completion {
            id: format!("chatcmpl-{run_id}"),
            created,
            model,
        }
    }
}

/// A run that ended without completing its reply, as the client is told.
#[derive(Debug, Clone)]
pub struct Failure {
    /// The status of a response not yet begun: 502 when the model server
    /// failed, 409 when the run was cancelled, 503 when it was interrupted
    /// or its events could not be read, else 500.
    pub status: StatusCode,
    /// The error object.
    pub error: OpenAiError,
}

impl Failure {
    fn new(status: StatusCode, code: &str, message: String) -> Failure {
        Failure {
            status,
            error: OpenAiError {
                message,
                kind: "server_error",
                param: None,
                code: Some(code.to_owned()),
            },
        }
    }

    /// The server stopped following the run: it is shutting down.
    pub fn shutting_down() -> Failure {
        Failure::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Unavailable.as_str(),
            "the server is shutting down; the reply, as far as it got, is in the conversation"
                .to_owned(),
        )
    }

    /// The stream could not go on: the server could not read the run's log.
    fn unavailable(reason: &str) -> Failure {
        Failure::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Unavailable.as_str(),
            reason.to_owned(),
        )
    }
}

/// What one event adds to the completion.
#[derive(Debug)]
enum Step {
    /// The reply begins: the assistant's role.
    Start,
    /// More of the reply's text.
    Text(String),
    /// The reply is whole.
    Finish {
        /// `stop`, or the model's reason for stopping short (`length`, …).
        reason: String,
        /// The run's tokens; zero when the model reported none.
        usage: Usage,
    },
    /// The run ended without completing its reply.
    Fail(Failure),
}

/// A run's events, read one by one as a completion.
#[derive(Debug, Default)]
struct Reply {
    /// The role was sent.
    started: bool,
    /// Some text was sent.
    wrote: bool,
    /// An assistant message ended since the last text.
    message_ended: bool,
    /// The completion finished or failed; later events add nothing.
    ended: bool,
}

impl Reply {
    /// The steps `event` adds, in order.
    fn read(&mut self, event: Event) -> Vec<Step> {
        if self.ended {
            return Vec::new();
        }
        let mut steps = Vec::with_capacity(2);
        if !self.started {
            self.started = true;
            steps.push(Step::Start);
        }
        match event {
            Event::Delta { text } if !text.is_empty() => {
                let text = if self.wrote && self.message_ended {
                    format!("{MESSAGE_SEPARATOR}{text}")
                } else {
                    text
                };
                self.wrote = true;
                self.message_ended = false;
                steps.push(Step::Text(text));
            }
            Event::MessageCompleted { .. } => self.message_ended = true,
            Event::Error { code, message } => {
                self.ended = true;
                steps.push(Step::Fail(Failure::new(
                    failure_status(code),
                    code.as_str(),
                    message,
                )));
            }
            Event::Done {
                status,
                usage,
                finish_reason,
            } => {
                self.ended = true;
                let failure = match status {
                    RunStatus::Completed => {
                        steps.push(Step::Finish {
                            reason: finish_reason.unwrap_or_else(|| "stop".to_owned()),
                            usage: usage.unwrap_or_default(),
                        });
                        None
                    }
                    RunStatus::Cancelled => Some(Failure::new(
                        StatusCode::CONFLICT,
                        "run_cancelled",
                        "the run was cancelled before its reply was finished".to_owned(),
                    )),
                    RunStatus::Interrupted => Some(Failure::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "run_interrupted",
                        "the run was interrupted (the server stopped) before its reply was \
                         finished"
                            .to_owned(),
                    )),
                    // The reply cannot go on here: Chat Completions has no
                    // way to ask the user.
                    RunStatus::RequiresAction => Some(Failure::new(
                        StatusCode::CONFLICT,
                        "run_requires_action",
                        "the run waits for the user's approval of a tool call: decide with \
                         POST /v1/runs/{id}/approvals (the run's ID is the X-Run-Id header)"
                            .to_owned(),
                    )),
                    // Not a status `done` carries: a run that ended without
                    // saying how is a failure too.
                    RunStatus::Failed
                    | RunStatus::Expired
                    | RunStatus::Queued
                    | RunStatus::Running => Some(Failure::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        ErrorCode::Internal.as_str(),
                        "the run failed".to_owned(),
                    )),
                };
                steps.extend(failure.map(Step::Fail));
            }
            Event::RunStarted { .. }
            | Event::Delta { .. }
            | Event::ReasoningDelta { .. }
            | Event::ContextTrimmed { .. }
            | Event::ToolCallDelta { .. }
            | Event::ToolCall { .. }
            | Event::ToolResult { .. }
            | Event::ToolApprovalRequested { .. }
            | Event::ToolApprovalDecided { .. } => {}
        }
        steps
    }

    /// The steps of a stored event; one that does not parse adds nothing.
    fn read_stored(&mut self, event: &StoredEvent) -> Vec<Step> {
        match RunEvent::parse(&event.data) {
            Ok(RunEvent { event, .. }) => self.read(event),
            Err(_) => Vec::new(),
        }
    }
}

/// The status of a response that a run failing with `code` answers.
fn failure_status(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::UpstreamError
        | ErrorCode::UpstreamTimeout
        | ErrorCode::UpstreamProtocol
        | ErrorCode::UpstreamIncomplete => StatusCode::BAD_GATEWAY,
        // As OpenAI answers `context_length_exceeded`.
        ErrorCode::ContextLength => StatusCode::BAD_REQUEST,
        // The run waited for a decision that did not come.
        ErrorCode::ApprovalTimeout => StatusCode::CONFLICT,
        ErrorCode::EventLog | ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::StepLimit
        | ErrorCode::EventLimit
        | ErrorCode::StorageError
        | ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// One `chat.completion.chunk`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ChatCompletionChunk<'a> {
    /// The completion's ID, the same in every chunk: `chatcmpl-<run ID>`.
    id: &'a str,
    /// Always `chat.completion.chunk`.
    #[schema(pattern = "^chat\\.completion\\.chunk$")]
    object: &'static str,
    /// When the run was created, in Unix seconds.
    created: i64,
    /// The agent.
    model: &'a str,
    /// One choice; none in the last chunk, which carries the usage.
    choices: Vec<ChunkChoice<'a>>,
    /// With `stream_options.include_usage`: null, except in the last chunk.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Usage>)]
    usage: Option<Option<Usage>>,
}

/// The choice of a chunk.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct ChunkChoice<'a> {
    /// Always 0.
    index: u32,
    /// What the reply gains.
    delta: ChunkDelta<'a>,
    /// Always null.
    #[schema(value_type = Option<Object>)]
    logprobs: Option<()>,
    /// Null, except in the reply's last chunk: `stop`, or why the model
    /// stopped short (`length`, `content_filter`).
    finish_reason: Option<&'a str>,
}

/// What a chunk adds to the reply.
#[derive(Debug, Default, Serialize, utoipa::ToSchema)]
struct ChunkDelta<'a> {
    /// `assistant`, in the first chunk only.
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    /// More of the reply's text.
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'a str>,
}

/// The OpenAI format: a run's events as the chunks of one completion, then
/// `data: [DONE]`; or an error line, and the end.
#[derive(Debug)]
pub struct OpenAiEncoder {
    /// The completion's identity.
    completion: Completion,
    /// `stream_options.include_usage`: `usage` in every chunk, and a last
    /// chunk with the run's tokens.
    include_usage: bool,
    /// Where the reply stands.
    reply: Reply,
}

impl OpenAiEncoder {
    /// An encoder for `completion`.
    pub fn new(completion: Completion, include_usage: bool) -> OpenAiEncoder {
        OpenAiEncoder {
            completion,
            include_usage,
            reply: Reply::default(),
        }
    }

    fn chunk(
        &self,
        delta: ChunkDelta<'_>,
        finish_reason: Option<&str>,
        usage: Option<Usage>,
    ) -> SseEvent {
        let choices = if usage.is_some() {
            Vec::new()
        } else {
            vec![ChunkChoice {
                index: 0,
                delta,
                logprobs: None,
                finish_reason,
            }]
        };
        let chunk = ChatCompletionChunk {
            id: &self.completion.id,
            object: "chat.completion.chunk",
            created: self.completion.created,
            model: &self.completion.model,
            choices,
            usage: self.include_usage.then_some(usage),
        };
        SseEvent::default().data(serde_json::to_string(&chunk).unwrap_or_default())
    }

    fn messages(&self, steps: Vec<Step>) -> Vec<SseEvent> {
        let mut messages = Vec::with_capacity(steps.len());
        for step in steps {
            match step {
                Step::Start => messages.push(self.chunk(
                    ChunkDelta {
                        role: Some("assistant"),
                        content: Some(""),
                    },
                    None,
                    None,
                )),
                Step::Text(text) => messages.push(self.chunk(
                    ChunkDelta {
                        role: None,
                        content: Some(&text),
                    },
                    None,
                    None,
                )),
                Step::Finish { reason, usage } => {
                    messages.push(self.chunk(ChunkDelta::default(), Some(&reason), None));
                    if self.include_usage {
                        messages.push(self.chunk(ChunkDelta::default(), None, Some(usage)));
                    }
                    messages.push(SseEvent::default().data("[DONE]"));
                }
                Step::Fail(failure) => messages.push(error_message(failure.error)),
            }
        }
        messages
    }
}

/// The stream's last message when the run fails: `data: {"error": …}`.
fn error_message(error: OpenAiError) -> SseEvent {
    let body = OpenAiErrorBody { error };
    SseEvent::default().data(serde_json::to_string(&body).unwrap_or_default())
}

impl Encoder for OpenAiEncoder {
    fn event(&mut self, event: Arc<StoredEvent>) -> Vec<SseEvent> {
        let steps = self.reply.read_stored(&event);
        self.messages(steps)
    }

    /// The run went on: the completion goes on too.
    fn passed_pause(&mut self, _event: Arc<StoredEvent>) -> Vec<SseEvent> {
        Vec::new()
    }

    fn unavailable(&mut self, reason: &str) -> Vec<SseEvent> {
        self.reply.ended = true;
        vec![error_message(Failure::unavailable(reason).error)]
    }

    // OpenAI's SDKs read a message without data, such as a lone `retry:`
    // line, or a keep-alive comment after an `id:` line, as a chunk, and fail
    // to parse it: no `retry:` and no `id:`.
    fn opening(&self) -> Option<SseEvent> {
        None
    }
}

/// A whole `chat.completion`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ChatCompletion {
    /// `chatcmpl-<run ID>`.
    id: String,
    /// Always `chat.completion`.
    #[schema(pattern = "^chat\\.completion$")]
    object: &'static str,
    /// When the run was created, in Unix seconds.
    created: i64,
    /// The agent.
    model: String,
    /// The one reply.
    choices: Vec<CompletionChoice>,
    /// The run's tokens over all its model calls; zero when the model
    /// reported none.
    usage: Usage,
}

/// The choice of a completion.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct CompletionChoice {
    /// Always 0.
    index: u32,
    /// The reply.
    message: CompletionMessage,
    /// Always null.
    #[schema(value_type = Option<Object>)]
    logprobs: Option<()>,
    /// `stop`, or why the model stopped short (`length`, `content_filter`).
    finish_reason: String,
}

/// The reply of a completion.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct CompletionMessage {
    /// Always `assistant`.
    role: &'static str,
    /// The text of the run's assistant messages, joined by a blank line.
    content: String,
    /// Always null.
    #[schema(value_type = Option<String>)]
    refusal: Option<()>,
}

/// The run's events gathered into one completion, or the failure that
/// ended it. `None` when the events stopped before the run ended (the
/// server is shutting down).
pub async fn gather(
    completion: Completion,
    deliveries: impl Stream<Item = Delivery>,
) -> Option<Result<ChatCompletion, Failure>> {
    let mut reply = Reply::default();
    let mut content = String::new();
    let mut deliveries = std::pin::pin!(deliveries);
    while let Some(delivery) = deliveries.next().await {
        let steps = match delivery {
            Delivery::Event(event) => reply.read_stored(&event),
            Delivery::PassedPause(_) => Vec::new(),
            Delivery::Unavailable(reason) => return Some(Err(Failure::unavailable(&reason))),
        };
        for step in steps {
            match step {
                Step::Start => {}
                Step::Text(text) => content.push_str(&text),
                Step::Finish { reason, usage } => {
                    return Some(Ok(ChatCompletion {
                        id: completion.id,
                        object: "chat.completion",
                        created: completion.created,
                        model: completion.model,
                        choices: vec![CompletionChoice {
                            index: 0,
                            message: CompletionMessage {
                                role: "assistant",
                                content,
                                refusal: None,
                            },
                            logprobs: None,
                            finish_reason: reason,
                        }],
                        usage,
                    }));
                }
                Step::Fail(failure) => return Some(Err(failure)),
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use futures_util::stream;

    use super::*;

    fn completion() -> Completion {
        Completion::of_run(Uuid::nil(), "2024-05-01T12:00:00Z", "chat".to_owned())
    }

    fn deliveries(events: Vec<Event>) -> Vec<Delivery> {
        (1..)
            .zip(events)
            .map(|(seq, event)| Delivery::Event(Arc::new(event.to_stored(Uuid::nil(), seq))))
            .collect()
    }

    fn done(status: RunStatus, finish_reason: Option<&str>) -> Event {
        Event::Done {
            status,
            usage: Some(Usage {
                prompt_tokens: 3,
                completion_tokens: 4,
                total_tokens: 7,
            }),
            finish_reason: finish_reason.map(str::to_owned),
        }
    }

    /// Two model calls with a tool call between them.
    fn a_reply_with_a_tool_call(end: Event) -> Vec<Event> {
        vec![
            Event::RunStarted {
                conversation_id: Uuid::nil(),
            },
            Event::Delta {
                text: "Let me look.".into(),
            },
            Event::MessageCompleted {
                message_id: Uuid::nil(),
            },
            Event::ToolCall {
                call_id: "c1".into(),
                name: "get_profile".into(),
                arguments: serde_json::json!({}),
            },
            Event::ToolResult {
                call_id: "c1".into(),
                output: serde_json::json!({"name": "Ada"}),
                is_error: false,
            },
            Event::Delta { text: "Ada".into() },
            Event::Delta { text: "!".into() },
            Event::MessageCompleted {
                message_id: Uuid::nil(),
            },
            end,
        ]
    }

    #[tokio::test]
    async fn a_completed_run_is_one_completion_without_its_tool_calls() {
        let events = a_reply_with_a_tool_call(done(RunStatus::Completed, None));
        let gathered = gather(completion(), stream::iter(deliveries(events)))
            .await
            .unwrap()
            .unwrap();
        let json = serde_json::to_value(&gathered).unwrap();
        assert_eq!(json["id"], "chatcmpl-00000000-0000-0000-0000-000000000000");
        assert_eq!(json["object"], "chat.completion");
        assert_eq!(json["created"], 1_714_564_800);
        assert_eq!(json["model"], "chat");
        assert_eq!(
            json["choices"][0]["message"]["content"],
            "Let me look.\n\nAda!"
        );
        assert_eq!(json["choices"][0]["message"]["role"], "assistant");
        assert_eq!(json["choices"][0]["finish_reason"], "stop");
        assert_eq!(json["usage"]["total_tokens"], 7);
    }

    #[tokio::test]
    async fn a_run_that_does_not_complete_is_a_failure() {
        let cases = [
            (
                vec![
                    Event::Delta { text: "Hi".into() },
                    Event::Error {
                        code: ErrorCode::UpstreamTimeout,
                        message: "the model server did not answer in time".into(),
                    },
                    done(RunStatus::Failed, None),
                ],
                StatusCode::BAD_GATEWAY,
                "upstream_timeout",
            ),
            (
                vec![done(RunStatus::Cancelled, None)],
                StatusCode::CONFLICT,
                "run_cancelled",
            ),
            (
                vec![done(RunStatus::Interrupted, None)],
                StatusCode::SERVICE_UNAVAILABLE,
                "run_interrupted",
            ),
        ];
        for (events, status, code) in cases {
            let failure = gather(completion(), stream::iter(deliveries(events)))
                .await
                .unwrap()
                .unwrap_err();
            assert_eq!(failure.status, status, "{code}");
            assert_eq!(failure.error.code.as_deref(), Some(code));
            assert_eq!(failure.error.kind, "server_error");
        }
        let cut = gather(completion(), stream::iter(deliveries(vec![]))).await;
        assert!(cut.is_none());
    }

    /// The body of the SSE response `encoder` makes of `events`.
    async fn streamed(encoder: OpenAiEncoder, events: Vec<Event>) -> String {
        let streams = super::super::Streams {
            keep_alive: std::time::Duration::from_secs(15),
            end: tokio_util::sync::CancellationToken::new(),
            open: tokio_util::task::TaskTracker::new(),
        };
        let response = super::super::sse_response(
            encoder,
            Uuid::nil(),
            stream::iter(deliveries(events)),
            &streams,
            &[],
        );
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        String::from_utf8(body.to_vec()).unwrap()
    }

    fn datas(body: &str) -> Vec<serde_json::Value> {
        body.split("\n\n")
            .filter(|message| !message.is_empty())
            .map(|message| {
                let data = message.strip_prefix("data: ").unwrap();
                serde_json::from_str(data).unwrap_or_else(|_| data.into())
            })
            .collect()
    }

    #[tokio::test]
    async fn chunks_open_with_the_role_and_end_with_the_usage_and_done() {
        let events = a_reply_with_a_tool_call(done(RunStatus::Completed, Some("length")));
        let body = streamed(OpenAiEncoder::new(completion(), true), events).await;
        assert!(
            body.starts_with("data: {"),
            "no retry: and no id: lines: {body}"
        );
        let datas = datas(&body);
        let id = "chatcmpl-00000000-0000-0000-0000-000000000000";
        for chunk in &datas[..datas.len() - 1] {
            assert_eq!(chunk["id"], id);
            assert_eq!(chunk["object"], "chat.completion.chunk");
            assert_eq!(chunk["model"], "chat");
        }
        let deltas: Vec<&serde_json::Value> = datas
            .iter()
            .filter_map(|chunk| chunk["choices"].get(0))
            .map(|choice| &choice["delta"])
            .collect();
        assert_eq!(
            deltas[0],
            &serde_json::json!({"role": "assistant", "content": ""})
        );
        let text: String = deltas
            .iter()
            .filter_map(|delta| delta["content"].as_str())
            .collect();
        assert_eq!(text, "Let me look.\n\nAda!");
        let n = datas.len();
        assert_eq!(datas[n - 3]["choices"][0]["finish_reason"], "length");
        assert_eq!(datas[n - 3]["usage"], serde_json::Value::Null);
        assert_eq!(datas[n - 2]["choices"], serde_json::json!([]));
        assert_eq!(datas[n - 2]["usage"]["total_tokens"], 7);
        assert_eq!(datas[n - 1], "[DONE]");
        for chunk in &datas[..n - 3] {
            assert_eq!(
                chunk["choices"][0]["finish_reason"],
                serde_json::Value::Null
            );
        }
    }

    #[tokio::test]
    async fn without_include_usage_no_chunk_has_usage() {
        let events = a_reply_with_a_tool_call(done(RunStatus::Completed, None));
        let datas = datas(&streamed(OpenAiEncoder::new(completion(), false), events).await);
        let n = datas.len();
        assert_eq!(datas[n - 2]["choices"][0]["finish_reason"], "stop");
        assert_eq!(datas[n - 1], "[DONE]");
        assert!(
            datas[..n - 1]
                .iter()
                .all(|chunk| chunk.get("usage").is_none())
        );
    }

    #[tokio::test]
    async fn a_failure_mid_stream_is_an_error_line_then_the_end() {
        let events = vec![
            Event::RunStarted {
                conversation_id: Uuid::nil(),
            },
            Event::Delta { text: "Hi".into() },
            Event::Error {
                code: ErrorCode::UpstreamError,
                message: "the model server failed mid-reply".into(),
            },
            done(RunStatus::Failed, None),
        ];
        let datas = datas(&streamed(OpenAiEncoder::new(completion(), true), events).await);
        assert_eq!(datas.len(), 3, "{datas:?}");
        assert_eq!(
            datas[2],
            serde_json::json!({"error": {
                "message": "the model server failed mid-reply",
                "type": "server_error",
                "param": null,
                "code": "upstream_error",
            }})
        );
    }
}

//! Model providers: the trait the agent loop streams from, and its implementations.

pub mod openai;
pub mod registry;
pub mod scripted;
#[cfg(test)]
mod test_requests;
pub(crate) mod transport;

use std::fmt::Debug;

use futures_util::stream::BoxStream;
use serde::{Deserialize, Serialize};

use crate::events::ErrorCode;

/// A function the model may call.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ToolSpec {
    /// The function's name.
    pub name: String,
    /// What it does, for the model.
    pub description: String,
    /// Its arguments as a JSON Schema object.
    pub parameters: serde_json::Value,
}

/// A tool call the model made, whole.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCall {
    /// The model's ID for the call; the result answers it.
    pub id: String,
    /// The function's name.
    pub name: String,
    /// The arguments as JSON text (a JSON object, with every U+0000 in its
    /// strings replaced by U+FFFD; see [`crate::text`]).
    pub arguments: String,
    /// The ID the upstream gave the call, when agentstream gave it another
    /// one (the upstream's was missing or not unique in the conversation);
    /// requests to the upstream use this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_id: Option<String>,
}

impl ToolCall {
    /// The ID the upstream knows the call by.
    pub fn upstream_id(&self) -> &str {
        self.upstream_id.as_deref().unwrap_or(&self.id)
    }
}

/// A piece of a tool call's arguments, before the call is whole.
///
/// A provider sends a reply's [`LlmEvent::ToolCall`]s in the order the calls
/// began, and numbers their pieces the same way: the pieces with `index` n
/// belong to the reply's n-th `ToolCall` (counting from 0). Joined in order,
/// a call's pieces are its `arguments`, except that a call without arguments
/// has none and its `arguments` are `{}`, and that an escaped NUL in a JSON
/// string is replaced in the whole call only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolCallDelta {
    /// The call's place among the reply's calls: 0, 1, 2… in the order they began.
    pub index: usize,
    /// The upstream's ID for the call, when it has sent one yet (else empty).
    pub id: String,
    /// The function's name as far as it has arrived.
    pub name: String,
    /// The next piece of the arguments' JSON text, NUL-free ([`crate::text`]).
    pub arguments: String,
}

/// One message of the conversation as the model sees it.
#[derive(Debug, Clone, PartialEq)]
pub enum ChatMessage {
    /// The agent's instructions.
    System(String),
    /// The person's words.
    User(String),
    /// The model's earlier reply, with the tool calls it made.
    Assistant {
        /// The reply's text.
        content: String,
        /// The calls it made.
        tool_calls: Vec<ToolCall>,
        /// The model's reasoning for this message, sent back within the run
        /// that produced it (thinking models that call tools need it there),
        /// never in later runs.
        reasoning: Option<String>,
    },
    /// A tool's result.
    Tool {
        /// The call it answers, by the ID the upstream gave it
        /// ([`ToolCall::upstream_id`]).
        call_id: String,
        /// The result as JSON text.
        content: String,
    },
}

/// What the agent asks of the model.
#[derive(Debug, Clone)]
pub struct ChatRequest {
    /// The model's name at the provider.
    pub model: String,
    /// The conversation so far.
    pub messages: Vec<ChatMessage>,
    /// The tools on offer.
    pub tools: Vec<ToolSpec>,
    /// Sampling temperature, when the agent sets one.
    pub temperature: Option<f32>,
    /// Most tokens in the reply, when the agent sets it.
    pub max_tokens: Option<u32>,
    /// Whether and which tool the model must call (`tool_choice`), when set.
    pub tool_choice: Option<ToolChoice>,
}

/// OpenAI's `tool_choice`: whether the model must call a tool, and which.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum ToolChoice {
    /// `auto`, `none` or `required`.
    Mode(ToolChoiceMode),
    /// The tool of this name, e.g. for a small model that calls tools only
    /// when told which.
    Function(String),
}

/// The named values of [`ToolChoice`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ToolChoiceMode {
    /// The model decides.
    Auto,
    /// No tool call.
    None,
    /// Some tool call.
    Required,
}

// Defined with the events (`done` carries it), which sit below the model
// client.
pub use crate::events::Usage;

/// One piece of the model's streamed reply.
#[derive(Debug, Clone, PartialEq)]
pub enum LlmEvent {
    /// Text, as it arrives, already NUL-free ([`crate::text`]): the
    /// provider cleans it where it reads it, so nothing downstream scans
    /// each delta again.
    Delta(String),
    /// A piece of a tool call's arguments, as it arrives.
    ToolCallDelta(ToolCallDelta),
    /// A tool call, once its arguments are whole.
    ToolCall(ToolCall),
    /// Token usage, when the provider reports it.
    Usage(Usage),
    /// A piece of the model's reasoning (`reasoning_content` or `reasoning`
    /// deltas), kept apart from the reply's text.
    Reasoning(String),
    /// Why the model stopped (`finish_reason`), as the upstream said it:
    /// `stop`, `tool_calls`, `length`, `content_filter`, …
    Finished(String),
}

/// Why a model call failed. Each variant holds the full detail, for the
/// log only (one line, no key, no message text or tool arguments); `Display`
/// is the short message clients see.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LlmError {
    /// No answer in time: connecting, before the first token, or between chunks.
    #[error("the model server did not answer in time")]
    Timeout(String),
    /// The upstream answered with an HTTP error status.
    #[error("the model server answered HTTP {status}")]
    Status {
        /// The HTTP status.
        status: u16,
        /// The upstream's error, for the log.
        detail: String,
    },
    /// The upstream could not be reached, reported an error in its stream,
    /// or its connection failed.
    #[error("the model server could not be reached or failed")]
    Upstream(String),
    /// The upstream answered with something that is not the protocol.
    #[error("the model server sent a reply that could not be read")]
    Protocol(String),
    /// The reply's stream ended with neither a finish reason nor `[DONE]`:
    /// the reply was cut off.
    #[error("the model server's reply was cut off before it finished")]
    Incomplete(String),
    /// The upstream refused the request as longer than its context window.
    #[error(
        "the conversation is too long for the model's context window; set the agent's \
         context_tokens to the model's window or less"
    )]
    ContextLength(String),
}

impl LlmError {
    /// The code of the `error` event this failure becomes.
    pub fn code(&self) -> ErrorCode {
        match self {
            LlmError::Timeout(_) => ErrorCode::UpstreamTimeout,
            LlmError::Status { .. } | LlmError::Upstream(_) => ErrorCode::UpstreamError,
            LlmError::Protocol(_) => ErrorCode::UpstreamProtocol,
            LlmError::Incomplete(_) => ErrorCode::UpstreamIncomplete,
            LlmError::ContextLength(_) => ErrorCode::ContextLength,
        }
    }

    /// The full detail, for the log.
    pub fn detail(&self) -> &str {
        match self {
            LlmError::Timeout(detail)
            | LlmError::Status { detail, .. }
            | LlmError::Upstream(detail)
            | LlmError::Protocol(detail)
            | LlmError::Incomplete(detail)
            | LlmError::ContextLength(detail) => detail,
        }
    }
}

/// A streamed reply: ends when the model is done.
pub type LlmStream = BoxStream<'static, Result<LlmEvent, LlmError>>;

impl crate::telemetry::metrics::UpstreamItem for Result<LlmEvent, LlmError> {
    fn is_token(&self) -> bool {
        matches!(
            self,
            Ok(LlmEvent::Delta(_) | LlmEvent::ToolCallDelta(_) | LlmEvent::ToolCall(_))
        )
    }

    fn error_code(&self) -> Option<&'static str> {
        self.as_ref().err().map(|e| e.code().as_str())
    }
}

/// A source of model replies.
pub trait Provider: Send + Sync + Debug {
    /// Streams the model's reply to `request`. Dropping the stream abandons the call.
    fn stream(&self, request: ChatRequest) -> LlmStream;

    /// How the model is named in the start-up log's line for each agent; the scripted
    /// provider says it is the demo model.
    fn label(&self, model: &str) -> String;

    /// True for the built-in demo model, which is no real LLM (`GET
    /// /v1/agents` says so). The default is false.
    fn is_demo(&self) -> bool {
        false
    }

    /// Checks at start-up that the provider is set up right, without
    /// failing when it is merely down. The default has nothing to check.
    fn probe(&self) -> futures_util::future::BoxFuture<'static, Probe> {
        Box::pin(async { Probe::Ready })
    }
}

/// What a start-up check of a provider found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// It answered as a model server should.
    Ready,
    /// It could not be reached now; calls will try again (a warning, not a failure).
    Unreachable(String),
    /// It answered in a way that shows a mistake in its settings, e.g. 404
    /// for the models list of its `base_url`: start-up stops.
    Misconfigured(String),
}

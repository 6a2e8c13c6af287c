//! Model providers: the trait the agent loop streams from, and its implementations.

pub mod openai;
pub mod scripted;

use std::fmt::Debug;

use futures_util::stream::BoxStream;
use serde::{Deserialize, Serialize};

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
    /// The arguments as JSON text, exactly as the model wrote them.
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
    },
    /// A tool's result.
    Tool {
        /// The call it answers.
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

/// One piece of the model's streamed reply.
#[derive(Debug, Clone, PartialEq)]
pub enum LlmEvent {
    /// Text, as it arrives.
    Delta(String),
    /// A tool call, once its arguments are whole.
    ToolCall(ToolCall),
    /// Token usage, when the provider reports it.
    Usage(Usage),
}

/// Why a model call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LlmError {
    /// No answer in time: connecting, before the first token, or between chunks.
    #[error("{0}")]
    Timeout(String),
    /// The upstream could not be reached or answered with an error status.
    #[error("{0}")]
    Upstream(String),
    /// The upstream answered with something that is not the protocol.
    #[error("{0}")]
    Protocol(String),
}

impl LlmError {
    /// The code of the `error` event this failure becomes.
    pub fn code(&self) -> &'static str {
        match self {
            LlmError::Timeout(_) => "upstream_timeout",
            LlmError::Upstream(_) => "upstream_error",
            LlmError::Protocol(_) => "upstream_protocol",
        }
    }
}

/// A streamed reply: ends when the model is done.
pub type LlmStream = BoxStream<'static, Result<LlmEvent, LlmError>>;

/// A source of model replies.
pub trait Provider: Send + Sync + Debug {
    /// Streams the model's reply to `request`. Dropping the stream abandons the call.
    fn stream(&self, request: ChatRequest) -> LlmStream;

    /// How the model is shown to people, e.g. in `GET /v1/agents`.
    fn label(&self, model: &str) -> String;
}

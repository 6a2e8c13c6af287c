//! A fake OpenAI-compatible Chat Completions server for tests and benchmarks.
//!
//! Every reply is deterministic and is chosen per request by options in the `model` string
//! and the `x-mock` header (see [`Behaviour`]): content length, pacing, tool calls and
//! injected faults. Tests start it in-process with [`MockLlm::start`]; benchmarks run the
//! `mock-llm` binary.

mod body;
mod chunk;
mod error;
mod options;
mod reply;
mod request;
mod routes;
mod server;
mod state;

pub use chunk::reasoning_piece;
pub use error::ApiError;
pub use options::{Behaviour, Fault, MAX_DELTAS, OptionError, ReasoningField, ToolMode};
pub use reply::{
    ARGUMENT_PIECE_CHARS, FILLER, QUOTED_WORDS, ToolCallPlan, Usage, reply_words, tool_call_plan,
};
pub use request::{
    ChatMessage, ChatRequest, ContentPart, FunctionCall, FunctionDef, MessageContent,
    StreamOptions, Tool, ToolCall,
};
pub use routes::{MAX_BODY_BYTES, MOCK_HEADER, MOCK_KEY_HEADER, router};
pub use server::MockLlm;
pub use state::{AppState, Options, RECORD_LIMIT};

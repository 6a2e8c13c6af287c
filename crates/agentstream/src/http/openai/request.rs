//! The body of `POST /v1/chat/completions`, and what a run takes from it:
//! the input (the last message, the user's), the history before it, and
//! the refusals of what this server does not do.

use std::collections::HashMap;

use serde::Deserialize;

use super::error::OpenAiApiError;
use crate::{
    http::{
        ApiError, AppState,
        extract::{ObjectOnly, object, objects, optional_object, optional_objects},
    },
    llm::ToolCall,
    runs::PriorMessage,
    store::Role,
};

/// A Chat Completions request. Fields not listed (`temperature`, `top_p`,
/// `max_tokens`, `stop`, `seed`, `user`, …) are accepted and ignored: the
/// agent's configuration sets how its model is called.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct ChatCompletionRequest {
    /// The agent that answers, by name (`GET /v1/models` lists them).
    #[schema(example = "chat")]
    pub model: String,
    /// The conversation so far; the last message is the user's, and the
    /// run answers it. With a conversation ID only that last message is
    /// read (the server holds the transcript); without, the messages before
    /// it are stored as the new conversation's transcript. `system` and
    /// `developer` messages are ignored: the agent's prompt is the system
    /// prompt.
    #[schema(min_items = 1)]
    #[serde(deserialize_with = "objects")]
    pub messages: Vec<InMessage>,
    /// True: the reply as `chat.completion.chunk`s (SSE), then `data: [DONE]`.
    #[serde(default)]
    pub stream: Option<bool>,
    /// Streaming options.
    #[serde(default, deserialize_with = "optional_object")]
    pub stream_options: Option<StreamOptions>,
    /// `conversation_id`: the conversation to continue, as the
    /// `X-Conversation-Id` header does; other keys are ignored.
    #[serde(default)]
    pub metadata: Option<HashMap<String, String>>,
    /// How many choices: only 1.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 1)]
    pub n: Option<i64>,
    /// Refused (400) when not empty: the agent's own tools run on the
    /// server, and the client is never asked to run one.
    #[serde(default)]
    #[schema(value_type = Option<Vec<Object>>)]
    pub tools: Option<Vec<serde_json::Value>>,
    /// The older form of `tools`: refused (400) when not empty.
    #[serde(default)]
    #[schema(value_type = Option<Vec<Object>>)]
    pub functions: Option<Vec<serde_json::Value>>,
    /// Only `none` or `auto` (400 otherwise): no tool of the client's runs.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub tool_choice: Option<serde_json::Value>,
    /// Only `{"type": "text"}` (422 otherwise).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub response_format: Option<serde_json::Value>,
    /// Only false (422 otherwise): no log probabilities.
    #[serde(default)]
    pub logprobs: Option<bool>,
    /// Only `text` (422 otherwise).
    #[serde(default)]
    pub modalities: Option<Vec<String>>,
}

/// `stream_options`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct StreamOptions {
    /// True: every chunk has `usage` (null), and a last chunk with no
    /// choice carries the run's tokens.
    #[serde(default)]
    pub include_usage: Option<bool>,
}

/// Who wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum InRole {
    /// Ignored: the agent's prompt is the system prompt.
    System,
    /// Ignored, as `system`.
    Developer,
    /// The user.
    User,
    /// The assistant.
    Assistant,
    /// A tool's result (`tool_call_id` names the call).
    Tool,
    /// Refused (422): the long-deprecated form of `tool`.
    Function,
}

/// One message of the conversation.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct InMessage {
    /// Who wrote it.
    pub role: InRole,
    /// Its text, or text parts (other parts are refused, 422).
    #[serde(default, deserialize_with = "content")]
    pub content: Option<InContent>,
    /// An assistant message's tool calls.
    #[serde(default, deserialize_with = "optional_objects")]
    pub tool_calls: Option<Vec<InToolCall>>,
    /// The call a tool message answers.
    #[serde(default)]
    pub tool_call_id: Option<String>,
}

/// A message's content: a string, or parts (read by `fn content` below).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum InContent {
    /// The text.
    Text(String),
    /// Parts, of type `text` only.
    Parts(Vec<InPart>),
}

/// Reads a message's `content` as [`InContent`] does, with an error that
/// says what is expected (serde's for an untagged enum names no shape), and
/// each part from a JSON object only (see [`ObjectOnly`]).
fn content<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<InContent>, D::Error> {
    struct Content;
    impl<'de> serde::de::Visitor<'de> for Content {
        type Value = Option<InContent>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a string, an array of content parts, or null")
        }
        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Self::Value, E> {
            Ok(Some(InContent::Text(text.to_owned())))
        }
        fn visit_string<E: serde::de::Error>(self, text: String) -> Result<Self::Value, E> {
            Ok(Some(InContent::Text(text)))
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Self::Value, A::Error> {
            let mut parts = Vec::new();
            while let Some(ObjectOnly(part)) = seq.next_element()? {
                parts.push(part);
            }
            Ok(Some(InContent::Parts(parts)))
        }
    }
    deserializer.deserialize_any(Content)
}

/// A part of a message's content.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct InPart {
    /// `text` (anything else is refused).
    #[serde(rename = "type")]
    pub kind: String,
    /// The text of a `text` part.
    #[serde(default)]
    pub text: Option<String>,
}

/// A tool call of an earlier assistant message.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct InToolCall {
    /// The call's ID, which a `tool` message answers.
    pub id: String,
    /// The function called.
    #[serde(deserialize_with = "object")]
    pub function: InFunction,
}

/// The function of a tool call.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct InFunction {
    /// Its name.
    pub name: String,
    /// Its arguments, as JSON text.
    #[serde(default)]
    pub arguments: String,
}

/// What a run takes from a request.
#[derive(Debug)]
pub struct Turn {
    /// The last message: the user's, which the run answers.
    pub input: String,
    /// The messages before it, for a new conversation.
    pub history: Vec<PriorMessage>,
}

fn invalid(param: &'static str, message: String) -> OpenAiApiError {
    OpenAiApiError::param(ApiError::Invalid(message), param)
}

impl ChatCompletionRequest {
    /// Refuses what this server does not do: tools of the client's, more
    /// than one choice, log probabilities, JSON output, audio.
    pub fn check_supported(&self, state: &AppState) -> Result<(), OpenAiApiError> {
        for (param, defined) in [("tools", &self.tools), ("functions", &self.functions)] {
            if defined.as_ref().is_some_and(|tools| !tools.is_empty()) {
                let agent_tools =
                    state
                        .runs
                        .agents()
                        .get(&self.model)
                        .map_or_else(String::new, |agent| {
                            let names: Vec<&str> = agent
                                .tools
                                .iter()
                                .map(|tool| tool.spec().name.as_str())
                                .collect();
                            format!(" (this agent's: {})", names.join(", "))
                        });
                return Err(OpenAiApiError::param(
                    ApiError::BadRequest(format!(
                        "this server runs the agent's own tools{agent_tools} and never asks the \
                         client to run one; a request may not define `{param}`"
                    )),
                    param,
                )
                .code("tools_not_supported"));
            }
        }
        if let Some(choice) = &self.tool_choice
            && !matches!(choice.as_str(), Some("none" | "auto"))
            && !choice.is_null()
        {
            return Err(OpenAiApiError::param(
                ApiError::BadRequest(
                    "tool_choice: only `none` or `auto`; the request defines no tools".to_owned(),
                ),
                "tool_choice",
            )
            .code("tools_not_supported"));
        }
        if self.n.is_some_and(|n| n != 1) {
            return Err(invalid("n", "n: only one choice (1)".to_owned()));
        }
        if self.logprobs == Some(true) {
            return Err(invalid(
                "logprobs",
                "logprobs: log probabilities are not available".to_owned(),
            ));
        }
        if let Some(format) = &self.response_format
            && !format.is_null()
            && format.get("type").and_then(serde_json::Value::as_str) != Some("text")
        {
            return Err(invalid(
                "response_format",
                "response_format: only `{\"type\": \"text\"}`; the agent's prompt sets the \
                 reply's form"
                    .to_owned(),
            ));
        }
        if self
            .modalities
            .as_ref()
            .is_some_and(|modalities| modalities.iter().any(|m| m != "text"))
        {
            return Err(invalid("modalities", "modalities: only `text`".to_owned()));
        }
        Ok(())
    }

    /// The run's input and, when `with_history`, the messages before it.
    /// The last message must be the user's, with text within the limits
    /// (422 when blank, 413 when too long); so must every message kept.
    pub fn turn(self, state: &AppState, with_history: bool) -> Result<Turn, OpenAiApiError> {
        let mut messages = self.messages;
        let last = messages
            .pop()
            .ok_or_else(|| invalid("messages", "messages: at least one".to_owned()))?;
        if last.role != InRole::User {
            return Err(invalid(
                "messages",
                "messages: the last message must be the user's; the run answers it".to_owned(),
            ));
        }
        let input = text_of(last.content)?;
        crate::http::runs::check_input(state, &input)
            .map_err(|e| OpenAiApiError::param(e, "messages"))?;
        let mut history = Vec::new();
        if !with_history {
            return Ok(Turn { input, history });
        }
        let max = state.limits.max_message_bytes;
        for message in messages {
            let role = match message.role {
                InRole::System | InRole::Developer => continue,
                InRole::User => Role::User,
                InRole::Assistant => Role::Assistant,
                InRole::Tool => Role::Tool,
                InRole::Function => {
                    return Err(invalid(
                        "messages",
                        "messages: the `function` role is not supported; use `tool`".to_owned(),
                    ));
                }
            };
            if role == Role::Tool && message.tool_call_id.is_none() {
                return Err(invalid(
                    "messages",
                    "messages: a `tool` message needs its `tool_call_id`".to_owned(),
                ));
            }
            let content = text_of(message.content)?;
            if content.len() > max {
                return Err(OpenAiApiError::param(
                    ApiError::PayloadTooLarge(format!(
                        "a message is {} bytes; the limit is {max}",
                        content.len()
                    )),
                    "messages",
                ));
            }
            let calls: Vec<ToolCall> = message
                .tool_calls
                .unwrap_or_default()
                .into_iter()
                .filter(|_| role == Role::Assistant)
                .map(|call| ToolCall {
                    id: call.id,
                    name: call.function.name,
                    arguments: call.function.arguments,
                    upstream_id: None,
                })
                .collect();
            history.push(PriorMessage {
                role,
                content,
                tool_calls: (!calls.is_empty())
                    .then(|| serde_json::to_value(calls).unwrap_or_default()),
                tool_call_id: message.tool_call_id.filter(|_| role == Role::Tool),
            });
        }
        Ok(Turn { input, history })
    }
}

/// A message's text: the string, or its text parts joined.
fn text_of(content: Option<InContent>) -> Result<String, OpenAiApiError> {
    match content {
        None => Ok(String::new()),
        Some(InContent::Text(text)) => Ok(text),
        Some(InContent::Parts(parts)) => {
            let mut text = String::new();
            for part in parts {
                match (part.kind.as_str(), part.text) {
                    ("text", Some(more)) => text.push_str(&more),
                    (kind, _) => {
                        return Err(invalid(
                            "messages",
                            format!("messages: only text content is supported, not `{kind}`"),
                        ));
                    }
                }
            }
            Ok(text)
        }
    }
}

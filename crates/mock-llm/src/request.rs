//! The subset of an OpenAI Chat Completions request body that the mock reads.

use serde::{Deserialize, Deserializer};

/// A `POST /v1/chat/completions` body. Fields the mock does not use are ignored.
#[derive(Debug, Clone, Deserialize)]
pub struct ChatRequest {
    /// The requested model; also carries behaviour options (see [`crate::Behaviour`]).
    pub model: String,
    /// The conversation so far.
    pub messages: Vec<ChatMessage>,
    /// Tools the model may call.
    #[serde(default, deserialize_with = "null_as_default")]
    pub tools: Vec<Tool>,
    /// Whether to answer with a server-sent event stream.
    #[serde(default, deserialize_with = "null_as_default")]
    pub stream: bool,
    /// Streaming options.
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
}

impl ChatRequest {
    /// Whether the client asked for a final usage chunk.
    pub fn include_usage(&self) -> bool {
        self.stream_options
            .as_ref()
            .is_some_and(|options| options.include_usage)
    }

    /// The role of the last message, if any.
    pub fn last_role(&self) -> Option<&str> {
        self.messages.last().map(|message| message.role.as_str())
    }

    /// The prompt's tokens as `context=N` counts them: a quarter of the bytes of each
    /// message's text, tool calls' names and arguments and tool call id, rounded up,
    /// plus three per message (about what OpenAI's tokenizers count for English text).
    pub fn context_tokens(&self) -> usize {
        self.messages
            .iter()
            .map(|message| {
                let calls: usize = message
                    .tool_calls
                    .iter()
                    .map(|call| call.function.name.len() + call.function.arguments.len())
                    .sum();
                let bytes = message.text().len()
                    + calls
                    + message.tool_call_id.as_deref().map_or(0, str::len);
                3 + bytes.div_ceil(4)
            })
            .sum()
    }

    /// The text of the last message with role `user`, or `""` if there is none.
    pub fn last_user_text(&self) -> String {
        self.messages
            .iter()
            .rev()
            .find(|message| message.role == "user")
            .map(ChatMessage::text)
            .unwrap_or_default()
    }
}

/// `stream_options` of a request.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct StreamOptions {
    /// Whether to send a final chunk with `usage` and no choices.
    #[serde(default, deserialize_with = "null_as_default")]
    pub include_usage: bool,
}

/// One message of the conversation.
#[derive(Debug, Clone, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant` or `tool`.
    pub role: String,
    /// Text, or content parts; absent or null on assistant messages that only call tools.
    #[serde(default)]
    pub content: Option<MessageContent>,
    /// Tool calls made by an assistant message.
    #[serde(default, deserialize_with = "null_as_default")]
    pub tool_calls: Vec<ToolCall>,
    /// The call a `tool` message answers.
    #[serde(default)]
    pub tool_call_id: Option<String>,
}

impl ChatMessage {
    /// The message's text: the string content, or its text parts joined by newlines.
    pub fn text(&self) -> String {
        match &self.content {
            None => String::new(),
            Some(MessageContent::Text(text)) => text.clone(),
            Some(MessageContent::Parts(parts)) => parts
                .iter()
                .filter_map(|part| part.text.as_deref())
                .collect::<Vec<_>>()
                .join("\n"),
        }
    }
}

/// A message's `content`: a string or an array of content parts.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum MessageContent {
    /// Plain text.
    Text(String),
    /// Content parts such as `{"type":"text","text":"..."}`.
    Parts(Vec<ContentPart>),
}

/// One content part; only text parts contribute to the mock's view of a message.
#[derive(Debug, Clone, Deserialize)]
pub struct ContentPart {
    /// The text of a `text` part.
    #[serde(default)]
    pub text: Option<String>,
}

/// A tool call in an assistant message.
#[derive(Debug, Clone, Deserialize)]
pub struct ToolCall {
    /// The call id, echoed by the matching `tool` message.
    #[serde(default, deserialize_with = "null_as_default")]
    pub id: String,
    /// The function called.
    pub function: FunctionCall,
}

/// The function part of a tool call.
#[derive(Debug, Clone, Deserialize)]
pub struct FunctionCall {
    /// The function name.
    pub name: String,
    /// The arguments as a JSON string.
    #[serde(default, deserialize_with = "null_as_default")]
    pub arguments: String,
}

/// A tool offered to the model.
#[derive(Debug, Clone, Deserialize)]
pub struct Tool {
    /// Always `function` today.
    #[serde(rename = "type", default = "function_type")]
    pub kind: String,
    /// The function definition.
    pub function: FunctionDef,
}

fn function_type() -> String {
    "function".to_owned()
}

/// A function definition offered as a tool.
#[derive(Debug, Clone, Deserialize)]
pub struct FunctionDef {
    /// The function name.
    pub name: String,
    /// What the function does.
    #[serde(default)]
    pub description: Option<String>,
    /// The JSON schema of the arguments object.
    #[serde(default)]
    pub parameters: Option<serde_json::Value>,
}

// Clients differ on whether an unset field is omitted or sent as `null`; accept both.
fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

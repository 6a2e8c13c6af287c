//! Requests the tests of the transport and of the OpenAI wire types share.

use serde_json::json;

use super::{ChatMessage, ChatRequest, ToolCall, ToolSpec};

/// A request with `messages` and one tool, `update_profile`.
pub(crate) fn request_with(messages: Vec<ChatMessage>) -> ChatRequest {
    ChatRequest {
        model: "m".to_owned(),
        messages,
        tools: vec![ToolSpec {
            name: "update_profile".to_owned(),
            description: "Saves one profile field".to_owned(),
            parameters: json!({"type": "object"}),
        }],
        temperature: None,
        max_tokens: None,
        tool_choice: None,
    }
}

/// An `update_profile` call with this ID and upstream ID.
pub(crate) fn profile_call(id: &str, upstream_id: Option<&str>) -> ToolCall {
    ToolCall {
        id: id.to_owned(),
        name: "update_profile".to_owned(),
        arguments: r#"{"field":"name","value":"Ada"}"#.to_owned(),
        upstream_id: upstream_id.map(str::to_owned),
    }
}

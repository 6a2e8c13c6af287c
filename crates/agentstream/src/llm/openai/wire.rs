//! The Chat Completions wire types, both ways: the request body agentstream sends, and the
//! `chat.completion.chunk`s it reads back. Crate-visible, so an OpenAI-compatible facade can
//! reuse them.

use serde::{Deserialize, Serialize};

use crate::llm::{ChatMessage, ChatRequest, ToolChoice, ToolChoiceMode, ToolSpec, Usage};

/// One `chat.completion.chunk`, as far as it is read. Every field is optional and `null` is
/// accepted, since compatible servers differ on both.
#[derive(Debug, Deserialize)]
pub(crate) struct WireChunk {
    #[serde(default)]
    pub(crate) choices: Option<Vec<WireChoice>>,
    #[serde(default)]
    pub(crate) usage: Option<WireUsage>,
    #[serde(default)]
    pub(crate) error: Option<serde_json::Value>,
}

/// One of a chunk's `choices`.
#[derive(Debug, Deserialize)]
pub(crate) struct WireChoice {
    #[serde(default)]
    pub(crate) index: Option<u64>,
    #[serde(default)]
    pub(crate) delta: Option<WireDelta>,
    #[serde(default)]
    pub(crate) finish_reason: Option<String>,
}

/// A choice's `delta`: the new pieces of the reply.
#[derive(Debug, Deserialize)]
pub(crate) struct WireDelta {
    #[serde(default)]
    pub(crate) content: Option<String>,
    /// Read as any JSON value: only a string is reasoning text, and a server that sends
    /// something else there must not fail the reply.
    #[serde(default)]
    pub(crate) reasoning_content: Option<serde_json::Value>,
    #[serde(default)]
    pub(crate) reasoning: Option<serde_json::Value>,
    #[serde(default)]
    pub(crate) tool_calls: Option<Vec<WireToolCall>>,
}

/// A piece of a tool call; pieces with one `index` make up one call.
#[derive(Debug, Deserialize)]
pub(crate) struct WireToolCall {
    #[serde(default)]
    pub(crate) index: Option<usize>,
    #[serde(default)]
    pub(crate) id: Option<String>,
    #[serde(default)]
    pub(crate) function: Option<WireFunction>,
}

/// A tool-call piece's `function`: some of its name and arguments.
#[derive(Debug, Deserialize)]
pub(crate) struct WireFunction {
    #[serde(default)]
    pub(crate) name: Option<String>,
    /// A string piece as OpenAI sends it, or a whole JSON value as some servers do.
    #[serde(default)]
    pub(crate) arguments: Option<serde_json::Value>,
}

/// A chunk's `usage`.
#[derive(Debug, Deserialize)]
pub(crate) struct WireUsage {
    #[serde(default)]
    pub(crate) prompt_tokens: Option<u64>,
    #[serde(default)]
    pub(crate) completion_tokens: Option<u64>,
    #[serde(default)]
    pub(crate) total_tokens: Option<u64>,
}

impl From<WireUsage> for Usage {
    fn from(usage: WireUsage) -> Usage {
        let prompt_tokens = usage.prompt_tokens.unwrap_or(0);
        let completion_tokens = usage.completion_tokens.unwrap_or(0);
        Usage {
            prompt_tokens,
            completion_tokens,
            total_tokens: usage
                .total_tokens
                .unwrap_or(prompt_tokens + completion_tokens),
        }
    }
}

/// The request body: a streamed Chat Completions call.
#[derive(Debug, Serialize)]
pub(crate) struct RequestBody<'a> {
    pub(crate) model: &'a str,
    pub(crate) messages: Vec<WireMessage<'a>>,
    pub(crate) stream: bool,
    pub(crate) stream_options: StreamOptions,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) tools: Vec<WireTool<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) temperature: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) max_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) tool_choice: Option<WireToolChoice<'a>>,
}

impl<'a> RequestBody<'a> {
    /// The body that asks for `request`.
    pub(crate) fn of(request: &'a ChatRequest) -> RequestBody<'a> {
        RequestBody {
            model: &request.model,
            messages: request.messages.iter().map(WireMessage::of).collect(),
            stream: true,
            stream_options: StreamOptions {
                include_usage: true,
            },
            tools: request.tools.iter().map(WireTool::of).collect(),
            temperature: request.temperature,
            max_tokens: request.max_tokens,
            // OpenAI refuses `tool_choice` without `tools` (HTTP 400).
            tool_choice: request
                .tool_choice
                .as_ref()
                .filter(|_| !request.tools.is_empty())
                .map(WireToolChoice::of),
        }
    }
}

/// `stream_options`: agentstream always asks for the usage.
#[derive(Debug, Serialize)]
pub(crate) struct StreamOptions {
    pub(crate) include_usage: bool,
}

/// One of the request's `messages`, by `role`.
#[derive(Debug, Serialize)]
#[serde(tag = "role", rename_all = "lowercase")]
pub(crate) enum WireMessage<'a> {
    System {
        content: &'a str,
    },
    User {
        content: &'a str,
    },
    Assistant {
        /// `""`, never `null`, when the message only calls tools: llama-cpp-python answers
        /// HTTP 500 to `null`, and every server takes `""`.
        content: &'a str,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        tool_calls: Vec<WireCall<'a>>,
        #[serde(skip_serializing_if = "Option::is_none")]
        reasoning_content: Option<&'a str>,
    },
    Tool {
        tool_call_id: &'a str,
        content: &'a str,
    },
}

impl<'a> WireMessage<'a> {
    /// `message` on the wire.
    pub(crate) fn of(message: &'a ChatMessage) -> WireMessage<'a> {
        match message {
            ChatMessage::System(content) => WireMessage::System { content },
            ChatMessage::User(content) => WireMessage::User { content },
            ChatMessage::Assistant {
                content,
                tool_calls,
                reasoning,
            } => WireMessage::Assistant {
                content,
                tool_calls: tool_calls
                    .iter()
                    .map(|call| WireCall {
                        id: call.upstream_id(),
                        kind: "function",
                        function: WireCallFunction {
                            name: &call.name,
                            arguments: &call.arguments,
                        },
                    })
                    .collect(),
                reasoning_content: reasoning.as_deref(),
            },
            ChatMessage::Tool { call_id, content } => WireMessage::Tool {
                tool_call_id: call_id,
                content,
            },
        }
    }
}

/// A tool call of an earlier assistant message.
#[derive(Debug, Serialize)]
pub(crate) struct WireCall<'a> {
    pub(crate) id: &'a str,
    #[serde(rename = "type")]
    pub(crate) kind: &'static str,
    pub(crate) function: WireCallFunction<'a>,
}

/// The function a [`WireCall`] calls, with its arguments as JSON text.
#[derive(Debug, Serialize)]
pub(crate) struct WireCallFunction<'a> {
    pub(crate) name: &'a str,
    pub(crate) arguments: &'a str,
}

/// One of the request's `tools`.
#[derive(Debug, Serialize)]
pub(crate) struct WireTool<'a> {
    #[serde(rename = "type")]
    pub(crate) kind: &'static str,
    pub(crate) function: &'a ToolSpec,
}

impl<'a> WireTool<'a> {
    /// `spec` on the wire.
    pub(crate) fn of(spec: &'a ToolSpec) -> WireTool<'a> {
        WireTool {
            kind: "function",
            function: spec,
        }
    }
}

/// `tool_choice`: `"auto"`, `"none"`, `"required"` or `{"type":"function","function":{"name"}}`.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub(crate) enum WireToolChoice<'a> {
    Mode(&'static str),
    Function {
        #[serde(rename = "type")]
        kind: &'static str,
        function: WireToolName<'a>,
    },
}

/// The function a [`WireToolChoice::Function`] names.
#[derive(Debug, Serialize)]
pub(crate) struct WireToolName<'a> {
    pub(crate) name: &'a str,
}

impl<'a> WireToolChoice<'a> {
    /// `choice` on the wire.
    pub(crate) fn of(choice: &'a ToolChoice) -> WireToolChoice<'a> {
        match choice {
            ToolChoice::Mode(ToolChoiceMode::Auto) => WireToolChoice::Mode("auto"),
            ToolChoice::Mode(ToolChoiceMode::None) => WireToolChoice::Mode("none"),
            ToolChoice::Mode(ToolChoiceMode::Required) => WireToolChoice::Mode("required"),
            ToolChoice::Function(name) => WireToolChoice::Function {
                kind: "function",
                function: WireToolName { name },
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::llm::{
        ToolCall,
        test_requests::{profile_call, request_with},
    };

    #[test]
    fn the_request_body_maps_every_message_kind() {
        let request = ChatRequest {
            model: "gpt-4o-mini".to_owned(),
            messages: vec![
                ChatMessage::System("be brief".to_owned()),
                ChatMessage::User("hi".to_owned()),
                ChatMessage::Assistant {
                    content: String::new(),
                    tool_calls: vec![ToolCall {
                        id: "call_1".to_owned(),
                        name: "get_profile".to_owned(),
                        arguments: "{}".to_owned(),
                        upstream_id: None,
                    }],
                    reasoning: None,
                },
                ChatMessage::Tool {
                    call_id: "call_1".to_owned(),
                    content: r#"{"fields":{}}"#.to_owned(),
                },
                ChatMessage::Assistant {
                    content: "Your profile is empty.".to_owned(),
                    tool_calls: vec![],
                    reasoning: None,
                },
            ],
            tools: vec![ToolSpec {
                name: "get_profile".to_owned(),
                description: "Reads the profile".to_owned(),
                parameters: json!({"type": "object", "properties": {}}),
            }],
            temperature: Some(0.5),
            max_tokens: None,
            tool_choice: None,
        };
        let body = serde_json::to_value(RequestBody::of(&request)).unwrap();
        assert_eq!(
            body,
            json!({
                "model": "gpt-4o-mini",
                "messages": [
                    {"role": "system", "content": "be brief"},
                    {"role": "user", "content": "hi"},
                    {"role": "assistant", "content": "", "tool_calls": [
                        {"id": "call_1", "type": "function",
                         "function": {"name": "get_profile", "arguments": "{}"}}]},
                    {"role": "tool", "tool_call_id": "call_1", "content": "{\"fields\":{}}"},
                    {"role": "assistant", "content": "Your profile is empty."},
                ],
                "stream": true,
                "stream_options": {"include_usage": true},
                "tools": [{"type": "function", "function": {
                    "name": "get_profile",
                    "description": "Reads the profile",
                    "parameters": {"type": "object", "properties": {}}}}],
                "temperature": 0.5,
            })
        );
    }

    #[test]
    fn the_request_body_omits_empty_tools_and_unset_temperature() {
        let request = ChatRequest {
            model: "m".to_owned(),
            messages: vec![ChatMessage::User("hi".to_owned())],
            tools: vec![],
            temperature: None,
            max_tokens: None,
            tool_choice: None,
        };
        let body = serde_json::to_value(RequestBody::of(&request)).unwrap();
        assert_eq!(
            body,
            json!({"model": "m", "messages": [{"role": "user", "content": "hi"}],
                   "stream": true, "stream_options": {"include_usage": true}})
        );
    }

    #[test]
    fn the_request_body_sends_empty_content_with_tool_calls_and_the_upstream_ids() {
        let request = request_with(vec![
            ChatMessage::User("I am Ada".to_owned()),
            ChatMessage::Assistant {
                content: String::new(),
                tool_calls: vec![profile_call("call_renamed", Some("update_profile:0"))],
                reasoning: None,
            },
            ChatMessage::Tool {
                call_id: "update_profile:0".to_owned(),
                content: r#"{"saved":true}"#.to_owned(),
            },
            ChatMessage::Assistant {
                content: "Saving once more.".to_owned(),
                tool_calls: vec![profile_call("call_2", None)],
                reasoning: None,
            },
            ChatMessage::Assistant {
                content: String::new(),
                tool_calls: vec![],
                reasoning: None,
            },
        ]);
        let body = serde_json::to_value(RequestBody::of(&request)).unwrap();
        let messages = &body["messages"];
        assert_eq!(messages[1]["content"], json!(""));
        assert_eq!(
            messages[1]["tool_calls"][0]["id"],
            json!("update_profile:0")
        );
        assert_eq!(messages[2]["tool_call_id"], json!("update_profile:0"));
        assert_eq!(messages[3]["content"], json!("Saving once more."));
        assert_eq!(messages[3]["tool_calls"][0]["id"], json!("call_2"));
        assert_eq!(messages[4], json!({"role": "assistant", "content": ""}));
        assert!(!body.to_string().contains("null"), "{body}");
    }

    #[test]
    fn the_request_body_sends_reasoning_content_only_when_set() {
        let request = request_with(vec![
            ChatMessage::Assistant {
                content: String::new(),
                tool_calls: vec![profile_call("c", None)],
                reasoning: Some("The user gave a name.".to_owned()),
            },
            ChatMessage::Assistant {
                content: "Done.".to_owned(),
                tool_calls: vec![],
                reasoning: None,
            },
        ]);
        let body = serde_json::to_value(RequestBody::of(&request)).unwrap();
        assert_eq!(
            body["messages"][0]["reasoning_content"],
            json!("The user gave a name.")
        );
        assert!(body["messages"][1].get("reasoning_content").is_none());
    }

    #[test]
    fn the_request_body_sends_max_tokens_and_each_tool_choice_form() {
        let body_with = |max_tokens, tool_choice| {
            let mut request = request_with(vec![ChatMessage::User("hi".to_owned())]);
            request.max_tokens = max_tokens;
            request.tool_choice = tool_choice;
            serde_json::to_value(RequestBody::of(&request)).unwrap()
        };
        let body = body_with(Some(256), None);
        assert_eq!(body["max_tokens"], json!(256));
        assert!(body.get("tool_choice").is_none());
        assert!(body_with(None, None).get("max_tokens").is_none());
        for (choice, wire) in [
            (ToolChoice::Mode(ToolChoiceMode::Auto), json!("auto")),
            (ToolChoice::Mode(ToolChoiceMode::None), json!("none")),
            (
                ToolChoice::Mode(ToolChoiceMode::Required),
                json!("required"),
            ),
            (
                ToolChoice::Function("update_profile".to_owned()),
                json!({"type": "function", "function": {"name": "update_profile"}}),
            ),
        ] {
            assert_eq!(body_with(None, Some(choice))["tool_choice"], wire);
        }
        // OpenAI refuses tool_choice without tools.
        let mut request = request_with(vec![ChatMessage::User("hi".to_owned())]);
        request.tools.clear();
        request.tool_choice = Some(ToolChoice::Mode(ToolChoiceMode::Required));
        let body = serde_json::to_value(RequestBody::of(&request)).unwrap();
        assert!(body.get("tool_choice").is_none(), "{body}");
    }
}

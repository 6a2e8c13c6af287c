//! The wire format: `chat.completion.chunk` SSE events and `chat.completion` objects.

use std::io;

use bytes::Bytes;
use serde::Serialize;

use crate::options::ReasoningField;
use crate::reply::{Reply, Usage};

/// The final SSE event of a stream.
pub(crate) const DONE_EVENT: &[u8] = b"data: [DONE]\n\n";

/// What every chunk of one response shares.
#[derive(Debug)]
pub(crate) struct ChunkMeta {
    /// `chatcmpl-<seq>`.
    pub(crate) id: String,
    /// Unix seconds when the request arrived.
    pub(crate) created: u64,
    /// The model string exactly as requested.
    pub(crate) model: String,
    /// Whether the client asked for usage: OpenAI then sends `"usage":null` on every chunk but
    /// the last.
    pub(crate) usage_field: bool,
}

impl ChunkMeta {
    /// One choice chunk as an SSE event.
    pub(crate) fn choice(
        &self,
        delta: Delta<'_>,
        finish_reason: Option<&str>,
    ) -> io::Result<Bytes> {
        let choice = Choice {
            index: 0,
            delta,
            finish_reason,
        };
        self.event(&Chunk {
            id: &self.id,
            object: "chat.completion.chunk",
            created: self.created,
            model: &self.model,
            choices: std::slice::from_ref(&choice),
            usage: self.usage_field.then_some(None),
        })
    }

    /// The usage chunk, which has no choices.
    pub(crate) fn usage(&self, usage: Usage) -> io::Result<Bytes> {
        self.event(&Chunk::<'_> {
            id: &self.id,
            object: "chat.completion.chunk",
            created: self.created,
            model: &self.model,
            choices: &[],
            usage: Some(Some(usage)),
        })
    }

    fn event(&self, chunk: &Chunk<'_>) -> io::Result<Bytes> {
        // Room for the envelope, so most chunks serialize without growing the buffer.
        let mut buf = Vec::with_capacity(160 + self.id.len() + self.model.len());
        buf.extend_from_slice(b"data: ");
        serde_json::to_writer(&mut buf, chunk)?;
        buf.extend_from_slice(b"\n\n");
        Ok(Bytes::from(buf))
    }

    /// The whole non-streaming `chat.completion` object.
    pub(crate) fn completion(&self, reply: &Reply, usage: Usage) -> io::Result<Bytes> {
        let text;
        let tool_call;
        let message = match reply {
            Reply::Text(reply) => {
                text = reply.text();
                Message {
                    role: "assistant",
                    content: Some(&text),
                    tool_calls: None,
                }
            }
            Reply::ToolCall(call) => {
                tool_call = [FullToolCall {
                    id: &call.id,
                    kind: "function",
                    function: FullFunction {
                        name: &call.name,
                        arguments: &call.arguments,
                    },
                }];
                Message {
                    role: "assistant",
                    content: None,
                    tool_calls: Some(&tool_call),
                }
            }
        };
        let completion = Completion {
            id: &self.id,
            object: "chat.completion",
            created: self.created,
            model: &self.model,
            choices: [CompletionChoice {
                index: 0,
                message,
                finish_reason: reply.finish_reason(),
            }],
            usage,
        };
        Ok(Bytes::from(serde_json::to_vec(&completion)?))
    }
}

#[derive(Serialize)]
struct Chunk<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: &'a [Choice<'a>],
    // Absent, `null` or the usage object.
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Option<Usage>>,
}

#[derive(Serialize)]
struct Choice<'a> {
    index: u32,
    delta: Delta<'a>,
    finish_reason: Option<&'a str>,
}

/// The `delta` of one streamed choice.
#[derive(Serialize)]
#[serde(untagged)]
pub(crate) enum Delta<'a> {
    /// The first chunk: the role, `content` (`""` for text, `null` for a tool call) and, for a
    /// tool call, its id and name with empty arguments.
    Start {
        role: &'static str,
        content: Option<&'static str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        tool_calls: Option<[ToolCallStart<'a>; 1]>,
    },
    /// One content delta.
    Content { content: &'a str },
    /// One piece of the tool call's arguments.
    Arguments {
        tool_calls: [ToolCallArguments<'a>; 1],
    },
    /// One reasoning piece, DeepSeek's and vLLM's way.
    ReasoningContent { reasoning_content: &'static str },
    /// One reasoning piece, OpenRouter's way.
    Reasoning { reasoning: &'static str },
    /// The empty delta that comes with `finish_reason`.
    Empty {},
}

/// Words of the reasoning, cycled: piece `i` is word `i % 5` with its space.
const REASONING_WORDS: [&str; 5] = ["Let ", "me ", "think ", "this ", "through. "];

/// Reasoning piece `index`: the whole reasoning of `reasoning=N` is pieces 0 to N-1
/// concatenated ("Let me think this through. Let me …").
pub fn reasoning_piece(index: usize) -> &'static str {
    REASONING_WORDS[index % REASONING_WORDS.len()]
}

impl Delta<'_> {
    /// Reasoning piece `index`, in `field`.
    pub(crate) fn reasoning(field: ReasoningField, index: usize) -> Self {
        let text = reasoning_piece(index);
        match field {
            ReasoningField::ReasoningContent => Delta::ReasoningContent {
                reasoning_content: text,
            },
            ReasoningField::Reasoning => Delta::Reasoning { reasoning: text },
        }
    }
}

impl<'a> Delta<'a> {
    /// The first delta of a reply.
    pub(crate) fn start(reply: &'a Reply) -> Self {
        match reply {
            Reply::Text(_) => Delta::Start {
                role: "assistant",
                content: Some(""),
                tool_calls: None,
            },
            Reply::ToolCall(call) => Delta::Start {
                role: "assistant",
                content: None,
                tool_calls: Some([ToolCallStart {
                    index: 0,
                    id: &call.id,
                    kind: "function",
                    function: FullFunction {
                        name: &call.name,
                        arguments: "",
                    },
                }]),
            },
        }
    }

    /// Content delta or argument piece `index` of a reply.
    pub(crate) fn piece(reply: &'a Reply, index: usize) -> Self {
        match reply {
            Reply::Text(text) => Delta::Content {
                content: text.delta(index),
            },
            Reply::ToolCall(call) => Delta::Arguments {
                tool_calls: [ToolCallArguments {
                    index: 0,
                    function: ArgumentsOnly {
                        arguments: call.piece(index),
                    },
                }],
            },
        }
    }
}

#[derive(Serialize)]
pub(crate) struct ToolCallStart<'a> {
    index: u32,
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    function: FullFunction<'a>,
}

#[derive(Serialize)]
pub(crate) struct ToolCallArguments<'a> {
    index: u32,
    function: ArgumentsOnly<'a>,
}

#[derive(Serialize)]
struct ArgumentsOnly<'a> {
    arguments: &'a str,
}

#[derive(Serialize)]
struct FullFunction<'a> {
    name: &'a str,
    arguments: &'a str,
}

#[derive(Serialize)]
struct FullToolCall<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    function: FullFunction<'a>,
}

#[derive(Serialize)]
struct Completion<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: [CompletionChoice<'a>; 1],
    usage: Usage,
}

#[derive(Serialize)]
struct CompletionChoice<'a> {
    index: u32,
    message: Message<'a>,
    finish_reason: &'static str,
}

#[derive(Serialize)]
struct Message<'a> {
    role: &'static str,
    content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_calls: Option<&'a [FullToolCall<'a>]>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::options::Behaviour;
    use crate::request::ChatRequest;
    use serde_json::{Value, json};

    fn meta(usage_field: bool) -> ChunkMeta {
        ChunkMeta {
            id: "chatcmpl-3".to_owned(),
            created: 42,
            model: "mock;deltas=2".to_owned(),
            usage_field,
        }
    }

    fn data(event: &Bytes) -> Value {
        let text = std::str::from_utf8(event).unwrap();
        let json = text
            .strip_prefix("data: ")
            .unwrap()
            .strip_suffix("\n\n")
            .unwrap();
        assert!(!json.contains('\n'));
        serde_json::from_str(json).unwrap()
    }

    fn reply(tools: bool) -> Reply {
        let mut body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
        if tools {
            body["tools"] = json!([{"type": "function", "function": {"name": "f",
                "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}}]);
        }
        let request: ChatRequest = serde_json::from_value(body).unwrap();
        Reply::plan(&request, &Behaviour::default(), 3)
    }

    #[test]
    fn reasoning_pieces_are_in_the_field_asked_for() {
        let meta = meta(false);
        let piece = |field, index| {
            data(&meta.choice(Delta::reasoning(field, index), None).unwrap())["choices"][0]["delta"]
                .clone()
        };
        assert_eq!(
            piece(ReasoningField::ReasoningContent, 0),
            json!({"reasoning_content": "Let "})
        );
        assert_eq!(
            piece(ReasoningField::Reasoning, 6),
            json!({"reasoning": "me "})
        );
        let whole: String = (0..5).map(reasoning_piece).collect();
        assert_eq!(whole, "Let me think this through. ");
    }

    #[test]
    fn text_chunks_have_the_openai_shape() {
        let reply = reply(false);
        let meta = meta(false);
        assert_eq!(
            data(&meta.choice(Delta::start(&reply), None).unwrap()),
            json!({"id": "chatcmpl-3", "object": "chat.completion.chunk", "created": 42,
                   "model": "mock;deltas=2", "choices": [{"index": 0,
                   "delta": {"role": "assistant", "content": ""}, "finish_reason": null}]})
        );
        assert_eq!(
            data(&meta.choice(Delta::piece(&reply, 0), None).unwrap())["choices"][0]["delta"],
            json!({"content": "Mock "})
        );
        let stop = data(&meta.choice(Delta::Empty {}, Some("stop")).unwrap());
        assert_eq!(
            stop["choices"][0],
            json!({"index": 0, "delta": {}, "finish_reason": "stop"})
        );
    }

    #[test]
    fn usage_is_null_until_the_usage_chunk() {
        let meta = meta(true);
        let stop = data(&meta.choice(Delta::Empty {}, Some("stop")).unwrap());
        assert_eq!(stop["usage"], Value::Null);
        assert!(stop.as_object().unwrap().contains_key("usage"));
        let usage = Usage {
            prompt_tokens: 1,
            completion_tokens: 2,
            total_tokens: 3,
        };
        let last = data(&meta.usage(usage).unwrap());
        assert_eq!(last["choices"], json!([]));
        assert_eq!(
            last["usage"],
            json!({"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3})
        );
    }

    #[test]
    fn tool_call_chunks_have_the_openai_shape() {
        let reply = reply(true);
        let meta = meta(false);
        assert_eq!(
            data(&meta.choice(Delta::start(&reply), None).unwrap())["choices"][0]["delta"],
            json!({"role": "assistant", "content": null, "tool_calls": [{"index": 0,
                   "id": "call_3", "type": "function",
                   "function": {"name": "f", "arguments": ""}}]})
        );
        assert_eq!(
            data(&meta.choice(Delta::piece(&reply, 0), None).unwrap())["choices"][0]["delta"],
            json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"q\":\"hi"}}]})
        );
    }

    #[test]
    fn completion_object_carries_the_whole_message() {
        let usage = Usage {
            prompt_tokens: 1,
            completion_tokens: 8,
            total_tokens: 9,
        };
        let text: Value =
            serde_json::from_slice(&meta(false).completion(&reply(false), usage).unwrap()).unwrap();
        assert_eq!(text["object"], "chat.completion");
        assert_eq!(
            text["choices"][0],
            json!({"index": 0, "finish_reason": "stop", "message": {"role": "assistant",
                   "content": "Mock reply to: hi lorem ipsum dolor sit"}})
        );
        assert_eq!(text["usage"]["total_tokens"], 9);
        let call: Value =
            serde_json::from_slice(&meta(false).completion(&reply(true), usage).unwrap()).unwrap();
        assert_eq!(
            call["choices"][0],
            json!({"index": 0, "finish_reason": "tool_calls", "message": {"role": "assistant",
                   "content": null, "tool_calls": [{"id": "call_3", "type": "function",
                   "function": {"name": "f", "arguments": "{\"q\":\"hi\"}"}}]}})
        );
    }
}

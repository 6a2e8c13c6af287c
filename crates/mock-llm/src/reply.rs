//! What the mock answers: deterministic reply words, tool-call arguments and token usage.

use serde::Serialize;
use serde_json::{Map, Value};

use crate::options::{Behaviour, ToolMode};
use crate::request::{ChatMessage, ChatRequest, FunctionDef, MessageContent};

/// Words that pad a text reply after its lead words, cycled from the start as often as needed.
pub const FILLER: [&str; 19] = [
    "lorem",
    "ipsum",
    "dolor",
    "sit",
    "amet",
    "consectetur",
    "adipiscing",
    "elit",
    "sed",
    "do",
    "eiusmod",
    "tempor",
    "incididunt",
    "ut",
    "labore",
    "et",
    "dolore",
    "magna",
    "aliqua",
];

// The same words with the separating space already attached, so a content delta is a
// borrowed slice rather than a fresh string per chunk.
const FILLER_SPACED: [&str; 19] = [
    "lorem ",
    "ipsum ",
    "dolor ",
    "sit ",
    "amet ",
    "consectetur ",
    "adipiscing ",
    "elit ",
    "sed ",
    "do ",
    "eiusmod ",
    "tempor ",
    "incididunt ",
    "ut ",
    "labore ",
    "et ",
    "dolore ",
    "magna ",
    "aliqua ",
];

/// Most words of the last user message quoted at the start of a text reply.
pub const QUOTED_WORDS: usize = 8;

/// Bytes of tool-call arguments per streamed argument chunk (cut on a `char` boundary).
pub const ARGUMENT_PIECE_CHARS: usize = 8;

/// The words of the text reply to `request`, exactly `deltas` of them.
///
/// The rule:
/// 1. Lead words: if the last message has role `tool`, the single word `Noted.`; otherwise
///    `Mock`, `reply`, `to:` followed by the first [`QUOTED_WORDS`] (8) whitespace-separated
///    words of the last message with role `user` (none if there is no user message).
/// 2. The lead words are followed by [`FILLER`] (`lorem ipsum dolor sit amet ...`), cycled
///    from its start for as long as needed.
/// 3. The reply is the first `deltas` words of that sequence (so a small `deltas` cuts the lead).
///
/// Streamed, content delta `i` is word `i` followed by one space, except the last delta which
/// has no trailing space; the whole content is therefore the words joined by single spaces.
/// A user message whose content is an array of parts counts its text parts joined by newlines.
pub fn reply_words(request: &ChatRequest, deltas: usize) -> Vec<String> {
    let reply = TextReply::new(request, deltas);
    (0..reply.len())
        .map(|index| reply.word(index).to_owned())
        .collect()
}

/// The tool call the mock would make for `request`: the first offered function tool.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ToolCallPlan {
    /// The called function's name.
    pub name: String,
    /// The arguments object.
    pub arguments: Value,
}

/// The tool call the mock makes when it decides to call a tool, or `None` if no function tool
/// is offered.
///
/// The first tool with `type` `function` is called. Its arguments are an object with one entry
/// per property of `parameters.properties` named in `parameters.required` (or every property
/// when `required` is absent). A property's value is: the first element of its `enum` if it has
/// one; otherwise by its `type` (the first non-`null` one if `type` is an array): `string` or
/// no type → the last user message's content, trimmed; `integer`/`number` → `1`;
/// `boolean` → `true`; `object` → `{}`; `array` → `[]`; `null` → `null`.
///
/// Special case: for a function named `update_profile` whose `field` property has a non-empty
/// `enum`, `field` is `enum[c % enum.len()]` where `c` counts the `update_profile` tool calls
/// made by earlier assistant messages, and `value` is the last user message's content, trimmed.
pub fn tool_call_plan(request: &ChatRequest) -> Option<ToolCallPlan> {
    let function = first_function(request)?;
    let user_text = request.last_user_text();
    let user_text = user_text.trim();
    let schema = function.parameters.as_ref();
    let properties = schema
        .and_then(|schema| schema.get("properties"))
        .and_then(Value::as_object);
    let required = schema
        .and_then(|schema| schema.get("required"))
        .and_then(Value::as_array);
    let names: Vec<&str> = match (required, properties) {
        (Some(required), _) => required.iter().filter_map(Value::as_str).collect(),
        (None, Some(properties)) => properties.keys().map(String::as_str).collect(),
        (None, None) => Vec::new(),
    };
    let mut arguments = Map::new();
    for name in names {
        let property = properties.and_then(|properties| properties.get(name));
        arguments.insert(name.to_owned(), default_value(property, user_text));
    }
    if function.name == "update_profile" {
        let choices = properties
            .and_then(|properties| properties.get("field"))
            .and_then(|field| field.get("enum"))
            .and_then(Value::as_array)
            .filter(|choices| !choices.is_empty());
        if let Some(choices) = choices {
            let earlier_calls = request
                .messages
                .iter()
                .filter(|message| message.role == "assistant")
                .flat_map(|message| &message.tool_calls)
                .filter(|call| call.function.name == "update_profile")
                .count();
            let field = choices[earlier_calls % choices.len()].clone();
            arguments.insert("field".to_owned(), field);
            arguments.insert("value".to_owned(), Value::from(user_text));
        }
    }
    Some(ToolCallPlan {
        name: function.name.clone(),
        arguments: Value::Object(arguments),
    })
}

fn first_function(request: &ChatRequest) -> Option<&FunctionDef> {
    request
        .tools
        .iter()
        .find(|tool| tool.kind == "function")
        .map(|tool| &tool.function)
}

fn default_value(property: Option<&Value>, user_text: &str) -> Value {
    let Some(property) = property else {
        return Value::from(user_text);
    };
    if let Some(first) = property
        .get("enum")
        .and_then(Value::as_array)
        .and_then(|choices| choices.first())
    {
        return first.clone();
    }
    let kind = match property.get("type") {
        Some(Value::String(kind)) => Some(kind.as_str()),
        Some(Value::Array(kinds)) => kinds
            .iter()
            .filter_map(Value::as_str)
            .find(|kind| *kind != "null"),
        _ => None,
    };
    match kind {
        Some("integer" | "number") => Value::from(1),
        Some("boolean") => Value::Bool(true),
        Some("object") => Value::Object(Map::new()),
        Some("array") => Value::Array(Vec::new()),
        Some("null") => Value::Null,
        _ => Value::from(user_text),
    }
}

/// Token counts reported in `usage`.
///
/// `prompt_tokens` is the number of whitespace-separated words in the text of all request
/// messages; `completion_tokens` is the number of content deltas of a text reply, or the number
/// of argument chunks of a tool call; `total_tokens` is their sum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Usage {
    /// Tokens in the request.
    pub prompt_tokens: u64,
    /// Tokens in the reply.
    pub completion_tokens: u64,
    /// `prompt_tokens + completion_tokens`.
    pub total_tokens: u64,
}

/// A planned answer to one request.
#[derive(Debug)]
pub(crate) enum Reply {
    Text(TextReply),
    ToolCall(ToolCallReply),
}

impl Reply {
    /// Decides between text and a tool call as `behaviour.tools` says; `seq` numbers the call id.
    pub(crate) fn plan(request: &ChatRequest, behaviour: &Behaviour, seq: u64) -> Self {
        let wants_tool = match behaviour.tools {
            ToolMode::Never => false,
            ToolMode::Always => true,
            ToolMode::Auto => request.last_role() == Some("user"),
        };
        let tool_call = if wants_tool {
            tool_call_plan(request)
        } else {
            None
        };
        match tool_call {
            Some(plan) => Self::ToolCall(ToolCallReply::new(plan, seq)),
            None => Self::Text(TextReply::new(request, behaviour.deltas)),
        }
    }

    /// Content deltas of a text reply, or argument chunks of a tool call.
    pub(crate) fn pieces(&self) -> usize {
        match self {
            Self::Text(text) => text.len(),
            Self::ToolCall(call) => call.piece_count(),
        }
    }

    pub(crate) fn finish_reason(&self) -> &'static str {
        match self {
            Self::Text(_) => "stop",
            Self::ToolCall(_) => "tool_calls",
        }
    }

    pub(crate) fn usage(&self, request: &ChatRequest) -> Usage {
        let prompt_tokens = request.messages.iter().map(word_count).sum::<usize>() as u64;
        let completion_tokens = self.pieces() as u64;
        Usage {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
        }
    }
}

fn word_count(message: &ChatMessage) -> usize {
    match &message.content {
        None => 0,
        Some(MessageContent::Text(text)) => text.split_whitespace().count(),
        Some(MessageContent::Parts(parts)) => parts
            .iter()
            .filter_map(|part| part.text.as_deref())
            .map(|text| text.split_whitespace().count())
            .sum(),
    }
}

/// A text reply; see [`reply_words`] for the rule.
#[derive(Debug)]
pub(crate) struct TextReply {
    // Lead words, each already followed by one space.
    lead: Vec<String>,
    len: usize,
}

impl TextReply {
    pub(crate) fn new(request: &ChatRequest, deltas: usize) -> Self {
        let lead = if request.last_role() == Some("tool") {
            vec!["Noted. ".to_owned()]
        } else {
            let user_text = request.last_user_text();
            ["Mock", "reply", "to:"]
                .into_iter()
                .chain(user_text.split_whitespace().take(QUOTED_WORDS))
                .map(|word| format!("{word} "))
                .collect()
        };
        Self { lead, len: deltas }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Content delta `index`: the word plus a space, without the space for the last word.
    pub(crate) fn delta(&self, index: usize) -> &str {
        let spaced = match self.lead.get(index) {
            Some(word) => word.as_str(),
            None => FILLER_SPACED[(index - self.lead.len()) % FILLER_SPACED.len()],
        };
        if index + 1 == self.len {
            spaced.trim_end_matches(' ')
        } else {
            spaced
        }
    }

    fn word(&self, index: usize) -> &str {
        self.delta(index).trim_end_matches(' ')
    }

    /// The whole content: every delta concatenated.
    pub(crate) fn text(&self) -> String {
        (0..self.len).map(|index| self.delta(index)).collect()
    }
}

/// A tool call with its arguments serialized and cut into streaming pieces.
#[derive(Debug)]
pub(crate) struct ToolCallReply {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) arguments: String,
    // Byte offsets where each argument piece starts, all on `char` boundaries.
    starts: Vec<usize>,
}

impl ToolCallReply {
    fn new(plan: ToolCallPlan, seq: u64) -> Self {
        let arguments = plan.arguments.to_string();
        let starts = arguments
            .char_indices()
            .step_by(ARGUMENT_PIECE_CHARS)
            .map(|(offset, _)| offset)
            .collect();
        Self {
            id: format!("call_{seq}"),
            name: plan.name,
            arguments,
            starts,
        }
    }

    pub(crate) fn piece_count(&self) -> usize {
        self.starts.len()
    }

    pub(crate) fn piece(&self, index: usize) -> &str {
        let start = self
            .starts
            .get(index)
            .copied()
            .unwrap_or(self.arguments.len());
        let end = self
            .starts
            .get(index + 1)
            .copied()
            .unwrap_or(self.arguments.len());
        &self.arguments[start..end]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn request(body: Value) -> ChatRequest {
        serde_json::from_value(body).unwrap()
    }

    fn profile_tool() -> Value {
        json!({"type": "function", "function": {
            "name": "update_profile",
            "description": "Update one profile field",
            "parameters": {
                "type": "object",
                "properties": {
                    "field": {"type": "string", "enum": ["name", "email", "city"]},
                    "value": {"type": "string"}
                },
                "required": ["field", "value"]
            }
        }})
    }

    #[test]
    fn text_reply_quotes_the_last_user_message_then_pads() {
        let request = request(json!({"model": "mock", "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "  hello   there\nworld  "}
        ]}));
        assert_eq!(
            reply_words(&request, 9),
            [
                "Mock", "reply", "to:", "hello", "there", "world", "lorem", "ipsum", "dolor"
            ]
        );
        let reply = TextReply::new(&request, 9);
        assert_eq!(reply.delta(0), "Mock ");
        assert_eq!(reply.delta(8), "dolor");
        assert_eq!(
            reply.text(),
            "Mock reply to: hello there world lorem ipsum dolor"
        );
    }

    #[test]
    fn text_reply_quotes_at_most_eight_words_and_can_be_cut_short() {
        let request = request(json!({"model": "mock", "messages": [
            {"role": "user", "content": "one two three four five six seven eight nine ten"}
        ]}));
        let words = reply_words(&request, 12);
        assert_eq!(
            words[3..11].join(" "),
            "one two three four five six seven eight"
        );
        assert_eq!(words[11], "lorem");
        assert_eq!(reply_words(&request, 2), ["Mock", "reply"]);
        assert!(reply_words(&request, 0).is_empty());
    }

    #[test]
    fn filler_cycles() {
        let request = request(json!({"model": "mock", "messages": [
            {"role": "tool", "tool_call_id": "call_1", "content": "ok"}
        ]}));
        let words = reply_words(&request, 1 + 2 * FILLER.len() + 1);
        assert_eq!(words[0], "Noted.");
        assert_eq!(words[1..=FILLER.len()], FILLER);
        assert_eq!(words[FILLER.len() + 1..2 * FILLER.len() + 1], FILLER);
        assert_eq!(words[2 * FILLER.len() + 1], "lorem");
    }

    #[test]
    fn spaced_filler_matches_filler() {
        for (word, spaced) in FILLER.iter().zip(FILLER_SPACED) {
            assert_eq!(format!("{word} "), spaced);
        }
    }

    #[test]
    fn content_parts_are_read() {
        let request = request(json!({"model": "mock", "messages": [
            {"role": "user", "content": [{"type": "text", "text": "from parts"}]}
        ]}));
        assert_eq!(
            reply_words(&request, 5),
            ["Mock", "reply", "to:", "from", "parts"]
        );
    }

    #[test]
    fn update_profile_rotates_through_the_field_enum() {
        let first = request(
            json!({"model": "mock", "tools": [profile_tool()], "messages": [
                {"role": "user", "content": " Ada Lovelace "}
            ]}),
        );
        assert_eq!(
            tool_call_plan(&first),
            Some(ToolCallPlan {
                name: "update_profile".to_owned(),
                arguments: json!({"field": "name", "value": "Ada Lovelace"}),
            })
        );
        let later = request(
            json!({"model": "mock", "tools": [profile_tool()], "messages": [
                {"role": "user", "content": "a"},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "call_1", "type": "function",
                     "function": {"name": "update_profile", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "ok"},
                {"role": "assistant", "content": "done"},
                {"role": "user", "content": "ada@example.com"}
            ]}),
        );
        let plan = tool_call_plan(&later).unwrap();
        assert_eq!(
            plan.arguments,
            json!({"field": "email", "value": "ada@example.com"})
        );
    }

    #[test]
    fn generic_arguments_follow_the_schema() {
        let request = request(json!({"model": "mock", "messages": [
            {"role": "user", "content": "find cats"}
        ], "tools": [
            {"type": "function", "function": {"name": "search", "parameters": {
                "type": "object",
                "properties": {
                    "query": {"type": "string"},
                    "limit": {"type": "integer"},
                    "exact": {"type": "boolean"},
                    "filters": {"type": "object"},
                    "tags": {"type": "array"},
                    "mode": {"type": "string", "enum": ["fast", "slow"]},
                    "note": {"type": ["null", "string"]},
                    "unused": {"type": "number"}
                },
                "required": ["query", "limit", "exact", "filters", "tags", "mode", "note"]
            }}},
            {"type": "function", "function": {"name": "other"}}
        ]}));
        let plan = tool_call_plan(&request).unwrap();
        assert_eq!(plan.name, "search");
        assert_eq!(
            plan.arguments,
            json!({"query": "find cats", "limit": 1, "exact": true, "filters": {},
                   "tags": [], "mode": "fast", "note": "find cats"})
        );
    }

    #[test]
    fn all_properties_are_used_without_required() {
        let request = request(json!({"model": "mock", "messages": [
            {"role": "user", "content": "x"}
        ], "tools": [{"type": "function", "function": {"name": "f", "parameters": {
            "type": "object", "properties": {"a": {"type": "number"}, "b": {}}
        }}}]}));
        assert_eq!(
            tool_call_plan(&request).unwrap().arguments,
            json!({"a": 1, "b": "x"})
        );
    }

    #[test]
    fn tool_mode_decides_between_text_and_tool_call() {
        let after_user = request(json!({"model": "mock", "tools": [profile_tool()],
            "messages": [{"role": "user", "content": "hi"}]}));
        let after_tool = request(json!({"model": "mock", "tools": [profile_tool()],
            "messages": [{"role": "user", "content": "hi"},
                         {"role": "tool", "tool_call_id": "c", "content": "ok"}]}));
        let no_tools = request(json!({"model": "mock",
            "messages": [{"role": "user", "content": "hi"}]}));
        let plan = |request: &ChatRequest, spec: &str| {
            let behaviour = Behaviour::parse(spec, None).unwrap();
            matches!(Reply::plan(request, &behaviour, 1), Reply::ToolCall(_))
        };
        assert!(plan(&after_user, "mock"));
        assert!(!plan(&after_tool, "mock"));
        assert!(!plan(&no_tools, "mock"));
        assert!(!plan(&after_user, "mock;tools=never"));
        assert!(plan(&after_tool, "mock;tools=always"));
        assert!(!plan(&no_tools, "mock;tools=always"));
    }

    #[test]
    fn argument_pieces_cover_the_arguments_on_char_boundaries() {
        let plan = ToolCallPlan {
            name: "f".to_owned(),
            arguments: json!({"value": "héllo wörld ünïcode"}),
        };
        let call = ToolCallReply::new(plan, 7);
        assert_eq!(call.id, "call_7");
        let pieces: Vec<&str> = (0..call.piece_count()).map(|i| call.piece(i)).collect();
        assert!(pieces.len() > 1);
        assert!(
            pieces
                .iter()
                .all(|piece| piece.chars().count() <= ARGUMENT_PIECE_CHARS)
        );
        assert_eq!(pieces.concat(), call.arguments);
    }

    #[test]
    fn usage_counts_prompt_words_and_reply_pieces() {
        let request = request(json!({"model": "mock", "messages": [
            {"role": "system", "content": "two words"},
            {"role": "user", "content": "three more words"}
        ]}));
        let reply = Reply::plan(&request, &Behaviour::default(), 1);
        assert_eq!(
            reply.usage(&request),
            Usage {
                prompt_tokens: 5,
                completion_tokens: 8,
                total_tokens: 13
            }
        );
    }
}

//! The built-in demo model: deterministic, offline, streaming word by word.
//!
//! For the onboarding agent (the request offers `update_profile`) it treats
//! each user message as the answer to the next unfilled profile field, saves
//! it with `update_profile`, then asks the next question; once every field is
//! filled it calls `complete_onboarding` and streams a summary. For the chat
//! agent it calls `get_profile` when the message mentions the profile and
//! otherwise answers with a fixed reply. For any agent, a message naming one
//! of its other tools (every word of `list_orders`: "list my orders") calls it, with the
//! arguments the message gives as `key=value` (`quantity=2 item="blue mug"`),
//! and the reply shows the result. A user message with the word "think"
//! makes it reason first, as thinking models do: a few words of reasoning
//! (`reasoning.delta` events), then the reply. The model string may carry options
//! after a `;`: `fail_after=N` fails the stream after N deltas, for tests.

use std::time::Duration;

use futures_util::StreamExt;
use serde::Deserialize;

use super::{
    ChatMessage, ChatRequest, LlmError, LlmEvent, LlmStream, Provider, ToolCall, ToolCallDelta,
    Usage,
};

/// What the demo model "thinks" before answering a message that asks it to.
pub const REASONING: &str = "The user asks me to think. I am a script, so I follow my \
                             script; a real model would reason about the question here.";

/// The scripted provider.
#[derive(Debug, Clone)]
pub struct Scripted {
    /// Pause before each word, so the demo visibly streams.
    delay: Duration,
    /// The onboarding fields, in the order they are asked.
    fields: Vec<String>,
}

/// A `[providers.<name>]` table of the config file with `kind = "scripted"`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScriptedConfig {
    /// Pause before each word (default: `--scripted-delay-ms`).
    pub delay_ms: Option<u64>,
}

impl ScriptedConfig {
    /// The provider the table describes: pausing `delay` before each word unless the table
    /// sets its own pause, and asking for `fields`.
    pub fn build(&self, delay: Duration, fields: &[String]) -> Scripted {
        Scripted::new(
            self.delay_ms.map_or(delay, Duration::from_millis),
            fields.to_vec(),
        )
    }
}

/// What the script does next.
#[derive(Debug, Clone, PartialEq)]
enum Step {
    Say(String),
    Call(ToolCall),
}

impl Scripted {
    /// A scripted model that pauses `delay` before each word and asks for `fields`.
    pub fn new(delay: Duration, fields: Vec<String>) -> Scripted {
        Scripted { delay, fields }
    }

    fn next_step(&self, request: &ChatRequest) -> Step {
        let offers = |name: &str| request.tools.iter().any(|t| t.name == name);
        let history = History::of(&request.messages);
        if offers("update_profile") {
            self.onboarding_step(&history)
        } else if let Some(step) = tool_step(request, &history) {
            step
        } else {
            chat_step(&history, offers("get_profile"))
        }
    }

    fn onboarding_step(&self, history: &History<'_>) -> Step {
        let next_field = self
            .fields
            .iter()
            .find(|f| !history.saved.iter().any(|(saved, _)| saved == *f));
        match history.last {
            Some(ChatMessage::User(text)) => match next_field {
                _ if history.completed => Step::Say(
                    "Your onboarding is already complete. Start a chat conversation to talk \
                     about anything else."
                        .to_owned(),
                ),
                Some(field) => history.call(
                    "update_profile",
                    serde_json::json!({ "field": field, "value": text.trim() }),
                ),
                None => history.call("complete_onboarding", serde_json::json!({})),
            },
            Some(ChatMessage::Tool { call_id, content }) => {
                let result: serde_json::Value =
                    serde_json::from_str(content).unwrap_or(serde_json::Value::Null);
                let error = result.get("error").and_then(serde_json::Value::as_str);
                match (history.call_name(call_id), error, next_field) {
                    (_, Some(error), field) => Step::Say(format!(
                        "Sorry, I could not save that: {error}. {}",
                        field.map_or_else(|| "Please try again.".to_owned(), |f| question(f))
                    )),
                    (Some("complete_onboarding"), None, _) => Step::Say(summary(&history.saved)),
                    (_, None, Some(field)) => {
                        let thanks = history
                            .saved
                            .last()
                            .map(|(field, value)| {
                                format!("Thanks! I saved your {field} as \"{value}\". ")
                            })
                            .unwrap_or_default();
                        Step::Say(format!("{thanks}{}", question(field)))
                    }
                    (_, None, None) => history.call("complete_onboarding", serde_json::json!({})),
                }
            }
            _ => Step::Say(match next_field {
                Some(field) => format!("Welcome! {}", question(field)),
                None => summary(&history.saved),
            }),
        }
    }
}

/// The tools the demo calls by name: every tool but the profile's.
const PROFILE_TOOLS: [&str; 3] = ["get_profile", "update_profile", "complete_onboarding"];

/// A call of the tool the user's message names, or the reply to its result.
fn tool_step(request: &ChatRequest, history: &History<'_>) -> Option<Step> {
    match history.last? {
        ChatMessage::User(text) => {
            let lower = text.to_lowercase();
            // Named when every word of its name is in the message:
            // `list_orders` by "list my orders", an MCP server's
            // `time__get-current-time` by "time: get the current time".
            let tool = request.tools.iter().find(|tool| {
                let name = tool.name.to_lowercase();
                let mut words = name.split(['_', '-']).filter(|word| !word.is_empty());
                !PROFILE_TOOLS.contains(&tool.name.as_str())
                    && words.clone().next().is_some()
                    && words.all(|word| lower.contains(word))
            })?;
            Some(history.call(&tool.name, arguments(text, &tool.parameters)))
        }
        ChatMessage::Tool { call_id, content } => {
            let name = history.call_name(call_id)?;
            if PROFILE_TOOLS.contains(&name) {
                return None;
            }
            let result: serde_json::Value =
                serde_json::from_str(content).unwrap_or(serde_json::Value::Null);
            Some(Step::Say(match result.get("error") {
                Some(error) => format!(
                    "{name} failed: {}",
                    error
                        .as_str()
                        .map_or_else(|| error.to_string(), str::to_owned)
                ),
                None => format!("{name} answered: {result}"),
            }))
        }
        _ => None,
    }
}

/// The `key=value` pairs of `text` whose keys the schema declares, typed as
/// it says; a value may be quoted (`item="blue mug"`).
fn arguments(text: &str, schema: &serde_json::Value) -> serde_json::Value {
    let mut arguments = serde_json::Map::new();
    let properties = schema
        .get("properties")
        .and_then(serde_json::Value::as_object);
    let mut rest = text;
    while let Some(eq) = rest.find('=') {
        let key = rest[..eq]
            .rsplit(|c: char| c.is_whitespace())
            .next()
            .unwrap_or_default();
        let after = &rest[eq + 1..];
        let (value, next) = match after.strip_prefix('"') {
            Some(quoted) => match quoted.find('"') {
                Some(end) => (&quoted[..end], &quoted[end + 1..]),
                None => (quoted, ""),
            },
            None => {
                let end = after.find(char::is_whitespace).unwrap_or(after.len());
                (&after[..end], &after[end..])
            }
        };
        if let Some(kind) = properties
            .and_then(|p| p.get(key))
            .and_then(|p| p.get("type"))
            .and_then(serde_json::Value::as_str)
        {
            let typed = match kind {
                "integer" => value.parse::<i64>().map(Into::into).ok(),
                "number" => value.parse::<f64>().ok().map(Into::into),
                "boolean" => value.parse::<bool>().map(Into::into).ok(),
                _ => None,
            };
            arguments.insert(key.to_owned(), typed.unwrap_or_else(|| value.into()));
        }
        rest = next;
    }
    serde_json::Value::Object(arguments)
}

fn chat_step(history: &History<'_>, offers_profile: bool) -> Step {
    match history.last {
        Some(ChatMessage::User(text))
            if offers_profile && text.to_lowercase().contains("profile") =>
        {
            history.call("get_profile", serde_json::json!({}))
        }
        Some(ChatMessage::User(text)) => Step::Say(format!(
            "You said: \"{}\". I am the agentstream demo model, a script that runs offline; \
             configure a real model provider for real answers.",
            text.trim()
        )),
        Some(ChatMessage::Tool { content, .. }) => {
            let result: serde_json::Value =
                serde_json::from_str(content).unwrap_or(serde_json::Value::Null);
            let fields = result
                .get("fields")
                .and_then(serde_json::Value::as_object)
                .filter(|fields| !fields.is_empty());
            Step::Say(match fields {
                Some(fields) => format!(
                    "Here is your profile: {}.",
                    fields
                        .iter()
                        .map(|(k, v)| format!("{k}: {}", v.as_str().unwrap_or_default()))
                        .collect::<Vec<_>>()
                        .join("; ")
                ),
                None => {
                    "Your profile is empty. Start an onboarding conversation to fill it.".to_owned()
                }
            })
        }
        _ => Step::Say("Hello! I am the agentstream demo model. Ask me anything.".to_owned()),
    }
}

fn question(field: &str) -> String {
    match field {
        "name" => "What is your name?".to_owned(),
        "role" => "What is your role?".to_owned(),
        "goals" => "What are your goals?".to_owned(),
        other => format!("What is your {}?", other.replace('_', " ")),
    }
}

fn summary(saved: &[(String, String)]) -> String {
    let profile = saved
        .iter()
        .map(|(field, value)| format!("{field}: {value}"))
        .collect::<Vec<_>>()
        .join("; ");
    format!("You are all set! Your profile is {profile}. Welcome aboard.")
}

/// What the script reads from the conversation.
struct History<'a> {
    last: Option<&'a ChatMessage>,
    /// Calls made so far: (id, name, arguments).
    calls: Vec<&'a ToolCall>,
    /// Fields saved by successful `update_profile` calls, in order (latest value wins).
    saved: Vec<(String, String)>,
    /// Whether `complete_onboarding` succeeded.
    completed: bool,
}

impl<'a> History<'a> {
    fn of(messages: &'a [ChatMessage]) -> History<'a> {
        let mut history = History {
            last: messages.last(),
            calls: Vec::new(),
            saved: Vec::new(),
            completed: false,
        };
        for message in messages {
            match message {
                ChatMessage::Assistant { tool_calls, .. } => history.calls.extend(tool_calls),
                ChatMessage::Tool { call_id, content } => {
                    let ok = serde_json::from_str::<serde_json::Value>(content)
                        .is_ok_and(|v| v.get("error").is_none());
                    let Some(call) = history.calls.iter().find(|c| c.upstream_id() == call_id)
                    else {
                        continue;
                    };
                    match call.name.as_str() {
                        "update_profile" if ok => {
                            let args: serde_json::Value =
                                serde_json::from_str(&call.arguments).unwrap_or_default();
                            let field = args["field"].as_str().unwrap_or_default().to_owned();
                            let value = args["value"].as_str().unwrap_or_default().to_owned();
                            history.saved.retain(|(f, _)| *f != field);
                            history.saved.push((field, value));
                        }
                        "complete_onboarding" if ok => history.completed = true,
                        _ => {}
                    }
                }
                _ => {}
            }
        }
        history
    }

    /// The name of the call a tool message answers. Calls are found by the
    /// ID this model gave them, as a provider would (agentstream replaces
    /// one already used in the conversation, say after an edit, and keeps
    /// the model's as `upstream_id`).
    fn call_name(&self, call_id: &str) -> Option<&'a str> {
        self.calls
            .iter()
            .find(|c| c.upstream_id() == call_id)
            .map(|c| c.name.as_str())
    }

    /// A call whose ID is unique within the conversation.
    fn call(&self, name: &str, arguments: serde_json::Value) -> Step {
        Step::Call(ToolCall {
            id: format!("call_{}", self.calls.len() + 1),
            name: name.to_owned(),
            arguments: arguments.to_string(),
            upstream_id: None,
        })
    }
}

/// Splits text into word deltas that join back to it exactly.
fn words(text: &str) -> Vec<String> {
    text.split_inclusive(' ').map(str::to_owned).collect()
}

/// Splits a call's arguments into the pieces the demo streams: at most four, cut at
/// character boundaries, that join back to them exactly.
fn pieces(arguments: &str) -> Vec<String> {
    let chars: Vec<char> = arguments.chars().collect();
    chars
        .chunks(chars.len().div_ceil(4).max(1))
        .map(|piece| piece.iter().collect())
        .collect()
}

fn count_words(messages: &[ChatMessage]) -> u64 {
    let count = |text: &str| text.split_whitespace().count() as u64;
    messages
        .iter()
        .map(|m| match m {
            ChatMessage::System(t) | ChatMessage::User(t) => count(t),
            ChatMessage::Assistant { content, .. } => count(content),
            ChatMessage::Tool { content, .. } => count(content),
        })
        .sum()
}

impl Provider for Scripted {
    fn stream(&self, request: ChatRequest) -> LlmStream {
        let fail_after = request
            .model
            .split(';')
            .skip(1)
            .find_map(|option| option.strip_prefix("fail_after="))
            .and_then(|n| n.parse::<usize>().ok());
        let step = self.next_step(&request);
        let prompt_tokens = count_words(&request.messages);
        let delay = self.delay;
        let thinks = matches!(
            request.messages.last(),
            Some(ChatMessage::User(text)) if text.to_lowercase().contains("think")
        );
        Box::pin(async_stream::stream! {
            if thinks {
                for word in words(REASONING) {
                    if !delay.is_zero() {
                        tokio::time::sleep(delay).await;
                    }
                    yield Ok(LlmEvent::Reasoning(word));
                }
            }
            match step {
                Step::Say(text) => {
                    let words = words(&text);
                    let completion_tokens = words.len() as u64;
                    for (i, word) in words.into_iter().enumerate() {
                        if fail_after == Some(i) {
                            yield Err(LlmError::Upstream(format!("scripted failure after {i} deltas")));
                            return;
                        }
                        if !delay.is_zero() {
                            tokio::time::sleep(delay).await;
                        }
                        yield Ok(LlmEvent::Delta(word));
                    }
                    yield Ok(LlmEvent::Usage(Usage {
                        prompt_tokens,
                        completion_tokens,
                        total_tokens: prompt_tokens + completion_tokens,
                    }));
                }
                Step::Call(call) => {
                    if fail_after == Some(0) {
                        yield Err(LlmError::Upstream("scripted failure after 0 deltas".to_owned()));
                        return;
                    }
                    // The pieces share one word's pause, so a call takes as long as before.
                    let pieces = pieces(&call.arguments);
                    let pause = delay / u32::try_from(pieces.len().max(1)).unwrap_or(1);
                    if pieces.is_empty() && !delay.is_zero() {
                        tokio::time::sleep(delay).await;
                    }
                    for piece in pieces {
                        if !pause.is_zero() {
                            tokio::time::sleep(pause).await;
                        }
                        yield Ok(LlmEvent::ToolCallDelta(ToolCallDelta {
                            index: 0,
                            id: call.id.clone(),
                            name: call.name.clone(),
                            arguments: piece,
                        }));
                    }
                    yield Ok(LlmEvent::ToolCall(call));
                }
            }
        })
        .boxed()
    }

    fn label(&self, _model: &str) -> String {
        "scripted demo model (offline, not a real LLM)".to_owned()
    }

    fn is_demo(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::ToolSpec;

    fn request(messages: Vec<ChatMessage>, tools: &[&str]) -> ChatRequest {
        ChatRequest {
            model: "demo".to_owned(),
            messages,
            tools: tools
                .iter()
                .map(|name| ToolSpec {
                    name: (*name).to_owned(),
                    description: String::new(),
                    parameters: serde_json::json!({}),
                })
                .collect(),
            temperature: None,
            max_tokens: None,
            tool_choice: None,
        }
    }

    fn scripted() -> Scripted {
        Scripted::new(Duration::ZERO, vec!["name".into(), "role".into()])
    }

    #[test]
    fn words_join_back() {
        let text = "Hello  there, world";
        assert_eq!(words(text).concat(), text);
        assert_eq!(words(text).len(), 4);
    }

    #[test]
    fn pieces_join_back() {
        let arguments = r#"{"field":"name","value":"Ådå"}"#;
        assert_eq!(pieces(arguments).concat(), arguments);
        assert_eq!(pieces(arguments).len(), 4);
        assert_eq!(pieces("{}"), ["{", "}"]);
        assert!(pieces("").is_empty());
    }

    #[tokio::test]
    async fn a_call_streams_its_arguments_in_pieces_then_whole() {
        let request = request(vec![ChatMessage::User("Ada".into())], &["update_profile"]);
        let events: Vec<LlmEvent> = scripted()
            .stream(request)
            .map(Result::unwrap)
            .collect()
            .await;
        let Some((LlmEvent::ToolCall(call), pieces)) = events.split_last() else {
            panic!("a call last: {events:?}");
        };
        let joined: String = pieces
            .iter()
            .map(|event| match event {
                LlmEvent::ToolCallDelta(piece) => {
                    assert_eq!(
                        (piece.index, &piece.id, &piece.name),
                        (0, &call.id, &call.name)
                    );
                    piece.arguments.as_str()
                }
                other => panic!("a piece: {other:?}"),
            })
            .collect();
        assert!(pieces.len() > 1, "{events:?}");
        assert_eq!(joined, call.arguments);
    }

    #[test]
    fn onboarding_saves_each_answer_then_completes() {
        let tools = ["update_profile", "complete_onboarding", "get_profile"];
        let mut messages = vec![ChatMessage::User("Ada".into())];
        let Step::Call(call) = scripted().next_step(&request(messages.clone(), &tools)) else {
            panic!("expected a call");
        };
        assert_eq!(call.name, "update_profile");
        assert_eq!(call.arguments, r#"{"field":"name","value":"Ada"}"#);
        messages.push(ChatMessage::Assistant {
            content: String::new(),
            tool_calls: vec![call],
            reasoning: None,
        });
        messages.push(ChatMessage::Tool {
            call_id: "call_1".into(),
            content: r#"{"ok":true}"#.into(),
        });
        let step = scripted().next_step(&request(messages.clone(), &tools));
        assert_eq!(
            step,
            Step::Say("Thanks! I saved your name as \"Ada\". What is your role?".into())
        );
        messages.push(ChatMessage::Assistant {
            content: "…".into(),
            tool_calls: vec![],
            reasoning: None,
        });
        messages.push(ChatMessage::User("engineer".into()));
        let Step::Call(call) = scripted().next_step(&request(messages.clone(), &tools)) else {
            panic!("expected a call");
        };
        assert_eq!(call.id, "call_2");
        messages.push(ChatMessage::Assistant {
            content: String::new(),
            tool_calls: vec![call],
            reasoning: None,
        });
        messages.push(ChatMessage::Tool {
            call_id: "call_2".into(),
            content: r#"{"ok":true}"#.into(),
        });
        let Step::Call(call) = scripted().next_step(&request(messages.clone(), &tools)) else {
            panic!("expected a call");
        };
        assert_eq!(call.name, "complete_onboarding");
        messages.push(ChatMessage::Assistant {
            content: String::new(),
            tool_calls: vec![call],
            reasoning: None,
        });
        messages.push(ChatMessage::Tool {
            call_id: "call_3".into(),
            content: r#"{"ok":true}"#.into(),
        });
        assert_eq!(
            scripted().next_step(&request(messages, &tools)),
            Step::Say(
                "You are all set! Your profile is name: Ada; role: engineer. Welcome aboard."
                    .into()
            )
        );
    }

    /// After an edit, the model's next call ID was used already in the
    /// conversation: agentstream gives the call an ID of its own and sends
    /// the model's back (`upstream_id`), which the tool message answers.
    #[test]
    fn a_call_under_another_id_is_read_by_the_models() {
        let tools = ["update_profile", "complete_onboarding"];
        let call = |id: &str, upstream: Option<&str>, arguments: &str| ToolCall {
            id: id.into(),
            name: "update_profile".into(),
            arguments: arguments.into(),
            upstream_id: upstream.map(str::to_owned),
        };
        let answer = |call: ToolCall, call_id: &str| {
            [
                ChatMessage::Assistant {
                    content: String::new(),
                    tool_calls: vec![call],
                    reasoning: None,
                },
                ChatMessage::Tool {
                    call_id: call_id.into(),
                    content: r#"{"ok":true}"#.into(),
                },
            ]
        };
        let mut messages = vec![ChatMessage::User("Ada".into())];
        messages.extend(answer(
            call("call_1", None, r#"{"field":"name","value":"Ada"}"#),
            "call_1",
        ));
        messages.push(ChatMessage::User("Florence".into()));
        messages.extend(answer(
            call(
                "call_0195",
                Some("call_2"),
                r#"{"field":"role","value":"Florence"}"#,
            ),
            "call_2",
        ));
        // Both fields saved: it completes (it asked for the role again when
        // it looked the call up by agentstream's ID).
        let Step::Call(next) = scripted().next_step(&request(messages, &tools)) else {
            panic!("expected a call");
        };
        assert_eq!(next.name, "complete_onboarding");
    }

    #[test]
    fn a_refused_save_asks_again() {
        let tools = ["update_profile"];
        let call = ToolCall {
            id: "call_1".into(),
            name: "update_profile".into(),
            arguments: "{}".into(),
            upstream_id: None,
        };
        let messages = vec![
            ChatMessage::User(" ".into()),
            ChatMessage::Assistant {
                content: String::new(),
                tool_calls: vec![call],
                reasoning: None,
            },
            ChatMessage::Tool {
                call_id: "call_1".into(),
                content: r#"{"error":"value is empty"}"#.into(),
            },
        ];
        assert_eq!(
            scripted().next_step(&request(messages, &tools)),
            Step::Say("Sorry, I could not save that: value is empty. What is your name?".into())
        );
    }

    #[test]
    fn a_named_tool_is_called_with_the_arguments_given() {
        let mut request = request(
            vec![ChatMessage::User(
                "please place order item=\"blue mug\" quantity=2 gift=true x=1".into(),
            )],
            &[],
        );
        request.tools.push(crate::llm::ToolSpec {
            name: "place_order".into(),
            description: String::new(),
            parameters: serde_json::json!({"type": "object", "properties": {
                "item": {"type": "string"}, "quantity": {"type": "integer"},
                "gift": {"type": "boolean"}}}),
        });
        let Step::Call(call) = scripted().next_step(&request) else {
            panic!("a call");
        };
        assert_eq!(call.name, "place_order");
        let arguments: serde_json::Value = serde_json::from_str(&call.arguments).unwrap();
        assert_eq!(
            arguments,
            serde_json::json!({"item": "blue mug", "quantity": 2, "gift": true})
        );
    }

    #[test]
    fn chat_reads_the_profile_when_asked() {
        let step = scripted().next_step(&request(
            vec![ChatMessage::User("What is in my Profile?".into())],
            &["get_profile"],
        ));
        assert!(matches!(step, Step::Call(call) if call.name == "get_profile"));
    }
}

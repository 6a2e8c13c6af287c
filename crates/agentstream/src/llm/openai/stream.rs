//! The Chat Completions SSE parser: text and reasoning deltas as they arrive, tool calls'
//! argument pieces as they arrive and the calls assembled from them sent whole when the
//! choice finishes, usage once at the end.
//!
//! Parsing is lenient, since compatible servers differ: unknown fields, empty `choices`,
//! role-only chunks, comments and foreign `event:` names are skipped. A reply whose body ends
//! with neither a finish reason nor `[DONE]` was cut off: its half-assembled calls never go
//! out.

use std::collections::BTreeMap;

use bytes::Bytes;
use eventsource_stream::Event;
use futures_util::{Stream, StreamExt};

use super::wire::{WireChunk, WireToolCall};
use crate::llm::transport::{
    EventParser, Flow, Limits, body_events, body_excerpt, describe_error, error_message, excerpt,
    map_text, one_line,
};
use crate::llm::{LlmError, LlmEvent, ToolCall, ToolCallDelta, Usage};
use crate::text::{clean_json, clean_string};

/// Parses a Chat Completions SSE body into model events, with no time limits.
///
/// `body` is any byte stream, cut anywhere (inside a UTF-8 character, between `\r` and
/// `\n`); the HTTP provider feeds the response body through the same parser. The stream ends
/// after `[DONE]`, or when the body ends after a finish reason. It ends with an error (and
/// nothing after it) on a payload that is not JSON or not a chunk ([`LlmError::Protocol`]),
/// an upstream error object or a body that fails ([`LlmError::Upstream`]), a body that ends
/// before any chunk ([`LlmError::Protocol`]), or one that ends after chunks but with neither
/// a finish reason nor `[DONE]` ([`LlmError::Incomplete`]; its unfinished tool calls are
/// dropped). Error details are one line.
pub fn parse_body<S, E>(body: S) -> impl Stream<Item = Result<LlmEvent, LlmError>> + Send
where
    S: Stream<Item = Result<Bytes, E>> + Send + 'static,
    E: std::error::Error + Send + 'static,
{
    body_events(body, Limits::default(), ChunkParser::default())
        .map(|item| item.map_err(|failure| map_text(failure.error, |text| one_line(&text))))
}

/// Turns SSE events into model events, assembling tool calls across chunks.
#[derive(Debug, Default)]
pub(crate) struct ChunkParser {
    /// Tool calls being assembled, in the order they began.
    calls: Vec<PartialCall>,
    /// For each `index`, the position in `calls` of the call that pieces with that index
    /// extend; a later call may take the index over (see [`ChunkParser::add_call_piece`]).
    open: BTreeMap<usize, usize>,
    /// The latest usage reported. Sent once at the end: some servers report a running total
    /// on every chunk, and callers add up the usage events they get.
    usage: Option<Usage>,
    /// Valid chunks seen.
    chunks: u64,
    /// Whether choice 0 has given a finish reason, so the reply is whole.
    finished: bool,
    /// Tool calls begun so far in the reply: the next call's `number`.
    begun: usize,
}

/// A tool call whose pieces are still arriving.
#[derive(Debug, Default)]
struct PartialCall {
    /// The wire `index` of its first piece (or its position in that chunk), for messages.
    index: usize,
    /// Its place among the reply's calls, which its argument pieces carry.
    number: usize,
    id: String,
    name: String,
    arguments: String,
}

impl PartialCall {
    /// Whether the arguments so far are a whole JSON value, so no more can follow.
    fn has_whole_arguments(&self) -> bool {
        serde_json::from_str::<serde::de::IgnoredAny>(&self.arguments).is_ok()
    }
}

impl EventParser for ChunkParser {
    /// Handles one SSE event, pushing what it completes onto `out`.
    fn event(&mut self, event: &Event, out: &mut Vec<LlmEvent>) -> Result<Flow, LlmError> {
        match event.event.as_str() {
            "message" => {}
            // Not OpenAI's protocol, but some gateways report failures this way; ignoring it
            // would end the reply early as if it were complete.
            "error" => {
                let message = error_message(event.data.as_bytes())
                    .unwrap_or_else(|| body_excerpt(event.data.as_bytes()));
                return Err(LlmError::Upstream(format!(
                    "the upstream reported an error: {message}"
                )));
            }
            _ => return Ok(Flow::More),
        }
        let data = event.data.trim();
        if data.is_empty() {
            return Ok(Flow::More);
        }
        if data == "[DONE]" {
            self.finish(out)?;
            return Ok(Flow::Done);
        }
        let chunk: WireChunk = serde_json::from_str(data).map_err(|e| {
            let what = if e.is_data() {
                "a chunk of an unexpected shape"
            } else {
                "a chunk that is not valid JSON"
            };
            LlmError::Protocol(format!("the upstream sent {what} ({e}): {}", excerpt(data)))
        })?;
        self.chunks += 1;
        if let Some(error) = &chunk.error {
            return Err(LlmError::Upstream(format!(
                "the upstream reported an error: {}",
                describe_error(error)
            )));
        }
        if let Some(usage) = chunk.usage {
            self.usage = Some(usage.into());
        }
        // Only choice 0: the request never asks for more than one.
        let choices = chunk.choices.unwrap_or_default();
        for choice in choices.into_iter().filter(|c| c.index.unwrap_or(0) == 0) {
            if let Some(delta) = choice.delta {
                // DeepSeek and vLLM name it `reasoning_content`, OpenRouter `reasoning`; a
                // server sending both sends the same text twice.
                let reasoning = [delta.reasoning_content, delta.reasoning]
                    .into_iter()
                    .find_map(|text| match text {
                        Some(serde_json::Value::String(text)) if !text.is_empty() => Some(text),
                        _ => None,
                    });
                if let Some(text) = reasoning {
                    out.push(LlmEvent::Reasoning(clean_string(text)));
                }
                if let Some(text) = delta.content.filter(|t| !t.is_empty()) {
                    out.push(LlmEvent::Delta(clean_string(text)));
                }
                for (position, call) in delta.tool_calls.unwrap_or_default().into_iter().enumerate()
                {
                    self.add_call_piece(call.index.unwrap_or(position), call, out);
                }
            }
            if let Some(reason) = choice.finish_reason.filter(|r| !r.is_empty()) {
                self.flush_calls(out)?;
                if !self.finished {
                    self.finished = true;
                    out.push(LlmEvent::Finished(clean_string(reason)));
                }
            }
        }
        Ok(Flow::More)
    }

    /// The body ended without `[DONE]`: a normal end once a finish reason has arrived,
    /// otherwise the reply was cut off and its unfinished tool calls must never run.
    fn end(&mut self, out: &mut Vec<LlmEvent>) -> Result<(), LlmError> {
        if self.chunks == 0 {
            return Err(LlmError::Protocol(
                "the upstream ended the stream without sending any chunk".to_owned(),
            ));
        }
        if self.finished {
            return self.finish(out);
        }
        let dropped = std::mem::take(&mut self.calls).len();
        self.open.clear();
        // The tokens were spent even though the reply is lost.
        if let Some(usage) = self.usage.take() {
            out.push(LlmEvent::Usage(usage));
        }
        let calls = match dropped {
            0 => String::new(),
            1 => "; dropped 1 unfinished tool call".to_owned(),
            n => format!("; dropped {n} unfinished tool calls"),
        };
        Err(LlmError::Incomplete(format!(
            "the upstream ended the stream after {} chunks with neither a finish reason nor \
             [DONE]{calls}",
            self.chunks
        )))
    }
}

impl ChunkParser {
    /// Adds one tool-call piece to the call open at `index`, or begins a new call there.
    ///
    /// A piece begins a new call when its `id` differs from the open call's, or when it names
    /// a function while the open call is named and its arguments are already whole: Gemini
    /// sends parallel calls whole, one per chunk, all at index 0, and some servers send
    /// neither index nor id. A piece that only repeats the open call's name (some servers
    /// send the name in every chunk) extends it.
    ///
    /// A piece with arguments text goes out at once as well, as a [`ToolCallDelta`].
    fn add_call_piece(&mut self, index: usize, piece: WireToolCall, out: &mut Vec<LlmEvent>) {
        let id = piece.id.filter(|id| !id.is_empty());
        let (name, arguments) = match piece.function {
            Some(function) => (
                function.name.filter(|name| !name.is_empty()),
                function.arguments.map(arguments_text),
            ),
            None => (None, None),
        };
        let open = self
            .open
            .get(&index)
            .and_then(|&position| self.calls.get(position));
        let begins = match open {
            None => true,
            Some(call) => {
                let other_id = id
                    .as_ref()
                    .is_some_and(|id| !call.id.is_empty() && *id != call.id);
                let more_arguments = arguments.as_ref().is_some_and(|a| !a.trim().is_empty());
                let another_name = name.as_ref().is_some_and(|name| {
                    !call.name.is_empty()
                        && call.has_whole_arguments()
                        && (*name != call.name || more_arguments)
                });
                other_id || another_name
            }
        };
        if begins {
            self.open.insert(index, self.calls.len());
            self.calls.push(PartialCall {
                index,
                number: self.begun,
                ..PartialCall::default()
            });
            self.begun += 1;
        }
        let Some(call) = self
            .open
            .get(&index)
            .and_then(|&position| self.calls.get_mut(position))
        else {
            return;
        };
        if let Some(id) = id
            && call.id.is_empty()
        {
            call.id = id;
        }
        // Most servers send the name once; some repeat it whole in every chunk, a few split
        // it. Appending only a piece that differs from the name so far handles all three.
        if let Some(name) = name
            && call.name != name
        {
            call.name.push_str(&name);
        }
        if let Some(arguments) = arguments.filter(|a| !a.is_empty()) {
            call.arguments.push_str(&arguments);
            out.push(LlmEvent::ToolCallDelta(ToolCallDelta {
                index: call.number,
                id: clean_string(call.id.clone()),
                name: clean_string(call.name.clone()),
                arguments: clean_string(arguments),
            }));
        }
    }

    /// Emits the assembled tool calls in the order they began.
    fn flush_calls(&mut self, out: &mut Vec<LlmEvent>) -> Result<(), LlmError> {
        self.open.clear();
        for call in std::mem::take(&mut self.calls) {
            if call.name.is_empty() {
                return Err(LlmError::Protocol(format!(
                    "the upstream sent tool call {} without a function name",
                    call.index
                )));
            }
            out.push(LlmEvent::ToolCall(ToolCall {
                // A server that sends no id gets a fresh one: ids must be
                // unique within a run, across its model calls.
                id: if call.id.is_empty() {
                    format!("call_{}", uuid::Uuid::now_v7().simple())
                } else {
                    call.id
                },
                name: clean_string(call.name),
                arguments: whole_arguments(call.arguments),
                upstream_id: None,
            }));
        }
        Ok(())
    }

    /// `[DONE]`, or the end of a finished body: emits what is pending.
    fn finish(&mut self, out: &mut Vec<LlmEvent>) -> Result<(), LlmError> {
        self.flush_calls(out)?;
        if let Some(usage) = self.usage.take() {
            out.push(LlmEvent::Usage(usage));
        }
        Ok(())
    }
}

/// A piece of `function.arguments` as text: a string as it is, any other JSON value (some
/// servers send the arguments as an object) serialised.
fn arguments_text(value: serde_json::Value) -> String {
    match value {
        serde_json::Value::String(text) => text,
        other => other.to_string(),
    }
}

/// A call's assembled arguments as they go out: `{}` for none (servers send `""` for a call
/// without arguments, tools expect an object), NULs replaced by U+FFFD. JSON is rewritten
/// only when a string in it held a NUL.
fn whole_arguments(arguments: String) -> String {
    if arguments.trim().is_empty() {
        return "{}".to_owned();
    }
    match serde_json::from_str::<serde_json::Value>(&arguments) {
        Ok(mut value) if contains_nul(&value) => {
            clean_json(&mut value);
            value.to_string()
        }
        // Valid JSON has no raw NUL: it would have to be escaped.
        Ok(_) => arguments,
        Err(_) => clean_string(arguments),
    }
}

/// Whether a string or object key anywhere in `value` holds a NUL.
fn contains_nul(value: &serde_json::Value) -> bool {
    match value {
        serde_json::Value::String(text) => text.contains('\0'),
        serde_json::Value::Array(items) => items.iter().any(contains_nul),
        serde_json::Value::Object(fields) => fields
            .iter()
            .any(|(key, value)| key.contains('\0') || contains_nul(value)),
        serde_json::Value::Null | serde_json::Value::Bool(_) | serde_json::Value::Number(_) => {
            false
        }
    }
}

#[cfg(test)]
mod tests;

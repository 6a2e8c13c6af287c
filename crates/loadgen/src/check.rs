//! What makes one stream correct: for agentstream, `seq` 1..n with no gap or repeat and a
//! `done` with status `completed`; for an OpenAI-style upstream, a final `data: [DONE]`; for
//! the AI SDK's UI message stream, `id:`s from 1 that never go back, no `error` chunk, and a
//! `finish` with `finishReason` `stop` before `data: [DONE]`.

use std::borrow::Cow;
use std::fmt;

use serde::{Deserialize, Serialize};

/// The kind of stream being read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// agentstream's run events: `id:` is the `seq`, the last event is `done`.
    Agentstream,
    /// OpenAI `chat.completion.chunk` events ending with `data: [DONE]` (mock-llm, the relay,
    /// agentstream's `POST /v1/chat/completions`).
    Openai,
    /// The AI SDK's UI message stream (v1), as agentstream's `POST /v1/ai-sdk/chat` sends it:
    /// one JSON chunk per `data:` line, each with the `id:` (the `seq`) of the run event it
    /// came from, shared by the chunks of one event; `data: [DONE]` last.
    AiSdk,
}

/// The kind of an OpenAI chunk that carries text (`--gap-event content`).
pub const OPENAI_CONTENT: &str = "content";

/// The start of a UI message chunk whose `type` is its first field, as serde writes an
/// internally tagged enum (agentstream's chunks).
const CHUNK_TYPE_PREFIX: &str = r#"{"type":""#;

impl Protocol {
    /// What kind of message an SSE message is, for `--gap-event` and the checks: for
    /// agentstream its `event:` field (`delta`, `done`, ...); for the AI SDK the chunk's
    /// `type` (`text-delta`, `finish`, ...; `message` for `[DONE]`); for OpenAI
    /// [`OPENAI_CONTENT`] for a chunk with text in `delta.content`, else the `event:` field
    /// (`message`).
    ///
    /// Cheap on every message: the AI SDK's `type` is read from the start of the JSON when it
    /// is the first field (agentstream's chunks), the JSON is parsed only when it is not; an
    /// OpenAI chunk is searched for `"content":"` followed by anything but the closing quote.
    /// Inside a JSON string every `"` is escaped, so neither can match the text of a delta.
    pub fn kind<'a>(self, event: &'a str, data: &'a str) -> Cow<'a, str> {
        match self {
            Self::Agentstream => Cow::Borrowed(event),
            Self::Openai => {
                if has_content(data) {
                    Cow::Borrowed(OPENAI_CONTENT)
                } else {
                    Cow::Borrowed(event)
                }
            }
            Self::AiSdk => chunk_type(data).unwrap_or(Cow::Borrowed(event)),
        }
    }
}

/// True when an OpenAI chunk's `content` is a non-empty string.
fn has_content(data: &str) -> bool {
    const KEY: &str = r#""content":""#;
    data.find(KEY)
        .is_some_and(|at| !data[at + KEY.len()..].starts_with('"'))
}

/// The `type` of a UI message chunk; `None` for `[DONE]` or anything that is no chunk.
fn chunk_type(data: &str) -> Option<Cow<'_, str>> {
    if let Some(rest) = data.strip_prefix(CHUNK_TYPE_PREFIX) {
        return Some(Cow::Borrowed(&rest[..rest.find('"')?]));
    }
    if !data.starts_with('{') {
        return None;
    }
    let value: serde_json::Value = serde_json::from_str(data).ok()?;
    Some(Cow::Owned(value.get("type")?.as_str()?.to_owned()))
}

/// Why a stream failed. A stream counts under its first failure only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Failure {
    /// The setup request failed or its answer lacked the field.
    Setup,
    /// The connection could not be made or the request not sent.
    Connect,
    /// The answer's status was not 2xx.
    Status,
    /// The stream did not end within the timeout.
    Timeout,
    /// The body broke off or was not valid SSE.
    Read,
    /// The body ended without `done` (or `[DONE]`; for the AI SDK, `[DONE]` came without a
    /// `finish` chunk before it).
    MissingDone,
    /// A `seq` was skipped: an event was lost.
    SeqLost,
    /// A `seq` came again or went backwards: an event was duplicated.
    SeqDuplicate,
    /// An event had no usable `seq`.
    Malformed,
    /// The run ended, but not with status `completed` (for the AI SDK: an `error` chunk, or a
    /// `finish` whose `finishReason` is not `stop`).
    RunFailed,
}

impl Failure {
    /// The snake_case name used in the JSON summary.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Setup => "setup",
            Self::Connect => "connect",
            Self::Status => "status",
            Self::Timeout => "timeout",
            Self::Read => "read",
            Self::MissingDone => "missing_done",
            Self::SeqLost => "seq_lost",
            Self::SeqDuplicate => "seq_duplicate",
            Self::Malformed => "malformed",
            Self::RunFailed => "run_failed",
        }
    }

    /// True for the failures that mean an event was lost or duplicated.
    pub fn is_seq(self) -> bool {
        matches!(self, Self::SeqLost | Self::SeqDuplicate)
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Checks the events of one stream as they arrive.
#[derive(Debug)]
pub struct StreamCheck {
    protocol: Protocol,
    /// The `seq` the next agentstream event must carry; for the AI SDK, the `seq` of the
    /// last chunk (0 before the first).
    next_seq: u64,
    /// The AI SDK's `finish` chunk was seen.
    finished: bool,
    done: bool,
    failure: Option<Failure>,
}

impl StreamCheck {
    /// A check for a stream that has not started.
    pub fn new(protocol: Protocol) -> Self {
        Self {
            protocol,
            next_seq: 1,
            finished: false,
            done: false,
            failure: None,
        }
    }

    /// Records one SSE event: `kind` is what [`Protocol::kind`] calls it (for agentstream its
    /// `event:` field, `"message"` when absent), `id` its `id:` field as the SSE parser keeps
    /// it (the last one seen when the message has none). Returns true once the final event
    /// has been seen: the stream is complete.
    pub fn event(&mut self, kind: &str, id: &str, data: &str) -> bool {
        match self.protocol {
            Protocol::Openai => {
                if data == "[DONE]" {
                    self.done = true;
                }
            }
            Protocol::AiSdk => {
                if data == "[DONE]" {
                    self.done = true;
                    if !self.finished {
                        self.fail(Failure::MissingDone);
                    }
                    return true;
                }
                self.check_chunk_seq(id);
                match kind {
                    "error" => self.fail(Failure::RunFailed),
                    "finish" => {
                        self.finished = true;
                        if finish_reason(data).as_deref() != Some("stop") {
                            self.fail(Failure::RunFailed);
                        }
                    }
                    _ => {}
                }
            }
            Protocol::Agentstream => {
                self.check_seq(id, data);
                if kind == "done" {
                    self.done = true;
                    if done_status(data).as_deref() != Some("completed") {
                        self.fail(Failure::RunFailed);
                    }
                }
            }
        }
        self.done
    }

    fn check_seq(&mut self, id: &str, data: &str) {
        // The SSE id is the seq; the JSON is parsed only when the id is missing, because
        // parsing every event would make the load generator itself the bottleneck.
        let seq = id.parse::<u64>().ok().or_else(|| data_seq(data));
        let Some(seq) = seq else {
            self.fail(Failure::Malformed);
            return;
        };
        if seq < self.next_seq {
            self.fail(Failure::SeqDuplicate);
            return;
        }
        if seq > self.next_seq {
            self.fail(Failure::SeqLost);
        }
        self.next_seq = seq + 1;
    }

    /// The AI SDK's chunks carry the `seq` of the event they came from: the chunks of one
    /// event share it, and an event may have none (its `seq` is skipped). So the `seq` starts
    /// at 1 (the run's first event opens the message) and never goes back; a loss inside the
    /// stream cannot be told from an event without chunks.
    fn check_chunk_seq(&mut self, id: &str) {
        let Ok(seq) = id.parse::<u64>() else {
            self.fail(Failure::Malformed);
            return;
        };
        let last = self.next_seq - 1;
        if last == 0 && seq != 1 {
            self.fail(Failure::SeqLost);
        }
        if seq < last {
            self.fail(Failure::SeqDuplicate);
            return;
        }
        self.next_seq = seq + 1;
    }

    fn fail(&mut self, failure: Failure) {
        self.failure.get_or_insert(failure);
    }

    /// The stream's verdict once its body has ended.
    pub fn finish(&self) -> Result<(), Failure> {
        match self.failure {
            Some(failure) => Err(failure),
            None if !self.done => Err(Failure::MissingDone),
            None => Ok(()),
        }
    }
}

fn data_seq(data: &str) -> Option<u64> {
    serde_json::from_str::<serde_json::Value>(data)
        .ok()?
        .get("seq")?
        .as_u64()
}

/// The `finishReason` of an AI SDK `finish` chunk (parsed: one per stream).
fn finish_reason(data: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_str(data).ok()?;
    Some(value.get("finishReason")?.as_str()?.to_owned())
}

fn done_status(data: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_str(data).ok()?;
    Some(value.get("status")?.as_str()?.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DELTA: &str = r#"{"seq":0,"type":"delta","text":"hi"}"#;
    const DONE: &str = r#"{"type":"done","status":"completed"}"#;

    fn feed(events: &[(&str, &str, &str)]) -> Result<(), Failure> {
        let mut check = StreamCheck::new(Protocol::Agentstream);
        for (kind, id, data) in events {
            check.event(kind, id, data);
        }
        check.finish()
    }

    #[test]
    fn contiguous_seq_with_done_passes() {
        let mut check = StreamCheck::new(Protocol::Agentstream);
        assert!(!check.event("run.started", "1", "{}"));
        assert!(!check.event("delta", "2", DELTA));
        assert!(check.event("done", "3", DONE));
        assert_eq!(check.finish(), Ok(()));
    }

    #[test]
    fn skipped_seq_is_lost() {
        let events = [
            ("delta", "1", DELTA),
            ("delta", "3", DELTA),
            ("done", "4", DONE),
        ];
        assert_eq!(feed(&events), Err(Failure::SeqLost));
    }

    #[test]
    fn repeated_or_backwards_seq_is_duplicate() {
        let repeated = [
            ("delta", "1", DELTA),
            ("delta", "1", DELTA),
            ("done", "2", DONE),
        ];
        assert_eq!(feed(&repeated), Err(Failure::SeqDuplicate));
        let backwards = [
            ("delta", "1", DELTA),
            ("delta", "2", DELTA),
            ("delta", "1", DELTA),
        ];
        assert_eq!(feed(&backwards), Err(Failure::SeqDuplicate));
    }

    #[test]
    fn stream_must_start_at_one() {
        assert_eq!(feed(&[("done", "2", DONE)]), Err(Failure::SeqLost));
    }

    #[test]
    fn seq_falls_back_to_the_json_data() {
        let events = [
            ("delta", "", r#"{"seq":1,"type":"delta"}"#),
            (
                "done",
                "",
                r#"{"seq":2,"type":"done","status":"completed"}"#,
            ),
        ];
        assert_eq!(feed(&events), Ok(()));
        assert_eq!(feed(&[("delta", "", "{}")]), Err(Failure::Malformed));
    }

    #[test]
    fn missing_done_and_failed_runs_fail() {
        assert_eq!(feed(&[("delta", "1", DELTA)]), Err(Failure::MissingDone));
        let failed = [("done", "1", r#"{"type":"done","status":"failed"}"#)];
        assert_eq!(feed(&failed), Err(Failure::RunFailed));
    }

    /// One UI message stream as agentstream sends it for a run with a tool call: each chunk
    /// with the `seq` of its event (an event may have several chunks, or none), `[DONE]`
    /// keeping the last `id:` as the SSE parser does.
    fn ai_sdk_run(finish: &str) -> Vec<(&str, String)> {
        let chunks = [
            (
                "1",
                r#"{"type":"start","messageId":"r","messageMetadata":{}}"#,
            ),
            ("2", r#"{"type":"start-step"}"#),
            (
                "2",
                r#"{"type":"tool-input-start","toolCallId":"c","toolName":"f"}"#,
            ),
            (
                "2",
                r#"{"type":"tool-input-delta","toolCallId":"c","inputTextDelta":"{}"}"#,
            ),
            (
                "4",
                r#"{"type":"tool-input-available","toolCallId":"c","input":{}}"#,
            ),
            (
                "5",
                r#"{"type":"tool-output-available","toolCallId":"c","output":{}}"#,
            ),
            ("6", r#"{"type":"finish-step"}"#),
            ("6", r#"{"type":"start-step"}"#),
            ("6", r#"{"type":"text-start","id":"text-6"}"#),
            ("6", r#"{"type":"text-delta","id":"text-6","delta":"Hel"}"#),
            ("7", r#"{"type":"text-delta","id":"text-6","delta":"lo"}"#),
            ("8", r#"{"type":"text-end","id":"text-6"}"#),
            ("9", r#"{"type":"finish-step"}"#),
        ];
        let mut messages: Vec<(&str, String)> = chunks
            .iter()
            .map(|(id, data)| (*id, (*data).to_owned()))
            .collect();
        messages.push((
            "9",
            format!(r#"{{"type":"finish","finishReason":"{finish}","messageMetadata":{{}}}}"#),
        ));
        messages.push(("9", "[DONE]".to_owned()));
        messages
    }

    fn feed_ai_sdk(messages: &[(&str, String)]) -> (bool, Result<(), Failure>) {
        let mut check = StreamCheck::new(Protocol::AiSdk);
        let mut complete = false;
        for (id, data) in messages {
            let kind = Protocol::AiSdk.kind("message", data);
            complete = check.event(&kind, id, data);
        }
        (complete, check.finish())
    }

    #[test]
    fn ai_sdk_run_that_finishes_with_stop_passes() {
        let messages = ai_sdk_run("stop");
        let mut check = StreamCheck::new(Protocol::AiSdk);
        let (last, rest) = messages.split_last().unwrap();
        for (id, data) in rest {
            assert!(!check.event(&Protocol::AiSdk.kind("message", data), id, data));
        }
        assert!(check.event("message", last.0, &last.1));
        assert_eq!(check.finish(), Ok(()));
    }

    #[test]
    fn ai_sdk_error_chunk_or_other_finish_reason_fails_the_run() {
        assert_eq!(
            feed_ai_sdk(&ai_sdk_run("error")),
            (true, Err(Failure::RunFailed))
        );
        assert_eq!(
            feed_ai_sdk(&ai_sdk_run("length")),
            (true, Err(Failure::RunFailed))
        );
        // A failed run: `error`, then `finish` with `error` (the check fails at the first).
        let failed = [
            ("1", r#"{"type":"start","messageId":"r"}"#.to_owned()),
            (
                "2",
                r#"{"type":"error","errorText":"the model hung up"}"#.to_owned(),
            ),
            (
                "3",
                r#"{"type":"finish","finishReason":"error"}"#.to_owned(),
            ),
            ("3", "[DONE]".to_owned()),
        ];
        assert_eq!(feed_ai_sdk(&failed), (true, Err(Failure::RunFailed)));
        // The server could not read the log: an `error` chunk and the end of the body.
        let cut = &failed[..2];
        assert_eq!(feed_ai_sdk(cut), (false, Err(Failure::RunFailed)));
    }

    #[test]
    fn ai_sdk_needs_finish_then_done() {
        let mut messages = ai_sdk_run("stop");
        messages.pop();
        assert_eq!(feed_ai_sdk(&messages), (false, Err(Failure::MissingDone)));
        let mut no_finish = ai_sdk_run("stop");
        no_finish.remove(no_finish.len() - 2);
        assert_eq!(feed_ai_sdk(&no_finish), (true, Err(Failure::MissingDone)));
    }

    #[test]
    fn ai_sdk_seq_starts_at_one_and_never_goes_back() {
        let mut backwards = ai_sdk_run("stop");
        backwards[10].0 = "5";
        assert_eq!(feed_ai_sdk(&backwards), (true, Err(Failure::SeqDuplicate)));
        let late_start = &ai_sdk_run("stop")[1..];
        assert_eq!(feed_ai_sdk(late_start), (true, Err(Failure::SeqLost)));
        let mut no_id = ai_sdk_run("stop");
        no_id[0].0 = "";
        assert_eq!(feed_ai_sdk(&no_id), (true, Err(Failure::Malformed)));
    }

    #[test]
    fn ai_sdk_kind_is_the_chunk_type() {
        let kind = |data| Protocol::AiSdk.kind("message", data).into_owned();
        assert_eq!(
            kind(r#"{"type":"text-delta","id":"t","delta":"x"}"#),
            "text-delta"
        );
        // Read from the JSON when `type` is not its first field.
        assert_eq!(
            kind(r#"{"id":"t","type":"text-delta","delta":"x"}"#),
            "text-delta"
        );
        assert_eq!(kind(r#"{"delta":"{\"type\":\"error\"}"}"#), "message");
        assert_eq!(kind("[DONE]"), "message");
    }

    #[test]
    fn openai_content_chunks_are_told_from_the_others() {
        let kind = |data| Protocol::Openai.kind("message", data).into_owned();
        let role = r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}"#;
        assert_eq!(kind(role), "message");
        let text = r#"{"choices":[{"index":0,"delta":{"content":"Hel"},"finish_reason":null}]}"#;
        assert_eq!(kind(text), OPENAI_CONTENT);
        let quote = r#"{"choices":[{"delta":{"content":"\"quoted\""}}]}"#;
        assert_eq!(kind(quote), OPENAI_CONTENT);
        let finish = r#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#;
        assert_eq!(kind(finish), "message");
        // Text that looks like a content field is escaped: no match.
        let escaped = r#"{"choices":[{"delta":{"content":"","x":"\"content\":\"y"}}]}"#;
        assert_eq!(kind(escaped), "message");
        assert_eq!(kind("[DONE]"), "message");
        assert_eq!(Protocol::Agentstream.kind("delta", "{}"), "delta");
    }

    #[test]
    fn openai_needs_the_done_marker_only() {
        let mut check = StreamCheck::new(Protocol::Openai);
        assert!(!check.event("message", "", r#"{"choices":[]}"#));
        assert_eq!(check.finish(), Err(Failure::MissingDone));
        assert!(check.event("message", "", "[DONE]"));
        assert_eq!(check.finish(), Ok(()));
    }
}

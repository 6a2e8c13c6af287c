//! What makes one stream correct: for agentstream, `seq` 1..n with no gap or repeat and a
//! `done` with status `completed`; for an OpenAI-style upstream, a final `data: [DONE]`.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The kind of stream being read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// agentstream's run events: `id:` is the `seq`, the last event is `done`.
    Agentstream,
    /// OpenAI `chat.completion.chunk` events ending with `data: [DONE]` (mock-llm, the relay).
    Openai,
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
    /// The body ended without `done` (or `[DONE]`).
    MissingDone,
    /// A `seq` was skipped: an event was lost.
    SeqLost,
    /// A `seq` came again or went backwards: an event was duplicated.
    SeqDuplicate,
    /// An event had no usable `seq`.
    Malformed,
    /// The run ended, but not with status `completed`.
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
    /// The `seq` the next agentstream event must carry.
    next_seq: u64,
    done: bool,
    failure: Option<Failure>,
}

impl StreamCheck {
    /// A check for a stream that has not started.
    pub fn new(protocol: Protocol) -> Self {
        Self {
            protocol,
            next_seq: 1,
            done: false,
            failure: None,
        }
    }

    /// Records one SSE event (`kind` is its `event:` field, `"message"` when absent). Returns
    /// true once the final event has been seen: the stream is complete.
    pub fn event(&mut self, kind: &str, id: &str, data: &str) -> bool {
        match self.protocol {
            Protocol::Openai => {
                if data == "[DONE]" {
                    self.done = true;
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

    #[test]
    fn openai_needs_the_done_marker_only() {
        let mut check = StreamCheck::new(Protocol::Openai);
        assert!(!check.event("message", "", r#"{"choices":[]}"#));
        assert_eq!(check.finish(), Err(Failure::MissingDone));
        assert!(check.event("message", "", "[DONE]"));
        assert_eq!(check.finish(), Ok(()));
    }
}

//! Per-request behaviour options, parsed from the `model` string and the `x-mock` header.

use std::time::Duration;

/// Largest accepted `deltas=` value, so one request cannot ask for an unbounded reply.
pub const MAX_DELTAS: usize = 100_000;

/// How a request's reply behaves, chosen by the `model` string and the `x-mock` header.
///
/// Syntax: `key=value` options separated by `;` or `,`, e.g. model `mock;deltas=64;pace_ms=20`
/// or header `x-mock: fault=reset,after=3`. Segments without `=` (such as the model name
/// `mock`) and unknown keys are ignored; a known key with an invalid value is an error.
/// Options from the header are applied after those from the model, so the header wins.
///
/// Events of a stream are: the role chunk, one chunk per reasoning piece (`reasoning=N`),
/// one chunk per content delta (or per tool-call argument piece), the finish chunk, the usage chunk (if sent) and `[DONE]` (if sent).
/// `ttft_ms` delays the first, `pace_ms` each later one. `after=K` counts these events; when
/// the stream has fewer than K, the fault comes after the last one. A non-streaming request
/// waits `ttft_ms` plus `pace_ms` per later event of the equivalent stream (without usage and
/// `[DONE]`) before its body, and a body fault replaces that body: `reset` aborts it,
/// `malformed` sends `{not json`, `stall` sends nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Behaviour {
    /// `deltas=N` (default 8): number of content deltas in a text reply.
    pub deltas: usize,
    /// `pace_ms=N` (default 0): delay between consecutive SSE events.
    pub pace: Duration,
    /// `ttft_ms=N` (default 0): delay before the first SSE event (headers are already sent).
    pub ttft: Duration,
    /// `tools=auto|never|always` (default auto): when to answer with a tool call.
    pub tools: ToolMode,
    /// `fault=500|429|reset|malformed|stall` (default none): the injected failure.
    pub fault: Option<Fault>,
    /// `after=K` (default 2): SSE events sent before a `reset`, `malformed` or `stall` fault.
    pub after: usize,
    /// `fail_first=N` (default 0): the first N requests with the same fail-first key get HTTP 500.
    pub fail_first: u64,
    /// `usage=0|1` (default 1): send the usage chunk when `stream_options.include_usage` is true.
    pub usage: bool,
    /// `done=0|1` (default 1): end the stream with `data: [DONE]`.
    pub done: bool,
    /// `context=N` (default none): the model's context window. A request whose prompt
    /// counts more than N tokens ([`crate::ChatRequest::context_tokens`]) gets HTTP 400
    /// `context_length_exceeded`, as OpenAI answers it.
    pub context: Option<usize>,
    /// `reasoning=N` (default 0): reasoning deltas streamed before the reply, as a
    /// thinking model's server does (see [`crate::chunk::reasoning_piece`]).
    pub reasoning: usize,
    /// `reasoning_field=reasoning_content|reasoning` (default `reasoning_content`, as
    /// DeepSeek and vLLM name it; OpenRouter says `reasoning`): the delta field it is in.
    pub reasoning_field: ReasoningField,
}

/// The `delta` field a reasoning piece is sent in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReasoningField {
    /// `reasoning_content`.
    ReasoningContent,
    /// `reasoning`.
    Reasoning,
}

impl Default for Behaviour {
    fn default() -> Self {
        Self {
            deltas: 8,
            pace: Duration::ZERO,
            ttft: Duration::ZERO,
            tools: ToolMode::Auto,
            fault: None,
            after: 2,
            fail_first: 0,
            usage: true,
            done: true,
            context: None,
            reasoning: 0,
            reasoning_field: ReasoningField::ReasoningContent,
        }
    }
}

/// When the reply is a tool call rather than text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolMode {
    /// A tool call when the request offers tools and the last message has role `user`.
    Auto,
    /// Always text.
    Never,
    /// A tool call whenever the request offers tools, even right after a tool result.
    Always,
}

/// A failure injected into the response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// `fault=500`: HTTP 500 with an OpenAI-style JSON error body, before any stream.
    ServerError,
    /// `fault=429`: HTTP 429 with `retry-after: 0` and an OpenAI-style JSON error body.
    RateLimited,
    /// `fault=reset`: after `after` events the connection is aborted mid-body.
    Reset,
    /// `fault=malformed`: after `after` events a `data: {not json` event, then the body ends.
    Malformed,
    /// `fault=stall`: after `after` events nothing more, until shutdown or client disconnect.
    Stall,
}

/// A known option key with a value it does not accept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid mock option `{key}={value}`: expected {expected}")]
pub struct OptionError {
    /// The option key.
    pub key: String,
    /// The rejected value.
    pub value: String,
    /// What the key accepts.
    pub expected: &'static str,
}

impl Behaviour {
    /// Parses the options in `model`, then those in the `x-mock` header (which win).
    pub fn parse(model: &str, header: Option<&str>) -> Result<Self, OptionError> {
        let mut behaviour = Self::default();
        behaviour.apply(model)?;
        if let Some(header) = header {
            behaviour.apply(header)?;
        }
        Ok(behaviour)
    }

    fn apply(&mut self, spec: &str) -> Result<(), OptionError> {
        let pairs = spec
            .split([';', ','])
            .filter_map(|segment| segment.split_once('='))
            .map(|(key, value)| (key.trim(), value.trim()));
        for (key, value) in pairs {
            let invalid = |expected| OptionError {
                key: key.to_owned(),
                value: value.to_owned(),
                expected,
            };
            match key {
                "deltas" => {
                    self.deltas = value
                        .parse()
                        .ok()
                        .filter(|n| *n <= MAX_DELTAS)
                        .ok_or_else(|| invalid("an integer from 0 to 100000"))?;
                }
                "pace_ms" => {
                    self.pace = parse_millis(value).ok_or_else(|| invalid("milliseconds"))?;
                }
                "ttft_ms" => {
                    self.ttft = parse_millis(value).ok_or_else(|| invalid("milliseconds"))?;
                }
                "tools" => {
                    self.tools = match value {
                        "auto" => ToolMode::Auto,
                        "never" => ToolMode::Never,
                        "always" => ToolMode::Always,
                        _ => return Err(invalid("auto, never or always")),
                    };
                }
                "fault" => {
                    self.fault = Some(match value {
                        "500" => Fault::ServerError,
                        "429" => Fault::RateLimited,
                        "reset" => Fault::Reset,
                        "malformed" => Fault::Malformed,
                        "stall" => Fault::Stall,
                        _ => return Err(invalid("500, 429, reset, malformed or stall")),
                    });
                }
                "after" => {
                    self.after = value
                        .parse()
                        .map_err(|_| invalid("a non-negative integer"))?;
                }
                "fail_first" => {
                    self.fail_first = value
                        .parse()
                        .map_err(|_| invalid("a non-negative integer"))?;
                }
                "usage" => self.usage = parse_flag(value).ok_or_else(|| invalid("0 or 1"))?,
                "done" => self.done = parse_flag(value).ok_or_else(|| invalid("0 or 1"))?,
                "reasoning" => {
                    self.reasoning = value
                        .parse()
                        .ok()
                        .filter(|n| *n <= MAX_DELTAS)
                        .ok_or_else(|| invalid("an integer from 0 to 100000"))?;
                }
                "context" => {
                    self.context = Some(
                        value
                            .parse()
                            .map_err(|_| invalid("a non-negative integer"))?,
                    );
                }
                "reasoning_field" => {
                    self.reasoning_field = match value {
                        "reasoning_content" => ReasoningField::ReasoningContent,
                        "reasoning" => ReasoningField::Reasoning,
                        _ => return Err(invalid("reasoning_content or reasoning")),
                    };
                }
                _ => {}
            }
        }
        Ok(())
    }
}

fn parse_millis(value: &str) -> Option<Duration> {
    value.parse().ok().map(Duration::from_millis)
}

fn parse_flag(value: &str) -> Option<bool> {
    match value {
        "0" => Some(false),
        "1" => Some(true),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_model_name_gives_defaults() {
        assert_eq!(Behaviour::parse("mock", None), Ok(Behaviour::default()));
        assert_eq!(Behaviour::parse("gpt-4o", None), Ok(Behaviour::default()));
    }

    #[test]
    fn model_options_are_parsed() {
        let behaviour = Behaviour::parse("mock;deltas=64;pace_ms=20", None).unwrap();
        assert_eq!(behaviour.deltas, 64);
        assert_eq!(behaviour.pace, Duration::from_millis(20));
        assert_eq!(behaviour.ttft, Duration::ZERO);
    }

    #[test]
    fn commas_semicolons_and_whitespace_are_accepted() {
        let behaviour =
            Behaviour::parse("mock", Some(" fault = reset , after=3; ttft_ms=5")).unwrap();
        assert_eq!(behaviour.fault, Some(Fault::Reset));
        assert_eq!(behaviour.after, 3);
        assert_eq!(behaviour.ttft, Duration::from_millis(5));
    }

    #[test]
    fn header_wins_over_model() {
        let behaviour =
            Behaviour::parse("mock;deltas=3;tools=never", Some("deltas=5;usage=0")).unwrap();
        assert_eq!(behaviour.deltas, 5);
        assert_eq!(behaviour.tools, ToolMode::Never);
        assert!(!behaviour.usage);
    }

    #[test]
    fn reasoning_options_parse() {
        let behaviour =
            Behaviour::parse("mock;reasoning=12;reasoning_field=reasoning", None).unwrap();
        assert_eq!(behaviour.reasoning, 12);
        assert_eq!(behaviour.reasoning_field, ReasoningField::Reasoning);
        let error = Behaviour::parse("mock;reasoning_field=thoughts", None).unwrap_err();
        assert_eq!(error.key, "reasoning_field");
    }

    #[test]
    fn every_fault_and_flag_parses() {
        let cases = [
            ("500", Fault::ServerError),
            ("429", Fault::RateLimited),
            ("reset", Fault::Reset),
            ("malformed", Fault::Malformed),
            ("stall", Fault::Stall),
        ];
        for (value, fault) in cases {
            let behaviour = Behaviour::parse(&format!("mock;fault={value}"), None).unwrap();
            assert_eq!(behaviour.fault, Some(fault));
        }
        let behaviour =
            Behaviour::parse("m;fail_first=2;done=0;usage=1;tools=always", None).unwrap();
        assert_eq!(behaviour.fail_first, 2);
        assert!(!behaviour.done);
        assert!(behaviour.usage);
        assert_eq!(behaviour.tools, ToolMode::Always);
    }

    #[test]
    fn unknown_keys_are_ignored() {
        assert_eq!(
            Behaviour::parse("mock;colour=blue;;=;x", Some("future=1")),
            Ok(Behaviour::default())
        );
    }

    #[test]
    fn invalid_values_are_rejected() {
        for spec in [
            "mock;deltas=-1",
            "mock;deltas=many",
            "mock;deltas=100001",
            "mock;pace_ms=1.5",
            "mock;ttft_ms=",
            "mock;tools=sometimes",
            "mock;fault=502",
            "mock;after=x",
            "mock;fail_first=-2",
            "mock;usage=yes",
            "mock;done=2",
        ] {
            assert!(Behaviour::parse(spec, None).is_err(), "{spec} was accepted");
        }
        let error = Behaviour::parse("mock", Some("deltas=x")).unwrap_err();
        assert_eq!(error.key, "deltas");
        assert_eq!(error.value, "x");
    }
}

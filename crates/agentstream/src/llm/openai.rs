//! The OpenAI-compatible streaming provider: Chat Completions with `stream: true`.
//!
//! It serves OpenAI, Ollama, vLLM, llama.cpp server, LM Studio, OpenRouter and other
//! "compatible" servers, so parsing is lenient: unknown fields, empty `choices`, role-only
//! chunks, comments and foreign `event:` names are skipped. Text deltas go out as they
//! arrive; tool-call deltas are assembled by `index` and go out when the choice finishes.
//!
//! A call is retried, with exponential backoff, only before its first SSE event and only on
//! connection errors, HTTP 429 and 5xx; once a chunk has arrived the reply may already have
//! reached a client, so a failure ends the stream instead.

use std::collections::BTreeMap;
use std::fmt;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use eventsource_stream::{Event, EventStreamError, Eventsource};
use futures_util::{Stream, StreamExt};
use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::{ChatMessage, ChatRequest, LlmError, LlmEvent, LlmStream, Provider, ToolSpec, Usage};

/// Longest pause before a retry, whatever the backoff or `Retry-After` says: a run waiting
/// longer than this for a retry is better failed, so the person can try again.
const MAX_RETRY_PAUSE: Duration = Duration::from_secs(10);

/// Most bytes of an error response read to find its message.
const ERROR_BODY_LIMIT: usize = 64 * 1024;

/// Most bytes of an upstream body or payload quoted in an error message.
const EXCERPT_BYTES: usize = 200;

/// How to reach an OpenAI-compatible server, and how long to wait for it.
#[derive(Clone, PartialEq, Eq)]
pub struct OpenAiSettings {
    /// The API's base URL, e.g. `http://127.0.0.1:11434/v1`, without `/chat/completions`.
    pub base_url: String,
    /// Sent as `Authorization: Bearer <key>` when set. Never logged or shown.
    pub api_key: Option<String>,
    /// Time allowed to open the TCP (and TLS) connection.
    pub connect_timeout: Duration,
    /// Time allowed from sending the request until the first SSE event, headers included.
    pub first_token_timeout: Duration,
    /// Time allowed between two SSE events once the first has arrived.
    pub chunk_timeout: Duration,
    /// Retries before the first token, so at most `max_retries + 1` requests per call.
    pub max_retries: u32,
    /// The pause before the first retry, doubled for each later one.
    pub retry_backoff: Duration,
}

impl Default for OpenAiSettings {
    fn default() -> Self {
        OpenAiSettings {
            base_url: "https://api.openai.com/v1".to_owned(),
            api_key: None,
            connect_timeout: Duration::from_secs(10),
            first_token_timeout: Duration::from_secs(60),
            chunk_timeout: Duration::from_secs(60),
            max_retries: 2,
            retry_backoff: Duration::from_millis(250),
        }
    }
}

// By hand, so the API key never reaches a log line.
impl fmt::Debug for OpenAiSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenAiSettings")
            .field("base_url", &self.base_url)
            .field("api_key", &self.api_key.as_ref().map(|_| "***"))
            .field("connect_timeout", &self.connect_timeout)
            .field("first_token_timeout", &self.first_token_timeout)
            .field("chunk_timeout", &self.chunk_timeout)
            .field("max_retries", &self.max_retries)
            .field("retry_backoff", &self.retry_backoff)
            .finish()
    }
}

/// A provider for one OpenAI-compatible server. Cheap to clone; clones share the connection
/// pool.
#[derive(Clone)]
pub struct OpenAi {
    shared: Arc<Shared>,
}

/// What every call of one provider shares; lives as long as the provider and its streams.
struct Shared {
    settings: OpenAiSettings,
    /// One client, so connections are pooled across calls.
    client: reqwest::Client,
    /// `{base_url}/chat/completions`.
    endpoint: reqwest::Url,
    /// `Bearer <key>`, marked sensitive so the http crate never prints it.
    authorization: Option<HeaderValue>,
}

impl OpenAi {
    /// A provider for the server at `settings.base_url`. Fails when the URL or the key cannot
    /// be used; the message never contains the key.
    pub fn new(settings: OpenAiSettings) -> Result<OpenAi, String> {
        let endpoint = format!(
            "{}/chat/completions",
            settings.base_url.trim().trim_end_matches('/')
        );
        let endpoint = reqwest::Url::parse(&endpoint)
            .map_err(|e| format!("invalid base URL {:?}: {e}", settings.base_url))?;
        if !matches!(endpoint.scheme(), "http" | "https") {
            return Err(format!(
                "invalid base URL {:?}: the scheme must be http or https",
                settings.base_url
            ));
        }
        let authorization = match settings.api_key.as_deref() {
            Some(key) => {
                let mut value = HeaderValue::from_str(&format!("Bearer {key}"))
                    .map_err(|_| "the API key is not a valid HTTP header value".to_owned())?;
                value.set_sensitive(true);
                Some(value)
            }
            None => None,
        };
        let client = reqwest::Client::builder()
            .connect_timeout(settings.connect_timeout)
            .build()
            .map_err(|e| format!("could not build the HTTP client: {}", error_chain(&e)))?;
        Ok(OpenAi {
            shared: Arc::new(Shared {
                settings,
                client,
                endpoint,
                authorization,
            }),
        })
    }
}

impl fmt::Debug for OpenAi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenAi")
            .field("endpoint", &self.shared.endpoint.as_str())
            .field("settings", &self.shared.settings)
            .finish_non_exhaustive()
    }
}

impl Provider for OpenAi {
    fn stream(&self, request: ChatRequest) -> LlmStream {
        let shared = Arc::clone(&self.shared);
        async_stream::stream! {
            let body = match serde_json::to_vec(&RequestBody::of(&request)) {
                Ok(body) => Bytes::from(body),
                Err(e) => {
                    yield Err(LlmError::Protocol(format!("could not encode the request: {e}")));
                    return;
                }
            };
            let settings = &shared.settings;
            let mut attempt: u32 = 0;
            loop {
                attempt += 1;
                tracing::debug!(attempt, model = %request.model, "calling the upstream");
                let deadline = Instant::now() + settings.first_token_timeout;
                let failure = match shared.open(body.clone(), deadline).await {
                    Ok(response) => {
                        let limits = Limits {
                            first_event: Some((deadline, settings.first_token_timeout)),
                            between_events: Some(settings.chunk_timeout),
                        };
                        let mut events = pin!(body_events(response.bytes_stream(), limits));
                        let mut failure = None;
                        while let Some(item) = events.next().await {
                            match item {
                                Ok(event) => yield Ok(event),
                                Err(e) => {
                                    failure = Some(e);
                                    break;
                                }
                            }
                        }
                        match failure {
                            Some(failure) => failure,
                            None => return,
                        }
                    }
                    Err(failure) => failure,
                };
                let mut error = shared.redact(failure.error);
                if failure.retryable && attempt <= settings.max_retries {
                    let pause = retry_pause(settings.retry_backoff, attempt, failure.retry_after);
                    tracing::warn!(
                        attempt,
                        max_retries = settings.max_retries,
                        cause = %error,
                        pause_ms = pause.as_millis() as u64,
                        "upstream call failed; retrying"
                    );
                    tokio::time::sleep(pause).await;
                    continue;
                }
                if attempt > 1 {
                    error = map_text(error, |text| format!("{text} (after {attempt} attempts)"));
                }
                yield Err(error);
                return;
            }
        }
        .boxed()
    }

    fn label(&self, model: &str) -> String {
        model.to_owned()
    }
}

/// Why one attempt failed, and whether another may follow.
#[derive(Debug)]
struct Failure {
    error: LlmError,
    /// A connection error, 429 or 5xx, before any SSE event.
    retryable: bool,
    /// The upstream's `Retry-After`, in seconds.
    retry_after: Option<Duration>,
}

impl Failure {
    fn fatal(error: LlmError) -> Failure {
        Failure {
            error,
            retryable: false,
            retry_after: None,
        }
    }
}

impl Shared {
    /// Sends the request and checks the response's status, all before `deadline`.
    #[tracing::instrument(level = "debug", skip_all, fields(endpoint = %self.endpoint))]
    async fn open(&self, body: Bytes, deadline: Instant) -> Result<reqwest::Response, Failure> {
        let mut request = self
            .client
            .post(self.endpoint.clone())
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .body(body);
        if let Some(authorization) = &self.authorization {
            request = request.header(AUTHORIZATION, authorization.clone());
        }
        let response = match tokio::time::timeout_at(deadline, request.send()).await {
            Err(_) => return Err(Failure::fatal(self.first_token_timeout())),
            Ok(Err(e)) => {
                let retryable = !e.is_builder() && !e.is_redirect();
                let error = if e.is_timeout() {
                    LlmError::Timeout(format!(
                        "could not connect to the upstream within {:?}: {}",
                        self.settings.connect_timeout,
                        error_chain(&e.without_url())
                    ))
                } else {
                    LlmError::Upstream(format!(
                        "could not reach the upstream: {}",
                        error_chain(&e.without_url())
                    ))
                };
                return Err(Failure {
                    error,
                    retryable,
                    retry_after: None,
                });
            }
            Ok(Ok(response)) => response,
        };
        let status = response.status();
        if status.is_success() {
            let json = response
                .headers()
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.trim_start().starts_with("application/json"));
            if !json {
                return Ok(response);
            }
            // A server that ignores `stream: true`, or reports an error with status 200.
            let body = read_prefix(response, deadline).await;
            return Err(Failure::fatal(match error_message(&body) {
                Some(message) => {
                    LlmError::Upstream(format!("the upstream reported an error: {message}"))
                }
                None => LlmError::Protocol(
                    "the upstream answered with JSON instead of an event stream; \
                     does it support `stream: true`?"
                        .to_owned(),
                ),
            }));
        }
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let body = read_prefix(response, deadline).await;
        let message = error_message(&body).unwrap_or_else(|| body_excerpt(&body));
        Err(Failure {
            error: LlmError::Upstream(format!("the upstream answered HTTP {status}: {message}")),
            retryable: status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error(),
            retry_after,
        })
    }

    fn first_token_timeout(&self) -> LlmError {
        LlmError::Timeout(format!(
            "no first token within {:?}",
            self.settings.first_token_timeout
        ))
    }

    /// Removes the API key from a message that may quote the upstream, which could echo it.
    fn redact(&self, error: LlmError) -> LlmError {
        let Some(key) = self.settings.api_key.as_deref().filter(|k| !k.is_empty()) else {
            return error;
        };
        map_text(error, |text| {
            if text.contains(key) {
                text.replace(key, "***")
            } else {
                text
            }
        })
    }
}

/// The same error with its message rewritten.
fn map_text(error: LlmError, f: impl FnOnce(String) -> String) -> LlmError {
    match error {
        LlmError::Timeout(text) => LlmError::Timeout(f(text)),
        LlmError::Upstream(text) => LlmError::Upstream(f(text)),
        LlmError::Protocol(text) => LlmError::Protocol(f(text)),
        LlmError::Status { status, detail } => LlmError::Status {
            status,
            detail: f(detail),
        },
        LlmError::Incomplete(text) => LlmError::Incomplete(f(text)),
    }
}

/// The pause before retry number `retry` (from 1): the backoff doubled for each earlier
/// retry, or the upstream's `Retry-After` when that is longer; never more than
/// [`MAX_RETRY_PAUSE`].
fn retry_pause(backoff: Duration, retry: u32, retry_after: Option<Duration>) -> Duration {
    let doubled = backoff.saturating_mul(2_u32.saturating_pow(retry.saturating_sub(1)));
    doubled
        .max(retry_after.unwrap_or(Duration::ZERO))
        .min(MAX_RETRY_PAUSE)
}

/// `Retry-After` in seconds; the HTTP-date form is left to the backoff.
fn parse_retry_after(value: &str) -> Option<Duration> {
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// Reads at most [`ERROR_BODY_LIMIT`] bytes of a body, stopping at `deadline`.
async fn read_prefix(response: reqwest::Response, deadline: Instant) -> Vec<u8> {
    let mut buffer = Vec::new();
    let mut body = pin!(response.bytes_stream());
    while let Ok(Some(Ok(chunk))) = tokio::time::timeout_at(deadline, body.next()).await {
        buffer.extend_from_slice(&chunk);
        if buffer.len() >= ERROR_BODY_LIMIT {
            buffer.truncate(ERROR_BODY_LIMIT);
            break;
        }
    }
    buffer
}

/// The message of an error body: `{"error":{"message"}}`, `{"error":"…"}`, `{"message"}` or
/// `{"detail"}` (the shapes compatible servers use), or `None`.
fn error_message(body: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let error = value.get("error").filter(|e| !e.is_null());
    match error {
        Some(error) => Some(describe_error(error)),
        None => ["message", "detail"]
            .iter()
            .find_map(|field| value.get(field).and_then(serde_json::Value::as_str))
            .map(str::to_owned),
    }
}

/// The text of an upstream `error` value: its message and code when it is an object.
fn describe_error(error: &serde_json::Value) -> String {
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    };
    match error {
        serde_json::Value::String(message) => message.clone(),
        serde_json::Value::Object(fields) => {
            let message = fields.get("message").and_then(text);
            let code = fields.get("code").and_then(text);
            match (message, code) {
                (Some(message), Some(code)) => format!("{message} ({code})"),
                (Some(message), None) => message,
                (None, _) => excerpt(&error.to_string()),
            }
        }
        other => excerpt(&other.to_string()),
    }
}

fn body_excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        "(empty body)".to_owned()
    } else {
        excerpt(text)
    }
}

/// At most [`EXCERPT_BYTES`] of `text`, cut on a character boundary.
fn excerpt(text: &str) -> String {
    if text.len() <= EXCERPT_BYTES {
        return text.to_owned();
    }
    let mut end = EXCERPT_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// An error with its sources, which is where reqwest keeps the useful part
/// ("connection refused", "connection reset").
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Parses a Chat Completions SSE body into model events, with no time limits.
///
/// `body` is any byte stream, cut anywhere (inside a UTF-8 character, between `\r` and
/// `\n`); the HTTP provider feeds the response body through the same parser. The stream ends
/// after `[DONE]`, or when the body ends after at least one valid chunk; it ends with an
/// error (and nothing after it) on a payload that is not JSON or not a chunk
/// ([`LlmError::Protocol`]), an upstream error object or a body that fails
/// ([`LlmError::Upstream`]), or a body that ends before any chunk ([`LlmError::Protocol`]).
pub fn parse_body<S, E>(body: S) -> impl Stream<Item = Result<LlmEvent, LlmError>> + Send
where
    S: Stream<Item = Result<Bytes, E>> + Send + 'static,
    E: std::error::Error + Send + 'static,
{
    body_events(body, Limits::default()).map(|item| item.map_err(|failure| failure.error))
}

/// Time limits on a body's SSE events; none by default.
#[derive(Debug, Clone, Copy, Default)]
struct Limits {
    /// When the first event must have arrived, and the configured timeout for the message.
    first_event: Option<(Instant, Duration)>,
    /// The longest gap between two events.
    between_events: Option<Duration>,
}

/// The body's model events; a failure is the last item. A transport error before the first
/// SSE event is marked retryable: nothing can have reached the caller yet.
fn body_events<S, E>(
    body: S,
    limits: Limits,
) -> impl Stream<Item = Result<LlmEvent, Failure>> + Send
where
    S: Stream<Item = Result<Bytes, E>> + Send + 'static,
    E: std::error::Error + Send + 'static,
{
    async_stream::stream! {
        let mut events = pin!(body.eventsource());
        let mut parser = ChunkParser::default();
        let mut out = Vec::new();
        let mut seen_event = false;
        loop {
            let next = if seen_event {
                match limits.between_events {
                    Some(limit) => tokio::time::timeout(limit, events.next())
                        .await
                        .map_err(|_| LlmError::Timeout(format!("no chunk within {limit:?}"))),
                    None => Ok(events.next().await),
                }
            } else {
                match limits.first_event {
                    Some((deadline, limit)) => tokio::time::timeout_at(deadline, events.next())
                        .await
                        .map_err(|_| LlmError::Timeout(format!("no first token within {limit:?}"))),
                    None => Ok(events.next().await),
                }
            };
            let flow = match next {
                Err(timeout) => Err(Failure::fatal(timeout)),
                Ok(None) => parser.end(&mut out).map(|()| Flow::Done).map_err(Failure::fatal),
                Ok(Some(Ok(event))) => {
                    seen_event = true;
                    parser.event(&event, &mut out).map_err(Failure::fatal)
                }
                Ok(Some(Err(EventStreamError::Transport(e)))) => Err(Failure {
                    error: LlmError::Upstream(format!(
                        "the upstream connection failed {}: {}",
                        if seen_event { "mid-stream" } else { "before the first chunk" },
                        error_chain(&e)
                    )),
                    retryable: !seen_event,
                    retry_after: None,
                }),
                Ok(Some(Err(e @ (EventStreamError::Utf8(_) | EventStreamError::Parser(_))))) => {
                    Err(Failure::fatal(LlmError::Protocol(format!(
                        "the upstream sent an invalid event stream: {e}"
                    ))))
                }
            };
            for event in out.drain(..) {
                yield Ok(event);
            }
            match flow {
                Ok(Flow::More) => {}
                Ok(Flow::Done) => return,
                Err(failure) => {
                    yield Err(failure);
                    return;
                }
            }
        }
    }
}

/// Whether the body has more to say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    More,
    Done,
}

/// Turns SSE events into model events, assembling tool calls across chunks.
#[derive(Debug, Default)]
struct ChunkParser {
    /// Tool calls being assembled, by their `index`.
    calls: BTreeMap<usize, PartialCall>,
    /// The latest usage reported. Sent once at the end: some servers report a running total
    /// on every chunk, and callers add up the usage events they get.
    usage: Option<Usage>,
    /// Valid chunks seen.
    chunks: u64,
}

/// A tool call whose pieces are still arriving.
#[derive(Debug, Default)]
struct PartialCall {
    id: String,
    name: String,
    arguments: String,
}

impl ChunkParser {
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
                if let Some(text) = delta.content.filter(|t| !t.is_empty()) {
                    out.push(LlmEvent::Delta(text));
                }
                for (position, call) in delta.tool_calls.unwrap_or_default().into_iter().enumerate()
                {
                    self.add_call_piece(call.index.unwrap_or(position), call);
                }
            }
            if choice.finish_reason.is_some_and(|r| !r.is_empty()) {
                self.flush_calls(out)?;
            }
        }
        Ok(Flow::More)
    }

    fn add_call_piece(&mut self, index: usize, piece: WireToolCall) {
        let call = self.calls.entry(index).or_default();
        if let Some(id) = piece.id.filter(|id| !id.is_empty())
            && call.id.is_empty()
        {
            call.id = id;
        }
        let Some(function) = piece.function else {
            return;
        };
        // Most servers send the name once; some repeat it whole in every chunk, a few split
        // it. Appending only a piece that differs from the name so far handles all three.
        if let Some(name) = function.name.filter(|n| !n.is_empty())
            && call.name != name
        {
            call.name.push_str(&name);
        }
        if let Some(arguments) = function.arguments {
            call.arguments.push_str(&arguments);
        }
    }

    /// Emits the assembled tool calls in index order.
    fn flush_calls(&mut self, out: &mut Vec<LlmEvent>) -> Result<(), LlmError> {
        for (index, call) in std::mem::take(&mut self.calls) {
            if call.name.is_empty() {
                return Err(LlmError::Protocol(format!(
                    "the upstream sent tool call {index} without a function name"
                )));
            }
            out.push(LlmEvent::ToolCall(super::ToolCall {
                // A server that sends no id gets a fresh one: ids must be
                // unique within a run, across its model calls.
                id: if call.id.is_empty() {
                    format!("call_{}", uuid::Uuid::now_v7().simple())
                } else {
                    call.id
                },
                name: call.name,
                // Servers send "" for a call without arguments; tools expect a JSON object.
                arguments: if call.arguments.trim().is_empty() {
                    "{}".to_owned()
                } else {
                    call.arguments
                },
                upstream_id: None,
            }));
        }
        Ok(())
    }

    /// `[DONE]`: emits what is pending.
    fn finish(&mut self, out: &mut Vec<LlmEvent>) -> Result<(), LlmError> {
        self.flush_calls(out)?;
        if let Some(usage) = self.usage.take() {
            out.push(LlmEvent::Usage(usage));
        }
        Ok(())
    }

    /// The body ended without `[DONE]`: a normal end once a valid chunk has arrived.
    fn end(&mut self, out: &mut Vec<LlmEvent>) -> Result<(), LlmError> {
        if self.chunks == 0 {
            return Err(LlmError::Protocol(
                "the upstream ended the stream without sending any chunk".to_owned(),
            ));
        }
        self.finish(out)
    }
}

/// One `chat.completion.chunk`, as far as it is read. Every field is optional and `null` is
/// accepted, since compatible servers differ on both.
#[derive(Debug, Deserialize)]
struct WireChunk {
    #[serde(default)]
    choices: Option<Vec<WireChoice>>,
    #[serde(default)]
    usage: Option<WireUsage>,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
struct WireChoice {
    #[serde(default)]
    index: Option<u64>,
    #[serde(default)]
    delta: Option<WireDelta>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Debug, Deserialize)]
struct WireDelta {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    tool_calls: Option<Vec<WireToolCall>>,
}

#[derive(Debug, Deserialize)]
struct WireToolCall {
    #[serde(default)]
    index: Option<usize>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    function: Option<WireFunction>,
}

#[derive(Debug, Deserialize)]
struct WireFunction {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    arguments: Option<String>,
}

#[derive(Debug, Deserialize)]
struct WireUsage {
    #[serde(default)]
    prompt_tokens: Option<u64>,
    #[serde(default)]
    completion_tokens: Option<u64>,
    #[serde(default)]
    total_tokens: Option<u64>,
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

/// The request body.
#[derive(Debug, Serialize)]
struct RequestBody<'a> {
    model: &'a str,
    messages: Vec<WireMessage<'a>>,
    stream: bool,
    stream_options: StreamOptions,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<WireTool<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f32>,
}

impl<'a> RequestBody<'a> {
    fn of(request: &'a ChatRequest) -> RequestBody<'a> {
        RequestBody {
            model: &request.model,
            messages: request.messages.iter().map(WireMessage::of).collect(),
            stream: true,
            stream_options: StreamOptions {
                include_usage: true,
            },
            tools: request.tools.iter().map(WireTool::of).collect(),
            temperature: request.temperature,
        }
    }
}

#[derive(Debug, Serialize)]
struct StreamOptions {
    include_usage: bool,
}

#[derive(Debug, Serialize)]
#[serde(tag = "role", rename_all = "lowercase")]
enum WireMessage<'a> {
    System {
        content: &'a str,
    },
    User {
        content: &'a str,
    },
    Assistant {
        /// `null` when the message only calls tools, as OpenAI sends it.
        content: Option<&'a str>,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        tool_calls: Vec<WireCall<'a>>,
    },
    Tool {
        tool_call_id: &'a str,
        content: &'a str,
    },
}

impl<'a> WireMessage<'a> {
    fn of(message: &'a ChatMessage) -> WireMessage<'a> {
        match message {
            ChatMessage::System(content) => WireMessage::System { content },
            ChatMessage::User(content) => WireMessage::User { content },
            ChatMessage::Assistant {
                content,
                tool_calls,
                ..
            } => WireMessage::Assistant {
                content: (!content.is_empty() || tool_calls.is_empty()).then_some(content),
                tool_calls: tool_calls
                    .iter()
                    .map(|call| WireCall {
                        id: &call.id,
                        kind: "function",
                        function: WireCallFunction {
                            name: &call.name,
                            arguments: &call.arguments,
                        },
                    })
                    .collect(),
            },
            ChatMessage::Tool { call_id, content } => WireMessage::Tool {
                tool_call_id: call_id,
                content,
            },
        }
    }
}

#[derive(Debug, Serialize)]
struct WireCall<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    function: WireCallFunction<'a>,
}

#[derive(Debug, Serialize)]
struct WireCallFunction<'a> {
    name: &'a str,
    arguments: &'a str,
}

#[derive(Debug, Serialize)]
struct WireTool<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    function: &'a ToolSpec,
}

impl<'a> WireTool<'a> {
    fn of(spec: &'a ToolSpec) -> WireTool<'a> {
        WireTool {
            kind: "function",
            function: spec,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use futures_util::stream;
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;
    use crate::llm::ToolCall;

    fn block_on<F: Future>(future: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(future)
    }

    /// Parses `pieces` fed one by one, returning the events and the error that ended them.
    fn parse_pieces(pieces: Vec<Vec<u8>>) -> (Vec<LlmEvent>, Option<LlmError>) {
        let body = stream::iter(
            pieces
                .into_iter()
                .map(|piece| Ok::<_, Infallible>(Bytes::from(piece))),
        );
        block_on(collect(parse_body(body)))
    }

    fn parse(body: &str) -> (Vec<LlmEvent>, Option<LlmError>) {
        parse_pieces(vec![body.as_bytes().to_vec()])
    }

    /// The events of a stream, and its error, which must be its last item.
    async fn collect(
        stream: impl Stream<Item = Result<LlmEvent, LlmError>>,
    ) -> (Vec<LlmEvent>, Option<LlmError>) {
        let mut stream = pin!(stream);
        let mut events = Vec::new();
        while let Some(item) = stream.next().await {
            match item {
                Ok(event) => events.push(event),
                Err(error) => {
                    assert!(stream.next().await.is_none(), "an item followed {error}");
                    return (events, Some(error));
                }
            }
        }
        (events, None)
    }

    fn delta(text: &str) -> LlmEvent {
        LlmEvent::Delta(text.to_owned())
    }

    fn call(id: &str, name: &str, arguments: &str) -> LlmEvent {
        LlmEvent::ToolCall(ToolCall {
            id: id.to_owned(),
            name: name.to_owned(),
            arguments: arguments.to_owned(),
            upstream_id: None,
        })
    }

    fn usage(prompt_tokens: u64, completion_tokens: u64) -> LlmEvent {
        LlmEvent::Usage(Usage {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
        })
    }

    /// SSE events, one `data:` line each, ending with LF LF.
    fn sse(payloads: &[serde_json::Value]) -> String {
        payloads
            .iter()
            .map(|payload| format!("data: {payload}\n\n"))
            .collect()
    }

    // Shaped like a real gpt-4o stream with `include_usage`.
    const OPENAI_TEXT: &str = concat!(
        r#"data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o","system_fingerprint":"fp_1","choices":[{"index":0,"delta":{"role":"assistant","content":"","refusal":null},"logprobs":null,"finish_reason":null}],"usage":null}"#,
        "\n\n",
        r#"data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o","system_fingerprint":"fp_1","choices":[{"index":0,"delta":{"content":"Hel"},"logprobs":null,"finish_reason":null}],"usage":null}"#,
        "\n\n",
        r#"data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o","system_fingerprint":"fp_1","choices":[{"index":0,"delta":{"content":"lo!"},"logprobs":null,"finish_reason":null}],"usage":null}"#,
        "\n\n",
        r#"data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o","system_fingerprint":"fp_1","choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}],"usage":null}"#,
        "\n\n",
        r#"data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o","system_fingerprint":"fp_1","choices":[],"usage":{"prompt_tokens":9,"completion_tokens":2,"total_tokens":11,"prompt_tokens_details":{"cached_tokens":0}}}"#,
        "\n\n",
        "data: [DONE]\n\n",
    );

    #[test]
    fn parses_text_usage_and_done() {
        let (events, error) = parse(OPENAI_TEXT);
        assert_eq!(error, None);
        assert_eq!(events, [delta("Hel"), delta("lo!"), usage(9, 2)]);
    }

    #[test]
    fn nothing_after_done_is_read() {
        let body = format!("{OPENAI_TEXT}data: {{not json\n\n");
        let (events, error) = parse(&body);
        assert_eq!(error, None);
        assert_eq!(events.len(), 3);
    }

    #[test]
    fn assembles_a_tool_call_with_a_late_name_and_split_arguments() {
        let body = sse(&[
            json!({"choices":[{"index":0,"delta":{"role":"assistant","content":null,"tool_calls":[
                {"index":0,"id":"call_abc","type":"function","function":{"arguments":""}}]}}]}),
            json!({"choices":[{"index":0,"delta":{"tool_calls":[
                {"index":0,"function":{"arguments":"{\"ci"}}]}}]}),
            json!({"choices":[{"index":0,"delta":{"tool_calls":[
                {"index":0,"function":{"name":"get_weather","arguments":"ty\": \"Par"}}]}}]}),
            json!({"choices":[{"index":0,"delta":{"tool_calls":[
                {"index":0,"function":{"arguments":"is\"}"}}]}}]}),
            json!({"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}),
        ]) + "data: [DONE]\n\n";
        let (events, error) = parse(&body);
        assert_eq!(error, None);
        assert_eq!(
            events,
            [call("call_abc", "get_weather", r#"{"city": "Paris"}"#)]
        );
    }

    #[test]
    fn tool_calls_go_out_when_the_choice_finishes() {
        let body = sse(&[
            json!({"choices":[{"index":0,"delta":{"tool_calls":[
                {"index":0,"id":"c1","function":{"name":"f","arguments":"{}"}}]}}]}),
            json!({"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}),
            json!({"choices":[{"index":0,"delta":{"content":"after"}}]}),
        ]);
        let (events, error) = parse(&body);
        assert_eq!(error, None);
        // The call precedes the later text, so it went out at the finish, not at the end.
        assert_eq!(events, [call("c1", "f", "{}"), delta("after")]);
    }

    #[test]
    fn two_parallel_tool_calls_come_out_in_index_order() {
        let body = sse(&[
            json!({"choices":[{"index":0,"delta":{"tool_calls":[
                {"index":1,"id":"call_b","type":"function","function":{"name":"second","arguments":""}}]}}]}),
            json!({"choices":[{"index":0,"delta":{"tool_calls":[
                {"index":0,"id":"call_a","type":"function","function":{"name":"first","arguments":"{\"a\""}}]}}]}),
            json!({"choices":[{"index":0,"delta":{"tool_calls":[
                {"index":1,"function":{"arguments":"{\"b\":2}"}},
                {"index":0,"function":{"arguments":":1}"}}]}}]}),
            json!({"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}),
        ]) + "data: [DONE]\n\n";
        let (events, error) = parse(&body);
        assert_eq!(error, None);
        assert_eq!(
            events,
            [
                call("call_a", "first", r#"{"a":1}"#),
                call("call_b", "second", r#"{"b":2}"#)
            ]
        );
    }

    #[test]
    fn a_missing_index_is_the_position_in_the_chunk() {
        // As some llama.cpp and Ollama versions send: no index and no id.
        let body = sse(&[
            json!({"choices":[{"delta":{"tool_calls":[
                {"function":{"name":"one","arguments":"{\"x\":"}},
                {"function":{"name":"two","arguments":"{}"}}]}}]}),
            json!({"choices":[{"delta":{"tool_calls":[{"function":{"arguments":"1}"}}]}}]}),
            json!({"choices":[{"delta":{},"finish_reason":"tool_calls"}]}),
        ]) + "data: [DONE]\n\n";
        let (events, error) = parse(&body);
        assert_eq!(error, None);
        let calls: Vec<_> = events
            .iter()
            .map(|e| match e {
                LlmEvent::ToolCall(c) => c.clone(),
                other => panic!("expected a tool call, got {other:?}"),
            })
            .collect();
        assert_eq!(calls.len(), 2);
        assert_eq!(
            (calls[0].name.as_str(), calls[0].arguments.as_str()),
            ("one", r#"{"x":1}"#)
        );
        assert_eq!(
            (calls[1].name.as_str(), calls[1].arguments.as_str()),
            ("two", "{}")
        );
        assert!(calls.iter().all(|c| c.id.starts_with("call_")));
        assert_ne!(calls[0].id, calls[1].id, "generated ids are unique");
    }

    #[test]
    fn a_repeated_name_is_kept_once_and_a_split_name_is_joined() {
        let body = sse(&[
            json!({"choices":[{"delta":{"tool_calls":[
                {"index":0,"id":"a","function":{"name":"same"}},
                {"index":1,"id":"b","function":{"name":"get_"}}]}}]}),
            json!({"choices":[{"delta":{"tool_calls":[
                {"index":0,"id":"a","function":{"name":"same","arguments":"{}"}},
                {"index":1,"function":{"name":"profile","arguments":"{}"}}]}}]}),
        ]);
        let (events, error) = parse(&body);
        assert_eq!(error, None);
        assert_eq!(
            events,
            [call("a", "same", "{}"), call("b", "get_profile", "{}")]
        );
    }

    #[test]
    fn a_stream_without_done_ends_normally_and_flushes_what_is_pending() {
        // No finish_reason and no [DONE]: the call and the usage still go out at the end.
        let body = sse(&[
            json!({"choices":[{"index":0,"delta":{"content":"Hi"}}]}),
            json!({"choices":[{"index":0,"delta":{"tool_calls":[
                {"index":0,"id":"c","function":{"name":"f","arguments":"{\"k\":true}"}}]}}]}),
            json!({"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}),
        ]);
        let (events, error) = parse(&body);
        assert_eq!(error, None);
        assert_eq!(
            events,
            [delta("Hi"), call("c", "f", r#"{"k":true}"#), usage(3, 4)]
        );
    }

    #[test]
    fn usage_is_sent_once_with_the_latest_report() {
        // vLLM's continuous usage stats: a running total on every chunk.
        let body = sse(&[
            json!({"choices":[{"delta":{"content":"a"}}],"usage":{"prompt_tokens":5,"completion_tokens":1,"total_tokens":6}}),
            json!({"choices":[{"delta":{"content":"b"}}],"usage":{"prompt_tokens":5,"completion_tokens":2}}),
        ]) + "data: [DONE]\n\n";
        let (events, error) = parse(&body);
        assert_eq!(error, None);
        assert_eq!(events, [delta("a"), delta("b"), usage(5, 2)]);
    }

    #[test]
    fn empty_arguments_become_an_empty_object() {
        let body = sse(&[json!({"choices":[{"delta":{"tool_calls":[
            {"index":0,"id":"c","function":{"name":"get_profile","arguments":""}}]},
            "finish_reason":"tool_calls"}]})]);
        let (events, error) = parse(&body);
        assert_eq!(error, None);
        assert_eq!(events, [call("c", "get_profile", "{}")]);
    }

    #[test]
    fn a_tool_call_without_a_name_is_a_protocol_error() {
        let body = sse(&[json!({"choices":[{"delta":{"tool_calls":[
            {"index":0,"id":"c","function":{"arguments":"{}"}}]},"finish_reason":"tool_calls"}]})]);
        let (events, error) = parse(&body);
        assert_eq!(events, []);
        let error = error.unwrap();
        assert_eq!(error.code(), "upstream_protocol");
        assert!(
            error.to_string().contains("without a function name"),
            "{error}"
        );
    }

    #[test]
    fn is_lenient_about_what_compatible_servers_send() {
        let body = concat!(
            ": OPENROUTER PROCESSING\n\n",
            "retry: 3000\n\n",
            "event: ping\ndata: {\"anything\": [1, 2]}\n\n",
            "data: {\"choices\":null,\"usage\":null}\n\n",
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\"},\"finish_reason\":\"\"}]}\n\n",
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":null,\"reasoning_content\":\"hmm\"}}]}\n\n",
            "data: {\"choices\":[{\"index\":1,\"delta\":{\"content\":\"other choice\"}}]}\n\n",
            "id: 7\ndata: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"ok\"},\"finish_reason\":null}],\"extra\":{}}\n\n",
            "data:  \n\n",
            "data:[DONE]\n\n",
        );
        let (events, error) = parse(body);
        assert_eq!(error, None);
        assert_eq!(events, [delta("ok")]);
    }

    #[test]
    fn crlf_line_endings_are_accepted() {
        let body = OPENAI_TEXT.replace('\n', "\r\n");
        let (events, error) = parse(&body);
        assert_eq!(error, None);
        assert_eq!(events, [delta("Hel"), delta("lo!"), usage(9, 2)]);
    }

    #[test]
    fn a_malformed_chunk_is_a_protocol_error_after_the_deltas_before_it() {
        let body = sse(&[json!({"choices":[{"delta":{"content":"before"}}]})])
            + "data: {not json\n\n"
            + &sse(&[json!({"choices":[{"delta":{"content":"after"}}]})]);
        let (events, error) = parse(&body);
        assert_eq!(events, [delta("before")]);
        let error = error.unwrap();
        assert_eq!(error.code(), "upstream_protocol");
        assert!(error.to_string().contains("not valid JSON"), "{error}");
        assert!(error.to_string().contains("{not json"), "{error}");
    }

    #[test]
    fn a_chunk_of_the_wrong_shape_is_a_protocol_error() {
        let (_, error) = parse("data: {\"choices\":[{\"delta\":{\"content\":5}}]}\n\n");
        let error = error.unwrap();
        assert_eq!(error.code(), "upstream_protocol");
        assert!(error.to_string().contains("unexpected shape"), "{error}");
        let (_, error) = parse("data: 42\n\n");
        assert_eq!(error.unwrap().code(), "upstream_protocol");
    }

    #[test]
    fn an_error_object_is_an_upstream_error() {
        let body = sse(&[
            json!({"choices":[{"delta":{"content":"par"}}]}),
            json!({"error":{"message":"The server is overloaded","type":"server_error","code":"overloaded"},
                   "choices":[{"delta":{"content":""},"finish_reason":"error"}]}),
        ]) + "data: [DONE]\n\n";
        let (events, error) = parse(&body);
        assert_eq!(events, [delta("par")]);
        assert_eq!(
            error,
            Some(LlmError::Upstream(
                "the upstream reported an error: The server is overloaded (overloaded)".to_owned()
            ))
        );
        let (_, error) = parse("data: {\"error\":\"model not loaded\"}\n\n");
        assert_eq!(
            error,
            Some(LlmError::Upstream(
                "the upstream reported an error: model not loaded".to_owned()
            ))
        );
    }

    #[test]
    fn an_error_event_is_an_upstream_error() {
        let body = "event: error\ndata: {\"error\":{\"message\":\"quota exceeded\"}}\n\n";
        let (events, error) = parse(body);
        assert_eq!(events, []);
        assert_eq!(
            error,
            Some(LlmError::Upstream(
                "the upstream reported an error: quota exceeded".to_owned()
            ))
        );
    }

    #[test]
    fn a_body_without_chunks_is_a_protocol_error_unless_it_says_done() {
        for body in ["", ": keep-alive\n\n", "data: {\"choices\":[]}\n"] {
            let (events, error) = parse(body);
            assert_eq!(events, []);
            assert_eq!(
                error.map(|e| e.code()),
                Some("upstream_protocol"),
                "{body:?}"
            );
        }
        assert_eq!(parse("data: [DONE]\n\n"), (vec![], None));
    }

    #[test]
    fn a_failing_body_is_an_upstream_error_after_the_deltas_before_it() {
        let body = stream::iter([
            Ok(Bytes::from(sse(&[
                json!({"choices":[{"delta":{"content":"so far"}}]}),
            ]))),
            Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "connection reset by peer",
            )),
            Ok(Bytes::from(sse(&[
                json!({"choices":[{"delta":{"content":"never"}}]}),
            ]))),
        ]);
        let (events, error) = block_on(collect(parse_body(body)));
        assert_eq!(events, [delta("so far")]);
        assert_eq!(
            error,
            Some(LlmError::Upstream(
                "the upstream connection failed mid-stream: connection reset by peer".to_owned()
            ))
        );
    }

    #[test]
    fn a_body_failing_before_any_event_may_be_retried_and_later_not() {
        let fail = || {
            Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "reset",
            ))
        };
        let retryable = |pieces: Vec<Result<Bytes, std::io::Error>>| {
            block_on(async {
                let mut events = pin!(body_events(stream::iter(pieces), Limits::default()));
                while let Some(item) = events.next().await {
                    if let Err(failure) = item {
                        return failure.retryable;
                    }
                }
                panic!("the body did not fail");
            })
        };
        assert!(retryable(vec![Ok(Bytes::from_static(b": hi\n\n")), fail()]));
        let role = sse(&[json!({"choices":[{"delta":{"role":"assistant"}}]})]);
        assert!(!retryable(vec![Ok(Bytes::from(role)), fail()]));
    }

    /// A realistic body: multi-byte text and tool arguments, some events with CRLF endings.
    fn unicode_body() -> (String, Vec<LlmEvent>) {
        let events = [
            (
                json!({"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}),
                false,
            ),
            (
                json!({"choices":[{"index":0,"delta":{"content":"héllo "}}]}),
                true,
            ),
            (
                json!({"choices":[{"index":0,"delta":{"content":"wörld 😀"}}]}),
                false,
            ),
            (
                json!({"choices":[{"index":0,"delta":{"content":" 日本"}}]}),
                true,
            ),
            (
                json!({"choices":[{"index":0,"delta":{"tool_calls":[
                {"index":0,"id":"call_ü","type":"function","function":{"name":"note","arguments":"{\"text\":\"gr"}}]}}]}),
                true,
            ),
            (
                json!({"choices":[{"index":0,"delta":{"tool_calls":[
                {"index":0,"function":{"arguments":"üße 😀 日本\"}"}}]}}]}),
                false,
            ),
            (
                json!({"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}),
                true,
            ),
            (
                json!({"choices":[],"usage":{"prompt_tokens":12,"completion_tokens":5,"total_tokens":17}}),
                false,
            ),
        ];
        let mut body = String::new();
        for (event, crlf) in events {
            // Unescaped, so the multi-byte characters are on the wire as UTF-8.
            let line = format!("data: {}", serde_json::to_string(&event).unwrap());
            body.push_str(&line);
            body.push_str(if crlf { "\r\n\r\n" } else { "\n\n" });
        }
        body.push_str(": done soon\r\n\r\ndata: [DONE]\r\n\r\n");
        let expected = vec![
            delta("héllo "),
            delta("wörld 😀"),
            delta(" 日本"),
            call("call_ü", "note", r#"{"text":"grüße 😀 日本"}"#),
            usage(12, 5),
        ];
        (body, expected)
    }

    fn split_at(body: &[u8], cuts: &std::collections::BTreeSet<usize>) -> Vec<Vec<u8>> {
        let mut pieces = Vec::new();
        let mut start = 0;
        for &cut in cuts.iter().chain([body.len()].iter()) {
            pieces.push(body[start..cut].to_vec());
            start = cut;
        }
        pieces
    }

    fn delta_text(events: &[LlmEvent]) -> String {
        events
            .iter()
            .filter_map(|event| match event {
                LlmEvent::Delta(text) => Some(text.as_str()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn the_unicode_body_parses_whole_and_byte_by_byte() {
        let (body, expected) = unicode_body();
        assert!(body.contains('😀') && body.contains("\r\n"));
        assert_eq!(parse(&body), (expected.clone(), None));
        let bytes = body.as_bytes();
        let every_byte = (1..bytes.len()).collect();
        assert_eq!(parse_pieces(split_at(bytes, &every_byte)), (expected, None));
    }

    /// Cut points worth hitting on purpose: inside UTF-8 characters and between CR and LF.
    fn awkward_cuts(body: &str) -> Vec<usize> {
        let bytes = body.as_bytes();
        (1..bytes.len())
            .filter(|&i| !body.is_char_boundary(i) || (bytes[i - 1] == b'\r' && bytes[i] == b'\n'))
            .collect()
    }

    proptest! {
        #[test]
        fn any_split_of_the_body_gives_the_same_events(
            random in proptest::collection::btree_set(1..unicode_body().0.len(), 0..24),
            awkward in proptest::collection::vec(proptest::sample::select(awkward_cuts(&unicode_body().0)), 0..8),
        ) {
            let (body, expected) = unicode_body();
            let cuts = random.into_iter().chain(awkward).collect();
            let (events, error) = parse_pieces(split_at(body.as_bytes(), &cuts));
            prop_assert_eq!(error, None);
            prop_assert_eq!(delta_text(&events), "héllo wörld 😀 日本");
            prop_assert_eq!(events, expected);
        }
    }

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
                    {"role": "assistant", "content": null, "tool_calls": [
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
    fn retry_pauses_double_and_honour_retry_after_up_to_a_cap() {
        let base = Duration::from_millis(250);
        assert_eq!(retry_pause(base, 1, None), Duration::from_millis(250));
        assert_eq!(retry_pause(base, 2, None), Duration::from_millis(500));
        assert_eq!(retry_pause(base, 3, None), Duration::from_secs(1));
        assert_eq!(retry_pause(base, 40, None), MAX_RETRY_PAUSE);
        assert_eq!(
            retry_pause(base, 1, Some(Duration::from_secs(3))),
            Duration::from_secs(3)
        );
        assert_eq!(
            retry_pause(base, 2, Some(Duration::ZERO)),
            Duration::from_millis(500)
        );
        assert_eq!(
            retry_pause(base, 1, Some(Duration::from_secs(3600))),
            MAX_RETRY_PAUSE
        );
        assert_eq!(parse_retry_after(" 7 "), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
    }

    #[test]
    fn error_messages_are_found_in_every_common_shape() {
        let message = |body: &str| error_message(body.as_bytes());
        assert_eq!(
            message(
                r#"{"error":{"message":"Invalid model","type":"invalid_request_error","code":null}}"#
            ),
            Some("Invalid model".to_owned())
        );
        assert_eq!(
            message(r#"{"error":"model 'x' not found"}"#),
            Some("model 'x' not found".to_owned())
        );
        assert_eq!(
            message(r#"{"detail":"Not Found"}"#),
            Some("Not Found".to_owned())
        );
        assert_eq!(message("<html>Bad Gateway</html>"), None);
        assert_eq!(
            body_excerpt(b"<html>Bad Gateway</html>"),
            "<html>Bad Gateway</html>"
        );
        assert_eq!(body_excerpt(b""), "(empty body)");
        let long = "é".repeat(150);
        let cut = excerpt(&long);
        assert!(cut.len() <= EXCERPT_BYTES + '…'.len_utf8());
        assert!(cut.ends_with('…'));
    }

    #[test]
    fn debug_output_never_shows_the_key() {
        let settings = OpenAiSettings {
            api_key: Some("sk-secret-123".to_owned()),
            ..OpenAiSettings::default()
        };
        let shown = format!("{settings:?}");
        assert!(!shown.contains("sk-secret-123"), "{shown}");
        assert!(shown.contains("api_key: Some(\"***\")"), "{shown}");
        let provider = OpenAi::new(settings).unwrap();
        let shown = format!("{provider:?}");
        assert!(!shown.contains("sk-secret-123"), "{shown}");
        assert!(
            shown.contains("https://api.openai.com/v1/chat/completions"),
            "{shown}"
        );
    }

    #[test]
    fn new_rejects_unusable_urls_and_keys_without_showing_the_key() {
        let with = |base_url: &str, api_key: Option<&str>| {
            OpenAi::new(OpenAiSettings {
                base_url: base_url.to_owned(),
                api_key: api_key.map(str::to_owned),
                ..OpenAiSettings::default()
            })
        };
        assert!(with("not a url", None).is_err());
        assert!(with("ftp://example.com/v1", None).is_err());
        let error = with("http://localhost/v1", Some("sk-bad\nkey")).unwrap_err();
        assert!(!error.contains("sk-bad"), "{error}");
        let provider = with("http://localhost:11434/v1/", None).unwrap();
        assert_eq!(
            provider.shared.endpoint.as_str(),
            "http://localhost:11434/v1/chat/completions"
        );
    }

    // Against the fake upstream.

    fn test_settings(mock: &mock_llm::MockLlm) -> OpenAiSettings {
        OpenAiSettings {
            base_url: mock.base_url(),
            retry_backoff: Duration::from_millis(10),
            ..OpenAiSettings::default()
        }
    }

    fn user_request(model: &str, text: &str) -> ChatRequest {
        ChatRequest {
            model: model.to_owned(),
            messages: vec![ChatMessage::User(text.to_owned())],
            tools: vec![],
            temperature: None,
            max_tokens: None,
            tool_choice: None,
        }
    }

    async fn call_mock(
        settings: OpenAiSettings,
        request: ChatRequest,
    ) -> (Vec<LlmEvent>, Option<LlmError>) {
        collect(OpenAi::new(settings).unwrap().stream(request)).await
    }

    /// The text reply the mock gives to the request it recorded first.
    fn mock_reply(mock: &mock_llm::MockLlm, deltas: usize) -> String {
        let recorded: mock_llm::ChatRequest =
            serde_json::from_value(mock.request_bodies()[0].clone()).unwrap();
        mock_llm::reply_words(&recorded, deltas).join(" ")
    }

    #[tokio::test]
    async fn streams_the_mock_reply() {
        let mock = mock_llm::MockLlm::start().await.unwrap();
        let (events, error) = call_mock(
            test_settings(&mock),
            user_request("mock;deltas=5", "héllo wörld"),
        )
        .await;
        assert_eq!(error, None);
        assert_eq!(delta_text(&events), mock_reply(&mock, 5));
        assert_eq!(delta_text(&events), "Mock reply to: héllo wörld");
        assert!(matches!(
            events.last(),
            Some(LlmEvent::Usage(Usage {
                completion_tokens: 5,
                ..
            }))
        ));
        assert_eq!(mock.requests(), 1);
        let body = &mock.request_bodies()[0];
        assert_eq!(body["stream"], json!(true));
        assert_eq!(body["stream_options"], json!({"include_usage": true}));
        assert!(body.get("tools").is_none());
        assert_eq!(mock.authorizations(), Vec::<String>::new());
    }

    #[tokio::test]
    async fn assembles_the_mock_tool_call() {
        let mock = mock_llm::MockLlm::start().await.unwrap();
        let mut request = user_request("mock", " Ada Lovelace ");
        request.tools = vec![ToolSpec {
            name: "update_profile".to_owned(),
            description: "Saves one profile field".to_owned(),
            parameters: json!({
                "type": "object",
                "properties": {
                    "field": {"type": "string", "enum": ["name", "role"]},
                    "value": {"type": "string"},
                },
                "required": ["field", "value"],
            }),
        }];
        let (events, error) = call_mock(test_settings(&mock), request).await;
        assert_eq!(error, None);
        let calls: Vec<&ToolCall> = events
            .iter()
            .filter_map(|event| match event {
                LlmEvent::ToolCall(call) => Some(call),
                _ => None,
            })
            .collect();
        assert_eq!(calls.len(), 1, "{events:?}");
        assert_eq!(calls[0].id, "call_1");
        assert_eq!(calls[0].name, "update_profile");
        let arguments: serde_json::Value = serde_json::from_str(&calls[0].arguments).unwrap();
        assert_eq!(arguments, json!({"field": "name", "value": "Ada Lovelace"}));
        assert_eq!(delta_text(&events), "");
        assert_eq!(
            mock.request_bodies()[0]["tools"][0]["function"]["name"],
            json!("update_profile")
        );
    }

    #[tokio::test]
    async fn server_errors_are_retried_then_reported() {
        let mock = mock_llm::MockLlm::start().await.unwrap();
        let (events, error) =
            call_mock(test_settings(&mock), user_request("mock;fault=500", "hi")).await;
        assert_eq!(events, []);
        let error = error.unwrap();
        assert_eq!(error.code(), "upstream_error");
        assert!(error.to_string().contains("HTTP 500"), "{error}");
        assert!(
            error
                .to_string()
                .contains("mock-llm: injected server error"),
            "{error}"
        );
        assert!(error.to_string().ends_with("(after 3 attempts)"), "{error}");
        assert_eq!(mock.requests(), 3);
    }

    #[tokio::test]
    async fn rate_limits_are_retried_then_reported() {
        let mock = mock_llm::MockLlm::start().await.unwrap();
        let settings = OpenAiSettings {
            max_retries: 1,
            ..test_settings(&mock)
        };
        let (events, error) = call_mock(settings, user_request("mock;fault=429", "hi")).await;
        assert_eq!(events, []);
        let error = error.unwrap();
        assert_eq!(error.code(), "upstream_error");
        assert!(error.to_string().contains("HTTP 429"), "{error}");
        assert!(error.to_string().contains("rate_limit_exceeded"), "{error}");
        assert_eq!(mock.requests(), 2);
    }

    #[tokio::test]
    async fn a_call_succeeds_once_the_upstream_recovers() {
        let mock = mock_llm::MockLlm::start().await.unwrap();
        let (events, error) = call_mock(
            test_settings(&mock),
            user_request("mock;fail_first=2;deltas=3", "hi"),
        )
        .await;
        assert_eq!(error, None);
        assert_eq!(delta_text(&events), "Mock reply to:");
        assert_eq!(mock.requests(), 3);
    }

    #[tokio::test]
    async fn retries_stop_at_max_retries() {
        let mock = mock_llm::MockLlm::start().await.unwrap();
        let settings = OpenAiSettings {
            max_retries: 0,
            ..test_settings(&mock)
        };
        let (_, error) = call_mock(settings, user_request("mock;fail_first=1", "hi")).await;
        assert_eq!(error.map(|e| e.code()), Some("upstream_error"));
        assert_eq!(mock.requests(), 1);
    }

    #[tokio::test]
    async fn a_reset_after_the_first_chunk_is_not_retried() {
        let mock = mock_llm::MockLlm::start().await.unwrap();
        let (events, error) = call_mock(
            test_settings(&mock),
            user_request("mock;fault=reset;after=3", "hi"),
        )
        .await;
        assert_eq!(events, [delta("Mock "), delta("reply ")]);
        let error = error.unwrap();
        assert_eq!(error.code(), "upstream_error");
        assert!(error.to_string().contains("mid-stream"), "{error}");
        assert_eq!(mock.requests(), 1);
    }

    #[tokio::test]
    async fn a_reset_before_any_chunk_is_retried() {
        let mock = mock_llm::MockLlm::start().await.unwrap();
        let (events, error) = call_mock(
            test_settings(&mock),
            user_request("mock;fault=reset;after=0", "hi"),
        )
        .await;
        assert_eq!(events, []);
        let error = error.unwrap();
        assert_eq!(error.code(), "upstream_error");
        assert!(
            error.to_string().contains("before the first chunk"),
            "{error}"
        );
        assert_eq!(mock.requests(), 3);
    }

    #[tokio::test]
    async fn a_malformed_chunk_ends_the_stream_with_a_protocol_error() {
        let mock = mock_llm::MockLlm::start().await.unwrap();
        let (events, error) = call_mock(
            test_settings(&mock),
            user_request("mock;fault=malformed;after=2", "hi"),
        )
        .await;
        assert_eq!(events, [delta("Mock ")]);
        assert_eq!(error.map(|e| e.code()), Some("upstream_protocol"));
        assert_eq!(mock.requests(), 1);
    }

    #[tokio::test]
    async fn a_stall_between_chunks_times_out() {
        let mock = mock_llm::MockLlm::start().await.unwrap();
        let settings = OpenAiSettings {
            chunk_timeout: Duration::from_millis(300),
            ..test_settings(&mock)
        };
        let (events, error) =
            call_mock(settings, user_request("mock;fault=stall;after=2", "hi")).await;
        assert_eq!(events, [delta("Mock ")]);
        assert_eq!(
            error,
            Some(LlmError::Timeout("no chunk within 300ms".to_owned()))
        );
        assert_eq!(mock.requests(), 1);
    }

    #[tokio::test]
    async fn a_slow_first_token_times_out_without_a_retry() {
        let mock = mock_llm::MockLlm::start().await.unwrap();
        let settings = OpenAiSettings {
            first_token_timeout: Duration::from_millis(300),
            ..test_settings(&mock)
        };
        let (events, error) = call_mock(settings, user_request("mock;ttft_ms=2000", "hi")).await;
        assert_eq!(events, []);
        assert_eq!(
            error,
            Some(LlmError::Timeout("no first token within 300ms".to_owned()))
        );
        assert_eq!(mock.requests(), 1);
    }

    #[tokio::test]
    async fn a_first_token_within_the_limit_is_fine() {
        let mock = mock_llm::MockLlm::start().await.unwrap();
        let settings = OpenAiSettings {
            first_token_timeout: Duration::from_secs(5),
            chunk_timeout: Duration::from_millis(100),
            ..test_settings(&mock)
        };
        let (events, error) = call_mock(
            settings,
            user_request("mock;ttft_ms=200;pace_ms=20;deltas=3", "hi"),
        )
        .await;
        assert_eq!(error, None);
        assert_eq!(delta_text(&events), "Mock reply to:");
    }

    #[tokio::test]
    async fn sends_the_key_and_never_shows_it() {
        let mock = mock_llm::MockLlm::start().await.unwrap();
        let settings = OpenAiSettings {
            api_key: Some("sk-test".to_owned()),
            ..test_settings(&mock)
        };
        let (_, error) = call_mock(settings, user_request("mock;fault=500", "hi")).await;
        let error = error.unwrap();
        assert_eq!(mock.authorizations(), vec!["Bearer sk-test".to_owned(); 3]);
        for shown in [format!("{error}"), format!("{error:?}")] {
            assert!(!shown.contains("sk-test"), "{shown}");
        }
    }

    #[tokio::test]
    async fn a_client_error_is_not_retried_and_an_echoed_key_is_redacted() {
        let mock = mock_llm::MockLlm::start().await.unwrap();
        let settings = OpenAiSettings {
            api_key: Some("sk-test".to_owned()),
            ..test_settings(&mock)
        };
        // The mock's 400 message quotes the invalid option, so it echoes the key here.
        let (events, error) = call_mock(settings, user_request("mock;deltas=sk-test", "hi")).await;
        assert_eq!(events, []);
        let error = error.unwrap().to_string();
        assert!(error.contains("HTTP 400"), "{error}");
        assert!(
            error.contains("invalid mock option `deltas=***`"),
            "{error}"
        );
        assert!(!error.contains("sk-test"), "{error}");
        assert_eq!(mock.requests(), 1);
    }

    #[tokio::test]
    async fn a_server_that_never_answers_times_out_before_the_first_token() {
        // Bound but never accepting: the kernel completes the handshake, nobody answers.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let settings = OpenAiSettings {
            base_url: format!("http://{}/v1", silent.local_addr().unwrap()),
            first_token_timeout: Duration::from_millis(200),
            ..OpenAiSettings::default()
        };
        let (events, error) = call_mock(settings, user_request("mock", "hi")).await;
        assert_eq!(events, []);
        assert_eq!(
            error,
            Some(LlmError::Timeout("no first token within 200ms".to_owned()))
        );
        drop(silent);
    }

    #[tokio::test]
    async fn an_unreachable_server_is_reported() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let settings = OpenAiSettings {
            base_url: format!("http://{addr}/v1"),
            retry_backoff: Duration::from_millis(1),
            ..OpenAiSettings::default()
        };
        let (events, error) = call_mock(settings, user_request("mock", "hi")).await;
        assert_eq!(events, []);
        let error = error.unwrap();
        assert_eq!(error.code(), "upstream_error");
        assert!(error.to_string().contains("could not reach"), "{error}");
        assert!(error.to_string().ends_with("(after 3 attempts)"), "{error}");
    }
}

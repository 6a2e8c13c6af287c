//! The OpenAI-compatible streaming provider: Chat Completions with `stream: true`.
//!
//! It serves OpenAI, Ollama, vLLM, llama.cpp server, LM Studio, OpenRouter, Gemini's
//! OpenAI endpoint and other "compatible" servers, so parsing is lenient: unknown fields,
//! empty `choices`, role-only chunks, comments and foreign `event:` names are skipped. Text
//! and reasoning deltas go out as they arrive; tool-call pieces are assembled and the calls
//! go out, in arrival order, when the choice finishes. A reply whose body ends with neither
//! a finish reason nor `[DONE]` was cut off: its half-assembled calls never go out.
//!
//! A call is retried, with exponential backoff, only before its first SSE event and only on
//! connection errors, HTTP 429 and 5xx; once a chunk has arrived the reply may already have
//! reached a client, so a failure ends the stream instead. An error's detail is one line and
//! never shows the API key, nor the request's messages or tool arguments.

use std::collections::BTreeMap;
use std::fmt;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use eventsource_stream::{Event, EventStreamError, Eventsource};
use futures_util::future::BoxFuture;
use futures_util::{Stream, StreamExt};
use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::{
    ChatMessage, ChatRequest, LlmError, LlmEvent, LlmStream, Probe, Provider, ToolChoice,
    ToolChoiceMode, ToolSpec, Usage,
};
use crate::text::{clean_json, clean_string};

/// Longest pause before a retry, whatever the backoff or `Retry-After` says: a run waiting
/// longer than this for a retry is better failed, so the person can try again.
const MAX_RETRY_PAUSE: Duration = Duration::from_secs(10);

/// Most bytes of an error response read to find its message.
const ERROR_BODY_LIMIT: usize = 64 * 1024;

/// Most bytes of an upstream body or payload quoted in an error message.
const EXCERPT_BYTES: usize = 200;

/// Most bytes of an upstream's own error message quoted: room for a context-length message
/// with its numbers, not for a whole echoed request.
const MESSAGE_BYTES: usize = 1000;

/// The whole time a start-up probe may take: it must not hold start-up for long.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// What a request's text becomes in an error's detail.
const REDACTED: &str = "[redacted]";

/// Request strings shorter than this are not scrubbed from details: they would match
/// ordinary words of the detail and hide nothing worth hiding.
const MIN_SECRET_CHARS: usize = 4;

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
    /// `{base_url}/models`, which the start-up probe reads.
    models: reqwest::Url,
    /// `Bearer <key>`, marked sensitive so the http crate never prints it.
    authorization: Option<HeaderValue>,
}

impl OpenAi {
    /// A provider for the server at `settings.base_url`. Fails when the URL or the key cannot
    /// be used; the message never contains the key.
    pub fn new(settings: OpenAiSettings) -> Result<OpenAi, String> {
        let base = settings.base_url.trim().trim_end_matches('/');
        let url = |path: &str| {
            reqwest::Url::parse(&format!("{base}/{path}"))
                .map_err(|e| format!("invalid base URL {:?}: {e}", settings.base_url))
        };
        let endpoint = url("chat/completions")?;
        let models = url("models")?;
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
                models,
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
                    let error = LlmError::Protocol(format!("could not encode the request: {e}"));
                    yield Err(shared.scrub(error, &request));
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
                let mut error = shared.scrub(failure.error, &request);
                if failure.retryable && attempt <= settings.max_retries {
                    let pause = retry_pause(settings.retry_backoff, attempt, failure.retry_after);
                    tracing::warn!(
                        attempt,
                        max_retries = settings.max_retries,
                        cause = error.detail(),
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

    fn probe(&self) -> BoxFuture<'static, Probe> {
        let shared = Arc::clone(&self.shared);
        Box::pin(async move { shared.probe().await })
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
            error: LlmError::Status {
                status: status.as_u16(),
                detail: format!("the upstream answered HTTP {status}: {message}"),
            },
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

    /// The error with a detail fit for the log: one line, without the API key (which an
    /// upstream may echo) and without the texts of `request` (which it may quote back).
    fn scrub(&self, error: LlmError, request: &ChatRequest) -> LlmError {
        let secrets = Secrets::of(request, self.settings.api_key.as_deref());
        map_text(error, |text| {
            one_line(&secrets.scrub(&self.redact_key(text)))
        })
    }

    /// `text` with every copy of the API key replaced.
    fn redact_key(&self, text: String) -> String {
        match self.settings.api_key.as_deref().filter(|k| !k.is_empty()) {
            Some(key) if text.contains(key) => text.replace(key, "***"),
            _ => text,
        }
    }

    /// Reads `GET {base_url}/models` to tell a mistaken `base_url` or key from a server that
    /// is merely down.
    #[tracing::instrument(level = "debug", skip_all, fields(url = %self.models))]
    async fn probe(&self) -> Probe {
        let url = &self.models;
        let mut request = self.client.get(url.clone()).timeout(PROBE_TIMEOUT);
        if let Some(authorization) = &self.authorization {
            request = request.header(AUTHORIZATION, authorization.clone());
        }
        let probe = match request.send().await {
            Err(e) if e.is_timeout() => Probe::Unreachable(format!(
                "GET {url} did not answer within {PROBE_TIMEOUT:?}: {}",
                error_chain(&e.without_url())
            )),
            Err(e) => Probe::Unreachable(format!(
                "could not reach GET {url}: {}",
                error_chain(&e.without_url())
            )),
            Ok(response) => {
                let status = response.status();
                match status {
                    _ if status.is_success() => Probe::Ready,
                    StatusCode::NOT_FOUND => Probe::Misconfigured(format!(
                        "GET {url} answered HTTP 404: the base_url should be the API root, \
                         usually ending in /v1 (e.g. http://127.0.0.1:11434/v1)"
                    )),
                    StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                        Probe::Misconfigured(match self.authorization {
                            Some(_) => format!(
                                "the model server refused the API key: GET {url} answered HTTP {status}"
                            ),
                            None => format!(
                                "the model server wants an API key and none is set: \
                                 GET {url} answered HTTP {status}"
                            ),
                        })
                    }
                    _ if status.is_server_error() => {
                        Probe::Unreachable(format!("GET {url} answered HTTP {status}"))
                    }
                    // Not every compatible server lists its models.
                    _ => Probe::Ready,
                }
            }
        };
        let clean = |text: String| one_line(&self.redact_key(text));
        match probe {
            Probe::Ready => Probe::Ready,
            Probe::Unreachable(text) => Probe::Unreachable(clean(text)),
            Probe::Misconfigured(text) => Probe::Misconfigured(clean(text)),
        }
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

/// `text` on one line: an upstream's message may hold line breaks, a log line may not.
fn one_line(text: &str) -> String {
    text.replace(['\r', '\n'], " ")
}

/// The texts of a request, in every form an upstream may quote them: as sent, JSON-escaped,
/// and JSON-escaped to ASCII (Python's `json.dumps` default, common in error bodies).
#[derive(Debug, Default)]
struct Secrets {
    /// Longest first, so a text goes whole before a shorter one found inside it.
    forms: Vec<String>,
}

impl Secrets {
    /// Every message's content (and reasoning), every tool call's arguments, and every string
    /// value inside those arguments; and the API key.
    fn of(request: &ChatRequest, api_key: Option<&str>) -> Secrets {
        let mut texts: Vec<&str> = api_key.into_iter().collect();
        let mut values = Vec::new();
        for message in &request.messages {
            match message {
                ChatMessage::System(content) | ChatMessage::User(content) => texts.push(content),
                ChatMessage::Tool { content, .. } => texts.push(content),
                ChatMessage::Assistant {
                    content,
                    tool_calls,
                    reasoning,
                } => {
                    texts.push(content);
                    texts.extend(reasoning.as_deref());
                    for call in tool_calls {
                        texts.push(&call.arguments);
                        if let Ok(arguments) =
                            serde_json::from_str::<serde_json::Value>(&call.arguments)
                        {
                            string_values(&arguments, &mut values);
                        }
                    }
                }
            }
        }
        let mut forms = Vec::new();
        for text in texts.into_iter().chain(values.iter().map(String::as_str)) {
            if text.trim().chars().count() < MIN_SECRET_CHARS {
                continue;
            }
            let escaped = serde_json::to_string(text).unwrap_or_default();
            let escaped = escaped
                .strip_prefix('"')
                .and_then(|e| e.strip_suffix('"'))
                .unwrap_or_default()
                .to_owned();
            let ascii = ascii_escaped(&escaped);
            forms.push(text.to_owned());
            forms.push(escaped);
            forms.push(ascii);
        }
        forms.retain(|form| form.chars().count() >= MIN_SECRET_CHARS);
        forms.sort_unstable_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        forms.dedup();
        Secrets { forms }
    }

    /// `text` with every form replaced by [`REDACTED`], and so is the start of one that an
    /// excerpt cut short (an excerpt ends with `…`).
    fn scrub(&self, text: &str) -> String {
        let mut text = text.to_owned();
        for form in &self.forms {
            if text.contains(form.as_str()) {
                text = text.replace(form.as_str(), REDACTED);
            }
        }
        if !text.contains('…') {
            return text;
        }
        let mut segments: Vec<String> = text.split('…').map(str::to_owned).collect();
        let last = segments.len() - 1;
        for segment in &mut segments[..last] {
            let cut = self
                .forms
                .iter()
                .filter_map(|form| cut_start(segment, form))
                .min();
            if let Some(start) = cut {
                segment.replace_range(start.., REDACTED);
            }
        }
        segments.join("…")
    }
}

/// Where `segment` ends with the first [`MIN_SECRET_CHARS`] characters or more of `form`,
/// but not all of it.
fn cut_start(segment: &str, form: &str) -> Option<usize> {
    let head_end = form
        .char_indices()
        .nth(MIN_SECRET_CHARS)
        .map_or(form.len(), |(i, _)| i);
    let head = &form[..head_end];
    segment
        .match_indices(head)
        .map(|(start, _)| start)
        .find(|&start| segment.len() - start < form.len() && form.starts_with(&segment[start..]))
}

/// Collects the string values of `value` (not its keys), at any depth.
fn string_values(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::String(text) => out.push(text.clone()),
        serde_json::Value::Array(items) => items.iter().for_each(|item| string_values(item, out)),
        serde_json::Value::Object(fields) => {
            fields.values().for_each(|item| string_values(item, out));
        }
        serde_json::Value::Null | serde_json::Value::Bool(_) | serde_json::Value::Number(_) => {}
    }
}

/// JSON-escaped text with every non-ASCII character as `\uXXXX` (UTF-16, lowercase hex).
fn ascii_escaped(escaped: &str) -> String {
    let mut out = String::with_capacity(escaped.len());
    for c in escaped.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut units = [0_u16; 2];
            for unit in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    out
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
            .map(|message| excerpt_to(message, MESSAGE_BYTES)),
    }
}

/// The text of an upstream `error` value: its message and code when it is an object.
fn describe_error(error: &serde_json::Value) -> String {
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => Some(excerpt_to(s, MESSAGE_BYTES)),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    };
    match error {
        serde_json::Value::String(message) => excerpt_to(message, MESSAGE_BYTES),
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
    excerpt_to(text, EXCERPT_BYTES)
}

/// At most `limit` bytes of `text`, cut on a character boundary and then marked with `…`.
fn excerpt_to(text: &str, limit: usize) -> String {
    if text.len() <= limit {
        return text.to_owned();
    }
    let mut end = limit;
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
    body_events(body, Limits::default())
        .map(|item| item.map_err(|failure| map_text(failure.error, |text| one_line(&text))))
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
}

/// A tool call whose pieces are still arriving.
#[derive(Debug, Default)]
struct PartialCall {
    /// The wire `index` of its first piece (or its position in that chunk), for messages.
    index: usize,
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
                    self.add_call_piece(call.index.unwrap_or(position), call);
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

    /// Adds one tool-call piece to the call open at `index`, or begins a new call there.
    ///
    /// A piece begins a new call when its `id` differs from the open call's, or when it names
    /// a function while the open call is named and its arguments are already whole: Gemini
    /// sends parallel calls whole, one per chunk, all at index 0, and some servers send
    /// neither index nor id. A piece that only repeats the open call's name (some servers
    /// send the name in every chunk) extends it.
    fn add_call_piece(&mut self, index: usize, piece: WireToolCall) {
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
                ..PartialCall::default()
            });
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
        if let Some(arguments) = arguments {
            call.arguments.push_str(&arguments);
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
            out.push(LlmEvent::ToolCall(super::ToolCall {
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
    /// Read as any JSON value: only a string is reasoning text, and a server that sends
    /// something else there must not fail the reply.
    #[serde(default)]
    reasoning_content: Option<serde_json::Value>,
    #[serde(default)]
    reasoning: Option<serde_json::Value>,
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
    /// A string piece as OpenAI sends it, or a whole JSON value as some servers do.
    #[serde(default)]
    arguments: Option<serde_json::Value>,
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
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<WireToolChoice<'a>>,
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
    fn of(message: &'a ChatMessage) -> WireMessage<'a> {
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

/// `tool_choice`: `"auto"`, `"none"`, `"required"` or `{"type":"function","function":{"name"}}`.
#[derive(Debug, Serialize)]
#[serde(untagged)]
enum WireToolChoice<'a> {
    Mode(&'static str),
    Function {
        #[serde(rename = "type")]
        kind: &'static str,
        function: WireToolName<'a>,
    },
}

#[derive(Debug, Serialize)]
struct WireToolName<'a> {
    name: &'a str,
}

impl<'a> WireToolChoice<'a> {
    fn of(choice: &'a ToolChoice) -> WireToolChoice<'a> {
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

    fn finished(reason: &str) -> LlmEvent {
        LlmEvent::Finished(reason.to_owned())
    }

    fn reasoning(text: &str) -> LlmEvent {
        LlmEvent::Reasoning(text.to_owned())
    }

    fn tool_calls(events: &[LlmEvent]) -> Vec<ToolCall> {
        events
            .iter()
            .filter_map(|event| match event {
                LlmEvent::ToolCall(call) => Some(call.clone()),
                _ => None,
            })
            .collect()
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
        assert_eq!(
            events,
            [delta("Hel"), delta("lo!"), finished("stop"), usage(9, 2)]
        );
    }

    #[test]
    fn nothing_after_done_is_read() {
        let body = format!("{OPENAI_TEXT}data: {{not json\n\n");
        let (events, error) = parse(&body);
        assert_eq!(error, None);
        assert_eq!(events.len(), 4);
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
            [
                call("call_abc", "get_weather", r#"{"city": "Paris"}"#),
                finished("tool_calls")
            ]
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
        assert_eq!(
            events,
            [
                call("c1", "f", "{}"),
                finished("tool_calls"),
                delta("after")
            ]
        );
    }

    #[test]
    fn parallel_tool_calls_come_out_in_arrival_order() {
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
                call("call_b", "second", r#"{"b":2}"#),
                call("call_a", "first", r#"{"a":1}"#),
                finished("tool_calls")
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
        assert_eq!(events.last(), Some(&finished("tool_calls")));
        let calls = tool_calls(&events);
        assert_eq!(calls.len(), 2, "{events:?}");
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
            // Once more, with nothing to add: still the same two calls.
            json!({"choices":[{"delta":{"tool_calls":[
                {"index":0,"id":"a","function":{"name":"same","arguments":""}},
                {"index":1,"function":{"name":"get_profile"}}]},"finish_reason":"tool_calls"}]}),
        ]);
        let (events, error) = parse(&body);
        assert_eq!(error, None);
        assert_eq!(
            events,
            [
                call("a", "same", "{}"),
                call("b", "get_profile", "{}"),
                finished("tool_calls")
            ]
        );
    }

    #[test]
    fn a_body_cut_mid_tool_call_runs_no_call_and_is_incomplete() {
        // No finish_reason and no [DONE]: the call may be cut anywhere, even where its
        // arguments happen to parse, so it never goes out.
        let body = sse(&[
            json!({"choices":[{"index":0,"delta":{"content":"Hi"}}]}),
            json!({"choices":[{"index":0,"delta":{"tool_calls":[
                {"index":0,"id":"c","function":{"name":"delete_rows","arguments":"{\"where\":\"id=1\"}"}}]}}]}),
            json!({"choices":[{"index":0,"delta":{"tool_calls":[
                {"index":1,"id":"d","function":{"name":"f","arguments":"{\"k\":"}}]}}]}),
            json!({"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}),
        ]);
        let (events, error) = parse(&body);
        assert_eq!(events, [delta("Hi"), usage(3, 4)]);
        let error = error.unwrap();
        assert_eq!(error.code(), "upstream_incomplete");
        assert!(
            error.detail().contains("dropped 2 unfinished tool calls"),
            "{error:?}"
        );
        assert!(!error.detail().contains("id=1"), "{error:?}");
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
        assert_eq!(
            events,
            [call("c", "get_profile", "{}"), finished("tool_calls")]
        );
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
            error.detail().contains("without a function name"),
            "{error:?}"
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
        assert_eq!(events, [reasoning("hmm"), delta("ok")]);
    }

    #[test]
    fn crlf_line_endings_are_accepted() {
        let body = OPENAI_TEXT.replace('\n', "\r\n");
        let (events, error) = parse(&body);
        assert_eq!(error, None);
        assert_eq!(
            events,
            [delta("Hel"), delta("lo!"), finished("stop"), usage(9, 2)]
        );
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
        assert!(error.detail().contains("not valid JSON"), "{error:?}");
        assert!(error.detail().contains("{not json"), "{error:?}");
    }

    #[test]
    fn a_chunk_of_the_wrong_shape_is_a_protocol_error() {
        let (_, error) = parse("data: {\"choices\":[{\"delta\":{\"content\":5}}]}\n\n");
        let error = error.unwrap();
        assert_eq!(error.code(), "upstream_protocol");
        assert!(error.detail().contains("unexpected shape"), "{error:?}");
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

    // The field faults: one test per recorded upstream body, then more inputs of each kind.

    fn fixture(name: &str) -> &'static str {
        match name {
            "_text-reply" => include_str!("../../tests/fixtures/upstream/_text-reply.sse"),
            "args-as-object" => include_str!("../../tests/fixtures/upstream/args-as-object.sse"),
            "deepseek-reasoning" => {
                include_str!("../../tests/fixtures/upstream/deepseek-reasoning.sse")
            }
            "dup-tool-ids" => include_str!("../../tests/fixtures/upstream/dup-tool-ids.sse"),
            "dup-tool-ids.2" => include_str!("../../tests/fixtures/upstream/dup-tool-ids.2.sse"),
            "finish-length" => include_str!("../../tests/fixtures/upstream/finish-length.sse"),
            "gemini-parallel-index0" => {
                include_str!("../../tests/fixtures/upstream/gemini-parallel-index0.sse")
            }
            "nul-text" => include_str!("../../tests/fixtures/upstream/nul-text.sse"),
            "nul-tool-arg" => include_str!("../../tests/fixtures/upstream/nul-tool-arg.sse"),
            "truncated-no-done" => {
                include_str!("../../tests/fixtures/upstream/truncated-no-done.sse")
            }
            other => panic!("no fixture {other}"),
        }
    }

    fn arguments_of(call: &ToolCall) -> serde_json::Value {
        serde_json::from_str(&call.arguments).unwrap()
    }

    #[test]
    fn fixture_text_reply() {
        let (events, error) = parse(fixture("_text-reply"));
        assert_eq!(error, None);
        assert_eq!(
            events,
            [
                delta("Noted. "),
                delta("What is your role?"),
                finished("stop")
            ]
        );
    }

    #[test]
    fn fixture_gemini_parallel_index0_gives_two_calls() {
        let (events, error) = parse(fixture("gemini-parallel-index0"));
        assert_eq!(error, None);
        assert_eq!(
            events,
            [
                call(
                    "function-call-7301",
                    "update_profile",
                    r#"{"field":"name","value":"Ada Lovelace"}"#
                ),
                call(
                    "function-call-7302",
                    "update_profile",
                    r#"{"field":"role","value":"Engineer"}"#
                ),
                finished("stop"),
                usage(120, 30),
            ]
        );
    }

    #[test]
    fn fixture_args_as_object_are_serialised() {
        let (events, error) = parse(fixture("args-as-object"));
        assert_eq!(error, None);
        let calls = tool_calls(&events);
        assert_eq!(calls.len(), 1, "{events:?}");
        assert_eq!(
            (calls[0].id.as_str(), calls[0].name.as_str()),
            ("call_lc1", "update_profile")
        );
        assert_eq!(
            arguments_of(&calls[0]),
            json!({"field": "name", "value": "Ada Lovelace"})
        );
        assert_eq!(events.last(), Some(&finished("tool_calls")));
    }

    #[test]
    fn fixture_deepseek_reasoning_is_kept_apart() {
        let (events, error) = parse(fixture("deepseek-reasoning"));
        assert_eq!(error, None);
        assert_eq!(
            events,
            [
                reasoning("The user gave a name; "),
                reasoning("save it with update_profile."),
                call(
                    "call_0_ds",
                    "update_profile",
                    r#"{"field":"name","value":"Ada Lovelace"}"#
                ),
                finished("tool_calls"),
                usage(60, 25),
            ]
        );
    }

    #[test]
    fn fixture_dup_tool_ids_keeps_the_upstream_id_in_each_reply() {
        // The same id in two replies of one run: the parser reports what the upstream said;
        // making ids unique across the conversation is the agent's (`upstream_id`).
        for (name, value) in [
            ("dup-tool-ids", "Ada Lovelace"),
            ("dup-tool-ids.2", "Engineer"),
        ] {
            let (events, error) = parse(fixture(name));
            assert_eq!(error, None);
            let calls = tool_calls(&events);
            assert_eq!(calls.len(), 1, "{name}: {events:?}");
            assert_eq!(calls[0].id, "update_profile:0");
            assert_eq!(calls[0].upstream_id(), "update_profile:0");
            assert_eq!(arguments_of(&calls[0])["value"], json!(value));
            assert_eq!(events.last(), Some(&finished("tool_calls")));
        }
    }

    #[test]
    fn fixture_finish_length_is_finished() {
        let (events, error) = parse(fixture("finish-length"));
        assert_eq!(error, None);
        assert_eq!(
            events,
            [
                delta("Your three onboarding steps are: first, tell me your"),
                finished("length")
            ]
        );
    }

    #[test]
    fn fixture_nul_text_becomes_the_replacement_character() {
        let (events, error) = parse(fixture("nul-text"));
        assert_eq!(error, None);
        assert_eq!(
            events,
            [
                delta("Welcome to K"),
                delta("\u{FFFD}rsou, Ada."),
                finished("stop")
            ]
        );
    }

    #[test]
    fn fixture_nul_tool_arg_becomes_the_replacement_character() {
        let (events, error) = parse(fixture("nul-tool-arg"));
        assert_eq!(error, None);
        let calls = tool_calls(&events);
        assert_eq!(calls.len(), 1, "{events:?}");
        assert!(!calls[0].arguments.contains("\\u0000"), "{calls:?}");
        assert!(!calls[0].arguments.contains('\0'), "{calls:?}");
        assert_eq!(
            arguments_of(&calls[0]),
            json!({"field": "name", "value": "Ada\u{FFFD}Lovelace"})
        );
    }

    #[test]
    fn fixture_truncated_no_done_is_incomplete() {
        let (events, error) = parse(fixture("truncated-no-done"));
        assert_eq!(
            events,
            [
                delta("Thanks Ada. Before we go on, here are the three"),
                delta(" steps of")
            ]
        );
        let error = error.unwrap();
        assert!(matches!(error, LlmError::Incomplete(_)), "{error:?}");
        assert_eq!(error.code(), "upstream_incomplete");
    }

    #[test]
    fn three_whole_calls_at_one_index_stay_apart() {
        let body = sse(&[
            json!({"choices":[{"index":0,"delta":{"tool_calls":[
                {"index":0,"id":"c1","function":{"name":"update_profile","arguments":"{\"field\":\"name\",\"value\":\"Ada\"}"}}]}}]}),
            json!({"choices":[{"index":0,"delta":{"tool_calls":[
                {"index":0,"id":"c2","function":{"name":"update_profile","arguments":"{\"field\":\"role\",\"value\":\"Engineer\"}"}}]}}]}),
            json!({"choices":[{"index":0,"delta":{"tool_calls":[
                {"index":0,"id":"c3","function":{"name":"get_profile","arguments":"{}"}}]}}]}),
            json!({"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}),
        ]) + "data: [DONE]\n\n";
        let (events, error) = parse(&body);
        assert_eq!(error, None);
        assert_eq!(
            events,
            [
                call("c1", "update_profile", r#"{"field":"name","value":"Ada"}"#),
                call(
                    "c2",
                    "update_profile",
                    r#"{"field":"role","value":"Engineer"}"#
                ),
                call("c3", "get_profile", "{}"),
                finished("tool_calls"),
            ]
        );
    }

    #[test]
    fn whole_calls_without_index_or_id_stay_apart() {
        let body = sse(&[
            json!({"choices":[{"delta":{"tool_calls":[
                {"function":{"name":"update_profile","arguments":"{\"field\":\"name\",\"value\":\"Ada\"}"}}]}}]}),
            json!({"choices":[{"delta":{"tool_calls":[
                {"function":{"name":"update_profile","arguments":"{\"field\":\"role\",\"value\":\"Engineer\"}"}}]}}]}),
            json!({"choices":[{"delta":{"tool_calls":[
                {"function":{"name":"get_profile","arguments":{}}}]}}]}),
            json!({"choices":[{"delta":{},"finish_reason":"tool_calls"}]}),
        ]);
        let (events, error) = parse(&body);
        assert_eq!(error, None);
        let calls = tool_calls(&events);
        let shown: Vec<(&str, serde_json::Value)> = calls
            .iter()
            .map(|call| (call.name.as_str(), arguments_of(call)))
            .collect();
        assert_eq!(
            shown,
            [
                ("update_profile", json!({"field": "name", "value": "Ada"})),
                (
                    "update_profile",
                    json!({"field": "role", "value": "Engineer"})
                ),
                ("get_profile", json!({})),
            ]
        );
        let ids: std::collections::BTreeSet<&str> =
            calls.iter().map(|call| call.id.as_str()).collect();
        assert_eq!(ids.len(), 3, "generated ids are unique: {calls:?}");
        assert_eq!(events.last(), Some(&finished("tool_calls")));
    }

    #[test]
    fn whole_calls_repeating_one_id_at_one_index_stay_apart() {
        let body = sse(&[
            json!({"choices":[{"delta":{"tool_calls":[
                {"index":0,"id":"same","function":{"name":"f","arguments":"{\"n\":1}"}}]}}]}),
            json!({"choices":[{"delta":{"tool_calls":[
                {"index":0,"id":"same","function":{"name":"f","arguments":"{\"n\":2}"}}]}}]}),
            json!({"choices":[{"delta":{},"finish_reason":"tool_calls"}]}),
        ]);
        let (events, error) = parse(&body);
        assert_eq!(error, None);
        assert_eq!(
            events,
            [
                call("same", "f", r#"{"n":1}"#),
                call("same", "f", r#"{"n":2}"#),
                finished("tool_calls")
            ]
        );
    }

    #[test]
    fn an_id_reused_at_two_indexes_gives_two_calls_in_arrival_order() {
        let body = sse(&[
            json!({"choices":[{"delta":{"tool_calls":[
                {"index":0,"id":"dup","function":{"name":"first","arguments":"{\"a\":"}},
                {"index":1,"id":"dup","function":{"name":"second","arguments":"{\"b\":"}}]}}]}),
            json!({"choices":[{"delta":{"tool_calls":[
                {"index":1,"id":"dup","function":{"arguments":"2}"}},
                {"index":0,"function":{"arguments":"1}"}}]}}]}),
            json!({"choices":[{"delta":{},"finish_reason":"tool_calls"}]}),
        ]) + "data: [DONE]\n\n";
        let (events, error) = parse(&body);
        assert_eq!(error, None);
        assert_eq!(
            events,
            [
                call("dup", "first", r#"{"a":1}"#),
                call("dup", "second", r#"{"b":2}"#),
                finished("tool_calls")
            ]
        );
    }

    #[test]
    fn arguments_as_an_object_after_a_name_only_chunk_are_serialised() {
        let body = sse(&[
            json!({"choices":[{"delta":{"tool_calls":[
                {"index":0,"id":"c","type":"function","function":{"name":"save"}}]}}]}),
            json!({"choices":[{"delta":{"tool_calls":[
                {"index":0,"function":{"arguments":{"list":[1,2],"text":"x","nested":{"ok":true}}}}]}}]}),
            json!({"choices":[{"delta":{"tool_calls":[
                {"index":0,"function":{"arguments":null}}]}}]}),
            json!({"choices":[{"delta":{},"finish_reason":"tool_calls"}]}),
        ]) + "data: [DONE]\n\n";
        let (events, error) = parse(&body);
        assert_eq!(error, None);
        let calls = tool_calls(&events);
        assert_eq!(calls.len(), 1, "{events:?}");
        assert_eq!(
            (calls[0].id.as_str(), calls[0].name.as_str()),
            ("c", "save")
        );
        assert_eq!(
            arguments_of(&calls[0]),
            json!({"list": [1, 2], "text": "x", "nested": {"ok": true}})
        );
    }

    #[test]
    fn reasoning_and_reasoning_content_are_reasoning_events() {
        let body = sse(&[
            // OpenRouter's field name.
            json!({"choices":[{"delta":{"role":"assistant","content":"","reasoning":"Look at "}}]}),
            json!({"choices":[{"delta":{"content":null,"reasoning":"the name."}}]}),
            // A server sending both names with the same text: once.
            json!({"choices":[{"delta":{"reasoning_content":"Both.","reasoning":"Both."}}]}),
            // Something other than text there is skipped, not a failure.
            json!({"choices":[{"delta":{"reasoning":{"summary":[]},"content":"Hello"}}]}),
            json!({"choices":[{"delta":{"reasoning_content":"late","content":" Ada"},"finish_reason":"stop"}]}),
        ]) + "data: [DONE]\n\n";
        let (events, error) = parse(&body);
        assert_eq!(error, None);
        assert_eq!(
            events,
            [
                reasoning("Look at "),
                reasoning("the name."),
                reasoning("Both."),
                delta("Hello"),
                reasoning("late"),
                delta(" Ada"),
                finished("stop"),
            ]
        );
    }

    #[test]
    fn done_without_a_finish_reason_is_a_normal_end() {
        let body = sse(&[
            json!({"choices":[{"delta":{"content":"Hi"}}]}),
            json!({"choices":[{"delta":{"tool_calls":[
                {"index":0,"id":"c","function":{"name":"f","arguments":"{}"}}]}}]}),
        ]) + "data: [DONE]\n\n";
        let (events, error) = parse(&body);
        assert_eq!(error, None);
        assert_eq!(events, [delta("Hi"), call("c", "f", "{}")]);
    }

    #[test]
    fn a_finish_reason_then_the_end_of_the_body_is_a_normal_end() {
        let body = sse(&[
            json!({"choices":[{"delta":{"content":"Hi"}}]}),
            json!({"choices":[{"delta":{},"finish_reason":"stop"}]}),
            json!({"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":1}}),
        ]);
        let (events, error) = parse(&body);
        assert_eq!(error, None);
        assert_eq!(events, [delta("Hi"), finished("stop"), usage(1, 1)]);
    }

    #[test]
    fn a_body_cut_after_text_is_incomplete_after_its_text() {
        let body = sse(&[
            json!({"choices":[{"delta":{"role":"assistant"}}]}),
            json!({"choices":[{"delta":{"content":"Half a sen"}}]}),
        ]);
        let (events, error) = parse(&body);
        assert_eq!(events, [delta("Half a sen")]);
        let error = error.unwrap();
        assert_eq!(error.code(), "upstream_incomplete");
        assert!(!error.detail().contains("Half"), "{error:?}");
    }

    #[test]
    fn length_and_content_filter_are_finished_events_sent_once() {
        for reason in ["length", "content_filter"] {
            let body = sse(&[
                json!({"choices":[{"delta":{"content":"Some"}}]}),
                json!({"choices":[{"delta":{},"finish_reason":reason}]}),
                // A repeated finish reason is not a second finish.
                json!({"choices":[{"delta":{},"finish_reason":reason}]}),
            ]);
            let (events, error) = parse(&body);
            assert_eq!(error, None, "{reason}");
            assert_eq!(events, [delta("Some"), finished(reason)], "{reason}");
        }
    }

    #[test]
    fn a_nul_in_text_reasoning_names_and_arguments_becomes_the_replacement_character() {
        let body = sse(&[
            json!({"choices":[{"delta":{"reasoning_content":"th\u{0}ink","content":"a\u{0}b"}}]}),
            json!({"choices":[{"delta":{"tool_calls":[
                // A NUL in a name, and in a key and a value of JSON arguments.
                {"index":0,"id":"c1","function":{"name":"get_\u{0}profile","arguments":"{\"k\\u0000\": [\"v\\u0000\"]}"}},
                // Arguments that are not JSON keep their text, NULs replaced.
                {"index":1,"id":"c2","function":{"name":"raw","arguments":"not \u{0} json"}},
                // JSON without a NUL keeps its exact text.
                {"index":2,"id":"c3","function":{"name":"kept","arguments":"{ \"spaced\" : 1 }"}}]}}]}),
            json!({"choices":[{"delta":{},"finish_reason":"tool_calls"}]}),
        ]);
        assert!(body.contains("\\u0000"));
        let (events, error) = parse(&body);
        assert_eq!(error, None);
        assert_eq!(
            events,
            [
                reasoning("th\u{FFFD}ink"),
                delta("a\u{FFFD}b"),
                call(
                    "c1",
                    "get_\u{FFFD}profile",
                    "{\"k\u{FFFD}\":[\"v\u{FFFD}\"]}"
                ),
                call("c2", "raw", "not \u{FFFD} json"),
                call("c3", "kept", "{ \"spaced\" : 1 }"),
                finished("tool_calls"),
            ]
        );
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
            finished("tool_calls"),
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

    fn request_with(messages: Vec<ChatMessage>) -> ChatRequest {
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

    fn profile_call(id: &str, upstream_id: Option<&str>) -> ToolCall {
        ToolCall {
            id: id.to_owned(),
            name: "update_profile".to_owned(),
            arguments: r#"{"field":"name","value":"Ada"}"#.to_owned(),
            upstream_id: upstream_id.map(str::to_owned),
        }
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

    #[test]
    fn secrets_are_found_raw_escaped_ascii_escaped_and_cut_short() {
        let request = request_with(vec![
            ChatMessage::User("Grüße \"Ada\"\nbye".to_owned()),
            ChatMessage::Assistant {
                content: String::new(),
                tool_calls: vec![ToolCall {
                    arguments: r#"{"value":"Lovelace","n":"abc","deep":{"list":["Babbage"]}}"#
                        .to_owned(),
                    ..profile_call("c", None)
                }],
                reasoning: Some("thinking it over".to_owned()),
            },
            ChatMessage::Tool {
                call_id: "c".to_owned(),
                content: "ok".to_owned(),
            },
        ]);
        let secrets = Secrets::of(&request, Some("sk-k3y"));
        let scrub = |text: &str| secrets.scrub(text);
        assert_eq!(scrub("a Grüße \"Ada\"\nbye b"), "a [redacted] b");
        assert_eq!(scrub(r#"a Grüße \"Ada\"\nbye b"#), "a [redacted] b");
        assert_eq!(
            scrub(r#"a Gr\u00fc\u00dfe \"Ada\"\nbye b"#),
            "a [redacted] b"
        );
        assert_eq!(
            scrub("value Lovelace and Babbage, n abc, ok"),
            "value [redacted] and [redacted], n abc, ok"
        );
        assert_eq!(
            scrub(r#"{\"value\":\"Lovelace\",\"n\":\"abc\",\"deep\":{\"list\":[\"Babbage\"]}}"#),
            "[redacted]"
        );
        assert_eq!(scrub("thinking it over"), "[redacted]");
        assert_eq!(scrub("key sk-k3y"), "key [redacted]");
        assert_eq!(scrub("cut: Grüße \"A… more"), "cut: [redacted]… more");
        assert_eq!(scrub(r#"cut: {\"value\":\"Lov…"#), "cut: [redacted]…");
        assert_eq!(scrub("an ending… of its own"), "an ending… of its own");
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
        assert!(matches!(error, LlmError::Status { status: 500, .. }));
        assert_eq!(error.to_string(), "the model server answered HTTP 500");
        assert!(
            error.detail().contains("mock-llm: injected server error"),
            "{error:?}"
        );
        assert!(error.detail().ends_with("(after 3 attempts)"), "{error:?}");
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
        assert!(matches!(error, LlmError::Status { status: 429, .. }));
        assert!(error.detail().contains("rate_limit_exceeded"), "{error:?}");
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
        assert!(matches!(error, LlmError::Upstream(_)));
        assert!(error.detail().contains("mid-stream"), "{error:?}");
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
            error.detail().contains("before the first chunk"),
            "{error:?}"
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
        let error = error.unwrap();
        assert!(matches!(error, LlmError::Status { status: 400, .. }));
        let detail = error.detail();
        assert!(
            detail.contains("invalid mock option `deltas=***`"),
            "{detail}"
        );
        assert!(!detail.contains("sk-test"), "{detail}");
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
        assert!(matches!(error, LlmError::Upstream(_)));
        assert!(error.detail().contains("could not reach"), "{error:?}");
        assert!(error.detail().ends_with("(after 3 attempts)"), "{error:?}");
    }

    // Against small fake upstreams that quote the request back, as real ones do.

    /// Serves `router` on a free port for the rest of the test.
    async fn fake_upstream(router: axum::Router) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // The test's runtime stops the server when the test ends.
        tokio_util::task::TaskTracker::new()
            .spawn(async move { axum::serve(listener, router).await });
        addr
    }

    /// Routes under `/<name>/v1` that quote the request and the key back in their errors.
    fn echoing_router() -> axum::Router {
        use axum::http::{HeaderMap, StatusCode};
        use axum::routing::{get, post};
        let key = |headers: &HeaderMap| {
            headers
                .get(AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned()
        };
        axum::Router::new()
            // OpenAI's shape, with line breaks, the key and the whole request in the message.
            .route(
                "/echo/v1/chat/completions",
                post(move |headers: HeaderMap, body: String| async move {
                    let message = format!(
                        "Bad request.\r\nAuthorization: {}\nYou sent: {body}\nOffending value: Lovelace-9000",
                        key(&headers)
                    );
                    (
                        StatusCode::BAD_REQUEST,
                        axum::Json(json!({"error": {"message": message, "type": "invalid_request_error"}})),
                    )
                }),
            )
            // A Pydantic validation error: no message string, so the body is excerpted, and
            // the excerpt ends inside the echoed request.
            .route(
                "/pydantic/v1/chat/completions",
                post(|body: String| async move {
                    let input: serde_json::Value = serde_json::from_str(&body).unwrap();
                    (
                        StatusCode::UNPROCESSABLE_ENTITY,
                        axum::Json(json!({"detail": [{"type": "string_type", "msg": "Input should be a valid string",
                                                      "input": input["messages"]}]})),
                    )
                }),
            )
            // An error event mid-stream that quotes the user.
            .route(
                "/flagged/v1/chat/completions",
                post(|body: String| async move {
                    let request: serde_json::Value = serde_json::from_str(&body).unwrap();
                    let user = request["messages"][1]["content"].clone();
                    let error = json!({"error": {"message": format!("flagged:\n{}", user.as_str().unwrap_or_default())}});
                    (
                        [(CONTENT_TYPE, "text/event-stream")],
                        format!(
                            "data: {}\n\nevent: error\ndata: {error}\n\n",
                            json!({"choices":[{"delta":{"content":"Hel"}}]})
                        ),
                    )
                }),
            )
            .route("/locked/v1/models", get(|| async { StatusCode::UNAUTHORIZED }))
            .route("/forbidden/v1/models", get(|| async { StatusCode::FORBIDDEN }))
            .route("/down/v1/models", get(|| async { StatusCode::SERVICE_UNAVAILABLE }))
            .route("/unlisted/v1/models", get(|| async { StatusCode::METHOD_NOT_ALLOWED }))
    }

    /// A request full of things the log must not show.
    fn private_request() -> ChatRequest {
        ChatRequest {
            model: "m".to_owned(),
            messages: vec![
                ChatMessage::System("Be kind.".to_owned()),
                ChatMessage::User(format!(
                    "Mein geheimer Plan: \"Tee\"\num zwölf. {}",
                    "Und noch mehr Geheimes. ".repeat(10)
                )),
                ChatMessage::Assistant {
                    content: String::new(),
                    tool_calls: vec![ToolCall {
                        id: "c".to_owned(),
                        name: "update_profile".to_owned(),
                        arguments: r#"{"field":"name","value":"Lovelace-9000"}"#.to_owned(),
                        upstream_id: None,
                    }],
                    reasoning: Some("Private reasoning here.".to_owned()),
                },
                ChatMessage::Tool {
                    call_id: "c".to_owned(),
                    content: r#"{"saved":"Lovelace-9000"}"#.to_owned(),
                },
            ],
            tools: vec![],
            temperature: None,
            max_tokens: None,
            tool_choice: None,
        }
    }

    fn assert_private(detail: &str) {
        assert!(!detail.contains(['\n', '\r']), "{detail}");
        for secret in [
            "sk-echo-key",
            "geheim",
            "Geheim",
            "Tee",
            "zwölf",
            "Lovelace",
            "Private reasoning",
            "Be kind",
        ] {
            assert!(!detail.contains(secret), "{secret} in {detail}");
        }
    }

    #[tokio::test]
    async fn a_status_detail_is_one_line_without_the_key_messages_or_arguments() {
        let addr = fake_upstream(echoing_router()).await;
        let settings = OpenAiSettings {
            base_url: format!("http://{addr}/echo/v1"),
            api_key: Some("sk-echo-key".to_owned()),
            ..OpenAiSettings::default()
        };
        let (events, error) = call_mock(settings, private_request()).await;
        assert_eq!(events, []);
        let error = error.unwrap();
        assert_eq!(error.to_string(), "the model server answered HTTP 400");
        let LlmError::Status {
            status: 400,
            detail,
        } = &error
        else {
            panic!("expected HTTP 400, got {error:?}");
        };
        assert!(
            detail.starts_with("the upstream answered HTTP 400 Bad Request: Bad request.  Authorization: Bearer ***"),
            "{detail}"
        );
        assert!(detail.contains("Offending value: [redacted]"), "{detail}");
        assert!(
            detail.contains(r#""role":"user","content":"[redacted]"#),
            "{detail}"
        );
        assert_private(detail);
    }

    #[tokio::test]
    async fn a_quoted_request_cut_short_is_scrubbed_too() {
        let addr = fake_upstream(echoing_router()).await;
        let settings = OpenAiSettings {
            base_url: format!("http://{addr}/pydantic/v1"),
            ..OpenAiSettings::default()
        };
        let (_, error) = call_mock(settings, private_request()).await;
        let error = error.unwrap();
        assert!(
            matches!(error, LlmError::Status { status: 422, .. }),
            "{error:?}"
        );
        let detail = error.detail();
        assert!(detail.contains(r#""content":"[redacted]"#), "{detail}");
        assert!(detail.ends_with("[redacted]…"), "{detail}");
        assert_private(detail);
    }

    #[tokio::test]
    async fn an_error_event_quoting_the_user_is_scrubbed() {
        let addr = fake_upstream(echoing_router()).await;
        let settings = OpenAiSettings {
            base_url: format!("http://{addr}/flagged/v1"),
            ..OpenAiSettings::default()
        };
        let (events, error) = call_mock(settings, private_request()).await;
        assert_eq!(events, [delta("Hel")]);
        let error = error.unwrap();
        assert!(matches!(error, LlmError::Upstream(_)), "{error:?}");
        assert_eq!(
            error.detail(),
            "the upstream reported an error: flagged: [redacted]"
        );
    }

    fn probe_settings(base_url: String) -> OpenAiSettings {
        OpenAiSettings {
            base_url,
            api_key: Some("sk-probe-key".to_owned()),
            ..OpenAiSettings::default()
        }
    }

    async fn probe(base_url: String) -> Probe {
        OpenAi::new(probe_settings(base_url)).unwrap().probe().await
    }

    #[tokio::test]
    async fn the_probe_finds_the_mock_ready() {
        let mock = mock_llm::MockLlm::start().await.unwrap();
        assert_eq!(probe(mock.base_url()).await, Probe::Ready);
        assert_eq!(mock.requests(), 0, "the probe asks for no completion");
    }

    #[tokio::test]
    async fn the_probe_calls_a_base_url_that_404s_misconfigured() {
        let mock = mock_llm::MockLlm::start().await.unwrap();
        // The usual mistake: the server's root instead of its API root.
        let root = format!("http://{}", mock.addr());
        let Probe::Misconfigured(message) = probe(root.clone()).await else {
            panic!("expected Misconfigured");
        };
        assert!(message.contains(&format!("{root}/models")), "{message}");
        assert!(message.contains("HTTP 404"), "{message}");
        assert!(message.contains("ending in /v1"), "{message}");
        assert!(!message.contains("sk-probe-key"), "{message}");
    }

    #[tokio::test]
    async fn the_probe_calls_a_closed_port_unreachable() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let Probe::Unreachable(message) = probe(format!("http://{addr}/v1")).await else {
            panic!("expected Unreachable");
        };
        assert!(
            message.contains(&format!("http://{addr}/v1/models")),
            "{message}"
        );
        assert!(!message.contains('\n'), "{message}");
        assert!(!message.contains("sk-probe-key"), "{message}");
    }

    #[tokio::test]
    async fn the_probe_tells_a_refused_key_from_a_server_that_is_down() {
        let addr = fake_upstream(echoing_router()).await;
        for path in ["locked", "forbidden"] {
            let Probe::Misconfigured(message) = probe(format!("http://{addr}/{path}/v1")).await
            else {
                panic!("expected Misconfigured for {path}");
            };
            assert!(message.contains("refused the API key"), "{message}");
            assert!(!message.contains("sk-probe-key"), "{message}");
        }
        let no_key = OpenAiSettings {
            api_key: None,
            ..probe_settings(format!("http://{addr}/locked/v1"))
        };
        let Probe::Misconfigured(message) = OpenAi::new(no_key).unwrap().probe().await else {
            panic!("expected Misconfigured without a key");
        };
        assert!(message.contains("none is set"), "{message}");
        let Probe::Unreachable(message) = probe(format!("http://{addr}/down/v1")).await else {
            panic!("expected Unreachable for a 503");
        };
        assert!(message.contains("HTTP 503"), "{message}");
        // Not every compatible server lists its models.
        assert_eq!(
            probe(format!("http://{addr}/unlisted/v1")).await,
            Probe::Ready
        );
    }
}

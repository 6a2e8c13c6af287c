//! A provider-neutral HTTP transport for streamed model replies: one pooled client, time limits
//! on connecting, on the first SSE event and between events, retries, and error details fit
//! for the log. What the events mean is the provider's: it hands in an [`EventParser`].
//!
//! A call is retried, with exponential backoff, only before its first SSE event and only on
//! connection errors, HTTP 429 and 5xx; once an event has arrived the reply may already have
//! reached a client, so a failure ends the stream instead. An error's detail is one line and
//! never shows the API key, nor the request's messages or tool arguments.

use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use eventsource_stream::{Event, EventStreamError, Eventsource};
use futures_util::{Stream, StreamExt};
use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, HeaderName, HeaderValue, RETRY_AFTER};
use tokio::time::Instant;

use super::{ChatMessage, ChatRequest, LlmError, LlmEvent, LlmStream};

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

/// What a request's text becomes in an error's detail.
const REDACTED: &str = "[redacted]";

/// Request strings shorter than this are not scrubbed from details: they would match
/// ordinary words of the detail and hide nothing worth hiding.
const MIN_SECRET_CHARS: usize = 4;

/// How long to wait for an upstream, and how often to try it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TransportSettings {
    /// Time allowed to open the TCP (and TLS) connection.
    pub(crate) connect_timeout: Duration,
    /// Time allowed from sending the request until the first SSE event, headers included.
    pub(crate) first_token_timeout: Duration,
    /// Time allowed between two SSE events once the first has arrived.
    pub(crate) chunk_timeout: Duration,
    /// Retries before the first token, so at most `max_retries + 1` requests per call.
    pub(crate) max_retries: u32,
    /// The pause before the first retry, doubled for each later one.
    pub(crate) retry_backoff: Duration,
}

/// An API key and the header that carries it.
pub(crate) struct ApiKey {
    /// The key: never logged, and replaced wherever an upstream echoes it.
    pub(crate) key: String,
    /// The header it goes out in, e.g. `Authorization`.
    pub(crate) header: HeaderName,
    /// What comes before the key in that header, e.g. `Bearer `.
    pub(crate) prefix: &'static str,
}

/// The HTTP side of one provider; lives as long as the provider and its streams.
pub(crate) struct Transport {
    settings: TransportSettings,
    /// One client, so connections are pooled across calls.
    client: reqwest::Client,
    /// The key's header, its value marked sensitive so the http crate never prints it.
    authorization: Option<(HeaderName, HeaderValue)>,
    /// The key itself, to redact wherever an upstream echoes it.
    api_key: Option<String>,
}

/// Turns one provider's SSE events into model events.
pub(crate) trait EventParser: Send + 'static {
    /// Handles one SSE event, pushing what it completes onto `out`.
    fn event(&mut self, event: &Event, out: &mut Vec<LlmEvent>) -> Result<Flow, LlmError>;

    /// The body ended (without the parser having said [`Flow::Done`]): pushes what is
    /// pending, or fails when the reply is not whole.
    fn end(&mut self, out: &mut Vec<LlmEvent>) -> Result<(), LlmError>;
}

/// Whether the body has more to say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flow {
    /// Read on.
    More,
    /// The reply is whole; nothing after this event is read.
    Done,
}

impl Transport {
    /// A transport with `settings` that sends `key` with every request. Fails when the key
    /// is not a valid header value (the message never contains the key) or the client cannot
    /// be built.
    pub(crate) fn new(
        settings: TransportSettings,
        key: Option<ApiKey>,
    ) -> Result<Transport, String> {
        let authorization = match &key {
            Some(ApiKey {
                key,
                header,
                prefix,
            }) => {
                let mut value = HeaderValue::from_str(&format!("{prefix}{key}"))
                    .map_err(|_| "the API key is not a valid HTTP header value".to_owned())?;
                value.set_sensitive(true);
                Some((header.clone(), value))
            }
            None => None,
        };
        let client = crate::tls::client_builder()
            .map_err(|e| format!("could not set up TLS: {e}"))?
            .connect_timeout(settings.connect_timeout)
            .build()
            .map_err(|e| format!("could not build the HTTP client: {}", error_chain(&e)))?;
        Ok(Transport {
            settings,
            client,
            authorization,
            api_key: key.map(|key| key.key),
        })
    }

    /// Streams the reply to `body`, POSTed as JSON to `url`; each attempt reads the response's
    /// SSE events with a fresh parser from `new_parser`. `request` is what `body` encodes: its
    /// texts are kept out of error details.
    pub(crate) fn stream<P: EventParser>(
        self: Arc<Self>,
        url: reqwest::Url,
        body: Bytes,
        request: ChatRequest,
        new_parser: fn() -> P,
    ) -> LlmStream {
        async_stream::stream! {
            let settings = &self.settings;
            let mut attempt: u32 = 0;
            loop {
                attempt += 1;
                tracing::debug!(attempt, model = %request.model, "calling the upstream");
                let deadline = Instant::now() + settings.first_token_timeout;
                let failure = match self.open(&url, body.clone(), deadline).await {
                    Ok(response) => {
                        let limits = Limits {
                            first_event: Some((deadline, settings.first_token_timeout)),
                            between_events: Some(settings.chunk_timeout),
                        };
                        let mut events =
                            pin!(body_events(response.bytes_stream(), limits, new_parser()));
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
                let mut error = self.scrub(failure.error, &request);
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

    /// A GET of `url` with the key, for checks outside the streamed calls.
    pub(crate) fn get(&self, url: reqwest::Url) -> reqwest::RequestBuilder {
        let request = self.client.get(url);
        match &self.authorization {
            Some((header, value)) => request.header(header, value.clone()),
            None => request,
        }
    }

    /// Whether requests carry an API key.
    pub(crate) fn has_key(&self) -> bool {
        self.authorization.is_some()
    }
    /// Sends the request and checks the response's status, all before `deadline`.
    #[tracing::instrument(level = "debug", skip_all, fields(endpoint = %url))]
    async fn open(
        &self,
        url: &reqwest::Url,
        body: Bytes,
        deadline: Instant,
    ) -> Result<reqwest::Response, Failure> {
        let mut request = self
            .client
            .post(url.clone())
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .body(body);
        if let Some((header, value)) = &self.authorization {
            request = request.header(header, value.clone());
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
        let detail = format!("the upstream answered HTTP {status}: {message}");
        if status.is_client_error() && too_long(&body) {
            return Err(Failure::fatal(LlmError::ContextLength(detail)));
        }
        Err(Failure {
            error: LlmError::Status {
                status: status.as_u16(),
                detail,
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
    pub(crate) fn scrub(&self, error: LlmError, request: &ChatRequest) -> LlmError {
        let secrets = Secrets::of(request, self.api_key.as_deref());
        map_text(error, |text| {
            one_line(&secrets.scrub(&self.redact_key(text)))
        })
    }

    /// `text` with every copy of the API key replaced.
    pub(crate) fn redact_key(&self, text: String) -> String {
        match self.api_key.as_deref().filter(|k| !k.is_empty()) {
            Some(key) if text.contains(key) => text.replace(key, "***"),
            _ => text,
        }
    }
}

/// Why one attempt failed, and whether another may follow.
#[derive(Debug)]
pub(crate) struct Failure {
    /// What went wrong.
    pub(crate) error: LlmError,
    /// A connection error, 429 or 5xx, before any SSE event.
    pub(crate) retryable: bool,
    /// The upstream's `Retry-After`, in seconds.
    pub(crate) retry_after: Option<Duration>,
}

impl Failure {
    /// A failure no retry can mend.
    pub(crate) fn fatal(error: LlmError) -> Failure {
        Failure {
            error,
            retryable: false,
            retry_after: None,
        }
    }
}

/// The same error with its message rewritten.
pub(crate) fn map_text(error: LlmError, f: impl FnOnce(String) -> String) -> LlmError {
    match error {
        LlmError::Timeout(text) => LlmError::Timeout(f(text)),
        LlmError::Upstream(text) => LlmError::Upstream(f(text)),
        LlmError::Protocol(text) => LlmError::Protocol(f(text)),
        LlmError::Status { status, detail } => LlmError::Status {
            status,
            detail: f(detail),
        },
        LlmError::Incomplete(text) => LlmError::Incomplete(f(text)),
        LlmError::ContextLength(text) => LlmError::ContextLength(f(text)),
    }
}

/// True when an error body says the request was longer than the model's
/// context window, as OpenAI (`context_length_exceeded`), vLLM ("maximum
/// context length"), llama.cpp (`exceed_context_size_error`, "context
/// size"), Ollama and others word it.
pub(crate) fn too_long(body: &[u8]) -> bool {
    const SIGNS: [&str; 7] = [
        "context_length_exceeded",
        "context length",
        "context_length",
        "context window",
        "context size",
        "exceed_context_size",
        "maximum context",
    ];
    let text = String::from_utf8_lossy(body).to_lowercase();
    SIGNS.iter().any(|sign| text.contains(sign))
}

/// `text` on one line: an upstream's message may hold line breaks, a log line may not.
pub(crate) fn one_line(text: &str) -> String {
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
pub(crate) fn error_message(body: &[u8]) -> Option<String> {
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
pub(crate) fn describe_error(error: &serde_json::Value) -> String {
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

/// A body as quoted in an error message: an excerpt, or `(empty body)`.
pub(crate) fn body_excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        "(empty body)".to_owned()
    } else {
        excerpt(text)
    }
}

/// At most [`EXCERPT_BYTES`] of `text`, cut on a character boundary.
pub(crate) fn excerpt(text: &str) -> String {
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
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
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

/// Time limits on a body's SSE events; none by default.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Limits {
    /// When the first event must have arrived, and the configured timeout for the message.
    first_event: Option<(Instant, Duration)>,
    /// The longest gap between two events.
    between_events: Option<Duration>,
}

/// The body's model events, as `parser` reads its SSE events; a failure is the last item. A
/// transport error before the first SSE event is marked retryable: nothing can have reached
/// the caller yet.
pub(crate) fn body_events<S, E, P>(
    body: S,
    limits: Limits,
    mut parser: P,
) -> impl Stream<Item = Result<LlmEvent, Failure>> + Send
where
    S: Stream<Item = Result<Bytes, E>> + Send + 'static,
    E: std::error::Error + Send + 'static,
    P: EventParser,
{
    async_stream::stream! {
        let mut events = pin!(body.eventsource());
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

#[cfg(test)]
mod tests {

    use super::*;
    use crate::llm::{
        ToolCall,
        test_requests::{profile_call, request_with},
    };

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
}

//! One call of an HTTP tool: the body, the signed attempts and their
//! retries, and the last answer turned into the tool's output or an error
//! the model reads.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};
use reqwest::{
    StatusCode,
    header::{CONTENT_TYPE, HeaderValue},
};
use uuid::Uuid;

use super::{HttpTool, IDEMPOTENCY_HEADER, SIGNATURE_HEADER};
use crate::{
    llm::transport::error_chain,
    telemetry::metrics,
    tools::{ToolError, ToolInput},
};

/// The wait before the first retry; it doubles for each later one.
const BACKOFF: Duration = Duration::from_millis(200);
/// The longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// The longest `Retry-After` a 429 or 503 is waited out; one asking for
/// longer ends the call (the model reads the answer) rather than hold the run.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(10);
/// Most characters of an answer's body quoted in an error.
const EXCERPT_CHARS: usize = 500;

/// Bytes of a call ID written as `%XX` in the idempotency key: controls,
/// space and `%` (non-ASCII bytes always are), so that any ID makes a valid
/// header value and two IDs never make the same key.
const KEY_ESCAPED: &AsciiSet = &CONTROLS.add(b' ').add(b'%');

/// What one attempt came to.
#[derive(Debug)]
enum Attempt {
    /// The backend answered with this status and body.
    Answered(StatusCode, Bytes),
    /// The backend answered with a body longer than the tool reads.
    TooLarge(StatusCode),
    /// No whole answer within the attempt's timeout.
    TimedOut,
    /// The request or the answer failed on the way (the error, without the
    /// URL).
    Failed(String),
}

impl Attempt {
    /// Whether another attempt may fare better: a connection error, a 429
    /// or a 5xx. A timeout is not retried: a slow backend is not helped by
    /// more load, and the run would wait `max_retries + 1` timeouts.
    fn retryable(&self) -> bool {
        match self {
            Attempt::Answered(status, _) => {
                status.is_server_error() || *status == StatusCode::TOO_MANY_REQUESTS
            }
            Attempt::Failed(_) => true,
            Attempt::TooLarge(_) | Attempt::TimedOut => false,
        }
    }
}

/// Runs one call: POSTs it, retrying with the same body and key and a
/// fresh signature, and reads the last answer. Every failure is a
/// [`ToolError::Invalid`] the model reads; it never fails otherwise.
#[tracing::instrument(
    name = "http_tool",
    skip_all,
    fields(tool = %tool.spec.name, call_id = %input.call_id, status, attempts, outcome)
)]
pub(super) async fn call(
    tool: &HttpTool,
    input: ToolInput<'_>,
) -> Result<serde_json::Value, ToolError> {
    let started = Instant::now();
    let key = idempotency_key(input.ctx.run_id, input.call_id)?;
    let body = body(tool, input)?;
    let mut attempts: u32 = 0;
    let last = loop {
        attempts += 1;
        let (attempt, retry_after) = attempt(tool, &body, &key).await;
        if attempts > tool.max_retries
            || !attempt.retryable()
            || retry_after.is_some_and(|wait| wait > MAX_RETRY_AFTER)
        {
            break attempt;
        }
        // The backend's own `Retry-After`, when it gives one in seconds.
        let wait = retry_after.unwrap_or_else(|| backoff(attempts));
        tracing::debug!(attempt = attempts, answer = ?attempt, ?wait, "retrying the call");
        tokio::time::sleep(wait).await;
    };
    let span = tracing::Span::current();
    span.record("attempts", attempts);
    if let Attempt::Answered(status, _) | Attempt::TooLarge(status) = &last {
        span.record("status", status.as_u16());
    }
    let (outcome, result) = outcome(tool, last, attempts);
    span.record("outcome", outcome);
    metrics::http_tool_call(&tool.spec.name, outcome, started.elapsed());
    match &result {
        Ok(_) => tracing::debug!("the backend answered"),
        // The backend's refusal or failure is for the model to read and
        // react to, not an alarm for the operator: INFO, not WARN.
        Err(error) => tracing::info!(%error, "the call failed; the model is told"),
    }
    result
}

/// `<run_id>:<call_id>`, the call ID escaped where it is not printable
/// ASCII (see [`KEY_ESCAPED`]).
fn idempotency_key(run_id: Uuid, call_id: &str) -> Result<HeaderValue, ToolError> {
    let key = format!("{run_id}:{}", utf8_percent_encode(call_id, KEY_ESCAPED));
    HeaderValue::from_str(&key)
        .map_err(|_| ToolError::Invalid("the call's ID cannot be sent in a header".to_owned()))
}

/// The request body: the tool's name, the checked arguments, and the
/// caller's values from the run (`claims` only when the caller has them).
fn body(tool: &HttpTool, input: ToolInput<'_>) -> Result<Bytes, ToolError> {
    let ctx = input.ctx;
    let mut caller = serde_json::json!({
        "subject": ctx.caller.subject,
        "user_id": ctx.user_id,
        "conversation_id": ctx.conversation_id,
        "run_id": ctx.run_id,
        "call_id": input.call_id,
    });
    if let Some(claims) = &ctx.caller.claims {
        caller["claims"] = serde_json::Value::Object(claims.clone());
    }
    let body = serde_json::json!({
        "tool": tool.spec.name,
        "arguments": input.arguments,
        "caller": caller,
    });
    serde_json::to_vec(&body)
        .map(Bytes::from)
        .map_err(|e| ToolError::Invalid(format!("the call cannot be encoded as JSON: {e}")))
}

/// One attempt, bounded by the tool's timeout from connecting to the last
/// byte of the answer.
/// One attempt, and the wait its answer's `Retry-After` asks for (in
/// seconds; the HTTP-date form is not read).
async fn attempt(tool: &HttpTool, body: &Bytes, key: &HeaderValue) -> (Attempt, Option<Duration>) {
    let mut request = tool
        .client
        .post(tool.url.clone())
        .header(CONTENT_TYPE, "application/json")
        .header(IDEMPOTENCY_HEADER, key.clone())
        .body(body.clone());
    if let Some(signer) = &tool.signer {
        request = request.header(SIGNATURE_HEADER, signer.sign(unix_now(), body));
    }
    let mut retry_after = None;
    let exchange = async {
        let mut response = request.send().await?;
        let status = response.status();
        retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let limit = tool.max_response_bytes;
        if response
            .content_length()
            .is_some_and(|length| length > limit as u64)
        {
            return Ok(Attempt::TooLarge(status));
        }
        let mut read = Vec::new();
        while let Some(chunk) = response.chunk().await? {
            if read.len() + chunk.len() > limit {
                return Ok(Attempt::TooLarge(status));
            }
            read.extend_from_slice(&chunk);
        }
        Ok::<_, reqwest::Error>(Attempt::Answered(status, Bytes::from(read)))
    };
    let attempt = match tokio::time::timeout(tool.timeout, exchange).await {
        Ok(Ok(attempt)) => attempt,
        Ok(Err(error)) => Attempt::Failed(error_chain(&error.without_url())),
        Err(_) => Attempt::TimedOut,
    };
    (attempt, retry_after)
}

/// Seconds since the Unix epoch (0 on a clock set before it).
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

/// The wait after the `attempt`-th attempt (1-based): 200 ms, 400 ms, …,
/// at most 2 s.
fn backoff(attempt: u32) -> Duration {
    BACKOFF
        .saturating_mul(2_u32.saturating_pow(attempt.saturating_sub(1)))
        .min(MAX_BACKOFF)
}

/// The metric's outcome label and the call's result, from its last attempt.
fn outcome(
    tool: &HttpTool,
    last: Attempt,
    attempts: u32,
) -> (&'static str, Result<serde_json::Value, ToolError>) {
    let after = if attempts > 1 {
        format!(" (after {attempts} attempts)")
    } else {
        String::new()
    };
    let (label, message) = match last {
        Attempt::Answered(status, body) if status.is_success() => {
            if body.iter().all(u8::is_ascii_whitespace) {
                return ("ok", Ok(serde_json::json!({ "ok": true })));
            }
            match serde_json::from_slice(&body) {
                Ok(output) => return ("ok", Ok(output)),
                Err(_) => (
                    "not_json",
                    format!(
                        "the backend answered {status} with a body that is not JSON: {}",
                        excerpt(&body)
                    ),
                ),
            }
        }
        Attempt::Answered(status, body) => {
            let (label, note) = if status.is_redirection() {
                ("redirect", " (redirects are not followed)")
            } else if status.is_server_error() {
                ("server_error", "")
            } else {
                ("client_error", "")
            };
            (
                label,
                format!(
                    "the backend answered {status}{note}{after}: {}",
                    excerpt(&body)
                ),
            )
        }
        Attempt::TooLarge(status) => (
            "too_large",
            format!(
                "the backend answered {status} with a body over {} bytes",
                tool.max_response_bytes
            ),
        ),
        Attempt::TimedOut => (
            "timeout",
            format!(
                "the backend did not answer within {} ms{after}",
                tool.timeout.as_millis()
            ),
        ),
        Attempt::Failed(error) => (
            "unreachable",
            format!("could not reach the backend{after}: {error}"),
        ),
    };
    (label, Err(ToolError::Invalid(message)))
}

/// The start of a body as one line of text: invalid UTF-8 replaced, runs
/// of whitespace and control characters made one space, at most
/// [`EXCERPT_CHARS`] characters.
fn excerpt(body: &[u8]) -> String {
    let text: String = String::from_utf8_lossy(body)
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let mut out = String::new();
    let mut chars = 0;
    for word in text.split_whitespace() {
        if chars > 0 {
            out.push(' ');
            chars += 1;
        }
        for c in word.chars() {
            if chars == EXCERPT_CHARS {
                out.push('…');
                return out;
            }
            out.push(c);
            chars += 1;
        }
    }
    if out.is_empty() {
        "(no body)".to_owned()
    } else {
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tools::http::HttpToolConfig;

    fn tool() -> HttpTool {
        let config: HttpToolConfig = toml::from_str(
            "description = \"d\"\nurl = \"http://127.0.0.1:9/\"\nunsigned = true\ntimeout_ms = 300",
        )
        .unwrap();
        HttpTool::build("t", &config).unwrap()
    }

    #[test]
    fn the_key_is_the_run_and_the_call_escaped() {
        let run = Uuid::nil();
        assert_eq!(
            idempotency_key(run, "call_abc-1").unwrap(),
            "00000000-0000-0000-0000-000000000000:call_abc-1"
        );
        assert_eq!(
            idempotency_key(run, "a b%\n\u{e9}").unwrap(),
            "00000000-0000-0000-0000-000000000000:a%20b%25%0A%C3%A9"
        );
    }

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        assert_eq!(backoff(1), Duration::from_millis(200));
        assert_eq!(backoff(2), Duration::from_millis(400));
        assert_eq!(backoff(5), MAX_BACKOFF);
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
    }

    #[test]
    fn an_excerpt_is_one_short_line() {
        assert_eq!(
            excerpt(b"  <h1>Bad\r\n\tGateway</h1>\x1b[0m \0 "),
            "<h1>Bad Gateway</h1> [0m"
        );
        assert_eq!(excerpt(b""), "(no body)");
        let long = excerpt("é".repeat(600).as_bytes());
        assert_eq!(long.chars().count(), EXCERPT_CHARS + 1);
        assert!(long.ends_with('…'));
    }

    #[test]
    fn answers_become_outputs_or_errors() {
        let tool = tool();
        let answer = |status: u16, body: &'static str| {
            Attempt::Answered(StatusCode::from_u16(status).unwrap(), Bytes::from(body))
        };
        let error = |(label, result): (&str, Result<serde_json::Value, ToolError>)| match result {
            Err(ToolError::Invalid(message)) => (label.to_owned(), message),
            other => panic!("{other:?}"),
        };
        let (label, output) = outcome(&tool, answer(200, r#"{"id": 7}"#), 1);
        assert_eq!(
            (label, output.unwrap()),
            ("ok", serde_json::json!({"id": 7}))
        );
        let (label, output) = outcome(&tool, answer(204, ""), 1);
        assert_eq!(
            (label, output.unwrap()),
            ("ok", serde_json::json!({"ok": true}))
        );
        assert_eq!(
            error(outcome(&tool, answer(200, "<p>done</p>"), 1)),
            (
                "not_json".into(),
                "the backend answered 200 OK with a body that is not JSON: <p>done</p>".into()
            )
        );
        assert_eq!(
            error(outcome(
                &tool,
                answer(422, r#"{"error": "no such order"}"#),
                1
            )),
            (
                "client_error".into(),
                r#"the backend answered 422 Unprocessable Entity: {"error": "no such order"}"#
                    .into()
            )
        );
        assert_eq!(
            error(outcome(&tool, answer(503, ""), 3)),
            (
                "server_error".into(),
                "the backend answered 503 Service Unavailable (after 3 attempts): (no body)".into()
            )
        );
        assert_eq!(error(outcome(&tool, answer(302, ""), 1)).0, "redirect");
        assert_eq!(
            error(outcome(&tool, Attempt::TimedOut, 1)).1,
            "the backend did not answer within 300 ms"
        );
        assert!(answer(503, "").retryable() && answer(429, "").retryable());
        assert!(!answer(404, "").retryable() && !Attempt::TimedOut.retryable());
        assert!(Attempt::Failed("refused".into()).retryable());
    }
}

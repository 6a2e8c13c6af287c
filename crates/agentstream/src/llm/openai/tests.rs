//! The provider against fake upstreams: what it sends and reads back, its start-up probe,
//! and, through it, the transport's retries, time limits and scrubbed error details. The
//! parser's tests share the helpers at the top.

use std::pin::pin;

use futures_util::Stream;
use reqwest::header::CONTENT_TYPE;
use serde_json::json;

use super::*;
use crate::llm::{ChatMessage, LlmEvent, ToolCall, ToolSpec, Usage};

/// The events of a stream but its argument pieces, and its error, which must be its last
/// item. The pieces are checked: joined in order, those of the reply's n-th tool call are its
/// arguments.
pub(super) async fn collect(
    stream: impl Stream<Item = Result<LlmEvent, LlmError>>,
) -> (Vec<LlmEvent>, Option<LlmError>) {
    let (events, error) = collect_all(stream).await;
    check_pieces(&events, error.is_none());
    let events = events
        .into_iter()
        .filter(|event| !matches!(event, LlmEvent::ToolCallDelta(_)))
        .collect();
    (events, error)
}

/// Asserts that the argument pieces of each tool call in `events` join to its arguments (a
/// call with blank ones has `{}`), and, when the reply is whole, that every piece has its call.
pub(super) fn check_pieces(events: &[LlmEvent], whole: bool) {
    let mut pieces: std::collections::BTreeMap<usize, String> = Default::default();
    let mut calls = Vec::new();
    for event in events {
        match event {
            LlmEvent::ToolCallDelta(piece) => {
                assert!(
                    piece.index >= calls.len(),
                    "a piece of call {} after the call: {events:?}",
                    piece.index
                );
                pieces
                    .entry(piece.index)
                    .or_default()
                    .push_str(&piece.arguments);
            }
            LlmEvent::ToolCall(call) => calls.push(call),
            _ => {}
        }
    }
    for (number, call) in calls.iter().enumerate() {
        let joined = pieces.remove(&number).unwrap_or_default();
        if joined.trim().is_empty() {
            assert_eq!(call.arguments, "{}", "call {number}: {events:?}");
        } else if !joined.contains("\\u0000") {
            assert_eq!(joined, call.arguments, "call {number}: {events:?}");
        }
    }
    if whole {
        assert!(pieces.is_empty(), "pieces without a call: {pieces:?}");
    }
}

/// Every event of a stream, and its error, which must be its last item.
pub(super) async fn collect_all(
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

pub(super) fn delta(text: &str) -> LlmEvent {
    LlmEvent::Delta(text.to_owned())
}

pub(super) fn delta_text(events: &[LlmEvent]) -> String {
    events
        .iter()
        .filter_map(|event| match event {
            LlmEvent::Delta(text) => Some(text.as_str()),
            _ => None,
        })
        .collect()
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
    assert_eq!(error.code().as_str(), "upstream_error");
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
    assert_eq!(error.code().as_str(), "upstream_error");
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
    assert_eq!(error.map(|e| e.code().as_str()), Some("upstream_error"));
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
    assert_eq!(error.code().as_str(), "upstream_error");
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
    assert_eq!(error.code().as_str(), "upstream_error");
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
    assert_eq!(error.map(|e| e.code().as_str()), Some("upstream_protocol"));
    assert_eq!(mock.requests(), 1);
}

#[tokio::test]
async fn a_stall_between_chunks_times_out() {
    let mock = mock_llm::MockLlm::start().await.unwrap();
    let settings = OpenAiSettings {
        chunk_timeout: Duration::from_millis(300),
        ..test_settings(&mock)
    };
    let (events, error) = call_mock(settings, user_request("mock;fault=stall;after=2", "hi")).await;
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
    assert_eq!(error.code().as_str(), "upstream_error");
    assert!(matches!(error, LlmError::Upstream(_)));
    assert!(error.detail().contains("could not reach"), "{error:?}");
    assert!(error.detail().ends_with("(after 3 attempts)"), "{error:?}");
}

// Against small fake upstreams that quote the request back, as real ones do.

mod scrub;

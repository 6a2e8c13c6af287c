//! Error details against upstreams that quote the request back: one line,
//! without the key, the messages or the tool arguments.

use super::*;

/// Serves `router` on a free port for the rest of the test.
async fn fake_upstream(router: axum::Router) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // The test's runtime stops the server when the test ends.
    tokio_util::task::TaskTracker::new().spawn(async move { axum::serve(listener, router).await });
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
        detail.starts_with(
            "the upstream answered HTTP 400 Bad Request: Bad request.  Authorization: Bearer ***"
        ),
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
        let Probe::Misconfigured(message) = probe(format!("http://{addr}/{path}/v1")).await else {
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

//! Speaks HTTP to a real mock-llm server and checks the OpenAI wire protocol and the faults.
#![expect(
    clippy::unwrap_used,
    reason = "test helpers outside #[test] functions fail the test by panicking"
)]

use std::time::{Duration, Instant};

use mock_llm::{ChatRequest, MockLlm, Options, reply_words, tool_call_plan};
use serde_json::{Value, json};
use tokio::task::JoinSet;
use tokio::time::timeout;

// Bounds waits that should end almost at once, so a bug fails the test instead of hanging it.
const PATIENCE: Duration = Duration::from_secs(10);

/// A client for the plain-HTTP mock: reqwest brings no crypto provider of its
/// own (no aws-lc), so ring is installed as the process's default first.
fn client() -> reqwest::Client {
    // Fails only when already installed, by this or another test.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

async fn spawn_app() -> MockLlm {
    MockLlm::start().await.unwrap()
}

fn chat(model: &str, user: &str, stream: bool) -> Value {
    json!({
        "model": model,
        "messages": [
            {"role": "system", "content": "You are a test."},
            {"role": "user", "content": user}
        ],
        "stream": stream,
    })
}

fn profile_tool() -> Value {
    json!({"type": "function", "function": {
        "name": "update_profile",
        "description": "Set one field of the user's profile",
        "parameters": {
            "type": "object",
            "properties": {
                "field": {"type": "string", "enum": ["name", "email"]},
                "value": {"type": "string"}
            },
            "required": ["field", "value"]
        }
    }})
}

async fn post(llm: &MockLlm, body: &Value, mock: Option<&str>) -> reqwest::Response {
    let mut request = client()
        .post(format!("{}/chat/completions", llm.base_url()))
        .bearer_auth("sk-test")
        .json(body);
    if let Some(mock) = mock {
        request = request.header("x-mock", mock);
    }
    request.send().await.unwrap()
}

/// Reads SSE events and checks that each is framed exactly as `data: <payload>\n\n`.
struct Events {
    response: reqwest::Response,
    buf: Vec<u8>,
}

impl Events {
    fn new(response: reqwest::Response) -> Self {
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        assert_eq!(response.headers()["cache-control"], "no-cache");
        Self {
            response,
            buf: Vec::new(),
        }
    }

    /// The next event's payload, `Ok(None)` at a clean end, `Err` if the body read fails.
    async fn next(&mut self) -> Result<Option<String>, reqwest::Error> {
        loop {
            if let Some(end) = self.buf.windows(2).position(|pair| pair == b"\n\n") {
                let event = String::from_utf8(self.buf[..end].to_vec()).unwrap();
                self.buf.drain(..end + 2);
                assert!(!event.contains('\n'), "multi-line event {event:?}");
                let payload = event.strip_prefix("data: ").unwrap();
                return Ok(Some(payload.to_owned()));
            }
            match self.response.chunk().await? {
                Some(chunk) => self.buf.extend_from_slice(&chunk),
                None => {
                    assert!(self.buf.is_empty(), "partial event at end of body");
                    return Ok(None);
                }
            }
        }
    }

    async fn next_json(&mut self) -> Value {
        let payload = self.next().await.unwrap().unwrap();
        serde_json::from_str(&payload).unwrap()
    }

    async fn expect_done_then_end(&mut self) {
        assert_eq!(self.next().await.unwrap().as_deref(), Some("[DONE]"));
        assert_eq!(self.next().await.unwrap(), None);
    }
}

fn delta(chunk: &Value) -> &Value {
    &chunk["choices"][0]["delta"]
}

fn finish_reason(chunk: &Value) -> &Value {
    &chunk["choices"][0]["finish_reason"]
}

#[tokio::test]
async fn text_stream_has_the_deltas_then_stop_usage_and_done() {
    let llm = spawn_app().await;
    let mut body = chat("mock;deltas=5", "Hello   there world", true);
    body["stream_options"] = json!({"include_usage": true});
    let mut events = Events::new(post(&llm, &body, None).await);

    let first = events.next_json().await;
    assert_eq!(first["id"], "chatcmpl-1");
    assert_eq!(first["object"], "chat.completion.chunk");
    assert!(first["created"].as_u64().unwrap() > 1_700_000_000);
    assert_eq!(first["model"], "mock;deltas=5");
    assert_eq!(delta(&first), &json!({"role": "assistant", "content": ""}));
    assert_eq!(finish_reason(&first), &Value::Null);
    // OpenAI sends `usage: null` on every chunk when usage was requested.
    assert_eq!(first.get("usage"), Some(&Value::Null));

    let mut content = String::new();
    for _ in 0..5 {
        let chunk = events.next_json().await;
        assert_eq!(chunk["id"], "chatcmpl-1");
        assert_eq!(finish_reason(&chunk), &Value::Null);
        content.push_str(delta(&chunk)["content"].as_str().unwrap());
    }
    let request: ChatRequest = serde_json::from_value(body).unwrap();
    assert_eq!(content, reply_words(&request, 5).join(" "));
    assert_eq!(content, "Mock reply to: Hello there");

    let stop = events.next_json().await;
    assert_eq!(
        stop["choices"][0],
        json!({"index": 0, "delta": {}, "finish_reason": "stop"})
    );
    let usage = events.next_json().await;
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(
        usage["usage"],
        json!({"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12})
    );
    events.expect_done_then_end().await;
    assert_eq!(llm.requests(), 1);
}

#[tokio::test]
async fn usage_and_done_are_optional_and_the_header_wins() {
    let llm = spawn_app().await;
    let mut body = chat("mock;deltas=9", "hi", true);
    body["stream_options"] = json!({"include_usage": true});
    let mut events = Events::new(post(&llm, &body, Some("deltas=2;usage=0;done=0")).await);
    let first = events.next_json().await;
    assert!(first.get("usage").is_none());
    assert_eq!(delta(&events.next_json().await)["content"], "Mock ");
    assert_eq!(delta(&events.next_json().await)["content"], "reply");
    assert_eq!(finish_reason(&events.next_json().await), "stop");
    assert_eq!(events.next().await.unwrap(), None);

    // Without include_usage there is no usage chunk even with usage=1.
    let mut events = Events::new(post(&llm, &chat("mock;deltas=1", "hi", true), None).await);
    assert!(events.next_json().await.get("usage").is_none());
    assert_eq!(delta(&events.next_json().await)["content"], "Mock");
    assert_eq!(finish_reason(&events.next_json().await), "stop");
    events.expect_done_then_end().await;
}

#[tokio::test]
async fn tool_call_stream_assembles_to_the_planned_call() {
    let llm = spawn_app().await;
    let mut body = chat("mock", "  Ada Lovelace ", true);
    body["tools"] = json!([profile_tool()]);
    let mut events = Events::new(post(&llm, &body, None).await);

    let first = events.next_json().await;
    assert_eq!(
        delta(&first),
        &json!({"role": "assistant", "content": null, "tool_calls": [{"index": 0,
                "id": "call_1", "type": "function",
                "function": {"name": "update_profile", "arguments": ""}}]})
    );
    let mut arguments = String::new();
    let mut pieces = 0;
    let finish = loop {
        let chunk = events.next_json().await;
        if !finish_reason(&chunk).is_null() {
            break chunk;
        }
        let call = &delta(&chunk)["tool_calls"][0];
        assert_eq!(call["index"], 0);
        arguments.push_str(call["function"]["arguments"].as_str().unwrap());
        pieces += 1;
    };
    assert_eq!(
        finish["choices"][0],
        json!({"index": 0, "delta": {}, "finish_reason": "tool_calls"})
    );
    events.expect_done_then_end().await;

    assert!(pieces > 1, "arguments came in one piece");
    let arguments: Value = serde_json::from_str(&arguments).unwrap();
    assert_eq!(arguments, json!({"field": "name", "value": "Ada Lovelace"}));
    let request: ChatRequest = serde_json::from_value(body).unwrap();
    assert_eq!(tool_call_plan(&request).unwrap().arguments, arguments);
}

#[tokio::test]
async fn after_a_tool_result_the_reply_is_text_starting_with_noted() {
    let llm = spawn_app().await;
    let body = json!({
        "model": "mock;deltas=3",
        "stream": true,
        "tools": [profile_tool()],
        "messages": [
            {"role": "user", "content": "Ada"},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1",
             "type": "function", "function": {"name": "update_profile",
             "arguments": "{\"field\":\"name\",\"value\":\"Ada\"}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "{\"ok\":true}"}
        ]
    });
    let mut events = Events::new(post(&llm, &body, None).await);
    assert_eq!(delta(&events.next_json().await)["content"], "");
    let mut content = String::new();
    for _ in 0..3 {
        content.push_str(
            delta(&events.next_json().await)["content"]
                .as_str()
                .unwrap(),
        );
    }
    assert_eq!(content, "Noted. lorem ipsum");
    assert_eq!(finish_reason(&events.next_json().await), "stop");
    events.expect_done_then_end().await;
}

#[tokio::test]
async fn non_streaming_returns_a_whole_completion() {
    let llm = spawn_app().await;
    let response = post(&llm, &chat("mock;deltas=4", "hi there", false), None).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    let text: Value = response.json().await.unwrap();
    assert_eq!(text["object"], "chat.completion");
    assert_eq!(
        text["choices"][0],
        json!({"index": 0, "finish_reason": "stop",
               "message": {"role": "assistant", "content": "Mock reply to: hi"}})
    );
    assert_eq!(
        text["usage"],
        json!({"prompt_tokens": 6, "completion_tokens": 4, "total_tokens": 10})
    );

    let mut body = chat("mock", "a@example.com", false);
    body["tools"] = json!([profile_tool()]);
    let call: Value = post(&llm, &body, None).await.json().await.unwrap();
    let choice = &call["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    assert_eq!(choice["message"]["content"], Value::Null);
    let tool_call = &choice["message"]["tool_calls"][0];
    assert_eq!(tool_call["id"], "call_2");
    assert_eq!(tool_call["function"]["name"], "update_profile");
    let arguments: Value =
        serde_json::from_str(tool_call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(
        arguments,
        json!({"field": "name", "value": "a@example.com"})
    );
}

#[tokio::test]
async fn status_faults_send_openai_error_bodies() {
    let llm = spawn_app().await;
    let response = post(&llm, &chat("mock;fault=500", "hi", true), None).await;
    assert_eq!(response.status(), 500);
    assert_eq!(response.headers()["content-type"], "application/json");
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"]["type"], "server_error");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("injected")
    );

    let response = post(&llm, &chat("mock", "hi", true), Some("fault=429")).await;
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "0");
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"]["code"], "rate_limit_exceeded");
    assert_eq!(llm.requests(), 2);
}

#[tokio::test]
async fn invalid_options_and_bodies_are_bad_requests() {
    let llm = spawn_app().await;
    let response = post(&llm, &chat("mock;deltas=lots", "hi", true), None).await;
    assert_eq!(response.status(), 400);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"]["type"], "invalid_request_error");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("deltas=lots")
    );

    let response = post(&llm, &chat("mock", "hi", true), Some("tools=maybe")).await;
    assert_eq!(response.status(), 400);

    let response = post(&llm, &json!({"model": "mock"}), None).await;
    assert_eq!(response.status(), 400);
    let error: Value = response.json().await.unwrap();
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("messages")
    );
}

#[tokio::test]
async fn reset_aborts_the_connection_after_k_chunks() {
    let llm = spawn_app().await;
    for (model, after) in [("mock", 0), ("mock", 3), ("mock;deltas=2000", 1500)] {
        let mock = format!("fault=reset;after={after}");
        let response = post(&llm, &chat(model, "hi", true), Some(&mock)).await;
        let mut events = Events::new(response);
        for _ in 0..after {
            events.next_json().await;
        }
        assert!(events.next().await.is_err(), "the body ended cleanly");
    }

    let response = post(&llm, &chat("mock", "hi", false), Some("fault=reset")).await;
    assert_eq!(response.status(), 200);
    assert!(response.bytes().await.is_err(), "the body ended cleanly");
}

#[tokio::test]
async fn malformed_sends_an_unparsable_data_line() {
    let llm = spawn_app().await;
    let response = post(&llm, &chat("mock;fault=malformed", "hi", true), None).await;
    let mut events = Events::new(response);
    events.next_json().await;
    events.next_json().await;
    let payload = events.next().await.unwrap().unwrap();
    assert_eq!(payload, "{not json");
    assert!(serde_json::from_str::<Value>(&payload).is_err());
    assert_eq!(events.next().await.unwrap(), None);
}

#[tokio::test]
async fn fail_first_fails_exactly_the_first_n_per_key() {
    let llm = spawn_app().await;
    let body = chat("mock;fail_first=2", "hi", false);
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(post(&llm, &body, None).await.status().as_u16());
    }
    assert_eq!(statuses, [500, 500, 200]);

    // The same options in the header are a different option string, so a fresh counter.
    let response = post(&llm, &chat("mock", "hi", false), Some("fail_first=1")).await;
    assert_eq!(response.status(), 500);

    // x-mock-key groups requests whatever their options.
    let client = client();
    let mut keyed = Vec::new();
    for model in ["mock;fail_first=1", "mock;fail_first=1;deltas=2"] {
        let response = client
            .post(format!("{}/chat/completions", llm.base_url()))
            .header("x-mock-key", "retry-test")
            .json(&chat(model, "hi", false))
            .send()
            .await
            .unwrap();
        keyed.push(response.status().as_u16());
    }
    assert_eq!(keyed, [500, 200]);
    assert_eq!(llm.requests(), 6);
}

#[tokio::test]
async fn stall_sends_k_chunks_then_nothing_until_the_client_leaves() {
    let llm = spawn_app().await;
    let response = post(&llm, &chat("mock", "hi", true), Some("fault=stall;after=2")).await;
    let mut events = Events::new(response);
    events.next_json().await;
    events.next_json().await;
    let nothing = timeout(Duration::from_millis(300), events.next()).await;
    assert!(nothing.is_err(), "a stalled stream sent {nothing:?}");
    assert_eq!(llm.open_streams(), 1);

    drop(events);
    timeout(PATIENCE, llm.wait_for_open_streams(0))
        .await
        .unwrap();
}

#[tokio::test]
async fn shutdown_aborts_open_streams_and_returns() {
    let llm = spawn_app().await;
    let response = post(&llm, &chat("mock", "hi", true), Some("fault=stall;after=1")).await;
    let mut events = Events::new(response);
    events.next_json().await;
    timeout(PATIENCE, llm.shutdown()).await.unwrap();
    assert!(events.next().await.is_err(), "the body ended cleanly");
}

#[tokio::test]
async fn headers_come_at_once_then_events_are_paced() {
    let llm = spawn_app().await;
    let started = Instant::now();
    let model = "mock;deltas=3;pace_ms=40;ttft_ms=600";
    let response = post(&llm, &chat(model, "hi", true), None).await;
    // Headers before time-to-first-token, as a real streaming upstream sends them.
    assert!(started.elapsed() < Duration::from_millis(500));
    let mut events = Events::new(response);
    let mut count = 0;
    while events.next().await.unwrap().is_some() {
        count += 1;
    }
    // role, 3 deltas, stop, [DONE]: the first after ttft, each later one after pace.
    assert_eq!(count, 6);
    assert!(started.elapsed() >= Duration::from_millis(600 + 5 * 40));
}

#[tokio::test]
async fn records_requests_bodies_and_authorization() {
    let llm = spawn_app().await;
    let body = chat("mock", "remember me", false);
    post(&llm, &body, None).await;
    post(&llm, &chat("mock;fault=500", "again", false), None).await;
    assert_eq!(llm.requests(), 2);
    let bodies = llm.request_bodies();
    assert_eq!(bodies.len(), 2);
    assert_eq!(bodies[0], body);
    assert_eq!(llm.authorizations(), ["Bearer sk-test", "Bearer sk-test"]);

    let quiet = MockLlm::start_with(Options {
        record_bodies: false,
    })
    .await
    .unwrap();
    post(&quiet, &body, None).await;
    assert_eq!(quiet.requests(), 1);
    assert!(quiet.request_bodies().is_empty());
    assert!(quiet.authorizations().is_empty());
}

#[tokio::test]
async fn models_lists_mock() {
    let llm = spawn_app().await;
    // Clients probe it at start-up, with their key, and read it as OpenAI's list.
    let response = client()
        .get(format!("{}/models", llm.base_url()))
        .bearer_auth("sk-test")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "application/json"
    );
    let models: Value = response.json().await.unwrap();
    assert_eq!(models["object"], "list");
    assert_eq!(models["data"].as_array().map(Vec::len), Some(1));
    assert_eq!(models["data"][0]["id"], "mock");
    assert_eq!(models["data"][0]["object"], "model");
    assert!(models["data"][0]["created"].is_u64());
    assert!(models["data"][0]["owned_by"].is_string());
    assert_eq!(llm.requests(), 0, "listing models is not a completion");
    assert!(llm.base_url().starts_with("http://127.0.0.1:"));
    assert_eq!(llm.addr().ip().to_string(), "127.0.0.1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_many_concurrent_paced_streams() {
    const STREAMS: usize = 300;
    let llm = spawn_app().await;
    let client = client();
    let url = format!("{}/chat/completions", llm.base_url());
    let mut tasks = JoinSet::new();
    for _ in 0..STREAMS {
        let request = client
            .post(&url)
            .json(&chat("mock;deltas=16;pace_ms=10", "hi", true));
        tasks.spawn(async move {
            let mut events = Events::new(request.send().await.unwrap());
            let mut count = 0;
            while events.next().await.unwrap().is_some() {
                count += 1;
            }
            count
        });
    }
    let counts = timeout(PATIENCE * 3, tasks.join_all()).await.unwrap();
    assert!(counts.iter().all(|count| *count == 16 + 3));
    assert_eq!(counts.len(), STREAMS);
    assert_eq!(llm.requests(), STREAMS as u64);
    timeout(PATIENCE, llm.wait_for_open_streams(0))
        .await
        .unwrap();
}

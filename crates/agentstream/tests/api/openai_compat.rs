//! The OpenAI-compatible API's protocol, byte by byte: models, chunks,
//! completions, conversations, refusals and failures in OpenAI's shape.

use futures_util::StreamExt;
use mock_llm::MockLlm;
use serde_json::{Value, json};

use crate::{both, helpers::*};

/// A client that sends `key` on every request.
fn client_with(key: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert("authorization", format!("Bearer {key}").parse().unwrap());
    client_builder().default_headers(headers).build().unwrap()
}

fn user(text: &str) -> Value {
    json!({ "role": "user", "content": text })
}

/// The `data` of each SSE message of a body, as sent.
fn datas(body: &str) -> Vec<String> {
    body.split("\n\n")
        .filter(|message| !message.is_empty())
        .map(|message| {
            assert!(
                message.starts_with("data: ") && !message.contains("\nid:"),
                "only data lines: {message:?}"
            );
            message["data: ".len()..].to_owned()
        })
        .collect()
}

/// Asserts an OpenAI error body with `status` and `code`; returns it.
async fn openai_error(response: reqwest::Response, status: u16, code: &str) -> Value {
    let (got, body) = status_and_body(response).await;
    assert_eq!(got, status, "{body}");
    let error = &body["error"];
    assert_eq!(error["code"], code, "{body}");
    let keys: Vec<&String> = error.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["code", "message", "param", "type"], "{body}");
    assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()));
    body
}

/// Models are the agents; a stream is chunks with the role first, the text,
/// the finish reason, the usage chunk and `[DONE]`; the history is stored,
/// and the streamed text is the stored reply.
async fn chunks_and_history(backend: Backend) {
    let app = spawn_app(backend).await;
    let models: Value = app.get_json("/v1/models").await;
    assert_eq!(models["object"], "list");
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["chat", "onboarding"]);
    assert_eq!(models["data"][0]["object"], "model");
    assert_eq!(models["data"][0]["owned_by"], "agentstream");
    assert_eq!(app.get_json("/v1/models/chat").await["id"], "chat");

    let history = json!([
        { "role": "system", "content": "Ignored." },
        user("Hi"),
        {
            "role": "assistant", "content": null,
            "tool_calls": [{ "id": "call_a", "type": "function",
                "function": { "name": "lookup", "arguments": "{\"q\":1}" } }]
        },
        { "role": "tool", "tool_call_id": "call_a", "content": "{\"found\":true}" },
        { "role": "assistant", "content": [{ "type": "text", "text": "Found it." }] },
        user("What about my profile?"),
    ]);
    let response = app
        .post_json(
            "/v1/chat/completions",
            json!({
                "model": "chat", "messages": history, "stream": true,
                "stream_options": { "include_usage": true }, "temperature": 0.2,
            }),
        )
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let run = run_id_of(&response);
    let conversation = response.headers()["x-conversation-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let body = response.text().await.unwrap();
    let datas = datas(&body);
    assert_eq!(datas.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = datas[..datas.len() - 1]
        .iter()
        .map(|data| serde_json::from_str(data).unwrap())
        .collect();
    for chunk in &chunks {
        assert_eq!(chunk["id"], format!("chatcmpl-{run}"));
        assert_eq!(chunk["object"], "chat.completion.chunk");
        assert_eq!(chunk["model"], "chat");
        assert!(chunk["created"].as_i64().unwrap() > 1_700_000_000);
    }
    let (usage, chunks) = chunks.split_last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert!(usage["usage"]["total_tokens"].as_u64().unwrap() > 0);
    let (last, chunks) = chunks.split_last().unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], "stop");
    assert_eq!(last["choices"][0]["delta"], json!({}));
    assert_eq!(
        chunks[0]["choices"][0]["delta"],
        json!({ "role": "assistant", "content": "" })
    );
    let mut text = String::new();
    for chunk in chunks {
        assert_eq!(chunk["usage"], Value::Null);
        assert_eq!(chunk["choices"][0]["finish_reason"], Value::Null);
        text.push_str(chunk["choices"][0]["delta"]["content"].as_str().unwrap());
    }
    // The agent called get_profile: its call and result stay on the server.
    assert!(!body.contains("tool_calls") && !body.contains("get_profile"));
    let stored = transcript(&app, &conversation).await;
    assert_eq!(
        stored[..5],
        [
            json!(["user", "Hi", "complete", null, null]),
            json!([
                "assistant", "", "complete",
                [{ "id": "call_a", "name": "lookup", "arguments": "{\"q\":1}" }], null
            ]),
            json!(["tool", "{\"found\":true}", "complete", null, "call_a"]),
            json!(["assistant", "Found it.", "complete", null, null]),
            json!(["user", "What about my profile?", "complete", null, null]),
        ]
    );
    let replies: Vec<&str> = stored[5..]
        .iter()
        .filter(|m| m[0] == "assistant" && m[1] != "")
        .map(|m| m[1].as_str().unwrap())
        .collect();
    assert_eq!(text, replies.join("\n\n"));
    assert!(stored[5..].iter().any(|m| m[0] == "tool"), "{stored:#?}");
    app.stop().await;
}
both!(chunks_and_history);

/// Without `stream`, one `chat.completion`; a conversation ID (header or
/// metadata) continues the conversation with only the last message.
async fn completions_continue_conversations(backend: Backend) {
    let app = spawn_app(backend).await;
    let response = app
        .post_json(
            "/v1/chat/completions",
            json!({ "model": "chat", "messages": [user("Hello")], "stream": false }),
        )
        .await;
    assert_eq!(response.status(), 200);
    let run = run_id_of(&response);
    let conversation = response.headers()["x-conversation-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let completion: Value = response.json().await.unwrap();
    assert_eq!(completion["id"], format!("chatcmpl-{run}"));
    assert_eq!(completion["object"], "chat.completion");
    assert_eq!(completion["choices"][0]["message"]["role"], "assistant");
    assert_eq!(completion["choices"][0]["finish_reason"], "stop");
    assert!(completion["usage"]["total_tokens"].as_u64().unwrap() > 0);
    let first = completion["choices"][0]["message"]["content"].clone();

    let by_header = app
        .client
        .post(app.url("/v1/chat/completions"))
        .header("x-conversation-id", &conversation)
        .json(&json!({ "model": "chat", "messages": [user("not read"), user("Again")] }))
        .send()
        .await
        .unwrap();
    assert_eq!(
        by_header.headers()["x-conversation-id"],
        conversation.as_str()
    );
    let second: Value = by_header.json().await.unwrap();
    let by_metadata = app
        .post_json(
            "/v1/chat/completions",
            json!({ "model": "chat", "messages": [user("Third")],
                    "metadata": { "conversation_id": conversation } }),
        )
        .await;
    assert_eq!(
        by_metadata.headers()["x-conversation-id"],
        conversation.as_str()
    );
    let third: Value = by_metadata.json().await.unwrap();
    let stored: Vec<Value> = transcript(&app, &conversation)
        .await
        .into_iter()
        .map(|m| json!([m[0], m[1]]))
        .collect();
    let reply = |c: &Value| c["choices"][0]["message"]["content"].clone();
    assert_eq!(
        stored,
        [
            json!(["user", "Hello"]),
            json!(["assistant", first]),
            json!(["user", "Again"]),
            json!(["assistant", reply(&second)]),
            json!(["user", "Third"]),
            json!(["assistant", reply(&third)]),
        ]
    );
    app.stop().await;
}
both!(completions_continue_conversations);

/// Every refusal is in OpenAI's shape with the native status; the
/// conversation named is echoed; another user's conversation is absent.
async fn refusals(backend: Backend) {
    let app = spawn_app(backend).await;
    let alice_key = app.state.store().create_api_key("alice").await.unwrap().key;
    let bob_key = app.state.store().create_api_key("bob").await.unwrap().key;
    let (alice, bob) = (client_with(&alice_key), client_with(&bob_key));
    let post = |client: &reqwest::Client, body: Value| {
        client
            .post(app.url("/v1/chat/completions"))
            .json(&body)
            .send()
    };
    let hello = json!([user("hello")]);

    let anonymous = post(&app.client, json!({ "model": "chat", "messages": hello }))
        .await
        .unwrap();
    assert_eq!(anonymous.headers()["www-authenticate"], "Bearer");
    let body = openai_error(anonymous, 401, "invalid_api_key").await;
    assert_eq!(body["error"]["type"], "authentication_error");
    let models = app.client.get(app.url("/v1/models")).send().await.unwrap();
    openai_error(models, 401, "invalid_api_key").await;

    let unknown = post(&alice, json!({ "model": "gpt-4", "messages": hello }))
        .await
        .unwrap();
    let body = openai_error(unknown, 404, "model_not_found").await;
    assert_eq!(body["error"]["param"], "model");
    assert_eq!(body["error"]["type"], "invalid_request_error");
    let model = alice.get(app.url("/v1/models/gpt-4")).send().await.unwrap();
    openai_error(model, 404, "model_not_found").await;

    for (body, status, code, param) in [
        (
            json!({ "model": "chat", "messages": hello,
                    "tools": [{ "type": "function", "function": { "name": "f" } }] }),
            400,
            "tools_not_supported",
            "tools",
        ),
        (
            json!({ "model": "chat", "messages": hello, "functions": [{ "name": "f" }] }),
            400,
            "tools_not_supported",
            "functions",
        ),
        (
            json!({ "model": "chat", "messages": hello, "tool_choice": "required" }),
            400,
            "tools_not_supported",
            "tool_choice",
        ),
        (
            json!({ "model": "chat", "messages": hello, "n": 2 }),
            422,
            "invalid_request",
            "n",
        ),
        (
            json!({ "model": "chat", "messages": hello,
                    "response_format": { "type": "json_object" } }),
            422,
            "invalid_request",
            "response_format",
        ),
        (
            json!({ "model": "chat", "messages": [user("hi"), { "role": "assistant", "content": "yes" }] }),
            422,
            "invalid_request",
            "messages",
        ),
        (
            json!({ "model": "chat", "messages": [] }),
            422,
            "invalid_request",
            "messages",
        ),
        (
            json!({ "model": "chat", "messages": [{ "role": "user",
                    "content": [{ "type": "image_url", "image_url": { "url": "x" } }] }] }),
            422,
            "invalid_request",
            "messages",
        ),
        (
            json!({ "model": "chat", "messages": [user(" ")] }),
            422,
            "invalid_request",
            "messages",
        ),
        (
            json!({ "model": "chat", "messages": [user(&"x".repeat(40_000))] }),
            413,
            "payload_too_large",
            "messages",
        ),
    ] {
        let response = post(&alice, body.clone()).await.unwrap();
        assert!(response.headers().get("x-conversation-id").is_none());
        let error = openai_error(response, status, code).await;
        assert_eq!(error["error"]["param"], param, "{body}");
    }
    let not_json = alice
        .post(app.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body("{")
        .send()
        .await
        .unwrap();
    openai_error(not_json, 400, "bad_request").await;
    let no_type = alice
        .post(app.url("/v1/chat/completions"))
        .body("{}")
        .send()
        .await
        .unwrap();
    openai_error(no_type, 415, "unsupported_media_type").await;
    // serde reads a struct from an array of its fields in order, at any
    // depth: every object of the body must be an object.
    let object = "expected a JSON object";
    for (body, needle) in [
        (
            json!({ "model": "chat", "messages": [["user", "hi"]] }),
            object,
        ),
        (
            json!({ "model": "chat", "messages": [{ "role": "user", "content": [["text", "hi"]] }] }),
            object,
        ),
        (
            json!({ "model": "chat", "messages": [{ "role": "user", "content": 5 }] }),
            "messages[0].content: invalid type: integer `5`, expected a string, an array of content parts, or null",
        ),
        (
            json!({ "model": "chat", "messages": hello, "stream_options": [true] }),
            object,
        ),
        (
            json!({ "model": "chat", "messages": [
                { "role": "assistant", "tool_calls": [["call_1", { "name": "f" }]] }, user("hi")] }),
            object,
        ),
        (
            json!({ "model": "chat", "messages": [
                { "role": "assistant", "tool_calls": [{ "id": "call_1", "function": ["f", "{}"] }] },
                user("hi")] }),
            object,
        ),
    ] {
        let response = post(&alice, body.clone()).await.unwrap();
        assert!(response.headers().get("x-conversation-id").is_none());
        let error = openai_error(response, 422, "invalid_request").await;
        let message = error["error"]["message"].as_str().unwrap();
        assert!(message.contains(needle), "{body}: {message}");
    }

    // Alice's onboarding conversation: bob's requests find nothing, and a
    // model other than its agent is refused.
    let created: Value = alice
        .post(app.url("/v1/conversations"))
        .json(&json!({ "agent": "onboarding" }))
        .fetch_json()
        .await;
    let id = created["id"].as_str().unwrap();
    let absent = uuid::Uuid::now_v7().to_string();
    for (client, named, model, status, code) in [
        (&bob, id, "onboarding", 404, "not_found"),
        (&alice, absent.as_str(), "chat", 404, "not_found"),
        (&alice, id, "chat", 422, "invalid_request"),
        (&alice, "not-a-uuid", "chat", 400, "bad_request"),
    ] {
        let response = client
            .post(app.url("/v1/chat/completions"))
            .header("x-conversation-id", named)
            .json(&json!({ "model": model, "messages": hello }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.headers()["x-conversation-id"], named);
        openai_error(response, status, code).await;
    }
    let by_metadata = post(
        &bob,
        json!({ "model": "onboarding", "messages": hello, "metadata": { "conversation_id": id } }),
    )
    .await
    .unwrap();
    assert_eq!(by_metadata.headers()["x-conversation-id"], id);
    openai_error(by_metadata, 404, "not_found").await;

    // Refused before any handler runs, while the database is down: in
    // OpenAI's shape too, with `Retry-After` (the SDKs retry those).
    app.state.store().set_down(true);
    let refused = post(&alice, json!({ "model": "chat", "messages": hello }))
        .await
        .unwrap();
    assert_eq!(refused.headers()["retry-after"], "1");
    let body = openai_error(refused, 503, "unavailable").await;
    assert_eq!(body["error"]["type"], "server_error");
    let models = alice.get(app.url("/v1/models")).send().await.unwrap();
    openai_error(models, 503, "unavailable").await;
    app.state.store().set_down(false);
    app.stop().await;
}
both!(refusals);

/// The next SSE message's data of a response being read.
async fn next_data(
    body: &mut (impl futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Unpin),
    buffer: &mut String,
) -> Option<String> {
    loop {
        if let Some(end) = buffer.find("\n\n") {
            let message: String = buffer.drain(..end + 2).collect();
            return Some(
                message
                    .trim_end()
                    .strip_prefix("data: ")
                    .unwrap()
                    .to_owned(),
            );
        }
        let bytes = body.next().await?.unwrap();
        buffer.push_str(std::str::from_utf8(&bytes).unwrap());
    }
}

/// A busy conversation is 409 with `x-should-retry: false`; a run
/// cancelled mid-stream ends its stream with an error line and no `[DONE]`.
async fn busy_and_cancelled(backend: Backend) {
    let app = spawn_app_with(backend, |config| config.scripted_delay_ms = 1_000).await;
    let response = app
        .post_json(
            "/v1/chat/completions",
            json!({ "model": "chat", "messages": [user("Hello")], "stream": true }),
        )
        .await;
    assert_eq!(response.status(), 200);
    let run = run_id_of(&response);
    let conversation = response.headers()["x-conversation-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let mut body = response.bytes_stream();
    let mut buffer = String::new();
    let first: Value =
        serde_json::from_str(&next_data(&mut body, &mut buffer).await.unwrap()).unwrap();
    assert_eq!(first["choices"][0]["delta"]["role"], "assistant");

    let busy = app
        .client
        .post(app.url("/v1/chat/completions"))
        .header("x-conversation-id", &conversation)
        .json(&json!({ "model": "chat", "messages": [user("Again")] }))
        .send()
        .await
        .unwrap();
    assert_eq!(busy.headers()["x-should-retry"], "false");
    assert_eq!(busy.headers()["x-conversation-id"], conversation.as_str());
    let error = openai_error(busy, 409, "conversation_busy").await;
    assert_eq!(error["error"]["type"], "invalid_request_error");

    let cancel = app
        .client
        .post(app.url(&format!("/v1/runs/{run}/cancel")))
        .send()
        .await
        .unwrap();
    assert_eq!(cancel.status(), 202);
    let mut rest = Vec::new();
    while let Some(data) = next_data(&mut body, &mut buffer).await {
        rest.push(data);
    }
    let last: Value = serde_json::from_str(rest.last().unwrap()).unwrap();
    assert_eq!(last["error"]["code"], "run_cancelled", "{rest:?}");
    assert!(!rest.iter().any(|data| data == "[DONE]"));
    app.stop().await;
}
both!(busy_and_cancelled);

/// A model server that fails mid-reply: the stream's chunks so far, then
/// an error line and the end; without streaming, 502 not to be retried.
async fn upstream_failure(backend: Backend) {
    let mock = MockLlm::start().await.unwrap();
    let config = format!(
        r#"
[providers.mock]
kind = "openai"
base_url = "{}"

[agents.flaky]
provider = "mock"
model = "mock;tools=never;fault=reset;after=3"
"#,
        mock.base_url()
    );
    let (mut app, _dir) = spawn_app_with_file(backend, &config, |_| {}).await;
    app.expect_log("run failed");
    let request = json!({ "model": "flaky", "messages": [user("hi")], "stream": true });
    let response = app.post_json("/v1/chat/completions", request).await;
    assert_eq!(response.status(), 200);
    let datas = datas(&response.text().await.unwrap());
    let error: Value = serde_json::from_str(datas.last().unwrap()).unwrap();
    assert_eq!(error["error"]["code"], "upstream_error", "{datas:?}");
    assert_eq!(error["error"]["type"], "server_error");
    assert!(!datas.iter().any(|data| data == "[DONE]"));
    let deltas = datas
        .iter()
        .filter(|data| data.contains("\"content\":\"") && !data.contains("\"content\":\"\""))
        .count();
    assert_eq!(deltas, 2, "{datas:?}");

    let request = json!({ "model": "flaky", "messages": [user("hi")] });
    let response = app.post_json("/v1/chat/completions", request).await;
    assert_eq!(response.headers()["x-should-retry"], "false");
    assert!(response.headers().get("x-conversation-id").is_some());
    openai_error(response, 502, "upstream_error").await;
    app.stop().await;
    mock.shutdown().await;
}
both!(upstream_failure);

/// Signed-in callers (JWTs) use the OpenAI routes as the native ones: a
/// token works, another subject's conversation is absent, a bad token is 401.
async fn jwt_callers(backend: Backend) {
    // An environment variable cargo sets for tests, standing in for a secret.
    const SECRET: &str = env!("CARGO_PKG_DESCRIPTION");
    let file = "[auth.jwt]\nsecret_env = \"CARGO_PKG_DESCRIPTION\"\n\
                issuer = \"https://id.test/\"\naudience = \"agentstream-test\"\n";
    let (app, _dir) = spawn_app_with_file(backend, file, |_| {}).await;
    let token = |sub: &str, secret: &str| {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let claims = json!({ "sub": sub, "iss": "https://id.test/",
                             "aud": "agentstream-test", "exp": now + 3600 });
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    };
    let request = |token: String, conversation: Option<&str>| {
        let mut request = app
            .client
            .post(app.url("/v1/chat/completions"))
            .bearer_auth(token)
            .json(&json!({ "model": "chat", "messages": [user("Hello")] }));
        if let Some(id) = conversation {
            request = request.header("x-conversation-id", id);
        }
        request.send()
    };
    let ada = request(token("ada", SECRET), None).await.unwrap();
    assert_eq!(ada.status(), 200);
    let conversation = ada.headers()["x-conversation-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let again = request(token("ada", SECRET), Some(&conversation))
        .await
        .unwrap();
    assert_eq!(again.status(), 200);
    let bob = request(token("bob", SECRET), Some(&conversation))
        .await
        .unwrap();
    openai_error(bob, 404, "not_found").await;
    let forged = request(token("ada", "not the secret"), None).await.unwrap();
    assert_eq!(
        forged.headers()["www-authenticate"],
        "Bearer error=\"invalid_token\""
    );
    let body = openai_error(forged, 401, "invalid_api_key").await;
    assert_eq!(body["error"]["message"], "invalid token");
    app.stop().await;
}
both!(jwt_callers);

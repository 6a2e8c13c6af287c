//! Bad input gets a clear 4xx with the JSON error body and writes nothing.

use serde_json::{Value, json};

use crate::{both, helpers::*};

/// Counts the rows bad requests must not add.
async fn row_counts(app: &TestApp) -> Vec<i64> {
    let mut counts = Vec::new();
    for table in [
        "conversations",
        "messages",
        "runs",
        "run_events",
        "tool_calls",
    ] {
        let sql = format!("SELECT COUNT(*) AS n FROM {table}");
        let row = sqlx::query(&sql).fetch_one(app.state.store().pool()).await;
        counts.push(sqlx::Row::get::<i64, _>(&row.unwrap(), "n"));
    }
    counts
}

async fn assert_error(response: reqwest::Response, status: u16, code: &str) -> String {
    assert_eq!(response.status(), status);
    assert_eq!(response.headers()["content-type"], "application/json");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], code, "{body}");
    let message = body["error"]["message"].as_str().unwrap().to_owned();
    assert!(!message.is_empty());
    message
}

async fn bad_input_is_refused_and_writes_nothing(backend: Backend) {
    let app = spawn_app(backend).await;
    let conversation = app.create_conversation("onboarding").await;
    let before = row_counts(&app).await;
    let runs = format!("/v1/conversations/{conversation}/runs");
    let send = |path: String, body: &'static str| {
        app.client
            .post(app.url(&path))
            .header("content-type", "application/json")
            .header("accept", "text/event-stream")
            .body(body)
            .send()
    };

    // Malformed JSON: 400.
    let message = assert_error(
        send(runs.clone(), "{\"input\": ").await.unwrap(),
        400,
        "bad_request",
    )
    .await;
    assert!(message.contains("JSON"), "{message}");
    for path in ["/api/v1/chat/stream", "/api/v1/chat/onboarding/stream"] {
        assert_error(
            send(path.to_owned(), "not json").await.unwrap(),
            400,
            "bad_request",
        )
        .await;
    }
    // A body that is not a JSON object: 422, though serde would read a
    // struct from an array of its fields in order.
    for (path, body) in [
        (runs.clone(), r#"["Ada"]"#),
        ("/api/v1/chat/stream".to_owned(), r#"["hello"]"#),
        ("/v1/conversations".to_owned(), r#"["chat"]"#),
    ] {
        let message = assert_error(
            send(path.clone(), body).await.unwrap(),
            422,
            "invalid_request",
        )
        .await;
        assert!(message.contains("JSON object"), "{path}: {message}");
    }
    // Empty message: 422.
    assert_error(
        send(runs.clone(), r#"{"input": "   "}"#).await.unwrap(),
        422,
        "invalid_request",
    )
    .await;
    assert_error(
        send("/api/v1/chat/stream".to_owned(), r#"{"message": ""}"#)
            .await
            .unwrap(),
        422,
        "invalid_request",
    )
    .await;
    // Missing or mistyped fields, unknown policies: 422.
    assert_error(
        send(runs.clone(), r#"{"text": "hi"}"#).await.unwrap(),
        422,
        "invalid_request",
    )
    .await;
    assert_error(
        send(runs.clone(), r#"{"input": 5}"#).await.unwrap(),
        422,
        "invalid_request",
    )
    .await;
    assert_error(
        send(runs.clone(), r#"{"input": "hi", "multitask": "sometimes"}"#)
            .await
            .unwrap(),
        422,
        "invalid_request",
    )
    .await;
    // Message over the limit (32 KiB): 413.
    let long = "x".repeat(32 * 1024 + 1);
    let response = app.post_json(&runs, json!({ "input": long })).await;
    let message = assert_error(response, 413, "payload_too_large").await;
    assert!(message.contains("32768"), "{message}");
    let response = app
        .post_json("/api/v1/chat/stream", json!({ "message": long }))
        .await;
    assert_error(response, 413, "payload_too_large").await;
    // A body over the body limit: 413.
    let huge = "y".repeat(300 * 1024);
    let response = app.post_json(&runs, json!({ "input": huge })).await;
    assert_error(response, 413, "payload_too_large").await;
    // Not JSON at all: 415.
    let response = app
        .client
        .post(app.url(&runs))
        .body("input=hi")
        .send()
        .await
        .unwrap();
    assert_error(response, 415, "unsupported_media_type").await;
    // Unknown conversation: 404, for a well-formed ID and for anything else.
    let unknown = uuid::Uuid::now_v7();
    let response = app
        .post_json(
            &format!("/v1/conversations/{unknown}/runs"),
            json!({ "input": "hi" }),
        )
        .await;
    assert_error(response, 404, "not_found").await;
    let response = app
        .post_json("/v1/conversations/not-an-id/runs", json!({ "input": "hi" }))
        .await;
    assert_error(response, 404, "not_found").await;
    let response = app
        .post_json(
            "/api/v1/chat/stream",
            json!({ "message": "hi", "conversation_id": unknown }),
        )
        .await;
    assert_error(response, 404, "not_found").await;
    // A chat conversation on the onboarding route: 422.
    let response = app
        .post_json(
            "/api/v1/chat/stream",
            json!({ "message": "hi", "conversation_id": conversation }),
        )
        .await;
    assert_error(response, 422, "invalid_request").await;
    // Unknown routes and methods, bad cursors.
    let response = app
        .client
        .get(app.url("/v1/nothing-here"))
        .send()
        .await
        .unwrap();
    assert_error(response, 404, "not_found").await;
    let response = app.client.put(app.url("/v1/profile")).send().await.unwrap();
    assert_error(response, 405, "method_not_allowed").await;
    let response = app
        .client
        .get(app.url(&format!("/v1/runs/{unknown}")))
        .send()
        .await
        .unwrap();
    assert_error(response, 404, "not_found").await;
    let response = app
        .client
        .get(app.url(&format!("/v1/runs/{unknown}/events")))
        .header("last-event-id", "seven")
        .send()
        .await
        .unwrap();
    assert_error(response, 400, "bad_request").await;
    let response = app
        .client
        .get(app.url("/v1/conversations?limit=0"))
        .send()
        .await
        .unwrap();
    assert_error(response, 422, "invalid_request").await;
    let response = app
        .post_json("/v1/conversations", json!({ "kind": "gossip" }))
        .await;
    assert_error(response, 422, "invalid_request").await;

    assert_eq!(row_counts(&app).await, before, "bad requests wrote nothing");
    app.stop().await;
}
both!(bad_input_is_refused_and_writes_nothing);

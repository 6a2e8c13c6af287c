//! `GET /openapi.json`: an OpenAPI 3.1 document that lists every route the
//! router serves, and only those, with their errors, security and streams.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::helpers::*;

/// The paths of every `.route("…", …)` in the HTTP module's source: the
/// router's routes, whatever file (or folder under it) they are added in.
fn routes_in_source() -> BTreeSet<String> {
    let mut dirs = vec![std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/http")];
    let mut files = Vec::new();
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                files.push(path);
            }
        }
    }
    let mut routes = BTreeSet::new();
    for file in files {
        let text = std::fs::read_to_string(file).unwrap();
        for piece in text.split(".route(").skip(1) {
            let literal = piece.trim_start();
            let Some(rest) = literal.strip_prefix('"') else {
                continue;
            };
            routes.insert(rest.split('"').next().unwrap().to_owned());
        }
    }
    routes
}

const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

#[tokio::test]
async fn the_document_is_openapi_3_1_and_lists_every_route() {
    let app = spawn_app(Backend::Sqlite).await;
    let response = app
        .client
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    let doc: Value = response.json().await.unwrap();
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1."),
        "{}",
        doc["openapi"]
    );

    let paths = doc["paths"].as_object().unwrap();
    let documented: BTreeSet<String> = paths.keys().cloned().collect();
    let routes = routes_in_source();
    assert!(routes.len() >= 17, "{routes:?}");
    assert_eq!(
        documented, routes,
        "documented paths vs the router's routes"
    );

    let schemas = doc["components"]["schemas"].as_object().unwrap();
    let responses = doc["components"]["responses"].as_object().unwrap();
    // Every reference resolves: a client generator (or schemathesis) skips
    // what it cannot resolve.
    let mut references = Vec::new();
    collect_refs(&doc, &mut references);
    assert!(!references.is_empty());
    for reference in &references {
        let resolved = reference
            .strip_prefix("#/components/schemas/")
            .map(|name| schemas.contains_key(name))
            .or_else(|| {
                reference
                    .strip_prefix("#/components/responses/")
                    .map(|name| responses.contains_key(name))
            });
        assert_eq!(resolved, Some(true), "{reference} does not resolve");
    }
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    for name in [
        "ErrorBody",
        "Event",
        "RunEvent",
        "SseMessage",
        "Run",
        "Conversation",
    ] {
        assert!(schemas.contains_key(name), "schema {name}");
    }
    // The agents' names are the valid `agent`s and `model`s.
    assert_eq!(
        schemas["CreateConversation"]["properties"]["agent"]["enum"],
        serde_json::json!(["chat", "onboarding", null])
    );
    assert_eq!(
        schemas["ChatCompletionRequest"]["properties"]["model"]["enum"],
        serde_json::json!(["chat", "onboarding"])
    );
    // Every event type of the stream is in the event union.
    let kinds: BTreeSet<&str> = schemas["Event"]["oneOf"]
        .as_array()
        .unwrap()
        .iter()
        .map(|variant| variant["properties"]["type"]["enum"][0].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        BTreeSet::from([
            "run.started",
            "delta",
            "reasoning.delta",
            "context.trimmed",
            "tool.call.delta",
            "tool.call",
            "tool.result",
            "tool.approval_requested",
            "tool.approval_decided",
            "message.completed",
            "error",
            "done"
        ])
    );

    let mut sse_operations = 0;
    for (path, item) in paths {
        for method in METHODS {
            let Some(operation) = item.get(method) else {
                continue;
            };
            let label = format!("{} {path}", method.to_uppercase());
            let statuses = operation["responses"].as_object().unwrap();
            assert!(
                statuses.keys().any(|s| s.starts_with('2')),
                "{label}: no 2xx"
            );
            // Each error refers to a reusable response whose body is the error
            // body: OpenAI's on the OpenAI-compatible routes.
            let error_body = if path == "/v1/chat/completions" || path.starts_with("/v1/models") {
                "#/components/schemas/OpenAiErrorBody"
            } else {
                "#/components/schemas/ErrorBody"
            };
            for (status, answer) in statuses.iter().filter(|(s, _)| s.as_str() >= "400") {
                let name = answer["$ref"]
                    .as_str()
                    .and_then(|r| r.strip_prefix("#/components/responses/"))
                    .unwrap_or_else(|| panic!("{label} {status}: {answer}"));
                assert_eq!(
                    responses[name]["content"]["application/json"]["schema"]["$ref"], error_body,
                    "{label} {status}"
                );
            }
            // The API's routes need a key: bearer security and a 401.
            if path.starts_with("/v1/") || path.starts_with("/api/v1/") {
                assert_eq!(
                    operation["security"][0]["bearer"],
                    Value::Array(vec![]),
                    "{label}"
                );
                assert!(statuses.contains_key("401"), "{label}: no 401");
                assert!(statuses.contains_key("503"), "{label}: no 503");
            }
            if statuses
                .get("200")
                .is_some_and(|ok| ok["content"].get("text/event-stream").is_some())
            {
                sse_operations += 1;
            }
            // A body of JSON has its 400, 413, 415 and 422.
            if operation.get("requestBody").is_some() {
                for status in ["400", "413", "415", "422"] {
                    assert!(statuses.contains_key(status), "{label}: no {status}");
                }
            }
        }
    }
    // create_run, stream_events, retry, the two seed routes, chat
    // completions and the AI SDK's chat and its resume.
    assert_eq!(sse_operations, 8);

    // Every documented operation is routed with its method: the answer is
    // never 405 nor the fallback's "route not found".
    let id = uuid::Uuid::now_v7().to_string();
    for (path, item) in paths {
        for method in METHODS.into_iter().filter(|m| item.get(*m).is_some()) {
            let url = app.url(&path.replace("{id}", &id));
            let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let response = app
                .client
                .request(method.clone(), &url)
                .send()
                .await
                .unwrap();
            let status = response.status();
            let body = response.text().await.unwrap_or_default();
            assert_ne!(status, 405, "{method} {path}: {body}");
            assert!(!body.contains("route not found"), "{method} {path}: {body}");
        }
    }
    app.stop().await;
}

/// Every `$ref` in `value`, at any depth.
fn collect_refs(value: &Value, into: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("$ref", Value::String(reference)) => into.push(reference.clone()),
                    _ => collect_refs(value, into),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|item| collect_refs(item, into)),
        _ => {}
    }
}

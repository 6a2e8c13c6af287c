//! The Vercel AI SDK's own code (the `ai` npm package, versions 6 and 5)
//! against `/v1/ai-sdk/chat`: its parser and schema, its message reader and
//! its chat engine (what `useChat` runs) read agentstream's UI message
//! streams, new, resumed, cancelled and failed
//! (`tests/ai_sdk/ui_stream_test.mjs`), with the README's client module;
//! the messages they build are compared here with the stored transcript.
//! The packages are pinned and installed once under `target/ai-sdk` by
//! `scripts/ai-sdk.sh`, which `scripts/test.sh` runs first.

use std::{path::PathBuf, sync::OnceLock};

use mock_llm::MockLlm;
use serde_json::{Value, json};

use crate::{both, helpers::*};

const README: &str = include_str!("../../../../README.md");

/// The folder of each major version of the package, installing the pinned
/// ones the first time (one install for every test of the run).
fn packages() -> &'static [(String, PathBuf)] {
    static PACKAGES: OnceLock<Vec<(String, PathBuf)>> = OnceLock::new();
    PACKAGES.get_or_init(|| {
        let output = std::process::Command::new(repo_root().join("scripts/ai-sdk.sh"))
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "scripts/ai-sdk.sh failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let packages: Vec<_> = String::from_utf8(output.stdout)
            .unwrap()
            .lines()
            .map(|line| {
                let (major, dir) = line.split_once(' ').unwrap();
                (major.to_owned(), PathBuf::from(dir))
            })
            .collect();
        let majors: Vec<&str> = packages.iter().map(|(major, _)| major.as_str()).collect();
        assert_eq!(majors, ["6", "5"]);
        packages
    })
}

/// Agents beside the built-in ones, on `mock-llm`: `slow` (a reply that
/// goes on for a minute), `long` (a few seconds), `flaky` (its model
/// server drops the connection mid-reply) and `thinker` (it reasons first).
fn config(base_url: &str, notes: &str) -> String {
    on_mock(
        base_url,
        &(crate::approvals::agent_with_note_tool("careful", notes, 3600)
            + r#"
[agents.slow]
provider = "mock"
model = "mock;tools=never;deltas=3000;pace_ms=20"

[agents.long]
provider = "mock"
model = "mock;tools=never;deltas=300;pace_ms=20"

[agents.flaky]
provider = "mock"
model = "mock;tools=never;fault=reset;after=3"

[agents.thinker]
provider = "mock"
model = "mock;tools=never;reasoning=5;deltas=3"
"#),
    )
}

/// The README's client module (the first `js` block of its "AI SDK"
/// section), written beside the package so that it imports it.
fn readme_client(package: &std::path::Path) -> PathBuf {
    let section = README
        .split("\n## AI SDK")
        .nth(1)
        .expect("README: a section \"AI SDK …\"");
    let block = section
        .split("```js\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("README: a js block in the AI SDK section");
    let path = package.join("readme-chat-client.mjs");
    std::fs::write(&path, block).unwrap();
    path
}

/// What the package's chat engine and parser saw, for each scenario.
async fn run_node(app: &TestApp, key: &str, major: &str, package: &std::path::Path) -> Value {
    let script = repo_root().join("crates/agentstream/tests/ai_sdk/ui_stream_test.mjs");
    let output = tokio::process::Command::new("node")
        .arg(script)
        .env("AI_SDK_DIR", package)
        .env("AGENTSTREAM_URL", app.url(""))
        .env("AGENTSTREAM_KEY", key)
        .env("README_CLIENT", readme_client(package))
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(
        output.status.success(),
        "ai@{major}: ui_stream_test.mjs failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let seen: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert!(
        seen["version"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{major}.")),
        "{}",
        seen["version"]
    );
    seen
}

/// A UI message's parts as the transcript can say them: the steps, and in
/// each its text and its tool calls with their results (states, provider
/// metadata and the like left out).
fn parts_of_message(message: &Value) -> Vec<Value> {
    message["parts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|part| match part["type"].as_str().unwrap() {
            "step-start" => json!("step"),
            "text" => {
                assert_eq!(part["state"], "done", "{part}");
                json!({"text": part["text"]})
            }
            "dynamic-tool" => {
                assert_eq!(part["providerExecuted"], true, "{part}");
                match part["state"].as_str().unwrap() {
                    "output-available" => json!({
                        "call": part["toolCallId"], "name": part["toolName"],
                        "input": part["input"], "output": part["output"],
                    }),
                    "output-error" => json!({
                        "call": part["toolCallId"], "name": part["toolName"],
                        "input": part["input"], "error": part["errorText"],
                    }),
                    state => panic!("a tool part left {state}: {part}"),
                }
            }
            other => panic!("an unexpected part {other}: {part}"),
        })
        .collect()
}

/// The same from the stored transcript: the run's assistant messages (one
/// per model call, each a step) and the tool messages answering them.
fn parts_of_run(messages: &[Value], run_id: &str) -> Vec<Value> {
    let run: Vec<&Value> = messages.iter().filter(|m| m["run_id"] == run_id).collect();
    let mut parts = Vec::new();
    for message in run.iter().filter(|m| m["role"] == "assistant") {
        parts.push(json!("step"));
        let text = message["content"].as_str().unwrap();
        if !text.is_empty() {
            parts.push(json!({ "text": text }));
        }
        for call in message["tool_calls"].as_array().into_iter().flatten() {
            let id = call["id"].as_str().unwrap();
            let result = run
                .iter()
                .find(|m| m["role"] == "tool" && m["tool_call_id"] == id)
                .unwrap();
            let arguments = call["arguments"].as_str().unwrap();
            parts.push(json!({
                "call": id, "name": call["name"],
                "input": serde_json::from_str::<Value>(arguments).unwrap(),
                "output": serde_json::from_str::<Value>(result["content"].as_str().unwrap()).unwrap(),
            }));
        }
    }
    parts
}

/// The conversation's messages, oldest first.
async fn transcript(app: &TestApp, key: &str, conversation: &str) -> Vec<Value> {
    let page: Value = app
        .client
        .get(app.url(&format!("/v1/conversations/{conversation}/messages")))
        .bearer_auth(key)
        .fetch_json()
        .await;
    page["data"].as_array().unwrap().clone()
}

/// Every assistant message the engine holds equals its run in the
/// transcript; returns the run IDs.
async fn check_against_transcript(app: &TestApp, key: &str, messages: &Value) -> Vec<String> {
    let assistants: Vec<&Value> = messages
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "assistant")
        .collect();
    assert!(!assistants.is_empty(), "{messages}");
    let conversation = assistants[0]["metadata"]["conversation_id"]
        .as_str()
        .unwrap();
    let stored = transcript(app, key, conversation).await;
    let mut runs = Vec::new();
    for message in assistants {
        let run_id = message["metadata"]["run_id"].as_str().unwrap();
        // The UI message is the run.
        assert_eq!(message["id"], run_id);
        assert_eq!(message["metadata"]["status"], "completed", "{message}");
        assert_eq!(
            parts_of_message(message),
            parts_of_run(&stored, run_id),
            "run {run_id}"
        );
        runs.push(run_id.to_owned());
    }
    runs
}

async fn the_ai_sdk_reads_the_ui_message_stream(backend: Backend) {
    let mock = MockLlm::start().await.unwrap();
    let notes = crate::approvals::Notes::create(Backend::Sqlite).await;
    let (mut app, _dir) =
        spawn_app_with_file(backend, &config(&mock.base_url(), &notes.db.url), |_| {}).await;
    app.expect_log("run failed");
    let key = app.state.store().create_api_key("alice").await.unwrap().key;

    for (major, package) in packages() {
        let seen = run_node(&app, &key, major, package).await;

        // Tool calls formed from their pieces (checked in the script), ran,
        // and the replies are the stored transcript, read by the engine and
        // by the parser alone.
        let tools = &seen["tools"];
        assert!(tools["formed"].as_u64().unwrap() >= 2, "{tools}");
        let runs = check_against_transcript(&app, &key, &tools["engine_messages"]).await;
        assert_eq!(runs.len(), 2);
        let raw = &tools["raw_message"];
        check_against_transcript(&app, &key, &json!([raw])).await;
        let conversation = raw["metadata"]["conversation_id"].as_str().unwrap();
        let stored = transcript(&app, &key, conversation).await;
        let users: Vec<&str> = stored
            .iter()
            .filter(|m| m["role"] == "user")
            .map(|m| m["content"].as_str().unwrap())
            .collect();
        assert_eq!(
            users,
            ["Ada Lovelace", "Tell me about my profile", "Lovelace, Ada"],
            "ai@{major}: one conversation for the chat, one message per request"
        );

        // A reloaded page gets the same messages back (the script checked
        // them with the package's validateUIMessages).
        let stored = tools["stored_messages"].as_array().unwrap();
        let mut held: Vec<Value> = tools["engine_messages"].as_array().unwrap().clone();
        held.push(raw.clone());
        assert_eq!(stored.len(), held.len() + 1, "{stored:?}");
        let (roles, held_roles): (Vec<&Value>, Vec<&Value>) = (
            stored.iter().map(|m| &m["role"]).collect(),
            held.iter().map(|m| &m["role"]).collect(),
        );
        // The raw request's user message is not in what the engine holds.
        assert_eq!(roles[..4], held_roles[..4]);
        for (stored, held) in stored.iter().zip(&held).take(4) {
            if held["role"] == "assistant" {
                assert_eq!(stored["id"], held["id"]);
                assert_eq!(stored["metadata"]["run_id"], held["metadata"]["run_id"]);
                assert_eq!(parts_of_message(stored), parts_of_message(held));
            } else {
                assert_eq!(stored["parts"][0]["text"], held["parts"][0]["text"]);
            }
        }
        assert_eq!(stored[5]["id"], raw["id"]);
        assert_eq!(parts_of_message(&stored[5]), parts_of_message(raw));

        // A resumed stream is the whole run, as stored, to both readers.
        let resume = &seen["resume"];
        assert!(resume["first_chunks"].as_u64().unwrap() >= 4, "{resume}");
        let runs = check_against_transcript(&app, &key, &resume["engine_messages"]).await;
        assert_eq!(runs, [resume["run_id"].as_str().unwrap()]);
        let engine_reply = resume["engine_messages"]
            .as_array()
            .unwrap()
            .last()
            .unwrap();
        assert_eq!(
            parts_of_message(&resume["raw_message"]),
            parts_of_message(engine_reply)
        );

        // A cancelled run: `abort`, then `finish`; the engine ends ready.
        let cancel = &seen["cancel"];
        assert_eq!(cancel["cancel_status"], 202, "{cancel}");
        let types: Vec<&str> = cancel["types"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap())
            .collect();
        assert!(types.ends_with(&["abort", "finish"]), "{types:?}");
        assert_eq!(cancel["finish"]["finishReason"], "other");
        assert_eq!(cancel["finish"]["messageMetadata"]["status"], "cancelled");
        let run_id = cancel["finish"]["messageMetadata"]["run_id"]
            .as_str()
            .unwrap();
        let run: Value = app
            .client
            .get(app.url(&format!("/v1/runs/{run_id}")))
            .bearer_auth(&key)
            .fetch_json()
            .await;
        assert_eq!(run["status"], "cancelled");
        // Reloaded, the stopped reply says so.
        let chat = cancel["chat_id"].as_str().unwrap();
        let reloaded: Value = app
            .client
            .get(app.url(&format!("/v1/ai-sdk/chat/{chat}/messages")))
            .bearer_auth(&key)
            .fetch_json()
            .await;
        let reply = &reloaded["data"][1];
        assert_eq!(reply["metadata"]["status"], "cancelled", "{reloaded}");
        assert_eq!(reply["metadata"]["run_id"], run_id);

        // A failed run: `error` with the run's message, then `finish`.
        let failed = &seen["failed"];
        let message = "the model server could not be reached or failed";
        assert_eq!(failed["engine_error"], message, "{failed}");
        assert_eq!(failed["raw_errors"], json!([message]));
        for types in [&failed["types"], &failed["raw_types"]] {
            let types: Vec<&str> = types
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t.as_str().unwrap())
                .collect();
            assert!(
                types.ends_with(&["error", "finish-step", "finish"]),
                "{types:?}"
            );
        }
        assert_eq!(failed["finish"]["finishReason"], "error");

        // Reasoning is a part of its own, before the reply's text.
        let reply = &seen["reasoning"]["reply"];
        let kinds: Vec<&str> = reply["parts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|part| part["type"].as_str().unwrap())
            .collect();
        assert_eq!(kinds, ["step-start", "reasoning", "text"], "{reply}");
        let thought: String = (0..5).map(mock_llm::reasoning_piece).collect();
        assert_eq!(reply["parts"][1]["text"], thought.as_str());
        assert_eq!(reply["parts"][1]["state"], "done");

        // Regenerate, then edit: three runs, the chat as reloaded holds the
        // edited question and the last answer only.
        let again = &seen["again"];
        let runs: Vec<&str> = again["runs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_str().unwrap())
            .collect();
        assert_eq!(runs.len(), 3);
        assert!(runs[0] != runs[1] && runs[1] != runs[2], "{runs:?}");
        let stored = again["stored_messages"].as_array().unwrap();
        assert_eq!(stored.len(), 2, "{stored:#?}");
        assert_eq!(stored[0]["parts"][0]["text"], "hello again");
        assert_eq!(stored[1]["id"], runs[2]);
        let reply = parts_of_message(&stored[1]);
        assert!(
            reply.iter().any(|p| p.to_string().contains("hello again")),
            "{reply:?}"
        );

        // The README's client module: its transport sent, its stop stopped.
        let readme = &seen["readme"];
        assert_eq!(readme["status"], "cancelled", "{readme}");
        assert!(readme["wrote"].as_bool().unwrap(), "{readme}");

        // Approval: each run paused once, then went on; the approved call
        // wrote its note, the denied one did not.
        let approval = &seen["approval"];
        for answer in approval["answers"].as_array().unwrap() {
            let run_id = answer["run_id"].as_str().unwrap();
            let run: Value = app
                .client
                .get(app.url(&format!("/v1/runs/{run_id}")))
                .bearer_auth(&key)
                .fetch_json()
                .await;
            assert_eq!(run["status"], "completed", "ai@{major}: {run}");
        }
        let stored = approval["stored_messages"].as_array().unwrap();
        if major == "6" {
            let types: Vec<&str> = approval["types"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t.as_str().unwrap())
                .collect();
            assert!(types.contains(&"tool-approval-request"), "{types:?}");
            assert!(types.contains(&"tool-output-denied"), "{types:?}");
            let states = |messages: &[Value]| -> Vec<String> {
                messages
                    .iter()
                    .flat_map(|m| m["parts"].as_array().unwrap())
                    .filter(|p| p["type"] == "dynamic-tool")
                    .map(|p| p["state"].as_str().unwrap().to_owned())
                    .collect()
            };
            let engine = approval["engine_messages"].as_array().unwrap();
            assert_eq!(states(engine), ["output-available", "output-denied"]);
            assert_eq!(states(stored), ["output-available", "output-denied"]);
            let denied = stored
                .iter()
                .flat_map(|m| m["parts"].as_array().unwrap())
                .find(|p| p["state"] == "output-denied")
                .unwrap();
            assert_eq!(
                denied["approval"],
                json!({ "id": denied["toolCallId"], "approved": false, "reason": "not today" })
            );
        }
    }
    // Each version approved "buy milk" once and denied "sell the car".
    assert_eq!(
        notes.bodies(Backend::Sqlite).await,
        ["buy milk", "buy milk"]
    );
    app.stop().await;
    mock.shutdown().await;
}
both!(the_ai_sdk_reads_the_ui_message_stream);

/// The chat is the caller's: another user's chat ID (and conversation ID)
/// names a chat of their own, and nothing of the first user's resumes.
async fn chats_are_per_user(backend: Backend) {
    let app = spawn_app(backend).await;
    let store = app.state.store();
    let alice = store.create_api_key("alice").await.unwrap().key;
    let bob = store.create_api_key("bob").await.unwrap().key;
    let send = |key: &str, chat: &str, text: &str| {
        app.client
            .post(app.url("/v1/ai-sdk/chat"))
            .bearer_auth(key)
            .json(&json!({
                "id": chat,
                "messages": [{"id": text, "role": "user", "parts": [{"type": "text", "text": text}]}],
            }))
            .send()
    };
    let first = send(&alice, "shared-name", "alice's secret").await.unwrap();
    assert_eq!(first.status(), 200);
    let alice_conversation = first.headers()["x-conversation-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(first.text().await.unwrap().ends_with("data: [DONE]\n\n"));
    // A new message under the first one's id is refused, not replayed.
    let reused = app
        .client
        .post(app.url("/v1/ai-sdk/chat"))
        .bearer_auth(&alice)
        .json(&json!({
            "id": "shared-name",
            "messages": [{"id": "alice's secret", "role": "user",
                          "parts": [{"type": "text", "text": "another question"}]}],
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(reused.status(), 422);
    // In useChat's words: the client sent a message `id`, not a key.
    let error: Value = reused.json().await.unwrap();
    let message = error["error"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("the message ID was used for another message of this chat"),
        "{message}"
    );

    for chat in ["shared-name", alice_conversation.as_str()] {
        let theirs = send(&bob, chat, "bob's turn").await.unwrap();
        assert_eq!(theirs.status(), 200);
        let conversation = theirs.headers()["x-conversation-id"]
            .to_str()
            .unwrap()
            .to_owned();
        assert_ne!(conversation, alice_conversation, "{chat}");
        theirs.text().await.unwrap();
    }
    let stored = transcript(&app, &alice, &alice_conversation).await;
    let users: Vec<&str> = stored
        .iter()
        .filter(|m| m["role"] == "user")
        .map(|m| m["content"].as_str().unwrap())
        .collect();
    assert_eq!(users, ["alice's secret"]);
    let resumed = app
        .client
        .get(app.url("/v1/ai-sdk/chat/shared-name/stream"))
        .bearer_auth(&bob)
        .send()
        .await
        .unwrap();
    assert_eq!(resumed.status(), 204);
    // Bob's chats of those names are his own; a name never used has none.
    let messages = |chat: String| {
        app.client
            .get(app.url(&format!("/v1/ai-sdk/chat/{chat}/messages")))
            .bearer_auth(&bob)
            .fetch_json()
    };
    for chat in ["shared-name", alice_conversation.as_str()] {
        let his = messages(chat.to_owned()).await;
        assert_ne!(his["conversation_id"], alice_conversation.as_str());
        assert_eq!(his["data"].as_array().unwrap().len(), 2, "{his}");
        assert_eq!(his["data"][0]["parts"][0]["text"], "bob's turn");
    }
    let none = messages("never-used".to_owned()).await;
    assert_eq!(none, json!({"conversation_id": null, "data": []}));
    app.stop().await;
}
both!(chats_are_per_user);

/// Bad requests get the native error body and store nothing.
async fn bad_chat_requests_are_refused(backend: Backend) {
    let app = spawn_app(backend).await;
    let text = |text: &str| json!([{"id": "m", "role": "user", "parts": [{"type": "text", "text": text}]}]);
    for (body, status, needle) in [
        (json!({"id": "c", "messages": []}), 422, "messages"),
        (json!({"id": "", "messages": text("hi")}), 422, "id"),
        (
            json!({"id": "x".repeat(201), "messages": text("hi")}),
            422,
            "id",
        ),
        (json!({"id": "c", "messages": text("   ")}), 422, "empty"),
        // A message as an array of its fields: serde would read it in order.
        (
            json!({"id": "c", "messages": [["m", "user", [{"type": "text", "text": "hi"}]]]}),
            422,
            "expected a JSON object",
        ),
        // Another answer, or an edit, in a chat that has none.
        (
            json!({"id": "c", "messages": text("hi"), "trigger": "regenerate-message"}),
            404,
            "chat not found",
        ),
        (
            json!({"id": "c", "messages": text("hi"), "messageId": "m0"}),
            404,
            "chat not found",
        ),
        (
            json!({"id": "c", "messages": text("hi"), "agent": "nobody"}),
            422,
            "agents are",
        ),
        (
            json!({"id": "c", "messages": [{"role": "assistant", "parts": []}]}),
            422,
            "user",
        ),
        (
            json!({"id": "c", "messages": [{"role": "assistant", "id": "m1", "parts": [
                {"type": "dynamic-tool", "toolCallId": "call_1", "state": "approval-responded",
                 "approval": {"id": "call_1", "approved": true}}]}]}),
            422,
            "run's ID",
        ),
        (
            json!({"id": "c", "messages": [{"role": "assistant", "id": "m1", "parts": [
                {"type": "dynamic-tool", "toolCallId": "call_1", "state": "approval-responded",
                 "approval": {"id": "call_1"}}]}]}),
            422,
            "approval.approved",
        ),
        (
            json!({"id": "c", "messages": [{"role": "assistant", "id": uuid::Uuid::now_v7().to_string(), "parts": [
                {"type": "dynamic-tool", "toolCallId": "call_1", "state": "approval-responded",
                 "approval": {"id": "call_1", "approved": false}}]}]}),
            404,
            "not found",
        ),
        (
            json!({"id": "c", "messages": [{"role": "user", "parts": [{"type": "file", "url": "x", "mediaType": "image/png"}]}]}),
            422,
            "`file`",
        ),
        (
            json!({"id": "c", "messages": text(&"a".repeat(40_000))}),
            413,
            "limit",
        ),
    ] {
        let response = app
            .client
            .post(app.url("/v1/ai-sdk/chat"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), status, "{body}");
        let error: Value = response.json().await.unwrap();
        let message = error["error"]["message"].as_str().unwrap();
        assert!(message.contains(needle), "{body}: {message}");
    }
    let conversations: Value = app
        .client
        .get(app.url("/v1/conversations"))
        .fetch_json()
        .await;
    assert_eq!(conversations["data"], json!([]));
    app.stop().await;
}
both!(bad_chat_requests_are_refused);

/// A front end on another origin (`--cors-origin`): its preflights are
/// answered before authentication, its requests may read the headers that
/// name the conversation and the run; other origins, and every origin when
/// none is configured, get no CORS header (their browsers refuse).
async fn browsers_on_allowed_origins_may_call(backend: Backend) {
    let front_end = "http://localhost:3000";
    let app = spawn_app_with(backend, |config| {
        config.cors_origins = vec![front_end.to_owned()];
    })
    .await;
    let key = app.state.store().create_api_key("alice").await.unwrap().key;
    let preflight = |origin: &str| {
        app.client
            .request(reqwest::Method::OPTIONS, app.url("/v1/ai-sdk/chat"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization,content-type,x-conversation-id",
            )
            .send()
    };
    let allowed = preflight(front_end).await.unwrap();
    assert_eq!(allowed.status(), 200);
    let headers = allowed.headers();
    assert_eq!(headers["access-control-allow-origin"], front_end);
    let allowed_headers = headers["access-control-allow-headers"].to_str().unwrap();
    for name in ["authorization", "content-type", "x-conversation-id"] {
        assert!(allowed_headers.contains(name), "{allowed_headers}");
    }
    assert!(
        headers["access-control-allow-methods"]
            .to_str()
            .unwrap()
            .contains("POST")
    );
    let other = preflight("http://evil.example").await.unwrap();
    assert!(!other.headers().contains_key("access-control-allow-origin"));

    let chat = app
        .client
        .post(app.url("/v1/ai-sdk/chat"))
        .bearer_auth(&key)
        .header("origin", front_end)
        .json(&json!({
            "id": "from-the-browser",
            "messages": [{"id": "m1", "role": "user", "parts": [{"type": "text", "text": "hi"}]}],
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(chat.status(), 200);
    assert_eq!(chat.headers()["access-control-allow-origin"], front_end);
    let exposed = chat.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap()
        .to_owned();
    for name in [
        "x-conversation-id",
        "x-run-id",
        "x-vercel-ai-ui-message-stream",
    ] {
        assert!(exposed.contains(name), "{exposed}");
    }
    assert!(chat.text().await.unwrap().ends_with("data: [DONE]\n\n"));
    // A refusal is readable too: the page shows its message.
    let refused = app
        .client
        .post(app.url("/v1/ai-sdk/chat"))
        .header("origin", front_end)
        .json(&json!({"id": "x", "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    assert_eq!(refused.headers()["access-control-allow-origin"], front_end);
    app.stop().await;

    let closed = spawn_app(backend).await;
    let response = closed
        .client
        .get(closed.url("/v1/agents"))
        .header("origin", front_end)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        !response
            .headers()
            .contains_key("access-control-allow-origin")
    );
    closed.stop().await;
}
both!(browsers_on_allowed_origins_may_call);
